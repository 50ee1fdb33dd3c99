"""Certificates that change on disk serve new handshakes within a poll, without a restart.

Each worker polls the files its server blocks' certificates come from, every
``certificate_check_interval`` seconds: ``os.stat`` of each (inode, size, mtime, following
symlinks, so certbot's swapped ``live/`` links count) and the listing of each PEM directory,
a few microseconds a file. A block whose files changed is read and checked again
(``certs/store.py``); when it passes, that block alone gets new contexts on each of its
listeners, which take the handshakes from then on (``Listener.serve``); connections made
before keep theirs. When it does not (truncated PEM, key that does not match, expired, not
for any of the block's names), the certificates already loaded keep serving and the error is
logged once for that version of the files and counted
(``fastterm_certificate_reload_failures_total``).

Polling rather than inotify: it sees certbot's symlink swaps, bind-mounted Kubernetes
Secrets (whose ``..data`` link is swapped) and NFS alike, and costs nothing measurable at
the scale of a certificate directory.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from fastterm.certs.store import CertKey, ServerCertificates, files_signature, load_server_certificates
from fastterm.config.model import Config, Server
from fastterm.config.plan import Plan, refresh_listener, server_contexts
from fastterm.errors import ConfigError

log = logging.getLogger("fastterm.certs")
RETIRE_AFTER = 120.0   # seconds: past any handshake timeout


def _covers(names: tuple[str, ...], wanted: str) -> bool:
    """A certificate for ``names`` is valid for server_name ``wanted`` (RFC 6125 wildcards:
    one leftmost label)."""
    wanted = wanted.lower().lstrip(".")
    if wanted in names:
        return True
    _, dot, rest = wanted.partition(".")
    return bool(dot) and ("*." + rest) in names


def check_renewal(server: Server, before: ServerCertificates, after: ServerCertificates,
                  now: datetime | None = None) -> None:
    """Refuse what a renewal must not bring: an expired certificate, or, for a block's own
    certificates, one for none of the block's server_names that the old one was for."""
    now = now or datetime.now(UTC)
    old = {ck.chain_pem for ck in before.own} | {ck.chain_pem for ck in before.files.values()}
    fresh: list[CertKey] = [ck for ck in [*after.own, *after.files.values()] if ck.chain_pem not in old]
    for ck in fresh:
        if ck.not_after <= now:
            raise ConfigError(f"certificate expired on {ck.not_after:%Y-%m-%d %H:%M:%S} UTC", file=ck.source)
    wanted = [n for n in server.server_names if any(_covers(ck.names, n) for ck in before.own)]
    for ck in after.own:
        if ck.chain_pem not in old and wanted and not any(_covers(ck.names, n) for n in wanted):
            raise ConfigError(f"certificate is for {', '.join(ck.names) or 'no name'}, none of "
                              f"{', '.join(wanted)}", file=ck.source)
    if not after.own and not after.files:
        raise ConfigError("no certificate left", file=", ".join(before.directories) or None)


class CertWatcher:
    """One worker's poll of its certificate files, and the context swap when they change."""

    def __init__(self, config: Config, plan: Plan, listeners: dict, worker, shared=None):
        self.config = config
        self.plan = plan
        self.listeners = listeners   # addr -> ext Listener
        self.worker = worker
        self.shared = shared
        self.seen = list(plan.signatures)
        self.refused: list[tuple | None] = [None] * len(config.servers)
        self.retired: list[tuple[float, object]] = []   # (when, a listener's former default context)

    def _retire(self, now: float) -> None:
        """Empty the SNI map of a listener's former default context once no handshake that
        started on it can still need it: the map holds Identities that point back at the
        context, a cycle the frozen heap (worker.settle_heap) would never collect."""
        while self.retired and self.retired[0][0] <= now:
            self.retired.pop(0)[1].set_sni({})

    def poll(self) -> list[int]:
        """Look at every block's files once; returns the blocks whose new certificates serve now."""
        served = []
        self._retire(time.monotonic())
        for i, server in enumerate(self.config.servers):
            now = files_signature(server.certificates)
            if now == self.seen[i] or now == self.refused[i]:
                continue
            try:
                self._reload(i, server)
            except ConfigError as exc:
                self.refused[i] = now
                self.worker.count_certificate_reload(False)
                log.error("certificate change refused, the previous certificate keeps serving: %s", exc)
                continue
            self.seen[i] = now
            self.refused[i] = None
            self.worker.count_certificate_reload(True)
            served.append(i)
        return served

    def _reload(self, i: int, server: Server) -> None:
        before = self.plan.certificates[i]
        after = load_server_certificates(server.certificates)
        check_renewal(server, before, after)
        made = {id(tl): server_contexts(self.config, i, tl.addr, after, self.shared, before, tl.contexts[i])
                for tl in self.plan.tls if i in tl.indexes}
        self.plan.certificates[i] = after   # from here on nothing can fail
        for tl in self.plan.tls:
            if i in tl.indexes:
                former = tl.default_context
                tl.contexts[i] = made[id(tl)]
                refresh_listener(self.config, self.plan, tl)
                self.listeners[tl.addr].serve(tl.default_context, tl.sites)
                if tl.default_context is not former:
                    self.retired.append((time.monotonic() + RETIRE_AFTER, former))
        for ck in [*after.own, *after.files.values()]:
            if ck not in before.own and ck not in before.files.values():
                log.info("certificate %s (serial %x, until %s) serves new handshakes: %s", ", ".join(ck.names),
                         ck.serial, f"{ck.not_after:%Y-%m-%d}", ck.source)
        gone = set(before.files) - set(after.files)
        for path in sorted(gone):
            log.info("certificate file removed, no longer served: %s", path)
