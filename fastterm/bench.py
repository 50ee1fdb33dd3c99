"""``fastterm bench``: fastterm against nginx (and HAProxy) as TLS terminators, on this machine.

A user who runs nginx or HAProxy today runs ``fastterm bench`` and learns, on their hardware,
with their certificate and TLS policy (``-c fastterm.toml``; default: the demo's settings),
how fastterm compares. Everything runs on 127.0.0.1 in a temporary directory removed at the
end; only the processes started here are stopped.

Set-up
------
- **Backend**: one nginx process answering ``GET /1k`` with ``return 200`` (1 KiB), serving a
  1 MiB static file as ``/1m`` (sendfile) and ``POST /upload`` by reading the whole body,
  then answering 200 (see ``backend_conf``). Measured on loopback (wrk -c50, one core each), nginx's
  ``return 200`` did about 26,700 req/s where the built-in ``fastterm.backend`` (asyncio +
  httptools, Python per request) did about 12,600: the backend shares the client CPUs, so
  the faster one leaves more of them to the load generators and keeps the backend from
  being the bottleneck of the terminators' figures. ``fastterm.backend`` is used only when
  nginx is not installed; ``--backend HOST:PORT`` uses one that is already running (tests
  point it at a closed port to make every request fail).
- **Terminators**: fastterm (``python -m fastterm run``: master + ``--workers`` workers), and
  the peers found installed (``--peers nginx,haproxy``): nginx (master + workers) and HAProxy
  (one process, ``nbthread`` = workers). Each gets, from the same fastterm configuration:
  the protocols, TLS 1.2 ciphers, TLS 1.3 suites, groups, server cipher order, the
  certificates, session cache on/off and its size and timeout, tickets on/off, HSTS,
  keep-alive and body-size limits and the upstream keep-alive pool; the client header
  timeout is ``--header-timeout`` (default 2 s, in place of the config's: see
  ``slowheaders``). Each listens on three ports: every certificate of the config
  (keep-alive, bulk, upload, latency, connections, resumption, slowheaders), ECDSA only and
  RSA only (full handshakes per key type). All terminators are
  pinned with ``taskset`` to ``--cpus`` (default CPU 0); the load generators and the
  backend run on the other CPUs.

Scenarios (``--scenario``, comma-separated)
-------------------------------------------
- ``keepalive``: HTTPS requests/s, 1 KiB bodies, ``wrk`` with 50 keep-alive connections;
- ``handshake``: full handshakes/s (a new connection per request), ECDSA and RSA, with
  parallel ``openssl s_time -new`` clients: wrk and h2load resume sessions on reconnect even
  with ``Connection: close``, s_time -new never does. The server's own record says what
  happened (fastterm: the admin counters of full/resumed handshakes; nginx and HAProxy: an
  access log of ``$ssl_session_reused`` / ``ssl_fc_is_resumed`` on the per-key ports): a
  "full handshake" run in which anything resumed is invalid;
- ``resumed``: resumed handshakes/s, one request per connection, Python ``ssl`` clients:
  ``resumed-id`` is TLS 1.2 with session IDs (the client refuses tickets: the server's
  session cache), ``resumed-ticket`` is TLS 1.3 with tickets; invalid when under 90 % of the
  server's handshakes resumed (the session cache or tickets are off in the config, say);
- ``bulk``: 1 MiB downloads, MB/s (10^6 B/s), ``wrk`` with 4 connections;
- ``upload``: 1 MiB request bodies, MB/s, ``wrk`` with a Lua body, 4 connections;
- ``latency``: p50/p99/p99.9 in ms at a fixed offered rate (``--rate``, default 1,000 req/s,
  far below saturation) over 32 keep-alive connections. wrk2 is not packaged and wrk
  measures from the moment a request is *sent*, so a stall delays the following requests
  and hides itself (coordinated omission). The client here is open-loop: request i is due
  at t0 + i/rate whatever happened before, and its latency counts from that due time, as
  wrk2 does. It is Python (asyncio + ``ssl``), so every figure includes the same client
  overhead for every terminator; a run that could not keep the offered rate is invalid;
- ``connections``: 10,000 idle TLS connections (``--idle-connections``), each after one
  request, opened by a bounded client (non-blocking ``ssl`` sockets, 100 handshakes in
  flight); the figure is the growth of the RSS of all the terminator's processes per
  connection, in KiB, measured on a terminator restarted for the run (memory freed by an
  earlier run stays with the allocator and would hide the cost of the next);
- ``slowheaders``: what a slow-header flood (slowloris) costs everyone else. p50/p99 in ms
  of new-connection requests (a full handshake each, open-loop at ``--slow-rate``, default
  100/s, latency from the due time) alone, then while an attacker holds
  ``--slow-connections`` (default 100) TLS connections that send a request line and then
  one header byte every ``--slow-drip`` seconds (default 0.5) and reopen each one the
  server closes; and the p99 under attack over the p99 alone. The attacker opens its
  connections evenly over one header timeout before the measurement, so they time out and
  reopen during it as steadily as in a long attack; the 2 s ``--header-timeout`` keeps
  that ramp short (no other scenario leaves a header block unfinished). The run is invalid
  when the attacker held under 90 % of its connections on average.

Rounds are interleaved (fastterm, nginx, haproxy, fastterm, nginx, ...); each figure is
reported as median, min and max over the valid rounds, as a ratio to nginx, and per second
of the terminator's own CPU time (utime+stime of all its processes from /proc): the fair
figure when the load generator, not the terminator, is the bottleneck, as it is for
handshakes on a small machine (the client's side of a handshake costs about twice the
server's). Runs with socket errors, non-2xx responses, the wrong handshake kind or a
terminator that died are flagged invalid and left out of the figures; the exit status is 1
when there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
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

import msgspec

from fastterm.process import stop as stop_process

BODY_1K = b"x" * 1023 + b"\n"
BULK_SIZE = 1 << 20
UPLOAD_SIZE = 1 << 20
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
REFERENCE = "nginx"
# Backend paths: nginx's (see backend_conf); the built-in backend's replace them.
PATHS = {"small": "/1k", "bulk": "/1m", "upload": "/upload"}

# figure -> (unit, higher is better, per CPU-second unit or None)
FIGURES: dict[str, tuple[str, bool, str | None]] = {
    "keepalive": ("req/s", True, "req/CPU-s"),
    "handshake-ecdsa": ("hs/s", True, "hs/CPU-s"),
    "handshake-rsa": ("hs/s", True, "hs/CPU-s"),
    "resumed-id": ("hs/s", True, "hs/CPU-s"),
    "resumed-ticket": ("hs/s", True, "hs/CPU-s"),
    "bulk": ("MB/s", True, "MB/CPU-s"),
    "upload": ("MB/s", True, "MB/CPU-s"),
    "latency-p50": ("ms", False, None),
    "latency-p99": ("ms", False, None),
    "latency-p99.9": ("ms", False, None),
    "connections": ("KiB/conn", False, None),
    "slowheaders-p50": ("ms", False, None),
    "slowheaders-p99": ("ms", False, None),
    "slowheaders-attack-p50": ("ms", False, None),
    "slowheaders-attack-p99": ("ms", False, None),
    "slowheaders-p99-ratio": ("×", False, None),
}
# --scenario name -> the runs it makes; a run -> the figures it yields
SCENARIOS = {
    "keepalive": ["keepalive"],
    "handshake": ["handshake-ecdsa", "handshake-rsa"],
    "resumed": ["resumed-id", "resumed-ticket"],
    "bulk": ["bulk"],
    "upload": ["upload"],
    "latency": ["latency"],
    "connections": ["connections"],
    "slowheaders": ["slowheaders"],
}
RUN_FIGURES = {run: [run] for runs in SCENARIOS.values() for run in runs}
RUN_FIGURES["latency"] = ["latency-p50", "latency-p99", "latency-p99.9"]
RUN_FIGURES["slowheaders"] = ["slowheaders-p50", "slowheaders-p99", "slowheaders-attack-p50",
                              "slowheaders-attack-p99", "slowheaders-p99-ratio"]
ALL_RUNS = [r for runs in SCENARIOS.values() for r in runs]

INSTALL = {
    "nginx": "apt-get install nginx",
    "haproxy": "apt-get install haproxy",
    "wrk": "apt-get install wrk",
    "openssl": "apt-get install openssl",
    "taskset": "apt-get install util-linux",
    "h2load": "apt-get install nghttp2-client",
}
# Which tool each run needs on the client side.
RUN_TOOLS = {"keepalive": "wrk", "bulk": "wrk", "upload": "wrk", "handshake-ecdsa": "openssl",
             "handshake-rsa": "openssl"}


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


# --- the settings every terminator gets -----------------------------------------------------

@dataclass
class Setup:
    """What the fastterm config says, reduced to what every terminator can be given."""

    source: str
    tls: object                      # fastterm.config.model.TLSPolicy
    certs: dict[str, tuple[str, str]]  # "ecdsa"/"rsa" -> (cert chain, key)
    hsts: str | None
    limits: object                   # Limits
    sessions: object                 # Sessions
    upstream_keepalive: int
    workers: int
    idle_connections: int = 10000


def key_kind(cert_path: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    with open(cert_path, "rb") as f:
        key = x509.load_pem_x509_certificate(f.read()).public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ecdsa"
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    return type(key).__name__


def load_setup(config_path: str | None, workdir: str, workers: int | None, cpus: list[int]) -> Setup:
    from fastterm.config.toml import load_config

    if config_path is None:
        from fastterm.demo import make_demo_pki, write_demo_config

        state = os.path.join(workdir, "demo")
        make_demo_pki(state)
        config_path = write_demo_config(state, free_port(), free_port(), free_port())
        source = "the demo's settings (fastterm demo)"
    else:
        source = config_path
    config = load_config(config_path)
    if not config.servers:
        raise BenchError(f"{config_path}: no [[server]] to take TLS settings from")
    server = next((s for s in config.servers if s.default_server), config.servers[0])
    certs: dict[str, tuple[str, str]] = {}
    for c in server.certificates:
        kind = key_kind(c.cert)
        certs.setdefault(kind, (c.cert, c.key or c.cert))
    if not certs:
        raise BenchError(f"{config_path}: the server has no certificate")
    upstream_keepalive = config.upstreams[0].keepalive if config.upstreams else 32
    if workers is None:
        workers = len(cpus)
    return Setup(source, server.tls, certs, server.hsts, config.limits, config.sessions, upstream_keepalive,
                 workers)


NGINX_GROUP_NAMES = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}


def nginx_groups(groups: str) -> str:
    return ":".join(NGINX_GROUP_NAMES.get(g, g) for g in groups.split(":"))


# --- terminators ----------------------------------------------------------------------------

@dataclass
class Peer:
    """One terminator under test: its process, its ports and how to read what it did."""

    name: str
    ports: dict[str, int] = field(default_factory=dict)   # "main", "ecdsa", "rsa"
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = None
    log_path: str = ""
    hs_log: str | None = None    # access log with "<resumed> <status>" per request (nginx, haproxy)
    argv: list[str] = field(default_factory=list)
    cwd: str | None = None
    env: dict | None = None

    max_conns: int | None = None   # what it can hold open, when it has a fixed cap

    def pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def cpu(self) -> float | None:
        return sum(proc_cpu(p) for p in self.pids()) if self.proc else None

    def rss_kib(self) -> int | None:
        return sum(proc_rss_kib(p) for p in self.pids()) if self.proc else None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.cwd, env=self.env, start_new_session=True)
        try:
            for port in self.ports.values():
                wait_port(port, self.proc)
            self.ready()
        except BenchError as exc:
            self.stop()
            raise BenchError(f"{self.name} did not start ({exc}); its log {self.log_path}:\n"
                             f"{tail(self.log_path)}") from None

    def ready(self) -> None:
        pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT if self.name == "fastterm" else signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # What the server saw: {"full": n, "resumed": n, "non2xx": n} since the last mark.
    def mark(self) -> object:
        if self.hs_log:
            try:
                return os.path.getsize(self.hs_log)
            except OSError:
                return 0
        return None

    def seen_since(self, mark: object) -> dict | None:
        if not self.hs_log or mark is None:
            return None
        time.sleep(0.05)   # HAProxy's log lines reach its stdout asynchronously
        full = resumed = non2xx = 0
        with open(self.hs_log, "rb") as f:
            f.seek(mark)
            for line in f:
                parts = line.split()
                if len(parts) < 2:
                    continue
                if parts[0] in (b"r", b"1"):
                    resumed += 1
                else:
                    full += 1
                if not parts[1].startswith(b"2"):
                    non2xx += 1
        return {"full": full, "resumed": resumed, "non2xx": non2xx}


class FasttermPeer(Peer):
    admin_port: int = 0

    def metrics(self) -> dict[str, int]:
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: fastterm\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        out: dict[str, int] = {}
        for line in data.partition(b"\r\n\r\n")[2].decode().splitlines():
            m = re.match(r'fastterm_(handshakes_total\{kind="(\w+)"\}|responses_total\{code="(\w+)"\})\s+(\d+)', line)
            if m:
                out[m.group(2) or m.group(3)] = int(m.group(4))
        return out

    def ready(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                self.metrics()
                return
            except OSError:
                if time.monotonic() > deadline or not self.alive():
                    raise BenchError("its admin endpoint did not answer") from None
                time.sleep(0.1)

    def mark(self) -> object:
        try:
            return self.metrics()
        except OSError:
            return None

    def seen_since(self, mark: object) -> dict | None:
        if mark is None:
            return None
        try:
            now = self.metrics()
        except OSError:
            return None
        d = {k: now.get(k, 0) - mark.get(k, 0) for k in now}
        return {"full": d.get("full", 0), "resumed": d.get("resumed", 0),
                "non2xx": sum(v for k, v in d.items() if k in ("1xx", "3xx", "4xx", "5xx"))}


def fastterm_conf(setup: Setup, backend: str, ports: dict[str, int], admin_port: int) -> str:
    tls = setup.tls
    limits = setup.limits

    def q(s: str) -> str:
        return json.dumps(s)

    text = f"""\
