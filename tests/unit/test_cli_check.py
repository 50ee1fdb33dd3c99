"""``fastterm check`` as operators run it: a subprocess, an exit status, nginx -t's wording."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest

from fastterm.demo import issue_cert

CONFIG = """\
[[upstream]]
name = "app"
servers = ["127.0.0.1:8081"]

[[server]]
listen = ["127.0.0.1:8443"]
server_names = ["www.example.com"]

[[server.certificate]]
cert = "certs/ec.crt"
key = "certs/ec.key"
"""


@pytest.fixture
def check(python, subprocess_env, tmp_path):
    def _check(path: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "fastterm", "check", "-c", path], check=False, capture_output=True,
                              text=True, env=subprocess_env, cwd=tmp_path, timeout=60)

    return _check


def test_good_config(check, write, ec_files):
    path = write("fastterm.toml", CONFIG)
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert f"fastterm: the configuration file {path} syntax is ok" in result.stdout
    assert f"fastterm: configuration file {path} test is successful" in result.stdout
    assert "[emerg]" not in result.stderr


def test_schema_error(check, write, ec_files):
    path = write("fastterm.toml", CONFIG.replace('servers = ["127.0.0.1:8081"]', 'servers = "127.0.0.1"'))
    result = check(path)
    assert result.returncode == 1
    assert f"fastterm: [emerg] {path}:3: upstream.servers: Expected array" in result.stderr
    assert f"fastterm: configuration file {path} test failed" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_certificate_file(check, write):
    path = write("fastterm.toml", CONFIG)
    result = check(path)
    assert result.returncode == 1
    assert "[emerg]" in result.stderr and "ec.crt" in result.stderr and "no such file" in result.stderr
    assert "test failed" in result.stderr


def test_mismatched_key(check, write, ec_leaf, rsa_leaf):
    write("certs/ec.crt", ec_leaf.cert_pem)
    write("certs/ec.key", rsa_leaf.key_pem)
    result = check(write("fastterm.toml", CONFIG))
    assert result.returncode == 1
    assert "does not match" in result.stderr


def test_expired_certificate_warns_but_passes(check, write, ca):
    now = datetime.now(UTC)
    expired = issue_cert(ca, ["www.example.com"], "EC", now - timedelta(days=90), now - timedelta(days=2))
    write("certs/ec.crt", expired.cert_pem)
    write("certs/ec.key", expired.key_pem)
    result = check(write("fastterm.toml", CONFIG))
    assert "fastterm: [warn] certificate www.example.com" in result.stderr
    assert "expired" in result.stderr
    assert result.returncode == 0, result.stderr


def test_missing_config_file(check, tmp_path):
    result = check(str(tmp_path / "absent.toml"))
    assert result.returncode == 1
    assert "absent.toml" in result.stderr and "test failed" in result.stderr


def test_accept_proxy_needs_proxy_trusted(check, write, ec_files):
    text = CONFIG.replace('server_names = ["www.example.com"]\n', 'server_names = ["www.example.com"]\naccept_proxy = true\n')
    result = check(write("fastterm.toml", text))
    assert result.returncode == 1
    assert "accept_proxy needs proxy_trusted" in result.stderr
    result = check(write("fastterm.toml", text.replace("accept_proxy = true\n",
                                                      'accept_proxy = true\nproxy_trusted = ["10.0.0.0/8"]\n')))
    assert result.returncode == 0, result.stderr
    result = check(write("fastterm.toml", text.replace("accept_proxy = true\n",
                                                      'accept_proxy = true\nproxy_trusted = ["10.0.0.0/33"]\n')))
    assert result.returncode == 1
