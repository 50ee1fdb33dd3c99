"""The cases each corpus config gets: the generic ones, then its own (``SPECIFIC``).

Generic, for every config: a handshake per name (and an unknown name, and no SNI) on each
TLS listener; the client-offer matrix and session resumption on its first name (unless
``# diff: no-tls-matrix``); a request per name; the standard requests below on its first
name; on a plain-HTTP listener, the redirect (or whatever it answers) for a few targets.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import threading
import time

from diffharness import (
    CLIENT_TIMEOUT,
    HOST,
    OFFERS,
    OPENSSL,
    S_CLIENT_OFFERS,
    Case,
    CorpusConfig,
    Custom,
    Handshake,
    KeepAlive,
    Reader,
    Request,
    Respond,
    Resume,
    Sequence,
    backend_fields,
    client_context,
    closed_after,
    curl,
    read_message,
    read_reply,
    request_head,
    response_fields,
    tls_connect,
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


def upstream_connections(host: str, target: str, count: int = 3) -> Custom:
    """How many backend connections ``count`` sequential requests (each on a fresh client
    connection) opened: 1 with an upstream keepalive pool, ``count`` without."""

    def run(side, ctx):
        server = ctx.backends.servers["BACKEND"]
        before = server.accepts
        statuses = [Request(host, target).run(side, ctx).get("status") for _ in range(count)]
        return {"statuses": statuses, "backend.connections": server.accepts - before}

    return Custom(f"{count} requests: backend connections opened ({target})", run)


def plain_connection(label: str, requests: list[bytes], pipelined: bool = False, idle: float = 0.5) -> Custom:
    """Several requests on one plain-HTTP connection (one after another, or all in one write):
    each response's status, Location, Connection and body, then whether the server closed the
    connection within ``idle`` seconds of the last."""

    def run(side, ctx):
        obs: dict = {}
        with socket.create_connection((HOST, side.port("HTTP_PORT")), timeout=CLIENT_TIMEOUT) as sock:
            reader = Reader(sock)
            if pipelined:
                sock.sendall(b"".join(requests))
            for i, raw in enumerate(requests):
                method = raw.split(b" ", 1)[0].decode()
                try:
                    if not pipelined:
                        sock.sendall(raw)
                    msg = read_message(reader, method=method)
                except (OSError, EOFError, ValueError) as exc:
                    obs[f"response[{i}]"] = f"no response ({type(exc).__name__})"
                    return obs
                conn = msg.header("connection")
                conn = None if conn and conn.lower() == "keep-alive" else conn   # the HTTP/1.1 default
                obs[f"response[{i}]"] = (msg.status, msg.header("location"), conn, msg.header("content-type"))
                if msg.header("content-type") != "text/html":   # the pages are each product's own
                    obs[f"response[{i}].body"] = msg.body.decode("latin-1")
            obs["open-after-idle"] = not closed_after(sock, idle)
        return obs

    return Custom(label, run)


def connection_lifetime(host: str, gap: float) -> Custom:
    """Two requests on one TLS connection, then a pause of ``gap`` seconds, then two more:
    each response's status and Connection, and whether the connection was then closed."""

    def run(side, ctx):
        ctx.backends.respond = Respond()
        obs: dict = {}
        with tls_connect(side, "HTTPS_PORT", host, client_context(ctx.pki)) as sock:
            reader = Reader(sock)
            for i in range(4):
                if i == 2:
                    time.sleep(gap)
                try:
                    sock.sendall(request_head("GET", f"/life/{i}", host, (), "HTTP/1.1", b"", False))
                    msg = read_message(reader, method="GET")
                except (OSError, EOFError, ValueError) as exc:
                    obs[f"response[{i}]"] = f"no response ({type(exc).__name__})"
                    return obs
                conn = msg.header("connection")
                obs[f"response[{i}]"] = (msg.status, None if conn and conn.lower() == "keep-alive" else conn)
            obs["open-after"] = not closed_after(sock, 0.5)
        return obs

    return Custom(f"requests before and after a {gap:g}s pause on one connection", run)


def stalled_body(host: str, sent: bytes, length: int, chunked: bool = False) -> Custom:
    """A POST whose body stops after ``sent`` of its ``length`` bytes (``chunked``: ``sent`` is
    the start of a chunked body, which nginx reads whole before it sends anything): the answer
    (status, Connection), whether the connection was closed after it, and what reached a backend."""

    def run(side, ctx):
        ctx.backends.respond = Respond()
        mark = ctx.backends.mark()
        obs: dict = {}
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}"
        with tls_connect(side, "HTTPS_PORT", host, client_context(ctx.pki)) as sock:
            sock.sendall(f"POST /stalled HTTP/1.1\r\nHost: {host}\r\n{framing}\r\n\r\n".encode() + sent)
            try:
                msg = read_message(Reader(sock), method="POST")
                obs["status"] = msg.status
                obs["header:connection"] = msg.header("connection")
                obs["closed-after"] = closed_after(sock, 0.5)
            except (OSError, EOFError, ValueError) as exc:
                obs["status"] = f"no response ({type(exc).__name__})"
        obs["backend.count"] = len(ctx.backends.since(mark))
        return obs

    kind = "chunked body" if chunked else "body"
    return Custom(f"POST whose {kind} stalls after {len(sent)} of {length} bytes", run)


