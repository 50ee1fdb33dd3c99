"""Config -> the frozen tables a worker serves from (DESIGN.md: ``plan.py``).

What ``fastterm check``, a start and a reload all build first, before any socket is bound:
one SSL_CTX per server block and listener (certificates, TLS policy, session scope), the
HTTP policy of each server block (routes, HSTS, trusted proxies) in a SiteTable per
listener that the Host header is looked up in, and the upstream pools. Errors are
ConfigErrors naming the file, line and directive.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass, field

import msgspec

from fastterm.certs.ocsp import stapling_sites
from fastterm.certs.store import (
    ServerCertificates,
    files_signature,
    is_pem_directory,
    load_certificate,
    load_server_certificates,
)
from fastterm.config.model import (
    AddHeader,
    Answer,
    Certificate,
    Config,
    ErrorPage,
    Limits,
    ProxyRequest,
    Route,
    Server,
    Upstream,
    UpstreamTLS,
)
from fastterm.config.toml import KeyLines, is_ip_address, parse_address, parse_upstream_server
from fastterm.errors import ConfigError, TLSError
from fastterm.redirect import RedirectTable


@dataclass
class Plan:
    """Everything a worker serves, built and validated before any socket is bound."""

    listeners: list[tuple[tuple[str, int], object, object]] = field(default_factory=list)  # (addr, TLSContext, SiteTable)
    pools: dict[str, object] = field(default_factory=dict)
    redirects: list[tuple[tuple[str, int], object]] = field(default_factory=list)  # (addr, RedirectTable)
    staples: list = field(default_factory=list)  # certs/ocsp.StapleSite: what the master staples for
    tls: list[TLSListener] = field(default_factory=list)  # per listener, in the order of ``listeners``
    certificates: list[ServerCertificates] = field(default_factory=list)  # per server block
    policies: list[object] = field(default_factory=list)  # per server block: its ServerPolicy
    regex_names: dict[str, object] = field(default_factory=dict)  # server_name "~RE" -> compiled bytes pattern
    signatures: list[tuple] = field(default_factory=list)  # per server block: its files when read
    accept_proxy: dict[tuple[str, int], tuple] = field(default_factory=dict)  # addr -> trusted networks


@dataclass
class TLSListener:
    """One listener's TLS side: a context per server block and certificate identity, the
    SNI map on the default one, the Host map; rebuilt in part when a certificate changes
    (``certs/watch.py``) without touching established connections."""

    addr: tuple[str, int]
    indexes: list[int]
    default: int
    contexts: dict[int, dict[str, object]]   # server -> identity key -> TLSContext
    default_context: object = None
    sites: object = None


def _where(server: Server, index: int) -> str:
    return f"server[{index}] ({', '.join(server.server_names) or 'no server_names'})"


# nginx's variable syntax: $name or ${name} (ngx_http_script_compile)
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
# what a route's variables that do not change per request stand for
_CONSTANT = ("scheme", "proxy_host", "server_name")
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")   # RFC 9110 §5.6.2 token


def template_parts(value: str) -> list[tuple[str, str]]:
    """A ``proxy_set_header`` value -> [("", literal) | (variable name, "")]; ValueError names an
    unknown or unsupported variable."""
    from fastterm._core import VARIABLES

    parts: list[tuple[str, str]] = []
    at = 0
    for m in _VARIABLE.finditer(value):
        if "$" in value[at:m.start()]:
            raise ValueError(f"invalid variable in {value!r}")
        if m.start() > at:
            parts.append(("", value[at:m.start()]))
        name = (m.group(1) or m.group(2)).lower()
        if name not in VARIABLES and name not in _CONSTANT and not (name.startswith("http_") and len(name) > 5):
            raise ValueError(f"the variable ${name} is not supported in a request field")
        parts.append((name, ""))
        at = m.end()
    if "$" in value[at:]:
        raise ValueError(f"invalid variable in {value!r}")
    if at < len(value):
        parts.append(("", value[at:]))
    return parts


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


# model.ProxyRequest.next_upstream's words (nginx proxy_next_upstream, less invalid_header and updating)
NEXT_UPSTREAM = ("error", "timeout", "non_idempotent", "http_500", "http_502", "http_503", "http_504",
                 "http_403", "http_404", "http_429")


def check_proxy_request(proxy: ProxyRequest) -> None:
    """ValueError for what a RequestRewrite cannot send (a bad field name, an unknown variable)."""
    for header in proxy.headers:
        if not _FIELD_NAME.fullmatch(header.name):
            raise ValueError(f"invalid field name {header.name!r}")
        if header.name.lower() in ("content-length", "transfer-encoding"):
            raise ValueError(f"{header.name}: the body's framing is fastterm's to write")
        if any(c in header.value for c in "\r\n\0") or not header.value.isascii() and not _latin1(header.value):
            raise ValueError(f"{header.name}: a value with CR, LF, NUL or a character past Latin-1")
        template_parts(header.value)
    if not _FIELD_NAME.fullmatch(proxy.real_ip_header):
        raise ValueError(f"invalid real_ip_header {proxy.real_ip_header!r}")
    for network in proxy.real_ip_from:
        ipaddress.ip_network(network, strict=False)   # ValueError names it
    for name in proxy.hide_headers:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid hide_headers name {name!r}")
    for word in proxy.next_upstream:
        if word not in NEXT_UPSTREAM:
            raise ValueError(f"next_upstream: {word!r} is none of {', '.join(NEXT_UPSTREAM)}")
    if proxy.next_upstream_tries < 0 or proxy.next_upstream_timeout < 0:
        raise ValueError("next_upstream_tries and next_upstream_timeout are 0 or more")


def _pieces(value: str, constants: dict[str, str]) -> list[tuple[int, bytes]]:
    """A template value -> the pieces a RequestRewrite takes: literal bytes and variable ids, the
    constants of the route folded in."""
    from fastterm._core import HTTP_FIELD, LITERAL, VARIABLES

    compiled: list[tuple[int, bytes]] = []
    for var, literal in template_parts(value):
        if not var or var in constants:
            text = (literal or constants[var]).encode("latin-1")
            if text and compiled and compiled[-1][0] == LITERAL:
                compiled[-1] = (LITERAL, compiled[-1][1] + text)
            elif text:
                compiled.append((LITERAL, text))
        elif var in VARIABLES:
            compiled.append((VARIABLES[var], b""))
        else:
            compiled.append((HTTP_FIELD, var[5:].encode("ascii")))
    return compiled


def _rewrite(proxy: ProxyRequest, upstream: str, server: Server):
    """model.ProxyRequest -> the RequestRewrite the exchange applies: literal bytes and
    variable ids; the constants of the route ($scheme, $proxy_host, $server_name) folded in."""

    from fastterm._core import RequestRewrite

    name = server.server_names[0] if server.server_names else ""
    constants = {"scheme": "https", "proxy_host": upstream, "server_name": name}
    headers = [(header.name, _pieces(header.value, constants)) for header in proxy.headers]
    return RequestRewrite(proxy.http_version, headers, name.lower().encode("idna" if not name.isascii() else "ascii"),
                          proxy.keepalive, proxy.real_ip_from, proxy.real_ip_header, proxy.hide_headers,
                          proxy.next_upstream, proxy.next_upstream_tries, proxy.next_upstream_timeout)


# PCRE escapes Python re reads otherwise or not at all: refused by name, never guessed at
_PCRE_ESCAPES = {
    "Z": "\\Z (PCRE: the end or before a final newline; Python: the end)",
    "h": "\\h (horizontal space)", "H": "\\H", "v": "\\v (PCRE: vertical space; Python: a VT)", "V": "\\V",
    "R": "\\R (a newline sequence)", "K": "\\K (reset the match start)", "Q": "\\Q...\\E quoting",
    "E": "\\E", "G": "\\G", "p": "\\p{...} (Unicode properties)", "P": "\\P{...}", "X": "\\X",
    "C": "\\C", "e": "\\e", "c": "\\cX (control characters)", "g": "\\g (backreferences)",
    "k": "\\k<name> (named backreferences)", "N": "\\N", "o": "\\o{...}",
}


_INLINE_FLAGS = re.compile(r"([A-Za-z-]+)([:)])")   # after "(?": (?i) or (?i:...)


def pcre_to_python(pattern: str) -> str:
    """A PCRE pattern (nginx's regex locations and server names) as Python re reads it, the
    same meaning: ``(?<name>`` becomes ``(?P<name>``, ``\\z`` ``\\Z``; ValueError names a
    construct the two do not share (possessive quantifiers and atomic groups they share)."""
    out, i, in_class, n = [], 0, False, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if e in _PCRE_ESCAPES:
                raise ValueError(f"the PCRE escape {_PCRE_ESCAPES[e]}")
            if e == "x" and pattern.startswith("{", i + 2):
                raise ValueError("the PCRE escape \\x{...}")
            out.append("\\Z" if e == "z" else c + e)
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith((":", "=", "."), i + 1):
                raise ValueError("POSIX classes ([:alpha:] ...)")
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            out.append(c)
            i += 1
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):   # a leading "]" is a member
                out.append("]")
                i += 1
            continue
        elif c == "{" and pattern.startswith(",", i + 1):
            raise ValueError("{,n} (PCRE 10.42: literal text; Python: a quantifier)")
        elif c == "(" and pattern.startswith("*", i + 1):
            raise ValueError("PCRE verbs (*...)")
        elif c == "(" and pattern.startswith("?", i + 1):
            rest = pattern[i + 2:]
            if rest[:1] == "<" and rest[1:2] not in ("=", "!"):
                out.append("(?P<")
                i += 3
                continue
            if rest[:1] in ("'", "|", "(", "R", "&", "+") or rest[:1].isdigit() or \
                    rest[:1] == "-" and rest[1:2].isdigit() or rest[:2] == "P>":
                raise ValueError(f"the PCRE group (?{rest[:1]}... (named with quotes, branch reset, "
                                 "conditions, recursion)")
            flags = _INLINE_FLAGS.match(rest)
            if flags and (set(flags[1]) - set("imsx-") or flags[2] == ")" and (i > 0 or "-" in flags[1])):
                raise ValueError(f"the inline flags (?{flags[1]}{flags[2]} (PCRE: imsx anywhere, to the group's "
                                 "end; Python: global ones only at the start, no unsetting)")
        out.append(c)
        i += 1
    return "".join(out)


def location_regex(pattern: str, caseless: bool) -> re.Pattern[bytes]:
    """nginx's ``location ~ RE`` / ``~* RE`` compiled: searched (unanchored) in the decoded,
    normalised path as bytes, PCRE without UTF (``\\w`` and caseless ASCII only), as nginx.
    ValueError says what is refused or why it does not compile."""
    python = pcre_to_python(pattern)
    try:
        return re.compile(python.encode("utf-8"), re.IGNORECASE if caseless else 0)
    except re.error as exc:
        raise ValueError(f"the regular expression {pattern!r} does not compile: {exc}") from None


def server_name_regex(name: str) -> re.Pattern[bytes]:
    """nginx's ``server_name ~RE``: searched in the lowercase host (and SNI name), caseless
    when the pattern has an upper-case letter (ngx_http_core_server_name does so)."""
    return location_regex(name[1:], any("A" <= c <= "Z" for c in name[1:]))


def check_server_name(name: str) -> None:
    """ValueError for a server name that is none of nginx's forms: exact, ``*.suffix``,
    ``prefix.*`` or ``~regex``."""
    if name.startswith("~"):
        if not name.isascii():
            raise ValueError(f"server name {name!r}: a regex in ASCII (host names are)")
        server_name_regex(name)
    elif not name or "*" in name.strip("*") or name.count("*") > 1 or \
            ("*" in name and not (name.startswith("*.") or name.endswith(".*"))) or name in ("*.", ".*"):
        raise ValueError(f"server name {name!r}: exact, *.suffix, prefix.* or ~regex")


def check_route(route: Route) -> None:
    """ValueError for a route whose matching or target rewrite cannot work."""
    if route.regex:
        if route.exact or route.no_regex:
            raise ValueError("a regex route is neither exact nor no_regex")
        if route.upstream_path is not None:
            # nginx: "proxy_pass" cannot have URI part in location given by regular expression
            raise ValueError("a regex route cannot have an upstream_path (which part would it replace?)")
        location_regex(route.path, route.regex == "~*")
    elif not route.path.startswith("/"):
        raise ValueError(f"route path {route.path!r} must start with '/'")
    if route.upstream_path is not None and (not route.upstream_path.startswith("/") or
                                            any(c in route.upstream_path for c in " ?#\r\n\0")
                                            or not route.upstream_path.isascii()):
        raise ValueError(f"upstream_path {route.upstream_path!r}: a path from '/', without spaces, "
                         "'?', '#' or characters past ASCII")
    if route.client_max_body_size is not None and route.client_max_body_size < 0:
        raise ValueError("client_max_body_size is 0 (no limit) or more")
    check_timeouts(route)


def check_timeouts(block: Route | Upstream) -> None:
    """ValueError for a connect, read or send timeout (of a route or upstream) not above 0."""
    for name in ("connect_timeout", "read_timeout", "send_timeout"):
        value = getattr(block, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be more than 0 seconds")


def route_timeouts(route: Route, upstream: Upstream | None, limits: Limits) -> tuple[float, float, float]:
    """(connect, read, send) for a route: its own, else its upstream's, else limits' (the send
    timeout last of all the read timeout that applies, as Limits.backend_send_timeout says)."""
    def pick(name: str, default: float | None) -> float | None:
        for block in (route, upstream):
            if block is not None and getattr(block, name) is not None:
                return getattr(block, name)
        return default

    read = pick("read_timeout", limits.backend_read_timeout)
    send = pick("send_timeout", limits.backend_send_timeout)
    return pick("connect_timeout", limits.backend_connect_timeout), read, send if send is not None else read


_REDIRECTS = (301, 302, 303, 307, 308)
_CLOSE = 444   # nginx's "return 444": close the connection, send nothing


def _check_value(value: str, what: str) -> None:
    if any(c in value for c in "\r\n\0") or not _latin1(value):
        raise ValueError(f"{what}: a value with CR, LF, NUL or a character past Latin-1")
    template_parts(value)


def check_add_headers(headers: list[AddHeader]) -> None:
    """ValueError for an add_header fastterm cannot send (a bad name, a framing field, a variable)."""
    for header in headers:
        if not _FIELD_NAME.fullmatch(header.name):
            raise ValueError(f"invalid field name {header.name!r}")
        if header.name.lower() in ("content-length", "transfer-encoding", "connection", "content-type"):
            raise ValueError(f"{header.name}: fastterm writes this field itself")
        _check_value(header.value, header.name)


def check_answer(answer: Answer) -> None:
    """ValueError for a return fastterm cannot answer (nginx's ngx_http_rewrite_return rules)."""
    status = answer.status
    if not (200 <= status <= 599 and (status < 300 or status >= 400 or status in _REDIRECTS)):
        raise ValueError(f"status {status}: use 2xx, {', '.join(map(str, _REDIRECTS))}, 4xx or 5xx (444 closes)")
    if status in _REDIRECTS:
        if answer.location is None or answer.text is not None:
            raise ValueError(f"status {status} answers a location (and no text)")
        _check_value(answer.location, "location")
    elif answer.location is not None:
        raise ValueError(f"location with status {status}: a redirect status is one of "
                         f"{', '.join(map(str, _REDIRECTS))}")
    elif answer.text is not None:
        if status == _CLOSE:
            raise ValueError("text with status 444 (the connection is closed, nothing sent)")
        if "\0" in answer.text or not _latin1(answer.text):
            raise ValueError("text: a NUL or a character past Latin-1")
        template_parts(answer.text)
    if answer.add_headers is not None:
        check_add_headers(answer.add_headers)


def check_error_pages(pages: list[ErrorPage]) -> None:
    """ValueError for an error_page fastterm cannot apply."""
    for page in pages:
        for code in page.codes:
            if not 300 <= code <= 599:
                raise ValueError(f"error page code {code}: it must be between 300 and 599")
        if (page.redirect is None) == (page.answer is None):
            raise ValueError("an error page has a redirect or an answer (one of them)")
        if page.status is not None and not (page.status == 0 or 200 <= page.status <= 599):
            raise ValueError(f"error page status {page.status}")
        if page.redirect is not None:
            if not page.redirect.lower().startswith(("http://", "https://")):
                raise ValueError(f"error page redirect {page.redirect!r}: an absolute http:// or https:// URL "
                                 "(a local URI would serve a file)")
            if "$" in page.redirect:
                raise ValueError(f"error page redirect {page.redirect!r}: variables are not supported")
            _check_value(page.redirect, "redirect")
        else:
            check_answer(page.answer)
            for value in (page.answer.location, page.answer.text,
                          *(h.value for h in page.answer.add_headers or ())):
                if value is not None and "$" in value:
                    raise ValueError(f"error page answer {value!r}: variables are not supported")


def _response_policy(server: Server, add_headers: list[AddHeader], error_pages: list[ErrorPage],
                     answer: Answer | None, intercept: bool, upstream: str = ""):
    """model -> the ResponsePolicy the exchange applies (None: nothing to add or answer)."""
    from fastterm._core import ResponsePolicy

    if not add_headers and not error_pages and answer is None:
        return None
    name = server.server_names[0] if server.server_names else ""
    constants = {"scheme": "https", "proxy_host": upstream, "server_name": name}
    fields = [(h.name, _pieces(h.value, constants)) for h in add_headers]
    value = None if answer is None else answer.location if answer.location is not None else answer.text
    if value is not None:
        fields.append(("", _pieces(value, constants)))
    pages = {}
    for page in error_pages:
        if page.redirect is not None:
            target = (page.status if page.status is not None else -1, page.redirect.encode("latin-1"), None)
        else:
            own = page.answer.add_headers if page.answer.add_headers is not None else server.add_headers
            target = (page.status if page.status is not None else -1, None,
                      _response_policy(server, own, [], page.answer, False, upstream))
        for code in page.codes:
            pages.setdefault(code, target)   # nginx: the first error_page naming a code
    host = name.lower().encode("idna" if not name.isascii() else "ascii")
    return ResponsePolicy(fields, [h.always for h in add_headers], answer.status if answer else 0,
                          answer is not None and answer.location is not None, value is not None, pages,
                          intercept, host)


def _route_policy(server: Server, route: Route):
    """A route's ResponsePolicy, or None where it has nothing of its own (the server's applies)."""
    if route.add_headers is None and route.error_pages is None and route.answer is None and not route.intercept_errors:
        return None
    return _response_policy(server, route.add_headers if route.add_headers is not None else server.add_headers,
                            route.error_pages if route.error_pages is not None else server.error_pages,
                            route.answer, route.intercept_errors, route.upstream)


def check_responses(server: Server) -> list[tuple[str, str]]:
    """(where, why) of each add_header, return and error_page of ``server`` fastterm cannot
    apply; [] when all can."""
    problems = []
    for where, check, value in (("add_header", check_add_headers, server.add_headers),
                                ("error_page", check_error_pages, server.error_pages),
                                ("return", check_answer, server.answer)):
        if value is not None:
            try:
                check(value)
            except ValueError as exc:
                problems.append((where, str(exc)))
    for j, route in enumerate(server.routes):
        for where, check, value in (("add_header", check_add_headers, route.add_headers),
                                    ("error_page", check_error_pages, route.error_pages),
                                    ("return", check_answer, route.answer)):
            if value is not None:
                try:
                    check(value)
                except ValueError as exc:
                    problems.append((f"route[{j}] {where}", str(exc)))
        if not route.upstream and route.answer is None:
            problems.append((f"route[{j}]", "a route has an upstream or a return"))
    return problems


def _server_policy(server: Server, pools: dict, index: int, config: Config | None = None):
    """What the Host header selects: routes, HSTS, trusted proxies (one per server block),
    and its TLS policy, which a connection must have been negotiated under (else 421);
    ``config`` gives the upstreams' and limits' timeouts (None: the defaults')."""
    from fastterm._core import VERIFY_CLIENT_MODES, ServerPolicy, Timeouts

    upstreams = {up.name: up for up in config.upstreams} if config is not None else {}
    limits = config.limits if config is not None else Limits()

    for where, why in check_responses(server):
        raise ConfigError(why, directive=f"{_where(server, index)} {where}")
    routes = []
    for j, route in enumerate(server.routes):
        try:
            check_route(route)
        except ValueError as exc:
            raise ConfigError(str(exc), directive=f"{_where(server, index)} route[{j}]") from None
        if route.answer is not None and not route.upstream:
            routes.append((route.path, None, None, False, "", "/", route.exact, _matching(route, server)))
            continue
        if route.upstream not in pools:
            raise ConfigError(f"unknown upstream {route.upstream!r}", directive=f"{_where(server, index)} route")
        rewrite = None
        if route.proxy is not None:
            try:
                check_proxy_request(route.proxy)
            except ValueError as exc:
                raise ConfigError(str(exc), directive=f"{_where(server, index)} route[{j}] proxy") from None
            rewrite = _rewrite(route.proxy, route.upstream, server)
        for value in (route.redirect_from, route.redirect_to):
            if any(c in value for c in "\r\n\0") or not _latin1(value):
                raise ConfigError(f"{value!r}: CR, LF, NUL or a character past Latin-1",
                                  directive=f"{_where(server, index)} route[{j}] redirect")
        matching = _matching(route, server)
        matching["timeouts"] = Timeouts(*route_timeouts(route, upstreams.get(route.upstream), limits))
        routes.append((route.path, pools[route.upstream], rewrite, route.slash_redirect,
                       route.redirect_from, route.redirect_to, route.exact, matching))
    policy = ServerPolicy(",".join(server.server_names) or f"server{index}", routes,
                          server.hsts, server.trusted_proxies, msgspec.json.encode(server.tls),
                          server.misdirected_request,
                          _response_policy(server, server.add_headers, server.error_pages, server.answer, False))
    policy.max_body = -1 if server.client_max_body_size is None else server.client_max_body_size
    policy.verify_client = VERIFY_CLIENT_MODES[server.tls.verify_client]
    policy.client_headers = server.tls.verify_client != "off"
    names = server.client_cert_headers
    for key in ("verify", "subject", "issuer", "serial", "fingerprint"):
        if getattr(names, key) and not _FIELD_NAME.fullmatch(getattr(names, key)):
            raise ConfigError(f"{getattr(names, key)!r} is not a field name (RFC 9110 token)",
                              directive=f"{_where(server, index)} client_cert_headers.{key}")
    policy.set_client_cert_headers(names.verify, names.subject, names.issuer, names.serial, names.fingerprint)
    return policy


def _matching(route: Route, server: Server) -> dict:
    """What ServerPolicy takes past a route's seventh element: regex, ^~, URI part, body limit,
    and the route's ResponsePolicy (add_header, return, error_page)."""
    limit = route.client_max_body_size if route.client_max_body_size is not None else server.client_max_body_size
    return {"regex": location_regex(route.path, route.regex == "~*") if route.regex else None,
            "no_regex": route.no_regex, "upstream_path": route.upstream_path,
            "max_body": -1 if limit is None else limit, "response": _route_policy(server, route)}


def _session_scope(addr: tuple[str, int], server: Server, index: int) -> bytes:
    """The session ID context of one server block on one listener.

    OpenSSL resumes a session (ID or ticket) only under the context it was made in
    (SSL_CTX_set_session_id_context(3)), so a session from another server block or
    listener gets a full handshake. Made from what a reload and the other nodes of a
    fleet share (DESIGN.md "Scaling past one machine"): the block (position, names, TLS
    policy) and the listener as the position of its port among the block's, not its
    address, so nodes on other addresses, and both address families of a port, share
    sessions. A changed policy starts afresh, except for early data: turning it on or off
    keeps the sessions (a ticket made with it off carries none; one made with it on, offered
    where it is off, resumes and its early data is refused).
    """
    ports = list(dict.fromkeys(parse_address(listen)[1] for listen in server.listen))
    names = sorted(name.lower() for name in server.server_names)
    tls = msgspec.structs.replace(server.tls, early_data=False, max_early_data=0, early_data_unsafe="wait")
    return hashlib.sha256(msgspec.json.encode([index, names, ports.index(addr[1]), tls])).digest()


def read_dhparam(path: str) -> bytes:
    """The PEM DH parameters of ``path`` (``tls.dhparam``, nginx ``ssl_dhparam``), checked as
    a context will load them; ValueError with the reason (OpenSSL's) otherwise."""
    from fastterm._core import check_dhparam

    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as exc:
        raise ValueError(f"cannot read DH parameters {path!r}: {exc.strerror}") from None
    try:
        check_dhparam(pem)
    except TLSError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return pem


def _server_context(server: Server, index: int, certificates: list, scope: bytes, shared):
    from fastterm._core import VERIFY_CLIENT_MODES, TLSContext

    tls = server.tls
    where = _where(server, index)
    dhparam = None
    if tls.dhparam is not None:
        try:
            dhparam = read_dhparam(tls.dhparam)
        except ValueError as exc:
            raise ConfigError(str(exc), directive=f"{where} tls.dhparam") from None
    try:
        ctx = TLSContext(
            protocols=tls.protocols, ciphers=tls.ciphers, ciphersuites=tls.ciphersuites,
            groups=tls.groups, prefer_server_ciphers=tls.prefer_server_ciphers,
            session_cache=tls.session_cache, session_timeout=tls.session_timeout,
            session_tickets=tls.session_tickets, alpn=tls.alpn, session_id_context=scope, shared=shared,
            dhparam=dhparam, early_data=tls.early_data, max_early_data=tls.max_early_data,
            verify_client=VERIFY_CLIENT_MODES[tls.verify_client], client_ca=tls.client_ca,
            trusted_certificate=tls.trusted_certificate, verify_depth=tls.verify_depth,
        )
    except TLSError as exc:
        raise ConfigError(str(exc), directive=f"{where} tls") from None
    for ck in certificates:
        try:
            ctx.add_certificate(ck.chain_pem, ck.key_pem)
        except TLSError as exc:
            raise ConfigError(f"{ck.source}: {exc}", directive=f"{where} certificate") from None
    ctx.reject_handshake = server.reject_handshake
    return ctx


def _check_listener_settings(config: Config, addr: tuple[str, int], indexes: list[int], default: int,
                             source: str | None) -> None:
    """Refuse a per-server TLS setting OpenSSL cannot apply per server block.

    The session cache lives on the context every connection starts on, the listener's
    default server's (SSL_new's session_ctx, which SSL_set_SSL_CTX keeps), so a server
    block cannot turn it on or off for itself. Early data is the listener's too: OpenSSL
    3.0 refuses 0-RTT on a connection SNI moved to another block when the listener's
    default had it off, whatever that block sets (nginx applies the default server's
    ssl_early_data as well). Everything else in ``[server.tls]`` is applied by the
    ClientHello and servername callbacks (ext/tls.pyx).
    """
    for key, why in (("session_cache", "one session cache per listener"),
                     ("early_data", "0-RTT is decided per listener"),
                     ("max_early_data", "0-RTT is decided per listener"),
                     ("early_data_unsafe", "0-RTT is decided per listener")):
        want = getattr(config.servers[default].tls, key)
        for i in indexes:
            server = config.servers[i]
            mine = getattr(server.tls, key)
            if mine == want:
                continue
            host, port = addr
            listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            line = None
            if source:
                with open(source, encoding="utf-8") as f:
                    line = KeyLines(f.read()).line(("server", i, "tls", key))
            value = str(mine).lower() if isinstance(mine, bool) else mine
            raise ConfigError(
                f"server {', '.join(server.server_names) or i}: {key} = {value} differs from the default "
                f"server ({', '.join(config.servers[default].server_names) or default}) on {listen}; OpenSSL "
                f"applies the listener's ({why}): set the same value on both",
                file=source, line=line, directive=f"server.tls.{key}")


def _covering(names: dict[str, object], name: str):
    """What ``names`` (certificate names -> context) has for ``name``: exact, then ``*.``
    one label up (RFC 6125)."""
    found = names.get(name)
    if found is None and "." in name:
        found = names.get("*." + name.split(".", 1)[1])
    return found


def _proxy_trusted(server, i: int) -> tuple:
    """accept_proxy's trusted networks; none given is an error (a header from anyone would
    let any client choose its own address)."""
    if not server.proxy_trusted:
        raise ConfigError("accept_proxy needs proxy_trusted: the networks of the balancers that send"
                          " the PROXY header", directive=f"{_where(server, i)} proxy_trusted")
    try:
        return tuple(ipaddress.ip_network(n, strict=False) for n in server.proxy_trusted)
    except ValueError as exc:
        raise ConfigError(str(exc), directive=f"{_where(server, i)} proxy_trusted") from None


def refresh_listener(config: Config, plan: Plan, tl: TLSListener) -> None:
    """(Re)make ``tl``'s SNI and Host maps from its contexts. A name in server_names belongs
    to the first block that lists it (nginx), for the Host and for SNI: its own certificates,
    or, in a block that has only a PEM directory, the file whose certificate covers the
    name, else its first file. Names in the certificates of directory files (HAProxy ``crt
    DIR``) that no server_names list come next, for their own block."""
    from fastterm._core import SiteTable

    names, sites, sni_regex, host_regex = {}, {}, [], []
    in_files = {i: {} for i in tl.indexes}   # block -> certificate name -> its Identity
    for i in tl.indexes:
        files = plan.certificates[i].files
        for key, ctx in tl.contexts[i].items():
            for name in files[key].names if key else ():
                in_files[i].setdefault(name, ctx)
    for i in tl.indexes:
        contexts = tl.contexts[i]
        own = contexts.get("")
        first = next(iter(contexts.values()))
        for name in config.servers[i].server_names:
            if name.startswith("~"):   # after every exact and wildcard name, in config order
                sni_regex.append((plan.regex_names[name], own or first))
                host_regex.append((plan.regex_names[name], plan.policies[i]))
                continue
            name = name.lower()
            if name not in sites:
                sites[name] = plan.policies[i]
                names[name] = own or _covering(in_files[i], name.lstrip(".")) or first
    for i in tl.indexes:
        for name, ctx in in_files[i].items():
            names.setdefault(name, ctx)
            sites.setdefault(name, plan.policies[i])
    tl.default_context = next(iter(tl.contexts[tl.default].values()))
    tl.default_context.set_sni(names, sni_regex)
    no_host_default = config.servers[tl.default].no_host == "default"
    tl.sites = SiteTable(sites, plan.policies[tl.default], no_host_default, host_regex)
    tl.sites.send_proxy = any(up.send_proxy for up in config.upstreams)
    tl.sites.early_reject = config.servers[tl.default].tls.early_data_unsafe == "reject"


def server_contexts(config: Config, i: int, addr: tuple[str, int], found: ServerCertificates, shared,
                    before: ServerCertificates | None = None, reuse: dict | None = None) -> dict[str, object]:
    """Server block ``i``'s certificates on ``addr``, by identity key: first one context with
    the block's settings and its own chains (else its first directory file's), then an
    Identity on that context for each other directory file (``ext/tls.pyx``: a few KiB each,
    not an SSL_CTX). ``reuse``: what was made from ``before``, kept where nothing changed."""
    from fastterm._core import Identity

    server = config.servers[i]
    identities = found.identities() or {"": []}   # reject_handshake: a context without a certificate
    old = before.identities() if before is not None and reuse else {}
    base_key = next(iter(identities))
    unchanged = lambda key: key in reuse and old.get(key) == identities[key]
    if old and next(iter(reuse)) == base_key and unchanged(base_key):
        base = reuse[base_key]
    else:
        base = _server_context(server, i, identities[base_key], _session_scope(addr, server, i), shared)
        old = {}   # a new context: every identity on it is made anew
    made: dict[str, object] = {base_key: base}
    for key, certs in list(identities.items())[1:]:
        if old and unchanged(key):
            made[key] = reuse[key]
            continue
        try:
            made[key] = Identity(base, [(ck.chain_pem, ck.key_pem) for ck in certs])
        except TLSError as exc:
            raise ConfigError(f"{certs[0].source}: {exc}", directive=f"{_where(server, i)} certificate") from None
    return made


def server_staples(server: Server, i: int, found: ServerCertificates, contexts: dict[str, object]) -> list:
    """What the master staples for (certs/ocsp.py) in server block ``i``'s contexts and
    Identities (None for each: the master's StapleFollower, which makes none); a directory
    file's ``FILE.ocsp`` beside it counts as its ``ocsp_file``."""
    own = [c for c in server.certificates if not (c.key is None and is_pem_directory(c.cert))]
    identities = found.identities()
    sites = []
    for key, target in contexts.items():
        models = own if key == "" else [Certificate(cert=key)]
        for site in stapling_sites(target, identities.get(key, []), models, server.tls, _where(server, i)):
            site.server = i
            sites.append(site)
    return sites


def _upstream_tls(pool, tls: UpstreamTLS, specs: list, source: str | None) -> None:
    """The client TLSContext of an upstream (re-encryption): verification, client certificate,
    protocols; the name each server's certificate must carry and the SNI it is sent."""
    from fastterm._core import TLSContext

    try:
        ctx = TLSContext(server_side=False, protocols=tls.protocols, ciphers=tls.ciphers, alpn=(),
                         cafile=tls.ca_file, verify=tls.verify == "required",
                         verify_depth=-1 if tls.verify_depth is None else tls.verify_depth)
        if tls.cert is not None:
            ck = load_certificate(tls.cert, tls.key)
            ctx.add_certificate(ck.chain_pem, ck.key_pem)
    except TLSError as exc:
        raise ConfigError(f"upstream {pool.name}: {exc}", file=source) from None
    names = [tls.server_name or s.host for s in specs]
    sni = [name if tls.sni and not is_ip_address(name) else None for name in names]   # RFC 6066 §3: no IP
    pool.set_tls(ctx, names, sni, tls.session_reuse)


def _check_access_log(path: str, source: str | None) -> None:
    """The access log can be written, as ``nginx -t`` checks: a worker that could not open it
    would fail at each start. Nothing is created here: the workers create it (as the user they
    run as)."""
    directory = os.path.dirname(path) or "."
    if os.path.exists(path):
        why = None if os.access(path, os.W_OK) else "permission denied"
    elif not os.path.isdir(directory):
        why = f"no directory {directory}"
    else:
        why = None if os.access(directory, os.W_OK | os.X_OK) else f"{directory} is not writable"
    if why:
        raise ConfigError(f"cannot write {path}: {why}", file=source, directive="access_log")


def build(config: Config, source: str | None = None, shared=None) -> Plan:
    """Build every SSL_CTX and upstream pool; raises ConfigError naming what is wrong
    (located in ``source``, the configuration file, when given).

    One TLS context per server block and listener: each its own session scope, all on
    ``shared`` (the master's SharedState: session cache and ticket keys) when given.
    """
    from fastterm._core import UpstreamPool

    plan = Plan()
    if config.access_log:
        _check_access_log(config.access_log, source)
    for up in config.upstreams:
        try:
            check_timeouts(up)
        except ValueError as exc:
            raise ConfigError(str(exc), directive=f"upstream {up.name}") from None
        specs = [parse_upstream_server(s, fail_timeout=up.fail_timeout) for s in up.servers]
        servers = [(s.host, s.port) for s in specs]
        plan.pools[up.name] = UpstreamPool(up.name, servers, up.keepalive, up.fail_timeout, up.tries,
                                           up.keepalive_max, up.keepalive_timeout, up.max_conns)
        plan.pools[up.name].set_balancing([s.weight for s in specs], [s.backup for s in specs],
                                          [s.max_fails for s in specs], [s.fail_timeout for s in specs],
                                          up.balance == "least_conn")
        if up.tls is not None:
            _upstream_tls(plan.pools[up.name], up.tls, specs, source)
        if up.send_proxy:
            plan.pools[up.name].send_proxy = int(up.send_proxy[1])
    plan.policies = [_server_policy(server, plan.pools, i, config) for i, server in enumerate(config.servers)]
    for i, server in enumerate(config.servers):
        for name in server.server_names:
            try:
                check_server_name(name)
                if name.startswith("~"):
                    plan.regex_names[name] = server_name_regex(name)
            except ValueError as exc:
                raise ConfigError(str(exc), directive=f"{_where(server, i)} server_names") from None
    plan.signatures = [files_signature(server.certificates) for server in config.servers]   # before reading
    plan.certificates = [load_server_certificates(server.certificates) for server in config.servers]
    by_listen: dict[tuple[str, int], list[int]] = {}
    for i, server in enumerate(config.servers):
        for listen in server.listen:
            by_listen.setdefault(parse_address(listen), []).append(i)
    for addr, indexes in by_listen.items():
        default = next((i for i in indexes if config.servers[i].default_server), indexes[0])
        _check_listener_settings(config, addr, indexes, default, source)
        contexts = {i: server_contexts(config, i, addr, plan.certificates[i], shared) for i in indexes}
        tl = TLSListener(addr, indexes, default, contexts)
        refresh_listener(config, plan, tl)
        for i in indexes:
            plan.staples += server_staples(config.servers[i], i, plan.certificates[i], contexts[i])
        plan.tls.append(tl)
        plan.listeners.append((addr, tl.default_context, tl.sites))
        if config.servers[default].accept_proxy:
            plan.accept_proxy[addr] = _proxy_trusted(config.servers[default], default)
    by_address: dict[tuple[str, int], list] = {}
    for redirect in config.redirects:
        for listen in redirect.listen:
            blocks = by_address.setdefault(parse_address(listen), [])
            if not any(block is redirect for block in blocks):
                blocks.append(redirect)
    for addr, blocks in by_address.items():
        plan.redirects.append((addr, RedirectTable.build(blocks, config.limits.keepalive_timeout)))
    return plan
