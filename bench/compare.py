#!/usr/bin/env python3
"""fastterm vs nginx as a TLS terminator, same machine, same certificates, same TLS settings.

    python bench/compare.py [--rounds 3] [--duration 5] [--cpu-server 0 --cpu-client 1] [--json FILE]

Not a test: a measurement that users and we run (``./bootstrap bench`` runs it in .venv).

Set-up (everything on 127.0.0.1, in a temporary directory removed at the end):
- a throwaway CA and one ECDSA P-256 and one RSA-2048 leaf (``fastterm.demo``);
- the backend: one nginx process (``master_process off``) answering ``/1k`` with
  ``return 200`` and a 1 KiB body and serving a 1 MiB static file as ``/1m``. It is pinned
  to the client CPU (``--cpu-backend`` to change), so the server CPU runs the terminator
  alone: both terminators pay the same backend cost, on the client's side;
- the terminators, both pinned with ``taskset`` to ``--cpu-server``, each with one port per
  certificate (ECDSA, RSA): nginx with one worker, and ``python -m fastterm run -c`` with
  the equivalent TOML. Equal TLS settings: TLS 1.2 + 1.3, the same TLS 1.2 ciphers, TLS 1.3
  suites and groups, server order with PrioritizeChaCha, no session cache, no tickets,
  ``proxy_http_version 1.1`` with an upstream ``keepalive 32`` (fastterm: ``keepalive = 32``);
  nginx also gets ``keepalive_requests`` raised (its default closes client connections
  after 1000 requests, fastterm does not) and ``proxy_max_temp_file_size 0`` (bulk
  responses stay in memory instead of nginx's temp files).

Scenarios, rounds interleaved (nginx, fastterm, nginx, fastterm, ...), every load bounded
by ``--duration`` and a subprocess timeout:
- ``keepalive``: HTTPS requests/s, 1 KiB body, ``wrk -t1 -c50`` over the ECDSA port;
- ``hs-ecdsa`` / ``hs-rsa``: full TLS 1.3 handshakes/s; the clients never resume (wrk and
  h2load resume on reconnect): parallel ``openssl s_time -new`` processes or a Python
  multiprocess ``ssl`` client, whichever gives more handshakes/s in a short calibration
  against nginx (``--hs-client``);
- ``bulk``: 1 MiB downloads, MB/s (10^6 bytes/s, as read by ``wrk -t1 -c4``).

For each figure: median, min, max, the per-round fastterm/nginx ratio, and the figure per
second of the terminator's own CPU time (utime+stime from /proc/PID/stat before and after;
nginx: master + worker). ``srv CPU`` is that CPU time over the wall time: well under 100 %
means the client side, not the terminator, was the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastterm.config.model import INTERMEDIATE_CIPHERS, TLS13_CIPHERSUITES
from fastterm.demo import issue_cert, make_ca, write_atomic

TERMINATORS = ("nginx", "fastterm")
SCENARIOS = ("keepalive", "hs-ecdsa", "hs-rsa", "bulk")
UNITS = {"keepalive": "req/s", "hs-ecdsa": "hs/s", "hs-rsa": "hs/s", "bulk": "MB/s"}
CPU_UNITS = {"keepalive": "req/CPU-s", "hs-ecdsa": "hs/CPU-s", "hs-rsa": "hs/CPU-s", "bulk": "MB/CPU-s"}
NGINX_GROUPS = "X25519:prime256v1:secp384r1"  # = fastterm's "X25519:P-256:P-384"
BODY_1K = "x" * 1023 + "\n"
BULK_SIZE = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def which(name: str) -> str:
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)),
                                      None)
    if not path:
        sys.exit(f"bench: {name} not found (./bootstrap setup installs it)")
    return path


def free_port() -> int:
    # No SO_REUSEPORT here: a port another process holds is refused, not shared.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args[:4]} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def proc_cpu(pid: int) -> float:
    """utime+stime of one process, seconds; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14, 15 of stat(5)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


# --- the processes --------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    ports: dict[str, int]
    log_path: str

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def cpu(self) -> float:
        return sum(proc_cpu(p) for p in self.pids())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nginx: fast stop; fastterm: graceful
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def pinned(cpu: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv] if cpu is not None else argv


def start(name: str, argv: list[str], ports: dict[str, int], log_path: str, cwd: str) -> Server:
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
    server = Server(name, proc, ports, log_path)
    try:
        for port in ports.values():
            wait_port(port, proc)
    except RuntimeError:
        server.stop()
        raise RuntimeError(f"{name} did not start: see {log_path}:\n{tail(log_path)}") from None
    return server


