"""Hostile and clumsy clients never take the worker down: the same process serves on.

Each test ends with a good request to the same PID, and no Python traceback in its log.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest
from harness import HOST, NAME, echo_json, metrics
from httpwire import Reader, closed_by_peer, read_response, request_bytes

MIB = 1024 * 1024


@pytest.fixture
def ft(fastterm, demo_backend):
    return fastterm(demo_backend)


def serves_on(ft, pids: list[int]) -> None:
    """Same master and same workers (none crashed and was respawned) still answer."""
    assert ft.alive(), ft.log()
    assert ft.serving_pids() == pids, (pids, ft.serving_pids(), ft.log())
    r = ft.request("GET", "/still-here")
    assert r.status == 200 and echo_json(r)["path"] == "/still-here"
    assert "Traceback" not in ft.log(), ft.log()


def client_hello(ft) -> bytes:
    """A real ClientHello for www.example.com, made with a memory-BIO client."""
    ctx = ft.client_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=NAME)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def raw(ft, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection((HOST, ft.https_port), timeout=timeout)


def rst_close(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def test_garbage_handshake(ft):
    pid = ft.serving_pids()
    for _ in range(5):
        with raw(ft) as s:
            s.sendall(os.urandom(4096))
            assert closed_by_peer(s, timeout=5)
    serves_on(ft, pid)


def test_plain_http_to_tls_port(ft):
    """nginx answers "400 The plain HTTP request was sent to HTTPS port", in plain HTTP."""
    pid = ft.serving_pids()
    with raw(ft) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        s.settimeout(5)
        reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 400 "), reply
        assert b"plain HTTP request was sent to HTTPS port" in reply
        assert closed_by_peer(s, timeout=5), "plain HTTP on the TLS port left the connection open"
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", "5", f"http://127.0.0.1:{ft.https_port}/"],
                         capture_output=True, text=True, timeout=10, check=False).stdout
    assert out.startswith("HTTP/1.1 400"), out
    serves_on(ft, pid)


@pytest.mark.parametrize("cut", [5, 40, -10])
def test_truncated_client_hello_then_close(ft, cut):
    pid = ft.serving_pids()
    hello = client_hello(ft)
    with raw(ft) as s:
        s.sendall(hello[:cut])
    serves_on(ft, pid)


def test_truncated_client_hello_then_rst(ft):
    pid = ft.serving_pids()
    s = raw(ft)
    s.sendall(client_hello(ft)[:100])
    rst_close(s)
    serves_on(ft, pid)


def test_client_hello_with_garbage_tail(ft):
    pid = ft.serving_pids()
    with raw(ft) as s:
        s.sendall(client_hello(ft) + os.urandom(2000))
        assert closed_by_peer(s, timeout=5)
    serves_on(ft, pid)


def test_oversized_tls_record(ft):
    pid = ft.serving_pids()
    with raw(ft) as s:
        s.sendall(b"\x16\x03\x01\xff\xff" + os.urandom(1000))  # a 64 KiB handshake record header
        rst_close(s)
    serves_on(ft, pid)


def test_sslv2_hello(ft):
    pid = ft.serving_pids()
    with raw(ft) as s:
        s.sendall(bytes.fromhex("802b0103010012000000100000390000380000350000160000130000"
                                "0a0700c000003300003200002f") + os.urandom(16))
        assert closed_by_peer(s, timeout=5)
    serves_on(ft, pid)


def test_close_right_after_handshake(ft):
    pid = ft.serving_pids()
    for _ in range(10):
        ft.connect().close()
    s = ft.connect()
    rst_close(s)
    serves_on(ft, pid)


def test_client_disconnects_mid_response(ft):
    pid = ft.serving_pids()
    for _ in range(3):
        s = ft.connect()
        s.sendall(request_bytes("GET", f"/bytes/{20 * MIB}"))
        s.recv(16384)
        rst_close(s)
    time.sleep(0.2)
    serves_on(ft, pid)


def test_client_disconnects_while_backend_thinks(ft):
    pid = ft.serving_pids()
    s = ft.connect()
    s.sendall(request_bytes("GET", "/delay/0.5"))
    s.close()
    time.sleep(0.8)
    serves_on(ft, pid)


def test_client_disconnects_mid_upload(ft):
    pid = ft.serving_pids()
    s = ft.connect()
    s.sendall(request_bytes("POST", "/upload", headers=[("Content-Length", str(10 * MIB))]))
    s.sendall(os.urandom(MIB))
    rst_close(s)
    time.sleep(0.2)
    serves_on(ft, pid)
    # The pooled backend connection that carried half a body is not reused for a new request.
    r = ft.request("POST", "/upload", body=b"fresh")
    assert echo_json(r)["body_length"] == 5


def test_half_request_then_rst(ft):
    pid = ft.serving_pids()
    s = ft.connect()
    s.sendall(b"GET / HTTP/1.1\r\nHost: www.exa")
    rst_close(s)
    serves_on(ft, pid)


def test_many_concurrent_connections(ft):
    pid = ft.serving_pids()
    errors = []

    def client(i):
        try:
            with ft.connect(timeout=10) as s:
                s.sendall(request_bytes("GET", f"/c/{i}"))
                assert echo_json(read_response(Reader(s)))["path"] == f"/c/{i}"
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    serves_on(ft, pid)


def test_many_pipelined_requests(ft):
    pid = ft.serving_pids()
    with ft.connect(timeout=10) as s:
        s.sendall(b"".join(request_bytes("GET", f"/p/{i}") for i in range(100)))
        rd = Reader(s)
        paths = [echo_json(read_response(rd))["path"] for _ in range(100)]
    assert paths == [f"/p/{i}" for i in range(100)]
    serves_on(ft, pid)


def test_sigterm_graceful(ft):
    """SIGTERM: a request in flight is answered, then the process exits 0 within the drain deadline."""
    s = ft.connect()
    s.sendall(request_bytes("GET", "/delay/0.5"))
    time.sleep(0.1)
    ft.proc.send_signal(signal.SIGTERM)
    r = read_response(Reader(s))
    assert r.status == 200
    s.close()
    assert ft.proc.wait(timeout=5) == 0


def test_sigterm_drains_keepalive_with_connection_close(ft):
    """DESIGN "Draining": an idle keep-alive connection is not cut at once; its next response
    carries Connection: close, then the connection closes (zero failed requests on reload)."""
    s = ft.connect()
    rd = Reader(s)
    s.sendall(request_bytes("GET", "/before"))
    assert read_response(rd).status == 200
    ft.proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    s.sendall(request_bytes("GET", "/during-drain"))
    r = read_response(rd)
    assert r.status == 200 and echo_json(r)["path"] == "/during-drain"
    assert (r.header("connection") or "").lower() == "close"
    assert closed_by_peer(s, timeout=3)
    s.close()
    assert ft.proc.wait(timeout=5) == 0


# ---------------------------------------------------------------------------------------
# bad backends (every server down and a refused connect: test_route_timeouts.py; an expired
# backend certificate: test_reencrypt.py; each malformed response kind: test_errors.py)


def _backend_errors(admin_port: int) -> float:
    return metrics(admin_port, "fastterm_backend_errors_total")["fastterm_backend_errors_total"]


def test_garbage_from_the_backend_is_502_counted_and_logged(fastterm, raw_backend):
    from harness import free_port

    def handler(conn):
        while conn.read_request() is not None:
            conn.send(b"\x16\x03\x01\x00\x05garbage that is not HTTP\r\n\r\n")

    admin = free_port()
    ft = fastterm(raw_backend(handler).address, top={"admin": f"{HOST}:{admin}"})
    pids = ft.serving_pids()
    before = _backend_errors(admin)
    for i in range(3):
        assert ft.request("GET", f"/g{i}").status == 502
    assert _backend_errors(admin) - before == 3
    assert ft.log().count("invalid response") >= 3, ft.log()
    assert ft.serving_pids() == pids and "Traceback" not in ft.log()


def test_a_response_that_never_ends_is_closed_at_the_read_timeout_while_others_are_served(fastterm, raw_backend):
    """Content-Length 100, 7 bytes, then silence: that client's connection closes after the
    read timeout (2 s here), the body cut short; meanwhile the same worker answers others."""
    from harness import response_bytes

    def handler(conn):
        while (req := conn.read_request()) is not None:
            if req.target == "/stall":
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
                conn.hang()
                return
            conn.send(response_bytes(200, b"fine"))

    ft = fastterm(raw_backend(handler).address)
    pids = ft.serving_pids()
    with ft.connect(timeout=10) as stalled:
        stalled.sendall(request_bytes("GET", "/stall"))
        rd = Reader(stalled)
        assert rd.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        for i in range(5):   # the worker is not stuck behind the stalled exchange
            r = ft.request("GET", f"/meanwhile{i}", timeout=5)
            assert r.status == 200 and r.body == b"fine"
        assert time.monotonic() - t0 < 1.5
        got = b""
        while True:
            try:
                chunk = stalled.recv(4096)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += chunk
        waited = time.monotonic() - t0
    assert len(got) < 100 and 1.0 <= waited <= 6, (got, waited)   # "partial" may be in rd already
    assert ft.serving_pids() == pids and "Traceback" not in ft.log()
