"""Error statuses fastterm makes itself (DESIGN.md "Errors"), as a client sees them.

Every error response carries HSTS (nginx ``add_header ... always``), and every one leaves
the worker running: each test ends by checking the same process still serves.
"""

from __future__ import annotations

import socket
import time

import pytest
from harness import HSTS, NAME, response_bytes, settle
from httpwire import Reader, closed_by_peer, read_response, request_bytes


def still_serves(ft, path: str = "/after") -> None:
    assert ft.alive(), ft.log()
    r = ft.request("GET", path)
    assert r.status in (200, 502, 504), r.start_line


def handshakes(ft) -> None:
    """The worker is alive and completes a TLS handshake (for tests whose backend always fails)."""
    assert ft.alive(), ft.log()
    with ft.connect() as s:
        assert s.version() in ("TLSv1.2", "TLSv1.3")


def send_raw(ft, data: bytes, method: str = "GET"):
    """Send ``data`` on a fresh TLS connection; return (response, closed_after)."""
    with ft.connect() as s:
        s.sendall(data)
        r = read_response(Reader(s), method)
        return r, closed_by_peer(s, timeout=3)


# ---------------------------------------------------------------------------------------
# client errors


@pytest.mark.parametrize("line", [
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\nHost: www.example.com\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: www.example.com\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    b"G(T / HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    b"\x00\x01\x02\r\n\r\n",
], ids=["no-target", "extra-token", "bad-version", "double-space", "bad-method", "space-in-target", "binary"])
def test_400_malformed_request_line(ft, be, line):
    r, closed = send_raw(ft, line)
    assert r.status == 400, r.start_line
    assert r.header("strict-transport-security") == HSTS
    assert closed
    settle()
    assert be.accepts == 0
    still_serves(ft)


def test_431_header_block_over_16k(ft, be):
    r, closed = send_raw(ft, request_bytes("GET", "/", headers=[("X-Big", "a" * 17 * 1024)]))
    assert r.status == 431 and closed
    r, closed = send_raw(ft, request_bytes("GET", "/", headers=[(f"X-H{i}", "b" * 200) for i in range(90)]))
    assert r.status == 431 and closed
    settle()
    assert be.accepts == 0
    still_serves(ft)


def test_431_header_block_sent_slowly(ft, be):
    """The limit holds when the oversized block arrives in small writes."""
    with ft.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n")
        r = None
        try:
            for _ in range(40):
                s.sendall(b"X-Pad: " + b"p" * 1000 + b"\r\n")
        except OSError:
            pass
        r = read_response(Reader(s))
        assert r.status == 431
    settle()
    assert be.accepts == 0


def test_headers_just_under_limit_pass(ft, be):
    r = ft.request("GET", "/", headers=[("X-Big", "a" * 15 * 1024)])
    assert r.status == 200
    (req,) = be.requests
    assert req.header("x-big") == "a" * 15 * 1024


def test_too_many_header_fields(ft, be):
    r, closed = send_raw(ft, request_bytes("GET", "/", headers=[(f"X-F{i}", "1") for i in range(101)]))
    assert r.status in (400, 431) and closed
    settle()
    assert be.accepts == 0
    r = ft.request("GET", "/", headers=[(f"X-F{i}", "1") for i in range(98)])
    assert r.status == 200


def test_408_stalled_header(ft, be):
    with ft.connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Half: ")
        t0 = time.monotonic()
        r = read_response(Reader(s))
        waited = time.monotonic() - t0
        assert r.status == 408
        assert r.header("strict-transport-security") == HSTS
        assert closed_by_peer(s, timeout=3)
    assert 1.5 <= waited <= 4.5, waited  # client_header_timeout = 2, 1 s sweep
    settle()
    assert be.accepts == 0
    still_serves(ft)


def test_silent_connection_closed_after_header_timeout(ft):
    with ft.connect() as s:
        assert closed_by_peer(s, timeout=5), "connection that never sent a request still open"


