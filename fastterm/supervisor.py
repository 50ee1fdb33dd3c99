"""The master process: owns the listening sockets and shared memory, forks workers.

hitch's shape (DESIGN.md "Processes"): workers are forked by *generation*; only
current-generation workers are respawned; a reload is validate -> commit (a new
generation on the same sockets, the old one drains) or, on error, keep the running
generation. The master's own loop is a plain ``selectors`` loop with no threads and
no event loop, so fork() is always safe; nothing in it blocks (the admin endpoint is
served from it on non-blocking sockets, see admin.py; so are the OCSP responders asked for
the responses workers staple, see certs/ocsp.py). ACME (certs/acme.py), whose library
blocks, runs in an agent process the master starts with fork + exec and feeds through a pipe.

Reload requests (SIGHUP, POST /reload) are coalesced: one made less than
``RELOAD_INTERVAL`` after the last reload began waits for the end of that interval, and
every request made meanwhile becomes that one reload. A new generation needs about 0.1 s
to start serving (measured on the 2-core test box); reloads closer together stopped
generations before they ever served, and a storm of them left nothing serving. A reload
never kills the master: what fails (validation, no free worker slot, fork) is reported
and the running generation stays. At most ``MAX_DRAINING_GENERATIONS`` old generations
drain at once; older ones are stopped at once (SIGQUIT), as HAProxy's
``mworker-max-reloads`` does, since idle keep-alive clients would otherwise keep every
generation of a reload storm alive until the shared worker slots ran out.

Listening sockets: one ``SO_REUSEPORT`` socket per listen address *per worker slot*.
Worker slot i of every generation accepts from socket i, and the master keeps every
socket open, so a worker exiting (reload, crash) never closes a socket whose accept
queue holds connections: the next worker in that slot accepts them.
"""

from __future__ import annotations

import logging
import os
import resource
import secrets
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

import msgspec

from fastterm import privileges
from fastterm import worker as worker_mod
from fastterm.admin import AdminServer
from fastterm.certs.acme import AcmeAgent
from fastterm.certs.ocsp import Stapler
from fastterm.certs.watch import StapleFollower
from fastterm.config import ConfigSource
from fastterm.config.model import Config
from fastterm.config.plan import Plan, build
from fastterm.errors import FasttermError
from fastterm.files import is_private_dir, private_dir, write_atomic
from fastterm.health import HealthChecker
from fastterm.keys import TicketKeys
from fastterm.notify import Notifier

log = logging.getLogger("fastterm.master")