# Written by fastterm bench from {setup.source}
workers = {setup.workers}
log_level = "warning"
admin = "127.0.0.1:{admin_port}"

[limits]
client_max_body_size = {limits.client_max_body_size}
client_header_timeout = {limits.client_header_timeout}
keepalive_timeout = {limits.keepalive_timeout}
backend_connect_timeout = {limits.backend_connect_timeout}
backend_read_timeout = {limits.backend_read_timeout}
drain_timeout = 1.0

[sessions]
cache_size = {setup.sessions.cache_size}

[[upstream]]
name = "backend"
servers = [{q(backend)}]
keepalive = {setup.upstream_keepalive}
"""
    for port_name, port in ports.items():
        kinds = list(setup.certs) if port_name == "main" else [port_name]
        text += f"""
[[server]]
listen = ["127.0.0.1:{port}"]
server_names = ["localhost"]
default_server = true
{f"hsts = {q(setup.hsts)}" if setup.hsts else ""}

[server.tls]
protocols = {json.dumps(list(tls.protocols))}
ciphers = {q(tls.ciphers)}
ciphersuites = {q(tls.ciphersuites)}
groups = {q(tls.groups)}
prefer_server_ciphers = {str(tls.prefer_server_ciphers).lower()}
session_cache = {str(tls.session_cache).lower()}
session_timeout = {tls.session_timeout}
session_tickets = {str(tls.session_tickets).lower()}
alpn = {json.dumps(list(tls.alpn))}
"""
        for kind in kinds:
            crt, key = setup.certs[kind]
            text += f"""
[[server.certificate]]
cert = {q(crt)}
key = {q(key)}
"""
        text += """
[[server.route]]
path = "/"
upstream = "backend"
"""
    return text


def nginx_conf(setup: Setup, d: str, backend: str, ports: dict[str, int]) -> str:
    tls = setup.tls
    limits = setup.limits
    servers = []
    for port_name, port in ports.items():
        kinds = list(setup.certs) if port_name == "main" else [port_name]
        certs = "\n".join(f"        ssl_certificate {setup.certs[k][0]};\n        ssl_certificate_key {setup.certs[k][1]};"
                          for k in kinds)
        log = "access_log off;" if port_name == "main" else f"access_log {d}/nginx-hs.log hs;"
        servers.append(f"""\
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        server_name localhost;
{certs}
        {log}
        {f'add_header Strict-Transport-Security "{setup.hsts}" always;' if setup.hsts else ""}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;   # $http_host is empty for HTTP/1.0 without Host
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Real-IP $remote_addr;
        }}
    }}""")
    cache = (f"shared:SSL:{max(1, setup.sessions.cache_size // (1024 * 1024))}m"
             if tls.session_cache else "off")
    options = "ssl_conf_command Options PrioritizeChaCha;" if tls.prefer_server_ciphers else ""
    server_blocks = "\n".join(servers)
    return f"""\
