"""A backend connection that still holds some of its request when the response ends is not
pooled, driven in-process on a real loop with real sockets (the worker's socket to the
backend gets a small send buffer, so the request body backs up in the worker at once).

A backend that answers before reading the whole body may never read the rest (nginx pools
only a connection whose request was sent). Pooled, the next request would wait behind the
unread bytes until its read timeout, and a transport already past its high mark would
never tell the next stream to pause.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading

import pytest
import uvloop
from inprocess import one_server_config

from fastterm.config.model import Limits, UpstreamTLS
from fastterm.worker import Serving

BODY = 40 * 1024   # more than the shrunken buffers take, less than the high mark (64 KiB)


def _backend_socket_of_worker(backend: tuple[str, int]) -> int | None:
    """The fd of this process's connected socket to ``backend`` (the worker's side)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if s.type == socket.SOCK_STREAM and s.getpeername() == backend and s.getsockname() != backend:
                return int(name)
        except OSError:
            pass
        finally:
            s.close()
    return None


@pytest.mark.parametrize("backend_uses_tls", [False, True], ids=["plain", "tls"])
def test_connection_holding_unsent_body_is_not_pooled(tmp_path, ec_leaf, intermediate, ca, backend_uses_tls):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # a small window for the worker
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    backend = listener.getsockname()
    stop = threading.Event()
    head_seen = threading.Event()
    shrunk = threading.Event()
    accepted: list[socket.socket] = []
    uploads: list[bytes] = []

    def read_head(conn: socket.socket) -> bytes:
        head = bytearray()
        while b"\r\n\r\n" not in head:
            data = conn.recv(1)
            if not data:
                raise EOFError
            head += data
        return bytes(head)

    def serve(conn: socket.socket, first: bool) -> None:
        conn.settimeout(10)
        try:
            if backend_uses_tls:
                conn = backend_tls.wrap_socket(conn, server_side=True)
            if first:
                read_head(conn)
                head_seen.set()
                shrunk.wait(5)
                stop.wait(1)   # the worker reads the whole body meanwhile and holds most of it
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                stop.wait(30)   # reads nothing more
                return
            while True:
                head = read_head(conn)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                body = bytearray()
                while len(body) < length:
                    body += conn.recv(length - len(body))
                uploads.append(head.split(b" ")[1] + b" " + bytes(body))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        except (OSError, EOFError):
            pass

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)
            threading.Thread(target=serve, args=(conn, len(accepted) == 1), daemon=True).start()

    config, port = one_server_config(tmp_path, ec_leaf, intermediate, backend, Limits(backend_read_timeout=3),
                                     upstream_tls=UpstreamTLS(verify="none") if backend_uses_tls else None)
    backend_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)   # the frontend's certificate, unchecked
    backend_tls.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
    loop = uvloop.new_event_loop()
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    replies: list[bytes] = []

    def read_reply(tls: ssl.SSLSocket) -> bytes:
        got = b""
        while b"\r\n\r\n" not in got:
            got += tls.recv(4096)
        head, _, body = got.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += tls.recv(4096)
        return head.split(b"\r\n")[0] + b" " + body

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="www.example.com") as tls:
            tls.sendall(b"POST /first HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: %d\r\n\r\n" % BODY)
            shrunk.wait(5)
            tls.sendall(b"f" * BODY)
            replies.append(read_reply(tls))
            tls.sendall(b"POST /again HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 6\r\n\r\nsecond")
            replies.append(read_reply(tls))

    async def main():
        serving = Serving(config, loop)
        await serving.start()
        t = threading.Thread(target=client, daemon=True)
        t.start()
        while not head_seen.is_set():
            await asyncio.sleep(0.01)
        fd = _backend_socket_of_worker(backend)
        assert fd is not None
        s = socket.socket(fileno=os.dup(fd))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.close()
        shrunk.set()
        while t.is_alive():
            await asyncio.sleep(0.05)
        await serving.stop(graceful=False)

    threading.Thread(target=accept_loop, daemon=True).start()
    try:
        loop.run_until_complete(main())
        assert replies == [b"HTTP/1.1 200 OK ok", b"HTTP/1.1 200 OK done"], replies
        assert uploads == [b"/again second"]
        assert len(accepted) == 2, f"{len(accepted)} backend connections: the one still sending was pooled"
    finally:
        stop.set()
        loop.close()
        listener.close()
        for conn in accepted:
            conn.close()
