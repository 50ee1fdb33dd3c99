"""Shared fixtures: a throwaway PKI made per test session, written into tmp_path per test.

Certificates are generated, never committed: committed test certificates expire.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from fastterm.demo import Issued, issue_cert, make_ca

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ca() -> Issued:
    return make_ca("fastterm test root")


@pytest.fixture(scope="session")
def intermediate(ca: Issued) -> Issued:
    return issue_cert(ca, ["fastterm test intermediate"], "EC", is_ca=True)


@pytest.fixture(scope="session")
def ec_leaf(intermediate: Issued) -> Issued:
    return issue_cert(intermediate, ["www.example.com", "Example.COM"], "EC")


@pytest.fixture(scope="session")
def rsa_leaf(intermediate: Issued) -> Issued:
    # RSA keys are slow to generate: one per session.
    return issue_cert(intermediate, ["rsa.example.com"], "RSA")


@pytest.fixture
def write(tmp_path: Path):
    """``write("a/b.pem", data)`` -> absolute path of the written file under tmp_path."""

    def _write(name: str, data: bytes | str) -> str:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return str(path)

    return _write


@pytest.fixture
def ec_files(write, ec_leaf: Issued, intermediate: Issued) -> tuple[str, str]:
    """nginx layout: chain in ``.crt`` (leaf first), key in ``.key``."""
    return (write("certs/ec.crt", ec_leaf.cert_pem + intermediate.cert_pem),
            write("certs/ec.key", ec_leaf.key_pem))


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment in which ``python -m fastterm...`` imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def rsa_www_leaf(intermediate: Issued) -> Issued:
    """RSA twin of ``ec_leaf`` (same names): one server serving both key types."""
    return issue_cert(intermediate, ["www.example.com", "Example.COM"], "RSA")


@pytest.fixture(scope="session")
def wildcard_leaf(intermediate: Issued) -> Issued:
    return issue_cert(intermediate, ["*.example.com"], "EC")


@pytest.fixture(scope="session")
def other_leaf(intermediate: Issued) -> Issued:
    """A second hostname, unrelated to example.com, for SNI tests."""
    return issue_cert(intermediate, ["other.test"], "EC")


# RFC 7919 ffdhe2048 (a published group, not a secret: generating DH parameters takes seconds).
FFDHE2048_PEM = (Path(__file__).parent / "ffdhe2048.pem").read_bytes()


@pytest.fixture(scope="session")
def dhparam_pem() -> bytes:
    """PEM DH parameters (``tls.dhparam``, nginx ``ssl_dhparam``)."""
    return FFDHE2048_PEM
