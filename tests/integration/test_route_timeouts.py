"""Backend timeouts per upstream and per route (model.Upstream and model.Route ``connect_timeout``,
``read_timeout``, ``send_timeout``; nginx's proxy_*_timeout per location): a route's own, else its
upstream's, else the limits' (TEST_LIMITS: 2 s each). Read timeout before the head: 504; a connect
that never completes (a listener whose accept queue is full drops the SYN): 504 at the connect
timeout; a refused one: 502 at once."""

from __future__ import annotations

import socket
import time

import pytest
from harness import HOST, NAME
from test_nginx_mode import certs, nginx_mode  # noqa: F401  (fixtures)


@pytest.fixture
def silent(raw_backend):
    """A backend that reads the request and never answers."""
    def handler(conn):
        conn.read_request()
        conn.hang()

    return raw_backend(handler)


@pytest.fixture
def blackhole():
    """A loopback address whose connects hang: listening with backlog 0, its queue filled by
    connections nobody accepts, so the kernel drops further SYNs (the client retransmits)."""
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    fill = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(listener.getsockname())
        except BlockingIOError:
            pass
        fill.append(s)
    time.sleep(0.1)
    yield f"{HOST}:{listener.getsockname()[1]}"
    for s in fill:
        s.close()
    listener.close()


def timed(ft, target: str, timeout: float = 10):
    t0 = time.monotonic()
    r = ft.request("GET", target, timeout=timeout)
    return r.status, time.monotonic() - t0


def test_route_read_timeout_is_its_own_and_the_next_route_keeps_the_limits(fastterm, silent):
    ft = fastterm(silent.address, routes=[{"path": "/quick/", "upstream": "app", "read_timeout": 0.5},
                                          {"path": "/", "upstream": "app"}])
    status, waited = timed(ft, "/quick/x")
    assert status == 504 and waited < 1.95, (status, waited)   # 0.5 s, found by a sweep within 1 s
    status, waited = timed(ft, "/other")
    assert status == 504 and waited >= 1.8, (status, waited)  # backend_read_timeout = 2
    assert ft.alive()


def test_http2_streams_of_two_routes_time_out_each_at_its_own(fastterm, silent):
    from h2wire import h2_client

    ft = fastterm(silent.address, routes=[{"path": "/quick/", "upstream": "app", "read_timeout": 0.5},
                                          {"path": "/", "upstream": "app"}])
    with h2_client(ft, timeout=10) as c:
        t0 = time.monotonic()
        slow, quick = c.request("GET", "/other"), c.request("GET", "/quick/x")
        assert c.response(quick, timeout=5).message().status == 504
        assert time.monotonic() - t0 < 1.8 and not c.streams[slow].done
        assert c.response(slow, timeout=5).message().status == 504
        assert time.monotonic() - t0 >= 1.8


def test_upstream_timeouts_apply_to_its_routes_and_a_route_overrides_them(fastterm, silent):
    ft = fastterm(upstreams=[{"name": "app", "servers": [silent.address], "read_timeout": 0.5}],
                  routes=[{"path": "/long/", "upstream": "app", "read_timeout": 2.5},
                          {"path": "/", "upstream": "app"}])
    status, waited = timed(ft, "/x")
    assert status == 504 and waited < 1.95, (status, waited)
    status, waited = timed(ft, "/long/x")
    assert status == 504 and waited >= 2.3, (status, waited)


def test_upstream_connect_timeout_to_an_address_that_never_answers(fastterm, blackhole, raw_backend):
    good = raw_backend()
    ft = fastterm(upstreams=[{"name": "hole", "servers": [blackhole], "connect_timeout": 0.5},
                             {"name": "app", "servers": [good.address]}],
                  routes=[{"path": "/hole/", "upstream": "hole"}, {"path": "/", "upstream": "app"}])
    status, waited = timed(ft, "/hole/x")
    assert status == 504 and waited < 1.95, (status, waited)
    assert f"connect to {blackhole} timed out" in ft.log()
    assert ft.request("GET", "/ok").status == 200


