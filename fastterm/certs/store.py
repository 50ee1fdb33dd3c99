"""Load and validate certificate chains and keys before OpenSSL ever sees them.

Every layout users bring from other terminators is accepted: nginx ``.crt`` + ``.key``,
HAProxy's combined ``.pem`` (chain and key in one file) and Let's Encrypt ``live/DOMAIN/``
directories. Problems surface as ``ConfigError`` naming the file, at ``fastterm check``
time, rather than as an OpenSSL error string when a worker starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fastterm.errors import ConfigError
from fastterm.files import exposure

EXPIRY_WARNING = timedelta(days=14)

_PEM_BLOCK_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)
_KEY_LABELS = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}
_ENCRYPTED_KEY_LABEL = b"ENCRYPTED PRIVATE KEY"
_CERT_LABEL = b"CERTIFICATE"
_LE_CHAIN, _LE_KEY = "fullchain.pem", "privkey.pem"
_COMPANIONS = (".key", ".ocsp", ".issuer", ".sctl")


@dataclass(frozen=True)
class CertKey:
    """A validated chain and its key, ready for ``SSL_CTX_use_certificate_chain``."""

    chain_pem: bytes
    key_pem: bytes
    names: tuple[str, ...]
    key_type: str
    not_after: datetime
    source: str
    key_file: str
    key_bits: int = 0
    issuer: str = ""
    serial: int = 0
    reordered: bool = False   # the file's certificates were not leaf first, then each issuer


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ConfigError("no such file", file=path) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a PEM file", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None


def _resolve_paths(cert: str, key: str | None) -> tuple[str, str | None]:
    """A Let's Encrypt ``live/DOMAIN/`` directory stands for its fullchain.pem and privkey.pem."""
    if not os.path.isdir(cert):
        return cert, key
    chain = os.path.join(cert, _LE_CHAIN)
    if os.path.exists(chain):
        return chain, key or os.path.join(cert, _LE_KEY)
    raise ConfigError(
        f"is a directory without {_LE_CHAIN} (not a Let's Encrypt live/ directory): "
        "name one PEM file per certificate", file=cert)


def is_pem_directory(cert: str) -> bool:
    """A directory of PEM files (HAProxy ``crt /etc/haproxy/ssl/``), not a Let's Encrypt live/ one."""
    return os.path.isdir(cert) and not os.path.exists(os.path.join(cert, _LE_CHAIN))


