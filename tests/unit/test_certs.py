"""Certificate store: every layout users bring, and every way a chain and key go wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fastterm.certs.store import expiry_warnings, load_certificate
from fastterm.demo import issue_cert
from fastterm.errors import ConfigError


def chain_subjects(chain_pem: bytes) -> list[x509.Name]:
    return [c.subject for c in x509.load_pem_x509_certificates(chain_pem)]


def config_error(cert: str, key: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_certificate(cert, key)
    return info.value


def test_nginx_crt_and_key_ec(ec_files, ec_leaf, intermediate):
    crt, key = ec_files
    ck = load_certificate(crt, key)
    assert ck.key_type == "EC"
    assert ck.names == ("www.example.com", "example.com")
    assert chain_subjects(ck.chain_pem) == [ec_leaf.cert.subject, intermediate.cert.subject]
    assert ck.key_pem == ec_leaf.key_pem
    assert ck.not_after == ec_leaf.cert.not_valid_after_utc
    assert ck.source == f"{crt} + {key}"


def test_nginx_crt_and_key_rsa_traditional_key(write, rsa_leaf, intermediate):
    traditional = rsa_leaf.key.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.TraditionalOpenSSL,
                                             serialization.NoEncryption())
    ck = load_certificate(write("rsa.crt", rsa_leaf.cert_pem + intermediate.cert_pem),
                          write("rsa.key", traditional))
    assert ck.key_type == "RSA"
    assert ck.names == ("rsa.example.com",)
    assert ck.key_pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")


def test_haproxy_combined_pem_in_any_order_puts_the_leaf_first(write, ca, intermediate, ec_leaf):
    pem = write("combined.pem", intermediate.cert_pem + ec_leaf.key_pem + ca.cert_pem + ec_leaf.cert_pem)
    ck = load_certificate(pem)
    assert chain_subjects(ck.chain_pem) == [ec_leaf.cert.subject, intermediate.cert.subject,
                                             ca.cert.subject]
    assert ck.source == pem


def test_lets_encrypt_live_directory(write, tmp_path, rsa_leaf, intermediate):
    write("live/example.com/fullchain.pem", rsa_leaf.cert_pem + intermediate.cert_pem)
    write("live/example.com/privkey.pem", rsa_leaf.key_pem)
    write("live/example.com/cert.pem", rsa_leaf.cert_pem)
    write("live/example.com/chain.pem", intermediate.cert_pem)
    ck = load_certificate(str(tmp_path / "live" / "example.com"))
    assert ck.key_type == "RSA"
    assert "fullchain.pem" in ck.source and "privkey.pem" in ck.source
    assert len(chain_subjects(ck.chain_pem)) == 2


def test_directory_of_pems_asks_for_one_file_per_certificate(write, tmp_path, ec_leaf):
    write("pems/a.pem", ec_leaf.cert_pem + ec_leaf.key_pem)
    err = config_error(str(tmp_path / "pems"))
    assert "one PEM file per certificate" in str(err)
    assert str(tmp_path / "pems") in str(err)


def test_mismatched_key(write, ec_leaf):
    other = issue_cert(None, ["other.example.com"])
    crt, key = write("a.crt", ec_leaf.cert_pem), write("other.key", other.key_pem)
    err = config_error(crt, key)
    assert "does not match" in str(err)
    assert "a.crt" in str(err) and "other.key" in str(err)


def test_missing_file(tmp_path, ec_files):
    err = config_error(str(tmp_path / "absent.crt"), ec_files[1])
    assert "absent.crt" in str(err) and "no such file" in str(err)
    err = config_error(ec_files[0], str(tmp_path / "absent.key"))
    assert "absent.key" in str(err)


def test_no_certificate_in_file(write, ec_leaf):
    key = write("only.key", ec_leaf.key_pem)
    err = config_error(key, key)
    assert "no certificate" in str(err) and "only.key" in str(err)


def test_combined_pem_without_key(write, ec_leaf):
    err = config_error(write("nokey.pem", ec_leaf.cert_pem))
    assert "no private key" in str(err) and "nokey.pem" in str(err)


def test_encrypted_key(write, ec_leaf):
    encrypted = ec_leaf.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.BestAvailableEncryption(b"secret"))
    err = config_error(write("ec.crt", ec_leaf.cert_pem), write("enc.key", encrypted))
    assert "encrypted" in str(err) and "enc.key" in str(err)


def test_unsupported_key_type(write, ca):
    key = ed25519.Ed25519PrivateKey.generate()
    leaf = issue_cert(ca, ["ed.example.com"], key=key)
    err = config_error(write("ed.crt", leaf.cert_pem), write("ed.key", leaf.key_pem))
    assert "unsupported key type" in str(err)


def test_common_name_when_there_is_no_san(write, ca):
    leaf = issue_cert(ca, [], "EC")
    ck = load_certificate(write("cn.pem", leaf.cert_pem + leaf.key_pem))
    assert ck.names == ("fastterm",)


def test_wildcard_names_are_kept(write, ca):
    leaf = issue_cert(ca, ["*.Example.org", "example.org"], "EC")
    assert load_certificate(write("w.pem", leaf.cert_pem + leaf.key_pem)).names == ("*.example.org",
                                                                                    "example.org")


def test_expiry_warnings(write, ca):
    now = datetime.now(UTC)
    expired = issue_cert(ca, ["old.example.com"], "EC", now - timedelta(days=100), now - timedelta(days=1))
    soon = issue_cert(ca, ["soon.example.com"], "EC", now - timedelta(days=80),
                      now + timedelta(days=5, hours=1))
    fine = issue_cert(ca, ["fine.example.com"], "EC", now - timedelta(days=1), now + timedelta(days=60))
    warn = {}
    for name, issued in (("expired", expired), ("soon", soon), ("fine", fine)):
        ck = load_certificate(write(f"{name}.pem", issued.cert_pem + issued.key_pem))
        warn[name] = expiry_warnings(ck, now=now)
    assert len(warn["expired"]) == 1 and "expired" in warn["expired"][0]
    assert "old.example.com" in warn["expired"][0] and "expired.pem" in warn["expired"][0]
    assert len(warn["soon"]) == 1 and "expires in 5 days" in warn["soon"][0]
    assert warn["fine"] == []
