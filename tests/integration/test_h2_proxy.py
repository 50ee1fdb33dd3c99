"""The proxy's behaviour, the same over HTTP/1.1 and HTTP/2 (issue 9): forwarded headers,
HSTS, routes, the statuses fastterm makes itself, bodies both ways and large transfers in
bounded memory. Each test runs once per protocol the client negotiates by ALPN; what the
backend received (the recording RawBackend, or the demo backend's echo) is the assertion.

The HTTP/1.1 originals are in test_proxy_http.py, test_errors.py, test_bodies.py and
test_hardening_*.py; an HTTP/2 request here is the one a client sends for the same
HTTP/1.1 request (lowercase names, ``:authority`` for ``Host``, DATA for the body).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time

import pytest
from h2wire import h2_client, h2_request
from harness import HSTS, NAME, echo_json, header_map, response_bytes, settle, within_rss_bound
from httpwire import Reader, read_response, request_bytes
from test_bodies import RssWatch
from test_hardening_framing import CLIENT_IDENTITY
from test_tls_scope import STRICT, TWIN, blocks

MIB = 1024 * 1024


@pytest.fixture(params=["http/1.1", "h2"])
def proto(request) -> str:
    return request.param


def send(ft, proto: str, method: str = "GET", target: str = "/", **kw):
    """One request on a fresh connection, in ``proto``; the response as an httpwire Message."""
    if proto == "h2":
        return h2_request(ft, method, target, **kw)
    return ft.request(method, target, **kw)


def echo_headers(ft, proto, headers, **kw) -> dict[str, list[str]]:
    return header_map(echo_json(send(ft, proto, "GET", "/echo", headers=headers, **kw)))


# ---------------------------------------------------------------------------------------
# forwarded headers


def test_forwarded_headers_set(demo, proto):
    h = echo_headers(demo, proto, [])
    assert h["x-forwarded-proto"] == ["https"]
    assert h["x-real-ip"] == ["127.0.0.1"]
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["host"] == [NAME]


def test_untrusted_client_cannot_spoof(demo, proto):
    h = echo_headers(demo, proto, [("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "6.6.6.6"),
                                   ("Forwarded", "for=1.2.3.4;proto=http"), ("X-Forwarded-Proto", "http")])
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-real-ip"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["https"]
    assert "forwarded" not in h


def test_trusted_proxy_xff_appended(fastterm, demo_backend, proto):
    ft = fastterm(demo_backend, trusted_proxies=["127.0.0.1/32"])
    h = echo_headers(ft, proto, [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8, 9.9.9.9"),
                                 ("X-Real-IP", "6.6.6.6")])
    assert h["x-forwarded-for"] == ["1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"]
    assert h["x-real-ip"] == ["127.0.0.1"]


def test_client_identity_and_underscore_names_dropped(ft, be, proto):
    r = send(ft, proto, "GET", "/h", headers=[(n, "evil.example") for n in CLIENT_IDENTITY] +
             [("X_Forwarded_For", "6.6.6.6"), ("My_Header", "v"), ("X-Kept", "1")])
    assert r.status == 200, r.start_line
    (req,) = be.requests
    assert [n for n in CLIENT_IDENTITY if req.has(n)] == [], req.raw_head
    assert [n for n, _ in req.headers if "_" in n] == [], req.raw_head
    assert b"evil.example" not in be.received() and b"6.6.6.6" not in be.received()
    assert req.all("x-kept") == ["1"]
    assert req.all("x-forwarded-for") == ["127.0.0.1"]


def test_host_with_port_kept(ft, be, proto):
    assert send(ft, proto, "GET", "/h", host=f"{NAME}:{ft.https_port}").status == 200
    assert be.requests[0].all("host") == [f"{NAME}:{ft.https_port}"]


def test_end_to_end_headers_and_target_kept(ft, be, proto):
    sent = [("accept", "*/*"), ("x-one", "1"), ("x-one", "2"), ("user-agent", "t/1"), ("cookie", "a=b; c=d")]
    assert send(ft, proto, "GET", "/path?q=1&r=%20", headers=sent).status == 200
    (req,) = be.requests
    assert req.start_line == "GET /path?q=1&r=%20 HTTP/1.1"
    kept = [(n.lower(), v) for n, v in req.headers if n.lower() in {"accept", "x-one", "user-agent", "cookie"}]
    assert kept == sent


def test_hop_by_hop_removed_from_response(raw_backend, fastterm, proto):
    def handler(conn):
        while conn.read_request() is not None:
            conn.send(response_bytes(200, b"ok", [("Connection", "keep-alive, X-Resp-Hop"), ("X-Resp-Hop", "1"),
                                                  ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
                                                  ("X-Kept", "1")]))

    ft = fastterm(raw_backend(handler).address)
    r = send(ft, proto)
    assert r.status == 200 and r.body == b"ok"
    for hop in ("connection", "keep-alive", "proxy-connection", "x-resp-hop"):
        assert not r.has(hop), (hop, r.headers)
    assert r.all("x-kept") == ["1"]
    assert r.all("content-length") == ["2"]


# ---------------------------------------------------------------------------------------
# routes


def routed(raw_backend, fastterm):
    api, web = raw_backend(), raw_backend()
    ft = fastterm(upstreams=[{"name": "api", "servers": [api.address]}, {"name": "web", "servers": [web.address]}],
                  routes=[{"path": "/", "upstream": "web"}, {"path": "/api/", "upstream": "api"}])
    return ft, api, web


def test_routes_longest_prefix(raw_backend, fastterm, proto):
    ft, api, web = routed(raw_backend, fastterm)
    assert send(ft, proto, "GET", "/api/v1").status == 200
    assert send(ft, proto, "GET", "/index.html").status == 200
    assert [r.target for r in api.requests] == ["/api/v1"]
    assert [r.target for r in web.requests] == ["/index.html"]


@pytest.mark.parametrize("target", ["/api/../admin", "/api/%2e%2e/admin", "/api/v1/../../admin?x=/api/"])
def test_dot_segments_do_not_reach_the_prefix_upstream(raw_backend, fastterm, proto, target):
    ft, api, web = routed(raw_backend, fastterm)
    assert send(ft, proto, "GET", target).status == 200
    assert not api.requests, f"{target} reached the /api/ upstream"
    assert [r.target for r in web.requests] == [target]


def test_host_chooses_the_server_block_and_its_trust(trust_split, proto):
    """SNI names www (which trusts 127.0.0.1 as a proxy), the Host (HTTP/2: :authority)
    names other.test (which trusts nobody): other.test's backend serves it, and the spoofed
    X-Forwarded-For does not reach it."""
    ft, a, b = trust_split
    spoof = [("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=6.6.6.6")]
    assert send(ft, proto, "GET", "/one", host="other.test", headers=spoof).status == 200
    assert send(ft, proto, "GET", "/two", headers=[("X-Forwarded-For", "7.7.7.7")]).status == 200
    (one,) = b.requests
    assert one.target == "/one" and one.all("x-forwarded-for") == ["127.0.0.1"] and not one.has("forwarded")
    (two,) = a.requests
    assert two.all("x-forwarded-for") == ["7.7.7.7, 127.0.0.1"]


def test_host_of_a_stricter_block_on_a_lax_connection_is_421(fastterm, raw_backend, write, intermediate, ec_cert,
                                                             other_leaf, wildcard_leaf, proto):
    """TLS 1.2 negotiated as www, then a request for other.test (TLS 1.3 only): 421
    Misdirected Request (RFC 9110 §15.5.20; HTTP/2 clients coalesce connections across the
    names a certificate covers), nothing forwarded; the twin block, same policy, is served."""
    be = raw_backend()
    ft = fastterm(be.address, servers=blocks(write, intermediate, ec_cert, other_leaf, wildcard_leaf))
    ctx = ft.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if proto == "h2":
        with h2_client(ft, ctx=ctx) as c:
            assert c.get("GET", "/twin", authority=TWIN).status == 200
            assert c.get("GET", "/strict", authority=STRICT).status == 421
    else:
        with ft.connect(ctx=ctx) as s:
            rd = Reader(s)
            s.sendall(request_bytes("GET", "/twin", TWIN))
            assert read_response(rd).status == 200
            s.sendall(request_bytes("GET", "/strict", STRICT))
            assert read_response(rd).status == 421
    settle()
    assert [r.target for r in be.requests] == ["/twin"]


# ---------------------------------------------------------------------------------------
# statuses fastterm makes itself: each carries HSTS and reaches no backend


def test_hsts_on_200_and_once_when_backend_sends_one(raw_backend, fastterm, proto):
    def handler(conn):
        while conn.read_request() is not None:
            conn.send(response_bytes(200, b"ok", [("Strict-Transport-Security", "max-age=1")]))

    ft = fastterm(raw_backend(handler).address)
    assert send(ft, proto).all("strict-transport-security") == [HSTS]


def test_no_hsts_when_unset(fastterm, be, proto):
    ft = fastterm(be.address, hsts=None)
    r = send(ft, proto, "GET", "/a%zz")
    assert r.status == 400 and not r.has("strict-transport-security")
    assert not send(ft, proto).has("strict-transport-security")


@pytest.mark.parametrize("target", ["/../etc/passwd", "/a%zz", "/a%00b"])
def test_400_unnormalisable_path(ft, be, proto, target):
    r = send(ft, proto, "GET", target)
    assert r.status == 400, r.start_line
    assert r.all("strict-transport-security") == [HSTS]
    settle()
    assert be.accepts == 0


def test_404_no_route(fastterm, be, proto):
    ft = fastterm(be.address, routes=[{"path": "/only/", "upstream": "app"}])
    r = send(ft, proto, "GET", "/elsewhere")
    assert r.status == 404 and r.all("strict-transport-security") == [HSTS]
    settle()
    assert be.accepts == 0


def test_405_trace(ft, be, proto):
    r = send(ft, proto, "TRACE", "/", headers=[("Cookie", "secret=1")])
    assert r.status == 405 and r.all("strict-transport-security") == [HSTS]
    settle()
    assert be.accepts == 0


def test_413_content_length_over_limit(fastterm, be, proto):
    ft = fastterm(be.address, limits={"client_max_body_size": 1000})
    r = send(ft, proto, "POST", "/up", body=b"x" * 1001)
    assert r.status == 413 and r.all("strict-transport-security") == [HSTS]
    settle()
    assert be.accepts == 0
    assert send(ft, proto, "POST", "/up", body=b"x" * 1000).status == 200
    assert [len(q.body) for q in be.requests] == [1000]


def test_413_body_without_length_over_limit_never_forwarded(fastterm, be, proto):
    """A body without a length (HTTP/1.1 chunked; HTTP/2 DATA without content-length) over
    client_max_body_size, sent at once: 413, and no complete request reaches the backend,
    even when a pooled backend connection is ready for it."""
    ft = fastterm(be.address, limits={"client_max_body_size": 1000})
    body = b"x" * 1001
    if proto == "h2":
        with h2_client(ft) as c:
            assert c.get("GET", "/warm").status == 200
            r = c.get("POST", "/up", body=body, length=False)
    else:
        with ft.connect() as s:
            rd = Reader(s)
            s.sendall(request_bytes("GET", "/warm"))
            assert read_response(rd).status == 200
            s.sendall(request_bytes("POST", "/up", headers=[("Transfer-Encoding", "chunked")]) +
                      b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            r = read_response(rd)
    assert r.status == 413, r.start_line
    settle()
    assert [q.target for q in be.requests] == ["/warm"], be.received()


def test_body_limits_per_route_and_regex_routes_with_upstream_path(fastterm, be, proto):
    """client_max_body_size of the route that answers (nginx's per location): the server's
    100 bytes, 0 (none) on /up/, 3000 on a regex route; a body without a length past it is
    413 and never forwarded, one within it goes whole. The /v1/ route's backend gets
    /api/ in place of /v1/ (nginx proxy_pass with a URI part)."""
    routes = [{"path": "/", "upstream": "app"},
              {"path": "/up/", "upstream": "app", "client_max_body_size": 0},
              {"path": r"\.bin$", "upstream": "app", "regex": "~", "client_max_body_size": 3000},
              {"path": "/v1/", "upstream": "app", "upstream_path": "/api/"}]
    ft = fastterm(be.address, routes=routes, limits={"client_max_body_size": 1 << 20})
    ft_small = fastterm(be.address, routes=routes, limits={"client_max_body_size": 100})

    def post(server, target, body):
        if proto == "h2":
            with h2_client(server) as c:
                return c.get("POST", target, body=body, length=False)
        with server.connect() as s:
            s.sendall(request_bytes("POST", target, headers=[("Transfer-Encoding", "chunked")]) +
                      b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            return read_response(Reader(s))

    assert post(ft_small, "/x", b"a" * 101).status == 413
    assert post(ft_small, "/up/big", b"b" * 200_000).status == 200
    assert post(ft_small, "/up/a.bin", b"c" * 3001).status == 413   # the regex route answers /up/a.bin
    assert post(ft_small, "/a.bin", b"d" * 3000).status == 200
    assert post(ft_small, "/v1/a%20b?q=1", b"e").status == 200
    settle()
    assert [(q.target, len(q.body)) for q in be.requests] == [
        ("/up/big", 200_000), ("/a.bin", 3000), ("/api/a%20b?q=1", 1)], be.received()
    assert post(ft, "/x", b"f" * 5000).status == 200   # the global limit where no route sets one


def test_431_header_block_over_limit(ft, be, proto):
    r = send(ft, proto, "GET", "/", headers=[("X-Big", "a" * 17 * 1024)])
    assert r.status == 431 and r.all("strict-transport-security") == [HSTS]
    r = send(ft, proto, "GET", "/", headers=[(f"X-H{i}", "b" * 200) for i in range(90)])
    assert r.status == 431
    settle()
    assert be.accepts == 0
    r = send(ft, proto, "GET", "/", headers=[("X-Big", "a" * 15 * 1024)])
    assert r.status == 200
    assert be.requests[0].header("x-big") == "a" * 15 * 1024


def test_too_many_header_fields(ft, be, proto):
    r = send(ft, proto, "GET", "/", headers=[(f"X-F{i}", "1") for i in range(101)])
    assert r.status in (400, 431), r.start_line
    settle()
    assert be.accepts == 0
    assert send(ft, proto, "GET", "/", headers=[(f"X-F{i}", "1") for i in range(98)]).status == 200


def test_502_backend_refused(fastterm, refused_address, proto):
    ft = fastterm(refused_address)
    r = send(ft, proto)
    assert r.status == 502 and r.all("strict-transport-security") == [HSTS]


def test_502_backend_reset_before_response(raw_backend, fastterm, proto):
    def handler(conn):
        conn.read_request()
        conn.reset()

    ft = fastterm(raw_backend(handler).address)
    assert send(ft, proto, "GET", "/").status == 502
    assert send(ft, proto, "POST", "/", body=b"data").status == 502


@pytest.mark.parametrize("garbage", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\rX-Injected: 1\r\nContent-Length: 2\r\n\r\nok",
], ids=["not-http", "two-lengths", "cl-and-te", "bare-cr"])
def test_502_malformed_backend_response(raw_backend, fastterm, proto, garbage):
    def handler(conn):
        if conn.read_request() is not None:
            conn.send(garbage)
            conn.hang()

    ft = fastterm(raw_backend(handler).address)
    r = send(ft, proto)
    assert r.status == 502, r.start_line
    assert not r.has("x-injected")


def test_504_backend_never_answers(raw_backend, fastterm, proto):
    def handler(conn):
        conn.read_request()
        conn.hang()

    ft = fastterm(raw_backend(handler).address)
    t0 = time.monotonic()
    r = send(ft, proto, timeout=8)
    waited = time.monotonic() - t0
    assert r.status == 504 and r.all("strict-transport-security") == [HSTS]
    assert 1.5 <= waited <= 4.5, waited  # backend_read_timeout = 2


def test_backend_statuses_passed_through(demo, proto):
    for status in (201, 404, 418, 500, 503):
        assert send(demo, proto, "GET", f"/status/{status}").status == status


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(demo, proto, status):
    r = send(demo, proto, "GET", f"/status/{status}")
    assert r.status == status and r.body == b"" and not r.has("transfer-encoding")
    assert r.all("strict-transport-security") == [HSTS]


def test_head_keeps_content_length_without_body(demo, proto):
    r = send(demo, proto, "HEAD", "/bytes/1000")
    assert r.status == 200 and r.header("content-length") == "1000" and r.body == b""


# ---------------------------------------------------------------------------------------
# bodies both ways


def test_content_length_upload(demo, proto):
    body = os.urandom(MIB + 17)
    echo = echo_json(send(demo, proto, "POST", "/upload", body=body))
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_upload_without_length(demo, proto):
    """HTTP/1.1 chunked; HTTP/2 DATA with no content-length (forwarded chunked)."""
    body = os.urandom(300000)
    if proto == "h2":
        with h2_client(demo) as c:
            r = c.get("POST", "/upload", body=body, length=False)
    else:
        with demo.connect() as s:
            s.sendall(request_bytes("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]) +
                      b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
            r = read_response(Reader(s))
    echo = echo_json(r)
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_content_length_download(demo, proto):
    r = send(demo, proto, "GET", "/bytes/3000000")
    assert r.header("content-length") == "3000000" and r.body == b"x" * 3000000


def test_chunked_download(demo, proto):
    r = send(demo, proto, "GET", "/chunked/1000000")
    assert r.body == b"x" * 1000000 and not r.has("content-length")


def test_close_delimited_response(raw_backend, fastterm, proto):
    body = os.urandom(300000)

    def handler(conn):
        if conn.read_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + body)

    ft = fastterm(raw_backend(handler).address)
    r = send(ft, proto)
    assert r.status == 200 and r.body == body


def test_chunked_response_with_extensions(raw_backend, fastterm, proto):
    def handler(conn):
        while conn.read_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")

    ft = fastterm(raw_backend(handler).address)
    r = send(ft, proto)
    assert r.status == 200 and r.body == b"abcde"


# ---------------------------------------------------------------------------------------
# 200 MiB each way in bounded memory


BIG = 200 * MIB


def warm(ft, proto):
    send(ft, proto, "POST", "/warm", body=b"w" * MIB)
    send(ft, proto, "GET", "/bytes/1048576")


def test_200mib_upload_bounded_memory(demo, proto):
    warm(demo, proto)
    piece = os.urandom(MIB)
    digest = hashlib.sha256()
    t0 = time.monotonic()
    with RssWatch(demo) as watch:
        if proto == "h2":
            with h2_client(demo, timeout=30) as c:
                sid = c.request("POST", "/upload", headers=[("content-length", str(BIG))], end_stream=False)
                for i in range(BIG // MIB):
                    c.send_body(sid, piece, end_stream=i == BIG // MIB - 1)
                    digest.update(piece)
                r = c.response(sid, timeout=30).message()
        else:
            with demo.connect(timeout=30) as s:
                s.sendall(request_bytes("POST", "/upload", headers=[("Content-Length", str(BIG))]))
                for _ in range(BIG // MIB):
                    s.sendall(piece)
                    digest.update(piece)
                r = read_response(Reader(s))
    elapsed = time.monotonic() - t0
    echo = echo_json(r)
    assert echo["body_length"] == BIG
    assert echo["body_sha256"] == digest.hexdigest()
    assert within_rss_bound(watch.growth_mib, 20), f"RSS grew {watch.growth_mib:.1f} MiB during a 200 MiB upload"
    assert elapsed < 60, elapsed


def test_200mib_download_bounded_memory(demo, proto):
    warm(demo, proto)
    expect = hashlib.sha256()
    fill = b"x" * MIB
    for _ in range(BIG // MIB):
        expect.update(fill)
    t0 = time.monotonic()
    with RssWatch(demo) as watch:
        if proto == "h2":
            with h2_client(demo, timeout=30, keep_body=False) as c:
                st = c.response(c.request("GET", f"/bytes/{BIG}"), timeout=60)
                assert st.ended and dict(st.headers)[":status"] == "200"
                got, digest = st.received, st.sha256.hexdigest()
        else:
            with demo.connect(timeout=30) as s:
                s.sendall(request_bytes("GET", f"/bytes/{BIG}"))
                h = hashlib.sha256()
                r = read_response(Reader(s), keep_body=False, hasher=h)
                assert r.status == 200
                got, digest = int(r.header("content-length")), h.hexdigest()
    elapsed = time.monotonic() - t0
    assert got == BIG
    assert digest == expect.hexdigest()
    assert within_rss_bound(watch.growth_mib, 20), f"RSS grew {watch.growth_mib:.1f} MiB during a 200 MiB download"
    assert elapsed < 60, elapsed
