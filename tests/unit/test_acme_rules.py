"""certs/acme.py without a CA: the RFC 8737 challenge certificate, the backoff, the planned
files and placeholders, what ``fastterm check`` refuses, the HTTP-01 lookup, an unreadable
account key."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from fastterm.certs import acme
from fastterm.config import ConfigSource
from fastterm.errors import ConfigError
from fastterm.redirect import RedirectLimits, RedirectProtocol, RedirectTable

CONFIG = """\
[[upstream]]
name = "app"
servers = ["127.0.0.1:8081"]

[acme]
directory = "https://127.0.0.1:1/dir"
state_dir = "state"
{acme}

[[server]]
listen = ["127.0.0.1:8443"]
server_names = {names}
{redirect}
"""
REDIRECT = '\n[[redirect]]\nlisten = ["127.0.0.1:8080"]\n'


def _config(write, names='["a.example.test", "b.example.test", "*.wild.example.test"]', acme_extra="",
            redirect=REDIRECT) -> str:
    return write("fastterm.toml", CONFIG.format(names=names, acme=acme_extra, redirect=redirect))


def test_tls_alpn_certificate_carries_the_key_authorization_digest():
    """RFC 8737 §3: critical id-pe-acmeIdentifier = OCTET STRING (32) of SHA-256(key authorization),
    the name as the only SAN."""
    cert_pem, key_pem = acme.tls_alpn_certificate("a.example.test", "token.thumbprint")
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_oid(acme.ID_PE_ACME_IDENTIFIER)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumbprint").digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example.test"]
    assert b"PRIVATE KEY" in key_pem


def test_backoff_doubles_up_to_an_hour_and_honours_retry_after():
    assert [acme.retry_delay(n) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert acme.retry_delay(40) == acme.BACKOFF_MAX
    assert acme.retry_delay(1, retry_after=120.0) == 120.0     # rateLimited: the server's time wins
    assert acme.retry_delay(5, retry_after=1.0) == 32.0


def test_renewal_at_two_thirds_of_the_lifetime():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert acme.renewal_at(start, start + timedelta(days=90)) == start + timedelta(days=60)


def test_a_block_with_acme_is_planned_with_placeholders_under_state_dir(write, tmp_path):
    config = ConfigSource(_config(write, names='["a.example.test", "b.example.test"]')).load()
    server = config.servers[0]
    directory = tmp_path / "state" / "certs" / "a.example.test"
    assert [c.cert for c in server.certificates] == [str(directory)]
    assert server.acme.names == ["a.example.test", "b.example.test"]
    for name in server.acme.names:
        path = directory / f"{name}.pem"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert acme.is_placeholder(x509.load_pem_x509_certificate(path.read_bytes()))
    for d in (tmp_path / "state", directory, tmp_path / "state" / "challenges" / "http-01"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    before = (directory / "a.example.test.pem").read_bytes()
    ConfigSource(_config(write, names='["a.example.test", "b.example.test"]')).load()
    assert (directory / "a.example.test.pem").read_bytes() == before   # kept, not made again
    jobs = acme.jobs_of(config)
    assert [j["name"] for j in jobs] == ["a.example.test", "b.example.test"]


def test_wildcard_and_regex_names_are_left_out_and_an_explicit_wildcard_refused(write):
    config = ConfigSource(_config(write)).load()
    assert config.servers[0].acme.names == ["a.example.test", "b.example.test"]
    with pytest.raises(ConfigError, match="dns-01"):
        ConfigSource(_config(write, acme_extra='names = ["*.wild.example.test"]')).load()
    with pytest.raises(ConfigError, match="exact server_names"):
        ConfigSource(_config(write, names='["~^api"]')).load()


def test_check_names_the_missing_port_80_listener(write, python, subprocess_env, tmp_path):
    path = _config(write, redirect="")
    result = subprocess.run([python, "-m", "fastterm", "check", "-c", path], check=False, capture_output=True,
                            text=True, env=subprocess_env, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert "http-01 needs a plain-HTTP listener" in result.stderr and "[[redirect]]" in result.stderr
    path = _config(write, redirect="", acme_extra='challenge = "tls-alpn-01"')
    result = subprocess.run([python, "-m", "fastterm", "check", "-c", path], check=False, capture_output=True,
                            text=True, env=subprocess_env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr


class _Transport:
    def __init__(self):
        self.out = b""
        self.closed = False

    def write(self, data):
        self.out += data

    def close(self):
        self.closed = True

    def get_extra_info(self, name):
        return ("127.0.0.1", 80)


def _plain(dirs, target: str) -> bytes:
    from fastterm.config.model import Redirect

    proto = RedirectProtocol(RedirectTable.build([Redirect(listen=["127.0.0.1:80"])], 5.0), "127.0.0.1",
                             RedirectLimits(5.0, 16, challenge_dirs=dirs))
    proto.transport = _Transport()
    proto.limits.open += 1
    proto.counted = True
    proto.data_received(f"GET {target} HTTP/1.1\r\nHost: a.example.test\r\n\r\n".encode())
    proto._cancel()
    return proto.transport.out


def test_http01_answers_from_the_first_directory_holding_the_token(tmp_path):
    pending, webroot = tmp_path / "pending", tmp_path / "webroot"
    pending.mkdir()
    webroot.mkdir()
    (pending / "tok-1").write_text("tok-1.thumb")
    (webroot / "tok-2").write_text("tok-2.certbot")
    (tmp_path / "secret").write_text("no")
    dirs = [str(pending), str(webroot)]
    assert _plain(dirs, "/.well-known/acme-challenge/tok-1").endswith(b"\r\n\r\ntok-1.thumb")
    assert _plain(dirs, "/.well-known/acme-challenge/tok-2").endswith(b"\r\n\r\ntok-2.certbot")
    for target in ("/.well-known/acme-challenge/../secret", "/.well-known/acme-challenge/tok-3",
                   "/.well-known/acme-challenge/"):
        assert _plain(dirs, target).startswith(b"HTTP/1.1 301"), target


def test_an_unreadable_account_key_is_this_names_error(tmp_path):
    job = {"name": "a.example.test", "cert_dir": str(tmp_path / "c"), "directory": "https://127.0.0.1:1/dir",
           "email": None, "accept_terms": True, "ca_file": None, "state_dir": str(tmp_path / "s"),
           "challenge": "http-01", "key_type": "ecdsa"}
    digest = hashlib.sha256(job["directory"].encode()).hexdigest()[:16]
    os.makedirs(tmp_path / "s" / "accounts", mode=0o700)
    os.chmod(tmp_path / "s", 0o700)
    (tmp_path / "s" / "accounts" / f"{digest}.json").write_text("not a key")
    agent = acme.Agent()
    agent.set_jobs([job])
    agent.run_due()
    state = json.loads((tmp_path / "s" / "state.json").read_text())["a.example.test"]
    assert "cannot be read" in state["last_error"] and state["failures"] == 1
    assert state["next_attempt"] >= state["last_attempt"] + acme.BACKOFF_BASE


def test_retry_after_of_a_rate_limited_answer():
    """rateLimited (RFC 8555 §6.6): the Retry-After of the CA's answer, in seconds or as an HTTP date."""
    from email.utils import format_datetime
    from types import SimpleNamespace

    import requests

    answer = requests.Response()
    answer.headers["Retry-After"] = "120"
    assert acme._retry_after(SimpleNamespace(last_response=answer)) == 120.0
    answer.headers["Retry-After"] = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    assert 3500 < acme._retry_after(SimpleNamespace(last_response=answer)) <= 3600
    answer.headers["Retry-After"] = "soon"
    assert acme._retry_after(SimpleNamespace(last_response=answer)) is None


@pytest.mark.parametrize("key_type", ["ecdsa", "rsa"])
def test_placeholder_is_one_file_the_store_loads(tmp_path, key_type):
    """Chain and key in one file (one rename swaps both), read as a PEM directory entry is."""
    from fastterm.certs.store import load_directory_entry

    path = tmp_path / "a.example.test.pem"
    path.write_bytes(acme.placeholder_pem("a.example.test", key_type))
    ck = load_directory_entry(str(path))
    assert ck.names == ("a.example.test",) and ck.key_type == {"ecdsa": "EC", "rsa": "RSA"}[key_type]
    assert acme.first_due({"cert_dir": str(tmp_path), "name": "a.example.test"}, acme.NameState(), 5.0) == 5.0
