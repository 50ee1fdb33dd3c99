"""The locust mixed-traffic soak (loadtests/locustfile.py), 30 seconds, through a real fastterm.

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


def test_locust_mixed_traffic_soak_30s(tmp_path, subprocess_env):
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
            [LOCUST, "-f", str(REPO_ROOT / "loadtests" / "locustfile.py"), "--headless", "-u", "20", "-r", "20",
             "--run-time", "30s", "--host", f"https://localhost:{https}", "--only-summary",
             "--soak", "--fastterm-pid", str(fastterm.pid), "--rss-interval", "1", "--rss-growth-mib", "32",
             "--rss-report", str(report), "--stop-timeout", "5"],
            check=False, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
        assert fastterm.poll() is None, (tmp_path / "fastterm.out").read_text()
    finally:
        stop(fastterm)
        stop(backend)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "soak passed" in out, out[-4000:]
    data = json.loads(report.read_text())
    assert data["failures"] == 0 and data["requests"] > 200, data
    assert len(data["samples"][-1]["rss_kib"]) == 3   # master + 2 workers
    for name in ("browse GET", "API POST json", "upload 256 KiB", "new visitor (full handshake)",
                 "returning visitor (resumed)"):
        assert name in out, f"{name!r} missing from locust's summary:\n{out[-4000:]}"
