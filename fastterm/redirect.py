"""The plain-HTTP listener (port 80): what each ``[[redirect]]`` server block answers.

A ``[[redirect]]`` with only ``listen`` and ``https_port`` keeps fastterm's own answer:
``301 https://$host[:https_port]$request_uri`` with ``Connection: close`` (the host as the
client sent it, the listen address without one). Setting ``location`` or ``text`` (what the
nginx front-end does for ``return``) gives nginx's semantics instead (observed on nginx 1.22,
``tests/differential/configs/redirect_variants.conf``):

- the server block is chosen by host like nginx (exact name, then the longest ``*.suffix``,
  else the address's default server), the host being the absolute-form target's, else the
  Host field's, lowercased, port and trailing dot removed (``$host``; no host at all: the
  chosen block's first server name);
- ``location`` is expanded with ``$scheme``, ``$host``, ``$http_host``, ``$server_name``,
  ``$server_port``, ``$request_uri``, ``$uri``, ``$args``/``$query_string``, ``$is_args``;
  a value starting with ``/`` is made absolute as nginx's header filter does
  (``http://HOST[:PORT]``, the port of the listen address unless 80);
- other statuses answer ``text`` as ``text/plain``, or without text the status page
  (``text/html``; an empty ``text/plain`` body below 400, nothing for 204; 444 closes);
- keep-alive as nginx: HTTP/1.1 (or 1.0 with ``Connection: keep-alive``) stays open for
  ``keepalive_requests`` answers, ``keepalive_timeout`` while idle; pipelined requests are
  answered in order; request bodies are read and discarded.

Every connection stays bounded: one deadline for each request head (client_header_timeout),
the idle deadline between requests, a cap on open connections, the head size, and output:
a client that does not read stops being read (asyncio's write-buffer limits) and is closed
after send_timeout.

ACME HTTP-01 (RFC 8555 §8.3): ``GET /.well-known/acme-challenge/TOKEN`` is answered from the
pending tokens the ACME agent writes (``certs/acme.py``) and from ``acme_challenge_dir``
(certbot ``--webroot``), before any redirect; a token found in none of them gets the redirect.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from http import HTTPStatus

from fastterm.config.model import Redirect

REDIRECT_CODES = (301, 302, 303, 307, 308)
CLOSE_WITHOUT_RESPONSE = 444          # nginx's "return 444": close, send nothing
_VARIABLE_RE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
VARIABLES = frozenset({"scheme", "host", "http_host", "server_name", "server_port", "request_uri", "uri",
                       "args", "query_string", "is_args"})
_ABSOLUTE_FORM_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
_PERCENT_RE = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_PERCENT_RE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,256}")
MAX_CHALLENGE_FILE = 4096


class BadRequest(Exception):
    """The request is answered 400 and the connection closed (nginx: "client sent invalid ...")."""


def compile_template(text: str) -> list[tuple[str, str | None]]:
    """``https://$host$request_uri`` -> [(literal, variable), ...]; unknown names raise ValueError."""
    parts: list[tuple[str, str | None]] = []
    pos = 0
    for m in _VARIABLE_RE.finditer(text):
        name = m[1] or m[2]
        if name not in VARIABLES:
            raise ValueError(name)
        parts.append((text[pos:m.start()], name))
        pos = m.end()
    parts.append((text[pos:], None))
    return parts


def nginx_host(value: str) -> str:
    """ngx_http_validate_host: lowercased, without port and trailing dot; raises BadRequest."""
    end = len(value)
    if value.startswith("["):
        close = value.find("]")
        if close < 0:
            raise BadRequest(value)
        end = close + 1
    elif ":" in value:
        end = value.index(":")
    host = value[:end]
    if ".." in host or "/" in host or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        raise BadRequest(value)
    host = host.removesuffix(".")
    if not host:
        raise BadRequest(value)
    return host.lower()


