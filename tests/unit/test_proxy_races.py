"""Races inside one worker, driven in-process on a real loop with real sockets.

A backend connect that completes just as its timeout fires: the timeout has already sent
the request on to another server, and ``cancel()`` came too late for the finished connect.
Its completion callback then arrives for a future the connection no longer waits on; it
must close that backend connection, not attach it and send the request a second time.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

import uvloop
from fastterm._core import BackendConnection, BackendPlainTransport
from inprocess import one_server_config

from fastterm.config.model import Limits
from fastterm.worker import Serving


def _listener(backlog: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)
    return s


def test_stale_connect_completion_is_closed_not_attached(tmp_path, ec_leaf, intermediate, ca):
    # A backend whose accept queue is full: SYNs are dropped, so the worker's connect stays
    # pending (the request is "connecting") for as long as the test needs.
    stuck = _listener(0)
    fillers = []
    for _ in range(3):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(stuck.getsockname())
        fillers.append(f)
    late = _listener(8)   # where the stale connect went
    late.settimeout(5)
    config, port = one_server_config(tmp_path, ec_leaf, intermediate, stuck.getsockname(), Limits(backend_connect_timeout=30))
    loop = uvloop.new_event_loop()
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    replies: list[bytes] = []

    def client(port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="www.example.com") as tls:
            tls.sendall(b"GET /once HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
            try:
                replies.append(tls.recv(4096))
            except OSError:
                pass

    async def main():
        serving = Serving(config, loop)
        await serving.start()
        t = threading.Thread(target=client, args=(port,), daemon=True)
        t.start()
        for _ in range(500):
            if serving.worker.clients and serving.worker.stats()["backend_connects"]:
                break
            await asyncio.sleep(0.01)
        (conn,) = serving.worker.clients
        pool = serving.plan.pools["app"]
        done = loop.create_future()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, late.getsockname())
        transport = BackendPlainTransport(serving.worker, sock)
        protocol = BackendConnection(serving.worker, pool, 0)
        transport.start(protocol)
        done.set_result((transport, protocol))
        conn.session.stream._on_connected(done)   # the finished connect of an attempt already given up on
        await asyncio.sleep(0.3)
        await serving.stop(graceful=False)
        t.join(5)

    try:
        loop.run_until_complete(main())
        accepted, _ = late.accept()
        accepted.settimeout(2)
        try:
            got = accepted.recv(65536)
        except OSError:
            got = b""
        accepted.close()
        assert got == b"", f"the stale connection was attached and sent the request: {got[:200]!r}"
    finally:
        loop.close()
        for s in fillers + [stuck, late]:
            s.close()
