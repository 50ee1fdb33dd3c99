"""ACME issuance and renewal (fastterm/certs/acme.py) against Debian's pebble, on loopback.

pebble validates at the ``httpPort``/``tlsPort`` of its config, resolving every name through
pebble-challtestsrv's DNS (127.0.0.1 for all), so fastterm's listeners bind those ports. The
Debian package has no test certificates: the fixture makes a CA and a localhost certificate
for pebble's own HTTPS and gives fastterm that CA as ``ca_file``. Pebble's issuing root changes
on every start; it is fetched from the management port to verify what fastterm serves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from harness import HOST, free_port, stop_process, to_toml, wait_for

from fastterm.demo import issue_cert, make_ca

pytestmark = pytest.mark.skipif(not (shutil.which("pebble") and shutil.which("pebble-challtestsrv")),
                                reason="pebble and pebble-challtestsrv not installed (apt-get install pebble)")

NAMES = ("a.acme.test", "b.acme.test")


class Pebble:
    """pebble + pebble-challtestsrv on free loopback ports; ``stop``/``start`` keep the ports."""

    def __init__(self, tmp_path: Path, validity: int | None = None):
        self.dir = tmp_path / "pebble"
        self.dir.mkdir()
        ca = make_ca("pebble test root")
        leaf = issue_cert(ca, ["localhost", "127.0.0.1"], "EC")
        (self.dir / "cert.pem").write_bytes(leaf.cert_pem)
        (self.dir / "key.pem").write_bytes(leaf.key_pem)
        self.ca_file = str(self.dir / "ca.pem")
        Path(self.ca_file).write_bytes(ca.cert_pem)
        self.port, self.management, self.dns = free_port(), free_port(), free_port()
        self.http_port, self.tls_port = free_port(), free_port()
        config = {"listenAddress": f"{HOST}:{self.port}", "managementListenAddress": f"{HOST}:{self.management}",
                  "certificate": str(self.dir / "cert.pem"), "privateKey": str(self.dir / "key.pem"),
                  "httpPort": self.http_port, "tlsPort": self.tls_port, "ocspResponderURL": "",
                  "externalAccountBindingRequired": False}
        if validity:
            config["certificateValidityPeriod"] = validity
        (self.dir / "pebble.json").write_text(json.dumps({"pebble": config}))
        self.directory = f"https://{HOST}:{self.port}/dir"
        self.log = open(self.dir / "pebble.log", "ab")  # noqa: SIM115 (closed in close())
        self.dns_management = free_port()
        self.dns_proc = subprocess.Popen(
            ["pebble-challtestsrv", "-defaultIPv4", HOST, "-defaultIPv6", "", "-dns01", f"{HOST}:{self.dns}",
             "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-management", f"{HOST}:{self.dns_management}"], stdout=self.log, stderr=subprocess.STDOUT)
        self.proc = None
        assert wait_for(self._dns_up, timeout=10), (self.dir / "pebble.log").read_text()
        self.start()

    def start(self) -> None:
        env = {"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0",
               "PEBBLE_AUTHZREUSE": "0"}
        self.proc = subprocess.Popen(["pebble", "-config", str(self.dir / "pebble.json"), "-dnsserver",
                                      f"{HOST}:{self.dns}", "-strict=false"], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        assert wait_for(self._up, timeout=10), (self.dir / "pebble.log").read_text()

    def _up(self) -> bool:
        try:
            socket.create_connection((HOST, self.port), timeout=0.5).close()
            socket.create_connection((HOST, self.management), timeout=0.5).close()
            return True
        except OSError:
            return False

    def dns_answer(self, host: str, address: str) -> None:
        """challtestsrv answers ``address`` for ``host`` (instead of 127.0.0.1)."""
        body = json.dumps({"host": host + ".", "addresses": [address]}).encode()
        with socket.create_connection((HOST, self.dns_management), timeout=5) as s:
            s.sendall(b"POST /add-a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert s.recv(100).startswith(b"HTTP/1.1 200")

    def _dns_up(self) -> bool:
        try:
            socket.create_connection((HOST, self.dns_management), timeout=0.5).close()
            return True
        except OSError:
            return False

    def root(self) -> str:
        """The PEM root pebble issues under now (it changes on every start)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        with socket.create_connection((HOST, self.management), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.split(b"\r\n\r\n", 1)[1].decode()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)

    def close(self) -> None:
        self.stop()
        stop_process(self.dns_proc, 5)
        self.log.close()


