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
import re
from dataclasses import dataclass, field

import msgspec

from fastterm.certs.store import load_certificate
from fastterm.config.model import Config, ProxyRequest, Server
from fastterm.config.toml import KeyLines, parse_address
from fastterm.errors import ConfigError, TLSError
from fastterm.redirect import RedirectTable


@dataclass
class Plan:
    """Everything a worker serves, built and validated before any socket is bound."""

    listeners: list[tuple[tuple[str, int], object, object]] = field(default_factory=list)  # (addr, TLSContext, SiteTable)
    pools: dict[str, object] = field(default_factory=dict)
    redirects: list[tuple[tuple[str, int], object]] = field(default_factory=list)  # (addr, RedirectTable)


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


def _rewrite(proxy: ProxyRequest, upstream: str, server: Server):
    """model.ProxyRequest -> the RequestRewrite the exchange applies: literal bytes and
    variable ids; the constants of the route ($scheme, $proxy_host, $server_name) folded in."""
    from fastterm._core import HTTP_FIELD, LITERAL, VARIABLES, RequestRewrite

    name = server.server_names[0] if server.server_names else ""
    constants = {"scheme": "https", "proxy_host": upstream, "server_name": name}
    headers = []
    for header in proxy.headers:
        compiled: list[tuple[int, bytes]] = []
        for var, literal in template_parts(header.value):
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
        headers.append((header.name, compiled))
    return RequestRewrite(proxy.http_version, headers, name.lower().encode("idna" if not name.isascii() else "ascii"),
                          proxy.keepalive, proxy.real_ip_from, proxy.real_ip_header)


def _server_policy(server: Server, pools: dict, index: int):
    """What the Host header selects: routes, HSTS, trusted proxies (one per server block),
    and its TLS policy, which a connection must have been negotiated under (else 421)."""
    from fastterm._core import ServerPolicy

    routes = []
    for j, route in enumerate(server.routes):
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
        routes.append((route.path, pools[route.upstream], rewrite, route.slash_redirect,
                       route.redirect_from, route.redirect_to, route.exact))
    return ServerPolicy(",".join(server.server_names) or f"server{index}", routes,
                        server.hsts, server.trusted_proxies, msgspec.json.encode(server.tls),
                        server.misdirected_request)


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
    tls = msgspec.structs.replace(server.tls, early_data=False, max_early_data=0)
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
    from fastterm._core import TLSContext

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
        )
    except TLSError as exc:
        raise ConfigError(str(exc), directive=f"{where} tls") from None
    for ck in certificates:
        try:
            ctx.add_certificate(ck.chain_pem, ck.key_pem)
        except TLSError as exc:
            raise ConfigError(f"{ck.source}: {exc}", directive=f"{where} certificate") from None
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
                     ("max_early_data", "0-RTT is decided per listener")):
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


def build(config: Config, source: str | None = None, shared=None) -> Plan:
    """Build every SSL_CTX and upstream pool; raises ConfigError naming what is wrong
    (located in ``source``, the configuration file, when given).

    One TLS context per server block and listener: each its own session scope, all on
    ``shared`` (the master's SharedState: session cache and ticket keys) when given.
    """
    from fastterm._core import SiteTable, UpstreamPool

    plan = Plan()
    for up in config.upstreams:
        servers = [parse_address(s, default_host="127.0.0.1") for s in up.servers]
        plan.pools[up.name] = UpstreamPool(up.name, servers, up.keepalive, up.fail_timeout, up.tries,
                                           up.keepalive_max, up.keepalive_timeout, up.max_conns)
    policies = [_server_policy(server, plan.pools, i) for i, server in enumerate(config.servers)]
    certificates = [[load_certificate(c.cert, c.key) for c in server.certificates] for server in config.servers]
    by_listen: dict[tuple[str, int], list[int]] = {}
    for i, server in enumerate(config.servers):
        for listen in server.listen:
            by_listen.setdefault(parse_address(listen), []).append(i)
    for addr, indexes in by_listen.items():
        default = next((i for i in indexes if config.servers[i].default_server), indexes[0])
        _check_listener_settings(config, addr, indexes, default, source)
        contexts = {i: _server_context(config.servers[i], i, certificates[i],
                                       _session_scope(addr, config.servers[i], i), shared) for i in indexes}
        names, sites = {}, {}
        for i in indexes:
            for name in config.servers[i].server_names:
                names.setdefault(name.lower(), contexts[i])
                sites.setdefault(name.lower(), policies[i])
        contexts[default].set_sni(names)
        no_host_default = config.servers[default].no_host == "default"
        plan.listeners.append((addr, contexts[default], SiteTable(sites, policies[default], no_host_default)))
    by_address: dict[tuple[str, int], list] = {}
    for redirect in config.redirects:
        for listen in redirect.listen:
            blocks = by_address.setdefault(parse_address(listen), [])
            if not any(block is redirect for block in blocks):
                blocks.append(redirect)
    for addr, blocks in by_address.items():
        plan.redirects.append((addr, RedirectTable.build(blocks, config.limits.keepalive_timeout)))
    return plan