def normalise_uri(path: str) -> str:
    """nginx's $uri: %-escapes decoded, slashes merged, dot segments resolved (a ``..`` above
    the root is a bad request, as ngx_http_parse_complex_uri says)."""
    raw = path.encode("latin-1")
    if b"%" in raw:
        if _BAD_PERCENT_RE.search(raw):
            raise BadRequest(path)
        raw = _PERCENT_RE.sub(lambda m: bytes([int(m[1], 16)]), raw)
    if b"\x00" in raw:
        raise BadRequest(path)
    out: list[bytes] = []
    segments = raw.split(b"/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == b"..":
            if not out:
                raise BadRequest(path)
            out.pop()
            if last:
                out.append(b"")
        elif seg == b".":
            if last:
                out.append(b"")
        elif seg or last:
            out.append(seg)
    return ("/" + b"/".join(out).decode("latin-1")) if out else "/"


class PlainSite:
    """One ``[[redirect]]`` block, ready to answer."""

    def __init__(self, redirect: Redirect, default_keepalive_timeout: float):
        self.names = [name.lower() for name in redirect.server_names]
        self.server_name = self.names[0] if self.names else ""
        self.status = redirect.status
        self.https_port = redirect.https_port
        self.legacy = redirect.location is None and redirect.text is None
        location = redirect.location
        if self.legacy:
            # beside blocks with nginx's semantics on one address: the same target, nginx's $host
            location = "https://$host" + ("" if self.https_port == 443 else f":{self.https_port}") + "$request_uri"
        self.location = compile_template(location) if location is not None else None
        self.text = compile_template(redirect.text) if redirect.text is not None else None
        self.keepalive_requests = redirect.keepalive_requests
        self.keepalive_header = redirect.keepalive_header
        self.keepalive_timeout = (redirect.keepalive_timeout if redirect.keepalive_timeout is not None
                                  else default_keepalive_timeout)


class RedirectTable:
    """The plain-HTTP server blocks of one address, looked up by host as nginx does."""

    def __init__(self, sites: list[PlainSite], default: PlainSite):
        self.default = default
        self.legacy = all(site.legacy for site in sites)    # fastterm's own answer, as before nginx's
        self.exact: dict[str, PlainSite] = {}
        wild: dict[str, PlainSite] = {}
        for site in sites:
            for name in site.names:
                if name.startswith("*."):
                    wild.setdefault(name[1:], site)
                else:
                    self.exact.setdefault(name, site)
        # nginx: the longest matching wildcard wins; *.example.com matches a.b.example.com too
        self.wildcards = sorted(wild.items(), key=lambda kv: -len(kv[0]))

    def pick(self, host: str | None) -> PlainSite:
        if host:
            site = self.exact.get(host)
            if site is not None:
                return site
            for suffix, site in self.wildcards:
                if host.endswith(suffix):
                    return site
        return self.default

    @classmethod
    def build(cls, redirects: list[Redirect], default_keepalive_timeout: float) -> RedirectTable:
        sites = [PlainSite(r, default_keepalive_timeout) for r in redirects]
        default = next((s for s, r in zip(sites, redirects, strict=True) if r.default_server), sites[0])
        return cls(sites, default)


class RedirectLimits:
    """What every port-80 connection of a worker shares: its header timeout and a cap on how
    many are open, a quarter of worker_connections, so idle plain-HTTP connections can never
    take the file descriptors the TLS port needs."""

    def __init__(self, header_timeout: float, max_open: int, send_timeout: float = 60.0,
                 challenge_dirs: list[str] | tuple = (), access_log=None):
        self.challenge_dirs = list(challenge_dirs)   # HTTP-01 answers, looked up in order
        self.header_timeout = header_timeout
        self.max_open = max_open
        self.send_timeout = send_timeout
        self.open = 0
        self.draining = False       # set on stop: the next answer of each connection closes it
        self.access_log = access_log   # the worker's AccessLog (ext/accesslog.pyx), or None


def _expand(parts: list[tuple[str, str | None]], values: dict[str, str]) -> bytes:
    """The config's text as UTF-8, the request's values as the bytes that came (latin-1)."""
    return b"".join(lit.encode() + (values[var].encode("latin-1") if var else b"") for lit, var in parts)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _page(status: int) -> str:
    reason = _reason(status)
    return f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>\r\n"


class RedirectProtocol(asyncio.Protocol):
    """One plain-HTTP connection: request heads in, answers out, in order."""

    def __init__(self, table: RedirectTable, listen_host: str, limits: RedirectLimits, max_head: int = 16384):
        self.table = table
        self.listen_host = listen_host
        self.limits = limits
        self.max_head = max_head
        self.buf = bytearray()
        self.transport = None
        self.timer = None
        self.counted = False
        self.closing = False
        self.paused = False         # the client is not reading our answers
        self.served = 0
        self.body_left = 0          # Content-Length bytes still to discard
        self.chunks = None          # a ChunkedDecoder while discarding a chunked body
        self.idle = False           # between requests (keepalive_timeout), not inside one
        self.local_port = 0
        self.site_timeout = 0.0     # keepalive_timeout of the block that answered last
        self.started = 0.0          # when the request being read began (the access log's request_time)
        self.request = None         # the parsed head being answered (the access log's line)

    # -- connection and deadlines -----------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        if self.limits.open >= self.limits.max_open:
            transport.abort()
            return
        self.limits.open += 1
        self.counted = True
        sockname = transport.get_extra_info("sockname")
        self.local_port = sockname[1] if sockname else 0
        # One deadline for the whole request head (client_header_timeout), not per read:
        # a client dripping a byte a second is closed on time too.
        self._deadline(self.limits.header_timeout)

    def connection_lost(self, exc):
        self._cancel()
        if self.counted:
            self.counted = False
            self.limits.open -= 1

    def _cancel(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _deadline(self, seconds: float):
        self._cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self.transport.abort)

    def pause_writing(self):
        # Answers pile up unread: stop reading requests until they drain, within send_timeout.
        self.paused = True
        self.transport.pause_reading()
        self._deadline(self.limits.send_timeout)

    def resume_writing(self):
        self.paused = False
        if self.closing:
            return
        self.transport.resume_reading()
        self._deadline(self.limits.header_timeout)
        self._process()

    # -- requests -----------------------------------------------------------------------
    def data_received(self, data):
        if self.closing:
            return
        if not self.buf:
            self.started = time.monotonic()
        self.buf += data
        if self.idle:
            # The next request began: its head has client_header_timeout from now.
            self.idle = False
            self._deadline(self.limits.header_timeout)
        self._process()

    def _process(self):
        from fastterm._core import ChunkedDecoder, parse_request_head

        while not self.closing and not self.paused:
            if not self._discard_body():
                return
            if not self.buf:
                if self.served:
                    self.idle = True
                    self._deadline(self.site_timeout)
                return
            try:
                # At most one head's worth is looked at: many pipelined requests in one read cost
                # linear time, not a copy of the whole buffer each (fastterm's own answer reads one
                # request per connection, and takes a complete head of any size, as before).
                req = parse_request_head(self.buf if self.table.legacy else self.buf[:self.max_head + 4])
            except ValueError as exc:
                if exc.args[0] == "incomplete" and len(self.buf) <= self.max_head:
                    return
                status = 431 if exc.args[0] == "incomplete" else 400
                return self._respond(status, {400: "Bad Request", 431: "Request Header Fields Too Large"}[status])
            del self.buf[:req["head_len"]]
            self.request = req
            if self._acme_challenge(req):
                return
            if self.table.legacy:
                return self._legacy(req, self.table.default)
            try:
                self._answer(req)
            except BadRequest:
                return self._respond(400, "Bad Request")
            self.request = None
            if self.closing:
                return
            if req["chunked"]:
                self.chunks = ChunkedDecoder()
            elif req["content_length"]:
                self.body_left = req["content_length"]
            if not self.paused:
                self._deadline(self.limits.header_timeout)

    def _discard_body(self) -> bool:
        """Drop the body of the request just answered; False while more of it is to come."""
        if self.chunks is not None:
            try:
                n = self.chunks.feed(self.buf)
            except ValueError:
                self._close()
                return False
            del self.buf[:n]
            if not self.chunks.done:
                return False
            self.chunks = None
        if self.body_left:
            n = min(self.body_left, len(self.buf))
            del self.buf[:n]
            self.body_left -= n
            if self.body_left:
                return False
        return True

    # -- answers ------------------------------------------------------------------------
    def challenge_answer(self, target: str) -> bytes | None:
        """The key authorization of an HTTP-01 token the target names, from the first challenge
        directory that has it; None when it is not a challenge or none has it. A token is
        base64url (RFC 8555 §8.3), so no path outside these directories can be named."""
        if not self.limits.challenge_dirs or not target.startswith(ACME_CHALLENGE_PREFIX):
            return None
        token = target[len(ACME_CHALLENGE_PREFIX):]
        if not _TOKEN_RE.fullmatch(token):
            return None
        for directory in self.limits.challenge_dirs:
            try:
                with open(os.path.join(directory, token), "rb") as f:
                    return f.read(MAX_CHALLENGE_FILE)
            except OSError:
                continue
        return None

    def _acme_challenge(self, req) -> bool:
        """Answer an HTTP-01 validation request (then close); False when it is not one we hold."""
        if req["method"] not in ("GET", "HEAD"):
            return False
        body = self.challenge_answer(req["target"])
        if body is None:
            return False
        head = (b"HTTP/1.1 200 OK\r\nServer: fastterm\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
        sent = head if req["method"] == "HEAD" else head + body
        self.transport.write(sent)
        self._log(200, sent, len(head))
        self._close()
        return True

    def _legacy(self, req, site: PlainSite):
        """fastterm's own redirect: ``301 https://$host[:https_port]$request_uri``, then close."""
        host = req["host"] or self.listen_host
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        else:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        port = "" if site.https_port == 443 else f":{site.https_port}"
        target = req["target"] if req["target"].startswith("/") else "/"
        self._respond(site.status, _reason(site.status), f"https://{host}{port}{target}", req["method"] == "HEAD")

    def _answer(self, req):
        """nginx's ``return``, on the server block the host picks."""
        target = req["target"]
        http_host = req["host"]
        header_host = nginx_host(http_host) if http_host is not None else None
        request_host = header_host
        m = _ABSOLUTE_FORM_RE.fullmatch(target)
        if m:
            # RFC 9112 3.2.2, nginx: the absolute-form target's host overrides Host
            request_host = nginx_host(m[2])
            target = m[3] or "/"
            if not target.startswith("/"):
                target = "/" + target
        elif not target.startswith("/"):
            raise BadRequest(target)
        site = self.table.pick(request_host)
        path, _, args = target.partition("?")
        values = {"scheme": "http", "host": request_host or site.server_name, "http_host": http_host or "",
                  "server_name": site.server_name, "server_port": str(self.local_port), "request_uri": target,
                  "uri": normalise_uri(path), "args": args, "query_string": args, "is_args": "?" if args else ""}
        self.served += 1
        if site.status == CLOSE_WITHOUT_RESPONSE:
            self._log(CLOSE_WITHOUT_RESPONSE, b"", 0)
            return self._close()
        keep = (self.served < site.keepalive_requests and not self.limits.draining
                and not req["keep_alive_off"] and not req["expect_continue"]
                and (req["version"] == "1.1" or self._asks_keep_alive(req)))
        status = site.status
        lines = [f"HTTP/1.1 {status} {_reason(status)}".encode("latin-1"), b"Server: fastterm"]
        body = b""
        content_type = b"text/html"
        if site.location is not None and status in REDIRECT_CODES:
            location = _expand(site.location, values)
            if location.startswith(b"/"):
                # ngx_http_header_filter: the request's host (else the local address), the
                # listen port unless 80 (port_in_redirect on)
                host = request_host or self._local_host()
                port = "" if self.local_port == 80 else f":{self.local_port}"
                location = f"http://{host}{port}".encode("latin-1") + location
            lines.append(b"Location: " + location)
            body = _page(status).encode("latin-1")
        elif site.text is not None:
            body = _expand(site.text, values)
            content_type = b"text/plain"
        elif status >= 400:
            body = _page(status).encode("latin-1")
        else:
            content_type = b"text/plain"
        if status != 204:
            lines += [b"Content-Type: " + content_type, b"Content-Length: %d" % len(body)]
        lines.append(b"Connection: keep-alive" if keep else b"Connection: close")
        if keep and site.keepalive_header:
            lines.append(b"Keep-Alive: timeout=%d" % site.keepalive_header)   # keepalive_timeout's second value
        out = b"\r\n".join(lines) + b"\r\n\r\n"
        self.site_timeout = site.keepalive_timeout
        sent = out if req["method"] == "HEAD" or status == 204 else out + body
        self.transport.write(sent)
        self._log(status, sent, len(out))
        if not keep:
            self._close()

    @staticmethod
    def _asks_keep_alive(req) -> bool:
        return any(n.lower() == "connection" and "keep-alive" in v.lower() for n, v in req["headers"])

    def _local_host(self) -> str:
        sockname = self.transport.get_extra_info("sockname")
        host = sockname[0] if sockname else self.listen_host
        return f"[{host}]" if ":" in host else host

    def _respond(self, status, reason, location=None, head=False):
        body = f"<html><head><title>{status} {reason}</title></head><body><h1>{status} {reason}</h1></body></html>\r\n"
        lines = [f"HTTP/1.1 {status} {reason}", "Server: fastterm", "Content-Type: text/html",
                 f"Content-Length: {len(body)}", "Connection: close"]
        if location:
            lines.append(f"Location: {location}")
        out = ("\r\n".join(lines) + "\r\n\r\n" + ("" if head else body)).encode("latin-1")
        self.transport.write(out)
        self._log(status, out, len(out) - (0 if head else len(body)))
        self.request = None
        self._close()

    def _log(self, status: int, sent: bytes, head_len: int) -> None:
        """The access log's line of the request just answered (``self.request``: its parsed head,
        None when it could not be parsed)."""
        access_log = self.limits.access_log
        if access_log is None:
            return
        req = self.request
        fields = {n.lower(): v for n, v in req["headers"]} if req else {}
        peer = self.transport.get_extra_info("peername")
        access_log.plain(peer[0] if peer else "-", req["method"].encode("latin-1") if req else None,
                         req["target"].encode("latin-1") if req else None, bool(req) and req["version"] == "1.0",
                         status, req["head_len"] if req else len(self.buf), len(sent), head_len,
                         fields["referer"].encode("latin-1") if "referer" in fields else None,
                         fields["user-agent"].encode("latin-1") if "user-agent" in fields else None,
                         time.monotonic() - self.started)

    def _close(self, abort: bool = False):
        self.closing = True
        if abort:
            self.transport.abort()
        else:
            self.transport.close()
