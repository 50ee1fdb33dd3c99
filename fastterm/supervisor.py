"""The master process: owns the listening sockets and shared memory, forks workers.

hitch's shape (DESIGN.md "Processes"): workers are forked by *generation*; only
current-generation workers are respawned; a reload is validate -> commit (a new
generation on the same sockets, the old one drains) or, on error, keep the running
generation. The master's own loop is a plain ``selectors`` loop with no threads and
no event loop, so fork() is always safe.

Listening sockets: one ``SO_REUSEPORT`` socket per listen address *per worker slot*.
Worker slot i of every generation accepts from socket i, and the master keeps every
socket open, so a worker exiting (reload, crash) never closes a socket whose accept
queue holds connections: the next worker in that slot accepts them.
"""

from __future__ import annotations

import logging
import os
import resource
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from fastterm import worker as worker_mod
from fastterm.config.model import Config
from fastterm.config.toml import load_config, parse_address
from fastterm.errors import FasttermError
from fastterm.files import is_private_dir, private_dir, write_atomic
from fastterm.keys import TicketKeys

log = logging.getLogger("fastterm.master")

RESPAWN_BACKOFF_MAX = 10.0


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:
        return
    setproctitle.setproctitle(title)


def worker_count(config: Config) -> int:
    return (os.cpu_count() or 1) if config.workers == "auto" else int(config.workers)


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


@dataclass
class WorkerProc:
    pid: int
    slot: int          # listening-socket slot (0..N-1)
    generation: int
    counter_slot: int  # its counters in shared memory
    started: float
    stopping: bool = False


@dataclass
class Generation:
    number: int
    config: Config
    plan: worker_mod.Plan
    workers: int
    started: float = field(default_factory=time.time)


