"""OCSP stapling through ``fastterm run -c``: a real responder (``openssl ocsp`` over a CA
index, or a small one of ours that signs short-lived responses), real clients
(``openssl s_client -status``, pyOpenSSL's ``request_ocsp``), loopback only.
"""

from __future__ import annotations

import base64
import http.server
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.x509 import ocsp
from harness import HOST, NAME, cert_entry, free_port, stop_process, to_toml, wait_for
from ocsp_pki import pki, response, with_aia
from OpenSSL import SSL

STAPLE_WAIT = 8.0


# ---- responders ----------------------------------------------------------------------------------

def _index_line(issued, status: str) -> str:
    cert = issued.cert
    serial = f"{cert.serial_number:X}"
    serial = "0" * (len(serial) % 2) + serial
    expires = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    revoked = datetime.now(UTC).strftime("%y%m%d%H%M%SZ") + ",keyCompromise" if status == "R" else ""
    return f"{status}\t{expires}\t{revoked}\t{serial}\tunknown\t/CN={cert.subject.rfc4514_string()[3:]}\n"


class Responder:
    """An HTTP OCSP responder on loopback (RFC 6960 appendix A, POST or GET): ``answer`` turns each
    DER request into the DER response; ``stop`` makes it unreachable."""

    def __init__(self, answer):
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.answer(self.rfile.read(int(self.headers["Content-Length"])))

            def do_GET(self):
                # RFC 6960 A.1: GET {url}/{url-encoded base64 of the DER request} (nginx asks so)
                encoded = self.path.removeprefix("/ocsp").lstrip("/")
                self.answer(base64.b64decode(urllib.parse.unquote(encoded)))

            def answer(self, request: bytes):
                outer.requests += 1
                body = answer(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{HOST}:{self.port}/ocsp"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def openssl_answer(tmp_path, write, issuer, signer, entries):
    """``openssl ocsp`` answers, from a CA index (``-index``), signed by ``signer``, valid a day.
    Its own ``-port`` server binds every interface (3.0 takes no address), so the HTTP side is
    ours on loopback and openssl reads each request from a file (``-reqin``/``-respout``)."""
    index = write("ocsp/index.txt", "".join(_index_line(c, s) for c, s in entries))
    files = [write("ocsp/ca.pem", issuer.cert_pem), write("ocsp/rsigner.pem", signer.cert_pem),
             write("ocsp/rsigner.key", signer.key_pem)]
    request_file, response_file = str(tmp_path / "ocsp/request.der"), str(tmp_path / "ocsp/response.der")

    def answer(request: bytes) -> bytes:
        with open(request_file, "wb") as f:
            f.write(request)
        subprocess.run(["openssl", "ocsp", "-index", index, "-CA", files[0], "-rsigner", files[1], "-rkey", files[2],
                        "-ndays", "1", "-reqin", request_file, "-respout", response_file],
                       capture_output=True, timeout=10, check=True)
        with open(response_file, "rb") as f:
            return f.read()

    return answer


def short_lived_answer(leaf, issuer, signer, lifetime: float):
    """A fresh response valid ``lifetime`` seconds (openssl ocsp's shortest is a minute)."""
    def answer(_request: bytes) -> bytes:
        now = datetime.now(UTC)
        return response(leaf, issuer, signer, this_update=now, next_update=now + timedelta(seconds=lifetime))

    return answer


# ---- clients -------------------------------------------------------------------------------------

def pyopenssl_staple(port: int, *, sigalgs: str | None = None) -> bytes:
    """The OCSP response stapled to a handshake that asked for one (b"": none)."""
    seen: list[bytes] = []

    def on_ocsp(_conn, data, _arg):
        seen.append(data)
        return True

    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_ocsp_client_callback(on_ocsp)
    if sigalgs:
        ctx.set_cipher_list(b"ECDHE-ECDSA-AES128-GCM-SHA256" if "ECDSA" in sigalgs else b"ECDHE-RSA-AES128-GCM-SHA256")
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    sock = socket.create_connection((HOST, port), timeout=5)
    try:
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(NAME.encode())
        conn.request_ocsp()
        conn.set_connect_state()
        deadline = time.monotonic() + 5
        while True:   # the socket has a timeout, so it is non-blocking underneath
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                assert time.monotonic() < deadline, "handshake timed out"
                select.select([sock], [], [], 1)
        served = conn.get_peer_certificate().to_cryptography()
    finally:
        sock.close()
    assert len(seen) == 1
    if seen[0]:
        resp = ocsp.load_der_ocsp_response(seen[0])
        assert resp.serial_number == served.serial_number, "stapled for another certificate"
    return seen[0]


def s_client_status(port: int, ca_file: str) -> str:
    out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", NAME, "-status",
                          "-CAfile", ca_file], input=b"", capture_output=True, timeout=10, check=False)
    return out.stdout.decode(errors="replace")


