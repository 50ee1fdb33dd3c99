"""Fixtures for the supervisor tests: ``fastterm run`` as a master with two workers.

``supervised(...)`` writes a fastterm.toml (``workers = 2``, an ``admin`` address, a
``pid_file`` in tmp_path) and starts ``python -m fastterm run -c FILE``; it is ready when
the admin endpoint answers and /status lists both workers (no probe connection touches the
public port, so counters start at zero). Teardown signals only the processes it started:
SIGTERM to the master, then SIGKILL to the master and to every worker pid /status ever
reported that is still a fastterm process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from harness import HOST, NAME, cert_entry, free_port, to_toml
from httpwire import Message, Reader, read_response, request_bytes

# Short limits: drains and sweeps take about a second, waits stay bounded.
LIMITS = {
    "client_header_timeout": 5,
    "keepalive_timeout": 10,
    "backend_connect_timeout": 2,
    "backend_read_timeout": 10,
    "drain_timeout": 1,
}


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _is_fastterm(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"fastterm" in f.read()
    except OSError:
        return False


def admin_socket(address: tuple[str, int] | str, timeout: float) -> socket.socket:
    """Connected to the admin endpoint: ``(host, port)``, or a unix socket's path."""
    if isinstance(address, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection(address, timeout=timeout)


def http_request(address: tuple[str, int] | str, method: str, path: str, timeout: float = 10.0,
                 headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes]:
    """A plain HTTP/1.1 request (the admin endpoint): (status, body)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    with admin_socket(address, timeout) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: admin\r\n{extra}Content-Length: 0\r\n"
                     "Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Supervised:
    """One running master: its config file, ports, admin helpers and TLS clients."""

    def __init__(self, tmp_path: Path, name: str, config: dict, ca_file: str, env: dict, python: str):
        self.tmp_path = tmp_path
        self.name = name
        self.config = config
        self.ca_file = ca_file
        self.env = env
        self.python = python
        self.config_path = str(tmp_path / f"{name}.toml")
        self.output_file = str(tmp_path / f"{name}.out")
        self.pid_file = config["pid_file"]
        self.token_file = str(Path(self.pid_file).with_suffix(".token"))
        admin = config["admin"]
        self.admin_address = admin[5:] if admin.startswith("unix:") else (HOST, int(admin.rsplit(":", 1)[1]))
        self.https_port = int(config["server"][0]["listen"][0].rsplit(":", 1)[1])
        self.proc: subprocess.Popen | None = None
        self.seen_pids: set[int] = set()
        self.write_config()

    # ---- files and process ------------------------------------------------
    def write_config(self, config: dict | None = None) -> None:
        if config is not None:
            self.config = config
        tmp = f"{self.config_path}.tmp"
        Path(tmp).write_text(to_toml(self.config) + "\n")
        os.replace(tmp, self.config_path)

    def write_raw_config(self, text: str) -> None:
        Path(self.config_path).write_text(text)

    def start(self, timeout: float = 20.0, wrapper: tuple[str, ...] = ()) -> Supervised:
        """``wrapper``: a command that execs the rest (``prlimit --nofile=256:``), so the
        master keeps the pid this object waits on."""
        with open(self.output_file, "ab") as out:
            self.proc = subprocess.Popen([*wrapper, self.python, "-m", "fastterm", "run", "-c", self.config_path],
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=self.tmp_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"fastterm exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"fastterm not ready within {timeout} s:\n{self.log()}")
            try:
                status = self.status(timeout=2)
                if len([w for w in status["workers"] if not w["stopping"]]) == self.workers:
                    return self
            except OSError:
                pass
            time.sleep(0.05)

    @property
    def workers(self) -> int:
        return int(self.config["workers"])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        text = ""
        for path in (self.config.get("error_log"), self.output_file):
            try:
                text += Path(path).read_text(errors="replace") if path else ""
            except FileNotFoundError:
                pass
        return text

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, "-m", "fastterm", *args], capture_output=True, text=True,
                              env=self.env, cwd=self.tmp_path, timeout=timeout, check=False)

    def read_pid_file(self) -> int:
        return int(Path(self.pid_file).read_text().strip())

    def stop(self) -> None:
        """Teardown: SIGTERM the master; SIGKILL whatever of ours is left."""
        if self.proc is None:
            return
        try:
            self.status(timeout=1)
        except (OSError, ValueError):
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pid in self.seen_pids:
            if pid_alive(pid) and _is_fastterm(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # ---- admin ----------------------------------------------------------------
    def token(self) -> str:
        """The credential the master wrote for mutating admin calls (what the CLI sends)."""
        return Path(self.token_file).read_text().strip()

    def admin(self, method: str, path: str, timeout: float = 10.0, *, auth: bool = True,
              headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes]:
        if auth and method != "GET":
            headers = (("Authorization", f"Bearer {self.token()}"), *headers)
        return http_request(self.admin_address, method, path, timeout, headers)

    def status(self, timeout: float = 10.0) -> dict:
        code, body = self.admin("GET", "/status", timeout)
        assert code == 200, body
        status = json.loads(body)
        self.seen_pids.update(w["pid"] for w in status["workers"])
        return status

    def metrics(self) -> str:
        code, body = self.admin("GET", "/metrics")
        assert code == 200, body
        return body.decode()

    def worker_pids(self, status: dict | None = None) -> list[int]:
        status = status or self.status()
        return sorted(w["pid"] for w in status["workers"] if not w["stopping"])

    def counters(self) -> dict[int, dict]:
        """pid -> counters of every worker /status lists."""
        return {w["pid"]: w["counters"] for w in self.status()["workers"]}

    def wait_serving(self, generation: int, timeout: float = 10.0) -> dict:
        """Until generation ``generation`` has all its workers and no older one is left."""
        def ready():
            st = self.status()
            gens = {w["generation"] for w in st["workers"]}
            current = [w for w in st["workers"] if w["generation"] == generation]
            return st if gens == {generation} and len(current) == self.workers else None
        return wait_until(ready, timeout, 0.1, f"generation {generation} alone serving")

    # ---- TLS clients ----------------------------------------------------------
    def client_context(self, *, maximum_version=None, tickets: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.set_alpn_protocols(["http/1.1"])
        if maximum_version is not None:
            ctx.maximum_version = maximum_version
        if not tickets:
            ctx.options |= ssl.OP_NO_TICKET
        return ctx

    def connect(self, ctx: ssl.SSLContext | None = None, session: ssl.SSLSession | None = None,
                port: int | None = None, timeout: float = 5.0) -> ssl.SSLSocket:
        ctx = ctx or self.client_context()
        raw = socket.create_connection((HOST, port or self.https_port), timeout=timeout)
        try:
            return ctx.wrap_socket(raw, server_hostname=NAME, session=session)
        except BaseException:
            raw.close()
            raise

    def get(self, sock: ssl.SSLSocket, target: str = "/", reader: Reader | None = None,
            headers: list[tuple[str, str]] | None = None) -> Message:
        sock.sendall(request_bytes("GET", target, NAME, headers))
        return read_response(reader or Reader(sock), "GET")

    def request(self, target: str = "/", port: int | None = None, timeout: float = 5.0) -> Message:
        with self.connect(port=port, timeout=timeout) as sock:
            return self.get(sock, target)

    def url(self, path: str = "/") -> str:
        return f"https://127.0.0.1:{self.https_port}{path}"


@pytest.fixture
def ca_file(write, ca) -> str:
    return write("certs/ca.crt", ca.cert_pem)


@pytest.fixture
def supervised(tmp_path: Path, write, ca_file, ec_leaf, intermediate, demo_backend, subprocess_env, python):
    """Factory: ``supervised(tls=..., sessions=..., limits=..., start=True, **top) -> Supervised``.

    Each call is a separate instance (own ports, admin, pid file and error log).
    """
    made: list[Supervised] = []
    cert = cert_entry(write, ec_leaf, intermediate, "www-ec")

    def make(*, tls: dict | None = None, sessions: dict | None = None, limits: dict | None = None,
             start: bool = True, workers: int = 2, **top) -> Supervised:
        name = f"ft{len(made)}"
        server = {"listen": [f"{HOST}:{free_port()}"], "server_names": [NAME, "example.com"],
                  "default_server": True, "certificate": [cert],
                  "route": [{"path": "/", "upstream": "app"}]}
        if tls:
            server["tls"] = tls
        config = {
            "workers": workers,
            "admin": f"{HOST}:{free_port()}",
            "pid_file": str(tmp_path / f"{name}.pid"),
            "log_level": "info",
            "error_log": str(tmp_path / f"{name}.log"),
            **top,
            "limits": dict(LIMITS, **(limits or {})),
            "upstream": [{"name": "app", "servers": [demo_backend]}],
            "server": [server],
        }
        if sessions:
            config["sessions"] = sessions
        sup = Supervised(tmp_path, name, config, ca_file, subprocess_env, python)
        made.append(sup)
        return sup.start() if start else sup

    yield make
    for sup in made:
        sup.stop()
