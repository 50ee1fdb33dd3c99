"""The plain-HTTP backend behind every terminator: nginx ``return 200`` (twice the rate of the
built-in Python backend on loopback, so the backend is not what is measured), or
``fastterm.backend`` when nginx is not installed; and for the re-encryption run the same answers
over TLS (a second nginx, its certificate from a CA of its own)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from fastterm.bench.system import BenchError, free_port, pinned, tail, wait_port, which

BODY_1K = b"x" * 1023 + b"\n"
BULK_SIZE = 1 << 20
UPLOAD_SIZE = 1 << 20
# Backend paths: nginx's (see backend_conf); the built-in backend's replace them.
PATHS = {"small": "/1k", "bulk": "/1m", "upload": "/upload"}
# nginx stub_status: the connections and requests the backend took, so that the backend connects
# per request of nginx and HAProxy are known (they say nothing of theirs).
STATUS_PATH = "/backend-status"
# The terminators' route to the TLS backend (the prefix is taken off upstream): /reencrypt/1k
REENCRYPT_PREFIX = "/reencrypt"
REENCRYPT_PATH = REENCRYPT_PREFIX + "/1k"   # the TLS backend's 1 KiB answer
TLS_BACKEND_NAME = "localhost"   # what its certificate names; the terminators verify it


@dataclass
class TLSBackend:
    address: str                     # HOST:PORT, spoken to with https://
    ca_file: str                     # the CA its certificate is verified against
    proc: subprocess.Popen


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
        location = {STATUS_PATH} {{ stub_status; }}
    }}
    upstream self {{
        server 127.0.0.1:{port};
        keepalive 16;
    }}
}}
"""



def start_backend(d: str, cpus: str, env: dict) -> tuple[str, subprocess.Popen]:
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


def backend_counts(address: str) -> tuple[int, int] | None:
    """(connections accepted, requests) so far by the backend, this probe's own included (so
    between two probes the terminator made each difference less one); None when it cannot
    say (the built-in backend, or a ``--backend`` that is not ours)."""
    host, _, port = address.rpartition(":")
    data = b""
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(f"GET {STATUS_PATH} HTTP/1.0\r\nHost: backend\r\n\r\n".encode())
            while len(data) < 65536 and (chunk := s.recv(4096)):
                data += chunk
                if b"\r\n\r\n" in data and not data.startswith(b"HTTP/1.1 200"):
                    return None
    except (OSError, ValueError):
        return None
    m = re.search(rb"\r\n\r\nActive connections: \d+ \n.*\n (\d+) \d+ (\d+) \n", data)
    return (int(m.group(1)), int(m.group(2))) if m else None


def quiet_backend_counts(address: str, timeout: float = 3.0) -> tuple[int, int] | None:
    """``backend_counts`` once nothing but the probes reaches the backend (or after
    ``timeout``): the previous run's terminator may still be forwarding the requests it had
    in flight when its client stopped, and they would count towards the next one."""
    last = backend_counts(address)
    deadline = time.monotonic() + timeout
    while last is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        now = backend_counts(address)
        if now is None or now == (last[0] + 1, last[1] + 1):
            return now
        last = now
    return last


def tls_backend_conf(d: str, port: int, cert: str, key: str) -> str:
    """Keep-alive TLS (1.2 and 1.3, session cache and tickets: what a terminator that reuses
    its connections and sessions meets) in front of the same 1 KiB answer."""
    return f"""\
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 40000;
pid {d}/tls-backend.pid;
error_log {d}/tls-backend.error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:BE:10m;
        location = /1k {{ return 200 "{BODY_1K[:-1].decode()}\\n"; }}
    }}
}}
"""


def start_tls_backend(d: str, cpus: str, env: dict) -> TLSBackend:
    """The re-encryption run's backend: nginx with a certificate for localhost from a CA made
    here (the terminators are given that CA and verify the backend, as in production)."""
    from fastterm.demo import issue_cert, make_ca

    nginx = which("nginx")
    if not nginx:
        raise BenchError("the reencrypt scenario's TLS backend is nginx: install it (apt-get install nginx)")
    tls_dir = os.path.join(d, "tls-backend")
    os.makedirs(tls_dir, exist_ok=True)
    ca = make_ca("fastterm bench backend CA")
    leaf = issue_cert(ca, [TLS_BACKEND_NAME, "127.0.0.1"], "EC")
    paths = {name: os.path.join(tls_dir, name) for name in ("ca.pem", "backend.crt", "backend.key")}
    for name, data in (("ca.pem", ca.cert_pem), ("backend.crt", leaf.cert_pem), ("backend.key", leaf.key_pem)):
        with open(paths[name], "wb") as f:
            f.write(data)
    os.chmod(paths["ca.pem"], 0o644)   # nginx workers (nobody when run as root) verify with it
    port = free_port()
    conf = os.path.join(d, "tls-backend.conf")
    with open(conf, "w") as f:
        f.write(tls_backend_conf(d, port, paths["backend.crt"], paths["backend.key"]))
    with open(os.path.join(d, "tls-backend.out"), "ab") as out:
        proc = subprocess.Popen(pinned(cpus, [nginx, "-p", d, "-c", conf, "-e", f"{d}/tls-backend.error.log"]),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        wait_port(port, proc)
    except BenchError as exc:
        proc.kill()
        raise BenchError(f"TLS backend: {exc}: {tail(os.path.join(d, 'tls-backend.error.log'))}") from None
    return TLSBackend(f"127.0.0.1:{port}", paths["ca.pem"], proc)