def cert_status(der: bytes) -> ocsp.OCSPCertStatus:
    return ocsp.load_der_ocsp_response(der).certificate_status


def wait_staple(port: int, timeout: float = STAPLE_WAIT) -> bytes:
    found: list[bytes] = []
    wait_for(lambda: found.append(pyopenssl_staple(port)) or found[-1], timeout=timeout, step=0.1)
    return found[-1] if found else b""


# ---- fixtures ------------------------------------------------------------------------------------

# What the leaves' AIA names when a test points stapling_responder elsewhere: the discard
# port, never listened on in tests.
UNUSED_URL = f"http://{HOST}:9/"


@pytest.fixture
def ca_file(write, ca, intermediate) -> str:
    """The root and the intermediate: a server whose chain lacks the intermediate still verifies."""
    return write("certs/ca.crt", ca.cert_pem + intermediate.cert_pem)


@pytest.fixture
def ocsp_pki(ca, intermediate):
    return pki(UNUSED_URL, issuer=intermediate, root=ca)


@pytest.fixture
def responders():
    """Factory: ``responders(answer) -> Responder``; all stopped at teardown."""
    made: list[Responder] = []

    def start(answer):
        made.append(Responder(answer))
        return made[-1]

    yield start
    for responder in made:
        responder.stop()


@pytest.fixture
def openssl_responder(tmp_path, write, ocsp_pki, responders):
    return lambda entries: responders(openssl_answer(tmp_path, write, ocsp_pki["issuer"], ocsp_pki["responder"],
                                                     entries))


# ---- tests ---------------------------------------------------------------------------------------

def test_good_response_is_stapled(fastterm, write, ocsp_pki, openssl_responder, ca_file):
    leaf = ocsp_pki["leaf"]
    responder = openssl_responder([(leaf, "V")])
    ft = fastterm(certificates=[cert_entry(write, leaf, ocsp_pki["issuer"], "ocsp-leaf")],
                  tls={"stapling_responder": responder.url, "stapling_timeout": 2}, workers=2)
    staple = wait_staple(ft.https_port)
    assert staple, ft.log()
    assert cert_status(staple) == ocsp.OCSPCertStatus.GOOD
    # both workers read the master's one copy (SO_REUSEPORT spreads the connections)
    assert len(ft.serving_pids()) == 2
    assert all(pyopenssl_staple(ft.https_port) == staple for _ in range(8))
    assert responder.requests == 1
    text = s_client_status(ft.https_port, ca_file)
    assert "OCSP Response Status: successful" in text
    assert "Cert Status: good" in text
    assert "Verify return code: 0 (ok)" in text
    assert "OCSP for" not in ft.log()        # no failure logged


