"""TLS to backends (re-encryption, mTLS): fastterm's client side against a real TLS server
(Python ``ssl`` in threads) that asks for a client certificate and reports what it saw."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta

import pytest
from harness import HOST, NAME, RawBackend, cert_entry, response_bytes, wait_for
from httpwire import Reader, read_response, request_bytes

from fastterm.demo import Issued, issue_cert, make_ca, new_key

BACKEND_NAMES = ["backend.test", "localhost"]


class TLSBackend(RawBackend):
    """A RawBackend whose connections are TLS first (``ctx``, server side); each handshake's
    outcome is recorded: ``handshakes`` (session_reused of each), ``rejected`` (the errors)."""

    def __init__(self, ctx: ssl.SSLContext, handler):
        self.ctx = ctx
        self.handshakes: list[bool] = []
        self.rejected: list[BaseException] = []
        self.sni: list[str | None] = []
        ctx.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
        super().__init__(handler)

    def _serve(self, sock, record) -> None:
        try:
            # ragged EOFs raise SSLEOFError: a close without close_notify is seen as one
            tls = self.ctx.wrap_socket(sock, server_side=True, suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError) as exc:
            with self.lock:
                self.rejected.append(exc)
            sock.close()
            return
        with self.lock:
            self.handshakes.append(tls.session_reused)
            # close() shuts the sockets down: the raw one is detached now
            self.conns = [tls if c is sock else c for c in self.conns]
        super()._serve(tls, record)


def _client_cert(issuer: Issued, name: str) -> Issued:
    """A leaf for TLS clients (extendedKeyUsage clientAuth; the demo's leaves are serverAuth)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = new_key("EC")
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(issuer.key, hashes.SHA256()))
    return Issued(cert, key)


def _echo(close: bool = False):
    """Answer each request with what the TLS layer saw: the client certificate's subject
    (CN), whether the session was resumed; ``close``: one request per connection."""
    def handler(conn) -> None:
        while (req := conn.read_request()) is not None:
            cert = conn.sock.getpeercert()
            subject = dict(x[0] for x in cert["subject"]) if cert else {}
            body = json.dumps({"subject": subject.get("commonName"), "session_reused": conn.sock.session_reused,
                               "target": req.target}).encode()
            conn.send(response_bytes(200, body, [("Connection", "close")] if close else None))
            if close:
                return
    return handler


@pytest.fixture(scope="module")
def client_ca():
    return make_ca("fastterm test client CA")


@pytest.fixture
def pki(write, ca, intermediate, client_ca):
    """Files: the backend's chain (our test CA), the CA fastterm trusts it by, a client
    certificate the backend trusts, and one from a CA it does not."""
    backend = issue_cert(intermediate, BACKEND_NAMES, "EC")
    client = _client_cert(client_ca, "fastterm-client")
    stranger = _client_cert(make_ca("stranger CA"), "stranger-client")
    return {
        "backend": cert_entry(write, backend, intermediate, "backend"),
        "wrong_name": cert_entry(write, issue_cert(intermediate, ["other.test"], "EC"), intermediate, "wrong"),
        "expired": cert_entry(write, issue_cert(intermediate, BACKEND_NAMES, "EC",
                                                not_before=datetime.now(UTC) - timedelta(days=30),
                                                not_after=datetime.now(UTC) - timedelta(days=1)),
                              intermediate, "expired"),
        "ca": write("certs/backend-ca.pem", ca.cert_pem),
        "client_ca": write("certs/client-ca.pem", client_ca.cert_pem),
        "client": {"cert": write("certs/client.crt", client.cert_pem), "key": write("certs/client.key", client.key_pem)},
        "stranger": {"cert": write("certs/stranger.crt", stranger.cert_pem),
                     "key": write("certs/stranger.key", stranger.key_pem)},
    }