def test_refused_connect_is_502_after_the_other_servers(fastterm, refused_address):
    """Every server of the upstream refuses: each tried once, then 502 (nginx), at once."""
    ports = [refused_address, f"{HOST}:1", f"{HOST}:2"]
    ft = fastterm(upstreams=[{"name": "app", "servers": ports, "connect_timeout": 5}])
    status, waited = timed(ft, "/")
    assert status == 502 and waited < 1.5, (status, waited)
    assert ft.log().count("failed") >= 3, ft.log()


NGINX = """\
proxy_read_timeout 2s;
upstream app {{ server {backend}; }}
server {{
    listen {host}:{https} ssl;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    proxy_connect_timeout 3s;
    location / {{ proxy_pass http://app; }}
    location /quick/ {{
        proxy_read_timeout 500ms;
        proxy_pass http://app;
    }}
}}
"""


def test_nginx_proxy_read_timeout_per_location(nginx_mode, silent):  # noqa: F811
    """Two locations, two proxy_read_timeout values (nginx: the location's, else the server's,
    else http's): each one's own 504."""
    ft = nginx_mode(NGINX, backend=silent.address)
    status, waited = timed(ft, "/quick/x")
    assert status == 504 and waited < 1.95, (status, waited)
    status, waited = timed(ft, "/x")
    assert status == 504 and waited >= 1.8, (status, waited)


def test_nginx_timeouts_inherit_into_routes(write, certs):  # noqa: F811
    from fastterm.config.nginx import load_config

    config = load_config(write("inherit.conf", NGINX.format(host=HOST, https=8443, backend="127.0.0.1:9")))
    by_path = {r.path: r for r in config.servers[0].routes}
    assert (by_path["/"].connect_timeout, by_path["/"].read_timeout, by_path["/"].send_timeout) == (3.0, 2.0, 60.0)
    assert (by_path["/quick/"].connect_timeout, by_path["/quick/"].read_timeout) == (3.0, 0.5)
    assert (config.limits.backend_connect_timeout, config.limits.backend_read_timeout) == (60.0, 2.0)


@pytest.mark.parametrize("target, quick", [("/up/x", True), ("/x", False)])
def test_route_send_timeout_for_a_backend_that_takes_no_body(fastterm, raw_backend, target, quick):
    """The backend reads the head, then nothing: once the socket buffers are full, the route's
    send_timeout (0.5 s) answers 504 (nginx proxy_send_timeout); the other route keeps the
    limits' (the read timeout, 2 s)."""
    import select
    import ssl

    from httpwire import Reader, read_response

    def handler(conn):
        conn.reader.read_until(b"\r\n\r\n")
        conn.hang()

    ft = fastterm(raw_backend(handler).address, routes=[{"path": "/up/", "upstream": "app", "send_timeout": 0.5},
                                                        {"path": "/", "upstream": "app"}])
    size = 64 << 20

    def upload_until_answered(sock, reader):
        """Body bytes go out until the answer starts, from this one thread: an SSL object
        written and read from two threads at once corrupts its state (the client then reads
        garbage as an alert). A readable socket may hold only a NewSessionTicket."""
        chunk = memoryview(b"u" * (1 << 16))
        sent = 0
        sock.setblocking(False)
        try:
            while sent < size:
                readable, writable, _ = select.select([sock], [sock], [], 10)
                if readable or sock.pending():
                    try:
                        data = sock.recv(65536)
                    except ssl.SSLWantReadError:
                        continue
                    except OSError:
                        return
                    reader.buf += data
                    return
                if not writable:
                    return
                try:
                    sent += sock.send(chunk)
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    return   # answered and closed mid-body
        finally:
            sock.settimeout(10)

    with ft.connect(timeout=10) as sock:
        sock.sendall(f"POST {target} HTTP/1.1\r\nHost: {NAME}\r\nContent-Length: {size}\r\n\r\n".encode())
        reader = Reader(sock)
        t0 = time.monotonic()
        upload_until_answered(sock, reader)
        r = read_response(reader, "POST")
        waited = time.monotonic() - t0
    assert r.status == 504, r.start_line
    assert (waited < 1.95) if quick else (waited >= 1.8), waited