def test_aia_url_is_fetched_at_start_up(fastterm, write, ocsp_pki, responders):
    """The leaf's own AIA URL, fetched before the first worker serves: the first handshake
    after the fixture's probe already gets the staple, from the one request made."""
    issuer = ocsp_pki["issuer"]
    made = {}
    responder = responders(lambda request: short_lived_answer(made["leaf"], issuer, ocsp_pki["responder"],
                                                              3600)(request))
    made["leaf"] = leaf = with_aia(issuer, [NAME, "example.com"], responder.url)
    ft = fastterm(certificates=[cert_entry(write, leaf, issuer, "ocsp-leaf")])
    staple = pyopenssl_staple(ft.https_port)
    assert staple and cert_status(staple) == ocsp.OCSPCertStatus.GOOD, ft.log()
    assert responder.requests == 1


def test_revoked_response_is_stapled_as_revoked(fastterm, write, ocsp_pki, openssl_responder, ca_file):
    revoked = with_aia(ocsp_pki["issuer"], [NAME, "example.com"], UNUSED_URL)
    responder = openssl_responder([(ocsp_pki["leaf"], "V"), (revoked, "R")])
    ft = fastterm(certificates=[cert_entry(write, revoked, ocsp_pki["issuer"], "revoked")],
                  tls={"stapling_responder": responder.url})
    staple = wait_staple(ft.https_port)
    assert staple, ft.log()
    assert cert_status(staple) == ocsp.OCSPCertStatus.REVOKED
    assert "Cert Status: revoked" in s_client_status(ft.https_port, ca_file)
    assert "is revoked" in ft.log()


def test_rsa_and_ecdsa_each_get_their_own_response(fastterm, write, ocsp_pki, openssl_responder):
    ec_leaf = ocsp_pki["leaf"]
    rsa_leaf = with_aia(ocsp_pki["issuer"], [NAME, "example.com"], UNUSED_URL, "RSA")
    responder = openssl_responder([(ec_leaf, "V"), (rsa_leaf, "R")])
    ft = fastterm(certificates=[cert_entry(write, ec_leaf, ocsp_pki["issuer"], "ec"),
                                cert_entry(write, rsa_leaf, ocsp_pki["issuer"], "rsa")],
                  tls={"stapling_responder": responder.url})
    # pyopenssl_staple checks that each staple is about the certificate served with it
    assert wait_for(lambda: pyopenssl_staple(ft.https_port, sigalgs="ECDSA")
                    and pyopenssl_staple(ft.https_port, sigalgs="RSA"), timeout=STAPLE_WAIT), ft.log()
    ec_staple = pyopenssl_staple(ft.https_port, sigalgs="ECDSA")
    rsa_staple = pyopenssl_staple(ft.https_port, sigalgs="RSA")
    assert cert_status(ec_staple) == ocsp.OCSPCertStatus.GOOD
    assert cert_status(rsa_staple) == ocsp.OCSPCertStatus.REVOKED


def test_responder_down_keeps_the_cached_response_until_it_expires(fastterm, write, ocsp_pki):
    """Responses valid 6 s: refreshed at half (3 s); once the responder is gone each retry
    fails and is logged, the last good response stays stapled until its nextUpdate, then
    nothing is stapled."""
    leaf = ocsp_pki["leaf"]
    responder = Responder(short_lived_answer(leaf, ocsp_pki["issuer"], ocsp_pki["issuer"], 6))
    try:
        ft = fastterm(certificates=[cert_entry(write, leaf, ocsp_pki["issuer"], "ocsp-leaf")],
                      tls={"stapling_responder": responder.url, "stapling_timeout": 1})
        first = wait_staple(ft.https_port)
        assert first, ft.log()
        assert wait_for(lambda: responder.requests >= 2, timeout=6), "not refreshed at half its validity"
        assert wait_for(lambda: pyopenssl_staple(ft.https_port) != first, timeout=3), "refresh not stapled"
    finally:
        responder.stop()
    last = ocsp.load_der_ocsp_response(pyopenssl_staple(ft.https_port))
    assert wait_for(lambda: "OCSP for" in ft.log() and "failed" in ft.log(), timeout=6), ft.log()
    stapled_after_failure = pyopenssl_staple(ft.https_port)
    if datetime.now(UTC) < last.next_update_utc - timedelta(seconds=0.5):
        assert stapled_after_failure, "the cached response was dropped before its nextUpdate"
    assert wait_for(lambda: not pyopenssl_staple(ft.https_port), timeout=10), "stapled past nextUpdate"
    assert datetime.now(UTC) >= last.next_update_utc - timedelta(seconds=1)
    assert "stays" in ft.log()


