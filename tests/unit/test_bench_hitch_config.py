"""``fastterm bench``'s hitch peer: the config written from the fastterm config (checked by
hitch itself, ``hitch --test``, when it is installed), the runs it is n/a for, its ports."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from forked import in_child

from fastterm.bench.peers import (
    HITCH_CANNOT,
    PEERS,
    HitchPeer,
    hitch_conf,
    hitch_max_conns,
    load_setup,
    make_peers,
)
from fastterm.bench.run import Bench
from fastterm.bench.system import which

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKEND = "127.0.0.1:9"


@pytest.fixture
def setup(tmp_path):
    return load_setup(None, str(tmp_path), None, [0])


def test_hitch_conf_follows_the_fastterm_config(tmp_path, setup):
    from fastterm.config.model import INTERMEDIATE_CIPHERS, TLS13_CIPHERSUITES

    setup.workers = 3
    conf = hitch_conf(setup, str(tmp_path), BACKEND, {"main": 1, "ecdsa": 2, "rsa": 3})
    assert conf.count("frontend = {") == 3
    assert 'backend = "[127.0.0.1]:9"' in conf and "workers = 3" in conf
    assert "tls-protos = TLSv1.2 TLSv1.3" in conf
    assert f'ciphers = "{INTERMEDIATE_CIPHERS}"' in conf
    assert f'ciphersuites = "{TLS13_CIPHERSUITES}"' in conf
    assert 'ecdh-curve = "X25519:P-256:P-384"' in conf and "prefer-server-ciphers = on" in conf
    # ALPN: the backend speaks HTTP/1.1 and hitch forwards bytes, so h2 is never offered.
    assert 'alpn-protos = "http/1.1"' in conf and "h2" not in conf
    assert "daemon = off" in conf


def test_each_frontend_gets_one_pem_of_chain_then_key(tmp_path, setup):
    conf = hitch_conf(setup, str(tmp_path), BACKEND, {"main": 1, "ecdsa": 2, "rsa": 3})
    frontends = conf.split("frontend = {")[1:]
    pems = [f.split('pem-file = "')[1].split('"')[0] for f in frontends]
    # One certificate per SNI name in hitch: the main port serves the first kind, ECDSA here.
    assert pems == [str(tmp_path / "hitch-ecdsa.pem"), str(tmp_path / "hitch-ecdsa.pem"),
                    str(tmp_path / "hitch-rsa.pem")]
    for kind in ("ecdsa", "rsa"):
        data = (tmp_path / f"hitch-{kind}.pem").read_bytes()
        assert (tmp_path / f"hitch-{kind}.pem").stat().st_mode & 0o077 == 0
        chain = Path(setup.certs[kind][0]).read_bytes().rstrip(b"\n")
        assert data.startswith(chain)
        assert x509.load_pem_x509_certificate(data).public_key().public_numbers() == \
            load_pem_private_key(data[data.index(b"-----BEGIN", len(chain)):], None).public_key().public_numbers()


def test_protocols_and_cipher_order_follow_but_no_session_cache_line(tmp_path, setup):
    """Debian's hitch refuses ``session-cache`` / ``shared-cache`` (built without them) and has
    no ticket switch: the config keeps OpenSSL's per-worker cache and tickets."""
    import msgspec

    setup.tls = msgspec.structs.replace(setup.tls, protocols=["TLSv1.3"], session_tickets=False,
                                        prefer_server_ciphers=False)
    conf = hitch_conf(setup, str(tmp_path), BACKEND, {"main": 1})
    assert "tls-protos = TLSv1.3\n" in conf and "prefer-server-ciphers = off" in conf
    keys = [line.split("=")[0].strip() for line in conf.splitlines() if "=" in line]
    assert not {"session-cache", "shared-cache-listen", "shared-cache-peer"} & set(keys), keys


@pytest.mark.skipif(not which("hitch"), reason="hitch is not installed (./bootstrap setup installs it)")
def test_hitch_accepts_the_config(tmp_path, setup):
    conf = tmp_path / "hitch.conf"
    conf.write_text(hitch_conf(setup, str(tmp_path), BACKEND, {"main": 1, "ecdsa": 2, "rsa": 3}))
    res = subprocess.run([which("hitch"), "--test", "--config", str(conf)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "configuration looks ok" in res.stdout + res.stderr


def test_the_hitch_peer_has_no_early_port_and_says_what_it_cannot_run(tmp_path, setup):
    setup.early_data = True
    peers = make_peers(setup, str(tmp_path), BACKEND, ["hitch"], "0", {}, str(REPO_ROOT))
    assert [p.name for p in peers] == ["fastterm", "hitch"]
    hitch = peers[1]
    assert isinstance(hitch, HitchPeer) and "hitch" in PEERS
    assert set(hitch.ports) == {"main", "ecdsa", "rsa"} and "early" in peers[0].ports
    assert set(hitch.cannot) == {"h2-m10", "h2-m100", "keepalive-reencrypt", "resumed-0rtt", "slowheaders"}
    assert hitch.argv[:3] == ["taskset", "-c", "0"] and hitch.argv[-2:] == ["--config", f"{tmp_path}/hitch.conf"]
    assert (tmp_path / "hitch.conf").read_text() == hitch_conf(setup, str(tmp_path), BACKEND, hitch.ports)
    assert hitch.max_conns == hitch_max_conns()


def test_a_finite_fd_limit_caps_hitch_at_half_of_it():
    """Two fds per connection: under a hard limit of 20,000 the 10,000-connection run did not
    fit (9,995 opened in a real run), so below the cap it is skipped, as HAProxy's is (in a
    child: a lowered hard limit cannot be raised again)."""

    def capped():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1000, 4000))
        return hitch_max_conns()

    assert in_child(capped) == 1900


@pytest.mark.parametrize("run", sorted(HITCH_CANNOT))
def test_a_run_hitch_cannot_do_is_skipped_not_invalid(run):
    """Skipped before anything is started or loaded: the report's n/a, not an invalid run."""
    peer = HitchPeer("hitch", {"main": 1}, cannot=dict(HITCH_CANNOT))
    result = Bench(None, [peer], "1", {}).measure(peer, run, 1)
    assert result.skipped == HITCH_CANNOT[run]
    assert result.invalid == [] and result.figures == {}
