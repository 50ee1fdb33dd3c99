"""Certificates over ACME (RFC 8555): issuance and renewal for the server blocks that say ``acme``.

The configuration side (``attach``): a block with ``acme`` is planned with a PEM directory
under ``state_dir/certs/FIRST-NAME/``, one file per name (chain and key in one file, so one
rename swaps both). Before the first issuance each file holds a temporary self-signed
certificate (logged as such), so the block serves from the start; a certificate issued later
reaches the workers through the file polling of ``certs/watch.py``: no restart, and
connections made before keep theirs.

The protocol side runs in one process, the *agent*, which the master starts
(``AcmeAgent``) as ``python -m fastterm.certs.acme`` and feeds the jobs (one per name) as one
JSON line on its stdin at start and on each reload. The ``acme`` library blocks, and the
master's loop must not (DESIGN.md); a thread in the master would be inside OpenSSL or
requests when the master forks a worker, leaving a lock held in the child, so the agent is a
process of its own (fork + exec). It is the only process that talks to the ACME server; it
exits when its stdin closes (the master is gone).

Challenges are answered by whichever worker the CA reaches, from files the agent writes:
``state_dir/challenges/http-01/TOKEN`` (the key authorization, served on the port-80
listeners by ``redirect.py`` before any redirect) and ``state_dir/challenges/tls-alpn-01/NAME.crt``
+ ``.key`` (RFC 8737's certificate, given by ``ext/tls.pyx`` to a ClientHello that offers
only ALPN ``acme-tls/1`` for NAME).

With ``certificate_check_interval = 0`` (no polling) the agent sends its parent SIGUSR2 after
each new certificate instead, which reads the files as the poll would.

A block with both certificate files and ``acme`` serves what ACME issues: the files are replaced.

Renewal at the time the directory's ``renewalInfo`` suggests (ARI, RFC 9773), else at two
thirds of the lifetime. A failure (directory unreachable, validation failed, rate limited,
an account key that cannot be read) is recorded for its name in ``state_dir/state.json``
(what ``fastterm certs`` shows) and retried after an exponential backoff, or after the
Retry-After of a ``rateLimited`` error; the certificate already there keeps serving, and the
other names go on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier

from fastterm import privileges
from fastterm.config.model import Acme, Certificate, Config
from fastterm.config.toml import is_ip_address
from fastterm.errors import ConfigError, FasttermError
from fastterm.files import private_dir, write_atomic

log = logging.getLogger("fastterm.acme")

ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")   # RFC 8737 §6.1
PLACEHOLDER_ORG = "fastterm temporary certificate (ACME pending)"
BACKOFF_BASE = 2.0        # seconds before the first retry; doubled each failure
BACKOFF_MAX = 3600.0
NETWORK_TIMEOUT = 30      # seconds per request to the ACME server
ORDER_DEADLINE = 90.0     # seconds for validation and finalization of one order
AGENT_RESTART = 5.0       # seconds before a dead agent is started again
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}\.)*[a-z0-9-]{1,63}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


# ---- layout -------------------------------------------------------------------------------------


def cert_dir(acme: Acme, names: list[str]) -> str:
    return os.path.join(acme.state_dir, "certs", names[0])


def http01_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "challenges", "http-01")


def tlsalpn01_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "challenges", "tls-alpn-01")


def state_file(state_dir: str) -> str:
    return os.path.join(state_dir, "state.json")


def _private_dirs(*paths: str, traverse: bool = False) -> None:
    for path in paths:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            _private_dirs(parent, traverse=traverse)
        private_dir(path, traverse)


def valid_token(token: str) -> bool:
    """An ACME token (base64url, RFC 8555 §8.3): the only file names challenge lookups accept."""
    return bool(_TOKEN_RE.match(token))


def valid_name(name: str) -> bool:
    """A DNS name fit to be a file name under the state dir (no wildcard, no slash, no dot-dot)."""
    return bool(_NAME_RE.match(name))


# ---- configuration ------------------------------------------------------------------------------


def acme_names(server) -> list[str]:
    """The names a block's certificates are for: ``acme.names``, else its exact server_names."""
    if server.acme.names:
        return [n.lower().rstrip(".") for n in server.acme.names]
    return [n.lower().rstrip(".") for n in server.server_names
            if not n.startswith(("~", "*.", ".")) and not n.endswith(".*") and n]


