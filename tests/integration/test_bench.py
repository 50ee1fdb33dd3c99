"""``fastterm bench`` as users run it: a subprocess on loopback, short runs.

Not a timed test: the figures are not checked, only that they exist, that a failing
backend makes the runs invalid instead of reported, and that missing tools are explained.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fastterm.bench.peers import Peer, fastterm_conf, haproxy_conf, load_setup, make_peers, nginx_conf
from fastterm.bench.run import Bench
from fastterm.bench.scenarios import DEFAULT_SCENARIOS, RUN_FIGURES, SCENARIOS, Run
from fastterm.bench.system import free_port, which

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)

needs_tools = pytest.mark.skipif(
    not (which("nginx") and shutil.which("wrk") and shutil.which("taskset")),
    reason="fastterm bench needs nginx, wrk and taskset (./bootstrap installs them)")


def run_bench(tmp_path, *args: str, env: dict | None = None,
              timeout: float = 240) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, "-m", "fastterm", "bench", *args, "--json", str(out)],
                         check=False, capture_output=True, text=True, timeout=timeout, env=env,
                         cwd=tmp_path)
    data = json.loads(out.read_text()) if out.exists() else None
    return res, data


@needs_tools
def test_keepalive_has_figures_for_fastterm_and_nginx(tmp_path, subprocess_env):
    res, data = run_bench(tmp_path, "--scenario", "keepalive", "--duration", "2", "--rounds", "1",
                          "--peers", "nginx", env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert data is not None
    rows = {r["peer"]: r for r in data["summary"] if r["figure"] == "keepalive"}
    assert set(rows) == {"fastterm", "nginx"}
    for peer in ("fastterm", "nginx"):
        assert rows[peer]["median"] > 0, rows[peer]
        assert rows[peer]["per_cpu"] > 0, rows[peer]
    assert rows["fastterm"]["ratio"] > 0
    assert all(not r["invalid"] for r in data["runs"])
    assert "keepalive" in res.stdout and "fastterm" in res.stdout
    # wrk's latency at saturation, each peer's own, lower is better
    for peer in ("fastterm", "nginx"):
        run = next(r for r in data["runs"] if r["peer"] == peer)
        assert 0 < run["figures"]["keepalive-p50"] <= run["figures"]["keepalive-p99"] < 5000, run
    p99 = {r["peer"]: r for r in data["summary"] if r["figure"] == "keepalive-p99"}
    assert set(p99) == {"fastterm", "nginx"} and p99["fastterm"]["higher_is_better"] is False


@needs_tools
def test_keepalive_idle_holds_idle_connections_around_the_run(tmp_path, subprocess_env):
    """keepalive-idle: wrk's keep-alive run while --idle-connections TLS connections stay open,
    through fastterm and nginx; the idle handshakes are not counted in the run."""
    res, data = run_bench(tmp_path, "--scenario", "keepalive-idle", "--duration", "1", "--rounds", "1",
                          "--peers", "nginx", "--idle-connections", "300", env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = {r["peer"]: r for r in data["runs"]}
    assert set(runs) == {"fastterm", "nginx"}
    for run in runs.values():
        assert not run["invalid"], run
        assert run["raw"]["idle_held"] == 300, run
        assert run["per_cpu"]["keepalive-idle"] > 0, run
    assert runs["fastterm"]["server"]["full"] < 300   # wrk's 50, not the idle connections' handshakes
    assert "keepalive-idle-backend-connects" in runs["fastterm"]["figures"]


@needs_tools
def test_latency_measures_every_peer_in_one_window(tmp_path, subprocess_env):
    """Each round's latency run is one window for all peers (their clients side by side), each
    peer's figures its own; the client reports how late it issued its requests."""
    res, data = run_bench(tmp_path, "--scenario", "latency", "--duration", "1", "--rounds", "2",
                          "--peers", "nginx", env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = {(r["peer"], r["round"]): r for r in data["runs"]}
    assert set(runs) == {(peer, rnd) for peer in ("fastterm", "nginx") for rnd in (1, 2)}
    for rnd in (1, 2):
        ours, theirs = runs[("fastterm", rnd)], runs[("nginx", rnd)]
        assert ours["wall_s"] == theirs["wall_s"] > 1, (ours, theirs)
        for run in (ours, theirs):
            assert not run["invalid"], run
            raw = run["raw"]
            assert raw["done"] == raw["offered"] == 1000 and raw["errors"] == 0, raw
            assert 0 < raw["p50"] <= raw["p99"] <= raw["p99.9"] <= raw["max"], raw
            assert raw["lag_p50"] is not None and raw["realtime"] == (os.geteuid() == 0), raw
            assert run["cpu_s"] is not None and run["cpu_s"] > 0, run


@needs_tools
def test_access_log_runs_fastterm_with_and_without_it_in_one_run(tmp_path, subprocess_env):
    """``--access-log``: fastterm-log, the same fastterm writing JSON lines, right after fastterm
    in each round; both keep-alive figures come from one run, and its log has a line per request."""
    res, data = run_bench(tmp_path, "--scenario", "keepalive", "--duration", "1", "--rounds", "1",
                          "--peers", "none", "--access-log", "--keep", env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert data["peers"] == ["fastterm", "fastterm-log"]
    assert all(not r["invalid"] for r in data["runs"]), [r["invalid"] for r in data["runs"]]
    rows = {r["peer"]: r for r in data["summary"] if r["figure"] == "keepalive"}
    assert rows["fastterm"]["median"] > 0 and rows["fastterm-log"]["median"] > 0
    workdir = re.search(r"working directory (\S+);", res.stdout + res.stderr)
    assert workdir, res.stdout + res.stderr
    log = Path(workdir[1]) / "fastterm-access.log"
    try:
        first = json.loads(log.read_text().splitlines()[0])
        assert first["status"] == 200 and first["protocol"] == "HTTP/1.1"
    finally:
        shutil.rmtree(workdir[1])


@needs_tools
def test_reencrypt_has_plain_and_tls_backend_rows_for_fastterm_and_nginx(tmp_path, subprocess_env):
    res, data = run_bench(tmp_path, "--scenario", "reencrypt", "--duration", "1", "--rounds", "1",
                          "--peers", "nginx", env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert data["problems"] == [], data["problems"]   # /reencrypt/1k answered 200 with 1 KiB by both
    for figure in ("keepalive", "keepalive-reencrypt"):
        rows = {r["peer"]: r for r in data["summary"] if r["figure"] == figure}
        assert set(rows) == {"fastterm", "nginx"}, figure
        for peer in ("fastterm", "nginx"):
            assert rows[peer]["median"] > 0 and rows[peer]["per_cpu"] > 0, rows[peer]
    assert all(not r["invalid"] for r in data["runs"])


@needs_tools
def test_slowheaders_has_both_phases_for_fastterm_and_nginx(tmp_path, subprocess_env):
    """A few slow-header connections with a 1 s header timeout: they time out and reopen
    during the measurement, and each peer gets its p50/p99 alone and under attack."""
    res, data = run_bench(tmp_path, "--scenario", "slowheaders", "--duration", "1", "--rounds", "1",
                          "--peers", "nginx", "--slow-connections", "20", "--slow-drip", "0.2",
                          "--header-timeout", "1", "--slow-rate", "50", env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = {r["peer"]: r for r in data["runs"]}
    assert set(runs) == {"fastterm", "nginx"}
    for peer, run in runs.items():
        assert not run["invalid"], run["invalid"]
        assert set(run["figures"]) == set(RUN_FIGURES["slowheaders"]), run["figures"]
        assert all(v > 0 for v in run["figures"].values()), run["figures"]
        attacker = run["raw"]["attacker"]
        assert attacker["held_mean"] >= 18, (peer, attacker)
        assert attacker["closed_by_server"] >= 10, (peer, attacker)   # the header timeout did fire
    assert "slowheaders-p99-ratio" in res.stdout


@needs_tools
@pytest.mark.skipif(not shutil.which("h2load"), reason="the h2 scenario needs h2load (apt-get install nghttp2-client)")
def test_h2_has_figures_and_backend_connects_for_every_peer(tmp_path, subprocess_env):
    """h2load -c 50 at -m 10 and -m 100 through fastterm, nginx (listen ... ssl http2) and
    HAProxy when installed: every run negotiated h2, and each peer's backend connects per
    request is known (fastterm from its counters, the others from the backend's count)."""
    peers = ["nginx", "haproxy"] if which("haproxy") else ["nginx"]
    res, data = run_bench(tmp_path, "--scenario", "h2", "--duration", "1", "--rounds", "1",
                          "--peers", ",".join(peers), env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = {(r["run"], r["peer"]): r for r in data["runs"]}
    assert set(runs) == {(run, peer) for run in ("h2-m10", "h2-m100") for peer in ["fastterm", *peers]}
    for (name, peer), run in runs.items():
        assert not run["invalid"], (name, peer, run["invalid"])
        assert run["raw"]["protocol"] == "h2", (name, peer, run["raw"])
        assert set(run["figures"]) == set(RUN_FIGURES[name]), (name, peer, run["figures"])
        assert run["figures"][name] > 0 and run["per_cpu"][name] > 0, (name, peer, run)
        assert run["raw"]["backend_requests"] >= run["raw"]["requests"], (name, peer, run["raw"])
    fastterm = runs[("h2-m10", "fastterm")]
    assert fastterm["server"]["backend_connects"] <= fastterm["server"]["requests"], fastterm["server"]
    assert fastterm["figures"]["h2-m10-backend-connects"] == \
        fastterm["server"]["backend_connects"] / fastterm["server"]["requests"]
    assert "h2-m100-backend-connects" in res.stdout


@needs_tools
def test_sweep_has_figures_and_backend_connects_at_each_concurrency(tmp_path, subprocess_env):
    """keepalive at 5 and 20 client connections (--connections), and at 50 beside idle ones,
    through fastterm, nginx and HAProxy when installed: a req/s, a per CPU-second figure and
    the backend connects per request of every peer at each count."""
    peers = ["nginx", "haproxy"] if which("haproxy") else ["nginx"]
    res, data = run_bench(tmp_path, "--scenario", "sweep", "--connections", "5,20", "--duration", "1",
                          "--rounds", "1", "--peers", ",".join(peers), "--idle-connections", "200",
                          env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = {(r["run"], r["peer"]): r for r in data["runs"]}
    assert set(runs) == {(run, peer) for run in ("keepalive-c5", "keepalive-c20", "keepalive-idle")
                         for peer in ["fastterm", *peers]}
    for (name, peer), run in runs.items():
        assert not run["invalid"], (name, peer, run["invalid"])
        assert set(run["figures"]) == {name, f"{name}-backend-connects"}, (name, peer, run["figures"])
        assert run["figures"][name] > 0 and run["per_cpu"][name] > 0, (name, peer, run)
        assert 0 <= run["figures"][f"{name}-backend-connects"] <= 1, (name, peer, run["figures"])
    fastterm = runs[("keepalive-c20", "fastterm")]
    assert fastterm["figures"]["keepalive-c20-backend-connects"] == \
        fastterm["server"]["backend_connects"] / fastterm["server"]["requests"]
    rows = {(r["figure"], r["peer"]): r for r in data["summary"]}
    assert rows[("keepalive-c20", "fastterm")]["per_cpu_ratio"] > 0
    assert "keepalive-c20-backend-connects" in res.stdout


def test_bad_connection_counts_are_explained(tmp_path, subprocess_env):
    res, _ = run_bench(tmp_path, "--scenario", "sweep", "--connections", "10,many", "--peers", "none",
                       env=subprocess_env, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--connections '10,many'" in res.stderr, res.stderr


@pytest.mark.bench
@pytest.mark.timeout(900)
@needs_tools
def test_full_default_run_against_nginx_is_valid(tmp_path, subprocess_env):
    """The README's default run (every scenario, 3 rounds x 2 s) next to nginx: every run
    valid and every figure there for both, as a user who runs it on an idle machine sees."""
    res, data = run_bench(tmp_path, "--peers", "nginx", env=subprocess_env, timeout=840)
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    assert data["problems"] == [], data["problems"]
    assert [r for r in data["runs"] if r["invalid"]] == []
    rows = {(r["figure"], r["peer"]): r for r in data["summary"]}
    for figure in (f for name in DEFAULT_SCENARIOS for run in SCENARIOS[name] for f in RUN_FIGURES[run]):
        for peer in ("fastterm", "nginx"):
            row = rows[(figure, peer)]
            assert row["runs"] > 0 and row["valid"] == row["runs"] and row["median"] is not None, row


@needs_tools
def test_baseline_is_a_peer_interleaved_in_every_round(tmp_path, subprocess_env):
    """``--baseline`` at this very checkout (a tree with its extension built): fastterm-base
    runs right after fastterm in each round, and fastterm's ratio to it, the same code, is
    near 1 (plain and per CPU-second), next to both ratios to nginx."""
    res, data = run_bench(tmp_path, "--scenario", "keepalive", "--duration", "1", "--rounds", "2",
                          "--peers", "nginx", "--baseline", str(REPO_ROOT), "--markdown", env=subprocess_env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert data["peers"] == ["fastterm", "fastterm-base", "nginx"]
    assert [(r["round"], r["peer"]) for r in data["runs"]] == [
        (1, "fastterm"), (1, "fastterm-base"), (1, "nginx"), (2, "fastterm"), (2, "fastterm-base"), (2, "nginx")]
    assert all(not r["invalid"] for r in data["runs"]), [r["invalid"] for r in data["runs"]]
    rows = {r["peer"]: r for r in data["summary"] if r["figure"] == "keepalive"}
    fastterm = rows["fastterm"]
    assert len(fastterm["base_ratios"]) == 2 and len(fastterm["base_cpu_ratios"]) == 2, fastterm
    assert 0.67 < fastterm["base_ratio"] < 1.5, fastterm
    assert 0.67 < fastterm["base_per_cpu_ratio"] < 1.5, fastterm
    assert fastterm["ratio"] > 0 and rows["fastterm-base"]["ratio"] > 0
    assert rows["fastterm-base"]["base_ratio"] is None and rows["nginx"]["base_ratio"] is None
    assert "| ×nginx per CPU-s | ×base | ×base per CPU-s |" in res.stdout
    assert f"fastterm-base: {REPO_ROOT} at " in res.stdout


@needs_tools
def test_baseline_without_its_extension_built_is_refused(tmp_path, subprocess_env):
    """A tree whose extension is not built is refused, with the line that builds it, before
    anything starts: this checkout's editable install would otherwise lend it this tree's
    extension, and the baseline would be a mix of the two."""
    tree = tmp_path / "tree"
    shutil.copytree(REPO_ROOT / "fastterm", tree / "fastterm",
                    ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"))
    res, data = run_bench(tmp_path, "--scenario", "keepalive", "--peers", "none", "--baseline", str(tree),
                          env=subprocess_env, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert data is None and "Traceback" not in res.stderr
    assert f"--baseline {tree}" in res.stderr and "setup.py build_ext --inplace" in res.stderr, res.stderr


class Status500Backend:
    """Answers every request with 500 (keep-alive), on a thread; counts requests."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        buf = b""
        with conn:
            while not self.stopped:
                try:
                    data = conn.recv(1 << 20)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(buf) < length:
                        more = conn.recv(1 << 20)
                        if not more:
                            return
                        buf += more
                    buf = buf[length:]
                    conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nerror")

    def close(self):
        self.stopped = True
        self.sock.close()


@needs_tools
@pytest.mark.parametrize("failure", ["backend returns 500", "backend down"])
def test_failing_backend_makes_runs_invalid(tmp_path, subprocess_env, failure):
    backend = Status500Backend() if failure == "backend returns 500" else None
    if backend:
        address = f"127.0.0.1:{backend.port}"
    else:
        with socket.socket() as s:   # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            address = f"127.0.0.1:{s.getsockname()[1]}"
    try:
        res, data = run_bench(tmp_path, "--scenario", "keepalive", "--duration", "1", "--rounds", "1",
                              "--peers", "nginx", "--backend", address, env=subprocess_env)
    finally:
        if backend:
            backend.close()
    assert res.returncode == 1, res.stdout + res.stderr
    assert data is not None
    assert {r["peer"] for r in data["runs"]} == {"fastterm", "nginx"}
    for run in data["runs"]:
        assert run["invalid"], run
        assert any("non-2xx" in why for why in run["invalid"]), run["invalid"]
        assert run["figures"] == {}
    assert all(r["median"] is None and r["valid"] == 0 for r in data["summary"])
    assert "Invalid runs" in res.stdout and "non-2xx" in res.stdout


@needs_tools
def test_resumed_0rtt_has_ttfb_with_and_without_early_data(tmp_path, subprocess_env):
    """3 resumed connections each way through the 10 ms relay: every peer accepted the early
    data, both modes resumed, and each TTFB is at least the relayed round trip (20 ms)."""
    res, data = run_bench(tmp_path, "--scenario", "resumed-0rtt", "--rounds", "1", "--zerortt-count", "3",
                          "--peers", "nginx", env=subprocess_env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = {r["peer"]: r for r in data["runs"]}
    assert set(runs) == {"fastterm", "nginx"}
    for peer, run in runs.items():
        assert not run["invalid"], (peer, run["invalid"])
        assert set(run["figures"]) == set(RUN_FIGURES["resumed-0rtt"]), run["figures"]
        raw = run["raw"]
        assert raw["accepted"] == 3 and raw["reused"] == 6, (peer, raw)
        assert min(raw["ttfb_0rtt"] + raw["ttfb_1rtt"]) >= 20, (peer, raw)
    assert "TTFB 0-RTT p50" in res.stdout and "TTFB 1-RTT resumed p50" in res.stdout


def test_early_port_has_0rtt_on_for_every_peer(tmp_path):
    """The resumed-0rtt run's port: early data on in each peer's config, on that port only."""
    setup = load_setup(None, str(tmp_path), None, [0])
    setup.early_data = True
    ports = {"main": 1, "ecdsa": 2, "rsa": 3, "early": 4}
    nginx = nginx_conf(setup, str(tmp_path), "127.0.0.1:9", ports)
    assert nginx.count("ssl_early_data on;") == 1
    assert nginx.index("listen 127.0.0.1:4 ") < nginx.index("ssl_early_data on;")
    haproxy = haproxy_conf(setup, str(tmp_path), "127.0.0.1:9", ports)
    assert haproxy.count("allow-0rtt") == 1 and "bind 127.0.0.1:4 ssl" in haproxy
    ft = fastterm_conf(setup, "127.0.0.1:9", ports, 5)
    assert ft.count("early_data = true") == 1 and ft.count("[[server]]") == 4

@needs_tools
def test_resumed_handshakes_in_a_full_handshake_run_are_invalid(tmp_path):
    """The wrong handshake kind: the server's own counters decide, not the client's intent."""
    peer = Peer("x")
    run = Run("handshake-ecdsa", "x", 1, raw={"handshakes": 100})
    run.server = {"full": 90, "resumed": 10, "non2xx": 0}
    Bench(None, [], "1", {}).validate(peer, run)
    assert any("wrong handshake kind" in why for why in run.invalid)
    run = Run("resumed-ticket", "x", 1, raw={"handshakes": 100})
    run.server = {"full": 100, "resumed": 0, "non2xx": 0}
    Bench(None, [], "1", {}).validate(peer, run)
    assert any("wrong handshake kind" in why for why in run.invalid)


def test_missing_tools_are_explained(tmp_path, subprocess_env):
    env = dict(subprocess_env, PATH=str(tmp_path / "empty"))   # no wrk, openssl, taskset
    res, _ = run_bench(tmp_path, "--scenario", "keepalive,handshake", "--peers", "none", env=env, timeout=60)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "apt-get install" in res.stderr and "wrk" in res.stderr and "openssl" in res.stderr


def test_unknown_scenario_is_explained(tmp_path, subprocess_env):
    res, _ = run_bench(tmp_path, "--scenario", "nosuch", env=subprocess_env, timeout=60)
    assert res.returncode == 2
    assert "unknown scenario 'nosuch'" in res.stderr and "keepalive" in res.stderr


def test_peer_configs_follow_the_fastterm_config(tmp_path):
    """nginx and HAProxy get the protocols, ciphers, groups and session settings of the config."""
    from fastterm.config.model import INTERMEDIATE_CIPHERS, TLS13_CIPHERSUITES

    setup = load_setup(None, str(tmp_path), None, [0])
    assert set(setup.certs) == {"ecdsa", "rsa"} and setup.workers == 1
    ports = {"main": 1, "ecdsa": 2, "rsa": 3}
    nginx = nginx_conf(setup, str(tmp_path), "127.0.0.1:9", ports)
    assert f"ssl_ciphers {INTERMEDIATE_CIPHERS};" in nginx
    assert f"Ciphersuites {TLS13_CIPHERSUITES};" in nginx
    assert "ssl_ecdh_curve X25519:prime256v1:secp384r1;" in nginx
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in nginx and "ssl_session_tickets on;" in nginx
    assert "ssl_session_cache shared:SSL:10m;" in nginx and "Strict-Transport-Security" in nginx
    assert nginx.count("ssl http2 backlog=4096;") == 3   # ALPN h2,http/1.1, as the config's
    haproxy = haproxy_conf(setup, str(tmp_path), "127.0.0.1:9", ports)
    assert f"ciphers {INTERMEDIATE_CIPHERS}" in haproxy and "curves X25519:P-256:P-384" in haproxy
    assert "no-tls-tickets" not in haproxy and "nbthread 1" in haproxy
    assert haproxy.count("alpn h2,http/1.1") == 3
    ft = fastterm_conf(setup, "127.0.0.1:9", ports, 4)
    assert ft.count("[[server]]") == 3 and 'admin = "127.0.0.1:4"' in ft
    # The same header timeout for everyone (the slowheaders scenario times out on it).
    assert "client_header_timeout 10s;" in nginx and "timeout http-request 10s" in haproxy
    assert "client_header_timeout = 10.0" in ft


def test_each_fastterm_peer_has_its_own_pid_file(tmp_path):
    """fastterm and fastterm-base write their pid files in the working directory: not the
    default one (``/run/fastterm.pid`` as root) of a fastterm serving on this machine, nor
    each other's."""
    setup = load_setup(None, str(tmp_path), None, [0])
    peers = make_peers(setup, str(tmp_path), "127.0.0.1:9", [], "0", {}, str(REPO_ROOT), (str(REPO_ROOT), {}))
    assert [p.name for p in peers] == ["fastterm", "fastterm-base"]
    for name in ("fastterm", "fastterm-base"):
        assert f'pid_file = "{tmp_path}/{name}.pid"' in (tmp_path / f"{name}.toml").read_text()


@needs_tools
def test_target_mode_loads_a_running_fastterm(tmp_path, subprocess_env):
    ports = [free_port() for _ in range(3)]
    demo = subprocess.Popen([sys.executable, "-m", "fastterm", "demo", "--state-dir", str(tmp_path / "demo"),
                             "--https-port", str(ports[0]), "--http-port", str(ports[1]),
                             "--backend-port", str(ports[2])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", ports[0]), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and demo.poll() is None, "the demo did not start"
                time.sleep(0.1)
        time.sleep(0.5)
        res, data = run_bench(tmp_path, "--target", f"https://127.0.0.1:{ports[0]}", "--scenario",
                              "keepalive,handshake", "--path", "/", "--duration", "1", "--rounds", "1",
                              env=subprocess_env)
    finally:
        os.killpg(demo.pid, 15)
        demo.wait(timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    figures = {r["figure"] for r in data["summary"] if r["peer"] == "target" and r["median"]}
    assert "keepalive" in figures and "handshake-ecdsa" in figures


def test_baseline_from_before_0rtt_gets_no_early_port(tmp_path):
    """A --baseline checkout without ``[server.tls] early_data`` would refuse the resumed-0rtt
    port's config: it gets none (its run is skipped); fastterm itself does."""
    old = tmp_path / "old"
    (old / "fastterm" / "config").mkdir(parents=True)
    (old / "fastterm" / "config" / "model.py").write_text("class TLSPolicy:\n    session_tickets: bool = True\n")
    setup = load_setup(None, str(tmp_path), None, [0])
    setup.early_data = True
    peers = make_peers(setup, str(tmp_path), "127.0.0.1:9", [], "0", {}, str(REPO_ROOT), (str(old), {}))
    assert ["early" in p.ports for p in peers] == [True, False]
    assert "early_data = true" in (tmp_path / "fastterm.toml").read_text()
    assert "early_data" not in (tmp_path / "fastterm-base.toml").read_text()
