"""A local PKI and config for ``fastterm demo``, and the certificate factory tests share.

The demo serves both an ECDSA and an RSA certificate so that a user sees fastterm pick
one per client, as production setups do. Certificates are made on demand (never shipped)
because committed certificates expire.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fastterm import files

DEMO_NAMES = ("localhost", "127.0.0.1", "::1")
CA_LIFETIME = timedelta(days=3650)
LEAF_LIFETIME = timedelta(days=397)  # the CA/Browser Forum maximum for public certificates
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, as objects and as PEM."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def new_key(key_type: str = "EC") -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """``"EC"``: P-256; ``"RSA"``: 2048 bits (the sizes every client supports, fastest to sign)."""
    if key_type.upper() in ("EC", "ECDSA"):
        return ec.generate_private_key(ec.SECP256R1())
    if key_type.upper() == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {key_type!r}: use 'EC' or 'RSA'")


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _subtree(name: str) -> x509.GeneralName:
    """A NameConstraints subtree: a DNS name, or an IP literal as its single-address network."""
    try:
        return x509.IPAddress(ipaddress.ip_network(name))
    except ValueError:
        return x509.DNSName(name)


def issue_cert(ca: Issued | None, names: Sequence[str], key_type: str = "EC",
               not_before: datetime | None = None, not_after: datetime | None = None,
               *, is_ca: bool = False, key=None, permitted: Sequence[str] = ()) -> Issued:
    """Issue a certificate for ``names`` (DNS names or IP literals) signed by ``ca``.

    ``ca=None`` self-signs. Tests pass dates in the past for expired certificates,
    ``"*.example.com"`` for wildcards, ``is_ca=True`` for intermediates. ``permitted``
    (a CA only) confines it: critical NameConstraints to those names and path length 0,
    so it can sign leaves for them and nothing else (RFC 5280 4.2.1.9, 4.2.1.10).
    """
    now = datetime.now(UTC)
    not_before = not_before or now - timedelta(minutes=5)
    not_after = not_after or not_before + (CA_LIFETIME if is_ca else LEAF_LIFETIME)
    key = key or new_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "fastterm")])
    issuer_name = ca.cert.subject if ca else subject
    signing_key = ca.key if ca else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if permitted else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if permitted:
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=[_subtree(n) for n in permitted], excluded_subtrees=None),
            critical=True)
    if ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if names and not is_ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
    return Issued(builder.sign(signing_key, hashes.SHA256()), key)


def make_ca(common_name: str = "fastterm demo CA", not_before: datetime | None = None,
            not_after: datetime | None = None, *, permitted: Sequence[str] = ()) -> Issued:
    """A self-signed ECDSA P-256 root, valid ten years unless told otherwise; ``permitted``
    confines it to those names (see ``issue_cert``)."""
    return issue_cert(None, [common_name], "EC", not_before, not_after, is_ca=True, permitted=permitted)


def write_atomic(path: str, data: bytes, *, private: bool = False) -> None:
    """Write atomically (``fastterm.files.write_atomic``); private keys 0600, the rest 0644."""
    files.write_atomic(path, data, 0o600 if private else 0o644)


def _load(cert_path: str, key_path: str) -> Issued | None:
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    return Issued(cert, key)


def _fresh(issued: Issued | None, issuer: Issued | None = None) -> bool:
    if issued is None or issued.cert.not_valid_after_utc - datetime.now(UTC) < RENEW_BEFORE:
        return False
    return issuer is None or issued.cert.issuer == issuer.cert.subject


def _confined(ca: Issued) -> bool:
    """A demo CA made before it carried NameConstraints could sign for any name: replace it."""
    try:
        ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return False
    return True


def make_demo_pki(state_dir: str) -> dict[str, str]:
    """Create the demo CA and localhost certificates in ``state_dir`` unless valid ones exist.

    Returns the paths: ``ca_cert``, ``ca_key``, ``ecdsa_cert``, ``ecdsa_key``, ``rsa_cert``,
    ``rsa_key``. Keeping the CA across runs means a user trusts it once; that is safe
    because it can only vouch for ``DEMO_NAMES`` (a stolen ca.key cannot impersonate
    another site to whoever trusts it).
    """
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    paths = {"ca_cert": "ca.crt", "ca_key": "ca.key", "ecdsa_cert": "localhost-ecdsa.crt",
             "ecdsa_key": "localhost-ecdsa.key", "rsa_cert": "localhost-rsa.crt",
             "rsa_key": "localhost-rsa.key"}
    paths = {k: os.path.join(state_dir, v) for k, v in paths.items()}
    ca = _load(paths["ca_cert"], paths["ca_key"])
    renewed_ca = not _fresh(ca) or not _confined(ca)
    if renewed_ca:
        ca = make_ca(permitted=DEMO_NAMES)
        write_atomic(paths["ca_key"], ca.key_pem, private=True)
        write_atomic(paths["ca_cert"], ca.cert_pem)
    for kind, key_type in (("ecdsa", "EC"), ("rsa", "RSA")):
        cert_path, key_path = paths[f"{kind}_cert"], paths[f"{kind}_key"]
        if renewed_ca or not _fresh(_load(cert_path, key_path), ca):
            leaf = issue_cert(ca, DEMO_NAMES, key_type)
            write_atomic(key_path, leaf.key_pem, private=True)
            write_atomic(cert_path, leaf.cert_pem)
    return paths


def write_demo_config(state_dir: str, https_port: int = 8443, http_port: int = 8080,
                      backend_port: int = 8081) -> str:
    """Write ``state_dir/fastterm.toml`` for the demo PKI; certificate paths stay relative."""
    text = f"""\
# Written by `fastterm demo`; certificate paths are relative to this file.

[[upstream]]
name = "demo"
servers = ["127.0.0.1:{backend_port}"]

[[server]]
listen = ["127.0.0.1:{https_port}"]
server_names = ["localhost"]
default_server = true
hsts = "max-age=63072000"

[[server.certificate]]
cert = "localhost-ecdsa.crt"
key = "localhost-ecdsa.key"

[[server.certificate]]
cert = "localhost-rsa.crt"
key = "localhost-rsa.key"

[[server.route]]
path = "/"
upstream = "demo"

[[redirect]]
listen = ["127.0.0.1:{http_port}"]
https_port = {https_port}
"""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    path = os.path.join(state_dir, "fastterm.toml")
    write_atomic(path, text.encode())
    return path
