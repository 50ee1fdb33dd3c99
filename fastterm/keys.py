"""Session-ticket keys: generated, rotated and published to shared memory by the master.

Two sources:

* generated (default): a fresh CSPRNG key every ``ticket_key_rotation`` seconds; the
  previous keys stay, for decryption only, until every ticket they issued has outlived
  the session lifetime, then they are retired (a ticket under a retired key gets a full
  handshake, no error).
* ``ticket_key_file`` (a fleet): nginx's ``ssl_session_ticket_key`` format, 80 bytes
  per key (16-byte name, 32-byte HMAC key, 32-byte AES key); the first key of the first
  file encrypts, all decrypt. Files are re-read when they change, so a platform can
  rotate the keys of every node at once (a Kubernetes Secret, say).
"""

from __future__ import annotations

import logging
import os
import time

from fastterm.errors import ConfigError
from fastterm.files import exposure, write_atomic

KEY_SIZE = 80
MAX_KEYS = 8

log = logging.getLogger("fastterm.keys")


def new_key() -> bytes:
    return os.urandom(KEY_SIZE)


def write_key_file(path: str) -> None:
    """``fastterm keys new FILE``: one fresh key, mode 0600, written atomically."""
    write_atomic(path, new_key())


def read_key_files(paths: list[str]) -> list[bytes]:
    """The keys of every file, in order. A file that group or others can read is refused:
    whoever reads it can decrypt every ticket, so every resumed session (nginx does not
    check; a Kubernetes Secret volume needs ``defaultMode: 0400``)."""
    keys: list[bytes] = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                how = exposure(f.fileno())
                data = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read ticket key file: {exc.strerror}", file=path) from None
        if how:
            raise ConfigError(f"ticket key file is {how}: chmod 600 it (a Kubernetes Secret volume: "
                              "defaultMode: 0400)", file=path)
        if not data or len(data) % KEY_SIZE:
            raise ConfigError(f"ticket key file holds {len(data)} bytes: expected 80 per key "
                              "(nginx ssl_session_ticket_key format; `fastterm keys new FILE` makes one)",
                              file=path)
        keys += [data[i:i + KEY_SIZE] for i in range(0, len(data), KEY_SIZE)]
    if len(keys) > MAX_KEYS:
        log.warning("ticket key files hold %d keys; only the first %d are used", len(keys), MAX_KEYS)
    return keys[:MAX_KEYS]


class TicketKeys:
    """The master's ticket-key schedule; ``publish`` writes it to the shared region."""

    def __init__(self, shared, *, rotation: float, lifetime: float, files: list[str] = (),
                 clock=time.monotonic):
        self.shared = shared
        self.rotation = rotation
        self.lifetime = lifetime
        self.files = list(files)
        self.clock = clock
        self.keys: list[bytes] = []
        self.rotated_at: list[float] = []  # per key after the first: when it stopped encrypting
        self.next_rotation = 0.0
        self.file_stamp = None
        self.rotations = 0
        if self.files:
            self._load_files()
        else:
            self.rotate()

    def _stamp(self):
        stamps = []
        for path in self.files:
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                stamps.append(None)
        return stamps

    def _load_files(self) -> None:
        self.keys = read_key_files(self.files)
        self.file_stamp = self._stamp()
        self.publish()

    def reconfigure(self, *, rotation: float, lifetime: float, files: list[str]) -> None:
        """After a reload: a new lifetime applies to keys already rotated out too (retirement
        is computed from when each stopped encrypting, not fixed at rotation time)."""
        self.rotation = rotation
        self.lifetime = lifetime
        if list(files) != self.files:
            self.files = list(files)
            self.keys, self.rotated_at = [], []
            if self.files:
                self._load_files()
            else:
                self.rotate()

    def rotate(self) -> None:
        """A new encrypting key; the current one keeps decrypting for ``lifetime``."""
        now = self.clock()
        if self.keys:
            self.rotated_at.insert(0, now)
        self.keys.insert(0, new_key())
        self._retire(now)
        self.next_rotation = now + self.rotation
        self.rotations += 1
        self.publish()

    def _retire(self, now: float) -> None:
        keep = [i for i, t in enumerate(self.rotated_at) if t + self.lifetime > now][: MAX_KEYS - 1]
        self.keys = [self.keys[0]] + [self.keys[i + 1] for i in keep]
        self.rotated_at = [self.rotated_at[i] for i in keep]

    def tick(self) -> None:
        """Called by the master about once a second."""
        if self.files:
            stamp = self._stamp()
            if stamp != self.file_stamp:
                try:
                    self._load_files()
                    log.info("ticket key files reloaded (%d keys)", len(self.keys))
                except ConfigError as exc:
                    self.file_stamp = stamp
                    log.error("ticket key files not reloaded, keeping the current keys: %s", exc)
            return
        now = self.clock()
        if now >= self.next_rotation:
            self.rotate()
        elif self.rotated_at and self.rotated_at[-1] + self.lifetime <= now:
            self._retire(now)
            self.publish()

    def publish(self) -> None:
        self.shared.set_ticket_keys(self.keys)
