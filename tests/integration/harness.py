"""Integration harness: fastterm as a subprocess, raw backends, small helpers.

Fixtures in conftest.py build on these; tests import them directly (``from harness import ...``).
Every wait is bounded: sockets have timeouts, process waits have deadlines.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from httpwire import Message, Reader, read_message, read_response, request_bytes

from fastterm.demo import Issued

HOST = "127.0.0.1"
NAME = "www.example.com"
HSTS = "max-age=63072000"
# Short limits so timeout tests take seconds (deadlines are exact; a timeout under 1 s set between
# two sweeps may fire up to 1 s late).
TEST_LIMITS = {
    "client_header_timeout": 2,
    "keepalive_timeout": 10,
    "backend_connect_timeout": 2,
    "backend_read_timeout": 2,
    "drain_timeout": 1,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------
# TOML


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _is_table_array(v) -> bool:
    return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)


def to_toml(d: dict, prefix: str = "") -> str:
    out: list[str] = []
    for k, v in d.items():
        if not isinstance(v, dict) and not _is_table_array(v):
            out.append(f"{k} = {_toml_value(v)}")
    for k, v in d.items():
        if isinstance(v, dict):
            out.append(f"\n[{prefix}{k}]")
            out.append(to_toml(v, f"{prefix}{k}."))
        elif _is_table_array(v):
            for item in v:
                out.append(f"\n[[{prefix}{k}]]")
                out.append(to_toml(item, f"{prefix}{k}."))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# fastterm


@dataclass
class Fastterm:
    proc: subprocess.Popen
    https_port: int
    http_port: int | None
    ca_file: str
    log_file: str
    output_file: str
    config_path: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """The worker's error log and its stdout/stderr, for assertions and failure messages."""
        text = ""
        for path in (self.log_file, self.output_file):
            try:
                text += Path(path).read_text(errors="replace")
            except FileNotFoundError:
                pass
        return text

    def serving_pids(self) -> list[int]:
        """The processes that serve: the workers a master forked, or the started process itself."""
        children = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            # field 4 (ppid) follows the parenthesised command name
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                children.append(int(entry))
        return sorted(children) or [self.pid]

    def rss_kib(self) -> int:
        """VmRSS of the serving processes (summed when a master runs several workers)."""
        total = 0
        for pid in self.serving_pids():
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        return total

    def client_context(self, *, alpn: list[str] | None = ("http/1.1",), **versions) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        for k, v in versions.items():
            setattr(ctx, k, v)
        return ctx

    def connect(self, server_hostname: str | None = NAME, ctx: ssl.SSLContext | None = None,
                timeout: float = 5.0) -> ssl.SSLSocket:
        ctx = ctx or self.client_context()
        if server_hostname is None:
            ctx.check_hostname = False
        raw = socket.create_connection((HOST, self.https_port), timeout=timeout)
        try:
            return ctx.wrap_socket(raw, server_hostname=server_hostname)
        except BaseException:
            raw.close()
            raise

    def request(self, method: str = "GET", target: str = "/", *, host: str | None = NAME,
                headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                timeout: float = 5.0) -> Message:
        """One request on a fresh TLS connection, read with ``httpwire``."""
        with self.connect(timeout=timeout) as sock:
            sock.sendall(request_bytes(method, target, host, headers, body))
            return read_response(Reader(sock), method)

    def url(self, path: str = "/") -> str:
        return f"https://{NAME}:{self.https_port}{path}"

    def stop(self) -> None:
        stop_process(self.proc, 5)


def stop_process(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM (fastterm's graceful stop) to a process the test started, SIGKILL after ``grace`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def cert_entry(write, issued: Issued, intermediate: Issued, name: str) -> dict:
    return {"cert": write(f"certs/{name}.crt", issued.cert_pem + intermediate.cert_pem),
            "key": write(f"certs/{name}.key", issued.key_pem)}


# ---------------------------------------------------------------------------------------
# raw backend


class BackendConn:
    """One accepted backend connection; every byte received is recorded."""

    def __init__(self, sock: socket.socket, record: bytearray, backend: RawBackend):
        self.sock = sock
        self.record = record
        self.backend = backend
        self.reader = Reader(sock, record)
        self.requests: list[Message] = []

    def read_request(self) -> Message | None:
        """The next request (head and body), or None when fastterm closed the connection."""
        try:
            msg = read_message(self.reader, request=True)
        except EOFError:
            return None
        self.requests.append(msg)
        self.backend.requests.append(msg)
        return msg

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0)."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.sock.close()

    def hang(self) -> None:
        """Hold the connection open, answering nothing, until the backend stops."""
        self.backend.stopping.wait(30)


def response_bytes(status: int = 200, body: bytes = b"ok", headers: list[tuple[str, str]] | None = None,
                   reason: str = "OK", length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{n}: {v}" for n, v in headers or []]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def keepalive_handler(conn: BackendConn) -> None:
    """Answer every request with 200 ``ok`` and keep the connection."""
    while (req := conn.read_request()) is not None:
        conn.send(response_bytes(200, f"ok {req.target}".encode()))


class RawBackend:
    def __init__(self, handler: Callable[[BackendConn], None]):
        self.handler = handler
        self.sock = socket.socket()
        self.sock.bind((HOST, 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = f"{HOST}:{self.port}"
        self.accepts = 0
        self.records: list[bytearray] = []
        self.requests: list[Message] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def received(self) -> bytes:
        """Everything fastterm sent, on every connection, concatenated."""
        with self.lock:
            return b"".join(bytes(r) for r in self.records)

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(10)
            record = bytearray()
            with self.lock:
                self.accepts += 1
                self.records.append(record)
                self.conns.append(sock)
            t = threading.Thread(target=self._serve, args=(sock, record), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket, record: bytearray) -> None:
        try:
            self.handler(BackendConn(sock, record, self))
        except (OSError, EOFError):
            pass
        except Exception as exc:  # noqa: BLE001 (kept for the test to see)
            self.errors.append(exc)
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.thread.join(2)
        for t in self.threads:
            t.join(2)


def settle() -> None:
    """Let an in-flight backend connect or write land before asserting the backend saw nothing."""
    time.sleep(0.2)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def metrics_text(admin_port: int) -> str:
    """The admin endpoint's /metrics body (Prometheus text)."""
    with socket.create_connection((HOST, admin_port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2].decode()


def metrics(admin_port: int, *prefixes: str) -> dict[str, float]:
    """/metrics samples, ``name{labels}`` -> value, of the names that start with one of ``prefixes``."""
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in metrics_text(admin_port).splitlines())
            if name.startswith(prefixes or ("fastterm_",))}


def echo_json(msg: Message) -> dict:
    assert msg.status == 200, (msg.start_line, msg.body[:300])
    return json.loads(msg.body)


def header_map(echo: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


# ASan's allocator keeps freed blocks in its quarantine (256 MiB) and pads each one with
# redzones: a worker's RSS then says nothing about our buffers. Under FASTTERM_ASAN the load
# still runs (its memory errors are what that build is for) and the RSS bounds are the
# normal build's to check.
ASAN = bool(os.environ.get("FASTTERM_ASAN"))


def within_rss_bound(measured: float, bound: float) -> bool:
    """``measured < bound``, except under ASan (see ASAN)."""
    return ASAN or measured < bound
