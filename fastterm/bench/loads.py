"""Drivers of the load generators: wrk (keep-alive, bulk, upload), parallel ``openssl s_time
-new`` (full handshakes) and the Python clients of ``fastterm.bench.clients``, each started
pinned to the client CPUs; their output parsed into counts."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from fastterm.bench.backends import UPLOAD_SIZE
from fastterm.bench.system import cpu_list, pinned

_UNIT = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

UPLOAD_LUA = f"""\
wrk.method = "POST"
wrk.body = string.rep("u", {UPLOAD_SIZE})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def run_wrk(cpus: str, url: str, conns: int, duration: float, script: str | None = None,
            latency: bool = False) -> dict:
    """wrk's counts; with ``latency``, also its p50 and p99 (ms) of the run: each connection
    sends its next request as the answer comes (closed loop), so these are the latencies at
    saturation, the figure the issue's table and hitch's own benchmarks give."""
    threads = max(1, min(len(cpu_list(cpus)), conns))
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
            "-H", "Host: localhost"]
    if latency:
        argv.append("--latency")
    if script:
        argv += ["-s", script]
    res = subprocess.run(pinned(cpus, [*argv, url]), check=False, capture_output=True, text=True,
                         timeout=duration + 30)
    out = res.stdout + res.stderr
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if res.returncode != 0 or not m:
        return {"error": f"wrk exit {res.returncode}: {out.strip()[-300:]}"}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    raw = {"requests": int(m.group(1)), "elapsed": float(m.group(2)) * _TIME[m.group(3)],
           "bytes": float(m.group(4)) * _UNIT[m.group(5)], "non2xx": int(non2xx.group(1)) if non2xx else 0,
           "socket_errors": sum(map(int, sock.groups())) if sock else 0}
    if latency:
        for q in ("50", "99"):
            at = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
            if at:
                raw[f"p{q}"] = float(at.group(1)) * _TIME[at.group(2)] * 1e3
    return raw


H2LOAD_IDLE = 5   # -N: seconds without activity after which h2load gives a connection up


def run_h2load(cpus: str, url: str, conns: int, streams: int, requests: int, timeout: float) -> dict:
    """``h2load -n``: ``requests`` over ``conns`` connections, ``streams`` in flight on each;
    the ALPN protocol it negotiated, so a run that fell back to HTTP/1.1 is not taken for an
    HTTP/2 one. Not ``-D``: h2load 1.52 (Debian 12) sometimes never exits once its duration
    is over (nghttp2 fixed it in 1.69: "h2load does not stop early with -D option")."""
    threads = max(1, min(len(cpu_list(cpus)), conns))
    argv = ["h2load", f"-n{requests}", f"-c{conns}", f"-m{streams}", f"-t{threads}", f"-N{H2LOAD_IDLE}", url]
    try:
        res = subprocess.run(pinned(cpus, argv), check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"h2load did not finish {requests} requests within {timeout:.0f} s"}
    out = res.stdout + res.stderr
    fin = re.search(r"finished in ([\d.]+)(\w+),", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if res.returncode != 0 or not (fin and req and codes):
        return {"error": f"h2load exit {res.returncode}: {out.strip()[-300:]}"}
    proto = re.search(r"Application protocol: (\S+)", out)
    _total, _started, _done, ok, failed, errored, timeouts = map(int, req.groups())
    raw = {"requests": ok, "elapsed": float(fin.group(1)) * _TIME[fin.group(2)],
           "non2xx": sum(map(int, codes.groups()[1:])), "errors": failed + errored + timeouts,
           "protocol": proto.group(1) if proto else None}
    if raw["protocol"] != "h2":
        raw["error"] = f"h2load negotiated {raw['protocol'] or 'no application protocol'}, not h2"
    return raw


def run_s_time(cpus: str, host: str, port: int, clients: int, duration: float, path: str) -> dict:
    """Parallel ``openssl s_time -new``: every connection a full handshake and one request."""
    argv = ["openssl", "s_time", "-connect", f"{host}:{port}", "-new", "-time", str(max(1, round(duration))),
            "-www", path]
    procs = [subprocess.Popen(pinned(cpus, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(clients)]
    total = errors = 0
    rate = 0.0
    problems = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            problems.append("s_time timed out")
        m = re.search(r"(\d+) connections in ([\d.]+)s;", out) or \
            re.search(r"(\d+) connections in [\d.]+ real seconds", out)
        if m:
            n = int(m.group(1))
            total += n
            rate += n / max(1, round(duration))
        else:
            problems.append(out.strip()[-200:])
        errors += out.count("ERROR") + out.count(":error:")
    res = {"handshakes": total, "elapsed": total / rate if rate else float(duration), "client_errors": errors}
    if problems:
        res["error"] = "; ".join(problems)[:400]
    return res


def client_argv(kind: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "fastterm.bench", "client", kind, *args]


def run_resume_clients(cpus: str, host: str, port: int, mode: str, clients: int, duration: float,
                       path: str, env: dict) -> dict:
    argv = pinned(cpus, client_argv("resume", host, str(port), mode, str(duration), path))
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(clients)]
    agg = {"handshakes": 0, "reused": 0, "errors": 0, "non2xx": 0}
    rate = 0.0
    problems = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=duration + 30)
            r = json.loads(out.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            p.kill()
            out, err = p.communicate()
            problems.append(f"client failed: {err.strip()[-200:]}")
            continue
        for k in agg:
            agg[k] += r[k]
        rate += r["handshakes"] / max(r["elapsed"], 1e-3)
    agg["elapsed"] = agg["handshakes"] / rate if rate else float(duration)
    if problems:
        agg["error"] = "; ".join(problems)[:400]
    return agg
