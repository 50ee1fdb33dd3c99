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

OCSP (``certs/ocsp.py``): the master follows the same files (``StapleFollower``) and gives a
new certificate its shared slot, keyed by the certificate; a worker that made a context for
it looks the slot up by that key, again at each poll until the master has it. ``run
--single`` is both: its one Stapler is told directly.

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
from fastterm.config.plan import Plan, refresh_listener, server_contexts, server_staples
from fastterm.errors import ConfigError

log = logging.getLogger("fastterm.certs")
RETIRE_AFTER = 120.0   # seconds: past any handshake timeout
STAPLE_WAIT = 30.0     # seconds a worker looks for the master's slot of a new certificate


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

    def __init__(self, config: Config, plan: Plan, listeners: dict, worker, shared=None, stapler=None):
        """``shared``: the master's SharedState (sessions, tickets, OCSP slots) or None
        (``--single``, whose ``stapler`` keeps the OCSP responses)."""
        self.config = config
        self.plan = plan
        self.listeners = listeners   # addr -> ext Listener
        self.worker = worker
        self.shared = shared
        self.stapler = stapler
        self.unstapled: list[tuple[float, object]] = []   # (give up at, StapleSite) waiting for a slot
        self.seen = list(plan.signatures)
        self.refused: list[tuple | None] = [None] * len(config.servers)
        self.retired: list[tuple[float, object]] = []   # (when, a listener's former default context)

    def _retire(self, now: float) -> None:
        """Empty the SNI map of a listener's former default context once no handshake that
        started on it can still need it: the map holds Identities that point back at the
        context, a cycle the frozen heap (worker.settle_heap) would never collect."""
        while self.retired and self.retired[0][0] <= now:
            self.retired.pop(0)[1].set_sni({})

    def _staple_waiting(self, now: float) -> None:
        """Wire the new contexts to the slots the master made for their certificates."""
        waiting = []
        for give_up, site in self.unstapled:
            slot = self.shared.find_ocsp_slot(site.key)
            if slot >= 0:
                site.context.staple(site.position, slot, self.shared)
            elif now < give_up:
                waiting.append((give_up, site))
        self.unstapled = waiting

    def poll(self) -> list[int]:
        """Look at every block's files once; returns the blocks whose new certificates serve now."""
        served = []
        self._retire(time.monotonic())
        self._staple_waiting(time.monotonic())
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
        sites = [site for contexts in made.values() for site in server_staples(server, i, after, contexts)]
        self.plan.certificates[i] = after   # from here on nothing can fail
        self.plan.staples = [s for s in self.plan.staples if s.server != i] + sites
        if self.stapler is not None:
            self.stapler.attach(self.plan.staples)
        elif self.shared is not None:
            self.unstapled += [(time.monotonic() + STAPLE_WAIT, site) for site in sites]
            self._staple_waiting(time.monotonic())
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


class StapleFollower:
    """The master's side: the certificates its workers serve now, for the Stapler.

    The master serves nothing, so it makes no context: it reads a changed block's files as
    the workers do and, when they would serve them (``check_renewal``; a refusal is theirs to
    log), hands the certificates to the Stapler, which gives each new one its slot and fetches.
    """

    def __init__(self, config: Config, plan: Plan, stapler):
        self.config = config
        self.stapler = stapler
        self.certificates = list(plan.certificates)
        self.seen = list(plan.signatures)
        self.staples = list(plan.staples)

    def poll(self) -> bool:
        """True when a block's certificates changed (the Stapler then has them)."""
        changed = False
        for i, server in enumerate(self.config.servers):
            now = files_signature(server.certificates)
            if now == self.seen[i]:
                continue
            self.seen[i] = now
            try:
                after = load_server_certificates(server.certificates)
                check_renewal(server, self.certificates[i], after)
                sites = server_staples(server, i, after, dict.fromkeys(after.identities()))
            except ConfigError:
                continue
            self.certificates[i] = after
            self.staples = [s for s in self.staples if s.server != i] + sites
            changed = True
        if changed:
            self.stapler.attach(self.staples)
        return changed
