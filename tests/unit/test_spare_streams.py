"""The worker keeps the streams and Exchanges of ended requests for the next ones (ext/h1.pyx
``_idle``, ``_begin``). Each keeps its last connection's objects, and so that connection's
server blocks and TLS context, until reused. When a certificate changes (Listener.serve),
the spares are dropped: nothing the swap replaced stays alive behind them. Driven in-process
on a real loop, with a real TLS client and backend.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
import threading

import uvloop
from inprocess import one_server_config

from fastterm.worker import Serving


def test_certificate_swap_drops_the_spare_streams(tmp_path, ec_leaf, intermediate, ca):
    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(8)
    backend.settimeout(5)

    def answer() -> None:
        conn, _ = backend.accept()
        with conn:
            conn.settimeout(10)
            got = b""
            for _ in range(2):
                while b"\r\n\r\n" not in got:
                    got += conn.recv(4096)
                got = got.partition(b"\r\n\r\n")[2]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    config, port = one_server_config(tmp_path, ec_leaf, intermediate, backend.getsockname())
    loop = uvloop.new_event_loop()
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    replies: list[bytes] = []

    def client() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="www.example.com") as tls:
            for path in (b"/one", b"/two"):
                tls.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
                got = b""
                while not got.endswith(b"ok"):
                    got += tls.recv(4096)
                replies.append(got.split(b"\r\n")[0])

    counts = {}

    async def main():
        serving = Serving(config, loop)
        await serving.start()
        (listener,) = serving.listeners
        sites, context = listener.sites, listener.context
        counts["before"] = sys.getrefcount(sites), sys.getrefcount(context)
        threading.Thread(target=answer, daemon=True).start()
        t = threading.Thread(target=client, daemon=True)
        t.start()
        while t.is_alive() or serving.worker.clients:
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.5)   # the closed connection released (at the next sweep)
        counts["kept"] = sys.getrefcount(sites), sys.getrefcount(context)
        listener.serve(context, sites)   # what a certificate reload calls
        counts["after"] = sys.getrefcount(sites), sys.getrefcount(context)
        del sites, context
        await serving.stop(graceful=False)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        backend.close()
    assert replies == [b"HTTP/1.1 200 OK"] * 2
    assert counts["kept"] > counts["before"], counts   # the spare stream's connection holds them
    assert counts["after"] == counts["before"], counts