@pytest.fixture
def pebble(tmp_path):
    made = []

    def make(validity: int | None = None) -> Pebble:
        made.append(Pebble(tmp_path, validity))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture
def acme_fastterm(tmp_path, python, subprocess_env):
    """Factory: fastterm in front of nothing (every server answers ``return 200``), its
    servers on pebble's validation ports: the TLS listener on tlsPort, [[redirect]] on httpPort."""
    started = []

    def start(pb: Pebble, servers: list[dict], *, redirect: bool = True, workers: int = 2, top: dict | None = None):
        listen = f"{HOST}:{pb.tls_port}"
        state = str(tmp_path / "acme-state")
        config = {"workers": workers, "log_level": "info", "error_log": str(tmp_path / "error.log"),
                  "certificate_check_interval": 0.2,
                  "acme": {k: v for k, v in (("directory", pb.directory), ("ca_file", pb.ca_file),
                                             ("state_dir", state), ("email", "ops@acme.test")) if v},
                  "upstream": [{"name": "app", "servers": [f"{HOST}:1"]}],
                  "server": [dict({"listen": [listen], "return": {"status": 200, "text": "ok"}}, **s)
                             for s in servers], **(top or {})}
        if redirect:
            config["redirect"] = [{"listen": [f"{HOST}:{pb.http_port}"]}]
        path = tmp_path / "fastterm.toml"
        path.write_text(to_toml(config) + "\n")
        out = open(tmp_path / "fastterm.out", "wb")  # noqa: SIM115 (closed at teardown)
        proc = subprocess.Popen([python, "-m", "fastterm", "run", "-c", str(path)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=subprocess_env,
                                cwd=tmp_path)
        started.append((proc, out))
        ft = AcmeFastterm(proc, pb, path, state, tmp_path, workers)
        assert wait_for(ft.listening, timeout=15), ft.log()
        return ft

    yield start
    for proc, out in started:
        stop_process(proc)
        out.close()
    logs = "".join((tmp_path / n).read_text(errors="replace") for n in ("fastterm.out", "error.log")
                   if (tmp_path / n).exists())
    assert "Traceback (most recent call last)" not in logs, logs[-6000:]


class AcmeFastterm:
    def __init__(self, proc, pb: Pebble, config_path: Path, state_dir: str, tmp_path: Path, workers: int):
        self.proc, self.pb, self.config_path, self.state_dir, self.tmp = proc, pb, config_path, state_dir, tmp_path
        self.workers = workers

    def log(self) -> str:
        return "".join((self.tmp / n).read_text(errors="replace") for n in ("fastterm.out", "error.log")
                       if (self.tmp / n).exists())

    def listening(self) -> bool:
        assert self.proc.poll() is None, self.log()
        try:
            socket.create_connection((HOST, self.pb.tls_port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def peer_cert(self, name: str, root: str | None = None) -> tuple[dict | None, bytes]:
        """(the verified certificate's fields, or None when it does not verify to ``root``; its DER)."""
        ctx = ssl.create_default_context(cadata=root) if root else ssl._create_unverified_context()
        with socket.create_connection((HOST, self.pb.tls_port), timeout=5) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname=name) as s:
                    return (s.getpeercert() if root else None), s.getpeercert(binary_form=True)
            except ssl.SSLCertVerificationError:
                return None, b""

    def issued(self, name: str, root: str) -> bool:
        """The certificate the agent issued last for ``name`` serves in every worker (each logs
        it), and verifies to ``root``."""
        serial = (self.acme_state().get(name) or {}).get("serial")
        worker_log = self.tmp / "error.log"
        if serial is None or worker_log.read_text(errors="replace").count(f"(serial {serial}, ") < self.workers:
            return False
        return self.peer_cert(name, root)[0] is not None

    def acme_state(self) -> dict:
        try:
            return json.loads((Path(self.state_dir) / "state.json").read_text())
        except (OSError, ValueError):
            return {}


def _serial(der: bytes) -> int:
    from cryptography import x509

    return x509.load_der_x509_certificate(der).serial_number


def test_http01_issues_for_every_name(pebble, acme_fastterm, python, subprocess_env):
    """Two names over HTTP-01 (answered by whichever of two workers pebble reaches on the
    port-80 listener): a self-signed placeholder first, then chains that verify to pebble's
    root, with no restart; ``fastterm certs`` shows the ACME state."""
    pb = pebble()
    admin = free_port()
    ft = acme_fastterm(pb, [{"server_names": list(NAMES)}],
                       top={"admin": f"{HOST}:{admin}", "pid_file": str(pb.dir.parent / "ft.pid")})
    root = pb.root()
    for name in NAMES:
        assert wait_for(lambda n=name: ft.issued(n, root), timeout=30), ft.log()
    assert "temporary self-signed certificate" in ft.log()
    out = subprocess.run([python, "-m", "fastterm", "certs", "-c", str(ft.config_path)], capture_output=True,
                         text=True, timeout=30, env=subprocess_env, check=False)
    assert "acme       " in out.stdout and "next renewal" in out.stdout, out.stdout + out.stderr
    for name in NAMES:
        assert ft.acme_state()[name]["last_error"] is None
    with socket.create_connection((HOST, admin), timeout=5) as c:
        c.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := c.recv(65536):
            body += chunk
    status = json.loads(body.split(b"\r\n\r\n", 1)[1])
    assert {a["name"]: a["serial"] for a in status["acme"]} == {n: ft.acme_state()[n]["serial"] for n in NAMES}
    # A curl client sees the same chain verify (by its own TLS stack)
    Path(ft.tmp / "root.pem").write_text(root)
    got = subprocess.run(["curl", "-sS", "--cacert", str(ft.tmp / "root.pem"), "--resolve",
                          f"{NAMES[0]}:{pb.tls_port}:{HOST}", f"https://{NAMES[0]}:{pb.tls_port}/"],
                         capture_output=True, text=True, timeout=10, check=False)
    assert got.stdout == "ok", got.stderr
    key_modes = {p.name: p.stat().st_mode & 0o777 for p in Path(ft.state_dir).rglob("*.pem")}
    assert key_modes and set(key_modes.values()) == {0o600}, key_modes


def test_tls_alpn01_with_only_the_tls_listener(pebble, acme_fastterm):
    """TLS-ALPN-01: no port-80 listener at all; the validation handshake gets the challenge
    certificate, and the issued one serves afterwards (no file polling here: the agent's SIGUSR2
    has the workers read it)."""
    pb = pebble()
    ft = acme_fastterm(pb, [{"server_names": [NAMES[0]],
                             "acme": {"directory": pb.directory, "ca_file": pb.ca_file, "challenge": "tls-alpn-01",
                                      "state_dir": str(pb.dir.parent / "acme-state")}}], redirect=False,
                       top={"certificate_check_interval": 0})
    root = pb.root()
    assert wait_for(lambda: ft.issued(NAMES[0], root), timeout=30), ft.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_workers_that_dropped_root_answer_both_challenges(pebble, acme_fastterm):
    """user = nobody: the workers cannot read the state dir's keys, yet they answer HTTP-01 and
    TLS-ALPN-01 (the challenge directories are traversable, their files world-readable), and the
    master, which follows the certificate files for them, serves what the CA issued."""
    pb = pebble()
    state = tempfile.mkdtemp(prefix="fastterm-acme-")   # /tmp: a path nobody can traverse to
    os.chmod(state, 0o711)
    try:
        acme = {"directory": pb.directory, "ca_file": pb.ca_file, "state_dir": state}
        ft = acme_fastterm(pb, [{"server_names": [NAMES[0]], "acme": acme},
                                {"server_names": [NAMES[1]], "acme": dict(acme, challenge="tls-alpn-01")}],
                           top={"user": "nobody", "group": "nogroup"})
        root = pb.root()
        for name in NAMES[:2]:   # a new generation serves it (no worker polls files): it verifies
            assert wait_for(lambda n=name: ft.peer_cert(n, root)[0] is not None, timeout=30), ft.log()
        assert "reloading, the workers run as nobody" in ft.log(), ft.log()[-3000:]
        keys = [p for p in Path(state).rglob("*.pem")]
        assert keys and all(p.stat().st_mode & 0o077 == 0 for p in keys), keys
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_a_name_pebble_cannot_validate(pebble, acme_fastterm, python, subprocess_env):
    """challtestsrv sends pebble to 127.0.0.2 for one name, where nothing listens: that name's
    error is recorded and shown by ``fastterm certs``, it keeps its placeholder and backs off,
    and the other names of the same block are issued."""
    pb = pebble()
    pb.dns_answer("bad.acme.test", "127.0.0.2")
    ft = acme_fastterm(pb, [{"server_names": [NAMES[0], "bad.acme.test", NAMES[1]]}])
    root = pb.root()
    for name in (NAMES[0], NAMES[1]):
        assert wait_for(lambda n=name: ft.issued(n, root), timeout=30), ft.log()
    assert wait_for(lambda: (ft.acme_state().get("bad.acme.test") or {}).get("last_error"), timeout=30), ft.log()
    state = ft.acme_state()["bad.acme.test"]
    assert state["failures"] >= 1 and state["next_attempt"] > state["last_attempt"]
    assert "127.0.0.2" in state["last_error"] or "connection" in state["last_error"].lower(), state
    assert not ft.issued("bad.acme.test", root)
    out = subprocess.run([python, "-m", "fastterm", "certs", "-c", str(ft.config_path)], capture_output=True,
                         text=True, timeout=30, env=subprocess_env, check=False)
    assert "bad.acme.test" in out.stdout and "last error" in out.stdout, out.stdout


def _get(ft: AcmeFastterm, name: str, root: str) -> tuple[bool, int]:
    """One request on a new verified TLS connection: (answered 200 ok, the serial it was served)."""
    ctx = ssl.create_default_context(cadata=root)
    with socket.create_connection((HOST, ft.pb.tls_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=name) as s:
        serial = _serial(s.getpeercert(binary_form=True))
        s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok"), serial


def test_renewal_under_load(pebble, acme_fastterm):
    """15-second certificates renew at two thirds of their life while a client makes new
    verified connections back to back (bounded in count and time): none fails, new handshakes
    get the new serial, and a keep-alive connection opened before the renewal still answers."""
    pb = pebble(validity=15)
    ft = acme_fastterm(pb, [{"server_names": [NAMES[0]]}])
    root = pb.root()
    assert wait_for(lambda: ft.issued(NAMES[0], root), timeout=30), ft.log()
    first = _get(ft, NAMES[0], root)[1]
    ctx = ssl.create_default_context(cadata=root)
    kept = ctx.wrap_socket(socket.create_connection((HOST, pb.tls_port), timeout=5), server_hostname=NAMES[0])
    request = f"GET / HTTP/1.1\r\nHost: {NAMES[0]}\r\n\r\n".encode()
    kept.sendall(request)
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    failures, serials, count = [], set(), 0
    deadline = time.monotonic() + 45   # renewal is due 10 s in; a loaded box is slower
    while count < 5000 and time.monotonic() < deadline:
        count += 1
        try:
            ok, serial = _get(ft, NAMES[0], root)
        except (OSError, ssl.SSLError) as exc:
            failures.append(repr(exc))
            continue
        if not ok:
            failures.append("bad answer")
        serials.add(serial)
        if len(serials) > 1 and count % 20 == 0:
            break
        time.sleep(0.005)   # paced so that the count bound outlasts the renewal on a fast box
    assert not failures, (failures[:5], count)
    assert len(serials) > 1 and first in serials, (first, serials, count, ft.acme_state(), ft.log()[-3000:])
    kept.sendall(request)
    assert kept.recv(65536).startswith(b"HTTP/1.1 200")
    kept.close()


def test_renewal_while_pebble_is_down(pebble, acme_fastterm):
    """pebble stops before a renewal: the attempt fails and is recorded, the old certificate
    keeps serving; once pebble is back (with a new root), the retry issues a new one."""
    pb = pebble(validity=21)   # renewal due 14 s in, the old certificate valid 7 s more
    ft = acme_fastterm(pb, [{"server_names": [NAMES[0]]}])
    root = pb.root()
    assert wait_for(lambda: ft.issued(NAMES[0], root), timeout=30), ft.log()
    first = _get(ft, NAMES[0], root)[1]
    pb.stop()
    assert wait_for(lambda: (ft.acme_state().get(NAMES[0]) or {}).get("last_error"), timeout=30), ft.log()
    assert "unreachable" in ft.acme_state()[NAMES[0]]["last_error"]
    assert _get(ft, NAMES[0], root) == (True, first)
    pb.start()
    new_root = pb.root()
    assert wait_for(lambda: ft.issued(NAMES[0], new_root), timeout=30), ft.log()
    assert _get(ft, NAMES[0], new_root)[1] != first
    assert ft.acme_state()[NAMES[0]]["last_error"] is None


def test_challenges_answered_by_workers_without_a_ca(acme_fastterm, tmp_path):
    """What the CA's validator sees, without one (the directory is unreachable, so the agent
    records that and backs off): a ClientHello offering only acme-tls/1 for a pending name gets
    its RFC 8737 certificate, ALPN acme-tls/1 and then EOF; for a name with nothing pending the
    handshake fails; an ordinary client gets the placeholder. Port 80 serves the HTTP-01 file
    of acme_challenge_dir (certbot --webroot) and redirects anything else under the prefix."""
    from cryptography import x509

    from fastterm.certs.acme import ID_PE_ACME_IDENTIFIER, tls_alpn_certificate

    class Nowhere:   # enough of a Pebble for acme_fastterm: the ports, an unreachable directory
        tls_port, http_port = free_port(), free_port()
        directory, ca_file = f"https://{HOST}:1/dir", None
        dir = tmp_path

    webroot = tmp_path / "webroot"
    webroot.mkdir()
    (webroot / "certbot-token_1").write_text("certbot-token_1.thumb")
    ft = acme_fastterm(Nowhere, [{"server_names": [NAMES[0]],
                                  "acme": {"directory": Nowhere.directory, "challenge": "tls-alpn-01",
                                           "state_dir": str(tmp_path / "acme-state")}}],
                       workers=1, top={"acme_challenge_dir": str(webroot)})
    cert_pem, key_pem = tls_alpn_certificate(NAMES[0], "tok.thumb")
    alpn_dir = Path(ft.state_dir) / "challenges" / "tls-alpn-01"
    (alpn_dir / f"{NAMES[0]}.key").write_bytes(key_pem)
    (alpn_dir / f"{NAMES[0]}.crt").write_bytes(cert_pem)

    def validate(name: str):
        ctx = ssl._create_unverified_context()
        ctx.set_alpn_protocols(["acme-tls/1"])
        with socket.create_connection((HOST, Nowhere.tls_port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=name) as s:
            return s.selected_alpn_protocol(), s.getpeercert(binary_form=True), s.recv(100)

    alpn, der, after = validate(NAMES[0])
    assert alpn == "acme-tls/1" and after == b""
    ext = x509.load_der_x509_certificate(der).extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert ext.critical and x509.load_der_x509_certificate(der) == x509.load_pem_x509_certificate(cert_pem)
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        validate("nothing-pending.acme.test")
    _, plain = ft.peer_cert(NAMES[0])
    assert plain != der and "temporary" in str(x509.load_der_x509_certificate(plain).subject)
    assert wait_for(lambda: "unreachable" in ((ft.acme_state().get(NAMES[0]) or {}).get("last_error") or ""),
                    timeout=15), ft.log()

    def plain(target: str) -> bytes:
        with socket.create_connection((HOST, Nowhere.http_port), timeout=5) as c:
            c.sendall(f"GET {target} HTTP/1.1\r\nHost: {NAMES[0]}\r\n\r\n".encode())
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        return data

    answer = plain("/.well-known/acme-challenge/certbot-token_1")
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\ncertbot-token_1.thumb"), answer
    for target in ("/.well-known/acme-challenge/../webroot/certbot-token_1", "/.well-known/acme-challenge/none"):
        assert plain(target).startswith(b"HTTP/1.1 301"), target


def test_a_name_added_by_reload_is_issued(pebble, acme_fastterm):
    """SIGHUP with a new server name: its placeholder is written when the new configuration is
    read, the agent hears the new job list, and the name is issued; the first name stays."""
    pb = pebble()
    ft = acme_fastterm(pb, [{"server_names": [NAMES[0]]}], workers=1)
    root = pb.root()
    assert wait_for(lambda: ft.issued(NAMES[0], root), timeout=30), ft.log()
    text = ft.config_path.read_text()
    assert text.count(f'"{NAMES[0]}"') == 1
    ft.config_path.write_text(text.replace(f'["{NAMES[0]}"]', f'["{NAMES[0]}", "{NAMES[1]}"]'))
    ft.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: ft.issued(NAMES[1], root), timeout=30), ft.log()
    assert ft.issued(NAMES[0], root)


def test_an_nginx_config_with_the_acme_module_runs_as_it_is(pebble, tmp_path, python, subprocess_env):
    """``fastterm run --nginx`` on nginx 1.29's ACME module form (acme_issuer, acme_certificate,
    ssl_certificate $acme_certificate): the HTTP-01 challenge is answered on the port-80 server
    that only redirects, and the issued certificate serves the 443 server's name."""
    pb = pebble()
    state = tmp_path / "nginx-acme"
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
worker_processes 2;
error_log {tmp_path / "error.log"} info;
events {{}}
http {{
    resolver 127.0.0.1:53;
    acme_issuer pebble {{
        uri {pb.directory};
        contact mailto:ops@acme.test;
        state_path {state};
        ssl_trusted_certificate {pb.ca_file};
        accept_terms_of_service;
    }}
    acme_shared_zone zone=ngx_acme_shared:1M;
    server {{
        listen {HOST}:{pb.http_port};
        location / {{ return 301 https://$host$request_uri; }}
    }}
    server {{
        listen {HOST}:{pb.tls_port} ssl;
        server_name {NAMES[0]};
        acme_certificate pebble;
        ssl_certificate $acme_certificate;
        ssl_certificate_key $acme_certificate_key;
        location / {{ return 200 "ok"; }}
    }}
}}
""")
    out = open(tmp_path / "fastterm.out", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([python, "-m", "fastterm", "run", "--nginx", str(conf)], stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=subprocess_env, cwd=tmp_path)
    ft = AcmeFastterm(proc, pb, conf, str(state), tmp_path, 2)
    try:
        assert wait_for(ft.listening, timeout=15), ft.log()
        root = pb.root()
        assert wait_for(lambda: ft.peer_cert(NAMES[0], root)[0] is not None, timeout=30), ft.log()
        assert (ft.acme_state().get(NAMES[0]) or {}).get("last_error") is None, ft.acme_state()
    finally:
        stop_process(proc)
        out.close()
    assert "Traceback (most recent call last)" not in ft.log(), ft.log()[-6000:]
