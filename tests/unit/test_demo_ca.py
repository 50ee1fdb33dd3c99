"""The demo CA (README: trust DIR/ca.crt) can vouch for this machine only: a client that trusts
it rejects a certificate it signed for any other name, and any CA below it."""

from __future__ import annotations

import ssl

import pytest
from cryptography import x509

from fastterm.demo import Issued, issue_cert, make_ca, make_demo_pki, write_atomic


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> None:
    """A Python ssl client and server wired through memory BIOs; raises what the client raises."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    if name == "client":
                        raise
                    done[name] = True
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


@pytest.fixture
def demo(tmp_path):
    pki = make_demo_pki(str(tmp_path / "demo"))
    with open(pki["ca_cert"], "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    with open(pki["ca_key"], "rb") as f:
        from cryptography.hazmat.primitives import serialization
        key = serialization.load_pem_private_key(f.read(), password=None)
    return pki, Issued(cert, key)


def _server(tmp_path, chain: list[Issued], key: Issued) -> ssl.SSLContext:
    cert_file, key_file = tmp_path / "srv.crt", tmp_path / "srv.key"
    cert_file.write_bytes(b"".join(c.cert_pem for c in chain))
    write_atomic(str(key_file), key.key_pem, private=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def _client(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=pki["ca_cert"])


def test_demo_leaves_verify(tmp_path, demo):
    pki, _ca = demo
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki["ecdsa_cert"], pki["ecdsa_key"])
    for name in ("localhost", "127.0.0.1", "::1"):
        _handshake(server, _client(pki), name)


@pytest.mark.parametrize("names", [["www.example.com"], ["localhost.evil.example"], ["10.0.0.1"],
                                   ["localhost", "bank.example"]])
def test_a_leaf_for_another_name_is_rejected(tmp_path, demo, names):
    pki, ca = demo
    leaf = issue_cert(ca, names)
    with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
        _handshake(_server(tmp_path, [leaf], leaf), _client(pki), names[-1])


def test_a_ca_below_the_demo_ca_is_rejected(tmp_path, demo):
    pki, ca = demo
    sub = issue_cert(ca, ["sub CA"], is_ca=True)
    leaf = issue_cert(sub, ["localhost"])
    with pytest.raises(ssl.SSLCertVerificationError, match="path length"):
        _handshake(_server(tmp_path, [leaf, sub], leaf), _client(pki), "localhost")


def test_an_unconstrained_demo_ca_is_replaced(tmp_path):
    state = tmp_path / "demo"
    old = make_ca("fastterm demo CA")
    state.mkdir(mode=0o700)
    write_atomic(str(state / "ca.key"), old.key_pem, private=True)
    write_atomic(str(state / "ca.crt"), old.cert_pem)
    pki = make_demo_pki(str(state))
    with open(pki["ca_cert"], "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    assert ca.serial_number != old.cert.serial_number
    constraints = ca.extensions.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