def resolver_not_contacted() -> Custom:
    """The seed's ``resolver 8.8.8.8`` must not be used in tests (no network): neither log
    mentions resolving (nginx resolves only for OCSP responders, and the test certificates
    name none)."""

    def run(side, ctx):
        lines = [line for line in side.log().splitlines() if re.search(r"resolv|8\.8\.", line)
                 and "is ignored" not in line and "[warn]" not in line]
        return {"resolver log lines": lines}

    return Custom("resolver not contacted", run)


def stapled_response(host: str) -> Custom:
    """What ``openssl s_client -status`` is stapled: the test certificates name no OCSP
    responder, so with ``ssl_stapling on`` neither side staples anything (nginx warns that it
    ignores stapling for them, fastterm says so in an info line)."""

    def run(side, ctx):
        out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{side.port()}", "-servername", host,
                              "-status", "-CAfile", ctx.pki.ca_file], input=b"", capture_output=True,
                             timeout=CLIENT_TIMEOUT, check=False).stdout.decode(errors="replace")
        lines = [line.strip() for line in out.splitlines() if line.strip().startswith(("OCSP response", "OCSP Resp"))]
        return {"s_client -status": lines, "verified": "Verify return code: 0 (ok)" in out}

    return Custom(f"openssl s_client -status ({host})", run)


