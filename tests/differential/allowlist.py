"""The differences between nginx and fastterm that are known and accepted, each with its reason.

The rule: every field that differs between nginx and fastterm on a case fails that case's
test, unless an entry here covers it. An entry names the field (an ``fnmatch`` pattern over
the observation's field names, e.g. ``backend.header:connection``), optionally narrows it
to configs and cases (patterns over the config's file stem and the case id), to responses
the proxy generated itself (``generated=True``: no backend saw a request, on either side),
and to the exact values each side showed (``nginx=`` / ``fastterm=``; ``ANY`` matches
anything, ``None`` means the field was absent, a function is a predicate over the value),
and to observations that fit ``when(nginx_observation, fastterm_observation)``. It must say
why the difference is right, or which issue will remove it.

A difference that is a fastterm bug does not belong here: it stays a failing test.

``UNSUPPORTED`` lists, per corpus config, why a directive it carries is not supported yet
(the test asserts ``fastterm check --nginx`` names it with file:line); an entry goes when
the feature lands, and the config's ``# diff: unsupported`` line with it.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()


@dataclass(frozen=True)
class Allowed:
    field: str
    reason: str
    config: str | tuple[str, ...] = "*"
    case: str = "*"
    generated: bool | None = None
    nginx: object = ANY
    fastterm: object = ANY
    when: Callable[[dict, dict], bool] | None = None   # (nginx observation, fastterm observation)

    def covers(self, config: str, case: str, field: str, nginx_value, fastterm_value, generated: bool,
               nginx_obs: dict, fastterm_obs: dict) -> bool:
        configs = (self.config,) if isinstance(self.config, str) else self.config
        if not (fnmatch.fnmatchcase(field, self.field) and any(fnmatch.fnmatchcase(config, c) for c in configs)
                and fnmatch.fnmatchcase(case, self.case)):
            return False
        if self.generated is not None and self.generated != generated:
            return False
        for want, got in ((self.nginx, nginx_value), (self.fastterm, fastterm_value)):
            if want is ANY:
                continue
            if callable(want) and not isinstance(want, str):
                if not want(got):
                    return False
            elif want != got:
                return False
        return self.when is None or bool(self.when(nginx_obs, fastterm_obs))


def _configs_without(directive: str) -> tuple[str, ...]:
    """Corpus configs that never set ``directive`` (a regex; nginx's default applies)."""
    from diffharness import load_corpus

    return tuple(c.name for c in load_corpus()
                 if not re.search(rf"^\s*{directive}[\s;]", c.scanned, re.MULTILINE | re.IGNORECASE))


def _refused_for_version(obs: dict) -> bool:
    return "protocol version" in str(obs.get("tls.outcome", "")).lower().replace("_", " ")


def _no_tls13_at_nginx(a: dict, b: dict) -> bool:
    """nginx 1.22 offered no TLS 1.3 where fastterm did (or refused where only 1.3 would do)."""
    return a.get("tls.version") != "TLSv1.3" and (b.get("tls.version") == "TLSv1.3" or _refused_for_version(a))


NGINX_TLS_DEFAULTS = ("nginx.py, \"Deliberate choices\": without ssl_protocols fastterm offers TLSv1.2 TLSv1.3 "
                      "(nginx >= 1.23.4's default); nginx 1.22's default has no TLS 1.3")

ALLOWED: list[Allowed] = [
    # -- 0-RTT replay protection nginx does not have (issue 13)
    Allowed("backend.requests after replays", config="seed_early_data", fastterm=[],
            reason="a captured 0-RTT flight sent again: nginx (SSL_OP_NO_ANTI_REPLAY, no replay check of its "
                   "own) accepts its early data each time and the backend runs the request again; fastterm's "
                   "replay table refuses early data from a ClientHello it has seen (ext/shm.pyx ReplayTable), "
                   "so nothing runs twice"),
    Allowed("backend.requests", config="seed_early_data", case="0-RTT GET *",
            when=lambda a, b: [r[:2] for r in a.get("backend.requests", [])] ==
            [r[:2] for r in b.get("backend.requests", [])] and
            all(r[2] is None for r in a.get("backend.requests", [])),
            reason="a GET in accepted early data: nginx reads all the early data and may complete the "
                   "handshake before it handles the request, and $ssl_early_data is then empty (no Early-Data "
                   "field: timing on a loaded machine); fastterm forwards a safe request from early data at "
                   "once, marked Early-Data: 1. Same request, only the mark differs"),
    # -- client certificates
    Allowed("status", config="client_certs", case="GET * HTTP/1.1 without Host", nginx=421, fastterm=400,
            reason="an HTTP/1.1 request without Host on a block with ssl_verify_client: nginx runs its SNI "
                   "check (ngx_http_set_virtual_server, 421) before the missing-Host check (400); fastterm's "
                   "parser refuses the head first. Either way the request is refused before any backend"),
    # -- identity of the product, not behaviour
    Allowed("header:server", nginx="nginx", fastterm=lambda v: v in (None, "fastterm"),
            reason="Server: nginx names itself on every response (server_tokens); fastterm says `fastterm` on "
                   "its own responses and, like nginx, keeps a backend's Server from the client unless "
                   "proxy_pass_header Server, without one of its own: nginx.py, IGNORED server_tokens and "
                   "RUNTIME_DIFFERENCES"),
    Allowed("body", generated=True,
            reason="pages the proxy makes itself (errors, redirects) are each product's own HTML "
                   "(nginx's carry `<center>nginx</center>`, fastterm's say fastterm)"),
    Allowed("header:content-length", generated=True,
            reason="the length of the proxy's own page (see the body entry)"),
    Allowed("body", when=lambda a, b: a.get("status") == b.get("status") == 504 and a.get("backend.count"),
            reason="the proxy's own 504 page for a backend that got the request and timed out: each "
                   "product's own HTML, as the generated pages above"),
    Allowed("header:content-length", when=lambda a, b: a.get("status") == b.get("status") == 504 and
            a.get("backend.count"), reason="the length of the proxy's own 504 page (see the entry above)"),
    Allowed("status", generated=True, nginx=405, fastterm=404, case="PUT *",
            reason="no matching location: nginx's static module answers a method other than GET, HEAD and POST "
                   "405 (it would serve files from root), fastterm 404 (nginx.py RUNTIME_DIFFERENCES)"),
    Allowed("header:connection", generated=True, nginx=None, fastterm="close", case="P* *",
            reason="an answer of fastterm's own (an error, a return) to a request with a body closes the "
                   "connection; nginx reads and discards the body and keeps it (nginx.py RUNTIME_DIFFERENCES)"),
    Allowed("backend.*", config="body_limits_per_location", case="POST * /stream/chunked",
            when=lambda a, b: a.get("backend.framing") == "content-length" and b.get("backend.framing") == "chunked",
            reason="client_max_body_size 0 (no limit): fastterm streams a chunked body upstream chunked rather than "
                   "hold an unbounded body in memory; nginx buffers it to a temp file and sends Content-Length "
                   "(nginx.py RUNTIME_DIFFERENCES)"),
    # -- TLS defaults fastterm chose on purpose where the config says nothing (nginx.py "Deliberate choices")
    Allowed("tls.*", config=_configs_without("ssl_protocols"), when=_no_tls13_at_nginx, reason=NGINX_TLS_DEFAULTS),
    Allowed("backend.header:x-tls", config=_configs_without("ssl_protocols"),
            nginx=lambda v: str(v).startswith("TLSv1.2 "), fastterm=lambda v: str(v).startswith("TLSv1.3 "),
            reason=NGINX_TLS_DEFAULTS + "; a proxy_set_header of $ssl_protocol and $ssl_cipher carries the version"),
    Allowed("tls.outcome", case="tls * tls1.1", config=_configs_without("ssl_protocols"),
            nginx="refused (TLSV1_ALERT_INTERNAL_ERROR)", fastterm="refused (TLSV1_ALERT_PROTOCOL_VERSION)",
            reason="both refuse TLS 1.1; nginx 1.22's default ssl_protocols still enables TLSv1/TLSv1.1, which "
                   "OpenSSL 3 at security level 1 cannot serve, so nginx fails the handshake with internal_error "
                   "where fastterm (TLS 1.1 never enabled) answers protocol_version"),
    Allowed("tls.*", case="tls * s_client-x448", config=_configs_without("ssl_ecdh_curve"),
            when=lambda a, b: a.get("tls.group") == "X448" and str(b.get("tls.outcome")).startswith("refused"),
            reason="nginx.py, \"Deliberate choices\": without ssl_ecdh_curve fastterm offers X25519:P-256:P-384 "
                   "(Mozilla intermediate); nginx's `auto` is OpenSSL's list, which adds X448 and P-521"),
    Allowed("tls.*", case="tls * tls1.2-cbc-sha", config=_configs_without("ssl_ciphers"),
            when=lambda a, b: str(a.get("tls.cipher", "")).endswith("-SHA") and str(b.get("tls.outcome")).startswith(
                "refused"),
            reason="nginx.py, \"Deliberate choices\": without ssl_ciphers fastterm uses Mozilla intermediate; "
                   "nginx's HIGH:!aNULL:!MD5 also takes CBC-SHA1 suites"),
    Allowed("tls.cipher", case="tls *chacha*", when=lambda a, b: "CHACHA20" in str(b.get("tls.cipher")),
            reason="a client that lists ChaCha20 first gets it: fastterm sets SSL_OP_PRIORITIZE_CHACHA with server "
                   "order (DESIGN.md, Defaults; nginx.py RUNTIME_DIFFERENCES), nginx only the server order "
                   "(`ssl_conf_command Options PrioritizeChaCha` gives nginx the same)"),
    Allowed("tls.cipher", case="tls * tls1.2-client-order", when=lambda a, b: "CHACHA20" in str(b.get("tls.cipher")),
            reason="a client that lists ChaCha20 first gets it: fastterm sets SSL_OP_PRIORITIZE_CHACHA with server "
                   "order (DESIGN.md, Defaults; nginx.py RUNTIME_DIFFERENCES), nginx only the server order "
                   "(`ssl_conf_command Options PrioritizeChaCha` gives nginx the same)"),
]


# config stem -> directive -> why it is not supported yet (and where it lands).
UNSUPPORTED: dict[str, dict[str, str]] = {
}
