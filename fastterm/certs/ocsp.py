"""OCSP stapling: the master fetches, verifies and shares each certificate's response.

hitch's shape (DESIGN.md "Supervisor"): the master does all the work, the workers only
staple. For each certificate with a responder (its AIA OCSP URL, or ``stapling_responder``)
and a known issuer (the next certificate of its chain, or one in ``trusted_certificate``),
the master

* fetches at start-up, before the workers are forked (at most ``STARTUP_WAIT`` seconds),
  not lazily on a first handshake as nginx does (its first clients get no staple);
* POSTs the request (RFC 6960 appendix A) on a non-blocking socket registered in its own
  ``selectors`` loop: nothing blocks it, and it stays free of threads (fork() stays safe).
  The responder's address is an IP literal or a name looked up with the system resolver
  (getaddrinfo, before the socket is made: a blocking call bounded by resolv.conf's
  timeout, once per refresh); nginx's ``resolver`` servers are not queried;
* verifies the response in OpenSSL (``verify_ocsp_response``: signature by the issuer or
  a delegated responder, the certificate ID, thisUpdate/nextUpdate) and never shares one
  that fails; ``stapling_verify = false`` (nginx ``ssl_stapling_verify off``) skips the
  signer check, with a warning;
* writes the DER into the certificate's slot of the shared memory made before fork
  (``SharedState.set_ocsp``): every worker of every generation reads it from there in the
  status callback, with no reload, and staples it only until its nextUpdate;
* refreshes it at half its validity (thisUpdate + (nextUpdate - thisUpdate) / 2); after a
  failure (responder down, timeout, garbage, a response that does not verify) it retries
  with a doubling backoff, one log line per failed attempt, and the last good response
  stays stapled until its nextUpdate, then nothing is.

A static response per certificate (``ocsp_file``, nginx ``ssl_stapling_file``, or HAProxy's
``CERT.ocsp`` beside the certificate file) replaces fetching: it is verified the same way
and read again when it changes. A certificate without a responder URL is normal (Let's
Encrypt dropped OCSP in 2025): one info line, nothing stapled.

Unlike nginx, which staples only "good" responses, a "revoked" one is stapled as well:
the client learns the revocation from us rather than by asking the responder itself.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import logging
import os
import selectors
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID

from fastterm.errors import ConfigError, TLSError

log = logging.getLogger("fastterm.ocsp")

STARTUP_WAIT = 2.0              # seconds the first fetches may hold back the first workers
RETRY_MIN = 5.0                 # first retry after a failure, then doubling ...
RETRY_MAX = 300.0               # ... up to nginx's retry interval
REFRESH_MIN = 1.0               # never refetch more often, however short the validity
NO_NEXT_UPDATE = 3600.0         # a response without nextUpdate: refreshed hourly, stapled 2 h
MAX_RESPONSE = 64 * 1024        # bytes read from a responder at most
SLOTS = 256                     # FT_OCSP_SLOTS in ext/includes/shm.h
FILE_CHECK_INTERVAL = 1.0       # seconds between stat()s of the static response files


# ---- reading certificates -------------------------------------------------------------------

def read_trusted(path: str) -> list[x509.Certificate]:
    """The certificates of ``trusted_certificate`` (PEM); ConfigError naming the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read trusted certificates: {exc.strerror}", file=path) from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"invalid trusted certificates: {exc}", file=path) from None
    return certs


def check_ocsp_file(path: str) -> None:
    """ConfigError unless ``ocsp_file`` can be read (its content is checked by the master)."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(f"cannot read OCSP response file: {exc.strerror}", file=path) from None


def responder_url(leaf: x509.Certificate) -> str | None:
    """The first OCSP URL of the certificate's Authority Information Access (RFC 5280 4.2.2.1)."""
    try:
        aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP and \
                isinstance(desc.access_location, x509.UniformResourceIdentifier):
            return desc.access_location.value
    return None


def _http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "http" and bool(parts.hostname)


def find_issuer(leaf: x509.Certificate, candidates: list[x509.Certificate]) -> x509.Certificate | None:
    """The candidate whose key signed ``leaf``."""
    for cert in candidates:
        if cert.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(cert)
        except (ValueError, TypeError, x509.InvalidSignature):
            continue
        return cert
    return None