@pytest.fixture
def tls_backend(pki):
    """Factory: ``tls_backend(cert="backend", close=False)`` -> a started TLSBackend that
    requires a client certificate from ``client_ca``."""
    made: list[TLSBackend] = []

    def make(cert: str = "backend", close: bool = False) -> TLSBackend:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki[cert]["cert"], pki[cert]["key"])
        ctx.load_verify_locations(pki["client_ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        b = TLSBackend(ctx, _echo(close))
        made.append(b)
        return b

    yield make
    for b in made:
        b.close()


def _start(fastterm, backend: TLSBackend, tls: dict, url_host: str = HOST, **options):
    return fastterm(upstreams=[{"name": "app", "servers": [f"https://{url_host}:{backend.port}"], "tls": tls}],
                    **options)


def _get(ft, target: str = "/"):
    return ft.request("GET", target)


def test_client_certificate_reaches_the_backend(fastterm, tls_backend, pki):
    backend = tls_backend()
    ft = _start(fastterm, backend, {"ca_file": pki["ca"], "server_name": "backend.test", **pki["client"]})
    resp = _get(ft, "/mtls")
    assert resp.status == 200, resp.body
    seen = json.loads(resp.body)
    assert seen["subject"] == "fastterm-client"
    assert seen["target"] == "/mtls"
    assert backend.sni == ["backend.test"]


def test_default_name_is_the_url_host(fastterm, tls_backend, pki):
    """https://localhost:PORT: the certificate is checked for "localhost", sent as SNI."""
    backend = tls_backend()
    ft = _start(fastterm, backend, {"ca_file": pki["ca"], **pki["client"]}, url_host="localhost")
    assert _get(ft).status == 200
    assert backend.sni == ["localhost"]


@pytest.mark.parametrize("client", [None, "stranger"])
def test_backend_refusing_the_client_certificate_is_502(fastterm, tls_backend, pki, client):
    backend = tls_backend()
    tls = {"ca_file": pki["ca"], "server_name": "backend.test", **(pki[client] if client else {})}
    ft = _start(fastterm, backend, tls)
    assert _get(ft).status == 502
    assert backend.rejected, "the backend should have refused the handshake"
    assert not backend.requests


@pytest.mark.parametrize("cert, reason", [("wrong_name", "hostname mismatch"), ("expired", "certificate has expired")])
def test_bad_backend_certificate_is_502_with_the_reason(fastterm, tls_backend, pki, cert, reason):
    backend = tls_backend(cert)
    ft = _start(fastterm, backend, {"ca_file": pki["ca"], "server_name": "backend.test", **pki["client"]})
    assert _get(ft).status == 502
    assert f"connect to {HOST}:{backend.port} failed: TLS handshake: certificate verify failed: {reason}" in ft.log()
    assert not backend.requests


def test_idle_connections_close_with_close_notify(fastterm, pki):
    """An idle pooled connection past keepalive_timeout ends with close_notify (the backend
    reads a clean end of stream, not a truncation)."""
    endings: list[str] = []

    def handler(conn) -> None:
        try:
            while conn.read_request() is not None:
                conn.send(response_bytes(200, b"ok"))
            endings.append("close_notify")
        except ssl.SSLEOFError:
            endings.append("truncated")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["backend"]["cert"], pki["backend"]["key"])
    backend = TLSBackend(ctx, handler)
    try:
        ft = fastterm(upstreams=[{"name": "app", "servers": [f"https://{HOST}:{backend.port}"], "keepalive_timeout": 1,
                                  "tls": {"ca_file": pki["ca"], "server_name": "backend.test"}}])
        assert _get(ft).status == 200
        assert wait_for(lambda: endings, timeout=5)
        assert endings == ["close_notify"]
    finally:
        backend.close()


def test_wrong_name_passes_only_with_verify_none(fastterm, tls_backend, pki):
    backend = tls_backend("wrong_name")
    ft = _start(fastterm, backend, {"verify": "none", "server_name": "backend.test", **pki["client"]})
    assert _get(ft).status == 200


def test_verification_defaults_to_the_system_store(fastterm, tls_backend, pki):
    """No ca_file: the test CA is not in the system store, so the backend is not trusted
    (never a fallback to no verification)."""
    backend = tls_backend()
    ft = _start(fastterm, backend, {"server_name": "backend.test", **pki["client"]})
    assert _get(ft).status == 502
    assert "certificate verify failed: unable to get local issuer certificate" in ft.log()


def test_keepalive_reuses_one_tls_connection(fastterm, tls_backend, pki):
    backend = tls_backend()
    ft = _start(fastterm, backend, {"ca_file": pki["ca"], "server_name": "backend.test", **pki["client"]})
    for i in range(8):
        resp = _get(ft, f"/r{i}")
        assert resp.status == 200
        assert json.loads(resp.body)["target"] == f"/r{i}"
    assert backend.accepts == 1
    assert len(backend.requests) == 8


def test_reconnections_resume_the_session(fastterm, tls_backend, pki):
    backend = tls_backend(close=True)
    ft = _start(fastterm, backend, {"ca_file": pki["ca"], "server_name": "backend.test", **pki["client"]})
    seen = [json.loads(_get(ft, f"/r{i}").body) for i in range(4)]
    assert backend.accepts == 4
    assert backend.handshakes[0] is False
    assert backend.handshakes[1:] == [True, True, True]
    assert [s["subject"] for s in seen] == ["fastterm-client"] * 4   # the resumed session keeps it


def test_session_reuse_off_makes_full_handshakes(fastterm, tls_backend, pki):
    backend = tls_backend(close=True)
    ft = _start(fastterm, backend, {"ca_file": pki["ca"], "server_name": "backend.test", "session_reuse": False,
                                    **pki["client"]})
    for i in range(3):
        assert _get(ft, f"/r{i}").status == 200
    assert backend.handshakes == [False, False, False]


def test_failed_handshake_goes_to_the_next_server(fastterm, tls_backend, pki):
    bad, good = tls_backend("wrong_name"), tls_backend()
    ft = fastterm(upstreams=[{"name": "app", "servers": [f"https://{HOST}:{bad.port}", f"https://{HOST}:{good.port}"],
                              "tls": {"ca_file": pki["ca"], "server_name": "backend.test", **pki["client"]}}])
    for i in range(4):
        assert _get(ft, f"/r{i}").status == 200
    assert len(good.requests) == 4
    assert not bad.requests


def test_large_bodies_both_ways(fastterm, tls_backend, pki):
    """Request and response bodies larger than one TLS record and one socket buffer."""
    def big(conn):
        while (req := conn.read_request()) is not None:
            conn.send(response_bytes(200, req.body[::-1] * 3))

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["backend"]["cert"], pki["backend"]["key"])
    backend = TLSBackend(ctx, big)
    try:
        ft = _start(fastterm, backend, {"ca_file": pki["ca"], "server_name": "backend.test"})
        body = bytes(range(256)) * 4096   # 1 MiB
        with ft.connect(timeout=10) as sock:
            sock.sendall(request_bytes("POST", "/up", NAME, [("Content-Length", str(len(body)))], body))
            resp = read_response(Reader(sock), "POST")
        assert resp.status == 200
        assert resp.body == body[::-1] * 3
    finally:
        backend.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_http2_client_over_tls_backend(fastterm, tls_backend, pki):
    backend = tls_backend()
    ft = _start(fastterm, backend, {"ca_file": pki["ca"], "server_name": "backend.test", **pki["client"]})
    out = subprocess.run(["curl", "--http2", "-sS", "--max-time", "10", "--cacert", ft.ca_file,
                          "--resolve", f"{NAME}:{ft.https_port}:{HOST}", "-w", "\n%{http_version} %{http_code}",
                          ft.url("/h2"), ft.url("/h2-again")], check=False, capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "2 200", out.stdout
    assert json.loads(lines[0])["subject"] == "fastterm-client"
    assert backend.accepts == 1   # the two requests shared the pooled TLS connection


def test_concurrent_clients(fastterm, tls_backend, pki):
    backend = tls_backend()
    ft = _start(fastterm, backend, {"ca_file": pki["ca"], "server_name": "backend.test", **pki["client"]})
    errors: list[BaseException] = []

    def client(i):
        try:
            with ft.connect() as sock:
                reader = Reader(sock)
                for r in range(10):
                    sock.sendall(request_bytes("GET", f"/c{i}/{r}", NAME))
                    assert json.loads(read_response(reader).body)["target"] == f"/c{i}/{r}"
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    assert len(backend.requests) == 80


def test_backend_that_never_handshakes_is_a_connect_timeout(fastterm, raw_backend, pki):
    """TCP accepted, no ServerHello: backend_connect_timeout covers the handshake (nginx's
    proxy_connect_timeout too): 504, not a hang."""
    silent = raw_backend(lambda conn: conn.hang())
    ft = fastterm(upstreams=[{"name": "app", "servers": [f"https://{HOST}:{silent.port}"],
                              "tls": {"ca_file": pki["ca"], "server_name": "backend.test"}}])
    assert ft.request("GET", "/", timeout=10).status == 504
    assert f"connect to {HOST}:{silent.port} timed out" in ft.log()
