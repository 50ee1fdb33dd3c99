"""Workers as an unprivileged user: nginx's ``user NAME [GROUP];``, fastterm.toml's ``user``/``group``.

Started as root, the master keeps root: it binds the listening sockets (80 and 443 need
it, or CAP_NET_BIND_SERVICE), reads the private keys, the ticket-key files and the OCSP
staples, writes the pid and token files and answers the admin endpoint. Each forked worker
then gives root up for good before it serves its first byte: ``initgroups`` (the user's
supplementary groups, as nginx), ``setgid``, ``setuid``, and ``PR_SET_NO_NEW_PRIVS`` so that
nothing it could exec regains privileges. Everything a worker needs was made before the drop
(sockets, SSL_CTXs holding the keys, the shared memory mappings) or lives in the master, so a
worker never needs to open a file the master could and it cannot.

Started as anyone else, ``user`` cannot be honoured and is ignored with a warning (nginx:
"the "user" directive makes sense only if the master process runs with super-user
privileges, ignored").
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
from dataclasses import dataclass

from fastterm.errors import ConfigError

PR_SET_NO_NEW_PRIVS = 38   # <linux/prctl.h>, Linux 3.5+


@dataclass(frozen=True)
class Credentials:
    user: str
    uid: int
    gid: int


def resolve(user: str | None, group: str | None) -> Credentials | None:
    """The uid and gid that workers take (names or numbers); ConfigError for unknown ones.
    No group: the user's own primary group from the passwd database."""
    if not user:
        return None
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"unknown user {user!r}: no such entry in the passwd database") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"unknown group {group!r}: no such entry in the group database") from None
    return Credentials(entry.pw_name, entry.pw_uid, gid)


def applies(creds: Credentials | None) -> bool:
    """A drop happens: a user is configured, this process is root, and it is another user."""
    return creds is not None and os.geteuid() == 0 and creds.uid != 0


def no_new_privileges() -> None:
    """``prctl(PR_SET_NO_NEW_PRIVS, 1)``: execve can no longer grant privileges (setuid
    bits, file capabilities); inherited by every child, never undone."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")


def drop(creds: Credentials) -> None:
    """In a new worker: become ``creds`` for good (raises OSError; the worker then exits).
    Group first: after setuid the process could no longer change it. Then verified, as
    a setuid that half-worked must not leave a root worker serving."""
    os.initgroups(creds.user, creds.gid)
    os.setgid(creds.gid)
    os.setuid(creds.uid)
    no_new_privileges()
    if os.getuid() != creds.uid or os.geteuid() != creds.uid or os.getegid() != creds.gid:
        raise OSError(f"privilege drop to {creds.user} ({creds.uid}:{creds.gid}) did not hold")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise OSError(f"privilege drop to {creds.user}: setuid(0) still succeeds")
