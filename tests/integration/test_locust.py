"""The locust mixed-traffic soak (loadtests/locustfile.py) through a real fastterm: 30 seconds in
the default run, the README's 10 minutes behind the ``soak`` marker (``./bootstrap test -m soak``).

fastterm runs as users run it (master + 2 workers, the demo's PKI and backend); locust is a
subprocess, headless, with a bounded run time. The soak verdict (zero failures, RSS growth
of every fastterm process within the bound) is locust's exit status.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastterm.demo import make_demo_pki, write_demo_config

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCUST = shutil.which("locust") or str(Path(sys.executable).with_name("locust"))
SOAK_SECONDS = int(os.environ.get("FASTTERM_SOAK_SECONDS", "600"))   # the long soak (-m soak)

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not os.path.exists(LOCUST), reason="locust is not installed (pip install '.[test]')"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tls(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    ctx = ssl._create_unverified_context()
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                ctx.wrap_socket(raw).close()
            return
        except (OSError, ssl.SSLError):
            assert time.monotonic() < deadline, f"nothing serves TLS on {port}"
            time.sleep(0.1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def soak(tmp_path, subprocess_env, run_time: int, users: int, spawn_rate: int,
         rss_interval: float) -> tuple[subprocess.CompletedProcess, dict]:
    """fastterm (master + 2 workers, the demo's PKI and backend) under locust's mixed traffic
    for ``run_time`` seconds in soak mode; locust's result and its RSS report."""
    state = str(tmp_path / "state")
    pki = make_demo_pki(state)
    https, http, backend_port, admin = (free_port() for _ in range(4))
    path = write_demo_config(state, https, http, backend_port)
    text = Path(path).read_text()
    Path(path).write_text(f'workers = 2\nadmin = "127.0.0.1:{admin}"\npid_file = "{tmp_path}/ft.pid"\n'
                          f'error_log = "{tmp_path}/error.log"\n' + text)
    backend = subprocess.Popen([sys.executable, "-m", "fastterm.backend", "--port", str(backend_port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env)
    with open(tmp_path / "fastterm.out", "wb") as out:
        fastterm = subprocess.Popen([sys.executable, "-m", "fastterm", "run", "-c", path],
                                    stdout=out, stderr=subprocess.STDOUT, env=subprocess_env)
    report = tmp_path / "rss.json"
    try:
        wait_tls(https, fastterm)
        env = dict(subprocess_env, FASTTERM_CA=pki["ca_cert"])
        res = subprocess.run(
            [LOCUST, "-f", str(REPO_ROOT / "loadtests" / "locustfile.py"), "--headless", "-u", str(users),
             "-r", str(spawn_rate), "--run-time", f"{run_time}s", "--host", f"https://localhost:{https}",
             "--only-summary", "--soak", "--fastterm-pid", str(fastterm.pid), "--rss-interval", str(rss_interval),
             "--rss-growth-mib", "32", "--rss-report", str(report), "--stop-timeout", "5"],
            check=False, capture_output=True, text=True, timeout=run_time + 90, env=env, cwd=tmp_path)
        assert fastterm.poll() is None, (tmp_path / "fastterm.out").read_text()
    finally:
        stop(fastterm)
        stop(backend)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "soak passed" in out, out[-4000:]
    return res, json.loads(report.read_text())


def test_locust_mixed_traffic_soak_30s(tmp_path, subprocess_env):
    res, data = soak(tmp_path, subprocess_env, run_time=30, users=20, spawn_rate=20, rss_interval=1)
    out = res.stdout + res.stderr
    assert data["failures"] == 0 and data["requests"] > 200, data
    assert len(data["samples"][-1]["rss_kib"]) == 3   # master + 2 workers
    for name in ("browse GET", "API POST json", "upload 256 KiB", "new visitor (full handshake)",
                 "returning visitor (resumed)"):
        assert name in out, f"{name!r} missing from locust's summary:\n{out[-4000:]}"


@pytest.mark.soak
@pytest.mark.timeout(SOAK_SECONDS + 300)
def test_locust_mixed_traffic_soak_long(tmp_path, subprocess_env):
    """The README's soak (50 users, 10 per second, 10 minutes; FASTTERM_SOAK_SECONDS): no
    failed request, and the RSS of master and workers together grew by at most 32 MiB from
    the end of the warm-up (first 20 %) to the end."""
    _, data = soak(tmp_path, subprocess_env, run_time=SOAK_SECONDS, users=50, spawn_rate=10,
                   rss_interval=min(5.0, SOAK_SECONDS / 25))
    assert data["problems"] == [] and data["failures"] == 0, data["problems"]
    assert data["requests"] > 10 * SOAK_SECONDS, data["requests"]
    assert len(data["samples"]) >= 25 and len(data["samples"][-1]["rss_kib"]) == 3
    assert data["growth_kib"] is not None and data["growth_kib"] <= data["bound_kib"], data["growth_kib"]