def test_garbage_from_the_responder_is_never_stapled(fastterm, write, ocsp_pki, responders):
    leaf = ocsp_pki["leaf"]
    responder = responders(lambda _request: b"\x30\x82garbage")
    ft = fastterm(certificates=[cert_entry(write, leaf, ocsp_pki["issuer"], "ocsp-leaf")],
                  tls={"stapling_responder": responder.url})
    assert wait_for(lambda: "OCSP for www.example.com, example.com failed" in ft.log(), timeout=5), ft.log()
    assert "nothing stapled" in ft.log()
    assert pyopenssl_staple(ft.https_port) == b""
    assert ft.alive()


def test_reload_keeps_the_response_without_fetching_again(fastterm, write, ocsp_pki, responders):
    """A new generation's workers staple the response already in shared memory."""
    leaf = ocsp_pki["leaf"]
    responder = responders(short_lived_answer(leaf, ocsp_pki["issuer"], ocsp_pki["responder"], 3600))
    ft = fastterm(certificates=[cert_entry(write, leaf, ocsp_pki["issuer"], "ocsp-leaf")],
                  tls={"stapling_responder": responder.url})
    first = wait_staple(ft.https_port)
    assert first, ft.log()
    old_workers = ft.serving_pids()
    ft.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded: generation 2 serving" in ft.log(), timeout=10), ft.log()
    assert wait_for(lambda: not set(ft.serving_pids()) & set(old_workers), timeout=10)
    assert pyopenssl_staple(ft.https_port) == first
    assert responder.requests == 1


def test_issuer_from_trusted_certificate(fastterm, write, ocsp_pki, responders, intermediate):
    """A chain without its intermediate: no issuer, nothing stapled (one error line); with the
    intermediate in trusted_certificate the response is requested and verified against it.
    (The clients find the intermediate in ca_file: this module's holds both CAs.)"""
    leaf, issuer = ocsp_pki["leaf"], ocsp_pki["issuer"]
    responder = responders(short_lived_answer(leaf, issuer, ocsp_pki["responder"], 3600))
    bare = {"cert": write("certs/bare.crt", leaf.cert_pem), "key": write("certs/bare.key", leaf.key_pem)}
    ft = fastterm(certificates=[bare], tls={"stapling_responder": responder.url})
    assert wait_for(lambda: "issuer certificate is neither in the chain nor in trusted_certificate" in ft.log(),
                    timeout=5), ft.log()
    assert responder.requests == 0
    assert pyopenssl_staple(ft.https_port) == b""
    trusted = write("certs/issuers.pem", intermediate.cert_pem)
    ft2 = fastterm(certificates=[bare], tls={"stapling_responder": responder.url, "trusted_certificate": trusted})
    staple = wait_staple(ft2.https_port)
    assert staple and cert_status(staple) == ocsp.OCSPCertStatus.GOOD, ft2.log()


def test_forged_static_response_is_never_stapled(fastterm, write, ocsp_pki, ca_file):
    leaf = ocsp_pki["leaf"]
    forged = write("certs/forged.ocsp", response(leaf, ocsp_pki["issuer"], ocsp_pki["forger"]))
    entry = dict(cert_entry(write, leaf, ocsp_pki["issuer"], "ocsp-leaf"), ocsp_file=forged)
    ft = fastterm(certificates=[entry])
    assert wait_for(lambda: "signature does not verify" in ft.log(), timeout=5), ft.log()
    for _ in range(3):
        assert pyopenssl_staple(ft.https_port) == b""
    assert "OCSP response: no response sent" in s_client_status(ft.https_port, ca_file)


