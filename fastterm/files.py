"""The files fastterm writes (pid file, admin token, ticket keys, the demo PKI) and the
private directories they default to.

A file is replaced whole through a temporary file that ``mkstemp`` made in the same
directory: O_CREAT|O_EXCL under a random name, so nothing planted there beforehand (a
symlink to /etc/passwd, say) is followed or truncated, and mode 0600 from the first byte.
rename(2) then swaps it in; a symlink at the target is replaced, never written through.
"""

from __future__ import annotations

import os
import stat
import tempfile

from fastterm.errors import FasttermError


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``, readers see the old file or the new one, never a part."""
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode != 0o600:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def is_private_dir(path: str) -> bool:
    """A real directory (not a symlink), ours, that no one else can list or write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def private_dir(path: str) -> str:
    """``path`` made 0700 if missing; an existing one must already be private (someone
    else may have made it first, in /tmp, to read or swap what we put there)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise FasttermError(f"cannot create {path}: {exc.strerror}") from None
    if not is_private_dir(path):
        raise FasttermError(f"{path} is not a private directory (a directory of uid {os.geteuid()}, "
                            "mode 0700, not a symlink): remove it or set pid_file")
    return path


def exposure(path: str | int) -> str | None:
    """``"readable by group or others (mode 0644)"`` when a secret's permissions let other
    users read or replace it, else None: owner-only modes (0600, 0400), or read for a group
    that is ours alone (0440 root:fsGroup, which a Kubernetes Secret volume mounted for a
    non-root pod gives; a private group of ``useradd --user-group``)."""
    st = os.stat(path)
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077 or (not mode & 0o037 and group_is_ours_alone(st.st_gid)):
        return None
    how = "readable" if mode & 0o044 else "writable"
    return f"{how} by group or others (mode {mode:04o})"


def group_is_ours_alone(gid: int) -> bool:
    """``gid`` is this process's group and no other user's, primary or supplementary
    (a group the databases do not know could be anyone's)."""
    import grp
    import pwd

    if gid != os.getegid():
        return False
    try:
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return False
    me = os.geteuid()
    others = {u.pw_name for u in pwd.getpwall() if u.pw_gid == gid and u.pw_uid != me}
    try:
        members.discard(pwd.getpwuid(me).pw_name)
    except KeyError:
        pass
    return not (members | others)