def attach(config: Config) -> Config:
    """Give every block with ``acme`` (its own, or the top-level default when it has no
    certificate) its PEM directory under state_dir, with a temporary self-signed certificate
    for each name that has none yet. ``ConfigError`` names what is wrong."""
    servers = []
    changed = False
    drops = privileges.applies(privileges.resolve(config.user, config.group))
    for i, server in enumerate(config.servers):
        acme = server.acme
        if acme is None and config.acme is not None and not server.certificates and not server.reject_handshake:
            acme = config.acme
        if acme is None:
            servers.append(server)
            continue
        server = msgspec.structs.replace(server, acme=acme)
        where = f"server[{i}] ({', '.join(server.server_names) or 'no name'}) acme"
        names = acme_names(server)
        if not names:
            raise ConfigError("acme needs exact server_names (or acme.names) to put on the certificate",
                              directive=where)
        for name in names:
            if name.startswith("*.") or "*" in name:
                raise ConfigError(f"{name}: wildcard certificates need the dns-01 challenge, which "
                                  "fastterm does not answer", directive=where)
            if not valid_name(name) and not is_ip_address(name):
                raise ConfigError(f"{name!r} is not a DNS name a CA can issue for", directive=where)
        if acme.challenge == "http-01" and not config.redirects:
            raise ConfigError("challenge http-01 needs a plain-HTTP listener (a [[redirect]] on the port 80 "
                              "the CA connects to; nginx: a server listening on 80), or set "
                              'challenge = "tls-alpn-01"', directive=where)
        if acme.ca_file is not None and not os.access(acme.ca_file, os.R_OK):
            raise ConfigError(f"cannot read ca_file {acme.ca_file}", directive=where)
        acme = msgspec.structs.replace(acme, names=names)
        directory = cert_dir(acme, names)
        try:
            # workers running as another user find the challenge answers by name (0711 dirs)
            _private_dirs(acme.state_dir, os.path.dirname(http01_dir(acme.state_dir)),
                          http01_dir(acme.state_dir), tlsalpn01_dir(acme.state_dir), traverse=drops)
            _private_dirs(directory)
            for name in names:
                path = os.path.join(directory, name + ".pem")
                if not os.path.exists(path):
                    write_atomic(path, placeholder_pem(name, acme.key_type))
                    log.warning("%s: serving a temporary self-signed certificate until ACME (%s) issues "
                                "one: %s", name, acme.directory, path)
        except (FasttermError, OSError) as exc:
            raise ConfigError(f"state_dir: {exc}", file=acme.state_dir, directive=where) from None
        servers.append(msgspec.structs.replace(server, acme=acme, certificates=[Certificate(cert=directory)]))
        changed = True
    return msgspec.structs.replace(config, servers=servers) if changed else config


def challenge_dirs(config: Config) -> tuple[list[str], list[str]]:
    """Where workers look for answers: (http-01 dirs, with acme_challenge_dir last; tls-alpn-01 dirs)."""
    http, alpn = [], []
    for server in config.servers:
        if server.acme is not None:
            http.append(http01_dir(server.acme.state_dir))
            alpn.append(tlsalpn01_dir(server.acme.state_dir))
    if config.acme_challenge_dir:
        http.append(config.acme_challenge_dir)
    return list(dict.fromkeys(http)), list(dict.fromkeys(alpn))


# ---- certificates -------------------------------------------------------------------------------


def new_key(key_type: str):
    return ec.generate_private_key(ec.SECP256R1()) if key_type == "ecdsa" else rsa.generate_private_key(65537, 2048)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(name: str) -> x509.GeneralName:
    return x509.IPAddress(ipaddress.ip_address(name)) if is_ip_address(name) else x509.DNSName(name)


def _self_signed(name: str, key, days: float, extensions=(), org: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    subject = x509.Name(attrs)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName([_san(name)]), critical=False))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(key, hashes.SHA256())


