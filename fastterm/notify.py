"""systemd's readiness protocol (sd_notify(3)), spoken directly on ``$NOTIFY_SOCKET``.

``Type=notify`` units get an AF_UNIX datagram socket's address in ``NOTIFY_SOCKET``: a path,
or an abstract name written with a leading ``@``. Each state change is one datagram of
``KEY=VALUE`` lines: ``READY=1`` once the workers serve, ``RELOADING=1`` with
``MONOTONIC_USEC`` (CLOCK_MONOTONIC, which systemd 253+ requires to pair the reload with its
job) when a reload starts and ``READY=1`` again when it ended (either way), ``STOPPING=1``
when a stop begins, ``STATUS=`` a line that ``systemctl status`` shows. No library: the
protocol is one ``sendto`` per message, and libsystemd would be a C dependency for it.

Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing. A send that fails (systemd
gone, a full queue) is logged once and dropped: readiness reporting never stops the master.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("fastterm.notify")


def notify_address(value: str | None) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as ``sendto`` takes it: ``@name`` is the abstract ``\\0name``."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None   # vsock addresses (systemd 254+, VMs) are not for a process on the host


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """The master's side of ``Type=notify``; read ``$NOTIFY_SOCKET`` once, at start."""

    def __init__(self, environ=os.environ):
        self.address = notify_address(environ.get("NOTIFY_SOCKET"))
        self.sock: socket.socket | None = None
        self.failed = False
        if self.address is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)

    def send(self, *lines: str) -> None:
        """One datagram; each line one ``KEY=VALUE`` (a newline inside a value, an error
        message's, would start a bogus key: it becomes a space)."""
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(" ".join(line.splitlines()) for line in lines).encode() + b"\n",
                             self.address)
        except OSError as exc:
            if not self.failed:
                log.warning("cannot notify systemd on %s: %s", os.environ.get("NOTIFY_SOCKET"), exc)
            self.failed = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def close_in_child(self) -> None:
        """A worker reports nothing: only the main pid may (NotifyAccess=main)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
