"""One serving process: the ext objects from a Plan (``config/plan.py``) on a uvloop loop.

All per-byte work happens in ``fastterm._core``; this module binds and starts listeners,
the port-80 listener (``fastterm/redirect.py``), and stops them (drain).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket

from fastterm.accesslog import open_access_log
from fastterm.certs.acme import challenge_dirs
from fastterm.certs.ocsp import STARTUP_WAIT, LoopSelector, Stapler
from fastterm.certs.watch import CertWatcher
from fastterm.config.model import Config
from fastterm.config.plan import Plan, build
from fastterm.errors import ConfigError
from fastterm.redirect import RedirectLimits, RedirectProtocol

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


class Serving:
    """A running worker: listeners, redirect servers, the ext Worker, and its stop logic."""

    def __init__(self, config: Config, loop, plan: Plan | None = None, sockets=None, redirect_sockets=None,
                 shared=None, stapler=None):
        from fastterm._core import Listener, Worker

        self.config = config
        self.loop = loop
        self.plan = plan or build(config)
        self.worker = Worker(loop, config.limits, self.plan.pools.values())
        self.worker.hs_log_rate = config.handshake_log_rate
        if config.access_log and config.access_log != "off":
            self.worker.set_access_log(open_access_log(config.access_log, config.access_log_format))
        self.listeners = []
        self.redirect_servers = []
        self.redirect_limits = None
        self.stopping = False
        self.stopped = asyncio.Event()
        self.sockets = sockets or {}
        self.redirect_sockets = redirect_sockets or {}
        for addr, _ctx, _sites in self.plan.listeners:
            if addr not in self.sockets:
                ensure_free(addr)
        for addr, ctx, sites in self.plan.listeners:
            listener = Listener(self.worker, self.sockets.get(addr) or bind(addr), ctx, sites,
                                self.plan.accept_proxy.get(addr))
            listener.start()
            self.listeners.append(listener)
        self.certificates = CertWatcher(config, self.plan, {tl.addr: listener for tl, listener
                                                            in zip(self.plan.tls, self.listeners)},
                                        self.worker, shared, stapler)

    def check_certificates(self):
        """Look at the certificate files now; a changed one serves new handshakes (certs/watch.py)."""
        if self.stopping:
            return
        try:
            self.certificates.poll()
        except Exception:
            log.exception("certificate poll failed")

    def watch_certificates(self):
        if self.stopping:
            return
        self.check_certificates()
        self.loop.call_later(self.config.certificate_check_interval, self.watch_certificates)

    async def start(self):
        if self.config.certificate_check_interval > 0:
            self.loop.call_later(self.config.certificate_check_interval, self.watch_certificates)
        from fastterm._core import set_acme_challenge_dirs

        http01, tlsalpn01 = challenge_dirs(self.config)
        set_acme_challenge_dirs(tlsalpn01)
        limits = self.redirect_limits = RedirectLimits(self.config.limits.client_header_timeout,
                                                       max(16, self.worker.max_clients // 4),
                                                       self.config.limits.send_timeout, http01,
                                                       self.worker.access_log)
        for addr, table in self.plan.redirects:
            sock = self.redirect_sockets.get(addr) or bind(addr)
            server = await self.loop.create_server(
                lambda a=addr, t=table: RedirectProtocol(t, a[0], limits), sock=sock)
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
        if self.redirect_limits is not None:
            self.redirect_limits.draining = True
        if graceful:
            self.worker.drain()
            deadline = self.loop.time() + self.config.limits.drain_timeout
            # Port-80 keep-alive connections too: each closes after its next answer (draining),
            # those still idle when the deadline comes with the process.
            plain = self.redirect_limits
            while (self.worker.clients or (plain is not None and plain.open)) and self.loop.time() < deadline:
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


def reopen_logs(config: Config, serving: Serving | None = None) -> None:
    """SIGUSR1: reopen the error log and a worker's access log (after logrotate moved them)."""
    if config.error_log:
        try:
            setup_logging(config)
        except OSError as exc:
            log.error("error log %s: cannot reopen: %s", config.error_log, exc.strerror)
    if serving is not None:
        serving.worker.reopen_access_log()


def hand_logs_to(config: Config, uid: int) -> None:
    """A root master whose workers run as ``uid``: the log files exist and are theirs, so that
    they open them, and after logrotate's move (SIGUSR1, handled here first) the new ones, as
    nginx's master chowns its log files to its workers' user. Their directory may stay root's."""
    for path in (config.access_log, config.error_log):
        if not path:
            continue
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if os.fstat(fd).st_uid != uid:
                    os.fchown(fd, uid, -1)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("%s: cannot hand it to the workers' user: %s", path, exc.strerror)


def preload() -> None:
    """Import now what serving imports on first use: a worker that gave root up may no
    longer read the interpreter's library (a Python or virtualenv under a 0700 /root)."""
    import uvloop

    uvloop.new_event_loop().close()


def serve_forked(config: Config, plan: Plan, sockets: dict, redirect_sockets: dict, shared,
                 counter_slot: int, master_pid: int, ready=None) -> None:
    """A worker forked by the master: serve on the inherited sockets until told to stop;
    ``ready()`` once its listeners accept (the master's readiness, systemd's READY=1)."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def main():
        serving = Serving(config, loop, plan, sockets=sockets, redirect_sockets=redirect_sockets, shared=shared)
        serving.worker.use_counter_slot(shared, counter_slot)
        await serving.start()
        settle_heap()
        if ready is not None:
            ready()
        stop = lambda graceful: asyncio.ensure_future(serving.stop(graceful))
        loop.add_signal_handler(signal.SIGTERM, stop, True)
        loop.add_signal_handler(signal.SIGQUIT, stop, False)
        # Ctrl-C reaches the whole process group: the master turns it into SIGTERM.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGUSR1, reopen_logs, config, serving)
        loop.add_signal_handler(signal.SIGUSR2, serving.check_certificates)   # the master's: certificates now

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


async def staple_alone(plan: Plan, loop) -> Stapler:
    """``run --single``: this process fetches and shares OCSP responses itself, in its own
    loop (certs/ocsp.py); the first fetches may delay serving by STARTUP_WAIT at most."""
    from fastterm._core import SharedState

    stapler = Stapler(SharedState(0), LoopSelector(loop))   # no session cache: its OCSP slots only
    stapler.attach(plan.staples)
    stapler.tick()
    deadline = loop.time() + STARTUP_WAIT
    while stapler.fetching() and loop.time() < deadline:
        await asyncio.sleep(0.02)
        stapler.tick()

    def tick():
        stapler.tick()
        loop.call_later(0.2, tick)

    loop.call_later(0.2, tick)
    return stapler


def run(config: Config) -> None:
    """Serve ``config`` in this process until SIGTERM/SIGINT (graceful) or SIGQUIT (fast)."""
    import uvloop

    setup_logging(config)
    plan = build(config)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)

    async def main():
        stapler = await staple_alone(plan, loop)
        serving = Serving(config, loop, plan, stapler=stapler)
        await serving.start()
        settle_heap()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(serving.stop(True)))
        loop.add_signal_handler(signal.SIGQUIT, lambda: asyncio.ensure_future(serving.stop(False)))
        loop.add_signal_handler(signal.SIGUSR1, reopen_logs, config, serving)
        loop.add_signal_handler(signal.SIGUSR2, serving.check_certificates)
        addrs = ", ".join(f"{h}:{p}" for (h, p), *_ in plan.listeners)
        log.info("serving https on %s", addrs)
        await serving.stopped.wait()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