def directory_entries(directory: str) -> list[str]:
    """The certificate files of a PEM directory, sorted. HAProxy's rule: every file but dot
    files and the companions it reads beside a certificate (``.key``, ``.ocsp``, ``.issuer``,
    ``.sctl``)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise ConfigError(f"cannot list: {exc.strerror}", file=directory) from None
    return [os.path.join(directory, n) for n in names
            if not n.startswith(".") and not n.endswith(_COMPANIONS)
            and os.path.isfile(os.path.join(directory, n))]


def load_directory_entry(path: str) -> CertKey:
    """One file of a PEM directory: chain and key together, or the key in ``FILE.key`` beside it."""
    key = path + ".key"
    return load_certificate(path, key if os.path.exists(key) else None)


def _stat(path: str | None):
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def files_signature(certificates) -> tuple:
    """What the files behind a server block's certificates (model ``Certificate``s) look like
    now: equal tuples, same files (``certs/watch.py``)."""
    parts = []
    for c in certificates:
        try:
            if c.key is None and is_pem_directory(c.cert):
                parts.append(tuple((p, _stat(p), _stat(p + ".key")) for p in directory_entries(c.cert)))
            else:
                cert, key = _resolve_paths(c.cert, c.key)
                parts.append((_stat(cert), _stat(key)))
        except ConfigError:
            parts.append(None)   # unreadable now: a change, refused when read
    return tuple(parts)


def _pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(m.group(1), m.group(0)) for m in _PEM_BLOCK_RE.finditer(data)]


def _private_key(blocks: list[tuple[bytes, bytes]], path: str):
    """The single unencrypted RSA or EC key among ``blocks``, with its PEM text."""
    keys = [pem for label, pem in blocks if label in _KEY_LABELS or label == _ENCRYPTED_KEY_LABEL]
    if not keys:
        raise ConfigError("no private key found (expected a PEM 'PRIVATE KEY' block)", file=path)
    if len(keys) > 1:
        raise ConfigError(f"{len(keys)} private keys found, expected one", file=path)
    pem = keys[0]
    if pem.startswith(b"-----BEGIN " + _ENCRYPTED_KEY_LABEL) or b"Proc-Type: 4,ENCRYPTED" in pem:
        raise ConfigError("private key is encrypted: fastterm needs it unencrypted "
                          "(openssl pkey -in KEY -out KEY.plain)", file=path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise ConfigError("private key is encrypted", file=path) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"invalid private key: {exc}", file=path) from None
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RSA", pem
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key, "EC", pem
    raise ConfigError(f"unsupported key type {type(key).__name__.removeprefix('_')}: use RSA or EC",
                      file=path)


def _certificates(blocks: list[tuple[bytes, bytes]], path: str) -> list[x509.Certificate]:
    pems = [pem for label, pem in blocks if label == _CERT_LABEL]
    if not pems:
        raise ConfigError("no certificate found (expected a PEM 'CERTIFICATE' block)", file=path)
    try:
        return [x509.load_pem_x509_certificate(pem) for pem in pems]
    except ValueError as exc:
        raise ConfigError(f"invalid certificate: {exc}", file=path) from None


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _order_chain(leaf: x509.Certificate, certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """Leaf first, then each issuer in turn; certificates off the path keep their order at the end."""
    rest = [c for c in certs if c is not leaf]
    chain = [leaf]
    while rest:
        issuer = next((c for c in rest if c.subject == chain[-1].issuer), None)
        if issuer is None or chain[-1].subject == chain[-1].issuer:
            break
        chain.append(issuer)
        rest.remove(issuer)
    return chain + rest


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value).lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    return tuple(dict.fromkeys(names))


def load_certificate(cert: str, key: str | None = None) -> CertKey:
    """Load a chain and its key (``key`` unset: both come from ``cert``) and check they match."""
    cert_path, key_path = _resolve_paths(cert, key)
    cert_blocks = _pem_blocks(_read(cert_path))
    certs = _certificates(cert_blocks, cert_path)
    key_blocks = cert_blocks if key_path is None else _pem_blocks(_read(key_path))
    private_key, key_type, key_pem = _private_key(key_blocks, key_path or cert_path)
    spki = _spki(private_key.public_key())
    leaf = next((c for c in certs if _spki(c.public_key()) == spki), None)
    if leaf is None:
        raise ConfigError(f"private key in {key_path or cert_path} does not match any certificate "
                          "(public keys differ)", file=cert_path)
    chain = _order_chain(leaf, certs)
    return CertKey(
        reordered=chain != certs,
        chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain),
        key_pem=key_pem,
        names=_names(leaf),
        key_type=key_type,
        not_after=leaf.not_valid_after_utc,
        source=cert_path if key_path is None else f"{cert_path} + {key_path}",
        key_file=key_path or cert_path,
        key_bits=private_key.key_size,
        issuer=leaf.issuer.rfc4514_string(),
        serial=leaf.serial_number,
    )


@dataclass
class ServerCertificates:
    """What one server block serves: its own chain(s) (``own``: RSA and ECDSA for the same
    names, in one context) and each file of its PEM directories (``files``: path -> chain,
    one context each, selected by the names in the certificate, HAProxy's ``crt DIR``)."""

    own: list[CertKey]
    files: dict[str, CertKey]
    directories: list[str]

    def identities(self) -> dict[str, list[CertKey]]:
        """Context key -> its chains: "" for the block's own, a file's path for the others."""
        found = {"": self.own} if self.own else {}
        found.update((path, [ck]) for path, ck in self.files.items())
        return found


def load_server_certificates(certificates) -> ServerCertificates:
    """Read and check every certificate of a server block (its model ``Certificate``s);
    ``ConfigError`` on the first problem, naming the file."""
    own, files, directories = [], {}, []
    for c in certificates:
        if c.key is None and is_pem_directory(c.cert):
            directories.append(c.cert)
            entries = directory_entries(c.cert)
            if not entries:
                raise ConfigError("directory holds no certificate file", file=c.cert)
            files.update((path, load_directory_entry(path)) for path in entries)
        else:
            own.append(load_certificate(c.cert, c.key))
    return ServerCertificates(own, files, directories)


def inventory(servers, now: datetime | None = None) -> list[dict]:
    """Every certificate the server blocks (model ``Server``s) name, as ``fastterm certs``
    lists it: one entry per file, with the problem instead of the details where it fails."""
    now = now or datetime.now(UTC)
    found: dict[str, dict] = {}
    for i, server in enumerate(servers):
        block = ", ".join(server.server_names) or f"server[{i}]"
        for c in server.certificates:
            if c.key is None and is_pem_directory(c.cert):
                try:
                    paths = [(p, p + ".key" if os.path.exists(p + ".key") else None)
                             for p in directory_entries(c.cert)]
                except ConfigError as exc:
                    paths = [(c.cert, None)]
                    found.setdefault(c.cert, {"source": c.cert, "error": str(exc), "servers": []})
            else:
                paths = [(c.cert, c.key)]
            for cert, key in paths:
                entry = found.get(cert)
                if entry is None:
                    entry = found[cert] = {"source": cert, "servers": []}
                    try:
                        ck = load_certificate(cert, key)
                    except ConfigError as exc:
                        entry["error"] = str(exc)
                    else:
                        left = ck.not_after - now
                        entry.update(names=list(ck.names), key=f"{ck.key_type} {ck.key_bits}", issuer=ck.issuer,
                                     serial=f"{ck.serial:x}", not_after=ck.not_after.isoformat(),
                                     days_left=left.days if left.total_seconds() > 0 else -1,
                                     source=ck.source,
                                     warnings=expiry_warnings(ck, now) + key_permission_warnings(ck)
                                     + chain_warnings(ck))
                if block not in entry["servers"]:
                    entry["servers"].append(block)
    return list(found.values())


def chain_warnings(ck: CertKey) -> list[str]:
    """Name a chain out of order: fastterm serves it leaf first, then each issuer (RFC 8446
    §4.4.2 lets clients cope, older ones do not), where nginx would send the file as it is."""
    if not ck.reordered:
        return []
    why = "are not in order (the leaf, then each issuer): served reordered; fix the file for other servers"
    return [f"certificates in {ck.source} {why}"]


def expiry_warnings(ck: CertKey, now: datetime | None = None) -> list[str]:
    """Warn for an expired certificate, or one inside the renewal window (14 days)."""
    now = now or datetime.now(UTC)
    who = f"certificate {', '.join(ck.names) or '(no name)'} ({ck.source})"
    when = ck.not_after.strftime("%Y-%m-%d %H:%M:%S UTC")
    if ck.not_after <= now:
        return [f"{who} expired on {when}"]
    left = ck.not_after - now
    if left <= EXPIRY_WARNING:
        return [f"{who} expires in {left.days} days, on {when}"]
    return []


def key_permission_warnings(ck: CertKey) -> list[str]:
    """Warn when group or others can read the private key. nginx says nothing; refusing
    would break keys shared on purpose (Debian's 0640 root:ssl-cert convention)."""
    how = exposure(ck.key_file)
    return [f"private key {ck.key_file} is {how}: chmod 600 {ck.key_file}"] if how else []
