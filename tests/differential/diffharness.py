"""Differential harness: one nginx config served by real nginx and by fastterm, compared.

A corpus file (``configs/NAME.conf``) is the inside of nginx's ``http {}`` block: server
blocks, upstreams, http-level ``ssl_*``. Placeholders stand for what differs per machine
and per side: ``@CERTS@`` (the session's certificate directory), ``@HTTPS_PORT@``,
``@HTTPS_PORT2@``, ``@HTTP_PORT@`` (loopback ports, one set per side), ``@BACKEND@``,
``@BACKEND2@``, ``@BACKEND3@`` (the echo backends, shared by both sides). ``render``
wraps the snippet into a complete nginx.conf (``WRAPPER``); nginx runs that file with
``-p RUN -c FILE`` and fastterm runs the same file with ``fastterm run --nginx FILE
--single``. The two files differ only by their port numbers.

Both sides then get the same cases from the same clients (``Case.run``): raw TLS sockets
with ``httpwire`` (every byte), ``http.client``, ``httpx`` (HTTP/1.1 and HTTP/2), curl,
Python ``ssl`` handshakes and ``openssl s_client``. A case yields an ``Observation``, a flat
dict of fields (``status``, ``header:location``, ``backend.header:x-real-ip``,
``tls.cipher`` ...); ``compare`` lists every field that differs. What the backends received
is attributed to a case by order: cases run one at a time, nginx first, and a backend
records each request before it answers, so the requests recorded between the start of a
case on one side and the client's last byte are that side's.

Normalised before comparing (fields that legitimately vary, not behaviour):

- ``Date`` (the clock) is not compared;
- each side's own port numbers become their placeholder (``@HTTPS_PORT@``) in every value:
  a ``Location`` with the listen port, a ``Host`` with it;
- a ``Server`` value loses its version (``nginx/1.22.1`` -> ``nginx``), so a version bump is
  no difference, while ``nginx`` vs ``fastterm`` still is; the same for the
  ``<center>nginx/1.22.1</center>`` line of nginx's generated pages;
- ``Connection: keep-alive`` on an HTTP/1.1 response is dropped: it is the default there
  (RFC 9112 9.3), so its presence says nothing; ``close`` is kept.

Everything else that differs fails its test unless ``allowlist.py`` names it with a reason.
Every wait is bounded (socket timeouts, process deadlines).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "integration"))

from harness import RawBackend, free_port
from httpwire import Message, Reader, read_message, read_response

HOST = "127.0.0.1"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl") or "openssl"
CURL = shutil.which("curl") or "curl"
PORT_NAMES = ("HTTPS_PORT", "HTTPS_PORT2", "HTTP_PORT")
BACKEND_NAMES = ("BACKEND", "BACKEND2", "BACKEND3", "TLS_BACKEND")
START_TIMEOUT = 20.0
# FASTTERM_DIFF_NGINX_ONLY=1: run every case against nginx alone (writing a config: does nginx
# take it, what does it answer); nothing is compared.
NGINX_ONLY = os.environ.get("FASTTERM_DIFF_NGINX_ONLY") == "1"
CLIENT_TIMEOUT = 5.0

# The complete nginx.conf around a corpus snippet. Only directives both nginx and the
# fastterm front-end accept (fastterm warns that pid, temp paths, ... do nothing for it).
WRAPPER = """\
# Written by tests/differential/diffharness.py around configs/{name}.
daemon off;
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log info;
events {{
    worker_connections 512;
}}
http {{
    access_log {run}/access.log;
    client_body_temp_path {run}/tmp/body;
    proxy_temp_path {run}/tmp/proxy;
    fastcgi_temp_path {run}/tmp/fastcgi;
    uwsgi_temp_path {run}/tmp/uwsgi;
    scgi_temp_path {run}/tmp/scgi;
### snippet
{snippet}
### end of snippet
}}
"""
SNIPPET_OFFSET = WRAPPER.split("\n").index("{snippet}")  # lines of WRAPPER above the snippet


# ---------------------------------------------------------------------------------------
# the corpus


@dataclass
class CorpusConfig:
    """One ``configs/*.conf`` file and what its ``# diff:`` header lines say.

    - ``# diff: names A B``: the names the generic cases use (default: the exact names of
      its ``server_name`` lines, plus one instance of each wildcard);
    - ``# diff: unsupported DIRECTIVE ...``: fastterm does not support these yet; the test
      asserts ``fastterm check --nginx`` names each (file:line) and exits 1, and runs the
      cases against nginx alone;
    - ``# diff: nginx-config OTHER.conf``: nginx cannot run this text (a newer nginx's
      syntax); nginx runs OTHER instead, which must mean the same;
    - ``# diff: no-tls-matrix``: skip the client-offer matrix (configs about HTTP only).
    """

    name: str
    path: Path
    text: str
    names: list[str]
    unsupported: list[str] = field(default_factory=list)
    nginx_config: str | None = None
    tls_matrix: bool = True
    scanned: str = ""     # the text and the files it includes (NAME.d/), for what the cases need

    @property
    def https_ports(self) -> list[str]:
        return [p for p in ("HTTPS_PORT", "HTTPS_PORT2")
                if re.search(rf"listen\s+\S*@{p}@[^;]*\bssl\b", self.scanned)]

    @property
    def has_http(self) -> bool:
        return "@HTTP_PORT@" in self.scanned

    def added_headers(self) -> list[str]:
        """Names given to ``add_header`` anywhere: compared on every response."""
        return sorted({m.lower() for m in re.findall(r"^\s*add_header\s+\"?([A-Za-z0-9-]+)", self.scanned,
                                                     re.MULTILINE)})


def _instances(server_name: str) -> list[str]:
    if server_name.startswith("~") or server_name in ("_", '""', ""):
        return []
    if server_name.startswith("*."):
        return ["w" + server_name[1:], "a.b" + server_name[1:]]
    if server_name.startswith("."):
        return [server_name[1:], "x" + server_name]
    if server_name.endswith(".*"):
        return [server_name[:-2] + ".org"]
    return [server_name]


def load_corpus() -> list[CorpusConfig]:
    out = []
    for path in sorted(CONFIGS.glob("*.conf")):
        text = path.read_text()
        included = path.with_suffix(".d")
        scanned = text + "".join(p.read_text() for p in sorted(included.iterdir())) if included.is_dir() else text
        meta: dict[str, list[str]] = {}
        for line in text.splitlines():
            m = re.match(r"\s*#\s*diff:\s*([a-z-]+)\s*(.*)$", line)
            if m:
                meta.setdefault(m.group(1), []).extend(m.group(2).split())
        names = meta.get("names")
        if not names:
            names = []
            for m in re.finditer(r"^\s*server_name\s+([^;]+);", scanned, re.MULTILINE):
                for n in m.group(1).split():
                    for inst in _instances(n.strip('"')):
                        if inst not in names:
                            names.append(inst)
        nginx_config = (meta.get("nginx-config") or [None])[0]
        out.append(CorpusConfig(path.stem, path, text, names or ["localhost"],
                                meta.get("unsupported", []), nginx_config,
                                "no-tls-matrix" not in meta, scanned))
    return out


def directive_lines(text: str, directive: str) -> list[int]:
    """1-based lines of ``text`` where ``directive`` starts a statement (at the line's start,
    or after a ``{`` or ``;`` on it: ``location /a/ { proxy_pass ...; }``)."""
    return [i for i, line in enumerate(text.splitlines(), 1)
            if re.search(rf"(^|[{{;])\s*{re.escape(directive)}(\s|;)", line)]


# ---------------------------------------------------------------------------------------
# certificates


@dataclass
class PKI:
    """The certificate directory both sides read, and fingerprints -> file names."""

    directory: Path
    ca_file: str
    labels: dict[str, str]   # sha256 of the leaf's DER -> "api.example.com.crt"

    def label(self, der: bytes | None) -> str | None:
        if der is None:
            return None
        return self.labels.get(hashlib.sha256(der).hexdigest(), "unknown certificate")


# file stem -> (names, key type); every leaf file holds the leaf then the intermediate.
LEAVES = {
    "api.example.com": (["api.example.com"], "EC"),
    "api.example.com.rsa": (["api.example.com"], "RSA"),
    "app.example.com": (["app.example.com"], "EC"),
    "app.example.com.rsa": (["app.example.com"], "RSA"),
    "wildcard.example.com": (["*.example.com"], "EC"),
    "example.com": (["example.com", "*.example.com"], "EC"),
    "default.test": (["default.test"], "EC"),
    "default.test.rsa": (["default.test"], "RSA"),
    "other.test": (["other.test", "www.other.test"], "EC"),
    "notes": (["notes"], "EC"),          # the TLS backend (@TLS_BACKEND@), named as its upstream
}

# RFC 7919 ffdhe2048, the group ``ssl_dhparam`` configs point at (generating DH parameters
# takes seconds to minutes; a named group is what Mozilla's guidelines recommend anyway).
FFDHE2048 = (REPO_ROOT / "tests" / "ffdhe2048.pem").read_text()


def _client_cert(issuer):
    """A client certificate (EKU clientAuth, which ``fastterm.demo.issue_cert`` does not make)
    for ``proxy_ssl_certificate``."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from fastterm.demo import Issued, new_key

    key = new_key("EC")
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "diff client")]))
            .issuer_name(issuer.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(issuer.key, hashes.SHA256()))
    return Issued(cert, key)


def make_pki(directory: Path) -> PKI:
    from cryptography.hazmat.primitives import serialization

    from fastterm.demo import issue_cert, make_ca

    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("fastterm differential root")
    inter = issue_cert(ca, ["fastterm differential intermediate"], "EC", is_ca=True)
    labels = {}
    for stem, (names, key_type) in LEAVES.items():
        leaf = issue_cert(inter, names, key_type)
        (directory / f"{stem}.crt").write_bytes(leaf.cert_pem + inter.cert_pem)
        (directory / f"{stem}.key").write_bytes(leaf.key_pem)
        os.chmod(directory / f"{stem}.key", 0o644)   # nginx runs as nobody and reads it
        der = leaf.cert.public_bytes(serialization.Encoding.DER)
        labels[hashlib.sha256(der).hexdigest()] = f"{stem}.crt"
    client = _client_cert(inter)
    (directory / "client.crt").write_bytes(client.cert_pem + inter.cert_pem)
    (directory / "client.key").write_bytes(client.key_pem)
    os.chmod(directory / "client.key", 0o644)
    labels[hashlib.sha256(client.cert.public_bytes(serialization.Encoding.DER)).hexdigest()] = "client.crt"
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / "chain.pem").write_bytes(inter.cert_pem + ca.cert_pem)
    (directory / "dhparam.pem").write_text(FFDHE2048)
    # ssl_session_ticket_key's 80-byte format; fastterm refuses a key file others can read, so 0600,
    # owned by nobody when nginx runs as nobody (fastterm, as root, reads it anyway)
    (directory / "ticket.key").write_bytes(os.urandom(80))
    os.chmod(directory / "ticket.key", 0o600)
    if os.geteuid() == 0:
        os.chown(directory / "ticket.key", 65534, 65534)
    return PKI(directory, str(directory / "ca.crt"), labels)


# ---------------------------------------------------------------------------------------
# the echo backend


@dataclass
class Respond:
    """What a backend answers (``Case.respond``); the body defaults to ``NAME METHOD TARGET``."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "text/plain; charset=utf-8"),
                                            ("Server", "diff-backend"))
    body: bytes | None = None
    chunked: bool = False
    delay: float = 0.0   # seconds before the answer: a slow backend (proxy_read_timeout)


@dataclass
class Received:
    backend: str
    msg: Message


class Backends:
    """Three echo backends (``@BACKEND@``, ``@BACKEND2@``, ``@BACKEND3@``) on one record.

    Each records the request (method, target, version, headers in order, body, framing)
    before it answers with ``self.respond``; HTTP/1.0 or ``Connection: close`` requests
    get their answer and a close, others keep the connection.
    """

    def __init__(self, pki: PKI) -> None:
        self.lock = threading.Lock()
        self.log: list[Received] = []
        self.respond = Respond()
        # @TLS_BACKEND@ speaks TLS as "notes" and asks for a client certificate (re-encryption)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(pki.directory / "notes.crt", pki.directory / "notes.key")
        self.tls.load_verify_locations(pki.ca_file)
        self.tls.load_verify_locations(pki.directory / "chain.pem")
        self.tls.verify_mode = ssl.CERT_OPTIONAL
        self.servers = {name: RawBackend(self._handler(name)) for name in BACKEND_NAMES}

    def address(self, name: str) -> str:
        return self.servers[name].address

    def label(self, name: str) -> str:
        return {"BACKEND": "b1", "BACKEND2": "b2", "BACKEND3": "b3", "TLS_BACKEND": "tls"}[name]

    def _handler(self, name: str):
        def handle(conn) -> None:
            if name == "TLS_BACKEND":
                conn.sock = self.tls.wrap_socket(conn.sock, server_side=True)
                conn.reader = Reader(conn.sock, conn.record)
            while (msg := conn.read_request()) is not None:
                if name == "TLS_BACKEND":
                    peer = conn.sock.getpeercert()
                    subject = dict(x[0] for x in peer["subject"]) if peer else {}
                    msg.headers.append(("x-diff-client-certificate", subject.get("commonName", "none")))
                with self.lock:
                    self.log.append(Received(self.label(name), msg))
                    spec = self.respond
                if spec.delay:
                    time.sleep(spec.delay)
                conn.send(self._answer(self.label(name), msg, spec))
                close = msg.version == "HTTP/1.0" or "close" in (msg.header("connection") or "").lower()
                if close:
                    return
        return handle

    @staticmethod
    def _answer(label: str, msg: Message, spec: Respond) -> bytes:
        body = spec.body if spec.body is not None else f"{label} {msg.method} {msg.target}\n".encode()
        head = [f"HTTP/1.1 {spec.status} X"]
        head += [f"{n}: {v}" for n, v in spec.headers]
        bodiless = msg.method == "HEAD" or spec.status in (204, 304)
        if spec.chunked and not bodiless:
            head.append("Transfer-Encoding: chunked")
            payload = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
        else:
            if spec.status not in (204, 304):
                head.append(f"Content-Length: {len(body)}")
            payload = b"" if bodiless else body
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def since(self, mark: int) -> list[Received]:
        with self.lock:
            return list(self.log[mark:])

    def close(self) -> None:
        for s in self.servers.values():
            s.close()


# ---------------------------------------------------------------------------------------
# the two servers


def render(config: CorpusConfig, text: str, run: Path, ports: dict[str, int], pki: PKI,
           backends: Backends) -> str:
    values = {"CERTS": str(pki.directory), **{k: str(v) for k, v in ports.items()},
              **{k: backends.address(k) for k in BACKEND_NAMES}}
    snippet = re.sub(r"@([A-Z0-9_]+)@", lambda m: values[m.group(1)], text)
    return WRAPPER.format(name=config.path.name, run=run, snippet=snippet.rstrip("\n"))


@dataclass
class Side:
    """One running server (nginx or fastterm) and how to reach it."""

    kind: str                     # "nginx" or "fastterm"
    run: Path
    conf: Path
    ports: dict[str, int]
    snippet: str = ""             # the corpus text this side runs (before placeholders)
    proc: subprocess.Popen | None = None
    output: Path | None = None

    def port(self, name: str = "HTTPS_PORT") -> int:
        return self.ports[name]

    def normalise(self, value):
        """This side's port numbers -> their placeholders (recursively)."""
        if isinstance(value, str):
            for name, port in self.ports.items():
                value = re.sub(rf"(?<![0-9]){port}(?![0-9])", f"@{name}@", value)
            return value
        if isinstance(value, list):
            return [self.normalise(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.normalise(v) for v in value)
        return value

    def log(self) -> str:
        text = ""
        for p in (self.output, self.run / "error.log"):
            if p is not None:
                try:
                    text += p.read_text(errors="replace")[-6000:]
                except FileNotFoundError:
                    pass
        return text

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGQUIT: nginx's graceful stop; SIGTERM for fastterm. Then SIGKILL, this PID only.
        self.proc.send_signal(signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def fastterm_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def fastterm_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastterm", *args]


def prepare(kind: str, config: CorpusConfig, base: Path, pki: PKI, backends: Backends,
            text: str | None = None) -> Side:
    run = base / f"{config.name}.{kind}"
    (run / "tmp").mkdir(parents=True, exist_ok=True)
    ports = {p: free_port() for p in PORT_NAMES}
    conf = run / "nginx.conf"
    snippet = config.text if text is None else text
    conf.write_text(render(config, snippet, run, ports, pki, backends))
    # configs/NAME.d/*: files the config includes (relative paths resolve against the
    # nginx.conf's directory), rendered with the same placeholders
    source = CONFIGS / f"{config.name}.d"
    if source.is_dir():
        target = run / source.name
        target.mkdir(exist_ok=True)
        for path in sorted(source.iterdir()):
            rendered = render(config, path.read_text(), run, ports, pki, backends)
            (target / path.name).write_text(rendered.split("### snippet\n", 1)[1].rsplit("\n### end", 1)[0] + "\n")
    if kind == "nginx" and os.geteuid() == 0:
        for d in (run, run / "tmp"):
            os.chown(d, 65534, 65534)
    return Side(kind, run, conf, ports, snippet)


def _nginx_argv(side: Side) -> list[str]:
    argv = [NGINX, "-p", str(side.run), "-c", str(side.conf), "-e", str(side.run / "error.log")]
    if os.geteuid() == 0:
        # Unprivileged like a user's test instance: master and worker run as nobody.
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
    return argv


def start(side: Side) -> None:
    side.output = side.run / "output.log"
    argv = (_nginx_argv(side) if side.kind == "nginx"
            else fastterm_command("run", "--nginx", str(side.conf), "--single"))
    with open(side.output, "wb") as out:
        side.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=fastterm_env(), cwd=side.run)
    text = side.snippet + "".join(p.read_text() for p in side.run.glob("*.d/*"))
    waiting = [p for p in PORT_NAMES if f"@{p}@" in text or str(side.ports[p]) in text]
    tls_ports = {p for p in ("HTTPS_PORT", "HTTPS_PORT2")
                 if re.search(rf"listen\s+\S*(@{p}@|:{side.ports[p]})[^;]*\bssl\b", text)}
    deadline = time.monotonic() + START_TIMEOUT
    for name in waiting:
        while True:
            if side.proc.poll() is not None:
                raise RuntimeError(f"{side.kind} exited with {side.proc.returncode}:\n{side.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side.kind} did not listen on {name} within {START_TIMEOUT:.0f} s:\n"
                                   f"{side.log()}")
            if _up(side.ports[name], name in tls_ports):
                break
            time.sleep(0.05)


def _up(port: int, tls: bool) -> bool:
    try:
        raw = socket.create_connection((HOST, port), timeout=1)
    except OSError:
        return False
    if not tls:
        raw.close()
        return True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.wrap_socket(raw, server_hostname=None).close()
    except ssl.SSLError:
        pass  # a handshake refused by policy: the server is serving
    except OSError:
        return False
    finally:
        raw.close()
    return True


# ---------------------------------------------------------------------------------------
# observations and comparison


Observation = dict[str, object]
COMPARED_RESPONSE_HEADERS = ("strict-transport-security", "location", "content-type", "content-length",
                             "transfer-encoding", "connection", "keep-alive", "server", "cache-control",
                             "set-cookie", "x-backend", "www-authenticate", "retry-after")


def _server_value(value: str) -> str:
    return re.sub(r"^([A-Za-z-]+)/[0-9][0-9A-Za-z.\-]*", r"\1", value)


def _text(data: bytes) -> str:
    if len(data) > 512:
        return f"<{len(data)} bytes sha256={hashlib.sha256(data).hexdigest()[:16]}>"
    text = data.decode("latin-1")
    return re.sub(r"<center>([A-Za-z-]+)/[0-9][0-9A-Za-z.\-]*</center>", r"<center>\1</center>", text)


def response_fields(status: int, version: str, headers: list[tuple[str, str]], body: bytes,
                    framing: str | None, extra_headers: list[str]) -> Observation:
    obs: Observation = {"status": status, "version": version, "body": _text(body)}
    if framing is not None:
        obs["framing"] = framing
    names = dict.fromkeys([*COMPARED_RESPONSE_HEADERS, *extra_headers])
    for name in names:
        values = [v for n, v in headers if n.lower() == name]
        if name == "server":
            values = [_server_value(v) for v in values]
        if name == "connection" and version == "HTTP/1.1":
            values = [v for v in values if v.lower() != "keep-alive"]
        obs[f"header:{name}"] = " | ".join(values) if values else None
    return obs


def backend_fields(received: list[Received]) -> Observation:
    obs: Observation = {"backend.count": len(received)}
    for i, r in enumerate(received):
        p = "backend." if i == 0 else f"backend[{i}]."
        m = r.msg
        obs[p + "name"] = r.backend
        obs[p + "request-line"] = m.start_line
        framing = "chunked" if m.chunked else ("content-length" if m.has("content-length") else "none")
        obs[p + "framing"] = framing
        obs[p + "body"] = _text(m.body)
        names: dict[str, list[str]] = {}
        for n, v in m.headers:
            names.setdefault(n.lower(), []).append(v)
        for n, vs in names.items():
            obs[p + f"header:{n}"] = " | ".join(vs)
        obs[p + "header-order"] = [n.lower() for n, _ in m.headers]
    return obs


@dataclass
class Difference:
    field: str
    nginx: object
    fastterm: object
    allowed_by: object = None   # the allow-list entry that covers it
    bug: object = None          # or the known bug (known_bugs.py) that explains it


def compare(config: str, case_id: str, a: Observation, b: Observation, allow: list,
            bugs: list = ()) -> list[Difference]:
    """Every field that differs, with the allow-list entry or known bug that covers it."""
    generated = a.get("backend.count") == 0 and b.get("backend.count") == 0
    out = []
    for f in dict.fromkeys([*a, *b]):
        va, vb = a.get(f), b.get(f)
        if f.endswith("header-order") and isinstance(va, list) and isinstance(vb, list):
            # the order of first appearances of the names both sent (a name only one side sent,
            # or sent more often, shows in its own header field)
            va, vb = [n for n in dict.fromkeys(va) if n in vb], [n for n in dict.fromkeys(vb) if n in va]
        if va == vb:
            continue
        d = Difference(f, va, vb)
        d.allowed_by = next((e for e in allow if e.covers(config, case_id, f, va, vb, generated, a, b)), None)
        if d.allowed_by is None:
            d.bug = next((e for e in bugs if e.covers(config, case_id, f, va, vb, generated, a, b)), None)
        out.append(d)
    return out


def format_differences(config: str, case_id: str, diffs: list[Difference], a: Observation, b: Observation,
                       what: str = "neither allow-listed nor a known bug") -> str:
    lines = [f"{config} / {case_id}: {len(diffs)} difference(s) {what}"]
    for d in diffs:
        lines.append(f"  {d.field}:\n      nginx:    {d.nginx!r}\n      fastterm: {d.fastterm!r}")
    lines.append("  (nginx observation: " + json.dumps(a, default=str)[:1500] + ")")
    lines.append("  (fastterm observation: " + json.dumps(b, default=str)[:1500] + ")")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# clients


def client_context(pki: PKI, *, alpn: tuple[str, ...] | None = ("http/1.1",), verify: bool = True,
                   minimum: ssl.TLSVersion | None = None, maximum: ssl.TLSVersion | None = None,
                   ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False   # an unknown SNI gets the default server's certificate
    if verify:
        ctx.load_verify_locations(pki.ca_file)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if ciphers:
        ctx.set_ciphers(ciphers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # the TLS 1.1 offer, refused by both
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def tls_connect(side: Side, port: str, sni: str | None, ctx: ssl.SSLContext,
                session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, side.port(port)), timeout=CLIENT_TIMEOUT)
    try:
        return ctx.wrap_socket(raw, server_hostname=sni, session=session)
    except BaseException:
        raw.close()
        raise


def tls_error(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"refused ({exc.reason or type(exc).__name__})"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, EOFError)):
        return "refused (connection closed)"
    return f"refused ({type(exc).__name__})"


def request_head(method: str, target: str, host: str | None, headers: tuple, version: str,
                 body: bytes, chunked: bool) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{n}: {v}" for n, v in headers]
    named = {n.lower() for n, _ in headers}
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif body and "content-length" not in named:
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if chunked:
        step = 700
        for i in range(0, len(body), step):
            piece = body[i:i + step]
            data += b"%x\r\n" % len(piece) + piece + b"\r\n"
        data += b"0\r\n\r\n"
    else:
        data += body
    return data


def read_reply(sock: socket.socket, method: str) -> Message:
    return read_response(Reader(sock), method)


def message_framing(msg: Message, method: str) -> str:
    if msg.chunked:
        return "chunked"
    if msg.has("content-length"):
        return "content-length"
    if msg.close_delimited:
        return "close"
    return "none"


def closed_after(sock: socket.socket, wait: float) -> bool:
    """True when the peer closes within ``wait`` seconds (bytes it sends first are dropped)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.02, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        except (ssl.SSLError, OSError):
            return True
        if not data:
            return True
    return False


def s_client(side: Side, port: str, sni: str | None, args: list[str], pki: PKI) -> Observation:
    argv = [OPENSSL, "s_client", "-connect", f"{HOST}:{side.port(port)}", "-CAfile", pki.ca_file,
            "-showcerts", *args]
    argv += ["-servername", sni] if sni else ["-noservername"]
    try:
        res = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=10)
    except subprocess.TimeoutExpired:
        return {"tls.outcome": "s_client timed out"}
    out = res.stdout + res.stderr
    m = re.search(r"^(?:New|Reused), (\S+), Cipher is (\S+)", out, re.MULTILINE)
    if not m or m.group(2) == "(NONE)":
        alert = re.search(r"alert ([a-z ]+?)(?::|\n|$)", out)
        return {"tls.outcome": "refused (" + (alert.group(1) if alert else "no handshake") + ")"}
    obs: Observation = {"tls.outcome": "ok", "tls.version": m.group(1), "tls.cipher": m.group(2)}
    alpn = re.search(r"^ALPN protocol: (\S+)", out, re.MULTILINE)
    obs["tls.alpn"] = alpn.group(1) if alpn else None
    temp = re.search(r"^Server Temp Key: ([^,\n]+)", out, re.MULTILINE)
    obs["tls.group"] = temp.group(1) if temp else None
    sig = re.search(r"^Peer signature type: (\S+)", out, re.MULTILINE)
    obs["tls.signature"] = sig.group(1) if sig else None
    obs["tls.chain-length"] = len(re.findall(r"^ *\d+ s:", out, re.MULTILINE))
    ders = re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", out, re.DOTALL)
    if ders:
        import base64
        obs["tls.certificate"] = pki.label(base64.b64decode("".join(ders[0].split())))
    verify = re.search(r"Verify return code: (\d+)", out)
    obs["tls.verify"] = verify.group(1) if verify else None
    return obs


def curl(side: Side, port: str, host: str, target: str, pki: PKI, args: list[str],
         headers: tuple = ()) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """(status, http version, headers, body) through curl, names resolved to 127.0.0.1."""
    p = side.port(port)
    scheme = "http" if port == "HTTP_PORT" else "https"
    url = f"{scheme}://{host}:{p}{target}"
    head_file = side.run / "curl.head"
    argv = [CURL, "-sS", "--max-time", "10", "--resolve", f"{host}:{p}:{HOST}", "--cacert", pki.ca_file,
            "-D", str(head_file), "-o", "-", "-w", "\n%{http_version}", *args, url]
    for n, v in headers:
        argv[1:1] = ["-H", f"{n}: {v}"]
    res = subprocess.run(argv, check=False, capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise ConnectionError(f"curl exit {res.returncode}: {res.stderr.decode(errors='replace').strip()}")
    body, _, version = res.stdout.rpartition(b"\n")
    raw = head_file.read_bytes().decode("latin-1")
    blocks = [b for b in raw.split("\r\n\r\n") if b.strip()]
    lines = blocks[-1].split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = []
    for line in lines[1:]:
        n, _, v = line.partition(":")
        hdrs.append((n.strip(), v.strip()))
    return status, "HTTP/" + version.decode(), hdrs, body


def http_client(side: Side, port: str, sni: str, host: str | None, method: str, target: str,
                headers: tuple, body: bytes, pki: PKI) -> tuple[int, str, list[tuple[str, str]], bytes]:
    ctx = client_context(pki)
    conn = http.client.HTTPSConnection(HOST, side.port(port), context=ctx, timeout=CLIENT_TIMEOUT)
    # http.client sends the connect host as SNI; aim it at the case's name instead.
    conn._create_connection = lambda addr, timeout, source: socket.create_connection(addr, timeout)
    orig_wrap = ctx.wrap_socket
    ctx.wrap_socket = lambda sock, server_hostname=None, **kw: orig_wrap(sock, server_hostname=sni, **kw)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for n, v in headers:
            conn.putheader(n, v)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, f"HTTP/{resp.version // 10}.{resp.version % 10}", resp.getheaders(), data
    finally:
        conn.close()


def httpx_request(side: Side, port: str, sni: str, host: str | None, method: str, target: str,
                  headers: tuple, body: bytes, pki: PKI, http2: bool) -> tuple[int, str, list, bytes]:
    import httpx

    ctx = client_context(pki, alpn=None)
    with httpx.Client(verify=ctx, http2=http2, timeout=CLIENT_TIMEOUT, trust_env=False) as c:
        hdrs = [(n, v) for n, v in headers]
        if host is not None:
            hdrs.insert(0, ("Host", host))
        req = c.build_request(method, f"https://{HOST}:{side.port(port)}{target}", headers=hdrs,
                              content=body or None, extensions={"sni_hostname": sni})
        resp = c.send(req)
        return resp.status_code, resp.http_version, list(resp.headers.multi_items()), resp.content


# ---------------------------------------------------------------------------------------
# cases


@dataclass
class Ctx:
    """What a case needs besides the side it runs on."""

    pki: PKI
    backends: Backends
    config: CorpusConfig


class Case:
    id: str = "case"
    respond: Respond | None = None

    def run(self, side: Side, ctx: Ctx) -> Observation:
        raise NotImplementedError


# Client offers for handshakes: name -> (kind, options).
OFFERS: dict[str, dict] = {
    "default": {"alpn": ("h2", "http/1.1")},
    "tls1.2": {"maximum": ssl.TLSVersion.TLSv1_2},
    "tls1.3": {"minimum": ssl.TLSVersion.TLSv1_3},
    "tls1.1": {"minimum": ssl.TLSVersion.TLSv1_1, "maximum": ssl.TLSVersion.TLSv1_1,
               "ciphers": "DEFAULT:@SECLEVEL=0"},
    # TLS 1.2 suites in the client's order of preference: the server's order wins when it prefers its own
    "tls1.2-client-order": {"maximum": ssl.TLSVersion.TLSv1_2,
                            "ciphers": "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                                       "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                       "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"},
    # no ChaCha20: the server's order shows without SSL_OP_PRIORITIZE_CHACHA in play
    "tls1.2-aes256-first": {"maximum": ssl.TLSVersion.TLSv1_2,
                            "ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                       "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"},
    "tls1.2-rsa-only": {"maximum": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-RSA-AES128-GCM-SHA256"},
    "tls1.2-ecdsa-only": {"maximum": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"},
    "tls1.2-cbc-sha": {"maximum": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-RSA-AES128-SHA:AES256-SHA"},
    "tls1.2-dhe": {"maximum": ssl.TLSVersion.TLSv1_2, "ciphers": "DHE-RSA-AES128-GCM-SHA256"},
    "alpn-h2": {"alpn": ("h2",)},
    "alpn-http1.1": {"alpn": ("http/1.1",)},
    "alpn-none": {"alpn": None},
}
S_CLIENT_OFFERS: dict[str, list[str]] = {
    "s_client": [],
    "s_client-tls1.3-rsa": ["-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384"],
    "s_client-tls1.3-chacha-first": ["-tls1_3", "-ciphersuites",
                                     "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"],
    "s_client-tls1.3-aes256-first": ["-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"],
    "s_client-x448": ["-groups", "X448"],
    "s_client-p384": ["-groups", "P-384"],
}


@dataclass
class Handshake(Case):
    sni: str | None
    offer: str = "default"
    port: str = "HTTPS_PORT"

    @property
    def id(self) -> str:
        p = "" if self.port == "HTTPS_PORT" else f"@{self.port}:"
        return f"tls {p}{self.sni or '(no SNI)'} {self.offer}"

    def run(self, side: Side, ctx: Ctx) -> Observation:
        if self.offer in S_CLIENT_OFFERS:
            return s_client(side, self.port, self.sni, S_CLIENT_OFFERS[self.offer], ctx.pki)
        cctx = client_context(ctx.pki, **{"alpn": ("http/1.1",), **OFFERS[self.offer]})
        try:
            with tls_connect(side, self.port, self.sni, cctx) as s:
                return {"tls.outcome": "ok", "tls.version": s.version(), "tls.cipher": s.cipher()[0],
                        "tls.alpn": s.selected_alpn_protocol(),
                        "tls.certificate": ctx.pki.label(s.getpeercert(binary_form=True))}
        except (OSError, EOFError) as exc:
            return {"tls.outcome": tls_error(exc)}


@dataclass
class Resume(Case):
    """Two connections; the second offers the first's session (ID or ticket)."""

    sni: str
    version: str = "tls1.2"
    host: str | None = None
    port: str = "HTTPS_PORT"

    @property
    def id(self) -> str:
        p = "" if self.port == "HTTPS_PORT" else f"@{self.port}:"
        return f"resume {p}{self.sni} {self.version}"

    def run(self, side: Side, ctx: Ctx) -> Observation:
        cctx = client_context(ctx.pki, **OFFERS[self.version])
        obs: Observation = {}
        try:
            with tls_connect(side, self.port, self.sni, cctx) as s:
                # a request first: TLS 1.3 tickets arrive after the handshake
                s.sendall(request_head("GET", "/", self.host or self.sni, (), "HTTP/1.1", b"", False))
                read_reply(s, "GET")
                sess = s.session
            obs["tls.ticket"] = sess.has_ticket
            obs["tls.ticket-lifetime"] = sess.ticket_lifetime_hint if sess.has_ticket else None
            with tls_connect(side, self.port, self.sni, cctx, session=sess) as s2:
                obs["tls.resumed"] = s2.session_reused
        except (OSError, EOFError) as exc:
            obs["tls.outcome"] = tls_error(exc)
        return obs


@dataclass
class Request(Case):
    """One HTTP request on a fresh connection.

    ``client``: ``wire`` (raw TLS socket, every byte), ``http.client``, ``httpx``,
    ``httpx-h2``, ``curl``, ``curl-h2``. ``port``: ``HTTP_PORT`` for plain HTTP.
    ``host`` is the Host field (None: none); ``sni`` defaults to the host's name part.
    """

    host: str | None
    target: str = "/"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    chunked: bool = False
    version: str = "HTTP/1.1"
    client: str = "wire"
    port: str = "HTTPS_PORT"
    sni: str | None = ""
    respond: Respond | None = None
    label: str = ""
    raw: bytes | None = None       # send these bytes instead of a built request (wire only)

    @property
    def id(self) -> str:
        if self.label:
            return self.label
        where = "http" if self.port == "HTTP_PORT" else ("https" if self.port == "HTTPS_PORT" else self.port)
        via = "" if self.client == "wire" else f" via {self.client}"
        return f"{self.method} {where} {self.host or '(no Host)'} {self.target}{via}"

    def _sni(self) -> str | None:
        if self.sni != "":
            return self.sni
        return self.host.split(":")[0] if self.host else None

    def run(self, side: Side, ctx: Ctx) -> Observation:
        ctx.backends.respond = self.respond or Respond()
        mark = ctx.backends.mark()
        extra = ctx.config.added_headers() + [n.lower() for n, _ in (self.respond or Respond()).headers]
        try:
            obs = self._send(side, ctx, extra)
        except (OSError, EOFError, ValueError) as exc:
            obs = {"status": f"no response ({type(exc).__name__})"}
        except Exception as exc:  # noqa: BLE001 (httpx errors: a client-side verdict, compared)
            obs = {"status": f"no response ({type(exc).__name__})"}
        obs.update(backend_fields(ctx.backends.since(mark)))
        return obs

    def _send(self, side: Side, ctx: Ctx, extra: list[str]) -> Observation:
        if self.client == "wire":
            if self.port == "HTTP_PORT":
                sock = socket.create_connection((HOST, side.port(self.port)), timeout=CLIENT_TIMEOUT)
            else:
                sock = tls_connect(side, self.port, self._sni(), client_context(ctx.pki))
            with sock:
                sock.sendall(self.raw if self.raw is not None else
                             request_head(self.method, self.target, self.host, self.headers, self.version,
                                          self.body, self.chunked))
                msg = read_reply(sock, self.method)
            return response_fields(msg.status, msg.version, msg.headers, msg.body,
                                   message_framing(msg, self.method), extra)
        if self.client == "http.client":
            status, version, headers, body = http_client(side, self.port, self._sni(), self.host, self.method,
                                                         self.target, self.headers, self.body, ctx.pki)
        elif self.client in ("httpx", "httpx-h2"):
            status, version, headers, body = httpx_request(side, self.port, self._sni(), self.host,
                                                           self.method, self.target, self.headers, self.body,
                                                           ctx.pki, self.client == "httpx-h2")
        elif self.client in ("curl", "curl-h2"):
            args = ["--http2"] if self.client == "curl-h2" else ["--http1.1"]
            if self.method != "GET":
                args += ["-X", self.method]
            if self.body:
                args += ["--data-binary", self.body.decode("latin-1")]
            status, version, headers, body = curl(side, self.port, self.host, self.target, ctx.pki, args,
                                                  self.headers)
        else:
            raise ValueError(f"unknown client {self.client}")
        return response_fields(status, version, headers, body, None, extra)


@dataclass
class Sequence(Case):
    """``count`` requests, one per connection: how many each backend served, and in which
    order (rotated to start at the smallest name: the starting point is not compared)."""

    request: Request
    count: int = 6

    @property
    def id(self) -> str:
        return f"{self.count}x {self.request.id}"

    def run(self, side: Side, ctx: Ctx) -> Observation:
        names = []
        statuses = []
        for _ in range(self.count):
            obs = self.request.run(side, ctx)
            names.append(obs.get("backend.name"))
            statuses.append(obs.get("status"))
        counts = {n: names.count(n) for n in sorted(set(names), key=str)}
        # round robin's order, not its starting point (that depends on the requests before)
        start = min(range(len(names)), key=lambda i: (str(names[i]), i)) if names else 0
        return {"statuses": statuses, "backend.distribution": counts,
                "backend.rotation": names[start:] + names[:start]}


@dataclass
class KeepAlive(Case):
    """``count`` requests on one connection, then ``idle`` seconds of silence: what closed when."""

    host: str
    count: int = 3
    idle: float = 0.0
    target: str = "/"

    @property
    def id(self) -> str:
        return f"keep-alive {self.count} requests, idle {self.idle:g}s"

    def run(self, side: Side, ctx: Ctx) -> Observation:
        ctx.backends.respond = Respond()
        obs: Observation = {}
        with tls_connect(side, "HTTPS_PORT", self.host, client_context(ctx.pki)) as sock:
            reader = Reader(sock)
            for i in range(self.count):
                try:
                    sock.sendall(request_head("GET", self.target, self.host, (), "HTTP/1.1", b"", False))
                    msg = read_message(reader, method="GET")
                    conn = msg.header("connection")
                    conn = None if conn and conn.lower() == "keep-alive" else conn   # the HTTP/1.1 default
                    obs[f"response[{i}]"] = (msg.status, conn, msg.header("keep-alive"))
                except (OSError, EOFError) as exc:
                    obs[f"response[{i}]"] = f"no response ({type(exc).__name__})"
                    return obs
            if self.idle:
                obs["open-after-idle"] = not closed_after(sock, self.idle)
        return obs


@dataclass
class Custom(Case):
    """A case written as a function ``fn(side, ctx) -> Observation``."""

    name: str
    fn: Callable[[Side, Ctx], Observation]

    @property
    def id(self) -> str:
        return self.name

    def run(self, side: Side, ctx: Ctx) -> Observation:
        return self.fn(side, ctx)


def case_runner(case: Case, side: Side, ctx: Ctx) -> Observation:
    return {k: side.normalise(v) for k, v in case.run(side, ctx).items()}


def main(argv: list[str]) -> int:
    """``python tests/differential/diffharness.py CONFIG [SUBSTRING]``: run CONFIG's cases (those
    whose id contains SUBSTRING) against nginx alone and print what it answered; for writing
    a config and its cases. ``--fastterm`` runs fastterm instead."""
    import tempfile

    from cases import cases_for

    kind = "fastterm" if "--fastterm" in argv else "nginx"
    argv = [a for a in argv if a != "--fastterm"]
    cfg = next(c for c in load_corpus() if c.name == argv[0])
    base = Path(tempfile.mkdtemp(prefix="fastterm-diff-"))
    os.chmod(base, 0o755)
    pki = make_pki(base / "certs")
    backends = Backends(pki)
    text = (CONFIGS / cfg.nginx_config).read_text() if cfg.nginx_config and kind == "nginx" else None
    side = prepare(kind, cfg, base, pki, backends, text)
    try:
        start(side)
        for case in cases_for(cfg):
            if len(argv) < 2 or argv[1] in case.id:
                obs = case_runner(case, side, Ctx(pki, backends, cfg))
                print(f"== {case.id}")
                for k, v in obs.items():
                    if v is not None:
                        print(f"   {k}: {v!r}")
    finally:
        side.stop()
        backends.close()
        print(side.log()[-3000:], file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main(sys.argv[1:]))