def _s_client_early(port: int, ctx, host: str, args: list[str], request: bytes) -> str:
    argv = [OPENSSL, "s_client", "-connect", f"{HOST}:{port}", "-servername", host, "-CAfile",
            ctx.pki.ca_file, "-tls1_3", "-ign_eof", *args]
    try:
        res = subprocess.run(argv, input=request, capture_output=True, timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return "s_client timed out"
    return (res.stdout + res.stderr).decode("latin-1")


def early_data_get(host: str, target: str, replays: int = 0) -> Custom:
    """TLS 1.3 0-RTT with ``openssl s_client``: a ticket from a full handshake, then a GET sent
    as early data (``-early_data``) through a recording relay; what s_client reports, the
    response status and what the backend got (Early-Data: ``proxy_set_header Early-Data
    $ssl_early_data``). With ``replays``, the recorded client bytes are sent again that many
    times on new connections, and the backend's requests after them are observed too."""

    def run(side, ctx):
        sess, early = side.run / "early.sess", side.run / "early.req"
        head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
        _s_client_early(side.port(), ctx, host, ["-sess_out", str(sess)],
                        head.replace(target.encode(), b"/ticket", 1))
        early.write_bytes(head)
        relay = socket.create_server((HOST, 0))
        relay.settimeout(10)
        sent = bytearray()

        def pump():
            client, _ = relay.accept()
            server = socket.create_connection((HOST, side.port()), timeout=10)
            back = threading.Thread(target=lambda: _copy(server, client, None), daemon=True)
            back.start()
            _copy(client, server, sent)
            back.join(10)
            client.close()
            server.close()

        t = threading.Thread(target=pump, daemon=True)
        t.start()
        mark = ctx.backends.mark()
        argv = ["-sess_in", str(sess), "-early_data", str(early)]
        out = _s_client_early(relay.getsockname()[1], ctx, host, argv, b"")
        t.join(10)
        relay.close()
        got = ctx.backends.since(mark)
        status = re.search(r"^HTTP/1\.1 (\d+)", out, re.MULTILINE)
        verdict = re.search(r"Early data was (\w+)", out)
        obs = {"tls.early_data": verdict.group(1) if verdict else "not reported",
               "status": int(status.group(1)) if status else None,
               "backend.requests": [(r.msg.method, r.msg.target, r.msg.header("early-data")) for r in got]}
        if replays:
            mark = ctx.backends.mark()
            for _ in range(replays):
                with socket.create_connection((HOST, side.port()), timeout=CLIENT_TIMEOUT) as sock:
                    sock.sendall(bytes(sent))
                    try:
                        while sock.recv(65536):
                            pass
                    except OSError:
                        pass
            time.sleep(0.3)
            obs["backend.requests after replays"] = [(r.msg.method, r.msg.target) for r in ctx.backends.since(mark)]
        return obs

    return Custom(f"0-RTT GET {target}" + (f" replayed {replays} times" if replays else ""), run)


def _copy(src, dst, record) -> None:
    try:
        while data := src.recv(65536):
            if record is not None:
                record += data
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


API = "api.example.com"
APP = "app.example.com"

# config stem -> its own cases, after the generic ones.
SPECIFIC: dict[str, list[Case]] = {
    "seed_early_data": [early_data_get(API, "/early"), early_data_get(API, "/replayed", replays=2)],
    "seed_api": [resolver_not_contacted(), stapled_response("api.example.com")],
    "seed_api_without_stapling": [
        resolver_not_contacted(),
        KeepAlive(API, count=3),
        upstream_connections(API, "/pool"),
    ],
    "seed_sni": [
        Request(APP, "/sni-api-host-app", sni=API, label="GET Host app.example.com over SNI api.example.com"),
        Request(API, "/sni-app-host-api", sni=APP, label="GET Host api.example.com over SNI app.example.com"),
        Request(APP, "/xff-app", headers=(("X-Forwarded-For", "203.0.113.9"),),
                label="GET app.example.com $proxy_add_x_forwarded_for appends"),
        Handshake(APP, "tls1.2-rsa-only"),
        Handshake(APP, "tls1.2-ecdsa-only"),
        Handshake(APP, "s_client-tls1.3-rsa"),
        Handshake(APP, "s_client"),
        Resume(APP, "tls1.2"),
        Resume(APP, "tls1.3"),
        Request(APP, "/", port="HTTP_PORT"),
    ],
    "sni_wildcards": [
        Request("w.example.com", "/host-wild-over-sni-api", sni=API,
                label="GET Host w.example.com over SNI api.example.com"),
        Request("WWW.Other.Test", "/case", sni="www.other.test", label="GET Host in upper case"),
        Request("api.example.com.", "/trailing-dot", sni=API, label="GET Host with a trailing dot"),
        Handshake("deep.a.b.example.com", "default"),
    ],
    "server_name_regex": [
        *(Request(host, "/block", sni=sni, label=f"GET Host {host} over SNI {sni}") for host, sni in (
            ("foo.example.com", API), ("app.example.com", API), ("app.example.org", API), ("app7.x.test", API),
            ("www.example.com", API), ("www.other.test", API), ("app.b.example.com", API), ("API.EXAMPLE.COM", API),
            ("thing.upper.test", API), ("nomatch.test", API), ("app.example", API), ("app.example.com.", API),
            ("api.example.com", "app.b.example.com"), ("foo.example.com:8443", API))),
        *(Handshake(sni) for sni in ("app7.x.test", "app.example", "THING.UPPER.TEST", "nomatch.test",
                                      "app.example.com.au", "www.example.com")),
    ],
    "default_server": [
        Request("nomatch.test", "/x", sni=API, label="GET Host nomatch.test over SNI api.example.com"),
        Request("_", "/underscore-host", sni=None, label="GET Host _ without SNI"),
        Handshake("default.test", "tls1.2-rsa-only"),
        Request("nomatch.test", "/plain", port="HTTP_PORT"),
    ],
    "http_level_tls": [
        Handshake(APP, "tls1.3"),
        Handshake(APP, "tls1.2-client-order"),
        Handshake(APP, "tls1.2-rsa-only"),
        Handshake(APP, "s_client"),
        Request(APP, "/app-headers", label="GET app.example.com: its own add_header, no HSTS"),
        Request(APP, "/app-404", respond=Respond(404, ()), label="GET app.example.com backend 404"),
    ],
    "tls12_only": [
        Handshake(API, "s_client-tls1.3-rsa"),
        Resume(API, "tls1.2"),
    ],
    "tls13_only": [
        Handshake(API, "s_client-p384"),
    ],
    "nginx_defaults": [
        Request(API, "/big", method="POST", body=b"b" * (1024 * 1024 + 1),
                label="POST 1 MiB + 1 byte (nginx's default client_max_body_size)"),
        Request(API, "/fits", method="POST", body=b"b" * (1024 * 1024), label="POST exactly 1 MiB"),
        upstream_connections(API, "/pool"),
    ],
    "session_cache": [
        Handshake(APP, "default", port="HTTPS_PORT2"),
        Resume(APP, "tls1.2", port="HTTPS_PORT2"),
        Resume(APP, "tls1.3", port="HTTPS_PORT2"),
        Resume(APP, "tls1.2"),
    ],
    "session_ticket_key": [
        Resume(API, "tls1.2"),
        Resume(API, "tls1.3"),
    ],
    "session_none": [
        Resume(API, "tls1.2"),
        Resume(API, "tls1.3"),
    ],
    "add_header_inheritance": [
        Request(API, "/framed/a", label="GET /framed/ (own add_header: no HSTS)"),
        Request(API, "/framed/404", respond=Respond(404, ()), label="GET /framed/ backend 404"),
        Request(API, "/framed", label="GET /framed: the /dir -> /dir/ 301 with /framed/'s add_header"),
        Request(API, "/quiet/a", label="GET /quiet/ (own add_header always)"),
        Request(API, "/quiet/500", respond=Respond(500, ()), label="GET /quiet/ backend 500"),
        Request(API, "/dup", respond=Respond(200, (("Strict-Transport-Security", "max-age=1"),
                                                   ("X-Content-Type-Options", "nosniff"))),
                label="GET backend sends HSTS and nosniff itself"),
        Request(API, "/redirect", respond=Respond(301, (("Location", "https://elsewhere.test/"),)),
                label="GET backend 301 (3xx gets non-always headers)"),
    ],
    "locations_two_upstreams": [
        Request(API, "/static/a.css"),
        Request(API, "/static/private/b"),
        Request(API, "/staticx"),
        Request(API, "/assets/x.php"),
        Request(API, "/health"),
        Request(API, "/health/"),
        Request(API, "/index.php"),
        Request(API, "/static/index.php"),
        Request(API, "/IMG.JPG"),
        Request(API, "/v1/users/a%20b?x=1"),
        Request(API, "/v1/users/%2e%2e/admin"),
        Request(API, "/v1"),
        Request(API, "/legacy/page"),
        Request(API, "/legacy"),
        Request(API, "/static/../v1/x"),
        Request(API, "/static/%2E%2E/private/x"),
        Request(API, "/index.php", client="httpx-h2", label="GET /index.php over HTTP/2 (a regex location's return)"),
        Request(API, "/health", method="HEAD", label="HEAD /health (an exact location's return)"),
        Request(API, "/a/b.php", method="POST", body=b"p" * 100, label="POST to a regex location that returns"),
        Request(API, "/assets/IMG.PNG", label="GET /assets/IMG.PNG (^~ wins over the ~* regex)"),
    ],
    "locations_regex": [
        *(Request(API, target) for target in (
            "/x.php", "/static/a.php", "/static/deep/a.php", "/assets/a.php", "/assets/IMG.PNG", "/IMG.PnG",
            "/img.PHP", "/health", "/health.php", "/a%2Ephp", "/x.php/../y.png", "/x.php?y.png", "/x.ph%70?q",
            "/static/a.css", "/static//deep/x", "/other", "/v2/items/42", "/v2/items/4", "/v10/items/123?x",
            "/V2/items/42", "/static", "/static/%2e%2e/b.JPG", "/a.php%0A", "/CaseLess/abab", "/caseless/abc")),
        Request(API, "/x.php", client="httpx-h2", label="GET /x.php over HTTP/2 (regex)"),
    ],
    "locations_exact": [
        Request(API, "/health"),
        Request(API, "/health?x=1"),
        Request(API, "/health/"),
        Request(API, "/healthx"),
        Request(API, "/%68ealth"),
        Request(API, "/x/../health"),
        Request(API, "/static/"),
        Request(API, "/static/a"),
        Request(API, "/static"),
        Request(API, "/only"),
        Request(API, "/only/x"),
        Request(API, "/"),
        Request(API, "/?q=1"),
        Request(API, "/index"),
    ],
    "locations_prefix": [
        Request(API, "/static/a.css"),
        Request(API, "/static/private/b"),
        Request(API, "/staticx"),
        Request(API, "/static"),
        Request(API, "/assets/x.php"),
        Request(API, "/legacy/page"),
        Request(API, "/legacy"),
        Request(API, "/legacyx"),
        Request(API, "/static/../api/x"),
        Request(API, "/static/%2E%2E/private/x"),
        Request(API, "/static//private/x"),
        Request(API, "/STATIC/a"),
    ],
    "proxy_pass_uri": [
        Request(API, "/v1/users/a%20b?x=1"),
        Request(API, "/v1/users/%2e%2e/admin"),
        Request(API, "/v1/caf%C3%A9"),
        Request(API, "/v1"),
        Request(API, "/legacy/page"),
        Request(API, "/legacy"),
        Request(API, "/legacyx?y=1"),
        Request(API, "/v1/a.b%20c"),
        Request(API, "/v1/a%2Fb%3Fc%23d%25e"),
        Request(API, "/v1/%7Euser/%41%2b"),
        Request(API, "/v1/a\"b<c>?q=%20"),
        Request(API, "/v1//double/./x/"),
        Request(API, "/v1/x?"),
        Request(API, "/v1/ctl%01%7F%FF"),
        Request(API, "/v1/%22%3C%3E%7B%7D%7C%5C%5E%60%27%3B%3D%26%2C%40%21%24%2A%28%29%5B%5D"),
        Request(API, "/root/a%20b/../c"),
        Request(API, "/root/plain"),
        Request(API, "/exact%20x"),
        Request(API, "/exact"),
        Request(API, "/v1/redirect", respond=Respond(302, (("Location", "http://api/api/v1/next"),)),
                label="GET /v1/ with the backend redirecting under the URI part"),
    ],
    "upstream_several": [
        Sequence(Request(API, "/rr"), count=6),
        Sequence(Request(API, "/least/x"), count=4),
    ],
    # smooth weighted round robin, weights 1 and 2 (the backup never serves while both are up)
    "upstream_weights": [Sequence(Request(API, "/weighted"), count=9)],
    # least_conn with every server idle: round robin among the tied ones
    "upstream_least_conn": [Sequence(Request(API, "/least"), count=6)],
    "body_limits": [
        Request(API, "/small", method="POST", body=b"s" * 1000),
        Request(API, "/limit", method="POST", body=b"s" * 1024, label="POST exactly 1k"),
        Request(API, "/over", method="POST", body=b"o" * 2000),
        Request(API, "/over-chunked", method="POST", body=b"o" * 2000, chunked=True),
        Request(API, "/over-expect", method="POST", body=b"o" * 2000, headers=(("Expect", "100-continue"),),
                label="POST 2000 bytes with Expect: 100-continue"),
        Request(API, "/upload/file", method="POST", body=b"u" * 5000),
        Request(API, "/upload/chunked", method="POST", body=b"u" * 5000, chunked=True),
        Request(API, "/stream/big", method="POST", body=b"u" * (2 * 1024 * 1024)),
        Request(API, "/get-with-body", method="GET", body=b"g" * 2000),
    ],
    "body_limits_per_location": [
        Request(API, "/small", method="POST", body=b"s" * 1000),
        Request(API, "/over", method="POST", body=b"o" * 2000),
        Request(API, "/over-chunked", method="POST", body=b"o" * 2000, chunked=True),
        Request(API, "/over", method="POST", body=b"o" * 2000, client="httpx-h2",
                label="POST / 2000 bytes over HTTP/2"),
        Request(API, "/upload", method="POST", body=b"u" * 2000, label="POST /upload (the /upload/ location's 10m: 301)"),
        Request(API, "/upload/file", method="POST", body=b"u" * 5000),
        Request(API, "/upload/chunked", method="POST", body=b"u" * 5000, chunked=True),
        Request(API, "/upload/h2", method="POST", body=b"u" * 50000, client="httpx-h2",
                label="POST /upload/ 50000 bytes over HTTP/2"),
        Request(API, "/upload/%2e%2e/over", method="POST", body=b"u" * 5000,
                label="POST /upload/../over: the normalised path's location decides"),
        Request(API, "/stream/big", method="POST", body=b"u" * (2 * 1024 * 1024)),
        Request(API, "/stream/chunked", method="POST", body=b"u" * (2 * 1024 * 1024), chunked=True),
        Request(API, "/regex/x.bin", method="POST", body=b"r" * 3000, label="POST to a regex location with 4k"),
        Request(API, "/regex/x.bin", method="POST", body=b"r" * 5000, chunked=True,
                label="POST chunked past a regex location's 4k"),
        Request(API, "/regex/y.bin", method="POST", body=b"r" * 3000, chunked=True,
                label="POST chunked within a regex location's 4k (read whole, sent with Content-Length)"),
    ],
    "large_headers": [
        Request(API, "/line-1500", headers=(("X-Long", "a" * 1500),)),
        Request(API, "/line-2500", headers=(("X-Long", "a" * 2500),)),
        Request(API, "/cookie-3000", headers=(("Cookie", "c=" + "a" * 3000),)),
        Request(API, "/" + "t" * 2500, label="GET request line of 2500 bytes"),
        Request(API, "/" + "t" * 1500, label="GET request line of 1500 bytes"),
        Request(API, "/many-big", headers=tuple((f"X-Big-{i}", "b" * 1000) for i in range(12)),
                label="GET 12 fields of 1000 bytes (over 4 x 2k)"),
        Request(API, "/many-small", headers=tuple((f"X-Small-{i}", str(i)) for i in range(150)),
                label="GET 150 small fields"),
    ],
    "underscores": [
        Request(API, "/under", headers=(("X_Under", "1"), ("x_lower_under", "2"), ("X-Fine", "3"))),
    ],
    "returns": [
        Request(API, "/old/page?x=1"),
        Request(API, "/perm"),
        Request(API, "/gone"),
        Request(API, "/forbidden"),
        Request(API, "/forbidden", method="HEAD"),
        Request(API, "/text?a=1&b=%20"),
        Request(API, "/teapot"),
        Request(API, "/nothing-here"),
        Request(API, "/old/page?x=1", client="httpx-h2", label="GET /old/ over HTTP/2: 301 with variables"),
        Request(API, "/text?a=1", client="httpx-h2", label="GET /text over HTTP/2: 200 text"),
        Request(API, "/signin", client="httpx-h2", label="GET /signin over HTTP/2: relative 302 made absolute"),
        Request(API, "/signin", label="GET /signin: relative 302 made absolute with the listen port"),
        Request(API + ":8443", "/", label="GET / with Host api.example.com:8443"),
        Request(API, "/any/path?q=1", port="HTTP_PORT"),
    ],
    "error_pages": [
        Request(API, "/dead/x", label="GET dead backend: 502 through error_page @down"),
        Request(API, "/dead/x", method="HEAD", label="HEAD dead backend: 502 through error_page @down"),
        Request(API, "/dead/h2", client="httpx-h2", label="GET dead backend over HTTP/2: error_page @down"),
        Request(API, "/dead-redirect/x", label="GET dead backend: error_page to a URL (302)"),
        Request(API, "/dead-301/x", label="GET dead backend: error_page =301 URL"),
        Request(API, "/dead-503/x", label="GET dead backend: error_page =503 @down"),
        Request(API, "/dead-own/x", label="GET dead backend: error_page = @down (its own status)"),
        Request(API, "/intercept/404", respond=Respond(404, (("X-Backend", "b"),)),
                label="GET backend 404, intercepted: =410 @gone"),
        Request(API, "/intercept/500", respond=Respond(500, ()), label="GET backend 500, intercepted"),
        Request(API, "/intercept/503", respond=Respond(503, (("Retry-After", "5"),)),
                label="GET backend 503, no error_page for it: passed"),
        Request(API, "/not-intercepted/404", respond=Respond(404, (("X-Backend", "b"),)),
                label="GET backend 404 without proxy_intercept_errors: passed"),
        Request(API, "/returns-404", label="GET return 404 through error_page URL"),
        Request(API, "/returns-502", label="GET return 502 through error_page @down"),
        Request(API, "/upload", method="POST", body=b"u" * 2000, label="POST over client_max_body_size: =413 @big"),
        Request(API, "/small-upload/x", method="POST", body=b"u" * 200,
                label="POST over a location's own limit: its own error_page 413 URL"),
        Request(API, "/small-upload/y", method="POST", body=b"u" * 50, label="POST within a location's own limit"),
        Request(API, "/a/x.cgi", label="GET a regex location's return 403 with its add_header"),
        Request(API, "/dead/x.cgi", label="GET /dead/x.cgi: the regex beats the /dead/ prefix"),
        Request(API, "/small-upload/x.cgi", method="POST", body=b"u" * 200,
                label="POST over the prefix location's limit: the regex location's (1k) answers"),
    ],
    "keepalive": [
        KeepAlive(API, count=4),
        KeepAlive(API, count=1, idle=2.0),
        upstream_connections(API, "/pool"),
    ],
    "proxy_headers": [
        Request(API + ":9999", "/raw-host/x", label="GET /raw-host/ with Host api.example.com:9999"),
        Request(API + ":9999", "/y", label="GET / with Host api.example.com:9999"),
        Request(API, "/tls12", label="GET $ssl_protocol over TLS 1.2", client="wire"),
    ],
    "http2_listen": [
        Request(API, "/h2-post", method="POST", body=BODY, client="httpx-h2"),
        Request(API, "/h2-404", client="httpx-h2", respond=Respond(404, (("X-Backend", "b"),))),
        Request(API, "/h2-curl-post", method="POST", body=b"curl body", client="curl-h2"),
        Request(API, "/h2-headers", client="httpx-h2",
                headers=(("X-Forwarded-For", "203.0.113.7"), ("Cookie", "a=1"), ("Cookie", "b=2"))),
    ],
}
_LEAKY = (("Content-Type", "text/plain"), ("Server", "diff-backend"), ("X-Internal", "1"),
          ("X-Powered-By", "PHP/8"), ("x-debug", "trace"), ("X-Pad", "avoid browser bug"),
          ("X-Accel-Buffering", "no"), ("X-Accel-Expires", "60"), ("X-Accel-Limit-Rate", "1000000"),
          ("X-Backend", "b"))
SPECIFIC["proxy_hide_header"] = [
    Request(API, "/a", respond=Respond(200, _LEAKY), label="GET / (defaults and the server's names hidden)"),
    Request(API, "/h2", respond=Respond(200, _LEAKY), client="httpx-h2", label="GET / over HTTP/2"),
    Request(API, "/missing", respond=Respond(404, _LEAKY), label="GET / backend 404"),
    Request(API, "/own/a", respond=Respond(200, _LEAKY), label="GET /own/ (own proxy_hide_header only)"),
    Request(API, "/pass/a", respond=Respond(200, _LEAKY), label="GET /pass/ (Server, X-Accel-Buffering passed)"),
    Request(API, "/pass/h2", respond=Respond(200, _LEAKY), client="curl-h2", label="GET /pass/ over HTTP/2 (curl)"),
]
SPECIFIC["next_upstream"] = [
    Request(API, "/dead/a", label="GET /dead/ (default error timeout: past the refused connect)"),
    Request(API, "/off/a", label="GET /off/ (off: the refused connect is 502)"),
    Request(API, "/s502/a", respond=Respond(502, (("X-Backend", "b"),)), label="GET /s502/ both 502"),
    Request(API, "/np/a", method="POST", respond=Respond(502, (("X-Backend", "b"),)),
            label="POST /np/ 502 (not idempotent: not replayed)"),
    Request(API, "/s404/a", respond=Respond(404, (("X-Backend", "b"),)), label="GET /s404/ both 404"),
    Request(API, "/s404/p", method="POST", respond=Respond(404, (("X-Backend", "b"),)),
            label="POST /s404/ bodiless (non_idempotent: replayed)"),
    Request(API, "/s404/h2", client="httpx-h2", respond=Respond(404, (("X-Backend", "b"),)),
            label="GET /s404/ over HTTP/2"),
    Request(API, "/s404/ok", label="GET /s404/ 200 (nothing to go on for)"),
    Request(API, "/tries/a", respond=Respond(503, (("X-Backend", "b"),)),
            label="GET /tries/ 503 (proxy_next_upstream_tries 2 of 3 servers)"),
]
SPECIFIC["proxy_timeouts"] = [
    Request(API, "/slow/a", respond=Respond(delay=2.0), label="GET /slow/ backend 2 s late (its location's 1s: 504)"),
    Request(API, "/a", respond=Respond(delay=2.0), label="GET / backend 2 s late (the server's 4s: 200)"),
    Request(API, "/slow/b", respond=Respond(delay=0.2), label="GET /slow/ backend 0.2 s late (200)"),
]
SPECIFIC["keepalive_time"] = [connection_lifetime(API, 1.5), connection_lifetime(API, 0.0)]
SPECIFIC["body_timeout"] = [stalled_body(API, b"abc", 10), stalled_body(API, b"", 10),
                            stalled_body(API, b"a\r\n0123", 10, chunked=True)]
SPECIFIC["redirect_variants"] = [
    *(Request(host, "/a/b?x=1&y=%20", port="HTTP_PORT")
      for host in ("app.example.com", "www.example.com", "temp.test", "see.test", "relative.test", "one.test",
                   "text.test", "gone.test", "empty.test", "forbidden.test", "temp.test:8080", "ok.test",
                   "close.test", "a.wild.test", "a.b.wild.test", "wild.test")),
    Request("text.test", "/bad%zz", port="HTTP_PORT", label="GET http text.test a bad %-escape"),
    Request("text.test", "/a%2F..%2Fb%2e%2E/c%2F%2Fd", port="HTTP_PORT", label="GET http text.test escaped dots and slashes"),
    Request("text.test", "/../x", port="HTTP_PORT", label="GET http text.test above the root"),
    Request("text.test", "/a/..", port="HTTP_PORT", label="GET http text.test ending in .."),
    Request("text.test", "*", method="OPTIONS", port="HTTP_PORT", label="OPTIONS http text.test *"),
    Request("a..b.test", "/", port="HTTP_PORT", label="GET http Host with two dots in a row"),
    Request("see.test", "/a/../b%20c//d/./e?q=1", port="HTTP_PORT", label="GET http see.test $uri normalised"),
    Request("text.test", "/a/../b%41//c?q=1&r", port="HTTP_PORT", label="GET http text.test $uri and $args"),
    Request("APP.Example.COM:80", "/case", port="HTTP_PORT", label="GET http Host in upper case with port"),
    Request("api.example.com.", "/dot", port="HTTP_PORT", label="GET http Host with a trailing dot"),
    Request("api.example.com", "http://app.example.com/abs?x=1", port="HTTP_PORT",
            label="GET http target in absolute form app.example.com, Host api.example.com"),
    Request("unknown.test", "http://Text.Test:81/abs", port="HTTP_PORT",
            label="GET http target in absolute form text.test, Host unknown.test"),
    Request(None, "/no-host", version="HTTP/1.0", port="HTTP_PORT", label="GET http (no Host) HTTP/1.0 to the default"),
    Request("relative.test", "/rel", version="HTTP/1.0", port="HTTP_PORT", label="GET http relative.test HTTP/1.0"),
    Request(None, "http://relative.test/abs-rel", version="HTTP/1.0", port="HTTP_PORT",
            label="GET http (no Host) target in absolute form relative.test HTTP/1.0"),
    Request("text.test", "/head", method="HEAD", port="HTTP_PORT"),
    Request("text.test", "/post", method="POST", body=b"p" * 100, port="HTTP_PORT"),
    Request("api.example.com", "/post", method="POST", body=b"p" * 100, chunked=True, port="HTTP_PORT"),
    Request("api.example.com", "/close", headers=(("Connection", "close"),), port="HTTP_PORT",
            label="GET http api.example.com Connection: close"),
    Request("api.example.com", "/ka10", version="HTTP/1.0", headers=(("Connection", "keep-alive"),),
            port="HTTP_PORT", label="GET http api.example.com HTTP/1.0 Connection: keep-alive"),
    Request("bad host", "/", port="HTTP_PORT", label="GET http Host with a space"),
    plain_connection("http keep-alive: three requests to three servers", [
        b"GET /1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        b"GET /2?q HTTP/1.1\r\nHost: text.test\r\n\r\n",
        b"HEAD /3 HTTP/1.1\r\nHost: app.example.com\r\n\r\n"]),
    plain_connection("http keep-alive: pipelined, a body, then close", [
        b"GET /1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        b"POST /2 HTTP/1.1\r\nHost: text.test\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /3 HTTP/1.1\r\nHost: one.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /4 HTTP/1.1\r\nHost: gone.test\r\n\r\n",
        b"GET /5 HTTP/1.1\r\nHost: see.test\r\nConnection: close\r\n\r\n"], pipelined=True),
    plain_connection("http keep-alive: HTTP/1.0 closes", [
        b"GET /1 HTTP/1.0\r\nHost: api.example.com\r\n\r\n",
        b"GET /2 HTTP/1.0\r\nHost: api.example.com\r\n\r\n"]),
]
SPECIFIC["http2_on"] = SPECIFIC["http2_listen"]


def cases_for(cfg: CorpusConfig) -> list[Case]:
    cases = generic_cases(cfg) + SPECIFIC.get(cfg.name, [])
    seen: set[str] = set()
    out = []
    for c in cases:
        if c.id not in seen:
            seen.add(c.id)
            out.append(c)
    return out




# ---- client certificates (configs/client_certs.conf) --------------------------------------

_STRANGER: dict[str, str] = {}


def _stranger_cert(directory) -> tuple[str, str]:
    """A self-signed client certificate no CA of the PKI issued, made once per session and
    shown to both sides (so its DN and fingerprint compare)."""
    if not _STRANGER:
        from datetime import UTC, datetime, timedelta

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.x509.oid import NameOID

        from fastterm.demo import new_key

        key = new_key("EC")
        # a name that shows RFC 2253's escapes and order: a multi-valued RDN, a comma, UTF-8
        name = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]),
                          x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Nobody, Inc."),
                                                          x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ops")]),
                          x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "strängér+1")])])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(0x00ABCDEF0123).not_valid_before(now - timedelta(minutes=5))
                .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
        (directory / "stranger.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (directory / "stranger.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        _STRANGER.update(cert=str(directory / "stranger.crt"), key=str(directory / "stranger.key"))
    return _STRANGER["cert"], _STRANGER["key"]


def client_cert_request(host: str, target: str, cert: str | None, http2: bool = False,
                        resumed: bool = False) -> Custom:
    """A GET from a client that shows ``cert`` ("client": the PKI's client certificate,
    "stranger": a self-signed one, None: none) over Python ``ssl`` (``http2``: curl --http2
    --cert), with a client-sent X-Client-DN; ``resumed``: the request goes on a second
    connection that resumes the first's session (TLS 1.2, session IDs)."""
    def run(side, ctx):
        pair = (str(ctx.pki.directory / "client.crt"), str(ctx.pki.directory / "client.key")) if cert == "client" \
            else _stranger_cert(ctx.pki.directory) if cert == "stranger" else None
        mark = ctx.backends.mark()
        head = request_head("GET", target, host, (("X-Client-DN", "forged"),), "HTTP/1.1", b"", False)
        if http2:
            args = ["--http2"] + (["--cert", pair[0], "--key", pair[1]] if pair else [])
            status, version, headers, body = curl(side, "HTTPS_PORT", host, target, ctx.pki, args,
                                                  (("X-Client-DN", "forged"),))
            obs = response_fields(status, version, headers, body, None, [])
        else:
            tls = client_context(ctx.pki)
            if resumed:
                tls.maximum_version = ssl.TLSVersion.TLSv1_2
            if pair:
                tls.load_cert_chain(*pair)
            session = None
            if resumed:
                with tls_connect(side, "HTTPS_PORT", host, tls) as first:
                    first.sendall(head)
                    read_reply(first, "GET")
                    session = first.session
                mark = ctx.backends.mark()
            try:
                with tls_connect(side, "HTTPS_PORT", host, tls, session) as sock:
                    reused = sock.session_reused
                    sock.sendall(head)
                    msg = read_reply(sock, "GET")
                obs = response_fields(msg.status, msg.version, msg.headers, msg.body, None, [])
                if resumed:
                    obs["tls.session_reused"] = reused
            except (OSError, EOFError, ValueError) as exc:
                obs = {"status": f"no response ({type(exc).__name__})"}
        obs.update(backend_fields(ctx.backends.since(mark)))
        return obs

    label = {"client": "client certificate", "stranger": "self-signed certificate", None: "no certificate"}[cert]
    return Custom(f"GET {host}{target} with {label}" + (" over h2" if http2 else "") +
                  (" resumed" if resumed else ""), run)


SPECIFIC["client_certs"] = [
    client_cert_request(host, "/", cert) for host in ("api.example.com", "app.example.com", "default.test")
    for cert in ("client", "stranger", None)
] + [
    client_cert_request("api.example.com", "/", "client", resumed=True),
    client_cert_request("api.example.com", "/", "client", http2=True),
    client_cert_request("app.example.com", "/", None, http2=True),
    Request("app.example.com", "/", label="GET app.example.com without a certificate (wire)"),
]
