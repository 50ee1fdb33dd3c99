"""One serving process: builds the ext objects from a Config and runs a uvloop loop.

All per-byte work happens in ``fastterm._core``; this module only wires policy
(which certificate, which upstream, which limits) into it.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
import socket
from dataclasses import dataclass, field

import msgspec

from fastterm.certs.store import load_certificate
from fastterm.config.model import Config, Server
from fastterm.config.toml import KeyLines, parse_address
from fastterm.errors import ConfigError, TLSError

log = logging.getLogger("fastterm.worker")


@dataclass
class Plan:
    """Everything a worker serves, built and validated before any socket is bound."""

    listeners: list[tuple[tuple[str, int], object]] = field(default_factory=list)  # (addr, TLSContext)
    pools: dict[str, object] = field(default_factory=dict)
    redirects: list[tuple[tuple[str, int], int]] = field(default_factory=list)  # (addr, https_port)


def _where(server: Server, index: int) -> str:
    return f"server[{index}] ({', '.join(server.server_names) or 'no server_names'})"


def _server_policy(server: Server, pools: dict, index: int):
    """What the Host header selects: routes, HSTS, trusted proxies (one per server block)."""
    from fastterm._core import ServerPolicy

    routes = []
    for route in server.routes:
        if route.upstream not in pools:
            raise ConfigError(f"unknown upstream {route.upstream!r}", directive=f"{_where(server, index)} route")
        routes.append((route.path, pools[route.upstream]))
    return ServerPolicy(",".join(server.server_names) or f"server{index}", routes,
                        server.hsts, server.trusted_proxies)


def _session_scope(addr: tuple[str, int], server: Server, index: int) -> bytes:
    """The session ID context of one server block on one listener.

    OpenSSL resumes a session (ID or ticket) only under the context it was made in
    (SSL_CTX_set_session_id_context(3)), so a session from another server block or
    listener gets a full handshake. Made from what a reload and the other nodes of a
    fleet share (DESIGN.md "Scaling past one machine"): the block (position, names, TLS
    policy) and the listener as the position of its port among the block's, not its
    address, so nodes on other addresses, and both address families of a port, share
    sessions. A changed policy starts afresh.
    """
    ports = list(dict.fromkeys(parse_address(listen)[1] for listen in server.listen))
    names = sorted(name.lower() for name in server.server_names)
    return hashlib.sha256(msgspec.json.encode([index, names, ports.index(addr[1]), server.tls])).digest()


def _server_context(server: Server, index: int, certificates: list, policy, scope: bytes):
    from fastterm._core import TLSContext

    tls = server.tls
    where = _where(server, index)
    try:
        ctx = TLSContext(
            protocols=tls.protocols, ciphers=tls.ciphers, ciphersuites=tls.ciphersuites,
            groups=tls.groups, prefer_server_ciphers=tls.prefer_server_ciphers,
            session_cache=tls.session_cache, session_timeout=tls.session_timeout,
            session_tickets=tls.session_tickets, alpn=tls.alpn, session_id_context=scope,
        )
    except TLSError as exc:
        raise ConfigError(str(exc), directive=f"{where} tls") from None
    for ck in certificates:
        try:
            ctx.add_certificate(ck.chain_pem, ck.key_pem)
        except TLSError as exc:
            raise ConfigError(f"{ck.source}: {exc}", directive=f"{where} certificate") from None
    ctx.server = policy
    return ctx


def _check_listener_settings(config: Config, addr: tuple[str, int], indexes: list[int], default: int,
                             source: str | None) -> None:
    """Refuse a per-server TLS setting OpenSSL cannot apply per server block.

    The session cache lives on the context every connection starts on, the listener's
    default server's (SSL_new's session_ctx, which SSL_set_SSL_CTX keeps), so a server
    block cannot turn it on or off for itself. Everything else in ``[server.tls]`` is
    applied by the ClientHello and servername callbacks (ext/tls.pyx).
    """
    want = config.servers[default].tls.session_cache
    for i in indexes:
        server = config.servers[i]
        if server.tls.session_cache == want:
            continue
        host, port = addr
        listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        line = None
        if source:
            with open(source, encoding="utf-8") as f:
                line = KeyLines(f.read()).line(("server", i, "tls", "session_cache"))
        raise ConfigError(
            f"server {', '.join(server.server_names) or i}: session_cache = "
            f"{str(server.tls.session_cache).lower()} differs from the default server "
            f"({', '.join(config.servers[default].server_names) or default}) on {listen}; OpenSSL applies "
            "the listener's (one session cache per listener): set the same value on both",
            file=source, line=line, directive="server.tls.session_cache")


def build(config: Config, source: str | None = None) -> Plan:
    """Build every SSL_CTX and upstream pool; raises ConfigError naming what is wrong
    (located in ``source``, the configuration file, when given).

    One TLS context per server block and listener: each its own session scope.
    """
    from fastterm._core import UpstreamPool

    plan = Plan()
    for up in config.upstreams:
        servers = [parse_address(s, default_host="127.0.0.1") for s in up.servers]
        plan.pools[up.name] = UpstreamPool(up.name, servers, up.keepalive)
    policies = [_server_policy(server, plan.pools, i) for i, server in enumerate(config.servers)]
    certificates = [[load_certificate(c.cert, c.key) for c in server.certificates] for server in config.servers]
    by_listen: dict[tuple[str, int], list[int]] = {}
    for i, server in enumerate(config.servers):
        for listen in server.listen:
            by_listen.setdefault(parse_address(listen), []).append(i)
    for addr, indexes in by_listen.items():
        default = next((i for i in indexes if config.servers[i].default_server), indexes[0])
        _check_listener_settings(config, addr, indexes, default, source)
        contexts = {i: _server_context(config.servers[i], i, certificates[i], policies[i],
                                       _session_scope(addr, config.servers[i], i)) for i in indexes}
        names = {}
        for i in indexes:
            for name in config.servers[i].server_names:
                names.setdefault(name.lower(), contexts[i])
        contexts[default].set_sni(names)
        plan.listeners.append((addr, contexts[default]))
    for redirect in config.redirects:
        for listen in redirect.listen:
            plan.redirects.append((parse_address(listen), redirect.https_port))
    return plan


def build_contexts(config: Config, source: str | None = None) -> Plan:
    """What ``fastterm check`` runs: the same construction as serving, nothing bound."""
    return build(config, source)


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


class RedirectProtocol(asyncio.Protocol):
    """Port 80: ``301 https://$host$request_uri`` (the https port added when not 443)."""

    def __init__(self, https_port: int, listen_host: str, max_head: int = 16384):
        self.https_port = https_port
        self.listen_host = listen_host
        self.max_head = max_head
        self.buf = bytearray()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

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
        self.worker = Worker(loop, config.limits)
        self.listeners = []
        self.redirect_servers = []
        self.bio_servers = []
        self.stopping = False
        self.stopped = asyncio.Event()
        # FASTTERM_CLIENT_IO=bio: the memory-BIO client path, kept to measure against (DESIGN.md).
        self.client_io = os.environ.get("FASTTERM_CLIENT_IO", "fd")
        self.sockets = sockets or {}
        self.redirect_sockets = redirect_sockets or {}
        for addr, _ctx in self.plan.listeners:
            if addr not in self.sockets:
                ensure_free(addr)
        if self.client_io == "fd":
            for addr, ctx in self.plan.listeners:
                listener = Listener(self.worker, self.sockets.get(addr) or bind(addr), ctx)
                listener.start()
                self.listeners.append(listener)

    async def start(self):
        from fastterm._core import bio_protocol_factory

        if self.client_io == "bio":
            for addr, ctx in self.plan.listeners:
                sock = self.sockets.get(addr) or bind(addr)
                self.bio_servers.append(await self.loop.create_server(
                    bio_protocol_factory(self.worker, ctx), sock=sock))
        for addr, https_port in self.plan.redirects:
            sock = self.redirect_sockets.get(addr) or bind(addr)
            server = await self.loop.create_server(
                lambda a=addr, p=https_port: RedirectProtocol(p, a[0]), sock=sock)
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
        for server in self.redirect_servers + self.bio_servers:
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
        addrs = ", ".join(f"{h}:{p}" for (h, p), _ in plan.listeners)
        log.info("serving https on %s", addrs)
        await serving.stopped.wait()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