def tail(path: str, n: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


NGINX_COMMON = """\
events {{ worker_connections 8192; }}
"""


def backend_conf(d: str, port: int) -> str:
    return f"""\
daemon off;
master_process off;
worker_processes 1;
pid {d}/backend.pid;
error_log {d}/backend.error.log warn;
{NGINX_COMMON.format()}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {d}/www;
        location = /1k {{ return 200 "{BODY_1K[:-1]}\\n"; }}
        location = /1m {{ }}
    }}
}}
"""


def nginx_conf(d: str, backend: int, ports: dict[str, int], certs: dict[str, tuple[str, str]]) -> str:
    servers = []
    for kind, port in ports.items():
        if kind == "status":
            servers.append(f"    server {{ listen 127.0.0.1:{port}; location / {{ stub_status; }} }}")
            continue
        crt, key = certs[kind]
        servers.append(f"""\
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        server_name localhost;
        ssl_certificate {crt};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Real-IP $remote_addr;
        }}
    }}""")
    server_blocks = "\n".join(servers)
    return f"""\
daemon off;
master_process on;
worker_processes 1;
pid {d}/terminator.pid;
error_log {d}/nginx.error.log warn;
{NGINX_COMMON.format()}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers {INTERMEDIATE_CIPHERS};
    ssl_prefer_server_ciphers on;
    ssl_ecdh_curve {NGINX_GROUPS};
    ssl_conf_command Ciphersuites {TLS13_CIPHERSUITES};
    ssl_conf_command Options PrioritizeChaCha;
    ssl_session_cache off;
    ssl_session_tickets off;
    proxy_max_temp_file_size 0;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 32;
        keepalive_requests 100000000;
    }}
{server_blocks}
}}
"""


def fastterm_conf(backend: int, ports: dict[str, int], certs: dict[str, tuple[str, str]]) -> str:
    text = f"""\
workers = 1
log_level = "warning"

[[upstream]]
name = "backend"
servers = ["127.0.0.1:{backend}"]
keepalive = 32
"""
    for kind, port in ports.items():
        crt, key = certs[kind]
        text += f"""
[[server]]
listen = ["127.0.0.1:{port}"]
server_names = ["localhost"]
default_server = true

[server.tls]
protocols = ["TLSv1.2", "TLSv1.3"]
ciphers = "{INTERMEDIATE_CIPHERS}"
ciphersuites = "{TLS13_CIPHERSUITES}"
groups = "X25519:P-256:P-384"
prefer_server_ciphers = true
session_cache = false
session_tickets = false

[[server.certificate]]
cert = "{crt}"
key = "{key}"

[[server.route]]
path = "/"
upstream = "backend"
"""
    return text


# --- load generators ------------------------------------------------------------------------

_UNIT = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def cpu_list(spec: str) -> list[int]:
    """taskset's list syntax: ``1``, ``1,3``, ``2-5``."""
    cpus = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def run_wrk(cpu: str, url: str, conns: int, duration: int) -> dict:
    # One wrk thread per client CPU (-t1 with the default single client CPU).
    threads = min(len(cpu_list(cpu)), conns)
    argv = pinned(cpu, ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "5s", url])
    res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=duration + 30)
    out = res.stdout + res.stderr
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+), ([\d.]+)(\w+) read", out)
    if res.returncode != 0 or not m:
        return {"error": f"wrk rc={res.returncode}: {out.strip()[-400:]}"}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": int(m.group(1)),
        "elapsed": float(m.group(2)) * _TIME[m.group(3)],
        "bytes": float(m.group(4)) * _UNIT[m.group(5)],
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(map(int, sock.groups())) if sock else 0,
    }


HS_WORKER = r"""
import socket, ssl, sys, time
port, seconds, limit = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
n = errors = 0
t0 = time.monotonic()
deadline = t0 + seconds
while time.monotonic() < deadline and n < limit:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            # No session= argument: every connection is a full handshake.
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                n += 1
    except OSError:
        errors += 1
        if errors > 1000:
            break
print(n, errors, time.monotonic() - t0)
"""