# Written by fastterm bench from {setup.source}
daemon off;
master_process on;
worker_processes {setup.workers};
worker_rlimit_nofile 40000;
pid {d}/nginx.pid;
error_log {d}/nginx.error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    log_format hs '$ssl_session_reused $status';
    keepalive_requests 100000000;
    keepalive_timeout {limits.keepalive_timeout:g}s;
    client_max_body_size {limits.client_max_body_size};
    client_header_timeout {limits.client_header_timeout:g}s;
    proxy_request_buffering off;
    proxy_max_temp_file_size 0;
    proxy_connect_timeout {limits.backend_connect_timeout:g}s;
    proxy_read_timeout {limits.backend_read_timeout:g}s;
    ssl_protocols {" ".join(tls.protocols)};
    ssl_ciphers {tls.ciphers};
    ssl_prefer_server_ciphers {"on" if tls.prefer_server_ciphers else "off"};
    ssl_ecdh_curve {nginx_groups(tls.groups)};
    ssl_conf_command Ciphersuites {tls.ciphersuites};
    {options}
    ssl_session_cache {cache};
    ssl_session_timeout {int(tls.session_timeout)}s;
    ssl_session_tickets {"on" if tls.session_tickets else "off"};
    upstream backend {{
        server {backend};
        keepalive {setup.upstream_keepalive};
        keepalive_requests 100000000;
    }}
{server_blocks}
}}
"""


def haproxy_maxconn(setup: Setup) -> int:
    """HAProxy reserves two fds per connection (client + server) and will not start when
    maxconn needs more than the hard RLIMIT_NOFILE it may not raise."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = max(20000, 2 * setup.idle_connections)
    return want if hard == resource.RLIM_INFINITY else min(want, (hard - 200) // 2)


def haproxy_conf(setup: Setup, d: str, backend: str, ports: dict[str, int]) -> str:
    tls = setup.tls
    limits = setup.limits
    pems = {}
    for kind, (crt, key) in setup.certs.items():
        # HAProxy wants certificate and key in one file.
        pem = os.path.join(d, f"haproxy-{kind}.pem")
        with open(crt, "rb") as a, open(key, "rb") as b, open(pem, "wb") as out:
            out.write(a.read().rstrip(b"\n") + b"\n" + b.read())
        os.chmod(pem, 0o600)
        pems[kind] = pem
    # ~200 bytes per cached session in HAProxy's shared cache.
    cachesize = max(1, setup.sessions.cache_size // 200) if tls.session_cache else 0
    versions = sorted(tls.protocols)
    bind_opts = (f"ssl-min-ver {versions[0]} ssl-max-ver {versions[-1]} ciphers {tls.ciphers} "
                 f"ciphersuites {tls.ciphersuites} curves {tls.groups} alpn {','.join(tls.alpn)}")
    if not tls.prefer_server_ciphers:
        bind_opts += " prefer-client-ciphers"
    if not tls.session_tickets:
        bind_opts += " no-tls-tickets"
    frontends = []
    for port_name, port in ports.items():
        kinds = list(setup.certs) if port_name == "main" else [port_name]
        crts = " ".join(f"crt {pems[k]}" for k in kinds)
        logging = ("    no log" if port_name == "main" else
                   "    log global\n    log-format \"%[ssl_fc_is_resumed] %ST\"")
        hsts = f'    http-response set-header Strict-Transport-Security "{setup.hsts}"\n' if setup.hsts else ""
        frontends.append(f"""\
frontend fe_{port_name}
    bind 127.0.0.1:{port} ssl {crts} {bind_opts}
{logging}
    http-request set-header X-Forwarded-Proto https
    http-request set-header X-Real-IP %[src]
    option forwardfor
{hsts}    default_backend be""")
    blocks = "\n\n".join(frontends)
    return f"""\
# Written by fastterm bench from {setup.source}
global
    nbthread {setup.workers}
    maxconn {haproxy_maxconn(setup)}
    tune.ssl.cachesize {cachesize}
    tune.ssl.lifetime {int(tls.session_timeout)}
    log stdout format raw local0

defaults
    mode http
    timeout connect {limits.backend_connect_timeout:g}s
    timeout client {limits.keepalive_timeout:g}s
    timeout http-request {limits.client_header_timeout:g}s
    timeout server {limits.backend_read_timeout:g}s
    timeout http-keep-alive {limits.keepalive_timeout:g}s
    option http-keep-alive
    http-reuse always

{blocks}

backend be
    server s1 {backend} pool-max-conn {setup.upstream_keepalive}
"""


def backend_conf(d: str, port: int) -> str:
    return f"""\
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 40000;
pid {d}/backend.pid;
error_log {d}/backend.error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    sendfile on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_max_body_size 0;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {d}/www;
        location = /1k {{ return 200 "{BODY_1K[:-1].decode()}\\n"; }}
        location = /1m {{ }}
        # A bare `return 200` answers before the body has arrived (nginx discards it while
        # the response is already out), and a proxy that sees a response end before the
        # request body must close the client connection. Proxying to itself with request
        # buffering reads the whole body first, like an application that consumes uploads.
        location = /upload {{
            client_body_buffer_size 2m;
            proxy_pass http://self/ok;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = /ok {{ return 200 "ok\\n"; }}
    }}
    upstream self {{
        server 127.0.0.1:{port};
        keepalive 16;
    }}
}}
"""


# --- load generators ------------------------------------------------------------------------

_UNIT = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_TIME = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

UPLOAD_LUA = f"""\
wrk.method = "POST"
wrk.body = string.rep("u", {UPLOAD_SIZE})
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def run_wrk(cpus: str, url: str, conns: int, duration: float, script: str | None = None) -> dict:
    threads = max(1, min(len(cpu_list(cpus)), conns))
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
            "-H", "Host: localhost"]
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
    return {"requests": int(m.group(1)), "elapsed": float(m.group(2)) * _TIME[m.group(3)],
            "bytes": float(m.group(4)) * _UNIT[m.group(5)], "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0}


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


# --- the measurement ------------------------------------------------------------------------

@dataclass
class Run:
    run: str          # "keepalive", "handshake-rsa", "latency", ...
    peer: str
    round: int
    figures: dict[str, float] = field(default_factory=dict)
    per_cpu: dict[str, float] = field(default_factory=dict)
    cpu_s: float | None = None
    wall_s: float = 0.0
    invalid: list[str] = field(default_factory=list)
    server: dict | None = None    # what the terminator recorded: full/resumed handshakes, non-2xx
    raw: dict = field(default_factory=dict)
    skipped: str | None = None    # not run here (a peer's fixed cap): neither a figure nor invalid


class Bench:
    def __init__(self, args, peers: list[Peer], client_cpus: str, env: dict):
        self.args = args
        self.peers = peers
        self.client_cpus = client_cpus
        self.env = env

    def measure(self, peer: Peer, name: str, rnd: int) -> Run:
        a = self.args
        run = Run(name, peer.name, rnd)
        host = peer.host
        base = f"https://{host}:{peer.ports['main']}"
        capped = peer.max_conns is not None and peer.max_conns < a.idle_connections + 100
        if name == "connections" and peer.proc is not None and not capped:
            # A fresh process: freed memory stays in the allocator, so after an earlier round
            # the connections would fit in what the last one left and cost "nothing".
            peer.stop()
            peer.start()
        mark = peer.mark()
        cpu0, t0 = peer.cpu(), time.monotonic()
        amount = None
        if name == "keepalive":
            raw = run_wrk(self.client_cpus, base + a.path, 50, a.duration)
            amount = raw.get("requests")
        elif name == "bulk":
            raw = run_wrk(self.client_cpus, base + PATHS["bulk"], 4, a.duration)
            amount = raw["bytes"] / 1e6 if "bytes" in raw else None
        elif name == "upload":
            raw = run_wrk(self.client_cpus, base + PATHS["upload"], 4, a.duration, script=a.upload_lua)
            amount = raw["requests"] * UPLOAD_SIZE / 1e6 if "requests" in raw else None
        elif name.startswith("handshake-"):
            port = peer.ports.get(name.split("-", 1)[1])
            raw = run_s_time(self.client_cpus, host, port, a.hs_clients, a.duration, a.path)
            amount = raw.get("handshakes")
        elif name.startswith("resumed-"):
            mode = name.split("-", 1)[1]
            port = peer.ports.get("ecdsa", peer.ports["main"])
            raw = run_resume_clients(self.client_cpus, host, port, mode, a.hs_clients, a.duration, a.path,
                                     self.env)
            amount = raw.get("handshakes")
            if raw.get("handshakes") and raw["reused"] < 0.9 * raw["handshakes"]:
                run.invalid.append(f"the client resumed only {raw['reused']} of {raw['handshakes']} handshakes")
        elif name == "latency":
            raw = self.latency(peer)
        elif name == "slowheaders":
            raw = self.slowheaders(peer)
        elif name == "connections":
            if capped:
                run.skipped = (f"{peer.name} is capped at {peer.max_conns} connections here (fd limit "
                               f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]})")
                return run
            else:
                raw = self.connections(peer)
        else:  # pragma: no cover
            raise AssertionError(name)
        run.wall_s = time.monotonic() - t0
        cpu1 = peer.cpu()
        run.cpu_s = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        run.raw = raw
        run.server = peer.seen_since(mark)
        self.validate(peer, run)
        if not run.invalid:
            if name == "latency":
                run.figures = {f"latency-{k}": raw[k] for k in ("p50", "p99", "p99.9")}
            elif name == "connections":
                run.figures = {"connections": raw["kib_per_conn"]} if raw.get("kib_per_conn") is not None else {}
            elif name == "slowheaders":
                base, attack = raw["baseline"], raw["attack"]
                run.figures = {"slowheaders-p50": base["p50"], "slowheaders-p99": base["p99"],
                               "slowheaders-attack-p50": attack["p50"],
                               "slowheaders-attack-p99": attack["p99"],
                               "slowheaders-p99-ratio": attack["p99"] / base["p99"]}
            elif amount is not None:
                elapsed = raw.get("elapsed") or run.wall_s
                run.figures = {name: amount / elapsed}
                if run.cpu_s:
                    run.per_cpu = {name: amount / run.cpu_s}
        return run

    def validate(self, peer: Peer, run: Run) -> None:
        raw, name = run.raw, run.run
        for key, what in (("error", "client failure"), ("socket_errors", "socket errors"),
                          ("client_errors", "client errors"), ("errors", "errors"), ("non2xx", "non-2xx responses")):
            if raw.get(key):
                run.invalid.append(f"{what}: {raw[key]}")
        srv = run.server
        if srv is not None:
            # The slowheaders attack's 408s are the server's non-2xx; the measured requests are
            # counted by the client.
            if srv["non2xx"] and not raw.get("non2xx") and name != "slowheaders":
                run.invalid.append(f"the server answered {srv['non2xx']} non-2xx responses")
            if name.startswith("handshake-") and srv["resumed"]:
                run.invalid.append(f"wrong handshake kind: {srv['resumed']} of {srv['full'] + srv['resumed']} "
                                   "handshakes resumed in a full-handshake run")
            if name.startswith("resumed-") and srv["resumed"] < 0.9 * (srv["full"] + srv["resumed"]):
                run.invalid.append(f"wrong handshake kind: only {srv['resumed']} of {srv['full'] + srv['resumed']} "
                                   "handshakes resumed (session cache or tickets off?)")
            if name.startswith(("handshake-", "resumed-")) and srv["full"] + srv["resumed"] == 0:
                run.invalid.append("the server recorded no handshake")
        if not peer.alive():
            run.invalid.append(f"{peer.name} died (exit {peer.proc.returncode}): {tail(peer.log_path, 5)}")
        if name.startswith("handshake-") and raw.get("handshakes") == 0:
            run.invalid.append("no handshake completed")

    def latency(self, peer: Peer) -> dict:
        a = self.args
        argv = pinned(self.client_cpus, client_argv("latency", peer.host, str(peer.ports["main"]), str(a.rate),
                                                    str(a.duration), a.path, "32"))
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=a.duration + 60, env=self.env)
        try:
            raw = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"latency client exit {res.returncode}: {res.stderr.strip()[-300:]}"}
        if raw["done"] < 0.95 * raw["offered"]:
            raw["error"] = (f"offered {raw['offered']} requests at {a.rate}/s, {raw['done']} answered in time: "
                            "the rate is above saturation (lower --rate)")
        return raw

    def newconn(self, peer: Peer) -> dict:
        a = self.args
        argv = pinned(self.client_cpus, client_argv("newconn", peer.host, str(peer.ports["main"]),
                                                    str(a.slow_rate), str(a.duration), a.path))
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=a.duration + 60,
                             env=self.env)
        try:
            raw = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"new-connection client exit {res.returncode}: {res.stderr.strip()[-300:]}"}
        if raw["done"] < 0.95 * raw["offered"]:
            raw["error"] = f"offered {raw['offered']} requests, {raw['done']} answered"
        return raw

    def slowheaders(self, peer: Peer) -> dict:
        """New-connection latency alone, then while the attacker holds its slow-header
        connections (opened over one header timeout, so that they expire and reopen as
        steadily as a long-running attack's)."""
        a = self.args
        raw: dict = {"baseline": self.newconn(peer)}
        argv = pinned(self.client_cpus, client_argv("slowheaders", peer.host, str(peer.ports["main"]),
                                                    str(a.slow_connections), str(a.slow_drip),
                                                    str(a.header_timeout), a.path))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)
        try:
            line = proc.stdout.readline()
            if not line.startswith("RAMPED"):
                raw["error"] = f"slow-header client: {proc.stderr.read()[-300:]}"
                return raw
            raw["attack"] = self.newconn(peer)
            proc.stdin.write("\n")
            proc.stdin.flush()
            attacker = json.loads(proc.stdout.readline())
        except (OSError, ValueError) as exc:
            raw["error"] = f"slow-header client: {exc}"
            return raw
        finally:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raw["attacker"] = attacker
        problems = [f"{k}: {raw[k]['error']}" for k in ("baseline", "attack") if raw[k].get("error")]
        if attacker["held_mean"] < 0.9 * a.slow_connections:
            problems.append(f"the attacker held {attacker['held_mean']:.0f} of {a.slow_connections} "
                            f"connections on average (at least {attacker['held_min']})")
        if problems:
            raw["error"] = "; ".join(problems)
        for key in ("errors", "non2xx"):
            raw[key] = raw["baseline"].get(key, 0) + raw["attack"].get(key, 0)
        return raw

    def connections(self, peer: Peer) -> dict:
        a = self.args
        argv = pinned(self.client_cpus, client_argv("connections", peer.host, str(peer.ports["main"]),
                                                    str(a.idle_connections), a.path))
        before = peer.rss_kib()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)
        raw: dict = {}
        try:
            line = ""
            deadline = time.monotonic() + 120 + a.idle_connections / 200
            while time.monotonic() < deadline and proc.poll() is None:
                line = proc.stdout.readline()
                if line.startswith("READY"):
                    break
            if not line.startswith("READY"):
                raw["error"] = f"connections client: {proc.stderr.read()[-300:] if proc.poll() is not None else 'timed out'}"
                return raw
            _, ok, errors, non2xx = line.split()
            time.sleep(0.5)   # let the terminator settle (freed handshake state, lent buffers back)
            after = peer.rss_kib()
            raw.update(open=int(ok), errors=int(errors), non2xx=int(non2xx), rss_before_kib=before,
                       rss_after_kib=after)
            if before is not None and after is not None and int(ok):
                raw["kib_per_conn"] = (after - before) / int(ok)
            if int(ok) < a.idle_connections:
                raw["error"] = f"opened {ok} of {a.idle_connections} connections"
        finally:
            try:
                proc.stdin.write("\n")
                proc.stdin.flush()
            except OSError:
                pass
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return raw


# --- summaries ------------------------------------------------------------------------------

def fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[Run], peers: list[str]) -> list[dict]:
    """One row per (figure, peer): median/min/max, ratio to nginx (median of per-round ratios)."""
    rows = []
    figures = [f for f in FIGURES if any(f in r.figures or f in RUN_FIGURES.get(r.run, []) for r in runs)]
    for fig in figures:
        unit, higher, cpu_unit = FIGURES[fig]
        run_of = next(r for r, figs in RUN_FIGURES.items() if fig in figs)
        for peer in peers:
            mine = [r for r in runs if r.run == run_of and r.peer == peer]
            values = [r.figures[fig] for r in mine if fig in r.figures]
            per_cpu = [r.per_cpu[fig] for r in mine if fig in r.per_cpu]
            ratios, cpu_ratios = [], []
            if peer != REFERENCE:
                ref = {r.round: r for r in runs if r.run == run_of and r.peer == REFERENCE}
                for r in mine:
                    o = ref.get(r.round)
                    if o and fig in r.figures and o.figures.get(fig):
                        ratios.append(r.figures[fig] / o.figures[fig])
                    if o and fig in r.per_cpu and o.per_cpu.get(fig):
                        cpu_ratios.append(r.per_cpu[fig] / o.per_cpu[fig])
            util = [100 * r.cpu_s / r.wall_s for r in mine if r.cpu_s is not None and r.wall_s and not r.invalid]
            rows.append({
                "figure": fig, "unit": unit, "higher_is_better": higher, "peer": peer,
                "median": median(values), "min": min(values) if values else None,
                "max": max(values) if values else None, "valid": len(values), "runs": len(mine),
                "ratio": median(ratios), "ratios": ratios,
                "per_cpu_unit": cpu_unit, "per_cpu": median(per_cpu), "per_cpu_ratio": median(cpu_ratios),
                "cpu_ratios": cpu_ratios, "server_cpu_pct": median(util),
            })
    return rows


