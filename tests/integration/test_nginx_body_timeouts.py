"""nginx's client_body_timeout in ``fastterm run --nginx``, with real clients: a body the client
stops sending ends the exchange unanswered (HTTP/1.1: the connection closes, as nginx; HTTP/2:
the stream is reset) and the backend connection is dropped; a body that keeps coming is not cut
(tests/differential/configs/body_timeout.conf compares HTTP/1.1 with nginx)."""

from __future__ import annotations

import time

import pytest
from h2wire import h2_client
from harness import response_bytes
from test_nginx_mode import certs, nginx_mode  # noqa: F401  (fixtures)

CONFIG = """\
client_body_timeout 1s;
proxy_send_timeout 5s;
upstream app {{ server {backend}; }}
server {{
    listen {host}:{https} ssl http2;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    location / {{ proxy_pass http://app; }}
}}
"""


@pytest.fixture
def be(raw_backend):
    def handler(conn):
        while (req := conn.read_request()) is not None:
            conn.send(response_bytes(200, f"got {len(req.body)}".encode()))

    return raw_backend(handler)


@pytest.fixture
def ft(request, be):
    return request.getfixturevalue("nginx_mode")(CONFIG, backend=be.address)


def test_http1_stalled_body_closes_unanswered(ft):
    with ft.connect(server_hostname="www.example.com") as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 10\r\n\r\nabc")
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert 0.8 < time.monotonic() - started < 4


def test_http1_slow_body_that_keeps_coming_is_served(ft):
    with ft.connect(server_hostname="www.example.com") as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 4\r\n\r\n")
        for byte in b"abcd":   # 4 x 0.6 s: longer than client_body_timeout in all, never one gap
            time.sleep(0.6)
            sock.sendall(bytes([byte]))
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")


def test_http2_stalled_body_resets_the_stream(ft):
    with h2_client(ft) as c:
        sid = c.request("POST", "/up", headers=[("content-length", "10")], body=b"abc", end_stream=False)
        assert c.wait(lambda: c.streams[sid].done, timeout=5)
        assert c.streams[sid].reset is not None and c.streams[sid].headers is None
        assert c.get("GET", "/after").status == 200   # the connection serves on
