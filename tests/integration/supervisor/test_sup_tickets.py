"""Session-ticket keys: rotation and retirement, and fleet key files shared by instances.

Why the retirement test looks the way it does (fastterm/keys.py): after a rotation the old
key keeps decrypting for the session lifetime, so it retires exactly when the last ticket it
issued would expire anyway; a ticket under a retired key is indistinguishable from an expired
session unless some session outlives its key. OpenSSL 3.0 stores a session's time in whole
seconds and expires it only when ``now - time > timeout`` (ssl_get_prev_session), so a
session made at N.0x seconds is valid until N+timeout+1. A ticket made at N.0x under key K0,
K0 rotated out at N.1 and retired at N.1+timeout: between then and N+timeout+1 the session is
valid but its key is gone. A control session made at the same second under the new key K1
must still resume at that moment.
"""

from __future__ import annotations

import json
import os
import ssl
import time
from pathlib import Path

import pytest
from conftest import wait_until

TLS12 = ssl.TLSVersion.TLSv1_2


def _session(sup, ctx, session=None, port=None):
    """One request; returns (reused, the session to offer next time)."""
    with sup.connect(ctx, session=session, port=port) as sock:
        resp = sup.get(sock, "/")
        assert resp.status == 200
        return sock.session_reused, sock.session


def _resumes(sup, ctx, session, port=None) -> bool:
    return _session(sup, ctx, session, port)[0]


def _rotate(sup) -> int:
    code, body = sup.admin("POST", "/ticket-keys/rotate")
    assert code == 200, body
    return json.loads(body)["rotations"]


def _sleep_until_wall(t: float) -> None:
    left = t - time.time()
    if left > 0:
        time.sleep(left)


@pytest.mark.skipif(ssl.OPENSSL_VERSION_INFO[:2] != (3, 0),
                    reason="relies on OpenSSL 3.0's whole-second session expiry (see module doc)")
def test_ticket_survives_one_rotation_then_key_retires(supervised):
    timeout = 3
    sup = supervised(tls={"session_timeout": timeout}, sessions={"ticket_key_rotation": 1e6})
    ctx = sup.client_context(maximum_version=TLS12)
    # Start right after a whole second so both sessions carry the same time N.
    second = int(time.time()) + 1
    _sleep_until_wall(second + 0.02)
    reused, old_key_session = _session(sup, ctx)
    assert not reused
    assert _rotate(sup) == 2     # the first key was made at start
    reused, new_key_session = _session(sup, ctx)
    assert not reused
    assert int(time.time()) == second, "setup took over a second; timing window lost"
    # Right after the rotation the old key still decrypts.
    assert _resumes(sup, ctx, old_key_session), "a ticket under the previous key did not resume"
    assert _resumes(sup, ctx, new_key_session)
    # Old key retired at <= N + 0.1 + timeout (+0.2 s master tick); sessions valid until N + timeout + 1.
    _sleep_until_wall(second + timeout + 0.6)
    assert _resumes(sup, ctx, new_key_session), \
        "control: a session of the same age under the current key no longer resumes"
    reused, _ = _session(sup, ctx, old_key_session)   # a full handshake, and no error
    assert not reused, "a ticket under a retired key still resumed"
    assert int(time.time()) == second + timeout, "checks ran outside the timing window"
    st = sup.status()
    assert st["ticket_key_rotations"] == 2


def test_old_key_lives_as_long_as_the_reloaded_session_timeout(supervised):
    """A reload that lengthens session_timeout must keep rotated keys that long too:
    tickets issued under the old key are valid sessions for the new timeout."""
    sup = supervised(tls={"session_timeout": 2}, sessions={"ticket_key_rotation": 1e6})
    config = dict(sup.config)
    config["server"] = [dict(config["server"][0], tls={"session_timeout": 60})]
    sup.write_config(config)
    os.kill(sup.read_pid_file(), 1)   # SIGHUP
    sup.wait_serving(2)
    ctx = sup.client_context(maximum_version=TLS12)
    reused, session = _session(sup, ctx)
    assert not reused
    _rotate(sup)
    time.sleep(3.5)   # past the old lifetime (2 s, +1 s of whole-second rounding)
    assert _resumes(sup, ctx, session), \
        "a 60 s session under the previous key stopped resuming 3.5 s after a rotation"


def _write_keys(path: Path, keys: list[bytes]) -> None:
    """As an operator must: owner-only (fastterm refuses a key file others can read)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(b"".join(keys))
    tmp.chmod(0o600)
    os.replace(tmp, path)


def test_fleet_key_file(supervised, tmp_path):
    shared_file = tmp_path / "fleet.key"
    other_file = tmp_path / "other.key"
    first = supervised(start=False)
    for path in (shared_file, other_file):
        r = first.cli("keys", "new", str(path))
        assert r.returncode == 0, r.stderr
        assert path.stat().st_size == 80
        assert path.stat().st_mode & 0o777 == 0o600
    first.config["sessions"] = {"ticket_key_file": [str(shared_file)]}
    first.write_config()
    a = first.start()
    b = supervised(sessions={"ticket_key_file": [str(shared_file)]})
    c = supervised(sessions={"ticket_key_file": [str(other_file)]})
    assert len({a.https_port, b.https_port, c.https_port}) == 3
    ctx = a.client_context()

    reused, from_a = _session(a, ctx)
    assert not reused
    assert _resumes(b, ctx, from_a), "B did not resume a ticket A issued under the same key file"
    reused, from_b = _session(b, ctx)
    assert _resumes(a, ctx, from_b), "A did not resume a ticket B issued under the same key file"
    assert not _resumes(c, ctx, from_a), "C, with another key file, resumed A's ticket"
    assert _session(c, ctx)[1] is not None   # and C serves normally

    # A new key replaces the file: within ~2 s old tickets stop resuming, on both nodes.
    old_key = shared_file.read_bytes()
    r = a.cli("keys", "new", str(shared_file))
    assert r.returncode == 0, r.stderr
    new_key = shared_file.read_bytes()
    assert new_key != old_key
    for node in (a, b):
        wait_until(lambda n=node: not _resumes(n, ctx, from_a), 2.5, 0.1,
                   f"{node.name} to drop the replaced key")
    reused, under_new = _session(a, ctx)
    assert _resumes(b, ctx, under_new)

    # The old key kept as a second key: old tickets resume again, new ones still do.
    _write_keys(shared_file, [new_key, old_key])
    for node in (a, b):
        wait_until(lambda n=node: _resumes(n, ctx, from_a), 2.5, 0.1,
                   f"{node.name} to accept the old key as a second key")
    assert _resumes(a, ctx, under_new) and _resumes(b, ctx, under_new)
    reused, latest = _session(b, ctx)
    assert _resumes(a, ctx, latest)
    assert not _resumes(c, ctx, latest)
    for node in (a, b, c):
        assert node.status()["reload_failures"] == 0