def test_stalled_handshake_closed(ft):
    with socket.create_connection(("127.0.0.1", ft.https_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
        assert closed_by_peer(s, timeout=6), "half a ClientHello held the connection open"
    still_serves(ft)


def test_413_client_max_body_size(raw_backend, fastterm):
    be = raw_backend()
    ft = fastterm(be.address, limits={"client_max_body_size": 1000})
    r, closed = send_raw(ft, request_bytes("POST", "/up", body=b"x" * 1001))
    assert r.status == 413 and closed
    assert r.header("strict-transport-security") == HSTS
    settle()
    assert be.accepts == 0
    r = ft.request("POST", "/up", body=b"x" * 1000)
    assert r.status == 200
    assert len(be.requests) == 1 and be.requests[0].body == b"x" * 1000


def test_413_chunked_body_over_limit(raw_backend, fastterm):
    be = raw_backend()
    ft = fastterm(be.address, limits={"client_max_body_size": 1000})
    body = b"".join(b"%x\r\n%s\r\n" % (200, b"y" * 200) for _ in range(6)) + b"0\r\n\r\n"
    with ft.connect() as s:
        s.sendall(request_bytes("POST", "/up", headers=[("Transfer-Encoding", "chunked")]) + body)
        r = read_response(Reader(s))
        assert r.status == 413
        assert closed_by_peer(s, timeout=3)
    # No complete request over the limit reached the backend.
    assert all(len(req.body) <= 1000 for req in be.requests)
    settle()
    assert not be.requests


def test_404_no_route(raw_backend, fastterm):
    be = raw_backend()
    ft = fastterm(be.address, routes=[{"path": "/only/", "upstream": "app"}])
    r = ft.request("GET", "/elsewhere")
    assert r.status == 404
    settle()
    assert be.accepts == 0


# ---------------------------------------------------------------------------------------
# backend errors


def test_502_backend_refused(fastterm, refused_address):
    ft = fastterm(refused_address)
    t0 = time.monotonic()
    r = ft.request("GET", "/")
    assert r.status == 502 and time.monotonic() - t0 < 2
    assert r.header("strict-transport-security") == HSTS
    assert "refused" in ft.log().lower() or "connect" in ft.log().lower()
    still_serves(ft)


def test_502_backend_reset_before_response(raw_backend, fastterm):
    def handler(conn):
        conn.read_request()
        conn.reset()

    be = raw_backend(handler)
    ft = fastterm(be.address)
    r = ft.request("GET", "/")
    assert r.status == 502
    r = ft.request("POST", "/", body=b"data")
    assert r.status == 502
    still_serves(ft)


def test_502_backend_closes_before_response(raw_backend, fastterm):
    def handler(conn):
        conn.read_request()

    ft = fastterm(raw_backend(handler).address)
    assert ft.request("GET", "/").status == 502
    still_serves(ft)


@pytest.mark.parametrize("garbage", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
], ids=["not-http", "bad-status", "two-lengths", "bad-length", "no-colon"])
def test_502_malformed_backend_response(raw_backend, fastterm, garbage):
    def handler(conn):
        if conn.read_request() is not None:
            conn.send(garbage)
            conn.hang()

    ft = fastterm(raw_backend(handler).address)
    r = ft.request("GET", "/")
    assert r.status == 502, r.start_line
    assert ft.alive()


def test_504_backend_never_answers(raw_backend, fastterm):
    def handler(conn):
        conn.read_request()
        conn.hang()

    ft = fastterm(raw_backend(handler).address)
    t0 = time.monotonic()
    r = ft.request("GET", "/", timeout=8)
    waited = time.monotonic() - t0
    assert r.status == 504
    assert r.header("strict-transport-security") == HSTS
    assert 1.5 <= waited <= 4.5, waited  # backend_read_timeout = 2
    still_serves(ft)


def test_504_backend_stalls_mid_response(raw_backend, fastterm):
    """Headers sent, then silence: the client connection is closed (the status already went out)."""
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        conn.hang()

    ft = fastterm(raw_backend(handler).address)
    with ft.connect(timeout=8) as s:
        s.sendall(request_bytes("GET", "/"))
        rd = Reader(s)
        raw = rd.read_until(b"\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200")
        assert closed_by_peer(s, timeout=6), "stalled backend left the client hanging"
    assert ft.alive()


def test_backend_close_mid_response_truncates(raw_backend, fastterm):
    """nginx closes the client connection: a truncated body is never passed off as complete."""
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)

    ft = fastterm(raw_backend(handler).address)
    with ft.connect() as s:
        s.sendall(request_bytes("GET", "/"))
        rd = Reader(s)
        with pytest.raises(EOFError):
            read_response(rd)
    handshakes(ft)