COLUMNS = ("figure", "unit", "terminator", "median", "min–max", "×nginx", "per CPU-s", "×nginx per CPU-s",
           "srv CPU", "valid")


def row_cells(row: dict) -> list[str]:
    better = "higher" if row["higher_is_better"] else "lower"
    return [
        row["figure"], f"{row['unit']} ({better} better)", row["peer"], fmt(row["median"]),
        f"{fmt(row['min'])}–{fmt(row['max'])}" if row["min"] is not None else "n/a",
        "" if row["peer"] == REFERENCE else fmt(row["ratio"]),
        fmt(row["per_cpu"]) if row["per_cpu_unit"] and row["per_cpu"] is not None else "",
        "" if row["peer"] == REFERENCE or row["per_cpu_ratio"] is None else fmt(row["per_cpu_ratio"]),
        f"{fmt(row['server_cpu_pct'])} %" if row["server_cpu_pct"] is not None else "",
        f"{row['valid']}/{row['runs']}",
    ]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def print_table(rows: list[dict], console) -> None:
    if console is None:
        print(markdown_table(rows))
        return
    from rich.table import Table

    table = Table(title="fastterm bench", show_lines=False)
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("figure", "terminator") else "right")
    last = None
    for r in rows:
        if last is not None and r["figure"] != last:
            table.add_section()
        last = r["figure"]
        table.add_row(*row_cells(r))
    console.print(table)


