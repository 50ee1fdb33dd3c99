"""The master's decisions, without serving: how many workers a configuration asks for,
what a reload does when the shared worker slots are gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import msgspec
from forked import in_child

from fastterm.config.model import Config
from fastterm.config.toml import load_config
from fastterm.supervisor import worker_count


def _config(workers) -> Config:
    return msgspec.convert({"server": [], "workers": workers}, Config)


def test_worker_count_follows_the_workers_setting():
    n = (os.cpu_count() or 1) + 1   # never the CPU count, so "auto" cannot pass for it
    assert worker_count(_config(n)) == n
    assert worker_count(_config(1)) == 1
    assert worker_count(_config("auto")) == len(os.sched_getaffinity(0))


def test_auto_workers_follow_the_affinity_mask():
    """Under ``taskset -c 0`` (or a container's cpuset) ``auto`` is one worker, not one per CPU."""
    code = ("from fastterm.config.model import Config\n"
            "from fastterm.supervisor import worker_count\n"
            "print(worker_count(Config(servers=[], workers='auto')))")
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "1"


def _config_file(tmp_path, ec_files, workers: int = 2) -> str:
    cert, key = ec_files
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "fastterm.toml"
    path.write_text(f'workers = {workers}\npid_file = "{tmp_path}/ft.pid"\n\n'
                    '[[upstream]]\nname = "app"\nservers = ["127.0.0.1:9"]\n\n'
                    f'[[server]]\nlisten = ["127.0.0.1:{port}"]\n\n'
                    f'[[server.certificate]]\ncert = "{cert}"\nkey = "{key}"\n')
    return str(path)


def test_a_reload_with_no_worker_slot_left_is_refused_not_fatal(tmp_path, ec_files):
    """Every shared-memory worker slot taken (old generations draining): the reload is
    refused and reported, the running generation stays current, a due respawn waits."""
    path = _config_file(tmp_path, ec_files)

    def exhausted():
        from fastterm.supervisor import Master

        master = Master(path, load_config(path))    # binds, builds; forks nothing yet
        while True:
            try:
                master.shared.claim_slot(0, 0)
            except RuntimeError:
                break
        ok = master.reload()
        master.respawn_at[0] = 0.0
        master._respawn_due()
        return ok, master.reload_failures, master.last_reload_error, master.generation.number, \
            master.procs, 0 in master.respawn_at

    ok, failures, error, generation, procs, respawn_pending = in_child(exhausted, timeout=20)
    assert (ok, failures, generation, procs) == (False, 1, 1, {})
    assert "worker slots" in error, error
    assert respawn_pending
