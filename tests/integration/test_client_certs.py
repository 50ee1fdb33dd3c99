"""Client certificates on the front (``[server.tls] verify_client``, ``client_ca``,
``verify_depth``; nginx ``ssl_verify_client``): the handshake completes whatever the client
shows, a request without the certificate the block wants is answered 400 with nginx's text,
and the backend gets the verified client in X-SSL-Client-* (nginx's $ssl_client_* formats,
checked here against what ``cryptography`` computes). A client's own X-SSL-Client-* never
passes. Clients: Python ``ssl`` (``load_cert_chain``), the h2 test client, curl ``--cert``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import ssl
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from h2wire import h2_client
from harness import HOST, NAME, Reader, header_map, read_response, request_bytes

from fastterm.demo import Issued, make_ca, new_key


def _client(issuer: Issued, name: x509.Name) -> Issued:
    key = new_key("EC")
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(issuer.key, hashes.SHA256()))
    return Issued(cert, key)


CLIENT_NAME = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
                         x509.NameAttribute(NameOID.COMMON_NAME, "alice")])


@pytest.fixture(scope="module")
def client_pki(tmp_path_factory):
    """A client CA, a client it issued, and a stranger (a client of another CA) -> paths."""
    d = tmp_path_factory.mktemp("clients")
    ca, other = make_ca("client root"), make_ca("stranger root")
    alice, mallory = _client(ca, CLIENT_NAME), _client(other, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                                                                             "mallory")]))
    paths = {"ca": d / "client-ca.pem", "alice": alice, "mallory": mallory, "root": ca}
    paths["ca"].write_bytes(ca.cert_pem)
    for who, issued in (("alice", alice), ("mallory", mallory)):
        (d / f"{who}.crt").write_bytes(issued.cert_pem)
        (d / f"{who}.key").write_bytes(issued.key_pem)
        paths[f"{who}.crt"], paths[f"{who}.key"] = str(d / f"{who}.crt"), str(d / f"{who}.key")
    return paths


def _start(fastterm, demo_backend, client_pki, mode: str, **tls):
    return fastterm(demo_backend, tls={"verify_client": mode, "client_ca": str(client_pki["ca"]), **tls})


def _ctx(ft, client_pki, who: str | None, alpn=("http/1.1",), **versions) -> ssl.SSLContext:
    ctx = ft.client_context(alpn=list(alpn), **versions)
    if who:
        ctx.load_cert_chain(client_pki[f"{who}.crt"], client_pki[f"{who}.key"])
    return ctx


def _get(ft, ctx, headers=None, session=None):
    raw = socket.create_connection((HOST, ft.https_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=NAME, session=session) as sock:
        sock.sendall(request_bytes("GET", "/", NAME, headers, b""))
        msg = read_response(Reader(sock), "GET")
        return msg, sock.session, sock.session_reused


def _expected(issued: Issued) -> dict[str, list[str]]:
    """What nginx's variables say of ``issued`` (RFC 2253 names: cryptography's rfc4514_string
    is the same for these; the serial in uppercase hex, the SHA-1 fingerprint lowercase)."""
    der = issued.cert.public_bytes(serialization.Encoding.DER)
    serial = f"{issued.cert.serial_number:X}"   # i2a_ASN1_INTEGER: whole bytes
    return {"x-ssl-client-verify": ["SUCCESS"],
            "x-ssl-client-s-dn": [issued.cert.subject.rfc4514_string()],
            "x-ssl-client-i-dn": [issued.cert.issuer.rfc4514_string()],
            "x-ssl-client-serial": [serial if len(serial) % 2 == 0 else "0" + serial],
            "x-ssl-client-fingerprint": [hashlib.sha1(der).hexdigest()]}


def _client_headers(msg) -> dict[str, list[str]]:
    assert msg.status == 200, (msg.start_line, msg.body[:300])
    return {k: v for k, v in header_map(json.loads(msg.body)).items() if k.startswith("x-ssl-client-")}


def test_verified_client_reaches_the_backend_with_its_certificate(fastterm, demo_backend, client_pki):
    ft = _start(fastterm, demo_backend, client_pki, "on")
    msg, _, _ = _get(ft, _ctx(ft, client_pki, "alice"), headers=[("X-SSL-Client-S-DN", "CN=forged"),
                                                                  ("x-ssl-client-verify", "SUCCESS")])
    got = _client_headers(msg)
    assert got == _expected(client_pki["alice"])
    assert got["x-ssl-client-s-dn"] == ["CN=alice,O=Example\\, Inc.,C=DE"]


def test_on_without_a_certificate_is_400_as_nginx(fastterm, demo_backend, client_pki):
    ft = _start(fastterm, demo_backend, client_pki, "on")
    msg, _, _ = _get(ft, _ctx(ft, client_pki, None))
    assert msg.status == 400
    assert b"No required SSL certificate was sent" in msg.body


def test_on_with_an_untrusted_certificate_is_400(fastterm, demo_backend, client_pki):
    ft = _start(fastterm, demo_backend, client_pki, "on")
    msg, _, _ = _get(ft, _ctx(ft, client_pki, "mallory"))
    assert msg.status == 400
    assert b"The SSL certificate error" in msg.body


def test_certificate_request_names_the_client_ca(fastterm, demo_backend, client_pki):
    """The CertificateRequest lists client_ca's subjects (openssl s_client prints them)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl s_client")
    ft = _start(fastterm, demo_backend, client_pki, "optional")
    out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{ft.https_port}", "-servername", NAME],
                         input=b"", capture_output=True, timeout=10, check=False).stdout.decode(errors="replace")
    names = out.split("Acceptable client certificate CA names", 1)[1].split("Requested", 1)[0]
    assert "CN = client root" in names


