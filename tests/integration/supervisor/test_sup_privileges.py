"""Started as root with ``user = "nobody"``: the master keeps root, the workers do not (privileges.py).

The certificate's directory is world-traversable and its key 0600 root, so that what stops a
worker reading the key is the key's own mode and nothing else; a second key, 0640 with the
workers' group, shows the other side ("unless readable to that user by design"). The proofs:
the workers' /proc status (Uid, Gid, Groups, NoNewPrivs, no capabilities), a process with the
workers' exact credentials failing to open the key, handshakes and resumption across workers
still served (the contexts and the shared memory were made before the drop), the admin
endpoint, pid file and ``fastterm reload`` still the master's, and a changed certificate
reaching clients, read by the master and brought to a new generation by a reload.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import shutil
import ssl
import tempfile
from pathlib import Path

import pytest
from conftest import wait_until
from harness import HOST, NAME

from fastterm.demo import issue_cert

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs root")

USER, GROUP = "nobody", "nogroup"


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.fixture
def key_dir():
    path = tempfile.mkdtemp(prefix="fastterm-keys-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path)


def install(key_dir: Path, leaf, intermediate, name: str, *, key_mode: int = 0o600, key_gid: int = 0) -> dict:
    """cert 0644, key ``key_mode`` owned by root:``key_gid``, swapped in atomically (rename)."""
    cert, key = key_dir / f"{name}.crt", key_dir / f"{name}.key"
    for path, data, mode in ((cert, leaf.cert_pem + intermediate.cert_pem, 0o644), (key, leaf.key_pem, key_mode)):
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chown(tmp, 0, key_gid if path == key else 0)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    return {"cert": str(cert), "key": str(key)}


def read_as(uid: int, gid: int, groups: list[int], path: str) -> int:
    """Open ``path`` in a forked process holding exactly these credentials (setgroups,
    setgid, setuid, as the worker did): 0 when it could read it, else the errno."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            with open(path, "rb") as f:
                f.read()
            code = 0
        except OSError as exc:
            code = exc.errno or 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def served_serial(sup) -> int:
    ctx = sup.client_context()
    with sup.connect(ctx) as sock:
        der = sock.getpeercert(binary_form=True)
    from cryptography import x509
    return x509.load_der_x509_certificate(der).serial_number


def test_workers_run_as_the_configured_user(supervised, key_dir, ec_leaf, intermediate):
    nobody, nogroup = pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
    sup = supervised(start=False, user=USER, group=GROUP)
    certificate = install(key_dir, ec_leaf, intermediate, "www")
    sup.config["server"][0]["certificate"] = [certificate]
    sup.write_config()
    sup.start()
    # the status lists a worker once forked; it drops root before it serves (/ready says so)
    assert wait_until(lambda: sup.admin("GET", "/ready")[0] == 200, 10)

    workers = sup.worker_pids()
    assert len(workers) == 2
    master = proc_status(sup.pid)
    assert master["Uid"].split() == ["0"] * 4
    for pid in workers:
        status = proc_status(pid)
        assert status["Uid"].split() == [str(nobody)] * 4, status["Uid"]   # real, effective, saved, fs
        assert status["Gid"].split() == [str(nogroup)] * 4, status["Gid"]
        assert status["Groups"].split() == [str(nogroup)]   # initgroups: nobody's groups, not root's
        assert status["NoNewPrivs"] == "1"
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0

    # The workers' credentials cannot read the 0600 root key; root (the master) can.
    groups = [int(g) for g in proc_status(workers[0])["Groups"].split()]
    assert read_as(nobody, nogroup, groups, certificate["key"]) == errno.EACCES
    assert read_as(nobody, nogroup, groups, certificate["cert"]) == 0
    shared = install(key_dir, ec_leaf, intermediate, "by-design", key_mode=0o640, key_gid=nogroup)
    assert read_as(nobody, nogroup, groups, shared["key"]) == 0

    # Served: handshakes (contexts built by the master before fork) and resumption across
    # both workers (session cache and ticket keys in the shared memory mapped before the drop).
    assert sup.request("/").status == 200
    ctx = sup.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with sup.connect(ctx) as sock:
        assert sup.get(sock).status == 200
        session = sock.session
    for _ in range(6):
        with sup.connect(ctx, session=session) as sock:
            assert sock.session_reused
            assert sup.get(sock).status == 200
    assert sup.read_pid_file() == sup.pid
    assert sup.status()["generation"] == 1

    # A renewed certificate, its key again 0600 root: the master reads it and reloads.
    renewed = issue_cert(intermediate, ["www.example.com", "Example.COM"], "EC")
    assert served_serial(sup) == ec_leaf.cert.serial_number
    install(key_dir, renewed, intermediate, "www")
    wait_until(lambda: served_serial(sup) == renewed.cert.serial_number, 15, 0.1, "the renewed certificate")
    status = sup.status()
    assert status["generation"] >= 2 and status["reload_failures"] == 0
    assert "certificate files changed: reloading, the workers run as nobody" in sup.log()
    sup.wait_serving(status["generation"])
    for pid in sup.worker_pids():
        assert proc_status(pid)["Uid"].split() == [str(nobody)] * 4

    # `fastterm reload` (the unit's ExecReload) still goes to the master.
    result = sup.cli("reload", "-c", sup.config_path)
    assert result.returncode == 0, result.stderr
    assert sup.request("/").status == 200


def test_unknown_user_is_a_config_error(supervised):
    sup = supervised(start=False, user="no-such-user-fastterm")
    result = sup.cli("check", "-c", sup.config_path)
    assert result.returncode == 1
    assert "user: unknown user 'no-such-user-fastterm'" in result.stderr, result.stderr
    assert f"{HOST}" not in result.stderr and NAME not in result.stderr