def plot(rows: list[dict], path: str, title: str) -> None:
    """Bars: each terminator's advantage over nginx per figure (>1: better than nginx)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [p for p in dict.fromkeys(r["peer"] for r in rows) if p != REFERENCE]
    figures = list(dict.fromkeys(r["figure"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(figures) * max(1, len(peers))), 5))
    width = 0.8 / max(1, 2 * len(peers))
    for i, peer in enumerate(peers):
        for j, (key, many, label) in enumerate((("ratio", "ratios", ""), ("per_cpu_ratio", "cpu_ratios", " per CPU-s"))):
            xs, ys, lo, hi = [], [], [], []
            for k, f in enumerate(figures):
                row = next((r for r in rows if r["figure"] == f and r["peer"] == peer), None)
                if row is None or row[key] is None:
                    continue
                inv = (lambda v: v) if row["higher_is_better"] else (lambda v: 1 / v)
                vals = [inv(v) for v in row[many] if v]
                y = inv(row[key])
                xs.append(k + (2 * i + j - (2 * len(peers) - 1) / 2) * width)
                ys.append(y)
                lo.append(y - min(vals) if vals else 0)
                hi.append(max(vals) - y if vals else 0)
            if xs:
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=f"{peer}{label}",
                       hatch="//" if j else None, alpha=0.6 if j else 0.9)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(figures)))
    ax.set_xticklabels(figures, rotation=30, ha="right")
    ax.set_ylabel("advantage over nginx (>1: better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- orchestration --------------------------------------------------------------------------

def parse_scenarios(spec: str) -> list[str]:
    runs: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part in SCENARIOS:
            runs += SCENARIOS[part]
        elif part in ALL_RUNS:
            runs.append(part)
        else:
            raise BenchError(f"unknown scenario {part!r}: choose from {', '.join(SCENARIOS)} "
                             f"(or one of {', '.join(r for r in ALL_RUNS if r not in SCENARIOS)})")
    return list(dict.fromkeys(runs))


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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE",
                   help="take TLS settings, certificates, limits and workers from this fastterm.toml "
                        "(default: the demo's settings with a fresh local CA)")
    p.add_argument("--peers", default=None,
                   help="comma-separated terminators to compare with: nginx,haproxy (default: those "
                        "installed); 'none' for fastterm alone")
    p.add_argument("--scenario", "--scenarios", dest="scenario", default=",".join(SCENARIOS),
                   help=f"comma-separated: {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (HAProxy: threads) of every terminator (default: one per --cpus CPU)")
    p.add_argument("--cpus", default=None,
                   help="CPUs for the terminators, taskset syntax (default: CPU 0; the load generators "
                        "and the backend get the others)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per load run (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--rate", type=int, default=1000, help="latency: offered requests/s (default 1000)")
    p.add_argument("--idle-connections", type=int, default=10000, help="connections: how many (default 10000)")
    p.add_argument("--connection-rounds", type=int, default=1,
                   help="rounds of the connections scenario (default 1: each restarts the terminators and "
                        "opens 10,000 TLS connections, ~30 s, and its figure moved under 2 %% between rounds; "
                        "this keeps the default run under 5 minutes with three peers)")
    p.add_argument("--header-timeout", type=float, default=2.0,
                   help="client header timeout of every terminator, in place of the config's (default 2 s: "
                        "the slowheaders attack then times out and reconnects within a short run)")
    p.add_argument("--slow-connections", type=int, default=100,
                   help="slowheaders: connections the attacker holds (default 100)")
    p.add_argument("--slow-drip", type=float, default=0.5,
                   help="slowheaders: seconds between two header bytes on each (default 0.5)")
    p.add_argument("--slow-rate", type=int, default=100,
                   help="slowheaders: measured new-connection requests/s (default 100)")
    p.add_argument("--hs-clients", type=int, default=8, help="parallel handshake client processes (default 8)")
    p.add_argument("--path", default=None, help="request path of the small requests (default /1k)")
    p.add_argument("--backend", metavar="HOST:PORT",
                   help="use this running plain-HTTP backend (it must answer GET /1k, GET /1m, POST /upload)")
    p.add_argument("--target", metavar="https://HOST:PORT",
                   help="load an already-running terminator instead of starting any")
    p.add_argument("--target-admin", metavar="HOST:PORT",
                   help="with --target: fastterm's admin address, to check the handshake kinds")
    p.add_argument("--json", metavar="FILE", help="write every raw figure here")
    p.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios to nginx per scenario")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown (to paste in an issue)")
    p.add_argument("--keep", action="store_true", help="keep the working directory (configs, logs)")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except BenchError as exc:
        print(f"fastterm bench: {exc}", file=sys.stderr)
        return 2


def _console():
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(stderr=True)


def _main(args: argparse.Namespace) -> int:
    runs_wanted = parse_scenarios(args.scenario)
    if args.rounds < 1 or args.duration < 1:
        raise BenchError("--rounds and --duration must be at least 1")
    available = sorted(os.sched_getaffinity(0))
    try:
        server_cpus = cpu_list(args.cpus) if args.cpus else available[:1]
    except ValueError:
        raise BenchError(f"--cpus {args.cpus!r}: a taskset CPU list such as 0 or 0-1") from None
    if set(server_cpus) - set(available):
        raise BenchError(f"--cpus {args.cpus}: CPUs available here are {cpu_spec(available)}")
    client_cpus = [c for c in available if c not in server_cpus] or available
    console = _console()
    if console is None:
        print("fastterm bench: rich is not installed (pip install 'fastterm[bench]'): plain progress",
              file=sys.stderr)

    def say(msg: str) -> None:
        if console:
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)
        else:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    target = None
    if args.target:
        m = re.fullmatch(r"https://(\[[^\]]+\]|[^:/]+)(?::(\d+))?/?", args.target)
        if not m:
            raise BenchError(f"--target {args.target!r}: want https://HOST:PORT")
        target = (m.group(1).strip("[]"), int(m.group(2) or 443))

    # Peers and tools.
    if target:
        peer_names = []
    elif args.peers is None:
        peer_names = [p for p in ("nginx", "haproxy") if which(p)]
    else:
        peer_names = [p for p in args.peers.split(",") if p and p != "none"]
        if bad := set(peer_names) - {"nginx", "haproxy"}:
            raise BenchError(f"--peers: unknown {', '.join(sorted(bad))} (nginx, haproxy)")
    missing: dict[str, str] = {}
    for p in peer_names:
        if not which(p):
            missing[p] = f"--peers {p}"
    for r in runs_wanted:
        tool = RUN_TOOLS.get(r)
        if tool and not which(tool):
            missing.setdefault(tool, f"the {r} scenario")
    if not which("taskset") and not target:
        missing["taskset"] = "pinning the terminators to --cpus"
    if missing:
        raise BenchError(missing_tools_message(missing))
    if not target and len(available) < 2:
        say("warning: one CPU: the load generators compete with the terminators")
    raise_fd_limit(max(65536, 4 * args.idle_connections + 1000))

    workdir = tempfile.mkdtemp(prefix="fastterm-bench-")
    os.chmod(workdir, 0o755)   # nginx workers (user nobody when run as root) read below it
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    started: list[Peer] = []
    backend_proc: subprocess.Popen | None = None
    runs: list[Run] = []
    problems: list[str] = []
    t_start = time.monotonic()
    args.upload_lua = os.path.join(workdir, "upload.lua")
    with open(args.upload_lua, "w") as f:
        f.write(UPLOAD_LUA)
    try:
        peers: list[Peer] = []
        if target:
            peer = FasttermPeer("target", {"main": target[1]}, host=target[0]) if args.target_admin \
                else Peer("target", {"main": target[1]}, host=target[0])
            if args.target_admin:
                peer.admin_port = int(args.target_admin.rsplit(":", 1)[1])
            kind = _served_kind(target)
            peer.ports[kind] = target[1]
            runs_wanted = [r for r in runs_wanted if not (r.startswith("handshake-") and r != f"handshake-{kind}")]
            peers.append(peer)
            setup_desc = f"target {args.target} ({kind} certificate)"
        else:
            setup = load_setup(args.config, workdir, args.workers, server_cpus)
            setup.idle_connections = args.idle_connections
            setup.limits = msgspec.structs.replace(setup.limits, client_header_timeout=args.header_timeout)
            setup_desc = (f"settings from {setup.source}; {setup.workers} worker(s) on CPU {cpu_spec(server_cpus)}, "
                          f"clients and backend on CPU {cpu_spec(client_cpus)}")
            runs_wanted = [r for r in runs_wanted
                           if not (r.startswith("handshake-") and r.split("-", 1)[1] not in setup.certs)]
            backend = args.backend
            if backend is None:
                backend, backend_proc = _start_backend(workdir, cpu_spec(client_cpus), env)
            say(f"working directory {workdir}; backend http://{backend}")
            peers = _make_peers(setup, workdir, backend, peer_names, cpu_spec(server_cpus), env, repo_root)
            for peer in peers:
                say(f"starting {peer.name} on ports {peer.ports}")
                peer.start()
                started.append(peer)
            for peer in peers:
                problems += [f"before: {p}" for p in _check_responses(peer)]
        args.path = args.path or PATHS["small"]
        for p in problems:
            say(f"[red]problem[/red]: {p}" if console else f"problem: {p}")

        bench = Bench(args, peers, cpu_spec(client_cpus), env)
        def wanted(name: str, rnd: int) -> bool:
            return name != "connections" or rnd <= args.connection_rounds

        total = sum(wanted(name, rnd) for rnd in range(1, args.rounds + 1) for name in runs_wanted) * len(peers)
        progress = None
        if console:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console, transient=False)
            progress.start()
            task = progress.add_task("starting", total=total)
        try:
            for rnd in range(1, args.rounds + 1):
                for name in [n for n in runs_wanted if wanted(n, rnd)]:
                    for peer in peers:
                        desc = f"round {rnd}/{args.rounds} · {name} · {peer.name}"
                        if progress:
                            progress.update(task, description=desc)
                        if not peer.alive():
                            problems.append(f"{peer.name} died (exit {peer.proc.returncode}); restarted:\n"
                                            f"{tail(peer.log_path)}")
                            say(problems[-1])
                            peer.start()
                        r = bench.measure(peer, name, rnd)
                        runs.append(r)
                        if r.skipped:
                            say(f"{desc}: skipped: {r.skipped}")
                            if progress:
                                progress.advance(task)
                            continue
                        shown = ", ".join(f"{k} {fmt(v)} {FIGURES[k][0]}" for k, v in r.figures.items())
                        say(f"{desc}: {shown or '-'}" + (f"  [bold red]INVALID[/]: {'; '.join(r.invalid)}"
                                                         if r.invalid and console else
                                                         f"  INVALID: {'; '.join(r.invalid)}" if r.invalid else ""))
                        if progress:
                            progress.advance(task)
        finally:
            if progress:
                progress.stop()
        if not target:
            for peer in peers:
                if peer.alive():
                    problems += [f"after: {p}" for p in _check_responses(peer)]
    finally:
        for peer in reversed(started):
            peer.stop()
        if backend_proc is not None:
            stop_process(backend_proc, timeout=10)
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    peer_order = [p.name for p in peers]
    rows = summarize(runs, peer_order)
    header = (f"fastterm bench: {setup_desc}; {args.rounds} round(s) x {args.duration:g} s; "
              f"handshakes: openssl s_time -new x{args.hs_clients}; latency at {args.rate} req/s; "
              f"connections: {args.idle_connections}; {time.monotonic() - t_start:.0f} s in all")
    invalid = [r for r in runs if r.invalid]
    skipped = sorted({f"{r.run} {r.peer}: {r.skipped}" for r in runs if r.skipped})
    if skipped:
        problems_note = "\nNot run: " + "; ".join(skipped)
    else:
        problems_note = ""
    if args.markdown:
        print(header + "\n")
        print(markdown_table(rows))
    else:
        if console:
            from rich.console import Console
            out = Console()
            out.width = max(out.width, 150)
            out.print(header)
            print_table(rows, out)
        else:
            print(header)
            print(markdown_table(rows))
    if problems_note:
        print(problems_note)
    if invalid or problems:
        print("\nInvalid runs (left out of the figures):" if invalid else "\nProblems:")
        for r in invalid:
            print(f"- round {r.round} {r.run} {r.peer}: {'; '.join(r.invalid)}")
        if invalid and problems:
            print("\nProblems:")
        for p in problems:
            print(f"- {p}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": header, "argv": sys.argv[1:],
                       "args": {k: v for k, v in vars(args).items() if k not in ("func", "upload_lua")},
                       "peers": peer_order, "runs": [asdict(r) for r in runs], "summary": rows,
                       "problems": problems}, f, indent=1)
    if args.plot:
        try:
            plot(rows, args.plot, header[:160])
            print(f"\nplot: {os.path.abspath(args.plot)}")
        except ImportError:
            print("fastterm bench: --plot needs matplotlib (pip install 'fastterm[bench]')", file=sys.stderr)
            return 2
    return 1 if invalid or problems else 0


def _served_kind(target: tuple[str, int]) -> str:
    ctx = ssl._create_unverified_context()
    with socket.create_connection(target, timeout=10) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    return "ecdsa" if isinstance(x509.load_der_x509_certificate(der).public_key(),
                                 ec.EllipticCurvePublicKey) else "rsa"


def _start_backend(d: str, cpus: str, env: dict) -> tuple[str, subprocess.Popen]:
    port = free_port()
    os.makedirs(os.path.join(d, "www"), exist_ok=True)
    with open(os.path.join(d, "www", "1m"), "wb") as f:
        f.write(os.urandom(BULK_SIZE))
    nginx = which("nginx")
    if nginx:
        with open(os.path.join(d, "backend.conf"), "w") as f:
            f.write(backend_conf(d, port))
        argv = [nginx, "-p", d, "-c", f"{d}/backend.conf", "-e", f"{d}/backend.error.log"]
    else:
        # The built-in backend (half nginx's rate on loopback): /bytes/N for /1k and /1m.
        argv = [sys.executable, "-m", "fastterm.backend", "--host", "127.0.0.1", "--port", str(port)]
        PATHS.update(small="/bytes/1024", bulk=f"/bytes/{BULK_SIZE}")
    with open(os.path.join(d, "backend.out"), "ab") as out:
        proc = subprocess.Popen(pinned(cpus, argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    try:
        wait_port(port, proc)
    except BenchError as exc:
        proc.kill()
        raise BenchError(f"backend: {exc}: {tail(os.path.join(d, 'backend.error.log'))}") from None
    return f"127.0.0.1:{port}", proc


def _make_peers(setup: Setup, d: str, backend: str, names: list[str], cpus: str, env: dict,
                repo_root: str) -> list[Peer]:
    def ports() -> dict[str, int]:
        return {"main": free_port(), **{k: free_port() for k in setup.certs}}

    peers: list[Peer] = []
    ft = FasttermPeer("fastterm", ports(), log_path=os.path.join(d, "fastterm.log"), cwd=repo_root, env=env)
    ft.admin_port = free_port()
    conf = os.path.join(d, "fastterm.toml")
    with open(conf, "w") as f:
        f.write(fastterm_conf(setup, backend, ft.ports, ft.admin_port))
    ft.argv = pinned(cpus, [sys.executable, "-m", "fastterm", "run", "-c", conf])
    peers.append(ft)
    if "nginx" in names:
        p = Peer("nginx", ports(), log_path=os.path.join(d, "nginx.out"), hs_log=os.path.join(d, "nginx-hs.log"),
                 cwd=d)
        with open(os.path.join(d, "nginx.conf"), "w") as f:
            f.write(nginx_conf(setup, d, backend, p.ports))
        p.argv = pinned(cpus, [which("nginx"), "-p", d, "-c", f"{d}/nginx.conf", "-e", f"{d}/nginx.error.log"])
        peers.append(p)
    if "haproxy" in names:
        p = Peer("haproxy", ports(), log_path=os.path.join(d, "haproxy.log"), cwd=d)
        p.hs_log = p.log_path     # log-format "%[ssl_fc_is_resumed] %ST" on stdout
        with open(os.path.join(d, "haproxy.cfg"), "w") as f:
            f.write(haproxy_conf(setup, d, backend, p.ports))
        p.argv = pinned(cpus, [which("haproxy"), "-f", f"{d}/haproxy.cfg", "-db"])
        p.max_conns = haproxy_maxconn(setup)
        peers.append(p)
    return peers


def _check_responses(peer: Peer) -> list[str]:
    """One request per path through the terminator: status and exact body size."""
    import http.client

    ctx = ssl._create_unverified_context()
    problems = []
    for method, path, body, size in (("GET", PATHS["small"], None, len(BODY_1K)),
                                     ("GET", PATHS["bulk"], None, BULK_SIZE),
                                     ("POST", PATHS["upload"], b"u" * UPLOAD_SIZE, None)):
        try:
            conn = http.client.HTTPSConnection(peer.host, peer.ports["main"], context=ctx, timeout=10)
            conn.request(method, path, body=body, headers={"Host": "localhost"})
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            if resp.status != 200 or (size is not None and len(data) != size):
                problems.append(f"{peer.name} {method} {path}: status {resp.status}, {len(data)} bytes "
                                f"(want 200{f', {size}' if size else ''})")
        except (OSError, http.client.HTTPException) as exc:
            problems.append(f"{peer.name} {method} {path}: {type(exc).__name__}: {exc}")
    return problems


# --- the clients (run as ``python -m fastterm.bench client KIND ...`` on the client CPUs) ----

def _client_ctx(tls12: bool = False, no_ticket: bool = False) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if no_ticket:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _request(path: str, keep_alive: bool) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: localhost\r\n"
            f"{'' if keep_alive else 'Connection: close'}\r\n\r\n").encode().replace(b"\r\n\r\n\r\n", b"\r\n\r\n")


def _read_response(sock) -> int:
    """Read one response with Content-Length from a blocking socket; return its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(None, 2)[1])
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    left = int(m.group(1)) - len(body) if m else 0
    while left > 0:
        chunk = sock.recv(min(left, 65536))
        if not chunk:
            raise ConnectionError("closed in the body")
        left -= len(chunk)
    return status


