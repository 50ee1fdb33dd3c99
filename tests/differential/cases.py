"""The cases each corpus config gets: the generic ones, then its own (``SPECIFIC``).

Generic, for every config: a handshake per name (and an unknown name, and no SNI) on each
TLS listener; the client-offer matrix and session resumption on its first name (unless
``# diff: no-tls-matrix``); a request per name; the standard requests below on its first
name; on a plain-HTTP listener, the redirect (or whatever it answers) for a few targets.
"""

from __future__ import annotations

from diffharness import (
    OFFERS,
    S_CLIENT_OFFERS,
    Case,
    CorpusConfig,
    Handshake,
    KeepAlive,
    Request,
    Respond,
    Resume,
    Sequence,
)

BODY = b'{"note": "' + b"n" * 280 + b'"}'
CHUNKED_BODY = bytes(range(256)) * 6


def standard_requests(host: str) -> list[Case]:
    """What every proxied site sees: paths, methods, bodies, client headers, backend answers."""
    return [
        Request(host, "/notes/a%20b/../c?q=1&r=%2F"),
        Request(host, "/head", method="HEAD"),
        Request(host, "/post", method="POST", body=BODY, headers=(("Content-Type", "application/json"),)),
        Request(host, "/chunked", method="POST", body=CHUNKED_BODY, chunked=True),
        Request(host, "/client-headers", label=f"GET {host} client forwarding and hop-by-hop headers",
                headers=(("X-Forwarded-For", "203.0.113.7"), ("X-Real-IP", "198.51.100.1"),
                         ("X-Forwarded-Proto", "http"), ("Forwarded", "for=192.0.2.1"),
                         ("X_Underscore", "dropped-by-nginx"), ("X-Custom", "kept"),
                         ("Cookie", "a=1; b=2"), ("TE", "trailers"), ("Keep-Alive", "timeout=5"),
                         ("Upgrade", "websocket"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "h"),
                         ("User-Agent", "diff/1"))),
        Request(host, "/xff", label=f"GET {host} two X-Forwarded-For fields",
                headers=(("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "203.0.113.8"))),
        Request(None, "/http10", version="HTTP/1.0", sni=host, label=f"GET {host} HTTP/1.0 without Host"),
        Request(None, "/no-host", sni=host, label=f"GET {host} HTTP/1.1 without Host"),
        Request(host, "/dup", headers=(("Host", host),), label=f"GET {host} two Host fields"),
        Request("unknown.test", f"https://{host}/absolute", sni=host,
                label=f"GET {host} absolute-form target, Host unknown.test"),
        Request(host, "/missing", respond=Respond(404, (("Content-Type", "text/html"), ("X-Backend", "b"),
                                                        ("Set-Cookie", "s=1; Secure"),
                                                        ("Cache-Control", "no-store"))),
                label=f"GET {host} backend 404 with headers"),
        Request(host, "/moved", respond=Respond(302, (("Location", "http://notes/elsewhere"),
                                                      ("Content-Type", "text/plain"))),
                label=f"GET {host} backend 302 to its own name"),
        Request(host, "/stream", respond=Respond(200, (("Content-Type", "application/octet-stream"),),
                                                 body=b"s" * 3000, chunked=True),
                label=f"GET {host} backend chunked response"),
        Request(host, "/empty", respond=Respond(204, ()), label=f"GET {host} backend 204"),
        Request(host, "/h2", client="httpx-h2"),
        Request(host, "/curl", client="curl"),
        Request(host, "/curl-h2", client="curl-h2"),
        Request(host, "/http-client", method="PUT", body=b"put body", client="http.client"),
    ]


def plain_http_requests(host: str) -> list[Case]:
    return [
        Request(host, "/path/x?y=1&z=%20", port="HTTP_PORT"),
        Request(host, "/", method="HEAD", port="HTTP_PORT"),
        Request(None, "/old", version="HTTP/1.0", port="HTTP_PORT", label="GET http (no Host) HTTP/1.0 /old"),
        Request("unknown.test", "/other", port="HTTP_PORT"),
    ]


TLS_MATRIX = [o for o in OFFERS if o != "default"] + list(S_CLIENT_OFFERS)


def generic_cases(cfg: CorpusConfig) -> list[Case]:
    names = cfg.names[:4]
    primary = names[0]
    out: list[Case] = []
    for port in cfg.https_ports:
        for name in [*names, "unknown.test", None]:
            out.append(Handshake(name, "default", port))
    if cfg.tls_matrix and cfg.https_ports:
        out += [Handshake(primary, offer) for offer in TLS_MATRIX]
        out += [Resume(primary, "tls1.2"), Resume(primary, "tls1.3")]
    if "HTTPS_PORT" in cfg.https_ports:
        out += [Request(name, "/") for name in [*names[1:], "unknown.test"]]
        out += standard_requests(primary)
    if cfg.has_http:
        out += plain_http_requests(primary)
    return out


# config stem -> its own cases, after the generic ones.
SPECIFIC: dict[str, list[Case]] = {
}


def cases_for(cfg: CorpusConfig) -> list[Case]:
    cases = generic_cases(cfg) + SPECIFIC.get(cfg.name, [])
    seen: set[str] = set()
    out = []
    for c in cases:
        if c.id not in seen:
            seen.add(c.id)
            out.append(c)
    return out


__all__ = ["SPECIFIC", "KeepAlive", "Sequence", "cases_for"]