def test_stapling_verify_off_staples_it_with_a_warning(fastterm, write, ocsp_pki):
    leaf = ocsp_pki["leaf"]
    forged = write("certs/forged.ocsp", response(leaf, ocsp_pki["issuer"], ocsp_pki["forger"]))
    entry = dict(cert_entry(write, leaf, ocsp_pki["issuer"], "ocsp-leaf"), ocsp_file=forged)
    ft = fastterm(certificates=[entry], tls={"stapling_verify": False})
    staple = wait_staple(ft.https_port)
    with open(forged, "rb") as f:
        assert staple == f.read()
    assert "stapling_verify is off" in ft.log()


def test_static_file_is_read_again_when_it_changes(fastterm, write, ocsp_pki):
    """HAProxy's CERT.ocsp beside the certificate: no ocsp_file needed; replaced, re-read."""
    leaf, issuer = ocsp_pki["leaf"], ocsp_pki["issuer"]
    entry = cert_entry(write, leaf, issuer, "ocsp-leaf")
    write("certs/ocsp-leaf.crt.ocsp", response(leaf, issuer, issuer))
    ft = fastterm(certificates=[entry])
    assert cert_status(wait_staple(ft.https_port)) == ocsp.OCSPCertStatus.GOOD, ft.log()
    revoked = response(leaf, issuer, ocsp_pki["responder"], status="revoked")
    tmp = entry["cert"] + ".ocsp.tmp"
    with open(tmp, "wb") as f:
        f.write(revoked)
    os.replace(tmp, entry["cert"] + ".ocsp")
    assert wait_for(lambda: pyopenssl_staple(ft.https_port) == revoked, timeout=5), ft.log()


def test_no_ocsp_url_staples_nothing_without_error(fastterm, write, ocsp_pki, ec_cert, ca_file):
    ft = fastterm()     # the session's leaf: no AIA
    assert wait_for(lambda: "names no OCSP responder" in ft.log(), timeout=5), ft.log()
    assert pyopenssl_staple(ft.https_port) == b""
    assert "OCSP response: no response sent" in s_client_status(ft.https_port, ca_file)
    assert "[ERROR]" not in ft.log() and "[WARNING]" not in ft.log()


def test_metrics_show_status_age_and_refresh(fastterm, write, ocsp_pki, openssl_responder, python, subprocess_env):
    leaf = ocsp_pki["leaf"]
    responder = openssl_responder([(leaf, "V")])
    admin_port = free_port()
    ft = fastterm(certificates=[cert_entry(write, leaf, ocsp_pki["issuer"], "ocsp-leaf")],
                  tls={"stapling_responder": responder.url}, admin=f"{HOST}:{admin_port}")
    assert wait_staple(ft.https_port), ft.log()
    with socket.create_connection((HOST, admin_port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    text = raw.decode()
    assert 'fastterm_ocsp_status{certificate="www.example.com, example.com",status="good"} 1' in text
    age = next(line for line in text.splitlines() if line.startswith("fastterm_ocsp_response_age_seconds{"))
    refresh = next(line for line in text.splitlines() if line.startswith("fastterm_ocsp_next_refresh_seconds{"))
    assert 0 <= float(age.rsplit(" ", 1)[1]) < 120
    assert 11 * 3600 < float(refresh.rsplit(" ", 1)[1]) <= 12 * 3600     # half of -ndays 1
    # fastterm certs asks the running master too
    out = subprocess.run([python, "-m", "fastterm", "certs", "-c", ft.config_path], capture_output=True,
                         text=True, timeout=30, check=False, env=subprocess_env)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^  ocsp       good, response \d+ s old, next refresh in \d+ s$", out.stdout, re.MULTILINE), \
        out.stdout


def test_check_refuses_a_missing_ocsp_file(write, ocsp_pki, python, subprocess_env, tmp_path):
    entry = dict(cert_entry(write, ocsp_pki["leaf"], ocsp_pki["issuer"], "ocsp-leaf"),
                 ocsp_file=str(tmp_path / "missing.ocsp"))
    config = write("check.toml", to_toml({"upstream": [{"name": "app", "servers": ["127.0.0.1:1"]}],
                                          "server": [{"listen": [f"{HOST}:{free_port()}"], "certificate": [entry]}]}))
    out = subprocess.run([python, "-m", "fastterm", "check", "-c", config], capture_output=True, text=True,
                         env=subprocess_env, timeout=30, check=False)
    assert out.returncode == 1
    assert "missing.ocsp" in out.stderr and "cannot read OCSP response file" in out.stderr


# ---- nginx mode, beside nginx itself -------------------------------------------------------------

NGINX_CONF = """\
worker_processes 1;
events {{}}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    upstream app {{ server 127.0.0.1:1; }}
    server {{
        listen {host}:{port} ssl;
        server_name www.example.com;
        ssl_certificate leaf.crt;
        ssl_certificate_key leaf.key;
        ssl_stapling on;
        ssl_stapling_verify on;
        ssl_stapling_responder {responder};
        ssl_trusted_certificate trusted.pem;
        resolver 127.0.0.1 valid=300s;
        resolver_timeout 2s;
        location / {{ proxy_pass http://app; }}
    }}
}}
"""


def s_client_cert_status(port: int, ca_file: str) -> str | None:
    """The "Cert Status:" line s_client prints for the stapled response, or None."""
    text = s_client_status(port, ca_file)
    assert "Verify return code: 0 (ok)" in text, text
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if "Cert Status:" in line), None)