def client_resume(host: str, port: int, mode: str, duration: float, path: str) -> dict:
    """Resumed handshakes, one request per connection; ``id``: TLS 1.2 session IDs, ``ticket``: TLS 1.3."""
    ctx = _client_ctx(tls12=mode == "id", no_ticket=mode == "id")
    session = None
    n = reused = errors = non2xx = 0
    t0 = time.monotonic()
    deadline = t0 + duration
    req = _request(path, keep_alive=False)
    while time.monotonic() < deadline:
        try:
            raw = socket.create_connection((host, port), timeout=5)
            # The request follows the client's Finished at once: with Nagle it would wait for
            # the ACK of the Finished (a delayed ACK: 40 ms on Linux).
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
            except BaseException:
                raw.close()
                raise
            with s:
                s.sendall(req)
                if _read_response(s) // 100 != 2:
                    non2xx += 1
                # TLS 1.3 tickets arrive after the handshake: take the newest session each time
                # (a stateful TLS 1.3 session is single-use).
                session = s.session
                n += 1
                reused += s.session_reused
        except (OSError, ValueError):
            errors += 1
            if errors > 1000:
                break
    # The first connection of each client is a full handshake: leave it out of "reused" checks.
    return {"handshakes": n, "reused": reused + (1 if n else 0), "errors": errors, "non2xx": non2xx,
            "elapsed": time.monotonic() - t0}


