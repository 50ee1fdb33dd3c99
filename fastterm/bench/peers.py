"""The terminators under test: the settings they all get from one fastterm config, the config
written for each (fastterm, nginx, HAProxy, hitch), starting them pinned, reading what they
recorded (handshake kinds, non-2xx) and stopping them."""

from __future__ import annotations

import json
import os
import pwd
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field

from fastterm.bench.backends import (
    BODY_1K,
    BULK_SIZE,
    PATHS,
    REENCRYPT_PATH,
    REENCRYPT_PREFIX,
    TLS_BACKEND_NAME,
    UPLOAD_SIZE,
)
from fastterm.bench.scenarios import ACCESS_LOG_PEER, BASELINE
from fastterm.bench.system import (
    BenchError,
    children,
    free_port,
    pinned,
    proc_cpu,
    proc_rss_kib,
    tail,
    wait_port,
    which,
)


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
    early_data: bool = False         # an "early" port with TLS 1.3 0-RTT on (the resumed-0rtt run)
    tls_backend: object | None = None  # backends.TLSBackend: REENCRYPT_PREFIX routes to it (reencrypt)


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


PEERS = ("nginx", "haproxy", "hitch")   # --peers; the default: those installed

NGINX_GROUP_NAMES = {"P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"}


def nginx_groups(groups: str) -> str:
    return ":".join(NGINX_GROUP_NAMES.get(g, g) for g in groups.split(":"))



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
    reencrypt: bool = False        # REENCRYPT_PREFIX goes to the TLS backend (the keepalive-reencrypt run)
    cannot: dict[str, str] = field(default_factory=dict)   # run -> why this peer cannot do it (n/a)
    stop_signal = signal.SIGTERM

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
            self.proc.send_signal(self.stop_signal)
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
    stop_signal = signal.SIGQUIT    # fast stop: nothing is left to drain between runs

    def metrics(self) -> dict[str, int]:
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: fastterm\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        out: dict[str, int] = {"requests": 0}
        for line in data.partition(b"\r\n\r\n")[2].decode().splitlines():
            m = re.match(r'fastterm_(handshakes_total\{kind="(\w+)"\}|responses_total\{code="(\w+)"\})\s+(\d+)', line)
            if m:
                out[m.group(2) or m.group(3)] = int(m.group(4))
            elif m := re.match(r"fastterm_(backend_connects)_total (\d+)", line):
                out[m.group(1)] = int(m.group(2))
            elif m := re.match(r"fastterm_requests_total(?:\{.*\})? (\d+)", line):
                out["requests"] += int(m.group(1))   # summed over the protocols
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
                "non2xx": sum(v for k, v in d.items() if k in ("1xx", "3xx", "4xx", "5xx")),
                "requests": d.get("requests", 0), "backend_connects": d.get("backend_connects", 0)}


def fastterm_conf(setup: Setup, backend: str, ports: dict[str, int], admin_port: int,
                  pid_file: str | None = None, access_log: str | None = None) -> str:
    tls = setup.tls
    limits = setup.limits

    def q(s: str) -> str:
        return json.dumps(s)

    text = f"""\
# Written by fastterm bench from {setup.source}
workers = {setup.workers}
log_level = "warning"
admin = "127.0.0.1:{admin_port}"
{f"pid_file = {q(pid_file)}" if pid_file else ""}
{f"access_log = {q(access_log)}" if access_log else ""}

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
    if setup.tls_backend is not None:
        text += f"""
[[upstream]]
name = "tls-backend"
servers = [{q("https://" + setup.tls_backend.address)}]
keepalive = {setup.upstream_keepalive}

[upstream.tls]
ca_file = {q(setup.tls_backend.ca_file)}
server_name = {q(TLS_BACKEND_NAME)}
"""
    for port_name, port in ports.items():
        kinds = list(setup.certs) if port_name in ("main", "early") else [port_name]
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
{"early_data = true" if port_name == "early" else ""}
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
        if setup.tls_backend is not None:
            text += f"""
