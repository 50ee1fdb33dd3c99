"""The admin endpoint, served by the master off the public listeners (DESIGN.md
"Defaults": a unix socket or loopback only by default; mutating calls need a credential;
it never blocks the master).

``GET /ready`` (200 while workers accept, 503 before and once a stop began: a readiness
probe), ``GET /status`` (JSON) and ``GET /metrics`` (Prometheus text format 0.0.4, summed over
every worker from shared memory) answer whoever reaches the address, as Prometheus
scrapes them. ``POST /reload`` and ``POST /ticket-keys/rotate`` need a credential: on a
unix socket, a peer of the master's uid or root (SO_PEERCRED); on TCP,
``Authorization: Bearer TOKEN`` with the token the master writes at start to a 0600
file beside its pid file (``fastterm reload`` reads it). A request carrying ``Origin``
comes from a browser and is refused whatever else it carries: a page may POST
text/plain to 127.0.0.1 without any CORS preflight.

Served from the master's selectors loop on non-blocking sockets: a buffer per
connection, one deadline per connection (from accept to the last byte of the answer,
``REQUEST_DEADLINE``) swept by the loop, and at most ``MAX_CONNECTIONS`` at once (past that the
master stops accepting and the kernel's backlog holds the next ones). A client that drips
bytes costs a table entry until its deadline, never the master's time.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

from fastterm.config.toml import parse_address

log = logging.getLogger("fastterm.admin")

MAX_REQUEST = 8192         # head and body together: our requests are one line and a few headers
REQUEST_DEADLINE = 5.0     # seconds from accept to the last byte answered
MAX_CONNECTIONS = 32
JSON = "application/json"
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 503: "Service Unavailable"}
BACKLOG = 64

# counter name -> (metric name, type, help, labels)
_METRICS = {
    "connections_total": ("fastterm_connections_total", "counter", "Client connections accepted.", None),
    "connections_open": ("fastterm_connections_open", "gauge", "Client connections open now.", None),
    "handshakes_full": ("fastterm_handshakes_total", "counter", "TLS handshakes completed.",
                        'kind="full"'),
    "handshakes_resumed": ("fastterm_handshakes_total", "counter", "TLS handshakes completed.",
                           'kind="resumed"'),
    "backend_connects": ("fastterm_backend_connects_total", "counter", "Backend connections opened.", None),
    "backend_reused": ("fastterm_backend_reused_total", "counter",
                       "Requests sent on a pooled backend connection.", None),
    "backend_errors": ("fastterm_backend_errors_total", "counter",
                       "Backend connect failures, resets and early closes.", None),
    "bytes_in": ("fastterm_bytes_total", "counter", "Plaintext bytes.", 'direction="in"'),
    "bytes_out": ("fastterm_bytes_total", "counter", "Plaintext bytes.", 'direction="out"'),
    "h2_connections": ("fastterm_h2_connections_total", "counter",
                       "Client connections that negotiated HTTP/2 (ALPN h2).", None),
    "h2_streams": ("fastterm_h2_streams_total", "counter", "HTTP/2 streams that carried a request.", None),
    "h2_resets_received": ("fastterm_h2_resets_received_total", "counter",
                           "RST_STREAM frames received from clients.", None),
    "h2_goaway_sent": ("fastterm_h2_goaways_sent_total", "counter",
                       "HTTP/2 sessions fastterm sent a GOAWAY on (drain, reload, idle, stream cap).", None),
    "certificate_reloads": ("fastterm_certificate_reloads_total", "counter",
                            "Certificates that changed on disk and now serve new handshakes (per worker).", None),
    "certificate_reload_failures": ("fastterm_certificate_reload_failures_total", "counter",
                                    "Changed certificate files refused, the previous ones serving (per worker).",
                                    None),
    "h2_flood_closed": ("fastterm_h2_flood_closed_total", "counter",
                        "HTTP/2 sessions closed by a flood defence (resets, CONTINUATION, queued ACKs).", None),
    "upgrades": ("fastterm_upgrades_total", "counter",
                 "HTTP/1.1 connections a backend's 101 switched to a tunnel (WebSocket).", None),
}


def protocol_totals(totals: dict) -> dict[str, dict[str, int]]:
    """Per protocol, for /status and /metrics: each HTTP/2 stream is a request, so HTTP/1.1's
    requests are the rest of ``requests_total``."""
    h2 = {"connections": totals.get("h2_connections", 0), "requests": totals.get("h2_streams", 0),
          "streams": totals.get("h2_streams", 0), "resets_received": totals.get("h2_resets_received", 0),
          "goaways_sent": totals.get("h2_goaway_sent", 0), "flood_closed": totals.get("h2_flood_closed", 0)}
    return {"http/1.1": {"requests": totals.get("requests_total", 0) - h2["requests"]}, "h2": h2}


def status_payload(master) -> dict:
    """``master.status()`` with the per-protocol totals (each worker's counters are in it already)."""
    return {**master.status(), "protocols": protocol_totals(master.metrics_totals())}


def _prefixed(totals: dict, prefix: str):
    return {k[len(prefix):]: v for k, v in totals.items() if k.startswith(prefix)}


def _label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(master) -> str:
    totals = master.metrics_totals()
    families: dict[str, tuple[str, str, list[str]]] = {}

    def add(name, kind, help_text, labels, value):
        family = families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")

    for key, (name, kind, help_text, labels) in _METRICS.items():
        if key in totals:
            add(name, kind, help_text, labels, totals[key])
    for protocol, counts in protocol_totals(totals).items():
        add("fastterm_requests_total", "counter", "HTTP requests received, by protocol.",
            f'protocol="{protocol}"', counts["requests"])
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        add("fastterm_responses_total", "counter", "Responses sent, by status class.",
            f'code="{cls}"', totals.get(f"responses_{cls}", 0))
    for reason, value in _prefixed(totals, "handshake_failed_").items():
        add("fastterm_handshakes_failed_total", "counter", "TLS handshakes that failed, by reason.",
            f'reason="{reason}"', value)
    for version, value in _prefixed(totals, "tls_version_").items():
        add("fastterm_tls_version_total", "counter", "Handshakes by negotiated TLS version.",
            f'version="{version}"', value)
    for cipher, value in _prefixed(totals, "cipher_").items():
        add("fastterm_tls_cipher_total", "counter", "Handshakes by negotiated cipher family.",
            f'cipher="{cipher}"', value)
    for result in ("offered", "accepted", "rejected_replay", "rejected_other"):
        add("fastterm_early_data_total", "counter",
            "TLS 1.3 early data: handshakes that offered it, accepted it, refused a replay of it "
            "(the replay table), refused it otherwise (another node's ticket, table full, OpenSSL's checks).",
            f'result="{result}"', totals.get(f"early_data_{result}", 0))
    add("fastterm_early_data_requests_held_total", "counter",
        "Requests in early data with unsafe methods, forwarded only after the handshake.", None,
        totals.get("early_data_requests_held", 0))
    for result in ("accepted", "rejected_malformed", "rejected_untrusted"):
        add("fastterm_proxy_headers_total", "counter",
            "accept_proxy: PROXY protocol headers taken, or refused (malformed, too long or late; a peer"
            " outside proxy_trusted).", f'result="{result}"', totals.get(f"proxy_headers_{result}", 0))
    sessions = master.shared.session_stats()
    for key in ("stores", "hits", "misses", "evictions"):
        add("fastterm_session_cache_total", "counter", "Shared session cache operations.",
            f'op="{key}"', sessions[key])
    add("fastterm_session_cache_capacity", "gauge", "Sessions the shared cache can hold.", None,
        sessions["capacity"])
    add("fastterm_reload_requests_total", "counter",
        "Reload requests (SIGHUP, POST /reload); those made while a reload is due become one.", None,
        master.reload_requests)
    add("fastterm_reloads_total", "counter", "Successful configuration reloads.", None, master.reloads)
    add("fastterm_reload_failures_total", "counter",
        "Reloads refused: invalid configuration, or its workers could not be started.", None,
        master.reload_failures)
    add("fastterm_worker_restarts_total", "counter", "Workers replaced after dying.", None, master.restarts)
    add("fastterm_ticket_key_rotations_total", "counter", "Ticket-key rotations.", None, master.keys.rotations)
    add("fastterm_workers", "gauge", "Worker processes running.", None, len(master.procs))
    for entry in master.certificate_report():
        cert, source = _label(entry["certificate"]), _label(entry["source"])
        add("fastterm_certificate_expiry_seconds", "gauge",
            "Seconds until the certificate's notAfter (negative: expired), as the workers serve it now.",
            f'certificate="{cert}",source="{source}"', entry["expires_in"])
    for staple in master.ocsp.report():
        cert = _label(staple["certificate"])
        add("fastterm_ocsp_status", "gauge", "OCSP status stapled per certificate (good, revoked; error: "
            "nothing valid to staple).", f'certificate="{cert}",status="{staple["status"]}"', 1)
        if staple["age"] is not None:
            add("fastterm_ocsp_response_age_seconds", "gauge", "Seconds since the stapled response's thisUpdate.",
                f'certificate="{cert}"', staple["age"])
        if staple["next_refresh"] is not None:
            add("fastterm_ocsp_next_refresh_seconds", "gauge", "Seconds until the response is fetched again.",
                f'certificate="{cert}"', staple["next_refresh"])
    for server in master.health.report():
        labels = f'upstream="{_label(server["upstream"])}",server="{_label(server["server"])}"'
        add("fastterm_upstream_server_up", "gauge", "Active health check verdict per upstream server "
            "(1 up, 0 down).", labels, int(server["up"]))
        add("fastterm_upstream_health_check_failures_total", "counter", "Failed active health checks per "
            "upstream server.", labels, server["failures"])
    add("fastterm_generation", "gauge", "Current worker generation.", None, master.generation.number)
    lines = []
    for name, (kind, help_text, samples) in families.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + "\n"


# ---- requests ------------------------------------------------------------------------

class BadRequest(ValueError):
    """A request we will not serve; answered 400 with this message."""


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


def parse_request(data: bytes) -> Request | None:
    """The request in ``data`` once its head and body (Content-Length) are all there, else None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_REQUEST:
            raise BadRequest("request head too large")
        return None
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"bad request line {lines[0][:100]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"bad header line {line[:100]!r}")
        headers[name.lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequest("a request body needs Content-Length")
    length = headers.get("content-length", "0")
    if not (length.isascii() and length.isdigit()) or end + 4 + int(length) > MAX_REQUEST:
        raise BadRequest(f"bad or too large Content-Length {length[:20]!r}")
    if len(data) < end + 4 + int(length):
        return None
    return Request(parts[0], parts[1].split("?", 1)[0], headers)


def _response(status: int, body: str, content_type: str = JSON) -> bytes:
    raw = body.encode()
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(raw)}\r\nConnection: close\r\n")
    if status == 401:
        head += 'WWW-Authenticate: Bearer realm="fastterm admin"\r\n'
    return (head + "\r\n").encode() + raw


def _json(payload: dict) -> str:
    return json.dumps(payload) + "\n"


# ---- the server ----------------------------------------------------------------------

def listen(address: str) -> socket.socket:
    """The admin listening socket. A unix socket is created under umask 077, so it is
    0600 from the moment it exists (a chmod after bind leaves a window)."""
    if address.startswith("unix:"):
        path = address[5:]
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        umask = os.umask(0o077)
        try:
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(umask)
    else:
        host, port = parse_address(address, default_host="127.0.0.1")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    peer_uid: int | None           # unix socket peers only (SO_PEERCRED)
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    out: bytearray | None = None   # the answer being sent; None while reading or waiting
    registered: bool = False
    closed: bool = False


class AdminServer:
    """The admin listener and its connections, in the master's selector; callbacks are the
    selector keys' data, so the master's loop just calls ``key.data(events)``."""

    def __init__(self, master, address: str, token: str | None, token_file: str | None):
        self.master = master
        self.selector: selectors.BaseSelector = master.selector
        self.token = token
        self.token_file = token_file
        self.unix_path = address[5:] if address.startswith("unix:") else None
        self.conns: set[_Conn] = set()
        self.sock = listen(address)
        self.accepting = False
        self._accepting(True)

    # ---- connections ------------------------------------------------------------------
    def _accepting(self, on: bool) -> None:
        """Watch the listening socket or not: at the cap it stays readable, so it must
        leave the selector until a connection closes."""
        if on and not self.accepting:
            self.selector.register(self.sock, selectors.EVENT_READ, self._accept)
        elif self.accepting and not on:
            self.selector.unregister(self.sock)
        self.accepting = on

    def _accept(self, _events: int) -> None:
        while len(self.conns) < MAX_CONNECTIONS:
            try:
                sock, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("admin: accept failed: %s", exc)
                return
            sock.setblocking(False)
            conn = _Conn(sock, self._peer_uid(sock), time.monotonic() + REQUEST_DEADLINE)
            self.conns.add(conn)
            self._watch(conn, selectors.EVENT_READ)
        log.warning("admin: %d connections open, accepting no more until one closes", MAX_CONNECTIONS)
        self._accepting(False)

    def _peer_uid(self, sock: socket.socket) -> int | None:
        if self.unix_path is None:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]

    def _watch(self, conn: _Conn, events: int) -> None:
        callback = functools.partial(self._on_event, conn)
        if conn.registered:
            self.selector.modify(conn.sock, events, callback)
        else:
            self.selector.register(conn.sock, events, callback)
            conn.registered = True

    def _unwatch(self, conn: _Conn) -> None:
        if conn.registered:
            self.selector.unregister(conn.sock)
            conn.registered = False

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._unwatch(conn)
        conn.sock.close()
        self.conns.discard(conn)
        self._accepting(True)

    def _on_event(self, conn: _Conn, events: int) -> None:
        try:
            if conn.out is not None:
                self._flush(conn)
            elif events & selectors.EVENT_READ:
                self._read(conn)
        except Exception:
            # Whatever a client sent, it must not take the master (and every worker) down.
            log.exception("admin: request failed")
            self._close(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._close(conn)
        if not data:
            return self._close(conn)
        conn.buf += data
        try:
            request = parse_request(bytes(conn.buf))
        except BadRequest as exc:
            return self._answer(conn, 400, _json({"error": str(exc)}))
        if request is not None:
            self._serve(conn, request)

    def _answer(self, conn: _Conn, status: int, body: str, content_type: str = JSON) -> None:
        if conn.closed:
            return
        conn.out = bytearray(_response(status, body, content_type))
        self._watch(conn, selectors.EVENT_WRITE)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self._close(conn)
        del conn.out[:sent]
        if not conn.out:
            self._close(conn)

    def sweep(self, now: float) -> None:
        """Close every connection past its deadline (the master's loop calls this each pass)."""
        for conn in [c for c in self.conns if c.deadline <= now]:
            log.debug("admin: connection closed at its %.0f s deadline", REQUEST_DEADLINE)
            self._close(conn)

    # ---- requests -------------------------------------------------------------------------
    def _refusal(self, conn: _Conn, request: Request) -> tuple[int, str] | None:
        if "origin" in request.headers:
            return 403, "a request from a browser page (it carries Origin): refused"
        if request.method == "GET":
            return None
        if conn.peer_uid is not None:
            if conn.peer_uid in (0, os.geteuid()):
                return None
            return 403, f"uid {conn.peer_uid} may only GET here: {request.method} needs the master's uid or root"
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if not scheme:
            return 401, f"{request.method} needs Authorization: Bearer <the token in {self.token_file}>"
        if (scheme.lower() != "bearer" or self.token is None
                or not hmac.compare_digest(credential.strip().encode(), self.token.encode())):
            return 403, "wrong credential"
        return None

    def _serve(self, conn: _Conn, request: Request) -> None:
        refusal = self._refusal(conn, request)
        if refusal is not None:
            log.warning("admin: %s %s refused: %s", request.method, request.path, refusal[1])
            return self._answer(conn, refusal[0], _json({"error": refusal[1]}))
        master = self.master
        method, path = request.method, request.path
        if method == "GET" and path == "/status":
            self._answer(conn, 200, json.dumps(status_payload(master), indent=1) + "\n")
        elif method == "GET" and path == "/ready":
            ready = master.readiness()
            self._answer(conn, 200 if ready["ready"] else 503, _json(ready))
        elif method == "GET" and path == "/metrics":
            self._answer(conn, 200, metrics_text(master), "text/plain; version=0.0.4; charset=utf-8")
        elif method == "POST" and path == "/reload":
            self._unwatch(conn)     # nothing more to read: answered once the reload has run
            master.request_reload(functools.partial(self._reloaded, conn))
        elif method == "POST" and path == "/ticket-keys/rotate":
            master.keys.rotate()
            self._answer(conn, 200, _json({"rotations": master.keys.rotations}))
        else:
            self._answer(conn, 404, _json({"error": f"no {method} {path}"}))

    def _reloaded(self, conn: _Conn, ok: bool | None) -> None:
        """``ok``: the reload's outcome; None when the master stops before running it."""
        master = self.master
        if ok is None:
            return self._answer(conn, 503, _json({"reloaded": False, "error": "stopping"}))
        payload = {"reloaded": ok, "generation": master.generation.number}
        if not ok:
            payload["error"] = master.last_reload_error
        self._answer(conn, 200 if ok else 409, _json(payload))

    # ---- lifetime -------------------------------------------------------------------------
    def close_in_child(self) -> None:
        """In a new worker: drop our descriptors, leaving the epoll set (shared with the
        master through fork) alone."""
        for conn in self.conns:
            conn.sock.close()
        self.sock.close()

    def close(self) -> None:
        for conn in list(self.conns):
            self._close(conn)
        self._accepting(False)
        self.sock.close()
        if self.unix_path is not None:
            try:
                os.unlink(self.unix_path)
            except OSError:
                pass