def client_latency(host: str, port: int, rate: float, duration: float, path: str, conns: int) -> dict:
    """Open-loop: request i is due at t0 + i/rate; latency counts from that due time."""
    import asyncio

    async def go() -> dict:
        ctx = _client_ctx()
        req = _request(path, keep_alive=True)
        queue: asyncio.Queue = asyncio.Queue()
        lat: list[float] = []
        counts = {"errors": 0, "non2xx": 0}
        total = int(rate * duration)

        async def conn_worker() -> None:
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost")
            try:
                while True:
                    due = await queue.get()
                    if due is None:
                        return
                    writer.write(req)
                    head = await reader.readuntil(b"\r\n\r\n")
                    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                    if m:
                        await reader.readexactly(int(m.group(1)))
                    lat.append(time.perf_counter() - due)
                    if int(head.split(None, 2)[1]) // 100 != 2:
                        counts["non2xx"] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                counts["errors"] += 1
            finally:
                writer.close()

        workers = [asyncio.create_task(conn_worker()) for _ in range(conns)]
        await asyncio.sleep(0.5)   # connections up (handshakes are not part of the figure)
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(due)
        # Stop: whatever is still queued after a grace period did not get an answer in time.
        grace = time.perf_counter() + 5.0
        while len(lat) < total and time.perf_counter() < grace and any(not w.done() for w in workers):
            await asyncio.sleep(0.01)
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.wait(workers, timeout=5)
        lat.sort()

        def pct(p: float) -> float | None:
            return 1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else None

        return {"offered": total, "done": len(lat), "p50": pct(50), "p99": pct(99), "p99.9": pct(99.9),
                "max": 1000 * lat[-1] if lat else None, **counts}

    return asyncio.run(go())


