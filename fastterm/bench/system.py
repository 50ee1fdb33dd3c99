"""What ``fastterm bench`` needs from the machine: tools on PATH, free ports, CPU lists and
pinning, the CPU time and RSS of processes from /proc, the fd limit."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

INSTALL = {
    "nginx": "apt-get install nginx",
    "haproxy": "apt-get install haproxy",
    "hitch": "apt-get install hitch",
    "wrk": "apt-get install wrk",
    "openssl": "apt-get install openssl",
    "taskset": "apt-get install util-linux",
    "h2load": "apt-get install nghttp2-client",
}


class BenchError(Exception):
    """A problem the user can fix (missing tool, bad option): printed without a traceback."""


def which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_list(spec: str) -> list[int]:
    """taskset's list syntax: ``1``, ``1,3``, ``2-5``."""
    cpus: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def cpu_spec(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus else argv


# --- /proc ----------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """utime+stime of one process in seconds (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of proc(5) stat


def proc_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def tail(path: str, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"exited with status {proc.returncode} before listening on {host}:{port}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"nothing listens on {host}:{port} after {timeout:.0f} s")



def missing_tools_message(missing: dict[str, str]) -> str:
    lines = ["fastterm bench needs tools that are not installed:"]
    lines += [f"  {tool:8} for {why}" for tool, why in missing.items()]
    pkgs = " ".join(dict.fromkeys(INSTALL[t].split()[-1] for t in missing))
    lines.append(f"install them with:  apt-get install {pkgs}")
    lines.append("(or leave those out with --scenario / --peers)")
    return "\n".join(lines)


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:   # root (CAP_SYS_RESOURCE) may raise the hard limit; children inherit it
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, want))
            hard = want
        except (ValueError, OSError):
            pass
    target = hard if hard == resource.RLIM_INFINITY else max(soft, min(hard, want))
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target