def build_request(leaf: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """DER OCSPRequest for ``leaf`` (SHA-1 certificate ID: what every responder answers)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


@dataclass
class StapleSite:
    """One certificate of one TLS context to staple for (``plan.py`` makes them)."""

    context: object                     # the TLSContext
    position: int                       # the certificate's index among those added to it
    leaf: x509.Certificate
    chain: list[x509.Certificate]       # leaf first
    names: tuple[str, ...]
    source: str
    responder: str | None
    ocsp_file: str | None
    verify: bool
    trusted: list[x509.Certificate]
    timeout: float
    policy: tuple                       # what makes it another staple when changed
    server: int = -1                    # the server block's index (plan.server_staples)

    @property
    def key(self) -> bytes:
        return fingerprint(self.leaf, self.policy)


def stapling_sites(context, certificates: list, models: list, tls, where: str) -> list[StapleSite]:
    """The StapleSites of one server block's context (``certificates``: CertKeys, ``models``:
    model.Certificate, in the order added); ConfigError for an unreadable
    ``trusted_certificate`` or ``ocsp_file``."""
    if not tls.stapling:
        return []
    if tls.stapling_responder is not None and not _http_url(tls.stapling_responder):
        raise ConfigError(f"{tls.stapling_responder!r}: only http:// responders are supported (RFC 6960 "
                          "appendix A; responses are signed, so TLS adds nothing)",
                          directive=f"{where} tls.stapling_responder")
    trusted: list[x509.Certificate] = []
    if tls.trusted_certificate is not None:
        try:
            trusted = read_trusted(tls.trusted_certificate)
        except ConfigError as exc:
            raise ConfigError(exc.message, file=exc.file, directive=f"{where} tls.trusted_certificate") from None
    sites = []
    for position, (ck, model) in enumerate(zip(certificates, models)):
        ocsp_file = model.ocsp_file
        if ocsp_file is None and os.path.isfile(model.cert + ".ocsp"):
            ocsp_file = model.cert + ".ocsp"
        if ocsp_file is not None:
            try:
                check_ocsp_file(ocsp_file)
            except ConfigError as exc:
                raise ConfigError(exc.message, file=exc.file, directive=f"{where} certificate.ocsp_file") from None
        chain = x509.load_pem_x509_certificates(ck.chain_pem)
        policy = (tls.stapling_responder, ocsp_file, tls.stapling_verify, tls.trusted_certificate,
                  tls.stapling_timeout)
        sites.append(StapleSite(context, position, chain[0], chain, ck.names, ck.source, tls.stapling_responder,
                                ocsp_file, tls.stapling_verify, trusted, tls.stapling_timeout, policy))
    return sites


# ---- the HTTP exchange, non-blocking ----------------------------------------------------------

class _Wire:
    """What http.client.HTTPResponse reads from: the bytes already received."""

    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, *_args, **_kwargs):
        return io.BytesIO(self.data)


def parse_http_response(raw: bytes, closed: bool = True) -> bytes | None:
    """The body of an HTTP/1.x response (http.client's parser); ValueError unless 200.
    ``closed`` false (the responder has not closed yet): None until the head and all the
    Content-Length bytes are in (a responder that ignores ``Connection: close`` is not waited for)."""
    if not closed and b"\r\n\r\n" not in raw:
        return None
    response = http.client.HTTPResponse(_Wire(raw))
    response.begin()
    if not closed and response.length is None:
        return None
    try:
        body = response.read()
    except http.client.IncompleteRead:
        if not closed:
            return None
        raise
    if response.status != 200:
        raise ValueError(f"the responder answered HTTP {response.status} {response.reason}")
    return body


class Fetch:
    """One POST to a responder on a non-blocking socket in the master's selector; ``done``
    gets the response body (bytes) or the exception that ended it."""

    def __init__(self, url: str, body: bytes, timeout: float, selector: selectors.BaseSelector, done):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r}: only http:// responders are supported")
        port = parts.port or 80
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname
        family, kind, proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        authority = f"[{host}]" if ":" in host else host
        self.out = (f"POST {path} HTTP/1.0\r\nHost: {authority}{'' if port == 80 else f':{port}'}\r\n"
                    "Content-Type: application/ocsp-request\r\nAccept: application/ocsp-response\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii") + body
        self.received = bytearray()
        self.selector = selector
        self.done = done
        self.deadline = time.monotonic() + timeout
        self.sock = socket.socket(family, kind, proto)
        self.sock.setblocking(False)
        self.sock.connect_ex(address)
        selector.register(self.sock, selectors.EVENT_WRITE, self._on_event)

    def _on_event(self, _events: int) -> None:
        try:
            if self.out:
                error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error))
                sent = self.sock.send(self.out)
                self.out = self.out[sent:]
                if not self.out:
                    self.selector.modify(self.sock, selectors.EVENT_READ, self._on_event)
                return
            data = self.sock.recv(65536)
            if data:
                self.received += data
                if len(self.received) > MAX_RESPONSE:
                    raise ValueError(f"the responder sent more than {MAX_RESPONSE} bytes")
                body = parse_http_response(bytes(self.received), closed=False)
                if body is not None:
                    self._finish(body)
                return
            self._finish(parse_http_response(bytes(self.received)))
        except (BlockingIOError, InterruptedError):
            return
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self._finish(exc)

    def expire(self, now: float) -> None:
        if now >= self.deadline:
            self._finish(TimeoutError("the responder did not answer in time"))

    def _finish(self, result) -> None:
        if self.sock is None:
            return
        self.close()
        self.done(result)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.selector.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.sock.close()
            self.sock = None


class LoopSelector:
    """The part of the selectors API a Fetch uses, on an asyncio loop (``run --single``, where
    the one process serving also fetches)."""

    def __init__(self, loop):
        self.loop = loop

    def register(self, sock, events: int, callback) -> None:
        if events & selectors.EVENT_READ:
            self.loop.add_reader(sock, callback, selectors.EVENT_READ)
        if events & selectors.EVENT_WRITE:
            self.loop.add_writer(sock, callback, selectors.EVENT_WRITE)

    def modify(self, sock, events: int, callback) -> None:
        self.unregister(sock)
        self.register(sock, events, callback)

    def unregister(self, sock) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)


# ---- one certificate --------------------------------------------------------------------------

@dataclass
class Staple:
    """The master's view of one certificate's OCSP response."""

    name: str
    leaf: x509.Certificate
    issuer: x509.Certificate | None
    url: str | None
    file: str | None
    verify: bool
    trusted: tuple[bytes, ...]
    timeout: float
    slot: int = -1
    status: str = "none"            # good, revoked, unknown, none (nothing to staple), error
    error: str | None = None
    der: bytes | None = None
    this_update: float = 0.0
    next_update: float = 0.0
    expires: float = 0.0            # when the workers stop stapling it
    fetched_at: float = 0.0
    next_refresh: float = 0.0       # wall clock; 0: never (a static file, no responder)
    retry: float = 0.0
    fetch: Fetch | None = None
    file_stamp: tuple | None = None

    @property
    def leaf_der(self) -> bytes:
        return self.leaf.public_bytes(serialization.Encoding.DER)


def fingerprint(leaf: x509.Certificate, policy: tuple) -> bytes:
    """A staple's identity: the certificate and what decides how it is stapled. The key of
    its shared slot (SharedState.set_ocsp_key), by which a worker that loaded the
    certificate anew finds the slot."""
    return hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER) + repr(policy).encode()).digest()


def _stamp(path: str):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Stapler:
    """Every stapled certificate of the running generations, its slot and its schedule."""

    def __init__(self, shared, selector: selectors.BaseSelector, clock=time.time):
        self.shared = shared
        self.selector = selector
        self.clock = clock
        self.staples: dict[bytes, Staple] = {}      # of the current plan
        self.retired: dict[bytes, Staple] = {}      # of older plans: slot kept, not refreshed
        self.free = list(range(SLOTS))
        self.next_file_check = 0.0

    # ---- plans -------------------------------------------------------------------------------
    def attach(self, sites: list) -> None:
        """Give every certificate of ``sites`` (a plan's ``staples``) its slot and wire their
        contexts to it (before the plan's workers fork; a site without a context is one a
        worker loaded anew and finds by its key). A certificate already known keeps its slot
        and response."""
        current: dict[bytes, Staple] = {}
        for site in sites:
            key = site.key
            staple = current.get(key) or self.staples.get(key) or self.retired.pop(key, None)
            if staple is None:
                staple = self._new_staple(site, key)
                if staple is None:
                    continue
            current[key] = staple
            if site.context is not None:
                site.context.staple(site.position, staple.slot, self.shared)
        for key, staple in self.staples.items():
            if key not in current:
                if staple.fetch is not None:
                    staple.fetch.close()
                    staple.fetch = None
                self.retired[key] = staple
        self.staples = current

    def _new_staple(self, site, key: bytes) -> Staple | None:
        leaf = site.leaf
        name = ", ".join(site.names) or leaf.subject.rfc4514_string()
        url = site.responder or responder_url(leaf)
        issuer = find_issuer(leaf, site.chain[1:] + site.trusted)
        if site.ocsp_file is None and url is None:
            log.info("certificate %s (%s) names no OCSP responder: nothing to staple", name, site.source)
            return None
        if site.ocsp_file is None and not _http_url(url):
            log.warning("certificate %s (%s) names the OCSP responder %s: only http:// ones are asked, "
                        "nothing stapled (set tls.stapling_responder)", name, site.source, url)
            return None
        slot = self._claim_slot()
        if slot < 0:
            log.warning("certificate %s: no OCSP slot left (%d in use): not stapled", name, SLOTS)
            return None
        staple = Staple(name, leaf, issuer, url, site.ocsp_file, site.verify,
                        tuple(c.public_bytes(serialization.Encoding.DER) for c in site.trusted), site.timeout,
                        slot=slot)
        self.shared.set_ocsp(slot, None, 0)
        self.shared.set_ocsp_key(slot, key)
        if issuer is None:
            self._fail(staple, "its issuer certificate is neither in the chain nor in trusted_certificate")
            staple.file_stamp = None if staple.file is None else _stamp(staple.file)
        elif staple.file is not None:
            self._load_file(staple)
        else:
            staple.next_refresh = self.clock()          # fetched by start()/tick()
        if not staple.verify:
            log.warning("certificate %s: stapling_verify is off: its OCSP responses are stapled without "
                        "checking who signed them", name)
        return staple

    def _claim_slot(self) -> int:
        if not self.free and self.retired:
            oldest = next(iter(self.retired))
            old = self.retired.pop(oldest)
            self.shared.set_ocsp(old.slot, None, 0)
            self.shared.set_ocsp_key(old.slot, b"")
            self.free.append(old.slot)
        return self.free.pop(0) if self.free else -1

    # ---- the loop --------------------------------------------------------------------------------
    def start(self) -> None:
        """Fetch every due response now; then wait for them, at most ``STARTUP_WAIT``, so that
        the first workers staple from their first handshake."""
        self.tick()
        deadline = time.monotonic() + STARTUP_WAIT
        while self.fetching() and time.monotonic() < deadline:
            for key, events in self.selector.select(timeout=0.05):
                key.data(events)
            self.tick()

    def fetching(self) -> bool:
        return any(s.fetch is not None for s in self.staples.values())

    def tick(self) -> None:
        """Called by the master about five times a second: timeouts, refreshes, expiry, and
        once a second changed files."""
        now = self.clock()
        mono = time.monotonic()
        check_files = mono >= self.next_file_check
        if check_files:
            self.next_file_check = mono + FILE_CHECK_INTERVAL
        for staple in self.staples.values():
            if staple.fetch is not None:
                staple.fetch.expire(mono)
            elif staple.file is not None:
                if check_files and _stamp(staple.file) != staple.file_stamp:
                    self._load_file(staple)
            elif staple.next_refresh and now >= staple.next_refresh:
                self._fetch(staple)
            if staple.der is not None and now >= staple.expires:
                self._expired(staple)

    def close_in_child(self) -> None:
        """A new worker drops the master's responder connections."""
        for staple in self.staples.values():
            if staple.fetch is not None and staple.fetch.sock is not None:
                staple.fetch.sock.close()

    # ---- fetching ----------------------------------------------------------------------------------
    def _fetch(self, staple: Staple) -> None:
        try:
            body = build_request(staple.leaf, staple.issuer)
            staple.fetch = Fetch(staple.url, body, staple.timeout, self.selector,
                                 lambda result, s=staple: self._fetched(s, result))
        except (OSError, ValueError) as exc:
            staple.fetch = None
            self._failed_attempt(staple, f"cannot ask {staple.url}: {exc}")

    def _fetched(self, staple: Staple, result) -> None:
        staple.fetch = None
        if isinstance(result, BaseException):
            self._failed_attempt(staple, f"{staple.url}: {result}")
            return
        try:
            self._accept(staple, result)
        except TLSError as exc:
            self._failed_attempt(staple, f"{staple.url}: {exc}")
            return
        staple.retry = 0.0
        validity = (staple.next_update or staple.this_update + 2 * NO_NEXT_UPDATE) - staple.this_update
        staple.next_refresh = max(self.clock() + REFRESH_MIN, staple.this_update + validity / 2)

    def _failed_attempt(self, staple: Staple, why: str) -> None:
        staple.retry = min(RETRY_MAX, staple.retry * 2 if staple.retry else RETRY_MIN)
        staple.next_refresh = self.clock() + staple.retry
        kept = (f"; the response stapled until {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(staple.expires))}"
                " UTC stays" if staple.der is not None else "; nothing stapled")
        log.warning("OCSP for %s failed: %s%s; next try in %.0f s", staple.name, why, kept, staple.retry)
        staple.error = why
        if staple.der is None:
            staple.status = "error"

    # ---- static files ------------------------------------------------------------------------------
    def _load_file(self, staple: Staple) -> None:
        staple.file_stamp = _stamp(staple.file)
        try:
            with open(staple.file, "rb") as f:
                der = f.read()
            self._accept(staple, der)
        except (OSError, TLSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            self._fail(staple, f"{staple.file}: {reason}")
            return
        log.info("OCSP response for %s read from %s: %s", staple.name, staple.file, staple.status)

    # ---- verdicts ----------------------------------------------------------------------------------
    def _accept(self, staple: Staple, der: bytes) -> None:
        """Verify ``der`` and share it; TLSError (nothing changed) when it must not be stapled."""
        from fastterm._core import verify_ocsp_response

        if staple.issuer is None:
            raise TLSError("its issuer certificate is unknown", ())
        status, this_update, next_update = verify_ocsp_response(
            der, staple.leaf_der, staple.issuer.public_bytes(serialization.Encoding.DER),
            staple.trusted, staple.verify)
        if status == "unknown":
            raise TLSError("the responder does not know this certificate (status unknown)", ())
        now = self.clock()
        expires = next_update or now + 2 * NO_NEXT_UPDATE
        try:
            self.shared.set_ocsp(staple.slot, der, int(expires))
        except ValueError as exc:
            raise TLSError(str(exc), ()) from None
        if status == "revoked" and staple.status != "revoked":
            log.error("certificate %s is revoked (its OCSP response says so): stapled as revoked", staple.name)
        staple.status, staple.der, staple.error = status, der, None
        staple.this_update, staple.next_update, staple.expires = this_update, next_update, expires
        staple.fetched_at = now

    def _fail(self, staple: Staple, why: str) -> None:
        """Nothing valid to staple: clear the slot."""
        log.error("OCSP for %s: %s: not stapled", staple.name, why)
        self.shared.set_ocsp(staple.slot, None, 0)
        staple.status, staple.error, staple.der = "error", why, None

    def _expired(self, staple: Staple) -> None:
        log.error("the OCSP response for %s expired (nextUpdate passed, no newer one): no longer stapled",
                  staple.name)
        self.shared.set_ocsp(staple.slot, None, 0)
        staple.status, staple.der = "error", None
        staple.error = staple.error or "response expired"

    # ---- visibility ----------------------------------------------------------------------------------
    def report(self) -> list[dict]:
        """Per certificate: status, the response's age and when it is refreshed (seconds)."""
        now = self.clock()
        return [{"certificate": s.name, "status": s.status, "error": s.error,
                 "age": round(now - s.this_update, 1) if s.der is not None else None,
                 "next_refresh": round(max(0.0, s.next_refresh - now), 1) if s.next_refresh else None,
                 "source": s.file or s.url}
                for s in self.staples.values()]
