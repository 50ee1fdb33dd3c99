"""TLS as clients see it: protocol floor, SNI, RSA/ECDSA selection, ALPN, ciphers, groups.

Python ``ssl`` and ``openssl s_client`` are the clients; what they negotiate is compared
with what nginx does for the same configuration.
"""

from __future__ import annotations

import ssl
import subprocess
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from harness import NAME, cert_entry


def s_client(ft, *args: str, servername: str | None = NAME) -> subprocess.CompletedProcess:
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{ft.https_port}", "-brief", "-CAfile", ft.ca_file]
    if servername:
        cmd += ["-servername", servername]
    else:
        cmd += ["-noservername"]
    return subprocess.run(cmd + list(args), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=15, check=False)


def peer_cert(sock: ssl.SSLSocket) -> x509.Certificate:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True))


def handshake(ft, server_hostname: str | None = NAME, **ctx_opts) -> ssl.SSLSocket:
    ctx = ft.client_context(**{k: v for k, v in ctx_opts.items() if k not in ("ciphers", "alpn")},
                            alpn=ctx_opts.get("alpn", ("http/1.1",)))
    if "ciphers" in ctx_opts:
        ctx.set_ciphers(ctx_opts["ciphers"])
    if server_hostname is None or server_hostname not in (NAME, "example.com", "other.test",
                                                          "a.example.com"):
        ctx.check_hostname = False
    return ft.connect(server_hostname, ctx)


