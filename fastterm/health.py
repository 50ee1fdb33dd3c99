"""Active health checks of upstream servers (``[upstream.check]``), run by the master.

One place runs them: the master's selectors loop (DESIGN.md "Processes": nothing blocking
in it). Each check is a non-blocking socket registered in that selector: a connect, for a
TLS upstream a handshake with the upstream's own verification settings (Python ``ssl``,
non-blocking), and for ``kind = "http"`` a ``GET`` whose status line is judged against
``expect``. A check not done within ``timeout`` failed (a server that accepts and never
answers is down). Verdicts go to the shared HealthTable (ext/shm.pyx): one word per
(upstream, server) that every worker reads with one load when it weighs that server.

Every server starts up (a fresh start serves at once; HAProxy starts them up too, unless
told otherwise), ``fall`` failed checks in a row take it down, ``rise`` good ones bring it
back. A reload keeps the state of servers it keeps (same upstream name, host and port).

Host names of servers are resolved once per configuration (start, reload), as the master
reads the configuration; IP addresses need no lookup.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import ssl
import time
from dataclasses import dataclass, field

import msgspec

from fastterm.config.model import Config, HealthCheck, Upstream

log = logging.getLogger("fastterm.health")

STATUS_LINE_MAX = 4096   # bytes read looking for the status line; more is a bad answer


def parse_expect(text: str) -> tuple[tuple[int, int], ...]:
    """``"200-399"``, ``"200"``, ``"200-299,301"`` -> inclusive status ranges; ValueError says why."""
    ranges = []
    for part in str(text).split(","):
        low, dash, high = part.strip().partition("-")
        if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
            raise ValueError(f"invalid expect {text!r}: statuses or ranges such as 200-399, comma-separated")
        first, last = int(low), int(high) if dash else int(low)
        if not 100 <= first <= last <= 599:
            raise ValueError(f"invalid expect {text!r}: each range within 100-599, low to high")
        ranges.append((first, last))
    return tuple(ranges)


def check_problems(check: HealthCheck) -> list[tuple[str, str]]:
    """What is wrong with ``check``: (field, message) pairs, empty when nothing is."""
    problems = []
    if check.rise < 1:
        problems.append(("rise", "rise must be 1 or more"))
    if check.fall < 1:
        problems.append(("fall", "fall must be 1 or more"))
    if not check.interval > 0:
        problems.append(("interval", "interval must be more than 0 seconds"))
    if not check.timeout > 0:
        problems.append(("timeout", "timeout must be more than 0 seconds"))
    if not check.path.startswith("/") or any(c in check.path for c in " \r\n\0") or not check.path.isascii():
        problems.append(("path", f"path {check.path!r}: a request target from '/', without spaces"))
    if check.host is not None and (not check.host or any(c in check.host for c in " \r\n\0/")):
        problems.append(("host", f"host {check.host!r}: a host name, optionally with :port"))
    try:
        parse_expect(check.expect)
    except ValueError as exc:
        problems.append(("expect", str(exc)))
    return problems


@dataclass
class ServerHealth:
    """The rise/fall counting of one server: up until ``fall`` failures in a row, then down
    until ``rise`` successes in a row."""

    rise: int
    fall: int
    up: bool = True
    streak: int = 0          # results in a row against the current state

    def record(self, ok: bool) -> bool:
        """Count one check's result; True when it changed the state."""
        if ok == self.up:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < (self.rise if ok else self.fall):
            return False
        self.up, self.streak = ok, 0
        return True


