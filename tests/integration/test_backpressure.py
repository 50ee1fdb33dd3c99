"""A client that does not read must cost a bounded amount of memory and, after
``send_timeout``, its connection (nginx ``send_timeout``).

Each attack is sent as a real TLS client with a small receive window that never reads;
what the worker's RSS did and what the backend was asked for are the assertions.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from harness import HOST, NAME, response_bytes, wait_for
from httpwire import Reader, read_response, request_bytes

MIB = 1024 * 1024


def non_reading_client(ft, rcvbuf: int = 4096) -> ssl.SSLSocket:
    """A TLS connection whose kernel receive window stays small: the server's output backs up."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(10)
    raw.connect((HOST, ft.https_port))
    return ft.client_context().wrap_socket(raw, server_hostname=NAME)


def test_pipelined_flood_with_huge_response_keeps_rss_flat(fastterm, demo_backend):
    """2,000 pipelined 4 KB GETs (more than the socket buffers hold) and a 4 GB one, never
    read: the worker stays flat (the backend is paused, held requests wait, a pooled
    connection is not resumed while output is pending)."""
    ft = fastterm(demo_backend)
    assert ft.request("GET", "/warm").status == 200
    before = ft.rss_kib()
    sock = non_reading_client(ft)
    flood = request_bytes("GET", "/bytes/4000") * 2000 + request_bytes("GET", "/bytes/4000000000")
    sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 8
    peak = before
    while time.monotonic() < deadline:
        if sent < len(flood):
            try:
                sent += sock.send(flood[sent:sent + 16384])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                pass
        peak = max(peak, ft.rss_kib())
        time.sleep(0.01)
    sock.close()
    assert (peak - before) < 32 * 1024, f"worker RSS grew {(peak - before) // 1024} MiB under the attack"
    assert ft.request("GET", "/after").status == 200


def test_pipelined_requests_wait_while_output_is_pending(fastterm, raw_backend):
    """Held pipelined requests are not sent to the backend while earlier responses are unsent."""
    body = b"x" * (16 * 1024)   # each response fits one backend read: it completes while unsent

    def big_answers(conn):
        while (conn.read_request()) is not None:
            conn.send(response_bytes(200, body))

    backend = raw_backend(big_answers)
    ft = fastterm(backend.address)
    sock = non_reading_client(ft)
    count = 2000   # 32 MiB of responses: far more than the kernel's socket buffers take
    sock.sendall(request_bytes("GET", "/p") * count)
    time.sleep(3)
    asked = len(backend.requests)
    before = ft.rss_kib()
    time.sleep(1)
    # What was answered fits in the kernel's buffers (send side up to tcp_wmem's maximum)
    # plus one response waiting in the worker; the rest waits unread.
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    assert asked * len(body) < wmem_max + 1024 * 1024, \
        f"{asked} of {count} pipelined requests reached the backend while nothing was read"
    assert len(backend.requests) == asked, "requests went on reaching the backend"
    assert ft.rss_kib() - before < 8 * 1024
    # Once the client reads, every response arrives, in order, complete.
    sock.settimeout(20)
    reader = Reader(sock)
    for _ in range(count):
        r = read_response(reader)
        assert r.status == 200 and len(r.body) == len(body)
    sock.close()
    assert len(backend.requests) == count


def test_backend_paused_while_client_does_not_read(fastterm, raw_backend):
    """A paused client pauses its backend: the backend's writes block, nothing piles up in the worker."""
    progress = {"sent": 0}

    def endless(conn):
        if conn.read_request() is None:
            return
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"y" * 65536 + b"\r\n"
        conn.sock.settimeout(30)
        try:
            for _ in range(16384):   # 1 GiB at most
                conn.sock.sendall(chunk)
                progress["sent"] += len(chunk)
        except OSError:
            pass

    backend = raw_backend(endless)
    ft = fastterm(backend.address)
    before = ft.rss_kib()
    sock = non_reading_client(ft)
    sock.sendall(request_bytes("GET", "/stream"))
    assert wait_for(lambda: progress["sent"] > 0, timeout=5)
    time.sleep(3)
    stalled_at = progress["sent"]
    time.sleep(1)
    assert progress["sent"] - stalled_at < 256 * 1024, "the backend kept sending to a client that reads nothing"
    assert stalled_at < 64 * MIB
    assert ft.rss_kib() - before < 16 * 1024
    sock.close()


def test_client_that_never_reads_is_closed_after_send_timeout(fastterm, demo_backend):
    """nginx send_timeout: no progress writing to the client for that long closes it
    (the backend read timeout is long here: a paused backend is not what times out)."""
    ft = fastterm(demo_backend, limits={"send_timeout": 2, "backend_read_timeout": 30})
    sock = non_reading_client(ft)
    sock.sendall(request_bytes("GET", "/bytes/200000000"))
    time.sleep(5)
    sock.settimeout(5)
    got = 0
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            got += len(data)
    except (ssl.SSLError, OSError):
        pass
    assert got < 32 * MIB, f"read {got} bytes: the connection was not closed at send_timeout"
    assert "Traceback" not in ft.log()
    assert ft.request("GET", "/after").status == 200


def test_slow_reader_gets_the_whole_response(fastterm, raw_backend):
    """Reading slowly but steadily is progress: a send_timeout shorter than the transfer
    does not cut a Connection: close response that the client keeps reading."""
    body = b"z" * (8 * MIB)

    def answer_and_close(conn):
        if conn.read_request() is not None:
            conn.send(response_bytes(200, body, [("Connection", "close")]))

    backend = raw_backend(answer_and_close)
    ft = fastterm(backend.address, limits={"send_timeout": 2})
    sock = non_reading_client(ft)
    sock.sendall(request_bytes("GET", "/slow"))
    sock.settimeout(10)
    received = bytearray()
    paced = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        received += data
        if len(received) - paced >= 256 * 1024:
            paced = len(received)
            time.sleep(0.15)   # ~5 s in all: longer than send_timeout and the 2 s linger
    sock.close()
    assert received.endswith(body[-1024:]) and len(received) > len(body), len(received)