def run_handshakes(kind: str, cpu: str, port: int, clients: int, duration: int) -> dict:
    if kind == "s_time":
        argv = ["openssl", "s_time", "-connect", f"127.0.0.1:{port}", "-new", "-tls1_3",
                "-time", str(duration)]
    else:
        argv = [sys.executable, "-c", HS_WORKER, str(port), str(duration), "10000000"]
    t0 = time.monotonic()
    procs = [subprocess.Popen(pinned(cpu, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(clients)]
    total = errors = 0
    rate = 0.0  # the sum of each client's own rate: process start-up is not in it
    problems = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=duration + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            problems.append("client timed out")
        if kind == "s_time":
            m = re.search(r"(\d+) connections in [\d.]+ real seconds", out)
            if m:
                total += int(m.group(1))
                rate += int(m.group(1)) / duration
            else:
                problems.append(out.strip()[-200:])
            errors += out.count("ERROR") + out.count(":error:")
        else:
            parts = out.split()
            if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
                total += int(parts[0])
                errors += int(parts[1])
                rate += int(parts[0]) / max(float(parts[2]), 1e-3)
            else:
                problems.append(out.strip()[-200:])
    elapsed = time.monotonic() - t0
    res = {"handshakes": total, "elapsed": total / rate if rate else elapsed, "wall": elapsed,
           "client_errors": errors}
    if problems:
        res["error"] = "; ".join(problems)[:600]
    return res


def nginx_accepts(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        m = re.search(rb"\n\s*(\d+) (\d+) (\d+)", data)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def check_responses(name: str, port: int) -> list[str]:
    """One request per path through the terminator: status and exact body size."""
    import http.client

    ctx = ssl._create_unverified_context()
    problems = []
    for path, size in (("/1k", len(BODY_1K)), ("/1m", BULK_SIZE)):
        try:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
            conn.request("GET", path, headers={"Host": "localhost"})
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            if resp.status != 200 or len(body) != size:
                problems.append(f"{name} GET {path}: status {resp.status}, {len(body)} bytes (want 200, {size})")
        except (OSError, http.client.HTTPException) as exc:
            problems.append(f"{name} GET {path}: {type(exc).__name__}: {exc}")
    return problems


# --- the measurement ------------------------------------------------------------------------

@dataclass
class Run:
    scenario: str
    terminator: str
    round: int
    value: float | None = None  # the figure, in UNITS[scenario]
    per_cpu: float | None = None  # the same per second of the terminator's CPU time
    cpu_s: float = 0.0
    wall_s: float = 0.0
    raw: dict = field(default_factory=dict)


def measure(args, server: Server, scenario: str, rnd: int, hs_kind: str) -> Run:
    run = Run(scenario, server.name, rnd)
    accepts0 = nginx_accepts(server.ports["status"]) if "status" in server.ports else None
    cpu0, t0 = server.cpu(), time.monotonic()
    if scenario == "keepalive":
        raw = run_wrk(args.cpu_client, f"https://127.0.0.1:{server.ports['ecdsa']}/1k", args.connections,
                      args.duration)
        amount = raw.get("requests")
    elif scenario == "bulk":
        raw = run_wrk(args.cpu_client, f"https://127.0.0.1:{server.ports['ecdsa']}/1m", args.bulk_connections,
                      args.duration)
        amount = raw["bytes"] / 1e6 if "bytes" in raw else None
    else:
        port = server.ports["ecdsa" if scenario == "hs-ecdsa" else "rsa"]
        raw = run_handshakes(hs_kind, args.cpu_client, port, args.hs_clients, args.duration)
        amount = raw.get("handshakes")
    run.wall_s = time.monotonic() - t0
    run.cpu_s = server.cpu() - cpu0
    if accepts0 is not None and scenario.startswith("hs-"):
        accepts1 = nginx_accepts(server.ports["status"])
        if accepts1 is not None:
            raw["server_accepts"] = accepts1 - accepts0 - 1  # less our own status request
    elapsed = raw.get("elapsed") or run.wall_s
    if amount is not None and "error" not in raw:
        run.value = amount / elapsed
        run.per_cpu = amount / run.cpu_s if run.cpu_s > 0 else None
    run.raw = raw
    if not server.alive():
        raw["crashed"] = f"exit {server.proc.returncode}: {tail(server.log_path)}"
    return run


def calibrate(args, server: Server) -> str:
    """The handshake client that gets more handshakes/s out of nginx (ECDSA) in 2 s."""
    rates = {}
    for kind in ("s_time", "python"):
        raw = run_handshakes(kind, args.cpu_client, server.ports["ecdsa"], args.hs_clients, 2)
        rates[kind] = raw["handshakes"] / raw["elapsed"] if raw["handshakes"] and not raw.get("error") else 0.0
    best = max(rates, key=rates.get)
    log("handshake clients against nginx/ECDSA (2 s): "
        + ", ".join(f"{k} {v:.0f} hs/s" for k, v in rates.items()) + f" -> using {best}")
    args.calibration = rates
    return best


def fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


def summarize(runs: list[Run], scenarios: list[str]) -> str:
    lines = [
        ("| figure | nginx median (min–max) | fastterm median (min–max) | fastterm/nginx per round "
         "| nginx per CPU-s | fastterm per CPU-s | per-CPU ratio | srv CPU nginx / fastterm |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for sc in scenarios:
        by = {t: [r for r in runs if r.scenario == sc and r.terminator == t] for t in TERMINATORS}

        def stats(values):
            values = [v for v in values if v is not None]
            if not values:
                return "n/a"
            return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"

        def med(values):
            values = [v for v in values if v is not None]
            return statistics.median(values) if values else None

        ratios, cpu_ratios = [], []
        for a, b in zip(by["nginx"], by["fastterm"]):
            ratios.append(b.value / a.value if a.value and b.value is not None else None)
            cpu_ratios.append(b.per_cpu / a.per_cpu if a.per_cpu and b.per_cpu is not None else None)
        util = " / ".join(
            f"{fmt(med([100 * r.cpu_s / r.wall_s for r in by[t] if r.wall_s]))} %" for t in TERMINATORS)
        cpu_ratio = med(cpu_ratios)
        lines.append(
            f"| {sc} ({UNITS[sc]}) | {stats([r.value for r in by['nginx']])} "
            f"| {stats([r.value for r in by['fastterm']])} "
            f"| {', '.join(fmt(x) for x in ratios)} "
            f"| {stats([r.per_cpu for r in by['nginx']])} | {stats([r.per_cpu for r in by['fastterm']])} "
            f"| {fmt(cpu_ratio) if cpu_ratio is not None else 'n/a'} | {util} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per load run")
    ap.add_argument("--cpu-server", default="0", help="CPU for both terminators (taskset -c)")
    ap.add_argument("--cpu-client", default="1",
                    help="CPU(s) for the load generators, taskset syntax (1 | 1-3): one wrk thread each")
    ap.add_argument("--cpu-backend", default=None, help="CPU for the backend nginx (default: the client CPU)")
    ap.add_argument("--connections", type=int, default=50, help="keep-alive connections")
    ap.add_argument("--bulk-connections", type=int, default=4)
    ap.add_argument("--hs-clients", type=int, default=8, help="parallel handshake client processes")
    ap.add_argument("--hs-client", choices=("auto", "s_time", "python"), default="auto")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}")
    ap.add_argument("--json", metavar="FILE", help="write the raw figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    if unknown := set(scenarios) - set(SCENARIOS):
        ap.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    args.cpu_backend = args.cpu_backend or args.cpu_client
    try:
        if set(cpu_list(args.cpu_server)) - set(os.sched_getaffinity(0)) or \
                set(cpu_list(args.cpu_client)) - set(os.sched_getaffinity(0)):
            ap.error(f"CPUs available here: {sorted(os.sched_getaffinity(0))}")
    except ValueError:
        ap.error("--cpu-server/--cpu-client: taskset CPU lists such as 0 or 1-3")
    if args.rounds < 1 or args.duration < 1:
        ap.error("--rounds and --duration must be at least 1")
    nginx = which("nginx")
    for tool in ("wrk", "openssl", "taskset"):
        which(tool)
    if set(cpu_list(args.cpu_server)) & set(cpu_list(args.cpu_client)):
        log("warning: --cpu-server equals --cpu-client: the load generator competes with the terminator")

    d = tempfile.mkdtemp(prefix="fastterm-bench-")
    os.chmod(d, 0o755)  # the nginx worker (user nobody when started as root) reads below it
    servers: list[Server] = []
    runs: list[Run] = []
    problems: list[str] = []
    try:
        log(f"working directory {d}")
        ca = make_ca("fastterm bench CA")
        certs = {}
        for kind, key_type in (("ecdsa", "EC"), ("rsa", "RSA")):
            leaf = issue_cert(ca, ["localhost", "127.0.0.1"], key_type)
            crt, key = os.path.join(d, f"{kind}.crt"), os.path.join(d, f"{kind}.key")
            write_atomic(crt, leaf.cert_pem)
            write_atomic(key, leaf.key_pem, private=True)
            certs[kind] = (crt, key)
        write_atomic(os.path.join(d, "ca.crt"), ca.cert_pem)
        os.makedirs(os.path.join(d, "www"))
        with open(os.path.join(d, "www", "1m"), "wb") as f:
            f.write(os.urandom(BULK_SIZE))

        backend_port = free_port()
        with open(os.path.join(d, "backend.conf"), "w") as f:
            f.write(backend_conf(d, backend_port))
        servers.append(start("backend", pinned(args.cpu_backend, [nginx, "-p", d, "-c", f"{d}/backend.conf",
                                                                    "-e", f"{d}/backend.error.log"]),
                             {"http": backend_port}, f"{d}/backend.out", d))

        nginx_ports = {"ecdsa": free_port(), "rsa": free_port(), "status": free_port()}
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(nginx_conf(d, backend_port, nginx_ports, certs))
        term_nginx = start("nginx", pinned(args.cpu_server, [nginx, "-p", d, "-c", f"{d}/nginx.conf",
                                                             "-e", f"{d}/nginx.error.log"]),
                           nginx_ports, f"{d}/nginx.out", d)
        servers.append(term_nginx)

        ft_ports = {"ecdsa": free_port(), "rsa": free_port()}
        ft_conf = os.path.join(d, "fastterm.toml")
        with open(ft_conf, "w") as f:
            f.write(fastterm_conf(backend_port, ft_ports, certs))
        ft_argv = pinned(args.cpu_server, [sys.executable, "-m", "fastterm", "run", "-c", ft_conf])
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        term_ft = start("fastterm", ft_argv, ft_ports, f"{d}/fastterm.log", repo)
        servers.append(term_ft)
        log(f"backend :{backend_port}, nginx {nginx_ports}, fastterm {ft_ports}")

        for srv in (term_nginx, term_ft):
            problems += check_responses(srv.name, srv.ports["ecdsa"])
        for p in problems:
            log(f"PROBLEM: {p}")

        hs_kind = args.hs_client
        if hs_kind == "auto" and any(s.startswith("hs-") for s in scenarios):
            hs_kind = calibrate(args, term_nginx)

        terms = {"nginx": term_nginx, "fastterm": term_ft}
        for rnd in range(1, args.rounds + 1):
            for sc in scenarios:
                for name in TERMINATORS:
                    srv = terms[name]
                    if not srv.alive():
                        problems.append(f"{name} died (exit {srv.proc.returncode}); restarting it:\n"
                                        f"{tail(srv.log_path)}")
                        log(problems[-1])
                        srv = terms[name] = start(name, srv.proc.args, srv.ports, srv.log_path,
                                                  repo if name == "fastterm" else d)
                        servers.append(srv)
                    r = measure(args, srv, sc, rnd, hs_kind)
                    runs.append(r)
                    extra = {k: v for k, v in r.raw.items()
                             if k in ("non2xx", "socket_errors", "client_errors", "server_accepts", "error",
                                      "crashed") and v}
                    log(f"round {rnd} {sc:9} {name:8} {fmt(r.value):>10} {UNITS[sc]:6} "
                        f"cpu {r.cpu_s:5.2f}s/{r.wall_s:4.1f}s {extra if extra else ''}")
                    for k in ("non2xx", "socket_errors", "error", "crashed"):
                        if r.raw.get(k):
                            problems.append(f"round {rnd} {sc} {name}: {k} = {r.raw[k]}")
        for srv in (term_nginx, term_ft):
            if srv.alive():
                problems += check_responses(srv.name + " (after)", srv.ports["ecdsa"])
    finally:
        for srv in reversed(servers):
            srv.stop()
        logs = {name: tail(os.path.join(d, name), 30) for name in ("fastterm.log", "nginx.error.log")}
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
        else:
            log(f"kept {d}")

    cmd = " ".join(["python", "bench/compare.py", *sys.argv[1:]])
    print(f"\n`{cmd}` — server CPU {args.cpu_server}, client CPU {args.cpu_client}, backend CPU "
          f"{args.cpu_backend}; {args.duration} s per run, {args.rounds} rounds; handshake client: {hs_kind} "
          f"x{args.hs_clients}; keep-alive wrk -c{args.connections}; bulk wrk -c{args.bulk_connections}\n")
    print(summarize(runs, scenarios))
    if problems:
        print("\nProblems:")
        for p in problems:
            print(f"- {p}")
    for name, text in logs.items():
        if text.strip():
            print(f"\nLast lines of {name}:\n```\n{text.rstrip()}\n```")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "runs": [asdict(r) for r in runs],
                       "problems": problems}, f, indent=2)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
