"""fastterm.toml -> ``Config``, with errors located like ``nginx -t`` (file:line: directive).

tomllib reports syntax errors with a line; msgspec reports schema errors with a path
(``$.server[0].tls.session_timeout``). ``KeyLines`` maps such paths back onto the line
where the key appears, so every error a user sees points into their file.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from fastterm.accesslog import format_of
from fastterm.config.model import Acme, Config, Route, Server, Upstream, UpstreamTLS
from fastterm.errors import ConfigError
from fastterm.privileges import resolve

Path = tuple[str | int, ...]

_KEY = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_DOTTED_KEY = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_TABLE_RE = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED_KEY})\s*\]\]?")
_KEYVAL_RE = re.compile(rf"^\s*({_DOTTED_KEY})\s*=")
_SEGMENT_RE = re.compile(_KEY)
_MSGSPEC_PATH_RE = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")
_TOML_LINE_RE = re.compile(r"\(at line (\d+), column \d+\)")

# The most early data a client may send: what a 0-RTT flight is for (a request head or a small
# body) fits many times over; it bounds what a connection buffers before its handshake ends.
MAX_EARLY_DATA = 512 * 1024
REFUSED_PROTOCOLS = {"SSLv2", "SSLv3", "TLSv1", "TLSv1.0", "TLSv1.1"}


def _split_key(dotted: str) -> list[str]:
    return [seg.strip("\"'") for seg in _SEGMENT_RE.findall(dotted)]


def _value_depth(text: str) -> int:
    """Net ``[``/``{`` nesting of a TOML value fragment, ignoring strings and comments."""
    depth = 0
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "#":
            break
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        i += 1
    return depth


class KeyLines:
    """Where each table and key of a TOML text is, by the path msgspec would report.

    Best effort by design: keys inside inline tables resolve to the line of the
    enclosing key, which is still the line a user has to look at.
    """

    def __init__(self, text: str):
        self.lines: dict[Path, int] = {}
        self._array_len: dict[Path, int] = {}
        self._scan(text)

    def _resolve(self, segments: list[str], prefix: Path = ()) -> Path:
        """Apply TOML's rule: a name that is an array of tables means its last element."""
        path = prefix
        for seg in segments:
            path = path + (seg,)
            if path in self._array_len:
                path = path + (self._array_len[path] - 1,)
        return path

    def _scan(self, text: str) -> None:
        table: Path = ()
        depth = 0
        in_multiline = ""
        for lineno, line in enumerate(text.splitlines(), start=1):
            if in_multiline:
                if line.count(in_multiline) % 2:
                    in_multiline = ""
                continue
            if depth > 0:
                depth += _value_depth(line)
                continue
            header = _TABLE_RE.match(line)
            if header:
                segments = _split_key(header.group(2))
                parent = self._resolve(segments[:-1])
                path = parent + (segments[-1],)
                if header.group(1) == "[[":
                    count = self._array_len.get(path, 0) + 1
                    self._array_len[path] = count
                    self.lines.setdefault(path, lineno)
                    path = path + (count - 1,)
                self.lines[path] = lineno
                table = path
                continue
            keyval = _KEYVAL_RE.match(line)
            if not keyval:
                continue
            segments = _split_key(keyval.group(1))
            path = table
            for seg in segments:
                path = path + (seg,)
                self.lines.setdefault(path, lineno)
            value = line[keyval.end():]
            for delim in ('"""', "'''"):
                if value.count(delim) % 2:
                    in_multiline = delim
            if not in_multiline:
                depth = _value_depth(value)

    def line(self, path: Iterable[str | int]) -> int | None:
        """The line of ``path``, or of its closest ancestor that appears in the text."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def directive_name(path: Iterable[str | int]) -> str | None:
    """``("server", 0, "tls", "ciphers")`` -> ``"server.tls.ciphers"``."""
    name = ".".join(p for p in path if isinstance(p, str))
    return name or None


def is_ip_address(name: str) -> bool:
    """An IPv4 or IPv6 literal (no SNI for it, RFC 6066 §3; an IP SAN on a certificate)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def parse_address(address: str, *, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``*:port`` or a bare ``port`` -> ``(host, port)``.

    A bare port binds every IPv4 address, as nginx's ``listen 443`` does.
    """
    address = str(address).strip()
    if not address:
        raise ValueError("empty address")
    if address.isdigit():
        host, port_text = default_host, address
    elif address.startswith("["):
        close = address.find("]")
        if close < 0 or address[close + 1:close + 2] != ":":
            raise ValueError(f"invalid address {address!r}: expected [IPv6]:port")
        host, port_text = address[1:close], address[close + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r} in {address!r}") from None
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep or not host:
            raise ValueError(f"invalid address {address!r}: expected host:port, [IPv6]:port or port")
        if ":" in host:
            raise ValueError(f"invalid address {address!r}: write IPv6 addresses as [addr]:port")
        if host == "*":
            host = default_host
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid port {port_text!r} in {address!r}")
    return host, int(port_text)


@dataclass(frozen=True)
class UpstreamServer:
    """One entry of ``[[upstream]] servers``: ``[https://]host:port`` then nginx's parameters."""

    host: str
    port: int
    tls: bool          # https://
    weight: int = 1
    backup: bool = False
    max_fails: int = 1         # failures within fail_timeout that take it out; 0: never
    fail_timeout: float = 10.0
    check: bool = False        # HAProxy's server ``check``: actively checked (fastterm/health.py)
    inter: float | None = None  # its own check interval, rise and fall (HAProxy inter, rise, fall);
    rise: int | None = None     # None: the upstream's [upstream.check] values
    fall: int | None = None


def parse_upstream_server(spec: str, *, fail_timeout: float = 10.0) -> UpstreamServer:
    """``"https://10.0.0.10:443 weight=2 max_fails=3 fail_timeout=5"``, ``"b:80 backup"``,
    ``"c:80 check inter=2s rise=2 fall=3"`` -> UpstreamServer; ValueError says what is wrong."""
    words = str(spec).split()
    if not words:
        raise ValueError("empty server")
    address, tls = words[0], False
    scheme, sep, rest = address.partition("://")
    if sep:
        if scheme.lower() not in ("http", "https"):
            raise ValueError(f"unknown scheme {scheme!r} in {address!r} (expected http:// or https://)")
        tls, address = scheme.lower() == "https", rest.rstrip("/")
        if address.isdigit():
            raise ValueError(f"invalid address {words[0]!r}: expected {scheme}://host:port")
    host, port = parse_address(address, default_host="127.0.0.1")
    options: dict = {"fail_timeout": fail_timeout}
    for word in words[1:]:
        key, eq, value = word.partition("=")
        if key in ("backup", "check") and not eq:
            options[key] = True
        elif key in ("rise", "fall") and eq and value.isdigit() and int(value) >= 1:
            options[key] = int(value)
        elif key == "inter" and eq:
            try:
                options[key] = float(value.removesuffix("s"))
            except ValueError:
                raise ValueError(f"invalid inter {value!r} in {spec!r} (seconds)") from None
            if options[key] <= 0:
                raise ValueError(f"inter must be above 0 in {spec!r}")
        elif key in ("weight", "max_fails") and eq and value.isdigit():
            options[key] = int(value)
            if key == "weight" and not 1 <= options[key] <= 1000:
                raise ValueError(f"weight must be 1..1000 in {spec!r}")
        elif key == "fail_timeout" and eq:
            try:
                options[key] = float(value.removesuffix("s"))
            except ValueError:
                raise ValueError(f"invalid fail_timeout {value!r} in {spec!r} (seconds)") from None
        else:
            raise ValueError(f"invalid server parameter {word!r} in {spec!r} (known: weight=N, backup, "
                             "max_fails=N, fail_timeout=SECONDS, check, inter=SECONDS, rise=N, fall=N)")
    return UpstreamServer(host, port, tls, **options)


class _Checker:
    """Semantic checks on a decoded ``Config``; each error carries its file:line."""

    def __init__(self, path: str, keys: KeyLines):
        self.path = path
        self.keys = keys

    def error(self, message: str, *where: str | int) -> ConfigError:
        return ConfigError(message, file=self.path, line=self.keys.line(where),
                           directive=directive_name(where))

    def protocols(self, data: dict) -> None:
        """Runs before msgspec, whose "Invalid enum value" would not say why."""
        for i, server in enumerate(_list(data.get("server"))):
            tls = server.get("tls") if isinstance(server, dict) else None
            protocols = tls.get("protocols") if isinstance(tls, dict) else None
            for proto in _list(protocols):
                if proto in REFUSED_PROTOCOLS:
                    raise self.error(
                        f"{proto} is refused by fastterm: it is deprecated (RFC 8996); "
                        "use TLSv1.2 and/or TLSv1.3", "server", i, "tls", "protocols")
                if proto not in ("TLSv1.2", "TLSv1.3"):
                    raise self.error(f"unknown protocol {proto!r}: use TLSv1.2 and/or TLSv1.3",
                                     "server", i, "tls", "protocols")

    def _redirect_answer(self, redirect, i: int) -> None:
        from fastterm.redirect import CLOSE_WITHOUT_RESPONSE, REDIRECT_CODES, compile_template

        status = redirect.status
        if not (200 <= status <= 599 and (status < 300 or status >= 400 or status in REDIRECT_CODES)):
            raise self.error(f"status {status}: use 2xx, {', '.join(map(str, REDIRECT_CODES))}, 4xx or 5xx",
                             "redirect", i, "status")
        if redirect.location is not None and redirect.text is not None:
            raise self.error("location and text: a redirect answers one of them", "redirect", i, "text")
        if redirect.location is not None and status not in REDIRECT_CODES:
            raise self.error(f"location with status {status}: a redirect status is one of "
                             f"{', '.join(map(str, REDIRECT_CODES))}", "redirect", i, "location")
        if redirect.text is not None and (status in REDIRECT_CODES or status == CLOSE_WITHOUT_RESPONSE):
            raise self.error(f"text with status {status}", "redirect", i, "text")
        for key in ("location", "text"):
            value = getattr(redirect, key)
            if value is not None:
                try:
                    compile_template(value)
                except ValueError as exc:
                    raise self.error(f"unknown variable ${exc.args[0]} (known: $scheme, $host, $http_host, "
                                     "$server_name, $server_port, $request_uri, $uri, $args, $query_string, "
                                     "$is_args)", "redirect", i, key) from None
        if redirect.keepalive_requests < 0:
            raise self.error("keepalive_requests must be 0 or more", "redirect", i, "keepalive_requests")
        if redirect.keepalive_timeout is not None and redirect.keepalive_timeout <= 0:
            raise self.error("keepalive_timeout must be positive", "redirect", i, "keepalive_timeout")
        for name in redirect.server_names:
            if not name or "*" in name.removeprefix("*.") or name.startswith("."):
                raise self.error(f"server name {name!r}: exact names or *.suffix", "redirect", i, "server_names")

    def check(self, config: Config) -> Config:
        upstream_names: set[str] = set()
        upstreams = []
        for i, upstream in enumerate(config.upstreams):
            if upstream.name in upstream_names:
                raise self.error(f"duplicate upstream {upstream.name!r}", "upstream", i, "name")
            upstream_names.add(upstream.name)
            if not upstream.servers:
                raise self.error(f"upstream {upstream.name!r} has no servers", "upstream", i, "servers")
            upstreams.append(self._upstream(upstream, i))
        for i, redirect in enumerate(config.redirects):
            if not redirect.listen:
                raise self.error("redirect has no listen address", "redirect", i, "listen")
            for address in redirect.listen:
                self._address(address, "redirect", i, "listen")
            if not 0 < redirect.https_port < 65536:
                raise self.error(f"invalid port {redirect.https_port}", "redirect", i, "https_port")
            self._redirect_answer(redirect, i)
        if not config.servers:
            raise self.error("no [[server]] defined", "server")
        names_by_listen: dict[tuple[str, int], dict[str, int]] = {}
        default_by_listen: dict[tuple[str, int], int] = {}
        servers = []
        for i, server in enumerate(config.servers):
            if not server.listen:
                raise self.error("server has no listen address", "server", i, "listen")
            if not server.certificates and not server.reject_handshake and (server.acme or config.acme) is None:
                raise self.error("server has no certificate: add a [[server.certificate]] (or acme)",
                                 "server", i, "certificate")
            listens = [self._address(a, "server", i, "listen") for a in server.listen]
            for name in server.server_names:
                from fastterm.config.plan import check_server_name

                try:
                    check_server_name(name)
                except ValueError as exc:
                    raise self.error(str(exc), "server", i, "server_names") from None
            for listen in listens:
                seen = names_by_listen.setdefault(listen, {})
                for name in server.server_names:
                    other = seen.setdefault(name.lower(), i)
                    if other != i:
                        raise self.error(
                            f"duplicate server name {name!r} on {_show(listen)} (also in server "
                            f"at line {self.keys.line(('server', other))})", "server", i, "server_names")
                if server.default_server:
                    other = default_by_listen.setdefault(listen, i)
                    if other != i:
                        raise self.error(
                            f"a default server for {_show(listen)} is already defined at line "
                            f"{self.keys.line(('server', other))}", "server", i, "default_server")
            from fastterm.config.plan import check_responses

            for where, why in check_responses(server):
                raise self.error(why, "server", i, *(("route", int(where[6:where.index("]")]),
                                                      *where.split(" ")[1:]) if where.startswith("route[")
                                                     else (where,)))
            for j, route in enumerate(server.routes):
                if route.answer is not None and not route.upstream:
                    continue
                if route.upstream not in upstream_names:
                    raise self.error(f"unknown upstream {route.upstream!r}", "server", i, "route", j,
                                     "upstream")
                from fastterm.config.plan import check_route

                try:
                    check_route(route)
                except ValueError as exc:
                    raise self.error(str(exc), "server", i, "route", j, "path") from None
                if route.proxy is not None:
                    from fastterm.config.plan import check_proxy_request

                    try:
                        check_proxy_request(route.proxy)
                    except ValueError as exc:
                        raise self.error(str(exc), "server", i, "route", j, "proxy") from None
            servers.append(self._with_defaults(server, i, config))
        if not 0 <= config.limits.header_line_size <= config.limits.header_buffer_size:
            raise self.error("header_line_size must be 0 (no line limit) up to header_buffer_size",
                             "limits", "header_line_size")
        if config.workers != "auto" and not 1 <= config.workers <= 256:
            raise self.error("workers must be \"auto\" or 1..256", "workers")
        if config.certificate_check_interval < 0:
            raise self.error("certificate_check_interval must be 0 (never) or more seconds",
                             "certificate_check_interval")
        if config.admin and not config.admin.startswith("unix:"):
            host, _port = self._address(config.admin, "admin", default_host="127.0.0.1")
            if not (config.admin_allow_remote or _is_loopback(host)):
                raise self.error(f"{host} is not a loopback address: the admin endpoint speaks plain HTTP "
                                 "and answers GET /status and /metrics to anyone who reaches it; set "
                                 "admin_allow_remote = true to listen there anyway", "admin")
        if config.group and not config.user:
            raise self.error("group needs user: workers change group only when they change user", "group")
        try:
            resolve(config.user, config.group)
        except ConfigError as exc:
            raise self.error(exc.message, "group" if "group" in exc.message else "user") from None
        try:
            format_of(config.access_log_format)
        except ValueError as exc:
            raise self.error(str(exc), "access_log_format") from None
        if config.handshake_log_rate < 0:
            raise self.error("handshake_log_rate must be 0 (none) or more lines a second", "handshake_log_rate")
        base = os.path.dirname(os.path.abspath(self.path))
        access_log = None if config.access_log in (None, "", "off") else _absolute(config.access_log, base)
        sessions = msgspec.structs.replace(
            config.sessions, ticket_key_file=[_absolute(f, base) for f in config.sessions.ticket_key_file])
        return msgspec.structs.replace(
            config, servers=servers, sessions=sessions, upstreams=upstreams,
            acme=None if config.acme is None else _absolute_acme(config.acme, base),
            acme_challenge_dir=(_absolute(config.acme_challenge_dir, base)
                                if config.acme_challenge_dir else None),
            pid_file=_absolute(config.pid_file, base) if config.pid_file else None,
            error_log=_absolute(config.error_log, base) if config.error_log else None, access_log=access_log)

    def _upstream(self, upstream: Upstream, i: int) -> Upstream:
        """Check the servers; ``https://`` ones give the upstream a TLS table (defaults: verified
        against the system trust store, the URL's host as name and SNI); TLS paths made absolute."""
        specs = []
        for address in upstream.servers:
            try:
                specs.append(parse_upstream_server(address, fail_timeout=upstream.fail_timeout))
            except ValueError as exc:
                raise self.error(str(exc), "upstream", i, "servers") from None
        if len({s.tls for s in specs}) > 1:
            raise self.error(f"upstream {upstream.name!r} mixes https:// and plain servers", "upstream", i, "servers")
        if all(s.backup for s in specs):
            raise self.error(f"upstream {upstream.name!r} has only backup servers", "upstream", i, "servers")
        from fastterm.config.plan import check_timeouts

        try:
            check_timeouts(upstream)
        except ValueError as exc:
            raise self.error(str(exc), "upstream", i) from None
        if upstream.check is not None:
            from fastterm.health import check_problems

            for key, message in check_problems(upstream.check)[:1]:
                raise self.error(f"upstream {upstream.name!r} check: {message}", "upstream", i, "check", key)
        tls = upstream.tls
        if tls is None and specs[0].tls:
            tls = UpstreamTLS()
        if tls is None:
            return upstream
        base = os.path.dirname(os.path.abspath(self.path))
        if tls.key is not None and tls.cert is None:
            raise self.error("tls.key without tls.cert", "upstream", i, "tls", "key")
        if tls.verify_depth is not None and tls.verify_depth < 0:
            raise self.error("verify_depth must be 0 or more", "upstream", i, "tls", "verify_depth")
        tls = msgspec.structs.replace(
            tls, ca_file=None if tls.ca_file is None else _absolute(tls.ca_file, base),
            cert=None if tls.cert is None else _absolute(tls.cert, base),
            key=None if tls.key is None else _absolute(tls.key, base))
        for key in ("ca_file", "cert", "key"):
            path = getattr(tls, key)
            if path is not None and not os.access(path, os.R_OK):
                raise self.error(f"cannot read {path}", "upstream", i, "tls", key)
        return msgspec.structs.replace(upstream, tls=tls)

    def _with_defaults(self, server: Server, i: int, config: Config) -> Server:
        """Give a route-less server the only upstream (not a reject_handshake one: a request that
        reaches it by Host gets 404, as nginx's); make certificate paths absolute."""
        routes = server.routes
        if not routes and not server.reject_handshake:
            if len(config.upstreams) != 1:
                raise self.error(
                    "server has no [[server.route]] and there is not exactly one upstream to default to",
                    "server", i)
            routes = [Route(path="/", upstream=config.upstreams[0].name)]
        base = os.path.dirname(os.path.abspath(self.path))
        certificates = [
            msgspec.structs.replace(c, cert=_absolute(c.cert, base),
                                    key=None if c.key is None else _absolute(c.key, base),
                                    ocsp_file=None if c.ocsp_file is None else _absolute(c.ocsp_file, base))
            for c in server.certificates
        ]
        tls = server.tls
        if not 1 <= tls.max_early_data <= MAX_EARLY_DATA:
            raise self.error(f"max_early_data must be 1 .. {MAX_EARLY_DATA} bytes", "server", i, "tls",
                             "max_early_data")
        if tls.early_data and "TLSv1.3" not in tls.protocols:
            raise self.error("early_data needs TLSv1.3 in protocols (0-RTT is TLS 1.3's)", "server", i,
                             "tls", "early_data")
        if tls.dhparam is not None:
            from fastterm.config.plan import read_dhparam

            tls = msgspec.structs.replace(tls, dhparam=_absolute(tls.dhparam, base))
            try:
                read_dhparam(tls.dhparam)
            except ValueError as exc:
                raise self.error(str(exc), "server", i, "tls", "dhparam") from None
        if tls.trusted_certificate is not None:
            tls = msgspec.structs.replace(tls, trusted_certificate=_absolute(tls.trusted_certificate, base))
        tls = self._client_verify(tls, i, base)
        if server.acme is not None:
            server = msgspec.structs.replace(server, acme=_absolute_acme(server.acme, base))
        return msgspec.structs.replace(server, routes=routes, certificates=certificates, tls=tls)

    def _client_verify(self, tls, i: int, base: str):
        """``client_ca`` made absolute and readable; ``on``/``optional`` need it (as nginx)."""
        if tls.client_ca is not None:
            tls = msgspec.structs.replace(tls, client_ca=_absolute(tls.client_ca, base))
            problem = client_ca_problem(tls.client_ca)
            if problem:
                raise self.error(f"cannot load client CA file {tls.client_ca}: {problem}", "server", i, "tls",
                                 "client_ca")
        if tls.verify_client in ("on", "optional") and tls.client_ca is None:
            raise self.error(f'verify_client = "{tls.verify_client}" needs client_ca (the CAs clients '
                             f'are checked against)', "server", i, "tls", "verify_client")
        if tls.verify_depth < 0:
            raise self.error("verify_depth must be 0 or more", "server", i, "tls", "verify_depth")
        return tls

    def _address(self, address: str, *where: str | int, default_host: str = "0.0.0.0") -> tuple[str, int]:
        try:
            return parse_address(address, default_host=default_host)
        except ValueError as exc:
            raise self.error(str(exc), *where) from None


def client_ca_problem(path: str) -> str | None:
    """Why ``path`` cannot be a client CA file (unreadable, no PEM certificate), or None."""
    import ssl

    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        return str(exc.reason or "no PEM certificate").lower().replace("_", " ")
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _show(listen: tuple[str, int]) -> str:
    host, port = listen
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _absolute(path: str, base: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def _absolute_acme(acme: Acme, base: str) -> Acme:
    return msgspec.structs.replace(acme, state_dir=_absolute(acme.state_dir, base),
                                   ca_file=None if acme.ca_file is None else _absolute(acme.ca_file, base))


def _schema_error(exc: msgspec.ValidationError, path: str, keys: KeyLines) -> ConfigError:
    """Turn msgspec's ``message - at `$.a[0].b``` into file:line: directive: message."""
    message, _, at = str(exc).partition(" - at `")
    where: list[str | int] = [
        name if name else int(index) for name, index in _MSGSPEC_PATH_RE.findall(at.rstrip("`"))
    ]
    field = re.search(r"(unknown|required) field `([^`]+)`", message)
    if field:
        kind, name = field.groups()
        message = "unknown directive" if kind == "unknown" else "missing required directive"
        where.append(name)
        line = keys.line(where) if kind == "unknown" else keys.line(where[:-1])
    else:
        message = message.replace("`", "")
        line = keys.line(where)
    return ConfigError(message, file=path, line=line, directive=directive_name(where))


def load_config(path: str) -> Config:
    """Read, decode and validate a fastterm.toml; raise ``ConfigError`` located at file:line."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration: {exc.strerror}", file=path) from None
    try:
        text = raw.decode("utf-8")
        data = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8: {exc.reason} at byte {exc.start}", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_LINE_RE.search(str(exc))
        message = _TOML_LINE_RE.sub("", str(exc)).strip()
        raise ConfigError(f"syntax error: {message}", file=path,
                          line=int(match.group(1)) if match else None) from None
    keys = KeyLines(text)
    checker = _Checker(path, keys)
    checker.protocols(data)
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise _schema_error(exc, path, keys) from None
    return checker.check(config)


# ---- writing -----------------------------------------------------------------------------


def _plain(value: object) -> object:
    """A model value as TOML data: Structs as tables of their non-default keys, None left out."""
    if isinstance(value, msgspec.Struct):
        table = {}
        for f in msgspec.structs.fields(value):
            item = getattr(value, f.name)
            if item is None:
                continue
            if f.default is not msgspec.NODEFAULT:
                default = f.default
            elif f.default_factory is not msgspec.NODEFAULT:
                default = f.default_factory()
            else:
                default = msgspec.NODEFAULT
            if default is not msgspec.NODEFAULT and type(item) is type(default) and item == default:
                continue
            table[f.encode_name] = _plain(item)
        return table
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)     # JSON string escapes are TOML basic-string escapes
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _is_tables(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _emit(table: dict, prefix: str, out: list[str]) -> None:
    for key, value in table.items():
        if not isinstance(value, dict) and not _is_tables(value):
            out.append(f"{key} = {_toml_value(value)}")
    for key, value in table.items():
        if isinstance(value, dict):
            out.append(f"\n[{prefix}{key}]")
            _emit(value, f"{prefix}{key}.", out)
    for key, value in table.items():
        if _is_tables(value):
            for item in value:
                out.append(f"\n[[{prefix}{key}]]")
                _emit(item, f"{prefix}{key}.", out)


def dump_config(config: Config) -> str:
    """``Config`` -> fastterm.toml text that ``load_config`` reads back into an equal ``Config``
    (keys at their default are left out; paths are absolute)."""
    out: list[str] = []
    _emit(_plain(config), "", out)
    return "\n".join(out).lstrip("\n") + "\n"
