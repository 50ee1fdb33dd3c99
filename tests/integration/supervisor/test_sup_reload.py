"""Reloads, worker crashes and graceful stop, under load from real clients.

DESIGN.md "Draining": a reload costs zero failed requests, keep-alive (wrk) or one
connection per request; a broken config is refused and the running generation keeps
serving; SIGKILL of a worker costs at most that worker's in-flight connections.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import pid_alive, wait_until
from harness import HOST, NAME
from httpwire import Reader, closed_by_peer


@dataclass
class WrkResult:
    requests: int
    socket_errors: int
    non_2xx: int
    output: str


def parse_wrk(output: str) -> WrkResult:
    m = re.search(r"(\d+) requests in", output)
    assert m, output
    errors = 0
    if e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        errors = sum(int(x) for x in e.groups())
    non = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(int(m.group(1)), errors, int(non.group(1)) if non else 0, output)


def start_wrk(sup, seconds: int, connections: int = 20) -> subprocess.Popen:
    return subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
                             "-H", f"Host: {NAME}", sup.url("/")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_wrk(proc: subprocess.Popen, seconds: int) -> WrkResult:
    try:
        out, _ = proc.communicate(timeout=seconds + 15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
        raise AssertionError(f"wrk did not finish:\n{out}") from None
    assert proc.returncode == 0, out
    return parse_wrk(out)


class ShortConnections:
    """Threads that each loop: new TLS connection, one request, close; every failure counted."""

    def __init__(self, sup, threads: int = 2):
        self.sup = sup
        self.ctx = sup.client_context()
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self):
        while not self.stop.is_set():
            try:
                with self.sup.connect(self.ctx, timeout=5) as sock:
                    resp = self.sup.get(sock, "/", headers=[("Connection", "close")])
                result = None if resp.status == 200 else f"status {resp.status}"
            except (OSError, EOFError, ValueError) as exc:
                result = f"{type(exc).__name__}: {exc}"
            with self.lock:
                if result is None:
                    self.ok += 1
                else:
                    self.failures.append(result)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in self.threads), "client thread stuck"


def _sighup_reloads(sup, count: int, interval: float) -> None:
    pid = sup.read_pid_file()
    assert pid == sup.pid
    for _ in range(count):
        os.kill(pid, signal.SIGHUP)
        time.sleep(interval)


def test_reloads_under_keepalive_load(supervised):
    sup = supervised()
    seconds = 8
    wrk = start_wrk(sup, seconds)
    time.sleep(1.0)
    _sighup_reloads(sup, 10, 0.5)
    result = finish_wrk(wrk, seconds)
    assert result.requests > 100, result.output
    assert result.socket_errors == 0, result.output
    assert result.non_2xx == 0, result.output
    st = sup.wait_serving(11)
    assert st["reloads"] == 10 and st["reload_failures"] == 0
    assert st["worker_restarts"] == 0


def test_reloads_under_short_connections(supervised):
    sup = supervised()
    with ShortConnections(sup) as load:
        time.sleep(0.5)
        _sighup_reloads(sup, 10, 0.5)
        time.sleep(0.5)
    assert load.ok > 20, load.ok
    assert not load.failures, f"{len(load.failures)} failures of {load.ok + len(load.failures)}: " \
                              f"{load.failures[:5]}"
    st = sup.wait_serving(11)
    assert st["reloads"] == 10


def _broken_configs(sup):
    good = sup.config
    server = good["server"][0]
    yield "bad cipher", dict(good, server=[dict(server, tls={"ciphers": "NO-SUCH-CIPHER"})])
    missing = [{"cert": str(Path(sup.tmp_path) / "certs" / "missing.crt"), "key": server["certificate"][0]["key"]}]
    yield "missing certificate", dict(good, server=[dict(server, certificate=missing)])


def test_broken_reload_is_refused_and_old_workers_serve(supervised):
    sup = supervised()
    good = sup.config
    pids = sup.worker_pids()
    failures = 0
    for what, broken in list(_broken_configs(sup)):
        sup.write_config(broken)
        r = sup.cli("reload", "-c", sup.config_path)
        assert r.returncode == 1, f"{what}: {r}"
        assert "[emerg]" in r.stderr, f"{what}: {r.stderr}"
        # The master's own validation, through SIGHUP (the CLI above refuses before asking it).
        os.kill(sup.read_pid_file(), signal.SIGHUP)
        failures += 1
        st = wait_until(lambda want=failures: (s := sup.status())["reload_failures"] == want and s, 5, 0.05,
                        f"reload_failures == {failures} after {what}")
        assert st["last_reload_error"], st
        assert st["generation"] == 1 and st["reloads"] == 0
        # And the admin endpoint answers 409 with the error.
        code, body = sup.admin("POST", "/reload")
        failures += 1
        assert code == 409, body
        assert sup.worker_pids() == pids, f"{what}: the workers changed"
        for _ in range(4):
            assert sup.request("/").status == 200
        assert sup.status()["reload_failures"] == failures
    # The good configuration back: the reload goes through (SIGHUP: the CLI's own problem
    # has its own test below).
    sup.write_config(good)
    os.kill(sup.read_pid_file(), signal.SIGHUP)
    st = sup.wait_serving(2)
    assert st["last_reload_error"] is None
    assert not set(sup.worker_pids(st)) & set(pids)
    assert sup.request("/").status == 200


def test_reload_changes_listen_port(supervised, tmp_path):
    from harness import free_port

    sup = supervised()
    old_port = sup.https_port
    new_port = free_port()
    keepalive = sup.connect()
    reader = Reader(keepalive)
    assert sup.get(keepalive, "/", reader).status == 200
    config = dict(sup.config)
    config["server"] = [dict(config["server"][0], listen=[f"{HOST}:{new_port}"])]
    sup.write_config(config)
    os.kill(sup.read_pid_file(), signal.SIGHUP)
    wait_until(lambda: sup.status()["generation"] == 2, 5, 0.05, "generation 2")
    assert sup.request("/", port=new_port).status == 200
    # A keep-alive connection of the old generation: one more response, marked close.
    resp = sup.get(keepalive, "/", reader)
    assert resp.status == 200
    assert (resp.header("connection") or "").lower() == "close", resp.headers
    assert closed_by_peer(keepalive, reader)
    keepalive.close()

    def old_port_gone():
        try:
            socket.create_connection((HOST, old_port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(old_port_gone, 5, 0.1, f"old port {old_port} to stop listening")
    sup.wait_serving(2)
    assert sup.request("/", port=new_port).status == 200


def test_cli_reload_returns(supervised):
    """`fastterm reload -c FILE` (admin POST /reload, read to EOF) returns once reloaded."""
    sup = supervised()
    pids = sup.worker_pids()
    started = time.monotonic()
    try:
        r = sup.cli("reload", "-c", sup.config_path, timeout=10)
    except subprocess.TimeoutExpired:
        st = sup.status()
        raise AssertionError(f"`fastterm reload` still waiting after 10 s (generation {st['generation']}, "
                             f"reloads {st['reloads']}): the admin connection is not closed") from None
    assert r.returncode == 0, r
    assert "reloaded" in r.stdout
    assert time.monotonic() - started < 5
    st = sup.wait_serving(2)
    assert not set(sup.worker_pids(st)) & set(pids)


def test_sigkill_worker_under_load(supervised):
    sup = supervised()
    seconds = 7
    wrk = start_wrk(sup, seconds)
    time.sleep(2.5)   # workers older than 2 s respawn at once (no crash-loop backoff)
    st = sup.status()
    victim = st["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    killed_at = time.monotonic()

    def replaced():
        s = sup.status()
        slot = [w for w in s["workers"] if w["slot"] == victim["slot"]]
        return s if slot and slot[0]["pid"] != victim["pid"] else None

    st = wait_until(replaced, 3, 0.02, "a new worker in the killed worker's slot")
    took = time.monotonic() - killed_at
    result = finish_wrk(wrk, seconds)
    assert took < 1.0, f"replaced after {took:.2f} s"
    assert st["worker_restarts"] == 1
    assert len(sup.worker_pids(st)) == 2
    assert not pid_alive(victim["pid"])
    assert result.requests > 200, result.output
    # At most the killed worker's in-flight connections (wrk holds 20 in all).
    assert result.socket_errors <= 20, result.output
    assert result.non_2xx == 0, result.output
    assert sup.request("/").status == 200


def test_sigterm_drains_slow_request(supervised):
    sup = supervised(limits={"drain_timeout": 5})
    pids = sup.worker_pids()
    result: dict = {}
    sock = sup.connect(timeout=10)

    def slow():
        try:
            result["response"] = sup.get(sock, "/delay/2")
        except (OSError, EOFError, ValueError) as exc:  # reported by the assertion below
            result["error"] = exc

    t = threading.Thread(target=slow, daemon=True)
    t.start()
    time.sleep(0.3)
    os.kill(sup.read_pid_file(), signal.SIGTERM)
    t.join(timeout=10)
    sock.close()
    assert not t.is_alive(), "the slow request did not finish"
    assert "error" not in result, result
    assert result["response"].status == 200
    try:
        code = sup.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"master did not exit after SIGTERM:\n{sup.log()}") from None
    assert code == 0
    wait_until(lambda: not any(pid_alive(p) for p in pids), 3, 0.05, "workers to exit")
    assert not Path(sup.pid_file).exists()

