"""``fastterm bench --peers hitch``: hitch as users would compare it, a short real run.

Not a timed test: only that hitch's figures exist and are valid, that what it cannot do is
reported as not run (n/a) rather than invalid, and that none of its processes outlive the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastterm.bench.peers import HITCH_CANNOT
from fastterm.bench.system import which

pytestmark = [pytest.mark.timeout(300), pytest.mark.skipif(
    not (which("hitch") and which("nginx") and shutil.which("wrk") and shutil.which("taskset")
         and shutil.which("h2load")),
    reason="needs hitch, nginx, wrk, h2load and taskset (./bootstrap installs them)")]


def processes_with(needle: str) -> list[str]:
    """Command lines of the running processes that mention ``needle`` (zombies have none)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_hitch_has_valid_figures_and_leaves_no_process(tmp_path, subprocess_env):
    out = tmp_path / "out.json"
    res = subprocess.run([sys.executable, "-m", "fastterm", "bench", "--peers", "hitch", "--scenario",
                          "keepalive,handshake,resumed-id,resumed-ticket,latency,h2", "--duration", "1",
                          "--rounds", "1", "--keep", "--json", str(out)],
                         check=False, capture_output=True, text=True, timeout=240, env=subprocess_env, cwd=tmp_path)
    workdir = re.search(r"working directory (\S+);", res.stdout + res.stderr)
    assert workdir, res.stdout + res.stderr
    try:
        assert res.returncode == 0, res.stdout + res.stderr
        conf = Path(workdir[1]) / "hitch.conf"
        assert conf.exists()
        assert processes_with(str(conf)) == []
    finally:
        shutil.rmtree(workdir[1])
    data = json.loads(out.read_text())
    assert data["peers"] == ["fastterm", "hitch"]
    runs = {(r["run"], r["peer"]): r for r in data["runs"]}
    for name in ("keepalive", "handshake-ecdsa", "handshake-rsa", "resumed-id", "resumed-ticket", "latency"):
        run = runs[(name, "hitch")]
        assert not run["invalid"] and not run["skipped"], (name, run)
        assert run["figures"] and all(v > 0 for v in run["figures"].values()), (name, run["figures"])
    assert runs[("resumed-id", "hitch")]["raw"]["reused"] >= 0.9 * runs[("resumed-id", "hitch")]["raw"]["handshakes"]
    for name in ("h2-m10", "h2-m100"):
        assert runs[(name, "hitch")]["skipped"] == HITCH_CANNOT[name]
        assert runs[(name, "fastterm")]["figures"][name] > 0
    rows = {(r["figure"], r["peer"]): r for r in data["summary"]}
    assert rows[("h2-m10", "hitch")]["median"] is None and rows[("h2-m10", "hitch")]["valid"] == 0
    assert f"h2-m10 hitch: {HITCH_CANNOT['h2-m10']}" in res.stdout