@pytest.fixture
def nginx_dir():
    """A directory nginx's unprivileged processes can read (pytest's tmp_path is root's 0700)."""
    path = tempfile.mkdtemp(prefix="fastterm-ocsp-nginx-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
@pytest.mark.parametrize("single", [False, True], ids=["master", "single"])
def test_nginx_config_staples_as_nginx_does(nginx_dir, ocsp_pki, openssl_responder, ca, ca_file, python,
                                            subprocess_env, single):
    """The same nginx.conf under nginx 1.22 and ``fastterm run --nginx``: both staple the
    responder's verified "good" response; nginx from its second handshake on (it fetches on
    the first), fastterm from the first."""
    leaf, issuer = ocsp_pki["leaf"], ocsp_pki["issuer"]
    responder = openssl_responder([(leaf, "V")])
    files = {"leaf.crt": leaf.cert_pem + issuer.cert_pem, "leaf.key": leaf.key_pem,
             "trusted.pem": issuer.cert_pem + ca.cert_pem}
    for name, data in files.items():
        with open(os.path.join(nginx_dir, name), "wb") as f:
            f.write(data)
    os.chmod(os.path.join(nginx_dir, "leaf.key"), 0o600)
    confs = {}
    for side in ("nginx", "fastterm"):
        port = free_port()
        conf = os.path.join(nginx_dir, f"{side}.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(host=HOST, port=port, responder=responder.url))
        confs[side] = (conf, port)
    for sub in ("logs", "tmp"):
        os.makedirs(os.path.join(nginx_dir, sub), exist_ok=True)
    if os.geteuid() == 0:
        for root, dirs, names in os.walk(nginx_dir):
            for name in [*dirs, *names, "."]:
                os.chown(os.path.join(root, name), 65534, 65534)
    nginx_argv = ["nginx", "-p", nginx_dir, "-c", confs["nginx"][0], "-e", os.path.join(nginx_dir, "error.log"),
                  "-g", f"daemon off; pid {nginx_dir}/nginx.pid;"]
    if os.geteuid() == 0:
        nginx_argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *nginx_argv]
    fastterm_argv = [python, "-m", "fastterm", "run", "--nginx", confs["fastterm"][0],
                     "--pid-file", os.path.join(nginx_dir, "fastterm.pid"), *(["--single"] if single else [])]
    with open(os.path.join(nginx_dir, "fastterm.out"), "wb") as out:
        procs = [subprocess.Popen(nginx_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL),
                 subprocess.Popen(fastterm_argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  env=subprocess_env, cwd=nginx_dir)]
    try:
        for _conf, port in confs.values():
            assert wait_for(lambda p=port: _listening(p), timeout=15), _logs(nginx_dir)
        # fastterm fetched before serving: its first handshake is stapled
        assert s_client_cert_status(confs["fastterm"][1], ca_file) == "good", _logs(nginx_dir)
        # nginx fetches on its first handshake, staples from a later one
        statuses = []
        assert wait_for(lambda: statuses.append(s_client_cert_status(confs["nginx"][1], ca_file)) or
                        statuses[-1] == "good", timeout=10, step=0.2), _logs(nginx_dir)
        assert statuses[0] is None
    finally:
        for proc in procs:
            stop_process(proc)
    assert "Traceback" not in _logs(nginx_dir)


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _logs(directory: str) -> str:
    text = ""
    for name in ("error.log", "fastterm.out"):
        try:
            with open(os.path.join(directory, name), errors="replace") as f:
                text += f"--- {name}\n{f.read()}"
        except OSError:
            pass
    return text


def test_directory_file_staples_its_ocsp_file(fastterm, write, ocsp_pki, other_leaf, intermediate, tmp_path):
    """A PEM directory (HAProxy crt DIR): the file SNI picks is served on the directory's
    first file's context (an Identity), and staples its own FILE.ocsp."""
    leaf, issuer = ocsp_pki["leaf"], ocsp_pki["issuer"]
    directory = tmp_path / "crt-dir"
    directory.mkdir()
    (directory / "00-other.pem").write_bytes(other_leaf.cert_pem + intermediate.cert_pem + other_leaf.key_pem)
    (directory / "www.pem").write_bytes(leaf.cert_pem + issuer.cert_pem + leaf.key_pem)
    staple = response(leaf, issuer, issuer)
    (directory / "www.pem.ocsp").write_bytes(staple)
    ft = fastterm(certificates=[{"cert": str(directory)}])
    assert wait_staple(ft.https_port) == staple, ft.log()
    text = s_client_status(ft.https_port, ft.ca_file)
    assert "Cert Status: good" in text


@pytest.mark.parametrize("single", [False, True], ids=["master-workers", "single"])
def test_renewed_certificate_gets_its_own_staple_without_a_reload(fastterm, write, ocsp_pki, openssl_responder,
                                                                  single):
    """certs/watch.py: the workers serve the renewed file, the master (StapleFollower) fetches
    its response into a new slot, and the workers find that slot by the certificate."""
    leaf, issuer = ocsp_pki["leaf"], ocsp_pki["issuer"]
    renewed = with_aia(issuer, ["example.com", "www.example.com"], UNUSED_URL)   # its own subject: the index wants one each
    responder = openssl_responder([(leaf, "V"), (renewed, "V")])
    entry = cert_entry(write, leaf, issuer, "ocsp-leaf")
    ft = fastterm(certificates=[entry], tls={"stapling_responder": responder.url, "stapling_timeout": 2},
                  workers=1 if single else 2, single=single)
    first = wait_staple(ft.https_port)
    assert ocsp.load_der_ocsp_response(first).serial_number == leaf.cert.serial_number, ft.log()
    for path, data in ((entry["key"], renewed.key_pem), (entry["cert"], renewed.cert_pem + issuer.cert_pem)):
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)

    def renewed_staple() -> bool:
        der = pyopenssl_staple(ft.https_port)   # asserts the staple is for the certificate served
        return bool(der) and ocsp.load_der_ocsp_response(der).serial_number == renewed.cert.serial_number

    assert wait_for(renewed_staple, timeout=10, step=0.2), ft.log()
    if not single:   # every worker: each found the master's slot
        assert all(renewed_staple() for _ in range(10)), ft.log()
    assert responder.requests == 2
