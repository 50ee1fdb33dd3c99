"""One serving process: the ext objects from a Plan (``config/plan.py``) on a uvloop loop.

All per-byte work happens in ``fastterm._core``; this module binds and starts listeners,
the port-80 redirect, and stops them (drain).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket

from fastterm.config.model import Config
from fastterm.config.plan import Plan, build
from fastterm.errors import ConfigError

log = logging.getLogger("fastterm.worker")


def ensure_free(addr: tuple[str, int]) -> None:
    """Refuse an address another process listens on. SO_REUSEPORT would let us bind
    beside a stale instance and silently split its traffic; nginx says "in use"."""
    host, port = addr
    if port == 0:
        return
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    finally:
        probe.close()


def bind(addr: tuple[str, int], *, reuse_port: bool = True, backlog: int = 1024) -> socket.socket:
    host, port = addr
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


class RedirectLimits:
    """What every port-80 connection of a worker shares: its header timeout and a cap on how
    many are open, a quarter of worker_connections, so idle plain-HTTP connections can never
    take the file descriptors the TLS port needs."""

    def __init__(self, header_timeout: float, max_open: int):
        self.header_timeout = header_timeout
        self.max_open = max_open
        self.open = 0


class RedirectProtocol(asyncio.Protocol):
    """Port 80: ``301 https://$host$request_uri`` (the https port added when not 443)."""

    def __init__(self, https_port: int, listen_host: str, limits: RedirectLimits, max_head: int = 16384):
        self.https_port = https_port
        self.listen_host = listen_host
        self.limits = limits
        self.max_head = max_head
        self.buf = bytearray()
        self.transport = None
        self.timer = None

    def connection_made(self, transport):
        self.transport = transport
        if self.limits.open >= self.limits.max_open:
            transport.abort()
            return
        self.limits.open += 1
        # One deadline for the whole request head (client_header_timeout), not per read:
        # a client dripping a byte a second is closed on time too.
        self.timer = asyncio.get_running_loop().call_later(self.limits.header_timeout, transport.abort)

    def connection_lost(self, exc):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            self.limits.open -= 1

    def data_received(self, data):
        from fastterm._core import parse_request_head

        self.buf += data
        try:
            req = parse_request_head(self.buf)
        except ValueError as exc:
            if exc.args[0] == "incomplete" and len(self.buf) <= self.max_head:
                return
            status = 431 if exc.args[0] == "incomplete" else 400
            return self._respond(status, {400: "Bad Request", 431: "Request Header Fields Too Large"}[status])
        host = req["host"] or self.listen_host
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        else:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        port = "" if self.https_port == 443 else f":{self.https_port}"
        target = req["target"] if req["target"].startswith("/") else "/"
        self._respond(301, "Moved Permanently", f"https://{host}{port}{target}", req["method"] == "HEAD")

    def _respond(self, status, reason, location=None, head=False):
        body = f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>\r\n"
        lines = [f"HTTP/1.1 {status} {reason}", "Server: fastterm", "Content-Type: text/html",
                 f"Content-Length: {len(body)}", "Connection: close"]
        if location:
            lines.append(f"Location: {location}")
        out = ("\r\n".join(lines) + "\r\n\r\n" + ("" if head else body)).encode("latin-1")
        self.transport.write(out)
        self.transport.close()


class Serving:
    """A running worker: listeners, redirect servers, the ext Worker, and its stop logic."""

    def __init__(self, config: Config, loop, plan: Plan | None = None, sockets=None, redirect_sockets=None):
        from fastterm._core import Listener, Worker

        self.config = config
        self.loop = loop
        self.plan = plan or build(config)
        self.worker = Worker(loop, config.limits, self.plan.pools.values())
        self.listeners = []
        self.redirect_servers = []
        self.stopping = False
        self.stopped = asyncio.Event()
        self.sockets = sockets or {}
        self.redirect_sockets = redirect_sockets or {}
        for addr, _ctx, _sites in self.plan.listeners:
            if addr not in self.sockets:
                ensure_free(addr)
        for addr, ctx, sites in self.plan.listeners:
            listener = Listener(self.worker, self.sockets.get(addr) or bind(addr), ctx, sites)
            listener.start()
            self.listeners.append(listener)

    async def start(self):
        limits = RedirectLimits(self.config.limits.client_header_timeout,
                                max(16, self.worker.max_clients // 4))
        for addr, https_port in self.plan.redirects:
            sock = self.redirect_sockets.get(addr) or bind(addr)
            server = await self.loop.create_server(
                lambda a=addr, p=https_port: RedirectProtocol(p, a[0], limits), sock=sock)
            self.redirect_servers.append(server)

    async def stop(self, graceful: bool = True):
        """Stop accepting; let in-flight requests finish (until drain_timeout), then close."""
        if self.stopping:
            if not graceful:
                self.worker.close()
            return
        self.stopping = True
        for listener in self.listeners:
            listener.stop()
        for server in self.redirect_servers:
            server.close()
        if graceful:
            self.worker.drain()
            deadline = self.loop.time() + self.config.limits.drain_timeout
            while self.worker.clients and self.loop.time() < deadline:
                await asyncio.sleep(0.05)
        self.worker.close()
        self.stopped.set()


def setup_logging(config: Config) -> None:
    level = getattr(logging, config.log_level.upper())
    handler = logging.FileHandler(config.error_log) if config.error_log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(process)d %(name)s: %(message)s"))
    root = logging.getLogger("fastterm")
    root.handlers[:] = [handler]
    root.setLevel(level)


def settle_heap() -> None:
    """Move everything built at start-up (modules, config, SSL_CTX wrappers) out of the
    cyclic GC's reach: a full collection then walks only objects made while serving,
    which keeps its pauses, and so the latency tail, short (CPython's gc.freeze)."""
    gc.collect()
    gc.freeze()


def reopen_logs(config: Config) -> None:
    """SIGUSR1: reopen the error log (after logrotate moved it)."""
    if config.error_log:
        setup_logging(config)


def serve_forked(config: Config, plan: Plan, sockets: dict, redirect_sockets: dict, shared,
                 counter_slot: int, master_pid: int) -> None:
    """A worker forked by the master: serve on the inherited sockets until told to stop."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def main():
        serving = Serving(config, loop, plan, sockets=sockets, redirect_sockets=redirect_sockets)
        serving.worker.use_counter_slot(shared, counter_slot)
        await serving.start()
        settle_heap()
        stop = lambda graceful: asyncio.ensure_future(serving.stop(graceful))
        loop.add_signal_handler(signal.SIGTERM, stop, True)
        loop.add_signal_handler(signal.SIGQUIT, stop, False)
        # Ctrl-C reaches the whole process group: the master turns it into SIGTERM.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGUSR1, reopen_logs, config)

        def watch_master():
            if os.getppid() != master_pid and not serving.stopping:
                log.error("master %d is gone: stopping", master_pid)
                stop(True)
            else:
                loop.call_later(1.0, watch_master)

        loop.call_later(1.0, watch_master)
        await serving.stopped.wait()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def run(config: Config) -> None:
    """Serve ``config`` in this process until SIGTERM/SIGINT (graceful) or SIGQUIT (fast)."""
    import uvloop

    setup_logging(config)
    plan = build(config)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def main():
        serving = Serving(config, loop, plan)
        await serving.start()
        settle_heap()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(serving.stop(True)))
        loop.add_signal_handler(signal.SIGQUIT, lambda: asyncio.ensure_future(serving.stop(False)))
        addrs = ", ".join(f"{h}:{p}" for (h, p), *_ in plan.listeners)
        log.info("serving https on %s", addrs)
        await serving.stopped.wait()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
