"""A client that does not read must cost a bounded amount of memory and, after
``send_timeout``, its connection (nginx ``send_timeout``).

Each attack is sent as a real TLS client with a small receive window that never reads;
what the worker's RSS did and what the backend was asked for are the assertions.
The last response before a close (Connection: close, HTTP/1.0) must arrive whole, backed up
in the send buffer at close, followed by close_notify, not a reset.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import socket
import ssl
import time
from pathlib import Path

import pytest
from harness import HOST, NAME, response_bytes, wait_for, within_rss_bound
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
    assert within_rss_bound(peak - before, 32 * 1024), f"worker RSS grew {(peak - before) // 1024} MiB under the attack"
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
    assert within_rss_bound(ft.rss_kib() - before, 8 * 1024)
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
    assert within_rss_bound(ft.rss_kib() - before, 16 * 1024)
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


# ---- The last response before close (ClientConnection.finish) ---------------------------
# A client's last request (Connection: close, HTTP/1.0) read whole with nothing unread closes
# without lingering; input still unread falls back to half-close + lingering close. Either way
# the client reads the whole response, then close_notify, while the worker's send buffer still
# holds the response's tail at close (a small client window, a 1 MiB body).

LAST_BODY = bytes(range(256)) * 4096   # 1 MiB, each byte at a known place


def close_reader(ft) -> ssl.SSLSocket:
    """A small-window client that tells an unclean EOF from close_notify (no ragged-EOF hiding)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.settimeout(20)
    raw.connect((HOST, ft.https_port))
    return ft.client_context().wrap_socket(raw, server_hostname=NAME, suppress_ragged_eofs=False)


def last_body_backend(raw_backend, body: bytes = LAST_BODY):
    def answer(conn):
        while conn.read_request() is not None:
            conn.send(response_bytes(200, body))
    return raw_backend(answer)


def assert_whole_then_close_notify(sock: ssl.SSLSocket, body: bytes = LAST_BODY) -> None:
    """The response in full, then a clean TLS close: recv returns b'' (not a reset, not an
    unexpected EOF), and our own close_notify completes the shutdown."""
    reader = Reader(sock)
    digest = hashlib.sha256()
    r = read_response(reader, keep_body=False, hasher=digest)
    assert r.status == 200 and r.header("Content-Length") == str(len(body)), r.headers
    assert digest.digest() == hashlib.sha256(body).digest(), "the body arrived altered"
    assert r.header("Connection") == "close", r.headers
    assert not reader.buf, f"{len(reader.buf)} bytes after the response"
    assert sock.recv(65536) == b"", "data after the last response"
    sock.unwrap().close()


def test_connection_close_gets_whole_response_then_close_notify(fastterm, raw_backend):
    """The fast close (nothing unread at finish) still lets the send buffer drain: the whole
    1 MiB, then close_notify; three times on the same worker."""
    ft = fastterm(last_body_backend(raw_backend).address)
    for _ in range(3):
        sock = close_reader(ft)
        sock.sendall(request_bytes("GET", "/last", headers=[("Connection", "close")]))
        time.sleep(0.2)   # the response backs up in the worker's send buffer before we read
        assert_whole_then_close_notify(sock)
    assert "Traceback" not in ft.log()


def test_http10_gets_whole_response_then_close_notify(fastterm, raw_backend):
    ft = fastterm(last_body_backend(raw_backend).address)
    sock = close_reader(ft)
    sock.sendall(request_bytes("GET", "/old", version="HTTP/1.0"))
    time.sleep(0.2)
    assert_whole_then_close_notify(sock)


def test_connection_close_with_pipelined_request_is_not_reset(fastterm, raw_backend):
    """A request after the client's last one, in the same write: fastterm holds it, answers
    only the first and lingers; the client reads that response whole, no RST."""
    backend = last_body_backend(raw_backend)
    ft = fastterm(backend.address)
    sock = close_reader(ft)
    sock.sendall(request_bytes("GET", "/first", headers=[("Connection", "close")])
                 + request_bytes("GET", "/second"))
    time.sleep(0.2)
    assert_whole_then_close_notify(sock)
    assert [m.target for m in backend.requests] == ["/first"]


def test_bytes_after_last_request_unread_at_close_are_not_a_reset(fastterm, raw_backend):
    """Bytes the client sends after its last request, while the response is still backed up
    in the worker (more than the kernel's send buffer holds), sit unread when fastterm
    finishes: it lingers instead of closing (a close with unread input would RST and drop
    the response's tail still in the send buffer)."""
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    body = LAST_BODY * (wmem_max // len(LAST_BODY) + 4)
    ft = fastterm(last_body_backend(raw_backend, body).address)
    sock = close_reader(ft)
    sock.sendall(request_bytes("GET", "/late", headers=[("Connection", "close")]))
    time.sleep(0.5)   # the worker's send buffer fills; the rest of the response waits in the worker
    sock.sendall(b"X" * 2048)   # after the last request: never parsed, only discarded by the linger
    time.sleep(0.2)
    assert_whole_then_close_notify(sock, body)


def _server_side_socket(ft, client: socket.socket) -> socket.socket:
    """A duplicate (pidfd_getfd, Linux 5.6) of the worker's accepted socket for ``client``,
    found by its inode in /proc/net/tcp; skips where the kernel or ptrace rules refuse."""
    port = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == ft.https_port and int(f[2].split(":")[1], 16) == port:
            inode = f[9]
    assert inode is not None, "the accepted connection is not in /proc/net/tcp"
    libc = ctypes.CDLL(None, use_errno=True)
    for pid in ft.serving_pids():
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target != f"socket:[{inode}]":
                continue
            pidfd = os.pidfd_open(pid)
            try:
                dup = libc.syscall(438, pidfd, int(fd), 0)   # SYS_pidfd_getfd on x86-64 and arm64
            finally:
                os.close(pidfd)
            if dup < 0:
                pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
            return socket.socket(fileno=dup)
    raise AssertionError(f"no worker holds socket:[{inode}]")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="pidfd_getfd is syscall 438 there")
def test_accepted_socket_has_nodelay(fastterm, demo_backend):
    """TCP_NODELAY is set on the listener only; the accepted socket inherits it (Linux copies
    it in inet_csk_clone_lock): checked on the worker's own socket, mid-connection."""
    ft = fastterm(demo_backend)
    with ft.connect() as sock:
        sock.sendall(request_bytes("GET", "/one"))
        assert read_response(Reader(sock)).status == 200
        server_side = _server_side_socket(ft, sock)
        try:
            assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            server_side.close()
        sock.sendall(request_bytes("GET", "/two"))   # our duplicate is gone: the worker's socket serves on
        assert read_response(Reader(sock)).status == 200
