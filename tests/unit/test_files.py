"""Files fastterm writes and reads: nothing planted in a directory is followed or truncated,
private keys that others can read are flagged, and the pid file's default home is private."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fastterm import cli, files
from fastterm.demo import make_demo_pki
from fastterm.keys import KEY_SIZE

NOBODY = 65534


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    victim.chmod(0o644)
    return victim


def _untouched(victim: Path) -> None:
    assert victim.read_bytes() == b"precious\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_keys_new_does_not_write_through_a_planted_symlink(tmp_path, capsys):
    victim = _victim(tmp_path)
    target = tmp_path / "ticket.key"
    # Where `fastterm keys new` used to write first: FILE.tmp<pid>, pids being guessable.
    os.symlink(victim, f"{target}.tmp{os.getpid()}")
    assert cli.main(["keys", "new", str(target)]) == 0
    _untouched(victim)
    st = os.lstat(target)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == KEY_SIZE


def test_demo_does_not_write_through_a_planted_symlink(tmp_path):
    victim = _victim(tmp_path)
    state = tmp_path / "demo"
    state.mkdir(mode=0o700)
    for name in ("ca.key", "ca.crt", "localhost-ecdsa.key", "localhost-rsa.key"):
        os.symlink(victim, state / f"{name}.tmp")
    pki = make_demo_pki(str(state))
    _untouched(victim)
    for name in ("ca_key", "ecdsa_key", "rsa_key"):
        st = os.lstat(pki[name])
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, name


def _check(config: Path, capsys) -> tuple[int, str]:
    code = cli.main(["check", "-c", str(config)])
    return code, capsys.readouterr().err


def _config(tmp_path: Path, ec_files, extra: str = "") -> Path:
    cert, key = ec_files
    path = tmp_path / "fastterm.toml"
    path.write_text(f'{extra}\n[[upstream]]\nname = "app"\nservers = ["127.0.0.1:9"]\n\n'
                    f'[[server]]\nlisten = ["127.0.0.1:8443"]\n\n'
                    f'[[server.certificate]]\ncert = "{cert}"\nkey = "{key}"\n')
    return path


def test_private_key_readable_by_others_is_warned_about(tmp_path, ec_files, capsys):
    key = ec_files[1]
    os.chmod(key, 0o644)
    code, err = _check(_config(tmp_path, ec_files), capsys)
    assert code == 0, err
    assert f"fastterm: [warn] private key {key} is readable by group or others (mode 0644)" in err
    os.chmod(key, 0o600)
    code, err = _check(_config(tmp_path, ec_files), capsys)
    assert code == 0 and "[warn]" not in err, err


def test_ticket_key_file_readable_by_others_is_refused(tmp_path, ec_files, capsys):
    keys = tmp_path / "ticket.key"
    assert cli.main(["keys", "new", str(keys)]) == 0
    config = _config(tmp_path, ec_files, f'[sessions]\nticket_key_file = ["{keys}"]\n')
    os.chmod(ec_files[1], 0o600)
    code, err = _check(config, capsys)
    assert code == 0, err
    keys.chmod(0o640)
    os.chown(keys, -1, NOBODY)      # another group than ours
    code, err = _check(config, capsys)
    assert code == 1
    assert f"[emerg] {keys}: ticket key file is readable by group or others (mode 0640)" in err, err


def test_ticket_key_file_readable_by_our_own_group_alone_is_accepted(tmp_path, ec_files, capsys):
    """0440 root:fsGroup, what a Kubernetes Secret volume gives a non-root pod: the group is
    the process's and nobody else's, so the file is as private as 0400."""
    keys = tmp_path / "ticket.key"
    assert cli.main(["keys", "new", str(keys)]) == 0
    config = _config(tmp_path, ec_files, f'[sessions]\nticket_key_file = ["{keys}"]\n')
    os.chmod(ec_files[1], 0o600)
    os.chown(keys, -1, os.getegid())
    keys.chmod(0o440)
    assert files.group_is_ours_alone(os.getegid()) is True
    code, err = _check(config, capsys)
    assert code == 0, err
    keys.chmod(0o420)               # but never writable by the group
    code, err = _check(config, capsys)
    assert code == 1 and "ticket key file is writable by group or others (mode 0420)" in err, err


def _as_nobody(code: str, env: dict) -> subprocess.CompletedProcess:
    repo = str(Path(__file__).resolve().parents[2])
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-c", f"import sys; sys.path.insert(0, {repo!r}); {code}"],
                          capture_output=True, text=True, env=env, timeout=30, check=False)


@pytest.fixture
def shared_tmp():
    """A world-writable sticky directory, like /tmp, that user nobody can reach."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to act as another user")
    path = tempfile.mkdtemp(prefix="fastterm-shared-")
    os.chmod(path, 0o1777)
    probe = _as_nobody("import fastterm.supervisor", {"PATH": os.environ["PATH"]})
    if probe.returncode != 0:
        shutil.rmtree(path)
        pytest.skip(f"user nobody cannot import this checkout: {probe.stderr[-300:]}")
    yield Path(path)
    shutil.rmtree(path)


PRINT_PID_FILE = "from fastterm.supervisor import default_pid_file; print(default_pid_file())"


def test_default_pid_file_of_a_user_is_in_a_private_directory(shared_tmp):
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(shared_tmp)}
    r = _as_nobody(PRINT_PID_FILE, env)
    assert r.returncode == 0, r.stderr
    pid_file = Path(r.stdout.strip())
    st = os.lstat(pid_file.parent)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == NOBODY
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert pid_file.parent.parent == shared_tmp


def test_default_pid_file_refuses_a_directory_someone_else_planted(shared_tmp, tmp_path):
    planted = shared_tmp / f"fastterm-{NOBODY}"
    os.symlink(tmp_path, planted)    # root plays the other user: its own directory, linked
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(shared_tmp)}
    r = _as_nobody(PRINT_PID_FILE, env)
    assert r.returncode != 0 and "not a private directory" in r.stderr, (r.stdout, r.stderr)
    os.unlink(planted)
    planted.mkdir(mode=0o700)        # a real directory, but root's
    r = _as_nobody(PRINT_PID_FILE, env)
    assert r.returncode != 0 and "not a private directory" in r.stderr, (r.stdout, r.stderr)


def test_default_pid_file_uses_a_private_xdg_runtime_dir(shared_tmp):
    runtime = shared_tmp / "run-user"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, NOBODY, NOBODY)
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(shared_tmp), "XDG_RUNTIME_DIR": str(runtime)}
    r = _as_nobody(PRINT_PID_FILE, env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(runtime / "fastterm.pid")
