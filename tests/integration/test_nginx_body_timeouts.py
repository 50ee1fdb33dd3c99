"""nginx's client_body_timeout in ``fastterm run --nginx``, with real clients: a body the client
stops sending, streamed or read whole before it is sent (chunked; HTTP/2 without
content-length), ends the exchange unanswered (HTTP/1.1: the connection closes, as nginx;
HTTP/2: the stream is reset) and the backend connection is dropped; a body that keeps coming
is not cut (tests/differential/configs/body_timeout.conf compares HTTP/1.1 with nginx)."""

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


def test_http1_stalled_chunked_body_closes_unanswered(ft):
    """A chunked body is read whole before it is sent (proxy_request_buffering): stalled, it ends
    as a streamed one does, closed without an answer, and the backend never hears of it."""
    with ft.connect(server_hostname="www.example.com") as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123")
        sock.settimeout(5)
        started = time.monotonic()
        assert sock.recv(4096) == b""
        assert 0.8 < time.monotonic() - started < 4


def test_http1_slow_chunked_body_that_keeps_coming_is_served(ft):
    with ft.connect(server_hostname="www.example.com") as sock:
        sock.sendall(b"POST /up HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
        for chunk in (b"2\r\nab\r\n", b"2\r\ncd\r\n", b"0\r\n\r\n"):   # 3 x 0.6 s, never one gap of 1 s
            time.sleep(0.6)
            sock.sendall(chunk)
        sock.settimeout(5)
        head = sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"got 4")


def test_http2_stalled_body_without_length_resets_the_stream(ft):
    """An HTTP/2 body without content-length is read whole first; stalled, its stream is reset."""
    with h2_client(ft) as c:
        sid = c.request("POST", "/up", body=b"abc", end_stream=False, length=False)
        assert c.wait(lambda: c.streams[sid].done, timeout=5)
        assert c.streams[sid].reset is not None and c.streams[sid].headers is None
        assert c.get("GET", "/after").status == 200
