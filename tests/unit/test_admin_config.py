"""``admin`` on TCP listens on loopback unless ``admin_allow_remote`` says otherwise: the
endpoint is plain HTTP, and its GETs need no credential."""

from __future__ import annotations

import pytest

from fastterm.config.toml import load_config
from fastterm.errors import ConfigError

BASE = """\
[[upstream]]
name = "app"
servers = ["127.0.0.1:8081"]

[[server]]
listen = ["127.0.0.1:8443"]

[[server.certificate]]
cert = "ec.crt"
key = "ec.key"
"""


def _load(tmp_path, top: str):
    path = tmp_path / "fastterm.toml"
    path.write_text(top + "\n" + BASE)
    return load_config(str(path))


@pytest.mark.parametrize("address", ["0.0.0.0:9901", "[::]:9901", "192.0.2.1:9901",
                                     "admin.example:9901"])
def test_a_remote_admin_address_is_refused(tmp_path, address):
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, f'log_level = "info"\nadmin = "{address}"')
    assert err.value.line == 2 and err.value.directive == "admin", str(err.value)
    assert "admin_allow_remote" in str(err.value)


@pytest.mark.parametrize("address", ["9901", "127.0.0.1:9901", "127.0.0.2:9901", "[::1]:9901",
                                     "localhost:9901", "unix:/run/fastterm.sock"])
def test_loopback_and_unix_admin_addresses_are_accepted(tmp_path, address):
    assert _load(tmp_path, f'admin = "{address}"').admin == address


def test_admin_allow_remote_opens_any_address(tmp_path):
    config = _load(tmp_path, 'admin = "0.0.0.0:9901"\nadmin_allow_remote = true')
    assert config.admin_allow_remote