def placeholder_pem(name: str, key_type: str = "ecdsa") -> bytes:
    """What a block serves for ``name`` until the CA issues: self-signed, 30 days (no expiry
    warning at start), marked as such in its subject."""
    key = new_key(key_type)
    cert = _self_signed(name, key, 30, org=PLACEHOLDER_ORG)
    return cert.public_bytes(serialization.Encoding.PEM) + _key_pem(key)


def is_placeholder(cert: x509.Certificate) -> bool:
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return any(a.value == PLACEHOLDER_ORG for a in orgs)


def tls_alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """RFC 8737 §3: a self-signed certificate for ``name`` whose critical id-pe-acmeIdentifier
    extension holds the DER OCTET STRING of SHA-256(key authorization); (cert PEM, key PEM)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    der = b"\x04\x20" + digest   # OCTET STRING, 32 bytes
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(name, key, 7, [(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, der), True)])
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def retry_delay(failures: int, retry_after: float | None = None) -> float:
    """Seconds before the next attempt after ``failures`` failures in a row (2 s, doubling, at
    most an hour), never before the server's Retry-After."""
    delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, failures - 1))
    return max(delay, retry_after or 0.0)


def renewal_at(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """Two thirds into the lifetime (certbot renews at 30 days before 90)."""
    return not_before + (not_after - not_before) * 2 / 3


# ---- state ---------------------------------------------------------------------------------------


@dataclass
class NameState:
    """What ``fastterm certs`` shows for a name (times: Unix seconds)."""

    last_attempt: float | None = None
    last_success: float | None = None
    next_attempt: float | None = None     # the next renewal, or retry after a failure
    last_error: str | None = None
    failures: int = 0
    serial: str | None = None
    not_after: str | None = None


def read_state(state_dir: str) -> dict[str, NameState]:
    try:
        with open(state_file(state_dir), "rb") as f:
            data = json.load(f)
        return {name: NameState(**entry) for name, entry in data.items()}
    except (OSError, ValueError, TypeError):
        return {}


def _write_state(state_dir: str, states: dict[str, NameState]) -> None:
    write_atomic(state_file(state_dir), json.dumps({n: asdict(s) for n, s in sorted(states.items())},
                                                   indent=1).encode())


def status_of(server) -> list[dict]:
    """The agent's record of a block's names, for ``fastterm certs``."""
    states = read_state(server.acme.state_dir)
    out = []
    for name in acme_names(server):
        st = states.get(name, NameState())
        out.append({"name": name, "directory": server.acme.directory, "challenge": server.acme.challenge,
                    **asdict(st)})
    return out


# ---- the master's side ----------------------------------------------------------------------------


def jobs_of(config: Config) -> list[dict]:
    """One job per (state dir, name) of the blocks with acme, in the agent's wire form."""
    jobs = {}
    for server in config.servers:
        acme = server.acme
        if acme is None:
            continue
        for name in acme.names:
            jobs[(acme.state_dir, name)] = {
                "name": name, "cert_dir": cert_dir(acme, acme.names), "directory": acme.directory,
                "email": acme.email, "accept_terms": acme.accept_terms, "ca_file": acme.ca_file,
                "state_dir": acme.state_dir, "challenge": acme.challenge, "key_type": acme.key_type}
    return list(jobs.values())


class AcmeAgent:
    """The master's handle on the agent process: started when a plan has ACME names, told
    the new jobs on each reload, started again (after AGENT_RESTART) when it dies. Nothing here
    blocks: the one JSON line goes down a pipe whose buffer holds it."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.jobs: list[dict] = []
        self.logging = {"error_log": None, "log_level": "info"}
        self.restart_at = 0.0

    def update(self, config: Config) -> None:
        self.jobs = jobs_of(config)
        self.logging = {"error_log": config.error_log, "log_level": config.log_level,
                        "tell_parent": config.certificate_check_interval == 0}
        if self.proc is not None:
            self._send()

    def tick(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            log.error("ACME agent exited (%s); starting it again in %.0f s", self.proc.returncode, AGENT_RESTART)
            self.proc = None
            self.restart_at = time.monotonic() + AGENT_RESTART
        if self.proc is None and self.jobs and time.monotonic() >= self.restart_at:
            self._start()

    def reaped(self, pid: int, status: int) -> bool:
        """The master's waitpid found ``pid``: True when it was the agent."""
        if self.proc is None or self.proc.pid != pid:
            return False
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return True

    def _start(self) -> None:
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "fastterm.certs.acme"], stdin=subprocess.PIPE,
                                         close_fds=True, start_new_session=True)
        except OSError as exc:
            log.error("cannot start the ACME agent: %s", exc)
            self.restart_at = time.monotonic() + AGENT_RESTART
            return
        os.set_blocking(self.proc.stdin.fileno(), False)
        self._send()

    def _send(self) -> None:
        try:
            os.write(self.proc.stdin.fileno(), json.dumps({"jobs": self.jobs, **self.logging}).encode() + b"\n")
        except (BlockingIOError, BrokenPipeError) as exc:
            log.error("cannot tell the ACME agent its jobs: %s", exc)

    def report(self, config: Config) -> list[dict]:
        """Each ACME name's state as the agent last wrote it (admin /status)."""
        return [st for server in config.servers if server.acme is not None for st in status_of(server)]

    def close_in_child(self) -> None:
        """A worker keeps no copy of the agent's stdin: the agent sees EOF when the master goes."""
        if self.proc is not None:
            os.close(self.proc.stdin.fileno())

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()   # EOF: the agent exits after what it is doing
            self.proc = None