class Master:
    def __init__(self, config_path: str, config: Config):
        from fastterm._core import SharedState, use_shared_state

        self.config_path = config_path
        self.shared = SharedState(config.sessions.cache_size)
        use_shared_state(self.shared)   # every SSL_CTX built from here on uses it
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
        self.restarts = 0
        self.last_reload_error: str | None = None
        self.stopping = False
        self.stop_deadline = 0.0
        self.selector = selectors.DefaultSelector()
        self.signals: list[int] = []
        self.admin_sock: socket.socket | None = None
        self.admin_conn: socket.socket | None = None
        self.pid_file = pid_file_of(config)
        self._commit(config, worker_mod.build(config))

    def _ticket_keys(self, config: Config) -> TicketKeys:
        return TicketKeys(self.shared, rotation=config.sessions.ticket_key_rotation,
                          lifetime=session_lifetime(config), files=config.sessions.ticket_key_file)

    # ---- sockets ------------------------------------------------------------
    def _bind_all(self, config: Config, plan: worker_mod.Plan, workers: int) -> None:
        """Bind what the new generation needs and is not bound yet (may raise ConfigError)."""
        owned = {addr for addr, _slot in list(self.sockets) + list(self.redirect_sockets)}
        for addr in [a for a, _ in plan.listeners] + [a for a, _ in plan.redirects]:
            if addr not in owned:
                worker_mod.ensure_free(addr)
        for addr, _ctx in plan.listeners:
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
        want = {addr for addr, _ in gen.plan.listeners}
        want_redirect = {addr for addr, _ in gen.plan.redirects}
        for table, wanted in ((self.sockets, want), (self.redirect_sockets, want_redirect)):
            for key in list(table):
                addr, slot = key
                if addr not in wanted or slot >= gen.workers:
                    table.pop(key).close()

    # ---- generations ----------------------------------------------------------
    def _commit(self, config: Config, plan: worker_mod.Plan) -> None:
        workers = worker_count(config)
        self._bind_all(config, plan, workers)
        number = self.generation.number + 1 if self.generation else 1
        old = self.generation
        self.generation = Generation(number, config, plan, workers)
        if old is not None:
            self.old_generations.append(old.number)

    def _spawn_generation(self) -> None:
        for slot in range(self.generation.workers):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        gen = self.generation
        counter_slot = self.shared.claim_slot(0, gen.number)
        sockets = {addr: self.sockets[(addr, slot)] for addr, _ in gen.plan.listeners}
        redirect_sockets = {addr: self.redirect_sockets[(addr, slot)] for addr, _ in gen.plan.redirects}
        master_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                self._in_child(set(sockets.values()) | set(redirect_sockets.values()))
                set_title(f"fastterm: worker process (generation {gen.number}, slot {slot})")
                worker_mod.serve_forked(gen.config, gen.plan, sockets, redirect_sockets, self.shared,
                                        counter_slot, master_pid)
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
        and connection, and every listening socket but its own slot's (an inherited copy
        would keep a port the master closes after a reload listening, unserved)."""
        for sock in list(self.sockets.values()) + list(self.redirect_sockets.values()):
            if sock not in keep:
                sock.close()
        if self.admin_conn is not None:
            self.admin_conn.close()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD,
                    signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        self.selector.close()
        if self.admin_sock is not None:
            self.admin_sock.close()
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

    def reload(self) -> bool:
        """Validate the new configuration; on success start a generation and drain the old."""
        try:
            config = load_config(self.config_path)
            plan = worker_mod.build(config)
            self._commit(config, plan)
        except (FasttermError, OSError) as exc:
            self.reload_failures += 1
            self.last_reload_error = str(exc)
            log.error("reload failed, generation %d keeps serving: %s", self.generation.number, exc)
            return False
        self.reloads += 1
        self.last_reload_error = None
        self.keys.reconfigure(rotation=config.sessions.ticket_key_rotation, lifetime=session_lifetime(config),
                              files=config.sessions.ticket_key_file)
        self._spawn_generation()
        for number in self.old_generations:
            self._stop_generation(number)
        log.info("reloaded: generation %d serving", self.generation.number)
        return True

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
                    self._spawn(slot)

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
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "last_reload_error": self.last_reload_error,
            "worker_restarts": self.restarts,
            "ticket_key_rotations": self.keys.rotations,
            "sessions": self.shared.session_stats(),
            "config": self.config_path,
        }

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
        if address.startswith("unix:"):
            path = address[5:]
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            os.chmod(path, 0o600)
        else:
            host, port = parse_address(address, default_host="127.0.0.1")
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        sock.listen(16)
        sock.setblocking(False)
        self.admin_sock = sock
        self.selector.register(sock, selectors.EVENT_READ, "admin")

    def _on_admin(self) -> None:
        from fastterm import admin

        try:
            conn, _ = self.admin_sock.accept()
        except BlockingIOError:
            return
        self.admin_conn = conn   # a reload forks while it is open: children close it
        with conn:
            conn.settimeout(2.0)
            try:
                admin.handle(conn, self)
            except (OSError, ValueError) as exc:
                log.debug("admin request failed: %s", exc)
            finally:
                self.admin_conn = None

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

    def run(self) -> int:
        set_title(f"fastterm: master process {os.path.abspath(self.config_path)}")
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.wake_w)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD,
                    signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        self.selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        if self.generation.config.admin:
            self._open_admin(self.generation.config.admin)
        self._write_pid_file()
        self._spawn_generation()
        addrs = ", ".join(f"{h}:{p}" for (h, p), _ in self.generation.plan.listeners)
        log.info("master %d: %d workers serving https on %s", os.getpid(), self.generation.workers, addrs)
        try:
            while True:
                for key, _ in self.selector.select(timeout=0.2):
                    if key.data == "wake":
                        try:
                            while os.read(self.wake_r, 512):
                                pass
                        except BlockingIOError:
                            pass
                    elif key.data == "admin":
                        self._on_admin()
                while self.signals:
                    self._handle_signal(self.signals.pop(0))
                self._reap()
                if self.stopping:
                    if not self.procs:
                        break
                    if time.monotonic() > self.stop_deadline:
                        for proc in self.procs.values():
                            self._kill(proc.pid, signal.SIGKILL)
                    continue
                self._respawn_due()
                self._prune_generations()
                self.keys.tick()
        finally:
            self._remove_pid_file()
            if self.admin_sock is not None and self.generation.config.admin.startswith("unix:"):
                try:
                    os.unlink(self.generation.config.admin[5:])
                except OSError:
                    pass
        log.info("master %d exiting", os.getpid())
        return 0

    def _handle_signal(self, sig: int) -> None:
        if sig == signal.SIGCHLD:
            return
        if sig == signal.SIGHUP:
            log.info("SIGHUP: reloading %s", self.config_path)
            self.reload()
        elif sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            graceful = sig != signal.SIGQUIT
            log.info("%s: %s stop", signal.Signals(sig).name, "graceful" if graceful else "fast")
            self.stopping = True
            drain = self.generation.config.limits.drain_timeout if graceful else 1.0
            self.stop_deadline = time.monotonic() + drain + 2.0
            for proc in self.procs.values():
                proc.stopping = True
                self._kill(proc.pid, signal.SIGTERM if graceful else signal.SIGQUIT)
        elif sig == signal.SIGUSR1:
            worker_mod.reopen_logs(self.generation.config)
            for proc in self.procs.values():
                self._kill(proc.pid, signal.SIGUSR1)


def run_master(config_path: str, config: Config) -> int:
    worker_mod.setup_logging(config)
    raise_nofile_limit()
    master = Master(config_path, config)
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
    sys.exit(run_master(sys.argv[1], load_config(sys.argv[1])))
