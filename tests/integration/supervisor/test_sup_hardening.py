"""The control plane and the files the master writes, attacked the way the hardening issue
describes: through the admin address, the pid file's directory, and resource limits."""

from __future__ import annotations

import collections
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import admin_socket, wait_until

LOW_NOFILE = 256
# util-linux prlimit execs the command with a soft open-file limit far under the hard one.
LOW_NOFILE_WRAPPER = ("prlimit", f"--nofile={LOW_NOFILE}:")


def _nofile(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError(f"no open-file limit for {pid}")


def test_master_and_workers_raise_the_open_file_limit(supervised):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard > LOW_NOFILE
    sup = supervised(start=False, log_level="debug")
    sup.start(wrapper=LOW_NOFILE_WRAPPER)
    for pid in [sup.pid, *sup.worker_pids()]:
        assert _nofile(pid) == (hard, hard), pid
    assert f"RLIMIT_NOFILE: {hard} open files" in sup.log()


def test_single_process_raises_the_open_file_limit(supervised):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    sup = supervised(start=False, log_level="debug")
    with open(sup.output_file, "ab") as out:
        sup.proc = subprocess.Popen([*LOW_NOFILE_WRAPPER, sup.python, "-m", "fastterm", "run", "--single",
                                     "-c", sup.config_path],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=sup.env, cwd=sup.tmp_path)

    def serving():
        assert sup.proc.poll() is None, sup.log()
        try:
            return sup.request("/", timeout=2).status == 200
        except (OSError, ssl.SSLError):
            return False

    wait_until(serving, 15, 0.1, "the single process to serve")
    assert _nofile(sup.proc.pid) == (hard, hard)
    assert f"RLIMIT_NOFILE: {hard} open files" in sup.log()
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(timeout=10) == 0


def test_pid_file_is_not_written_through_a_planted_symlink(supervised, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    sup = supervised(start=False)
    os.symlink(victim, f"{sup.pid_file}.tmp")   # the temporary name the master used to write first
    sup.start()
    assert victim.read_text() == "precious\n"
    assert not Path(sup.pid_file).is_symlink()
    assert sup.read_pid_file() == sup.pid


# ---------------------------------------------------------------------------------------
# The admin endpoint: credentials


def test_mutating_admin_calls_need_the_token(supervised):
    sup = supervised()
    for path in ("/reload", "/ticket-keys/rotate"):
        code, body = sup.admin("POST", path, auth=False)
        assert code == 401, body
        code, body = sup.admin("POST", path, headers=(("Authorization", "Bearer " + "0" * 64),), auth=False)
        assert code == 403, body
        code, body = sup.admin("POST", path, headers=(("Authorization", f"Basic {sup.token()}"),), auth=False)
        assert code == 403, body
    st = sup.status()
    assert (st["generation"], st["reloads"], st["ticket_key_rotations"]) == (1, 0, 1)
    assert stat.S_IMODE(os.stat(sup.token_file).st_mode) == 0o600
    # Prometheus and /status stay open on loopback.
    assert sup.admin("GET", "/metrics", auth=False)[0] == 200
    code, body = sup.admin("POST", "/ticket-keys/rotate")
    assert code == 200 and json.loads(body)["rotations"] == 2, body
    code, body = sup.admin("POST", "/reload")
    assert code == 200 and json.loads(body)["generation"] == 2, body


def _raw_admin(sup, request: bytes, timeout: float = 10.0) -> bytes:
    with admin_socket(sup.admin_address, timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _browser_post(port: int, extra: str = "") -> bytes:
    """What ``fetch("http://127.0.0.1:PORT/reload", {method: "POST", mode: "no-cors", body: "go"})``
    sends from a page on another origin: a "simple" request, so no CORS preflight asks first."""
    return (f"POST /reload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n"
            "Content-Length: 2\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
            "Content-Type: text/plain;charset=UTF-8\r\nAccept: */*\r\nOrigin: http://evil.example\r\n"
            "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\nSec-Fetch-Dest: empty\r\n"
            f"{extra}\r\ngo").encode()


def test_cross_origin_text_plain_post_is_refused(supervised):
    sup = supervised()
    port = sup.admin_address[1]
    assert _raw_admin(sup, _browser_post(port)).startswith(b"HTTP/1.1 403 "), "a page made the master reload"
    # Even a browser that somehow holds the token is not a client of the admin endpoint.
    answer = _raw_admin(sup, _browser_post(port, f"Authorization: Bearer {sup.token()}\r\n"))
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    st = sup.status()
    assert (st["generation"], st["reloads"]) == (1, 0)


@pytest.mark.parametrize("request_bytes", [
    b"GET /status HTTP/1.1\r\nHost: admin\r\nContent-Length: \xb2\r\n\r\n",   # a digit, not ASCII
    b"GET /status HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
    b"POST /reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /status\r\n\r\n",
    b"GET /status HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /status HTTP/1.1\r\nX: " + b"a" * 9000,
])
def test_malformed_admin_requests_get_400_and_the_master_goes_on(supervised, request_bytes):
    sup = supervised(workers=1)
    answer = _raw_admin(sup, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert sup.status()["reloads"] == 0
    assert "Traceback" not in sup.log()


# ---------------------------------------------------------------------------------------
# The admin endpoint never blocks the master


def test_admin_slowloris_does_not_block_the_master(supervised):
    """One byte every 1.9 s (under the old per-recv timeout of 2 s): meanwhile the master
    answers other admin clients, replaces a SIGKILLed worker, reloads on SIGHUP, and cuts
    the dripping client at its deadline."""
    from fastterm.admin import REQUEST_DEADLINE

    sup = supervised()
    drip = admin_socket(sup.admin_address, 30)
    connected = time.monotonic()
    stop = threading.Event()
    cut = []

    def dripper():
        for byte in b"GET /status HTTP/1.1\r\nHost: admin\r\n":
            try:
                drip.send(bytes([byte]))
            except OSError:
                cut.append(time.monotonic())
                return
            if stop.wait(1.9):
                return

    thread = threading.Thread(target=dripper, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)
        st = sup.status(timeout=3)
        victim = st["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: (pids := sup.worker_pids(sup.status(timeout=3))) and victim not in pids
                   and len(pids) == 2, 5, 0.1, "the killed worker to be replaced")
        os.kill(sup.pid, signal.SIGHUP)
        sup.wait_serving(2, timeout=5)
        try:
            data = drip.recv(65536)
        except ConnectionResetError:
            data = b""
        assert data == b"", data
        assert time.monotonic() - connected < REQUEST_DEADLINE + 1.5
    finally:
        stop.set()
        thread.join(5)
        drip.close()


def test_admin_connections_past_the_cap_wait_and_the_master_goes_on(supervised):
    """The admin table full of idle clients: the next one waits in the backlog (no answer
    yet), the master still reloads, and once the idle ones reach their deadline the waiting
    client is answered."""
    from fastterm.admin import MAX_CONNECTIONS, REQUEST_DEADLINE

    sup = supervised()
    idle = [admin_socket(sup.admin_address, 10) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.5)                         # all accepted: the table is full
        filled = time.monotonic()
        waiting = admin_socket(sup.admin_address, 10)
        waiting.sendall(b"GET /status HTTP/1.1\r\nHost: admin\r\n\r\n")
        os.kill(sup.pid, signal.SIGHUP)
        data = b""
        while chunk := waiting.recv(65536):
            data += chunk
        waiting.close()
        assert data.startswith(b"HTTP/1.1 200 "), data[:200]
        assert time.monotonic() - filled < REQUEST_DEADLINE + 2
        # The reload ran while the admin endpoint was full.
        assert json.loads(data.partition(b"\r\n\r\n")[2])["reloads"] == 1
    finally:
        for sock in idle:
            sock.close()


# ---------------------------------------------------------------------------------------
# Reload storms


class IdleClients:
    """A thread that keeps opening keep-alive TLS connections (one request each) and leaves
    them open and idle: each lands on a worker of the generation serving at that moment and
    keeps it draining after the next reload."""

    def __init__(self, sup, most: int = 3000):
        self.sup = sup
        self.most = most
        self.ctx = sup.client_context()
        self.socks: list[ssl.SSLSocket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self.stop.is_set() and len(self.socks) < self.most:
            try:
                sock = self.sup.connect(self.ctx, timeout=5)
            except (OSError, ssl.SSLError):
                time.sleep(0.01)
                continue
            self.socks.append(sock)
            try:
                self.sup.get(sock, "/")
            except (OSError, EOFError, ValueError):
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)
        for sock in self.socks:
            sock.close()


def _post_reload(sup) -> socket.socket:
    sock = admin_socket(sup.admin_address, 20)
    sock.sendall(f"POST /reload HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {sup.token()}\r\n"
                 "Content-Length: 0\r\n\r\n".encode())
    return sock


def _status_of(sock: socket.socket) -> int:
    with sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(None, 2)[1])


def test_600_reloads_with_idle_clients_leave_the_master_serving(supervised):
    """600 reload requests (POST /reload and SIGHUP, 20 at a time) while idle keep-alive
    clients hold every generation open: they coalesce into reloads far enough apart for
    each generation to serve, the number of generations left draining is bounded (so the
    512 shared worker slots, whose exhaustion used to kill the master, are never reached),
    and the master answers every request and serves on."""
    from fastterm.supervisor import MAX_DRAINING_GENERATIONS

    sup = supervised(limits={"drain_timeout": 60, "keepalive_timeout": 60})
    answers: collections.Counter = collections.Counter()
    with IdleClients(sup) as clients:
        wait_until(lambda: len(clients.socks) >= 20, 10, 0.05, "the first idle clients")
        before = len(clients.socks)
        for _ in range(30):
            posts = [_post_reload(sup) for _ in range(15)]
            for _ in range(5):
                os.kill(sup.pid, signal.SIGHUP)
            for sock in posts:
                answers[_status_of(sock)] += 1
            assert sup.proc.poll() is None, sup.log()[-3000:]
        assert answers == {200: 450}, answers
        # New clients were served all along: each generation lived long enough to start
        # (the old master stopped each one ~60 ms after forking it, before it ever served).
        assert len(clients.socks) - before >= 100, len(clients.socks) - before
        st = sup.status()
        assert st["reload_failures"] == 0, st["last_reload_error"]
        assert 30 <= st["reloads"] < 600, st["reloads"]

        def bounded():
            gens = {w["generation"] for w in sup.status()["workers"]}
            return len(gens) <= MAX_DRAINING_GENERATIONS + 1

        wait_until(bounded, 10, 0.2, f"at most {MAX_DRAINING_GENERATIONS} generations draining")
        assert "stops now" in sup.log(), "idle clients never held more generations than the bound"
        assert sup.request("/").status == 200


# ---------------------------------------------------------------------------------------
# The admin endpoint on a unix socket

NOBODY = 65534


@pytest.fixture
def open_dir():
    """A directory user nobody can enter (tmp_path is root's alone)."""
    path = tempfile.mkdtemp(prefix="fastterm-admin-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path)


NOBODY_CLIENT = """
import socket, sys
method, path, sock_path = sys.argv[1:]
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sock_path)
s.sendall(f"{method} {path} HTTP/1.1\\r\\nHost: admin\\r\\nContent-Length: 0\\r\\n\\r\\n".encode())
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.split()[1].decode())
"""


def _as_nobody(method: str, path: str, sock_path: str) -> str:
    r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                        sys.executable, "-c", NOBODY_CLIENT, method, path, sock_path],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_unix_admin_socket_trusts_our_uid_and_root_only(supervised, open_dir):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    sock_path = str(open_dir / "admin.sock")
    sup = supervised(admin=f"unix:{sock_path}")
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode) and not st.st_mode & 0o077   # born under umask 077
    # Root, as the master: peer credentials are the credential, no token needed.
    code, body = sup.admin("POST", "/reload", auth=False)
    assert code == 200, body
    r = sup.cli("reload", "-c", sup.config_path)
    assert r.returncode == 0, r.stderr
    sup.wait_serving(3)
    # Someone loosened the socket's mode: another user may read, not act.
    os.chmod(sock_path, 0o666)
    assert _as_nobody("GET", "/status", sock_path) == "200"
    assert _as_nobody("POST", "/reload", sock_path) == "403"
    assert _as_nobody("POST", "/ticket-keys/rotate", sock_path) == "403"
    assert sup.status()["generation"] == 3