# ---- the agent -----------------------------------------------------------------------------------


def _network(key, **kwargs):
    """An acme.client.ClientNetwork that keeps its last response, for the Retry-After of an error
    (the library raises messages.Error without it). Made here: the agent alone imports acme."""
    from acme import client

    class Network(client.ClientNetwork):
        last_response = None

        def _send_request(self, method, url, *args, **kw):
            self.last_response = super()._send_request(method, url, *args, **kw)
            return self.last_response

    return Network(key, **kwargs)


def _tls_alpn_classes():
    """tls-alpn-01 for the acme library (5.x dropped it): the response is ``{}`` as for the others."""
    from acme import challenges

    if "tls-alpn-01" in challenges.Challenge.TYPES:
        return challenges.Challenge.TYPES["tls-alpn-01"]

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        typ = "tls-alpn-01"

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        response_cls = TLSALPN01Response
        typ = response_cls.typ

        def validation(self, account_key, **unused):
            return None   # the certificate needs the name too: _publish makes it

    return TLSALPN01


class Failure(Exception):
    """One name's attempt failed; ``retry_after``: the server's, in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class Account:
    """An ACME account (key and URL) of one directory, kept in state_dir/accounts/."""

    def __init__(self, job: dict):
        import josepy as jose
        from acme import client, errors, messages

        _tls_alpn_classes()
        self.job = job
        digest = hashlib.sha256(job["directory"].encode()).hexdigest()[:16]
        self.path = os.path.join(job["state_dir"], "accounts", digest + ".json")
        _private_dirs(os.path.dirname(self.path))
        key = self._key()
        alg = jose.ES256 if isinstance(key, jose.JWKEC) else jose.RS256
        self.net = _network(key, alg=alg, verify_ssl=job["ca_file"] or True, user_agent="fastterm",
                            timeout=NETWORK_TIMEOUT)
        self.key = key
        try:
            directory = client.ClientV2.get_directory(job["directory"], self.net)
        except Exception as exc:  # noqa: BLE001 (requests, JSON, TLS: all mean no directory there)
            raise Failure(f"directory {job['directory']} unreachable: {_short(exc)}") from None
        self.client = client.ClientV2(directory, self.net)
        registration = messages.NewRegistration.from_data(
            email=job["email"], terms_of_service_agreed=bool(job["accept_terms"]))
        try:
            self.client.new_account(registration)
        except errors.ConflictError as exc:   # this key's account exists: use it
            self.net.account = messages.RegistrationResource(uri=exc.location, body=messages.Registration())

    def _key(self):
        import josepy as jose

        try:
            with open(self.path, "rb") as f:
                return jose.JWK.json_loads(f.read())
        except FileNotFoundError:
            pass
        except (OSError, ValueError, jose.errors.Error) as exc:
            raise Failure(f"account key {self.path} cannot be read: {_short(exc)}") from None
        key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        write_atomic(self.path, key.json_dumps().encode())
        log.info("new ACME account key for %s: %s", self.job["directory"], self.path)
        return key


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) < 300 else text[:297] + "..."


def _retry_after(net) -> float | None:
    response = getattr(net, "last_response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def issue(account: Account, job: dict) -> tuple[bytes, float]:
    """Order, validate and download a certificate for ``job``'s name; (the PEM file's bytes
    with its key, when to renew as Unix time). ``Failure`` says why not."""
    import requests
    from acme import crypto_util, errors, messages

    name = job["name"]
    key = new_key(job["key_type"])
    key_pem = _key_pem(key)
    ip = is_ip_address(name)
    csr = crypto_util.make_csr(key_pem, None if ip else [name], ipaddrs=[ipaddress.ip_address(name)] if ip else None)
    written: list[str] = []
    try:
        order = account.client.new_order(csr)
        for authz in order.authorizations:
            if authz.body.status == messages.STATUS_VALID:
                continue
            challb = next((c for c in authz.body.challenges if c.chall.typ == job["challenge"]), None)
            if challb is None:
                raise Failure(f"the CA offers no {job['challenge']} challenge for {name}")
            key_authorization = challb.chall.key_authorization(account.key)
            written += _publish(job, challb.chall.encode("token"), key_authorization)
            account.client.answer_challenge(challb, challb.chall.response(account.key))
        deadline = dt.datetime.now() + dt.timedelta(seconds=ORDER_DEADLINE)
        order = account.client.poll_and_finalize(order, deadline)
    except Failure:
        raise
    except errors.ValidationError as exc:
        problems = [c.error for a in exc.failed_authzrs for c in a.body.challenges if c.error is not None]
        raise Failure(f"validation failed: {'; '.join(str(p) for p in problems) or exc}") from None
    except messages.Error as exc:
        retry = _retry_after(account.net) if exc.code == "rateLimited" else None
        raise Failure(f"{exc.typ}: {exc.detail}", retry) from None
    except requests.RequestException as exc:
        raise Failure(f"ACME server {job['directory']} unreachable: {_short(exc)}") from None
    except Exception as exc:  # noqa: BLE001 (the library's other errors: this name's failure)
        raise Failure(f"{type(exc).__name__}: {_short(exc)}") from None
    finally:
        for path in written:
            try:
                os.unlink(path)
            except OSError:
                pass
    chain = order.fullchain_pem.encode()
    leaf = x509.load_pem_x509_certificate(chain)
    when = renewal_at(leaf.not_valid_before_utc, leaf.not_valid_after_utc).timestamp()
    try:
        suggested, _ = account.client.renewal_time(chain)
        if suggested is not None:
            when = suggested.timestamp()
    except errors.ARIError as exc:
        log.warning("%s: renewalInfo: %s; renewing at two thirds of the lifetime", name, exc)
    return chain + key_pem, when


def _publish(job: dict, token: str, key_authorization: str) -> list[str]:
    """Put the answer where the workers find it; the files written."""
    if job["challenge"] == "http-01":
        if not valid_token(token):
            raise Failure(f"the CA sent a token unfit for a file name: {token!r}")
        path = os.path.join(http01_dir(job["state_dir"]), token)
        write_atomic(path, key_authorization.encode("ascii"), mode=0o644)
        return [path]
    cert_pem, key_pem = tls_alpn_certificate(job["name"], key_authorization)
    base = os.path.join(tlsalpn01_dir(job["state_dir"]), job["name"])
    # 0644: workers that dropped root read them; a challenge key proves nothing after validation
    write_atomic(base + ".key", key_pem, mode=0o644)
    write_atomic(base + ".crt", cert_pem, mode=0o644)   # last: a worker looks for the .crt first
    return [base + ".crt", base + ".key"]


def first_due(job: dict, state: NameState, now: float) -> float:
    """When a name is due with nothing recorded: now for a placeholder (or no file), else at
    two thirds of the lifetime of the certificate there."""
    if state.next_attempt is not None:
        return state.next_attempt
    try:
        with open(os.path.join(job["cert_dir"], job["name"] + ".pem"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError):
        return now
    if is_placeholder(cert):
        return now
    return renewal_at(cert.not_valid_before_utc, cert.not_valid_after_utc).timestamp()


class Agent:
    """The process that talks to the CA: one name at a time, each when it is due."""

    def __init__(self):
        self.jobs: list[dict] = []
        self.tell_parent = False   # no file polling (certificate_check_interval = 0): SIGUSR2 instead
        self.states: dict[str, dict[str, NameState]] = {}   # state_dir -> name -> state
        self.accounts: dict[tuple[str, str], Account] = {}

    def set_jobs(self, jobs: list[dict]) -> None:
        self.jobs = jobs
        now = time.time()
        for job in jobs:
            states = self.states.setdefault(job["state_dir"], read_state(job["state_dir"]))
            state = states.setdefault(job["name"], NameState())
            state.next_attempt = first_due(job, state, now)
        self.accounts.clear()   # a reload may have changed the directory, the contact, the CA file

    def next_due(self) -> float | None:
        times = [self.states[j["state_dir"]][j["name"]].next_attempt for j in self.jobs]
        return min(times) if times else None

    def run_due(self) -> None:
        for job in self.jobs:
            state = self.states[job["state_dir"]][job["name"]]
            if state.next_attempt is not None and state.next_attempt <= time.time():
                self.attempt(job, state)
                _write_state(job["state_dir"], self.states[job["state_dir"]])

    def attempt(self, job: dict, state: NameState) -> None:
        name = job["name"]
        state.last_attempt = time.time()
        try:
            key = (job["state_dir"], job["directory"])
            account = self.accounts.get(key)
            if account is None:
                account = self.accounts[key] = Account(job)
            pem, renew = issue(account, job)
            write_atomic(os.path.join(job["cert_dir"], name + ".pem"), pem)
        except Exception as exc:  # noqa: BLE001 (one name's failure never stops the others)
            self.accounts.pop((job["state_dir"], job["directory"]), None)
            state.failures += 1
            retry_after = exc.retry_after if isinstance(exc, Failure) else None
            delay = retry_delay(state.failures, retry_after)
            state.last_error = str(exc) if isinstance(exc, Failure) else f"{type(exc).__name__}: {_short(exc)}"
            state.next_attempt = time.time() + delay
            log.error("%s: ACME failed (attempt %d), the current certificate keeps serving; retrying in %.0f s: %s",
                      name, state.failures, delay, state.last_error)
            return
        leaf = x509.load_pem_x509_certificate(pem)
        state.failures = 0
        state.last_error = None
        state.last_success = time.time()
        state.next_attempt = renew
        state.serial = f"{leaf.serial_number:x}"
        state.not_after = leaf.not_valid_after_utc.isoformat()
        if self.tell_parent:
            os.kill(os.getppid(), signal.SIGUSR2)   # the master (or run --single) reads the files now
        log.info("%s: certificate issued, serial %s, valid until %s; renewal at %s", name, state.serial,
                 state.not_after, dt.datetime.fromtimestamp(renew, dt.UTC).isoformat(timespec="seconds"))


def _setup_logging(error_log: str | None, level: str) -> None:
    """The master's error log and level (worker.setup_logging's format)."""
    try:
        handler = logging.FileHandler(error_log) if error_log else logging.StreamHandler()
    except OSError as exc:
        handler = logging.StreamHandler()
        log.error("cannot open %s: %s", error_log, exc)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(process)d %(name)s: %(message)s"))
    root = logging.getLogger("fastterm")
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def agent_main() -> int:
    """Read job lists from stdin (one JSON line each) and work through what is due; exit on EOF."""
    _setup_logging(None, "info")
    agent = Agent()
    stdin = sys.stdin.buffer.raw
    pending = b""
    while True:
        due = agent.next_due()
        timeout = 60.0 if due is None else min(60.0, max(0.0, due - time.time()))
        ready, _, _ = select.select([stdin], [], [], timeout)
        if ready:
            chunk = os.read(stdin.fileno(), 65536)
            if not chunk:
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                try:
                    message = json.loads(line)
                    _setup_logging(message.get("error_log"), message.get("log_level", "info"))
                    agent.set_jobs(message["jobs"])
                    agent.tell_parent = bool(message.get("tell_parent"))
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("bad job list from the master: %s", exc)
            continue
        agent.run_due()


if __name__ == "__main__":
    sys.exit(agent_main())