@dataclass
class Target:
    """One checked server of one upstream."""

    upstream: str
    host: str
    port: int
    slot: int
    check: HealthCheck
    expect: tuple = ()
    addr: tuple | None = None        # (family, sockaddr), resolved once per configuration
    tls: ssl.SSLContext | None = None
    tls_name: str | None = None      # the name the certificate must carry, and the SNI
    state: ServerHealth = field(default_factory=lambda: ServerHealth(2, 3))
    next_at: float = 0.0
    probe: _Probe | None = None
    last_error: str = ""
    checks: int = 0
    failures: int = 0

    @property
    def name(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class _Probe:
    """One check in flight: connect, TLS handshake, request, status line; each step waits on
    the selector, never blocks."""

    def __init__(self, checker: HealthChecker, target: Target, now: float):
        self.checker = checker
        self.target = target
        self.deadline = now + target.check.timeout
        self.sock: socket.socket | ssl.SSLSocket | None = None
        self.step = "connect"
        self.request = b""
        self.answer = b""
        family, sockaddr = target.addr
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        code = self.sock.connect_ex(sockaddr)
        if code not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise OSError(code, os.strerror(code))
        self._wait(selectors.EVENT_WRITE)

    def _wait(self, events: int) -> None:
        selector = self.checker.selector
        try:
            selector.modify(self.sock, events, self.on_event)
        except KeyError:
            selector.register(self.sock, events, self.on_event)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.checker.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()
            self.sock = None

    def on_event(self, _events: int) -> None:
        try:
            verdict = self._advance()
        except ssl.SSLError as exc:
            verdict = f"TLS: {exc.reason or exc}"
        except OSError as exc:
            verdict = exc.strerror or str(exc)
        if verdict is not None:
            self.checker.finished(self.target, verdict)

    def _advance(self) -> str | None:
        """The next step; None while waiting, "" when the check passed, else why it failed."""
        target = self.target
        if self.step == "connect":
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                return "connect: " + os.strerror(code)
            if target.tls is not None:
                self.checker.selector.unregister(self.sock)
                self.sock = target.tls.wrap_socket(self.sock, server_hostname=target.tls_name,
                                                   do_handshake_on_connect=False)
                self.step = "handshake"
            else:
                return self._connected()
        if self.step == "handshake":
            try:
                self.sock.do_handshake()
            except ssl.SSLWantReadError:
                self._wait(selectors.EVENT_READ)
                return None
            except ssl.SSLWantWriteError:
                self._wait(selectors.EVENT_WRITE)
                return None
            return self._connected()
        if self.step == "send":
            return self._send()
        return self._read()

    def _connected(self) -> str | None:
        check = self.target.check
        if check.kind == "tcp":
            return ""
        host = check.host or self.target.name
        self.request = (f"GET {check.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fastterm-health\r\n"
                        "Connection: close\r\n\r\n").encode("ascii")
        self.step = "send"
        return self._send()

    def _send(self) -> str | None:
        try:
            n = self.sock.send(self.request)
        except (BlockingIOError, ssl.SSLWantWriteError):
            self._wait(selectors.EVENT_WRITE)
            return None
        except ssl.SSLWantReadError:
            self._wait(selectors.EVENT_READ)
            return None
        self.request = self.request[n:]
        if self.request:
            self._wait(selectors.EVENT_WRITE)
            return None
        self.step = "read"
        self._wait(selectors.EVENT_READ)
        return None

    def _read(self) -> str | None:
        while True:
            try:
                chunk = self.sock.recv(STATUS_LINE_MAX)
            except (BlockingIOError, ssl.SSLWantReadError):
                return None
            except ssl.SSLWantWriteError:
                self._wait(selectors.EVENT_WRITE)
                return None
            if not chunk:
                return "closed before a status line"
            self.answer += chunk
            line, crlf, _ = self.answer.partition(b"\r\n")
            if crlf:
                return self._judge(line)
            if len(self.answer) > STATUS_LINE_MAX:
                return "no status line"

    def _judge(self, line: bytes) -> str:
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            return f"not an HTTP response: {line[:60]!r}"
        status = int(parts[1])
        if any(low <= status <= high for low, high in self.target.expect):
            return ""
        return f"status {status}"


def _client_context(up: Upstream) -> ssl.SSLContext:
    """The upstream's TLS settings (model.UpstreamTLS) as a Python ssl context for its checks."""
    tls = up.tls
    ctx = ssl.create_default_context(cafile=tls.ca_file) if tls.ca_file else ssl.create_default_context()
    if tls.verify == "none":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if "TLSv1.2" not in tls.protocols else ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2 if "TLSv1.3" not in tls.protocols else ssl.TLSVersion.TLSv1_3
    if tls.ciphers:
        ctx.set_ciphers(tls.ciphers)
    if tls.cert is not None:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


def _resolve(host: str, port: int) -> tuple | None:
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError:
        return None
    return family, sockaddr


class HealthChecker:
    """The master's health checks: targets from the current plan, checks on its selector,
    verdicts in ``table`` (a HealthTable the workers inherit)."""

    def __init__(self, selector: selectors.BaseSelector, table, clock=time.monotonic):
        self.selector = selector
        self.table = table
        self.clock = clock
        self.targets: dict[tuple[str, str, int], Target] = {}
        self.slots: dict[tuple[str, str, int], int] = {}     # every slot handed out, kept or not
        self.next_slot = 0

    def _slot_for(self, key: tuple[str, str, int]) -> int:
        """A server keeps its slot for the master's lifetime (old workers still draining read
        it); only when every slot was handed out is one of a server no longer checked reused."""
        if key in self.slots:
            return self.slots[key]
        if self.next_slot < self.table.capacity:
            slot, self.next_slot = self.next_slot, self.next_slot + 1
        else:
            stale = next((k for k in self.slots if k not in self.targets), None)
            if stale is None:
                raise RuntimeError(f"more than {self.table.capacity} checked servers")
            slot = self.slots.pop(stale)
        self.table.reset(slot)
        self.slots[key] = slot
        return slot

    def attach(self, config: Config, plan) -> None:
        """Check the servers of ``config``'s upstreams that have ``check`` and point their pools
        in ``plan`` (not yet forked) at the table; servers kept from before keep their state."""
        from fastterm.config.toml import parse_upstream_server

        wanted: dict[tuple[str, str, int], Target] = {}
        for up in config.upstreams:
            specs = [parse_upstream_server(s, fail_timeout=up.fail_timeout) for s in up.servers]
            marked = any(spec.check for spec in specs)   # HAProxy: only servers that say check
            if up.check is None and not marked:
                continue
            base = up.check or HealthCheck()   # a server's check alone: HAProxy's defaults (tcp, 2 s, 2, 3)
            tls = _client_context(up) if up.tls is not None else None
            slots = []
            for spec in specs:
                if marked and not spec.check:
                    slots.append(-1)
                    continue
                check = msgspec.structs.replace(base, interval=spec.inter or base.interval,
                                                rise=spec.rise or base.rise, fall=spec.fall or base.fall)
                key = (up.name, spec.host, spec.port)
                target = self.targets.get(key) or wanted.get(key)
                if target is None:   # starts up, whatever a check of it before this reload said
                    target = Target(up.name, spec.host, spec.port, self._slot_for(key), check,
                                    state=ServerHealth(check.rise, check.fall))
                    self.table.set(target.slot, True)
                target.check, target.expect = check, parse_expect(check.expect)
                target.state.rise, target.state.fall = check.rise, check.fall
                target.addr = _resolve(spec.host, spec.port)
                target.tls = tls
                target.tls_name = (up.tls.server_name or spec.host) if up.tls is not None else None
                wanted[key] = target
                slots.append(target.slot)
            plan.pools[up.name].set_health(self.table, slots)
        for key, target in self.targets.items():
            if key not in wanted and target.probe is not None:
                target.probe.close()
                target.probe = None
        self.targets = wanted

    def tick(self) -> None:
        """Start the checks that are due, fail those past their timeout."""
        now = self.clock()
        for target in self.targets.values():
            probe = target.probe
            if probe is not None:
                if now >= probe.deadline:
                    self.finished(target, f"timed out after {target.check.timeout:g} s")
                continue
            if now < target.next_at:
                continue
            target.next_at = now + target.check.interval
            if target.addr is None:
                target.addr = _resolve(target.host, target.port)
                if target.addr is None:
                    self.finished(target, f"cannot resolve {target.host}")
                    continue
            try:
                target.probe = _Probe(self, target, now)
            except OSError as exc:
                target.probe = None
                self.finished(target, "connect: " + (exc.strerror or str(exc)))

    def finished(self, target: Target, verdict: str) -> None:
        """One check's result (verdict "": passed); a change of state is logged and shared."""
        if target.probe is not None:
            target.probe.close()
            target.probe = None
        target.checks += 1
        ok = verdict == ""
        if not ok:
            target.failures += 1
            target.last_error = verdict
        if not target.state.record(ok):
            return
        self.table.set(target.slot, target.state.up)
        if target.state.up:
            log.warning("upstream %s server %s is up (%d good checks)", target.upstream, target.name,
                        target.check.rise)
        else:
            log.warning("upstream %s server %s is down: %s (%d failed checks)", target.upstream, target.name,
                        verdict, target.check.fall)

    def close_in_child(self) -> None:
        """In a new worker: close the copies of the checks' sockets (a copy held there would keep
        a check's connection open after the master closed it). Closing an fd leaves the master's
        registrations alone; unregistering would not: the epoll set is shared through fork."""
        for target in self.targets.values():
            if target.probe is not None and target.probe.sock is not None:
                target.probe.sock.close()

    def close(self) -> None:
        for target in self.targets.values():
            if target.probe is not None:
                target.probe.close()
                target.probe = None

    def report(self) -> list[dict]:
        """Each checked server: its state and last failure, for /status and /metrics."""
        return [{"upstream": t.upstream, "server": t.name, "up": t.state.up, "kind": t.check.kind,
                 "checks": t.checks, "failures": t.failures, "last_error": t.last_error}
                for t in self.targets.values()]