def old_protocol_context(ft, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that really offers TLS 1.0/1.1 (OpenSSL 3 refuses to at its default level)."""
    ctx = ft.client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    ctx.set_ciphers("DEFAULT@SECLEVEL=0")
    return ctx


@pytest.fixture
def ft(fastterm, demo_backend):
    return fastterm(demo_backend)


# ---------------------------------------------------------------------------------------
# protocol floor


@pytest.mark.parametrize("flag", ["-tls1_1", "-tls1"])
def test_s_client_old_protocols_refused(ft, flag):
    out = s_client(ft, flag, "-cipher", "DEFAULT@SECLEVEL=0")
    assert out.returncode != 0, out.stdout
    # The server's protocol_version alert (70), not a client that could not offer the version.
    assert "alert protocol version" in out.stderr, out.stderr
    assert "CONNECTION ESTABLISHED" not in out.stdout


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_python_old_protocols_refused(ft, version):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = old_protocol_context(ft, getattr(ssl.TLSVersion, version))
    with pytest.raises(ssl.SSLError) as info:
        ft.connect(ctx=ctx)
    assert info.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"), info.value
    assert ft.alive()


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_modern_protocols_negotiated(ft, version):
    v = getattr(ssl.TLSVersion, version)
    with handshake(ft, minimum_version=v, maximum_version=v) as sock:
        assert sock.version() == version.replace("_", ".")
        assert sock.selected_alpn_protocol() == "http/1.1"


def test_s_client_tls13_and_tls12(ft):
    for flag, want in (("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")):
        out = s_client(ft, flag)
        assert out.returncode == 0, out.stderr
        assert f"Protocol version: {want}" in out.stderr + out.stdout
        assert "Verification: OK" in out.stderr + out.stdout


def test_default_prefers_tls13(ft):
    with handshake(ft) as sock:
        assert sock.version() == "TLSv1.3"


def test_tls13_only_refuses_tls12(fastterm, demo_backend):
    ft = fastterm(demo_backend, tls={"protocols": ["TLSv1.3"]})
    with pytest.raises(ssl.SSLError) as info:
        handshake(ft, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert info.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"), info.value
    with handshake(ft) as sock:
        assert sock.version() == "TLSv1.3"
    out = s_client(ft, "-tls1_2")
    assert out.returncode != 0 and "alert protocol version" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------
# SNI


@pytest.fixture
def sni_ft(fastterm, demo_backend, write, intermediate, ec_cert, other_leaf, wildcard_leaf):
    route = [{"path": "/", "upstream": "app"}]
    servers = [
        {"server_names": [NAME, "example.com"], "default_server": True, "certificate": [ec_cert],
         "route": route},
        {"server_names": ["other.test"], "certificate": [cert_entry(write, other_leaf, intermediate, "other")],
         "route": route},
        {"server_names": ["*.example.com"],
         "certificate": [cert_entry(write, wildcard_leaf, intermediate, "wild")], "route": route},
    ]
    return fastterm(demo_backend, servers=servers)


def sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


@pytest.mark.parametrize("name, want", [
    (NAME, NAME),
    ("other.test", "other.test"),
    ("OTHER.test", "other.test"),  # SNI is case-insensitive
    ("a.example.com", "*.example.com"),
    ("unknown.test", NAME),  # unknown -> default_server
    (None, NAME),  # no SNI -> default_server
])
def test_sni_picks_certificate(sni_ft, name, want):
    with handshake(sni_ft, name) as sock:
        assert want in sans(peer_cert(sock)), (name, sans(peer_cert(sock)))


def test_sni_exact_name_beats_wildcard(sni_ft):
    # nginx: an exact server_name wins over a matching wildcard.
    with handshake(sni_ft, NAME) as sock:
        assert NAME in sans(peer_cert(sock))


def test_sni_s_client(sni_ft):
    out = s_client(sni_ft, servername="other.test")
    assert out.returncode == 0 and "Peer certificate: CN = other.test" in out.stderr, out.stderr
    out = s_client(sni_ft, servername=None)
    assert out.returncode == 0 and f"Peer certificate: CN = {NAME}" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------
# RSA and ECDSA on one server


@pytest.fixture
def dual_ft(fastterm, demo_backend, write, intermediate, ec_cert, rsa_www_leaf):
    return fastterm(demo_backend, certificates=[ec_cert, cert_entry(write, rsa_www_leaf, intermediate,
                                                                     "www-rsa")])


def test_ecdsa_client_gets_ec_cert(dual_ft):
    with handshake(dual_ft, maximum_version=ssl.TLSVersion.TLSv1_2,
                   ciphers="ECDHE-ECDSA-AES128-GCM-SHA256") as sock:
        assert isinstance(peer_cert(sock).public_key(), ec.EllipticCurvePublicKey)
        assert sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_rsa_only_client_gets_rsa_cert(dual_ft):
    with handshake(dual_ft, maximum_version=ssl.TLSVersion.TLSv1_2,
                   ciphers="ECDHE-RSA-AES128-GCM-SHA256") as sock:
        assert isinstance(peer_cert(sock).public_key(), rsa.RSAPublicKey)
        assert sock.cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256"


@pytest.mark.parametrize("sigalgs, want", [("ECDSA+SHA256", "ECDSA"), ("RSA-PSS+SHA256", "RSA-PSS")])
def test_tls13_sigalgs_pick_certificate(dual_ft, sigalgs, want):
    out = s_client(dual_ft, "-tls1_3", "-sigalgs", sigalgs)
    assert out.returncode == 0, out.stderr
    assert f"Signature type: {want}\n" in out.stderr, out.stderr


def test_ecdsa_only_server_refuses_rsa_only_client(ft):
    with pytest.raises(ssl.SSLError):
        handshake(ft, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-GCM-SHA256")
    assert ft.alive()


# ---------------------------------------------------------------------------------------
# ALPN


def test_alpn_server_order_puts_h2_first(ft):
    """ALPN offers h2,http/1.1 by default, in the server's order (HAProxy's bind alpn)."""
    with handshake(ft, alpn=["http/1.1", "h2"]) as sock:
        assert sock.selected_alpn_protocol() == "h2"


def test_alpn_http11_selected_over_h2_when_configured(fastterm, demo_backend):
    ft = fastterm(demo_backend, tls={"alpn": ["http/1.1"]})
    with handshake(ft, alpn=["h2", "http/1.1"]) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"


def test_no_alpn_is_fine(ft):
    with handshake(ft, alpn=None) as sock:
        assert sock.selected_alpn_protocol() is None
        sock.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 ")


def test_alpn_unknown_only_gets_no_application_protocol(ft):
    with pytest.raises(ssl.SSLError) as info:
        handshake(ft, alpn=["spdy/3.1"])
    assert "no application protocol" in str(info.value), info.value
    out = s_client(ft, "-alpn", "spdy/3.1")
    assert out.returncode != 0 and "no application protocol" in out.stderr, out.stderr


# ---------------------------------------------------------------------------------------
# ciphers and groups


def test_cipher_outside_list_refused(ft):
    # ECDHE-ECDSA-AES128-SHA (CBC) is in OpenSSL's defaults, not in Mozilla intermediate.
    with pytest.raises(ssl.SSLError) as info:
        handshake(ft, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA")
    assert info.value.reason in ("SSLV3_ALERT_HANDSHAKE_FAILURE", "NO_SHARED_CIPHER"), info.value


def test_configured_cipher_list_is_enforced(fastterm, demo_backend):
    ft = fastterm(demo_backend, tls={"ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"})
    with pytest.raises(ssl.SSLError):
        handshake(ft, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    with handshake(ft, maximum_version=ssl.TLSVersion.TLSv1_2) as sock:
        assert sock.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_server_cipher_preference_honoured(ft):
    # The client prefers AES256; the server's (intermediate) list puts AES128 first.
    with handshake(ft, maximum_version=ssl.TLSVersion.TLSv1_2,
                   ciphers="ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256") as sock:
        assert sock.cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_client_preference_when_server_preference_off(fastterm, demo_backend):
    ft = fastterm(demo_backend, tls={"prefer_server_ciphers": False})
    with handshake(ft, maximum_version=ssl.TLSVersion.TLSv1_2,
                   ciphers="ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256") as sock:
        assert sock.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_chacha_first_client_gets_chacha(ft):
    # SSL_OP_PRIORITIZE_CHACHA: a client that puts ChaCha20 first gets it.
    with handshake(ft, maximum_version=ssl.TLSVersion.TLSv1_2,
                   ciphers="ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256") as sock:
        assert sock.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"


@pytest.mark.parametrize("group", ["X448", "P-521"])
def test_groups_outside_intermediate_refused(ft, group):
    out = s_client(ft, "-tls1_3", "-groups", group)
    assert out.returncode != 0, out.stderr
    assert "handshake failure" in out.stderr, out.stderr


@pytest.mark.parametrize("group, shown", [("X25519", "X25519"), ("P-256", "ECDH, prime256v1"),
                                          ("P-384", "ECDH, secp384r1")])
def test_intermediate_groups_accepted(ft, group, shown):
    out = s_client(ft, "-tls1_3", "-groups", group)
    assert out.returncode == 0, out.stderr
    assert shown in out.stderr, out.stderr


def test_renegotiation_refused(ft):
    # TLS 1.2 client-initiated renegotiation ("R" in s_client) must not succeed.
    proc = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{ft.https_port}", "-servername", NAME,
         "-CAfile", ft.ca_file, "-tls1_2"],
        input="R\n", capture_output=True, text=True, timeout=15, check=False)
    assert "RENEGOTIATING" in proc.stdout + proc.stderr
    assert "verify return:1" not in (proc.stdout + proc.stderr).split("RENEGOTIATING", 1)[1]
    assert ft.alive()


# ---------------------------------------------------------------------------------------
# session resumption


def resume_twice(ft, **ctx_opts) -> bool:
    ctx = ft.client_context(**ctx_opts)
    with ft.connect(ctx=ctx) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        s.recv(65536)  # TLS 1.3 tickets arrive after the handshake
        session = s.session
    raw = __import__("socket").create_connection(("127.0.0.1", ft.https_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=NAME, session=session) as s2:
        return s2.session_reused


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_session_resumption(ft, version):
    v = getattr(ssl.TLSVersion, version)
    assert resume_twice(ft, minimum_version=v, maximum_version=v)


def test_no_resumption_when_disabled(fastterm, demo_backend):
    ft = fastterm(demo_backend, tls={"session_tickets": False, "session_cache": False})
    assert not resume_twice(ft, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert not resume_twice(ft)


def test_handshake_failure_logged(ft):
    with pytest.raises(ssl.SSLError):
        handshake(ft, alpn=["spdy/3.1"])
    # DESIGN "Errors": a TLS failure gets the right alert and a log line; the worker goes on.
    from harness import wait_for

    assert wait_for(lambda: "no application protocol" in ft.log().lower(), timeout=3), ft.log()
    with handshake(ft) as sock:
        assert sock.version() == "TLSv1.3"


def test_reject_handshake_default_refuses_unknown_names(fastterm, demo_backend, ec_cert):
    """A default server with reject_handshake (nginx ``ssl_reject_handshake on``) and no
    certificate: a name no block has, or none, fails with unrecognized_name; known names work."""
    route = [{"path": "/", "upstream": "app"}]
    servers = [{"server_names": [], "default_server": True, "reject_handshake": True, "route": route},
               {"server_names": [NAME], "certificate": [ec_cert], "route": route}]
    ft = fastterm(demo_backend, servers=servers)
    with handshake(ft, NAME) as sock:
        assert NAME in sans(peer_cert(sock))
    for name in ("unknown.test", None):
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            handshake(ft, name)
    out = s_client(ft, servername="unknown.test")
    assert "unrecognized name" in (out.stdout + out.stderr).lower()
    assert ft.alive()
