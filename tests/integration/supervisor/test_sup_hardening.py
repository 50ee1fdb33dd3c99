"""The control plane and the files the master writes, attacked the way the hardening issue
describes: through the admin address, the pid file's directory, and resource limits."""

from __future__ import annotations

import os
import resource
import signal
import ssl
import subprocess
from pathlib import Path

from conftest import wait_until

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