def test_backend_close_mid_chunked_truncates(raw_backend, fastterm):
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")

    ft = fastterm(raw_backend(handler).address)
    with ft.connect() as s:
        s.sendall(request_bytes("GET", "/"))
        with pytest.raises(EOFError):
            read_response(Reader(s))
    handshakes(ft)


def test_connect_failure_retried_on_next_server(raw_backend, fastterm, refused_address):
    be = raw_backend()
    ft = fastterm([refused_address, be.address])
    for i in range(6):
        r = ft.request("GET", f"/{i}")
        assert r.status == 200, (i, r.start_line)
    assert len(be.requests) == 6


def test_reset_retried_for_idempotent_only(raw_backend, fastterm):
    def resetter(conn):
        conn.read_request()
        conn.reset()

    bad = raw_backend(resetter)
    good = raw_backend()
    ft = fastterm([bad.address, good.address])
    # Round robin starts with the bad server: the first POST is reset and never replayed
    # (502); the bad server is then ejected, so the rest go to the good one.
    statuses = [ft.request("POST", "/p", body=b"once").status for _ in range(4)]
    assert statuses[0] == 502 and statuses[1:] == [200, 200, 200], statuses
    assert all(r.body == b"once" for r in good.requests if r.method == "POST")
    for i in range(4):
        assert ft.request("GET", f"/{i}").status == 200


def test_backend_that_resets_on_accept_gets_502(raw_backend, fastterm):
    """A backend that accepts and resets at once: the reset may reach the worker before the
    connect's callback does; either way the client gets 502 and the worker logs no traceback."""
    bad = raw_backend(lambda conn: conn.reset())
    ft = fastterm(bad.address)
    statuses = [ft.request("GET", f"/{i}").status for i in range(20)]
    assert statuses == [502] * 20, statuses
    assert bad.requests == []


def test_failed_server_ejected_not_retried_per_request(raw_backend, fastterm):
    """nginx max_fails=1 fail_timeout=10s: a server that resets a new connection is skipped
    for a while, so a dead backend costs one failure, not one per request."""
    def resetter(conn):
        conn.read_request()
        conn.reset()

    bad = raw_backend(resetter)
    good = raw_backend()
    ft = fastterm([bad.address, good.address])
    for i in range(10):
        assert ft.request("GET", f"/{i}").status == 200
    assert bad.accepts == 1
    assert len(good.requests) == 10


def test_backend_100_continue_then_final(raw_backend, fastterm):
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\n" + response_bytes(200, b"final"))

    ft = fastterm(raw_backend(handler).address)
    r = ft.request("POST", "/", body=b"x")
    assert r.status == 200 and r.body == b"final"


def test_backend_101_without_upgrade_request_is_502(raw_backend, fastterm):
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        conn.hang()

    ft = fastterm(raw_backend(handler).address)
    r = ft.request("GET", "/")
    assert r.status == 502
    assert ft.alive()


def test_many_errors_do_not_leak_connections(ft, be):
    for _ in range(30):
        send_raw(ft, b"BAD\r\n\r\n")
    r = ft.request("GET", "/fine")
    assert r.status == 200
    assert NAME in r.body.decode() or r.body.startswith(b"ok")


def test_request_target_over_limit(ft, be):
    r, closed = send_raw(ft, request_bytes("GET", "/" + "a" * 20000))
    assert r.status in (414, 431) and closed, r.start_line
    settle()
    assert be.accepts == 0


def test_413_with_expect_sends_no_100(raw_backend, fastterm):
    be = raw_backend()
    ft = fastterm(be.address, limits={"client_max_body_size": 1000})
    with ft.connect() as s:
        s.sendall(request_bytes("POST", "/up", headers=[("Content-Length", "5000"), ("Expect", "100-continue")]))
        r = read_response(Reader(s), skip_1xx=False)
        assert r.status == 413, r.start_line
    settle()
    assert be.accepts == 0


def test_408_on_second_keepalive_request(ft, be):
    """The header timeout also bounds a request that starts later on a keep-alive connection."""
    with ft.connect() as s:
        rd = Reader(s)
        s.sendall(request_bytes("GET", "/first"))
        assert read_response(rd).status == 200
        s.sendall(b"GET /second HTTP/1.1\r\nHost: www.example.com\r\n")
        r = read_response(rd)
        assert r.status == 408
        assert closed_by_peer(s, timeout=3)
    assert [q.target for q in be.requests] == ["/first"]