RESPAWN_BACKOFF_MAX = 10.0
RESPAWN_RETRY = 1.0             # a respawn that could not fork or find a slot tries again
RELOAD_INTERVAL = 0.25          # seconds between the starts of two reloads
MAX_DRAINING_GENERATIONS = 8


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def worker_count(config: Config) -> int:
    """``auto``: one worker per CPU this process may run on (its affinity mask, as under
    ``taskset`` or a container's cpuset), not every CPU of the machine."""
    return usable_cpus() if config.workers == "auto" else int(config.workers)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def raise_nofile_limit() -> int:
    """Raise the open-file soft limit to the hard one (nginx ``worker_rlimit_nofile``): every
    client holds a descriptor and a proxied request a second, so the usual soft default of
    1024 caps a worker at a few hundred connections. Workers inherit it through fork()."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise RLIMIT_NOFILE from %d to %d: %s", soft, hard, exc)
    log.debug("RLIMIT_NOFILE: %d open files (hard limit %d)", soft, hard)
    return soft


def session_lifetime(config: Config) -> float:
    """How long a ticket can be valid: the longest session_timeout of any server."""
    return max((s.tls.session_timeout for s in config.servers), default=300.0)


def default_pid_file() -> str:
    """``/run/fastterm.pid`` as root; else in the user's own runtime directory:
    ``$XDG_RUNTIME_DIR`` (per user, 0700, by the XDG spec), or a 0700 directory of ours
    under ``$TMPDIR`` (a fixed file name straight in /tmp could be anyone's file or symlink)."""
    if os.geteuid() == 0 and os.access("/run", os.W_OK):
        return "/run/fastterm.pid"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not (runtime and is_private_dir(runtime)):
        runtime = private_dir(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fastterm-{os.geteuid()}"))
    return os.path.join(runtime, "fastterm.pid")


def pid_file_of(config: Config) -> str:
    return config.pid_file or default_pid_file()


def token_file_of(config: Config) -> str:
    """The admin token beside the pid file: ``/run/fastterm.pid`` -> ``/run/fastterm.token``."""
    return os.path.splitext(pid_file_of(config))[0] + ".token"


@dataclass
class WorkerProc:
    pid: int
    slot: int          # listening-socket slot (0..N-1)
    generation: int
    counter_slot: int  # its counters in shared memory
    started: float
    stopping: bool = False
    hurried: bool = False   # told to stop at once (SIGQUIT): too many generations draining
    serving: bool = False   # said so on the ready pipe: its listeners accept


@dataclass
class Generation:
    number: int
    config: Config
    plan: Plan
    workers: int
    started: float = field(default_factory=time.time)
    credentials: privileges.Credentials | None = None   # what its workers become (privileges.py)


class Master:
    def __init__(self, source: ConfigSource | str, config: Config):
        from fastterm._core import HealthTable, SharedState

        # What a reload reads again, with the same front-end (fastterm.toml or nginx.conf).
        self.source = source if isinstance(source, ConfigSource) else ConfigSource(source)
        self.config_path = self.source.path
        self.shared = SharedState(config.sessions.cache_size)   # every SSL_CTX the plans build uses it
        self.keys = self._ticket_keys(config)
        self.sockets: dict[tuple[tuple[str, int], int], socket.socket] = {}
        self.redirect_sockets: dict[tuple[tuple[str, int], int], socket.socket] = {}
        self.procs: dict[int, WorkerProc] = {}
        self.generation: Generation | None = None
        self.old_generations: list[int] = []
        self.respawn_at: dict[int, float] = {}     # slot -> when to respawn
        self.backoff: dict[int, float] = {}
        self.started = time.time()
        self.reloads = 0
        self.reload_failures = 0
        self.reload_requests = 0
        self.reload_waiters: list = []          # answer(ok) of each POST /reload waiting
        self.reload_pending = False
        self.next_reload_at = 0.0
        self.restarts = 0
        self.last_reload_error: str | None = None
        self.stopping = False
        self.stop_deadline = 0.0
        self.selector = selectors.DefaultSelector()
        self.ocsp = Stapler(self.shared, self.selector)
        self.health = HealthChecker(self.selector, HealthTable())   # before the first plan's pools fork
        self.next_certificate_check = 0.0
        self.acme = AcmeAgent()    # the one process that talks to ACME servers (certs/acme.py)
        self.signals: list[int] = []
        self.admin: AdminServer | None = None
        self.pid_file = pid_file_of(config)
        self.token_file = token_file_of(config)
        self.token: str | None = None
        self.generations_made = 0
        self.notify = Notifier()
        self.awaiting_ready = True   # READY=1 once the current generation serves
        self._commit(config, build(config, self.source.toml_path, self.shared))

    def _ticket_keys(self, config: Config) -> TicketKeys:
        return TicketKeys(self.shared, rotation=config.sessions.ticket_key_rotation,
                          lifetime=session_lifetime(config), files=config.sessions.ticket_key_file)

    # ---- sockets ------------------------------------------------------------
    def _bind_all(self, config: Config, plan: Plan, workers: int) -> None:
        """Bind what the new generation needs and is not bound yet (may raise ConfigError)."""
        owned = {addr for addr, _slot in list(self.sockets) + list(self.redirect_sockets)}
        for addr in [a for a, *_ in plan.listeners] + [a for a, _ in plan.redirects]:
            if addr not in owned:
                worker_mod.ensure_free(addr)
        for addr, *_ in plan.listeners:
            for slot in range(workers):
                if (addr, slot) not in self.sockets:
                    self.sockets[(addr, slot)] = worker_mod.bind(addr)
        for addr, _port in plan.redirects:
            for slot in range(workers):
                if (addr, slot) not in self.redirect_sockets:
                    self.redirect_sockets[(addr, slot)] = worker_mod.bind(addr)

    def _close_unused(self) -> None:
        """After old generations are gone: close sockets the current one does not use."""
        gen = self.generation
        want = {addr for addr, *_ in gen.plan.listeners}
        want_redirect = {addr for addr, _ in gen.plan.redirects}
        for table, wanted in ((self.sockets, want), (self.redirect_sockets, want_redirect)):
            for key in list(table):
                addr, slot = key
                if addr not in wanted or slot >= gen.workers:
                    table.pop(key).close()

    # ---- generations ----------------------------------------------------------
    def _commit(self, config: Config, plan: Plan) -> None:
        workers = worker_count(config)
        self._bind_all(config, plan, workers)
        self.ocsp.attach(plan.staples)          # before fork: the contexts learn their OCSP slots
        self.certificates = StapleFollower(config, plan, self.ocsp)
        self.health.attach(config, plan)        # before fork: the pools learn their health slots
        credentials = privileges.resolve(config.user, config.group)
        if credentials is not None and os.geteuid() != 0:
            log.warning("user %s is ignored: the master does not run as root", config.user)
        self.acme.update(config)
        self.generations_made += 1
        old = self.generation
        self.generation = Generation(self.generations_made, config, plan, workers, credentials=credentials)
        if self._drops_privileges(self.generation):
            worker_mod.hand_logs_to(config, credentials.uid)
        if old is not None:
            self.old_generations.append(old.number)

    def _spawn_generation(self) -> None:
        for slot in range(self.generation.workers):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        """Fork the current generation's worker for ``slot``; RuntimeError when no counter
        slot is free, OSError when fork fails (nothing is left claimed either way)."""
        gen = self.generation
        counter_slot = self.shared.claim_slot(0, gen.number)
        sockets = {addr: self.sockets[(addr, slot)] for addr, *_ in gen.plan.listeners}
        redirect_sockets = {addr: self.redirect_sockets[(addr, slot)] for addr, _ in gen.plan.redirects}
        master_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError:
            self.shared.release_slot(counter_slot)
            raise
        if pid == 0:
            code = 1
            try:
                self._in_child(set(sockets.values()) | set(redirect_sockets.values()))
                set_title(f"fastterm: worker process (generation {gen.number}, slot {slot})")
                config = gen.config
                if self._drops_privileges(gen):
                    worker_mod.preload()
                    privileges.drop(gen.credentials)
                    # Keys may be root's alone now: the master follows the files (_follow_certificates).
                    config = msgspec.structs.replace(config, certificate_check_interval=0)
                worker_mod.serve_forked(config, gen.plan, sockets, redirect_sockets, self.shared,
                                        counter_slot, master_pid, ready=self._tell_ready)
                code = 0
            except BaseException:
                log.exception("worker failed")
            finally:
                os._exit(code)
        self.shared.set_slot_pid(counter_slot, pid)
        self.procs[pid] = WorkerProc(pid, slot, gen.number, counter_slot, time.monotonic())
        log.info("worker %d started (generation %d, slot %d)", pid, gen.number, slot)

    def _in_child(self, keep: set) -> None:
        """Drop the master's state in a new worker: signals, selector, the admin socket
        and connections (a copy held here would keep an answered client from seeing EOF),
        and every listening socket but its own slot's (an inherited copy would keep a port
        the master closes after a reload listening, unserved)."""
        for sock in list(self.sockets.values()) + list(self.redirect_sockets.values()):
            if sock not in keep:
                sock.close()
        if self.admin is not None:
            self.admin.close_in_child()
        self.ocsp.close_in_child()
        self.health.close_in_child()
        self.notify.close_in_child()
        os.close(self.ready_r)
        self.acme.close_in_child()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD,
                    signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        self.selector.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _stop_generation(self, number: int, sig: int = signal.SIGTERM) -> None:
        for proc in self.procs.values():
            if proc.generation == number and not proc.stopping:
                proc.stopping = True
                self._kill(proc.pid, sig)

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def request_reload(self, answer=None) -> None:
        """SIGHUP or POST /reload (``answer(ok)`` once it has run): every request made
        before the next reload starts is served by that one reload."""
        self.reload_requests += 1
        if self.stopping:
            if answer is not None:
                answer(None)
            return
        self.reload_pending = True
        if answer is not None:
            self.reload_waiters.append(answer)

    def _reload_due(self) -> None:
        if not self.reload_pending or time.monotonic() < self.next_reload_at:
            return
        waiters, self.reload_waiters = self.reload_waiters, []
        self.reload_pending = False
        self.next_reload_at = time.monotonic() + RELOAD_INTERVAL
        ok = self.reload()
        for answer in waiters:
            answer(ok)

    def reload(self) -> bool:
        """Validate the new configuration; on success start a generation and drain the old.
        Never raises: a failure is counted, logged and kept in ``last_reload_error``."""
        previous = self.generation
        self.notify.reloading()
        try:
            config = self.source.load(_log_warning)
            plan = build(config, self.source.toml_path, self.shared)
            self._check_room(worker_count(config))
            self._commit(config, plan)
        except (FasttermError, OSError) as exc:
            return self._reload_failed(exc)
        try:
            self._spawn_generation()
        except (OSError, RuntimeError) as exc:
            self._roll_back(previous)
            return self._reload_failed(exc)
        self.reloads += 1
        self.last_reload_error = None
        self.keys.reconfigure(rotation=config.sessions.ticket_key_rotation, lifetime=session_lifetime(config),
                              files=config.sessions.ticket_key_file)
        for number in self.old_generations:
            self._stop_generation(number)
        self._hurry_old_generations()
        self.awaiting_ready = True
        log.info("reloaded: generation %d serving", self.generation.number)
        return True

    def _tell_ready(self) -> None:
        """In a worker: its pid on the ready pipe (a master gone meanwhile hears nothing)."""
        try:
            os.write(self.ready_w, struct.pack("=i", os.getpid()))
        except OSError:
            pass

    @staticmethod
    def _drops_privileges(gen: Generation) -> bool:
        return privileges.applies(gen.credentials)

    def _on_worker_ready(self, _events: int) -> None:
        """Workers write their pid on the ready pipe once they accept (4 bytes: atomic)."""
        try:
            data = os.read(self.ready_r, 4096)
        except BlockingIOError:
            return
        for (pid,) in struct.iter_unpack("=i", data[:len(data) - len(data) % 4]):
            if pid in self.procs:
                self.procs[pid].serving = True
        self._report_ready()

    def _report_ready(self) -> None:
        """READY=1 (systemd) when every worker of the current generation serves: at start, and
        to end a reload."""
        gen = self.generation
        serving = [p for p in self.procs.values() if p.generation == gen.number and p.serving and not p.stopping]
        if not self.awaiting_ready or self.stopping or len(serving) < gen.workers:
            return
        self.awaiting_ready = False
        addrs = ", ".join(f"{h}:{p}" for (h, p), *_ in gen.plan.listeners)
        user = f" as {gen.credentials.user}" if self._drops_privileges(gen) else ""
        self.notify.ready(f"generation {gen.number}: {gen.workers} workers serving{user} on {addrs}")

    def _reload_certificates(self) -> None:
        """SIGUSR2: the certificate files now, without a new generation: each worker reads the
        blocks whose files changed and swaps only their contexts (certs/watch.py), as its poll
        does every certificate_check_interval (this is the way when that is 0)."""
        log.info("SIGUSR2: reading the certificate files again")
        if self._drops_privileges(self.generation):
            self._certificates_changed()
            return
        self.certificates.poll()
        for proc in self.procs.values():
            if proc.generation == self.generation.number and not proc.stopping:
                self._kill(proc.pid, signal.SIGUSR2)

    def _check_room(self, workers: int) -> None:
        free = self.shared.free_slots()
        if free < workers:
            raise FasttermError(f"no room for {workers} new workers: {free} worker slots free, the others "
                                f"held by generations {sorted({p.generation for p in self.procs.values()})}")

    def _roll_back(self, previous: Generation) -> None:
        """A generation that could not start all its workers: stop those it has, and the
        previous one stays current."""
        failed = self.generation
        self.generation = previous
        self.ocsp.attach(previous.plan.staples)
        self.certificates = StapleFollower(previous.config, previous.plan, self.ocsp)
        self.health.attach(previous.config, previous.plan)
        self.acme.update(previous.config)
        self.old_generations.remove(previous.number)
        self.old_generations.append(failed.number)
        self._stop_generation(failed.number, signal.SIGQUIT)

    def _reload_failed(self, exc: BaseException) -> bool:
        self.reload_failures += 1
        self.last_reload_error = str(exc)
        self.notify.ready(f"reload failed, generation {self.generation.number} keeps serving: {exc}")
        log.error("reload failed, generation %d keeps serving: %s", self.generation.number, exc)
        return False

    def _hurry_old_generations(self) -> None:
        draining = sorted({p.generation for p in self.procs.values()} - {self.generation.number})
        for number in draining[:-MAX_DRAINING_GENERATIONS]:
            procs = [p for p in self.procs.values() if p.generation == number and not p.hurried]
            if procs:
                log.warning("generation %d stops now: %d newer generations are draining", number,
                            MAX_DRAINING_GENERATIONS)
            for proc in procs:
                proc.stopping = proc.hurried = True
                self._kill(proc.pid, signal.SIGQUIT)

    # ---- children -------------------------------------------------------------
    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            proc = self.procs.pop(pid, None)
            if proc is None:
                self.acme.reaped(pid, status)
                continue
            self.shared.release_slot(proc.counter_slot)
            why = (f"signal {signal.Signals(-os.waitstatus_to_exitcode(status)).name}"
                   if os.WIFSIGNALED(status) else f"exit code {os.waitstatus_to_exitcode(status)}")
            current = proc.generation == self.generation.number
            if proc.stopping or self.stopping or not current:
                log.info("worker %d (generation %d) exited: %s", pid, proc.generation, why)
                continue
            lived = time.monotonic() - proc.started
            delay = 0.0
            if lived < 2.0:
                # Dies right after start: back off (0.1 s, doubling, up to 10 s).
                delay = min(RESPAWN_BACKOFF_MAX, max(0.1, self.backoff.get(proc.slot, 0.05) * 2))
                self.backoff[proc.slot] = delay
            else:
                self.backoff.pop(proc.slot, None)
            log.error("worker %d (slot %d) died: %s; respawning in %.1f s", pid, proc.slot, why, delay)
            self.restarts += 1
            self.respawn_at[proc.slot] = time.monotonic() + delay

    def _respawn_due(self) -> None:
        now = time.monotonic()
        for slot, when in list(self.respawn_at.items()):
            if when <= now and not self.stopping:
                del self.respawn_at[slot]
                if slot < self.generation.workers:
                    try:
                        self._spawn(slot)
                    except (OSError, RuntimeError) as exc:
                        log.error("cannot respawn slot %d: %s; trying again in %.0f s", slot, exc,
                                  RESPAWN_RETRY)
                        self.respawn_at[slot] = now + RESPAWN_RETRY

    def _prune_generations(self) -> None:
        live = {p.generation for p in self.procs.values()}
        if self.old_generations and not (set(self.old_generations) & live):
            self.old_generations.clear()
            self._close_unused()

    # ---- admin ------------------------------------------------------------------
    def status(self) -> dict:
        totals = self.metrics_totals()
        return {
            "master_pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
            "generation": self.generation.number,
            "old_generations": sorted(self.old_generations),
            "workers": [{"pid": p.pid, "slot": p.slot, "generation": p.generation,
                         "stopping": p.stopping, "uptime": round(time.monotonic() - p.started, 3),
                         "counters": self._slot_counters(p.counter_slot)}
                        for p in sorted(self.procs.values(), key=lambda p: (p.generation, p.slot))],
            "connections_open": totals.get("connections_open", 0),
            "reload_requests": self.reload_requests,
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "last_reload_error": self.last_reload_error,
            "worker_restarts": self.restarts,
            "ticket_key_rotations": self.keys.rotations,
            "ocsp": self.ocsp.report(),
            "certificates": self.certificate_report(),
            "sessions": self.shared.session_stats(),
            "health_checks": self.health.report(),
            "acme": self.acme.report(self.generation.config),
            "config": self.config_path,
            "config_format": self.source.format,
        }

    def readiness(self) -> dict:
        """GET /ready: a load balancer may send traffic once workers serve and until a stop
        begins (a draining instance answers 503 so that it is taken out first). A reload stays
        ready: while the old generation drains and the new one starts, the master's sockets
        queue the connections for the new one."""
        accepting = [p for p in self.procs.values() if p.serving and not p.stopping]
        ready = not self.stopping and any(p.serving for p in self.procs.values())
        return {"ready": ready, "stopping": self.stopping, "generation": self.generation.number,
                "workers_serving": len(accepting)}

    def _slot_counters(self, counter_slot: int) -> dict:
        from fastterm._core import COUNTER_NAMES

        values = self.shared.slot_counters(counter_slot)
        return {name: values[i] for i, name in enumerate(COUNTER_NAMES)}

    def metrics_totals(self) -> dict:
        from fastterm._core import COUNTER_NAMES

        values = self.shared.totals()
        out = {name: values[i] for i, name in enumerate(COUNTER_NAMES)}
        # connections_open is a gauge: only live workers count.
        out["connections_open"] = sum(self._slot_counters(p.counter_slot)["connections_open"]
                                      for p in self.procs.values())
        return out

    def _open_admin(self, address: str) -> None:
        """The admin endpoint; on TCP, a fresh token in a 0600 file for mutating calls,
        written once the address is ours (an instance that cannot bind leaves the running
        one's token alone)."""
        tcp = not address.startswith("unix:")
        self.token = secrets.token_hex(32) if tcp else None
        self.admin = AdminServer(self, address, self.token, self.token_file if tcp else None)
        if tcp:
            write_atomic(self.token_file, f"{self.token}\n".encode())

    def _close_admin(self) -> None:
        if self.admin is None:
            return
        self.admin.close()
        if self.token is not None:
            try:
                with open(self.token_file) as f:
                    if f.read().strip() == self.token:
                        os.unlink(self.token_file)
            except OSError:
                pass

    # ---- main loop -----------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def _write_pid_file(self) -> None:
        write_atomic(self.pid_file, f"{os.getpid()}\n".encode(), 0o644)

    def _remove_pid_file(self) -> None:
        try:
            with open(self.pid_file) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(self.pid_file)
        except OSError:
            pass

    def _drain_wake(self, _events: int) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _select_timeout(self) -> float:
        if self.reload_pending:
            return min(0.2, max(0.0, self.next_reload_at - time.monotonic()))
        return 0.2

    def run(self) -> int:
        set_title(f"fastterm: master process {os.path.abspath(self.config_path)}")
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD,
                    signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, self._on_signal)
        self.selector.register(self.wake_r, selectors.EVENT_READ, self._drain_wake)
        self.ready_r, self.ready_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector.register(self.ready_r, selectors.EVENT_READ, self._on_worker_ready)
        if self.generation.config.admin:
            self._open_admin(self.generation.config.admin)
        self._write_pid_file()
        self.ocsp.start()
        self._spawn_generation()
        addrs = ", ".join(f"{h}:{p}" for (h, p), *_ in self.generation.plan.listeners)
        log.info("master %d: %d workers serving https on %s", os.getpid(), self.generation.workers, addrs)
        try:
            while True:
                for key, events in self.selector.select(timeout=self._select_timeout()):
                    key.data(events)
                while self.signals:
                    self._handle_signal(self.signals.pop(0))
                self._reap()
                if self.admin is not None:
                    self.admin.sweep(time.monotonic())
                if self.stopping:
                    if not self.procs:
                        break
                    if time.monotonic() > self.stop_deadline:
                        for proc in self.procs.values():
                            self._kill(proc.pid, signal.SIGKILL)
                    continue
                self._respawn_due()
                self._reload_due()
                self._prune_generations()
                self.keys.tick()
                self._follow_certificates()
                self.ocsp.tick()
                self.health.tick()
                self.acme.tick()
        finally:
            self.health.close()
            self.acme.close()
            self._remove_pid_file()
            self._close_admin()
        log.info("master %d exiting", os.getpid())
        return 0

    def _follow_certificates(self) -> None:
        """What the workers serve after a certificate file changed (certs/watch.py): the
        Stapler's list, and the expiry /metrics shows."""
        interval = self.generation.config.certificate_check_interval
        now = time.monotonic()
        if interval > 0 and now >= self.next_certificate_check:
            self.next_certificate_check = now + interval
            if self._drops_privileges(self.generation):
                self._certificates_changed()
            else:
                self.certificates.poll()

    def _certificates_changed(self) -> None:
        """Workers that gave root up may not read the keys: here the master reads the changed
        files (as root) and a reload brings them to a new generation, whose contexts the
        master builds before fork; the old generation drains, no connection is lost."""
        if self.certificates.poll():
            log.info("certificate files changed: reloading, the workers run as %s",
                     self.generation.credentials.user)
            self.request_reload()

    def certificate_report(self) -> list[dict]:
        """Each certificate served now: names, source, seconds to its notAfter."""
        now = time.time()
        return [{"certificate": ", ".join(ck.names) or ck.source, "source": ck.source,
                 "not_after": ck.not_after.isoformat(), "expires_in": round(ck.not_after.timestamp() - now)}
                for found in self.certificates.certificates for ck in [*found.own, *found.files.values()]]

    def _handle_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            return
        if sig == signal.SIGHUP:
            log.info("SIGHUP: reloading %s", self.config_path)
            self.request_reload()
        elif sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            graceful = sig != signal.SIGQUIT
            log.info("%s: %s stop", signal.Signals(sig).name, "graceful" if graceful else "fast")
            self.notify.stopping(f"{'graceful' if graceful else 'fast'} stop: {len(self.procs)} workers "
                                 f"{'draining' if graceful else 'closing'}")
            self.stopping = True
            self.reload_pending = False
            waiters, self.reload_waiters = self.reload_waiters, []
            for answer in waiters:
                answer(None)
            drain = self.generation.config.limits.drain_timeout if graceful else 1.0
            self.stop_deadline = time.monotonic() + drain + 2.0
            for proc in self.procs.values():
                proc.stopping = True
                self._kill(proc.pid, signal.SIGTERM if graceful else signal.SIGQUIT)
        elif sig == signal.SIGUSR1:
            worker_mod.reopen_logs(self.generation.config)
            if self._drops_privileges(self.generation):
                worker_mod.hand_logs_to(self.generation.config, self.generation.credentials.uid)
            for proc in self.procs.values():
                self._kill(proc.pid, signal.SIGUSR1)
        elif sig == signal.SIGUSR2:
            self._reload_certificates()


def _log_warning(message: str, level: str = "warn") -> None:
    log.log(logging.INFO if level == "notice" else logging.WARNING, "%s", message)


def run_master(source: ConfigSource | str, config: Config) -> int:
    worker_mod.setup_logging(config)
    raise_nofile_limit()
    master = Master(source, config)
    return master.run()


def read_pid(config: Config) -> int:
    path = pid_file_of(config)
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        raise FasttermError(f"no running fastterm: cannot read pid file {path}") from None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise FasttermError(f"no running fastterm: pid {pid} from {path} is gone") from None
    return pid


def signal_master(config: Config, sig: int) -> int:
    pid = read_pid(config)
    os.kill(pid, sig)
    return pid


if __name__ == "__main__":  # pragma: no cover
    _source = ConfigSource(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "toml")
    sys.exit(run_master(_source, _source.load()))