def test_optional_passes_without_a_certificate_and_refuses_an_untrusted_one(fastterm, demo_backend, client_pki):
    ft = _start(fastterm, demo_backend, client_pki, "optional")
    msg, _, _ = _get(ft, _ctx(ft, client_pki, None), headers=[("X-SSL-Client-S-DN", "CN=forged")])
    assert _client_headers(msg) == {"x-ssl-client-verify": ["NONE"]}
    msg, _, _ = _get(ft, _ctx(ft, client_pki, "mallory"))
    assert msg.status == 400   # nginx: optional wants a valid certificate when one is shown


def test_optional_no_ca_passes_an_untrusted_certificate_as_failed(fastterm, demo_backend, client_pki):
    ft = _start(fastterm, demo_backend, client_pki, "optional_no_ca")
    msg, _, _ = _get(ft, _ctx(ft, client_pki, "mallory"))
    got = _client_headers(msg)
    assert got["x-ssl-client-verify"] == ["FAILED:unable to verify the first certificate"]
    assert got["x-ssl-client-s-dn"] == ["CN=mallory"]
    assert got["x-ssl-client-i-dn"] == ["CN=stranger root"]


def test_verify_depth_limits_the_chain(fastterm, demo_backend, client_pki, tmp_path):
    """A client under an intermediate (leaf -> intermediate -> root): depth 0 refuses it,
    nginx's default 1 takes it (OpenSSL counts the intermediates)."""
    from fastterm.demo import issue_cert

    inter = issue_cert(client_pki["root"], ["client intermediate"], "EC", is_ca=True)
    bob = _client(inter, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bob")]))
    (tmp_path / "bob.crt").write_bytes(bob.cert_pem + inter.cert_pem)
    (tmp_path / "bob.key").write_bytes(bob.key_pem)
    for depth, status in ((0, 400), (1, 200)):
        ft = _start(fastterm, demo_backend, client_pki, "on", verify_depth=depth)
        ctx = ft.client_context()
        ctx.load_cert_chain(str(tmp_path / "bob.crt"), str(tmp_path / "bob.key"))
        msg, _, _ = _get(ft, ctx)
        assert msg.status == status, (depth, msg.body[:200])


def test_resumed_session_keeps_the_client_certificate(fastterm, demo_backend, client_pki):
    """nginx: a resumed session's $ssl_client_* are the full handshake's (TLS 1.2 session IDs
    and TLS 1.3 tickets)."""
    ft = _start(fastterm, demo_backend, client_pki, "on")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = _ctx(ft, client_pki, "alice", maximum_version=version, minimum_version=version)
        first, session, _ = _get(ft, ctx)
        assert _client_headers(first) == _expected(client_pki["alice"])
        again, _, reused = _get(ft, ctx, session=session)
        assert reused, version
        assert _client_headers(again) == _expected(client_pki["alice"])


def test_http2_client_certificate(fastterm, demo_backend, client_pki):
    ft = _start(fastterm, demo_backend, client_pki, "on")
    with h2_client(ft, ctx=_ctx(ft, client_pki, "alice", alpn=("h2",))) as c:
        msg = c.get("GET", "/", authority=NAME, headers=[("x-ssl-client-s-dn", "CN=forged")])
    assert _client_headers(msg) == _expected(client_pki["alice"])
    with h2_client(ft, ctx=_ctx(ft, client_pki, None, alpn=("h2",))) as c:
        msg = c.get("GET", "/", authority=NAME)
    assert msg.status == 400


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_with_cert_and_key(fastterm, demo_backend, client_pki):
    ft = _start(fastterm, demo_backend, client_pki, "on")
    base = ["curl", "-sS", "--max-time", "10", "--cacert", ft.ca_file, "--resolve", f"{NAME}:{ft.https_port}:{HOST}",
            "-H", "X-SSL-Client-Fingerprint: forged"]
    out = subprocess.run([*base, "--cert", client_pki["alice.crt"], "--key", client_pki["alice.key"], ft.url("/")],
                         capture_output=True, timeout=15, check=True).stdout
    headers = {k: v for k, v in header_map(json.loads(out)).items() if k.startswith("x-ssl-client-")}
    assert headers == _expected(client_pki["alice"])
    out = subprocess.run([*base, "-o", "/dev/null", "-w", "%{http_code}", ft.url("/")],
                         capture_output=True, timeout=15, check=True).stdout
    assert out == b"400"


def test_off_strips_client_sent_headers_and_asks_for_nothing(fastterm, demo_backend, client_pki):
    ft = fastterm(demo_backend)
    msg, _, _ = _get(ft, _ctx(ft, client_pki, "alice"), headers=[("X-SSL-Client-Verify", "SUCCESS")])
    assert _client_headers(msg) == {}


def test_sni_applies_each_blocks_verify_mode(fastterm, demo_backend, client_pki, write, intermediate, ec_cert,
                                             other_leaf):
    """The default block asks for nothing, other.test requires a certificate: the ClientHello
    callback moves the connection's verify mode with it (SSL_set_SSL_CTX does not)."""
    from harness import cert_entry

    servers = [
        {"server_names": [NAME], "default_server": True, "certificate": [ec_cert],
         "route": [{"path": "/", "upstream": "app"}]},
        {"server_names": ["other.test"], "certificate": [cert_entry(write, other_leaf, intermediate, "other")],
         "tls": {"verify_client": "on", "client_ca": str(client_pki["ca"])}, "route": [{"path": "/", "upstream": "app"}]},
    ]
    ft = fastterm(demo_backend, servers=servers)

    def get(name: str, who: str | None):
        ctx = _ctx(ft, client_pki, who)
        raw = socket.create_connection((HOST, ft.https_port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname=name) as sock:
            sock.sendall(request_bytes("GET", "/", name, None, b""))
            return read_response(Reader(sock), "GET")

    def asked(name: str) -> bool:
        """Whether the server sent a CertificateRequest (s_client lists its CA names)."""
        out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{ft.https_port}", "-servername", name],
                             input=b"", capture_output=True, timeout=10, check=False).stdout
        return b"Acceptable client certificate CA names" in out

    assert _client_headers(get(NAME, "alice")) == {}
    assert get("other.test", None).status == 400
    assert _client_headers(get("other.test", "alice")) == _expected(client_pki["alice"])
    assert not asked(NAME) and asked("other.test")
    # and back: a default that verifies, a named block that does not
    servers[0]["tls"], servers[1]["tls"] = servers[1]["tls"], {}
    ft = fastterm(demo_backend, servers=servers)
    assert asked(NAME) and not asked("other.test")
    assert get("other.test", None).status == 200
    assert get(NAME, None).status == 400


CUSTOM = {"verify": "Client-Verified", "subject": "Client-DN", "issuer": "", "serial": "X-SSL-Client-Cert-Serial",
          "fingerprint": "Client-Fp"}
SPOOFS = [("Client-DN", "CN=forged"), ("client-verified", "SUCCESS"), ("X-SSL-Client-I-DN", "CN=forged issuer"),
          ("CLIENT-FP", "00"), ("X-SSL-Client-Cert-Serial", "01")]


def _custom(fastterm, demo_backend, client_pki, ec_cert, mode: str):
    return fastterm(demo_backend, servers=[
        {"server_names": [NAME], "default_server": True, "certificate": [ec_cert],
         "tls": {"verify_client": mode, "client_ca": str(client_pki["ca"])}, "client_cert_headers": CUSTOM,
         "route": [{"path": "/", "upstream": "app"}]}])


def _fields(msg, names) -> dict[str, list[str]]:
    assert msg.status == 200, (msg.start_line, msg.body[:300])
    got = header_map(json.loads(msg.body))
    return {k: v for k, v in got.items() if k in names or k.startswith("x-ssl-client-")}


def test_custom_header_names_carry_the_certificate_and_a_client_s_copies_never_pass(fastterm, demo_backend,
                                                                                   client_pki, ec_cert):
    ft = _custom(fastterm, demo_backend, client_pki, ec_cert, "on")
    msg, _, _ = _get(ft, _ctx(ft, client_pki, "alice"), headers=SPOOFS)
    expected = _expected(client_pki["alice"])
    assert _fields(msg, {"client-verified", "client-dn", "client-fp"}) == {
        "client-verified": ["SUCCESS"], "client-dn": expected["x-ssl-client-s-dn"],
        "x-ssl-client-cert-serial": expected["x-ssl-client-serial"],
        "client-fp": expected["x-ssl-client-fingerprint"]}   # issuer "": not sent, nor the client's


def test_custom_header_names_without_a_certificate(fastterm, demo_backend, client_pki, ec_cert):
    ft = _custom(fastterm, demo_backend, client_pki, ec_cert, "optional")
    msg, _, _ = _get(ft, _ctx(ft, client_pki, None), headers=SPOOFS)
    assert _fields(msg, {"client-verified", "client-dn", "client-fp"}) == {"client-verified": ["NONE"]}