[[server.route]]
path = "{REENCRYPT_PREFIX}/"
upstream = "tls-backend"
upstream_path = "/"
"""
    return text


def nginx_conf(setup: Setup, d: str, backend: str, ports: dict[str, int]) -> str:
    tls = setup.tls
    limits = setup.limits
    # nginx 1.22 (Debian 12) has no ALPN list: `http2` on a listener offers h2, then http/1.1.
    http2 = " http2" if "h2" in tls.alpn else ""
    servers = []
    for port_name, port in ports.items():
        kinds = list(setup.certs) if port_name in ("main", "early") else [port_name]
        certs = "\n".join(f"        ssl_certificate {setup.certs[k][0]};\n        ssl_certificate_key {setup.certs[k][1]};"
                          for k in kinds)
        log = "access_log off;" if port_name == "main" else f"access_log {d}/nginx-hs.log hs;"
        servers.append(f"""\
    server {{
        listen 127.0.0.1:{port} ssl{http2} backlog=4096;
        server_name localhost;
{certs}
        {log}
        {"ssl_early_data on;" if port_name == "early" else ""}
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
{nginx_reencrypt_location(setup)}
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
{nginx_tls_upstream(setup)}
{server_blocks}
}}
"""


def nginx_tls_upstream(setup: Setup) -> str:
    if setup.tls_backend is None:
        return ""
    return f"""\
    upstream tls_backend {{
        server {setup.tls_backend.address};
        keepalive {setup.upstream_keepalive};
        keepalive_requests 100000000;
    }}"""


def nginx_reencrypt_location(setup: Setup) -> str:
    """proxy_pass https:// with kept connections, verification against the backend's CA and
    session reuse: what fastterm's https:// upstream does by default."""
    if setup.tls_backend is None:
        return ""
    return f"""\
        location {REENCRYPT_PREFIX}/ {{
            proxy_pass https://tls_backend/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {setup.tls_backend.ca_file};
            proxy_ssl_name {TLS_BACKEND_NAME};
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;
        }}"""


def haproxy_maxconn(setup: Setup) -> int:
    """HAProxy reserves two fds per connection (client + server) and will not start when
    maxconn needs more than the hard RLIMIT_NOFILE it may not raise."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = max(20000, 2 * setup.idle_connections)
    return want if hard == resource.RLIM_INFINITY else min(want, (hard - 200) // 2)


def write_pems(setup: Setup, d: str, prefix: str) -> dict[str, str]:
    """One file per certificate kind, its chain then its key: what HAProxy and hitch load."""
    pems = {}
    for kind, (crt, key) in setup.certs.items():
        pem = os.path.join(d, f"{prefix}-{kind}.pem")
        with open(crt, "rb") as a, open(key, "rb") as b, open(pem, "wb") as out:
            out.write(a.read().rstrip(b"\n") + b"\n" + b.read())
        os.chmod(pem, 0o600)
        pems[kind] = pem
    return pems


def haproxy_conf(setup: Setup, d: str, backend: str, ports: dict[str, int]) -> str:
    tls = setup.tls
    limits = setup.limits
    pems = write_pems(setup, d, "haproxy")
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
        kinds = list(setup.certs) if port_name in ("main", "early") else [port_name]
        crts = " ".join(f"crt {pems[k]}" for k in kinds) + (" allow-0rtt" if port_name == "early" else "")
        logging = ("    no log" if port_name == "main" else
                   "    log global\n    log-format \"%[ssl_fc_is_resumed] %ST\"")
        hsts = f'    http-response set-header Strict-Transport-Security "{setup.hsts}"\n' if setup.hsts else ""
        if setup.tls_backend is not None:
            hsts += f"    use_backend be_tls if {{ path_beg {REENCRYPT_PREFIX}/ }}\n"
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
{haproxy_tls_backend(setup)}"""


def haproxy_tls_backend(setup: Setup) -> str:
    """``ssl verify required`` with the backend's CA and name; HAProxy reuses server sessions by
    default (``no-ssl-reuse`` would not)."""
    if setup.tls_backend is None:
        return ""
    return f"""
backend be_tls
    http-request replace-path {REENCRYPT_PREFIX}(/.*) \\1
    server s1 {setup.tls_backend.address} ssl verify required ca-file {setup.tls_backend.ca_file} \
sni str({TLS_BACKEND_NAME}) verifyhost {TLS_BACKEND_NAME} pool-max-conn {setup.upstream_keepalive}
"""



