"""A test PKI for OCSP: leaves that name a responder (AIA), delegated responder certificates,
and OCSP responses signed by whoever a test wants (cryptography's OCSPResponseBuilder).

Generated per test session, never committed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from fastterm.demo import Issued, issue_cert, make_ca, new_key


def with_aia(ca: Issued, names: list[str], url: str | None, key_type: str = "EC", *,
             ocsp_signing: bool = False) -> Issued:
    """A leaf for ``names`` signed by ``ca``, naming ``url`` as its OCSP responder (None: none);
    ``ocsp_signing``: a delegated responder certificate instead (EKU id-kp-OCSPSigning)."""
    now = datetime.now(UTC)
    key = new_key(key_type)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING if ocsp_signing
                                              else ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if not ocsp_signing:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                        critical=False)
    if url is not None:
        builder = builder.add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def pki(url: str | None, issuer: Issued | None = None, root: Issued | None = None) -> dict[str, Issued]:
    """root -> intermediate (the issuer) -> leaf (AIA ``url``); a delegated responder of the
    intermediate; another CA with its own responder-looking certificate (the forger).
    ``issuer`` and ``root``: the tests' session CA instead of new ones."""
    root = root or make_ca("ocsp test root")
    issuer = issuer or issue_cert(root, ["ocsp test intermediate"], "EC", is_ca=True)
    other = make_ca("ocsp forger CA")
    return {
        "root": root,
        "issuer": issuer,
        "leaf": with_aia(issuer, ["www.example.com", "example.com"], url),
        "responder": with_aia(issuer, ["ocsp responder"], None, ocsp_signing=True),
        "other": other,
        "forger": with_aia(other, ["ocsp responder"], None, ocsp_signing=True),
    }


def response(leaf: Issued, issuer: Issued, signer: Issued, *, status: str = "good",
             this_update: datetime | None = None, next_update: datetime | None = None,
             lifetime: timedelta = timedelta(days=1), include_signer: bool = True) -> bytes:
    """A DER OCSP response about ``leaf`` (certificate ID from ``issuer``), signed by ``signer``
    and carrying its certificate unless ``include_signer`` is false."""
    this_update = this_update or datetime.now(UTC) - timedelta(minutes=1)
    next_update = next_update or this_update + lifetime
    cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                   "unknown": ocsp.OCSPCertStatus.UNKNOWN}[status]
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf.cert, issuer=issuer.cert, algorithm=hashes.SHA1(), cert_status=cert_status,
        this_update=this_update, next_update=next_update,
        revocation_time=this_update if status == "revoked" else None,
        revocation_reason=x509.ReasonFlags.key_compromise if status == "revoked" else None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
    if include_signer:
        builder = builder.certificates([signer.cert])
    return builder.sign(signer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def der(issued: Issued) -> bytes:
    return issued.cert.public_bytes(serialization.Encoding.DER)