def client_connections(host: str, port: int, count: int, path: str) -> None:
    """Open ``count`` TLS connections (100 handshakes in flight), one request each, then hold
    them idle: print ``READY ok errors non2xx`` and close all on a line on stdin.

    Non-blocking ``ssl`` sockets on a selector rather than asyncio: asyncio's SSL transport
    keeps a 256 KiB buffer per connection and took ~35 s of client CPU for 10,000 of them.
    """
    import selectors

    raise_fd_limit(count + 1000)
    ctx = _client_ctx()
    req = _request(path, keep_alive=True)
    sel = selectors.DefaultSelector()
    counts = {"ok": 0, "errors": 0, "non2xx": 0}
    held: list[ssl.SSLSocket] = []
    state: dict[ssl.SSLSocket, list] = {}   # sock -> [phase, received]
    started = 0
    deadline = time.monotonic() + 60 + count / 100

    def start_one() -> None:
        raw = socket.socket()
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        s.connect_ex((host, port))
        state[s] = ["handshake", b""]
        sel.register(s, selectors.EVENT_WRITE)

    def fail(s: ssl.SSLSocket) -> None:
        counts["errors"] += 1
        sel.unregister(s)
        del state[s]
        s.close()

    def step(s: ssl.SSLSocket) -> None:
        st = state[s]
        try:
            if st[0] == "handshake":
                s.do_handshake()
                s.send(req)
                st[0] = "response"
                sel.modify(s, selectors.EVENT_READ)
            while st[0] == "response":
                chunk = s.recv(65536)
                if not chunk:
                    return fail(s)
                st[1] += chunk
                head, sep, body = st[1].partition(b"\r\n\r\n")
                if not sep:
                    continue
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and len(body) < int(m.group(1)):
                    continue
                if int(head.split(None, 2)[1]) // 100 != 2:
                    counts["non2xx"] += 1
                counts["ok"] += 1
                sel.unregister(s)
                del state[s]
                held.append(s)
                return None
        except ssl.SSLWantReadError:
            sel.modify(s, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            sel.modify(s, selectors.EVENT_WRITE)
        except (OSError, ValueError, IndexError):
            fail(s)
        return None

    while (started < count or state) and time.monotonic() < deadline:
        while started < count and len(state) < 100:
            start_one()
            started += 1
        for key, _ in sel.select(timeout=1.0):
            step(key.fileobj)
    counts["errors"] += len(state) + (count - started)
    print(f"READY {counts['ok']} {counts['errors']} {counts['non2xx']}", flush=True)
    sys.stdin.readline()
    for s in held:
        s.close()


def client_newconn(host: str, port: int, rate: float, duration: float, path: str) -> dict:
    """Open-loop with a new TLS connection (a full handshake) per request: request i is due
    at t0 + i/rate and its latency counts from then, connect and handshake included."""
    import asyncio

    async def go() -> dict:
        ctx = _client_ctx()
        req = _request(path, keep_alive=False)
        lat: list[float] = []
        counts = {"errors": 0, "non2xx": 0}
        total = int(rate * duration)

        async def one(due: float) -> None:
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost"), 10)
                writer.write(req)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m:
                    await asyncio.wait_for(reader.readexactly(int(m.group(1))), 10)
                lat.append(time.perf_counter() - due)
                if int(head.split(None, 2)[1]) // 100 != 2:
                    counts["non2xx"] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                # OSError includes wait_for's TimeoutError
                counts["errors"] += 1
            finally:
                if writer is not None:
                    writer.close()

        tasks = []
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(due)))
        await asyncio.wait(tasks, timeout=15)
        lat.sort()

        def pct(p: float) -> float | None:
            return 1000 * lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else None

        return {"offered": total, "done": len(lat), "p50": pct(50), "p99": pct(99),
                "max": 1000 * lat[-1] if lat else None, **counts}

    return asyncio.run(go())


def client_slowheaders(host: str, port: int, count: int, drip: float, ramp: float, path: str) -> None:
    """The attacker: ``count`` TLS connections, each sending a request line and then one
    header byte every ``drip`` seconds, never ending the header block; one the server
    closes is reopened at once. They are opened evenly over ``ramp`` seconds (one header
    timeout), so their expiries are as evenly spread as their opens. Prints ``RAMPED held``
    after the ramp, then samples how many it holds (handshake done, dripping) every 0.1 s
    until a line on stdin, and prints what it saw as JSON.

    Non-blocking ``ssl`` sockets on a selector (see ``client_connections``); drips from a heap.
    """
    import heapq
    import selectors

    raise_fd_limit(count + 1000)
    ctx = _client_ctx()
    head = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
    pattern = b"X-Slow: 1\r\n"
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin, selectors.EVENT_READ)
    state: dict[ssl.SSLSocket, list] = {}   # sock -> [phase, bytes dripped]
    drips: list[tuple[float, int, ssl.SSLSocket]] = []
    reopen: list[float] = []                 # heap of times at which to open a connection
    counts = {"opened": 0, "held": 0, "closed_by_server": 0, "responses_408": 0, "errors": 0}
    samples: list[int] = []
    seq = started = 0
    t0 = time.monotonic()
    ramped = False
    next_sample = t0 + ramp

    def open_one() -> None:
        raw = socket.socket()
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw, server_hostname="localhost", do_handshake_on_connect=False)
        s.connect_ex((host, port))
        state[s] = ["handshake", 0]
        counts["opened"] += 1
        sel.register(s, selectors.EVENT_WRITE)

    def drop(s: ssl.SSLSocket, again: float) -> None:
        if state.pop(s)[0] == "held":
            counts["held"] -= 1
        sel.unregister(s)
        s.close()
        heapq.heappush(reopen, time.monotonic() + again)

    def step(s: ssl.SSLSocket) -> None:
        nonlocal seq
        st = state[s]
        try:
            if st[0] == "handshake":
                s.do_handshake()
                s.send(head)
                st[0] = "held"
                counts["held"] += 1
                sel.modify(s, selectors.EVENT_READ)
                seq += 1
                heapq.heappush(drips, (time.monotonic() + drip, seq, s))
                return
            data = s.recv(65536)   # the server's 408, its close_notify, or EOF
            if data.startswith(b"HTTP/1.1 408"):
                counts["responses_408"] += 1
            if not data:
                counts["closed_by_server"] += 1
                drop(s, 0.0)
        except ssl.SSLWantReadError:
            sel.modify(s, selectors.EVENT_READ)
        except ssl.SSLWantWriteError:
            sel.modify(s, selectors.EVENT_WRITE)
        except ssl.SSLZeroReturnError:
            counts["closed_by_server"] += 1
            drop(s, 0.0)
        except (OSError, ValueError):
            if st[0] == "held":
                counts["closed_by_server"] += 1
                drop(s, 0.0)
            else:
                counts["errors"] += 1
                drop(s, 0.1)   # refused or failed handshake: do not spin

    while True:
        now = time.monotonic()
        while started < count and now >= t0 + started * ramp / count:
            open_one()
            started += 1
        while reopen and reopen[0] <= now:
            heapq.heappop(reopen)
            open_one()
        while drips and drips[0][0] <= now:
            _, _, s = heapq.heappop(drips)
            st = state.get(s)
            if st is None or st[0] != "held":
                continue
            try:
                s.send(pattern[st[1] % len(pattern):][:1])
                st[1] += 1
                seq += 1
                heapq.heappush(drips, (now + drip, seq, s))
            except (OSError, ValueError):
                counts["closed_by_server"] += 1
                drop(s, 0.0)
        if now >= next_sample:
            if not ramped:
                ramped = True
                print(f"RAMPED {counts['held']}", flush=True)
            samples.append(counts["held"])
            next_sample += 0.1
        wake = [next_sample]
        if drips:
            wake.append(drips[0][0])
        if reopen:
            wake.append(reopen[0])
        if started < count:
            wake.append(t0 + started * ramp / count)
        for key, _ in sel.select(timeout=max(0.0, min(wake) - time.monotonic())):
            if key.fileobj is sys.stdin:
                sys.stdin.readline()
                print(json.dumps({"target": count, "held_min": min(samples, default=0),
                                  "held_mean": statistics.fmean(samples) if samples else 0.0,
                                  **counts}), flush=True)
                for s in state:
                    s.close()
                return
            if key.fileobj in state:
                step(key.fileobj)


def _client_main(argv: list[str]) -> int:
    kind, host, port, *rest = argv
    if kind == "resume":
        mode, duration, path = rest
        print(json.dumps(client_resume(host, int(port), mode, float(duration), path)))
    elif kind == "latency":
        rate, duration, path, conns = rest
        print(json.dumps(client_latency(host, int(port), float(rate), float(duration), path, int(conns))))
    elif kind == "connections":
        count, path = rest
        client_connections(host, int(port), int(count), path)
    elif kind == "newconn":
        rate, duration, path = rest
        print(json.dumps(client_newconn(host, int(port), float(rate), float(duration), path)))
    elif kind == "slowheaders":
        count, drip, ramp, path = rest
        client_slowheaders(host, int(port), int(count), float(drip), float(ramp), path)
    else:
        print(f"unknown client {kind}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        sys.exit(_client_main(sys.argv[2:]))
    _parser = argparse.ArgumentParser(prog="python -m fastterm.bench", description=__doc__.split("\n\n")[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