# What hitch, a TCP proxy with one plain backend and no HTTP, cannot be measured on.
HITCH_CANNOT = {
    "h2-m10": "hitch forwards bytes: h2 (ALPN) would reach the HTTP/1.1 backend",
    "h2-m100": "hitch forwards bytes: h2 (ALPN) would reach the HTTP/1.1 backend",
    "keepalive-reencrypt": "hitch has one plain TCP backend, no route to a TLS one",
    "resumed-0rtt": "hitch 1.7 has no TLS 1.3 early data",
    "slowheaders": "hitch does not parse HTTP: no header timeout of its own (the backend's would answer)",
}


def hitch_conf(setup: Setup, d: str, backend: str, ports: dict[str, int]) -> str:
    """hitch 1.7 (Debian): ``workers`` processes decrypting to ``backend`` over plain TCP, one
    backend connection per client connection for its whole life (no HTTP: keep-alive is the
    backend's, HSTS and the HTTP limits are not hitch's). One certificate per SNI name, so the
    main port serves the config's first kind (ECDSA when it has one), the per-key ports their
    own. ALPN offers http/1.1 only. Debian builds it without ``--enable-sessioncache``: no
    ``shared-cache``, the session cache is OpenSSL's own per worker (TLS 1.2 session IDs
    resume on the worker that issued them), tickets are OpenSSL's default (on; their keys,
    made before the workers fork, are the same in all); hitch has no switch for either, nor
    for the session timeout."""
    tls = setup.tls
    pems = write_pems(setup, d, "hitch")
    host, _, port = backend.rpartition(":")
    frontends = []
    for port_name, listen in ports.items():
        kind = next(iter(setup.certs)) if port_name == "main" else port_name
        frontends.append(f"""\
frontend = {{
    host = "127.0.0.1"
    port = "{listen}"
    pem-file = "{pems[kind]}"
}}""")
    alpn = 'alpn-protos = "http/1.1"' if "http/1.1" in tls.alpn else ""
    # Started as root, hitch refuses to leave its workers root: they become nobody after the
    # certificates are loaded (as nginx's workers do).
    user = 'user = "nobody"' if os.geteuid() == 0 and _has_user("nobody") else ""
    blocks = "\n".join(frontends)
    return f"""\
# Written by fastterm bench from {setup.source}
{blocks}
backend = "[{host.strip("[]")}]:{port}"
workers = {setup.workers}
backlog = 4096
daemon = off
log-level = 1
tls-protos = {" ".join(tls.protocols)}
ciphers = "{tls.ciphers}"
ciphersuites = "{tls.ciphersuites}"
ecdh-curve = "{tls.groups}"
prefer-server-ciphers = {"on" if tls.prefer_server_ciphers else "off"}
{alpn}
{user}
"""


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def hitch_max_conns() -> int | None:
    """hitch holds two fds per connection (client + backend) under the hard RLIMIT_NOFILE it
    inherits: a cap only when that limit is finite (the connections run is skipped below it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else (hard - 200) // 2


class HitchPeer(Peer):
    """hitch: a master and ``workers`` worker processes (and its OCSP fetcher); stopped, the
    master takes its workers with it, and any still there a moment later are killed."""

    def stop(self) -> None:
        if self.proc is None:
            return
        workers = children(self.proc.pid)
        super().stop()
        deadline = time.monotonic() + 5
        while (left := [p for p in workers if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for init does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False



def served_kind(target: tuple[str, int]) -> str:
    ctx = ssl._create_unverified_context()
    with socket.create_connection(target, timeout=10) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        der = s.getpeercert(binary_form=True)
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    return "ecdsa" if isinstance(x509.load_der_x509_certificate(der).public_key(),
                                 ec.EllipticCurvePublicKey) else "rsa"



def make_peers(setup: Setup, d: str, backend: str, names: list[str], cpus: str, env: dict,
               repo_root: str, baseline: tuple[str, dict] | None = None, access_log: bool = False) -> list[Peer]:
    """fastterm, then (``baseline``: its tree and environment) fastterm-base right after it, then
    (``access_log``) fastterm-log, the same fastterm writing its JSON access log, then the peers
    named; each with its config written into ``d``."""
    def ports() -> dict[str, int]:
        return {"main": free_port(), **{k: free_port() for k in setup.certs},
                **({"early": free_port()} if setup.early_data else {})}

    def fastterm_peer(name: str, cwd: str, peer_env: dict, access_log: str | None = None) -> FasttermPeer:
        own = ports()
        if not knows_early_data(cwd):
            own.pop("early", None)   # a baseline from before 0-RTT: its resumed-0rtt run is skipped
        ft = FasttermPeer(name, own, log_path=os.path.join(d, f"{name}.log"), cwd=cwd, env=peer_env,
                          reencrypt=setup.tls_backend is not None)
        ft.admin_port = free_port()
        conf = os.path.join(d, f"{name}.toml")
        with open(conf, "w") as f:
            # Its own pid file: not the default one of a fastterm already serving on this machine.
            f.write(fastterm_conf(setup, backend, ft.ports, ft.admin_port, os.path.join(d, f"{name}.pid"),
                                  access_log))
        ft.argv = pinned(cpus, [sys.executable, "-m", "fastterm", "run", "-c", conf])
        return ft

    peers: list[Peer] = [fastterm_peer("fastterm", repo_root, env)]
    if baseline is not None:
        peers.append(fastterm_peer(BASELINE, *baseline))
    if access_log:
        peers.append(fastterm_peer(ACCESS_LOG_PEER, repo_root, env, os.path.join(d, "fastterm-access.log")))
    if "nginx" in names:
        p = Peer("nginx", ports(), log_path=os.path.join(d, "nginx.out"), hs_log=os.path.join(d, "nginx-hs.log"),
                 cwd=d, reencrypt=setup.tls_backend is not None)
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
        p.reencrypt = setup.tls_backend is not None
        peers.append(p)
    if "hitch" in names:
        own = ports()
        own.pop("early", None)   # no 0-RTT: its resumed-0rtt run is n/a
        p = HitchPeer("hitch", own, log_path=os.path.join(d, "hitch.log"), cwd=d, cannot=dict(HITCH_CANNOT))
        with open(os.path.join(d, "hitch.conf"), "w") as f:
            f.write(hitch_conf(setup, d, backend, p.ports))
        p.argv = pinned(cpus, [which("hitch"), "--config", f"{d}/hitch.conf"])
        p.max_conns = hitch_max_conns()
        peers.append(p)
    return peers


def knows_early_data(tree: str) -> bool:
    """Whether the fastterm checkout at ``tree`` has ``[server.tls] early_data`` (a baseline
    from before it would refuse the resumed-0rtt run's port)."""
    try:
        with open(os.path.join(tree, "fastterm", "config", "model.py"), encoding="utf-8") as f:
            return "early_data:" in f.read()
    except OSError:
        return False


def baseline_env(tree: str, env: dict) -> dict:
    """The environment that runs fastterm from ``tree`` with this python (``PYTHONPATH=tree``).
    Refused unless fastterm and its extension both import from there: this tree's editable
    install would otherwise lend its own extension to a tree that has none built."""
    tree = os.path.realpath(tree)
    base_env = dict(env, PYTHONPATH=tree)
    probe = "import fastterm, fastterm._core; print(fastterm.__file__); print(fastterm._core.__file__)"
    res = subprocess.run([sys.executable, "-c", probe], cwd=tree, env=base_env, capture_output=True, text=True,
                         timeout=60, check=False)
    found = res.stdout.split()
    if res.returncode != 0 or len(found) != 2 or \
            not all(os.path.realpath(f).startswith(tree + os.sep) for f in found):
        seen = ", ".join(found) if found else (res.stderr.strip().splitlines() or ["nothing"])[-1]
        raise BenchError(f"--baseline {tree}: fastterm and its built extension must import from there "
                         f"(found: {seen}); build it with:  cd {tree} && {sys.executable} setup.py build_ext "
                         "--inplace -q")
    return base_env


def baseline_commit(tree: str) -> str:
    """``git describe`` of the tree, for the report's header (its path when git cannot say)."""
    try:
        res = subprocess.run(["git", "-C", tree, "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10, check=False)
    except OSError:
        return tree
    return f"{tree} at {res.stdout.strip()}" if res.returncode == 0 else tree


def check_responses(peer: Peer) -> list[str]:
    """One request per path through the terminator: status and exact body size."""
    import http.client

    ctx = ssl._create_unverified_context()
    problems = []
    for method, path, body, size in (("GET", PATHS["small"], None, len(BODY_1K)),
                                     ("GET", PATHS["bulk"], None, BULK_SIZE),
                                     ("POST", PATHS["upload"], b"u" * UPLOAD_SIZE, None),
                                     *((("GET", REENCRYPT_PATH, None, len(BODY_1K)),) if peer.reencrypt else ())):
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

