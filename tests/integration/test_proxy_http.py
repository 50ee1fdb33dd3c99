"""HTTP/1.1 proxying as nginx does it: forwarded headers, hop-by-hop, keep-alive and pooling,
routes, HSTS, the port-80 redirect, message semantics (HEAD, 204, 304, 100-continue, 1.0)."""

from __future__ import annotations

import http.client
import subprocess
import threading

import pytest
from harness import HOST, HSTS, NAME, echo_json, header_map, keepalive_handler, response_bytes, wait_for
from httpwire import Reader, closed_by_peer, read_response, request_bytes


@pytest.fixture
def ft(fastterm, demo_backend):
    return fastterm(demo_backend)


def echo_headers(ft, headers, **kw) -> dict[str, list[str]]:
    return header_map(echo_json(ft.request("GET", "/echo", headers=headers, **kw)))


# ---------------------------------------------------------------------------------------
# forwarded headers


def test_forwarded_headers_set(ft):
    h = echo_headers(ft, [])
    assert h["x-forwarded-proto"] == ["https"]
    assert h["x-real-ip"] == ["127.0.0.1"]
    assert h["x-forwarded-for"] == ["127.0.0.1"]


def test_untrusted_client_cannot_spoof(ft):
    h = echo_headers(ft, [("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "6.6.6.6"),
                          ("Forwarded", "for=1.2.3.4;proto=http"), ("X-Forwarded-Proto", "http")])
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert h["x-real-ip"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["https"]
    assert "forwarded" not in h


def test_trusted_proxy_xff_appended(fastterm, demo_backend):
    ft = fastterm(demo_backend, trusted_proxies=["127.0.0.1/32"])
    h = echo_headers(ft, [("X-Forwarded-For", "1.2.3.4"), ("X-Real-IP", "6.6.6.6")])
    assert h["x-forwarded-for"] == ["1.2.3.4, 127.0.0.1"]
    assert h["x-real-ip"] == ["127.0.0.1"]
    assert h["x-forwarded-proto"] == ["https"]
    h = echo_headers(ft, [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "5.6.7.8, 9.9.9.9")])
    assert h["x-forwarded-for"] == ["1.2.3.4, 5.6.7.8, 9.9.9.9, 127.0.0.1"]
    h = echo_headers(ft, [("Forwarded", "for=1.2.3.4")])
    assert h["forwarded"][0].startswith("for=1.2.3.4")
    assert h["x-forwarded-for"] == ["127.0.0.1"]


def test_untrusted_when_trusted_list_excludes_peer(fastterm, demo_backend):
    ft = fastterm(demo_backend, trusted_proxies=["10.0.0.0/8"])
    h = echo_headers(ft, [("X-Forwarded-For", "1.2.3.4"), ("Forwarded", "for=1.2.3.4")])
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert "forwarded" not in h


def test_host_kept(ft):
    r = ft.request("GET", "/h", host=f"{NAME}:{ft.https_port}")
    h = header_map(echo_json(r))
    assert h["host"] == [f"{NAME}:{ft.https_port}"]


def test_end_to_end_headers_kept_in_order(raw_backend, fastterm):
    be = raw_backend()
    ft = fastterm(be.address)
    sent = [("Accept", "*/*"), ("X-One", "1"), ("Cookie", "a=b; c=d"), ("X-One", "2"), ("User-Agent", "t/1")]
    r = ft.request("GET", "/path?q=1&r=%20", headers=sent)
    assert r.status == 200
    (req,) = be.requests
    assert req.start_line == "GET /path?q=1&r=%20 HTTP/1.1"
    kept = [(n, v) for n, v in req.headers if n.lower() in {"accept", "x-one", "cookie", "user-agent"}]
    assert kept == sent
    assert req.all("host") == [NAME]


def test_hop_by_hop_removed(raw_backend, fastterm):
    be = raw_backend()
    ft = fastterm(be.address)
    r = ft.request("GET", "/", headers=[
        ("Connection", "keep-alive, X-Custom-Hop"), ("X-Custom-Hop", "secret"), ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"), ("Upgrade", "foo/1"), ("Proxy-Connection", "keep-alive"), ("X-End", "kept")])
    assert r.status == 200
    (req,) = be.requests
    names = {n.lower() for n, _ in req.headers}
    for hop in ("keep-alive", "te", "upgrade", "proxy-connection", "x-custom-hop"):
        assert hop not in names, (hop, req.raw_head)
    assert all("x-custom-hop" not in v.lower() for v in req.all("connection")), req.raw_head
    assert req.all("x-end") == ["kept"]


def test_hop_by_hop_removed_from_response(raw_backend, fastterm):
    def handler(conn):
        while conn.read_request() is not None:
            conn.send(response_bytes(200, b"ok", [("Connection", "keep-alive, X-Resp-Hop"), ("X-Resp-Hop", "1"),
                                                  ("Keep-Alive", "timeout=5"), ("X-Kept", "1")]))

    ft = fastterm(raw_backend(handler).address)
    r = ft.request("GET", "/")
    assert r.status == 200 and r.body == b"ok"
    assert not r.has("keep-alive") and not r.has("x-resp-hop"), r.raw_head
    assert r.all("x-kept") == ["1"]


# ---------------------------------------------------------------------------------------
# keep-alive and pooling


def test_client_keepalive_and_backend_pooling(raw_backend, fastterm):
    be = raw_backend()
    ft = fastterm(be.address)
    socks = [ft.connect() for _ in range(5)]
    readers = [Reader(s) for s in socks]
    try:
        for i in range(10):
            for k, (s, rd) in enumerate(zip(socks, readers)):
                s.sendall(request_bytes("GET", f"/{k}/{i}"))
                r = read_response(rd)
                assert r.status == 200 and r.body == f"ok /{k}/{i}".encode()
                assert not r.has("connection") or r.header("connection").lower() != "close"
    finally:
        for s in socks:
            s.close()
    assert len(be.requests) == 50
    # Strictly sequential requests: one pooled backend connection serves them all.
    assert be.accepts == 1, be.accepts


def test_pooling_under_concurrency(raw_backend, fastterm):
    be = raw_backend()
    ft = fastterm(be.address)
    errors = []

    def client(k):
        try:
            with ft.connect() as s:
                rd = Reader(s)
                for i in range(10):
                    s.sendall(request_bytes("GET", f"/{k}/{i}"))
                    r = read_response(rd)
                    assert r.status == 200 and r.body == f"ok /{k}/{i}".encode()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(be.requests) == 50
    assert be.accepts <= 5, be.accepts


def test_pool_size_zero_or_backend_close_not_reused(raw_backend, fastterm):
    """A backend answering ``Connection: close`` is never reused: the next request connects again."""
    def handler(conn):
        req = conn.read_request()
        if req is not None:
            conn.send(response_bytes(200, b"bye", [("Connection", "close")]))

    be = raw_backend(handler)
    ft = fastterm(be.address)
    with ft.connect() as s:
        rd = Reader(s)
        for _ in range(3):
            s.sendall(request_bytes("GET", "/"))
            r = read_response(rd)
            assert r.status == 200 and r.body == b"bye"
    assert be.accepts == 3


def test_stale_pooled_connection_retried(raw_backend, fastterm):
    """The backend closes an idle pooled connection; the next GET still succeeds (nginx retries)."""
    def handler(conn):
        req = conn.read_request()
        if req is not None:
            conn.send(response_bytes(200, b"once"))
        # then close without Connection: close (like a backend keep-alive timeout)

    be = raw_backend(handler)
    ft = fastterm(be.address)
    assert ft.request("GET", "/1").body == b"once"
    wait_for(lambda: False, timeout=0.3)
    with ft.connect() as s:
        s.sendall(request_bytes("GET", "/2"))
        r = read_response(Reader(s))
    assert r.status == 200 and r.body == b"once"


def test_keepalive_idle_timeout_closes(fastterm, demo_backend):
    ft = fastterm(demo_backend, limits={"keepalive_timeout": 1})
    with ft.connect() as s:
        s.sendall(request_bytes("GET", "/"))
        assert read_response(Reader(s)).status == 200
        assert closed_by_peer(s, timeout=4), "idle keep-alive connection still open after 4 s"


def test_keepalive_survives_short_idle(ft):
    with ft.connect() as s:
        rd = Reader(s)
        s.sendall(request_bytes("GET", "/1"))
        assert read_response(rd).status == 200
        wait_for(lambda: False, timeout=1.2)
        s.sendall(request_bytes("GET", "/2"))
        assert read_response(rd).status == 200


def test_keepalive_requests_closes_after_the_last_one(fastterm, demo_backend):
    """nginx keepalive_requests: the 3rd response on a connection says Connection: close and
    the connection ends there, pipelined requests after it unanswered."""
    ft = fastterm(demo_backend, limits={"keepalive_requests": 3})
    with ft.connect() as s:
        rd = Reader(s)
        s.sendall(b"".join(request_bytes("GET", f"/{i}") for i in range(5)))
        answers = [read_response(rd) for _ in range(3)]
        assert [echo_json(r)["path"] for r in answers] == ["/0", "/1", "/2"]
        assert [r.header("connection") for r in answers] == [None, None, "close"]
        assert closed_by_peer(s, timeout=4), "still open after the keepalive_requests-th response"


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "byte-chunks"])
def test_header_line_size_gives_nginx_statuses(fastterm, demo_backend, split):
    """nginx large_client_header_buffers 4 2k: a request line longer than 2k is 414, a field
    line longer than 2k 400, a head past 4 x 2k 400; a head sent in small pieces is judged
    the same (the line scan resumes where it stopped)."""
    ft = fastterm(demo_backend, limits={"header_buffer_size": 8192, "header_line_size": 2048,
                                              "max_header_fields": 256})
    cases = [
        (request_bytes("GET", "/" + "t" * 1500), 200),
        (request_bytes("GET", "/" + "t" * 2500), 414),
        (request_bytes("GET", "/f", headers=[("X-Long", "a" * 1500)]), 200),
        (request_bytes("GET", "/f", headers=[("X-Long", "a" * 2500)]), 400),
        (request_bytes("GET", "/f", headers=[(f"X-Big-{i}", "b" * 1000) for i in range(12)]), 400),
        (request_bytes("GET", "/f", headers=[(f"X-Small-{i}", str(i)) for i in range(150)]), 200),
    ]
    for data, status in cases:
        with ft.connect() as s:
            rd = Reader(s)
            if split:
                for i in range(0, len(data), 700):
                    s.sendall(data[i:i + 700])
            else:
                s.sendall(data)
            r = read_response(rd)
            assert r.status == status, (data[:60], r.start_line)
            if status != 200:
                assert closed_by_peer(s, timeout=4)


# ---------------------------------------------------------------------------------------
# message semantics


def test_pipelined_requests_answered_in_order(ft):
    with ft.connect() as s:
        s.sendall(request_bytes("GET", "/delay/0.3") + request_bytes("GET", "/a") + request_bytes("GET", "/b"))
        rd = Reader(s)
        paths = [echo_json(read_response(rd))["path"] for _ in range(3)]
    assert paths == ["/delay/0.3", "/a", "/b"]


def test_pipelined_post_bodies(ft):
    with ft.connect() as s:
        s.sendall(request_bytes("POST", "/p1", body=b"one") + request_bytes("POST", "/p2", body=b"twotwo")
                  + request_bytes("GET", "/p3"))
        rd = Reader(s)
        got = [echo_json(read_response(rd)) for _ in range(3)]
    assert [(e["path"], e["body_length"]) for e in got] == [("/p1", 3), ("/p2", 6), ("/p3", 0)]


def test_head_keeps_content_length_without_body(ft):
    with ft.connect() as s:
        rd = Reader(s)
        s.sendall(request_bytes("HEAD", "/bytes/1000"))
        r = read_response(rd, "HEAD")
        assert r.status == 200 and r.header("content-length") == "1000"
        # no body bytes follow: the next response on the connection starts right away
        s.sendall(request_bytes("GET", "/bytes/5"))
        r2 = read_response(rd)
        assert r2.status == 200 and r2.body == b"xxxxx"


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(ft, status):
    with ft.connect() as s:
        rd = Reader(s)
        s.sendall(request_bytes("GET", f"/status/{status}"))
        r = read_response(rd)
        assert r.status == status and not r.has("transfer-encoding")
        assert r.header("strict-transport-security") == HSTS
        s.sendall(request_bytes("GET", "/bytes/3"))
        assert read_response(rd).body == b"xxx"


def test_backend_status_passed_through(ft):
    for status in (201, 404, 418, 500, 503):
        r = ft.request("GET", f"/status/{status}")
        assert r.status == status


def test_expect_100_continue(ft):
    with ft.connect() as s:
        rd = Reader(s)
        s.sendall(request_bytes("POST", "/upload", headers=[("Content-Length", "5"),
                                                             ("Expect", "100-continue")]))
        interim = read_response(rd, skip_1xx=False)
        assert interim.status == 100, interim.start_line
        s.sendall(b"hello")
        final = read_response(rd)
        assert echo_json(final)["body_length"] == 5


def test_expect_100_continue_http_client(ft):
    conn = http.client.HTTPSConnection(NAME, ft.https_port, context=ft.client_context(), timeout=5)
    conn.sock = ft.connect()
    conn.putrequest("PUT", "/x")
    conn.putheader("Content-Length", "3")
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    conn.send(b"abc")
    r = conn.getresponse()
    assert r.status == 200
    conn.close()


def test_http10_client_gets_response_and_close(ft):
    with ft.connect() as s:
        s.sendall(b"GET /ten HTTP/1.0\r\nHost: www.example.com\r\n\r\n")
        rd = Reader(s)
        r = read_response(rd)
        assert r.status == 200 and echo_json(r)["path"] == "/ten"
        assert not r.chunked
        assert closed_by_peer(s, timeout=3)


def test_http10_without_host_allowed(ft):
    with ft.connect() as s:
        s.sendall(b"GET /nohost HTTP/1.0\r\n\r\n")
        r = read_response(Reader(s))
        assert r.status == 200


def test_http10_chunked_response_dechunked(raw_backend, fastterm):
    """A chunked backend response to an HTTP/1.0 client is sent close-delimited or with a length."""
    def handler(conn):
        while conn.read_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")

    ft = fastterm(raw_backend(handler).address)
    with ft.connect() as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: www.example.com\r\n\r\n")
        r = read_response(Reader(s))
    assert r.status == 200
    assert not r.chunked, r.raw_head
    assert r.body == b"hello"


def test_connection_close_honoured(ft):
    with ft.connect() as s:
        s.sendall(request_bytes("GET", "/", headers=[("Connection", "close")]))
        rd = Reader(s)
        r = read_response(rd)
        assert r.status == 200
        assert (r.header("connection") or "").lower() == "close"
        assert closed_by_peer(s, timeout=3)


def test_http_client_and_curl(ft):
    conn = http.client.HTTPSConnection(NAME, ft.https_port, context=ft.client_context(), timeout=5)
    conn.sock = ft.connect()
    for i in range(3):
        conn.request("GET", f"/hc/{i}")
        r = conn.getresponse()
        assert r.status == 200 and echo_json_body(r.read())["path"] == f"/hc/{i}"
    conn.close()
    for flag, status_line in (("--http1.1", "HTTP/1.1 200"), ("--http2", "HTTP/2 200")):
        # ALPN offers h2 first (the default since HTTP/2 landed); --http1.1 keeps curl on 1.1.
        out = subprocess.run(["curl", "-sS", flag, "--cacert", ft.ca_file, "--resolve",
                              f"{NAME}:{ft.https_port}:{HOST}", "-D", "-", ft.url("/curl?x=1"), "--max-time", "10"],
                             capture_output=True, text=True, timeout=15, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(status_line), out.stdout
        assert '"path": "/curl?x=1"' in out.stdout


def echo_json_body(body: bytes) -> dict:
    import json

    return json.loads(body)


# ---------------------------------------------------------------------------------------
# routes


def test_routes_longest_prefix_and_404(raw_backend, fastterm):
    api = raw_backend()
    web = raw_backend()
    ft = fastterm(upstreams=[{"name": "api", "servers": [api.address]}, {"name": "web", "servers": [web.address]}],
                  routes=[{"path": "/", "upstream": "web"}, {"path": "/api/", "upstream": "api"}])
    assert ft.request("GET", "/api/v1").status == 200
    assert ft.request("GET", "/index.html").status == 200
    assert [r.target for r in api.requests] == ["/api/v1"]
    assert [r.target for r in web.requests] == ["/index.html"]


def test_no_route_404(raw_backend, fastterm):
    be = raw_backend()
    ft = fastterm(be.address, routes=[{"path": "/api/", "upstream": "app"}])
    r = ft.request("GET", "/other")
    assert r.status == 404
    assert r.header("strict-transport-security") == HSTS
    assert be.accepts == 0


# ---------------------------------------------------------------------------------------
# HSTS


def test_hsts_on_200(ft):
    r = ft.request("GET", "/")
    assert r.status == 200 and r.all("strict-transport-security") == [HSTS]


def test_hsts_on_502_backend_down(fastterm, refused_address):
    ft = fastterm(refused_address)
    r = ft.request("GET", "/")
    assert r.status == 502 and r.all("strict-transport-security") == [HSTS]


def test_hsts_on_400(ft):
    with ft.connect() as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        r = read_response(Reader(s))
    assert r.status == 400 and r.all("strict-transport-security") == [HSTS]


def test_hsts_once_when_backend_sends_one(raw_backend, fastterm):
    def handler(conn):
        while conn.read_request() is not None:
            conn.send(response_bytes(200, b"ok", [("Strict-Transport-Security", "max-age=1")]))

    ft = fastterm(raw_backend(handler).address)
    r = ft.request("GET", "/")
    assert r.all("strict-transport-security") == [HSTS]


def test_no_hsts_when_unset(fastterm, demo_backend):
    ft = fastterm(demo_backend, hsts=None)
    assert not ft.request("GET", "/").has("strict-transport-security")


# ---------------------------------------------------------------------------------------
# port-80 redirect


def curl_http(port: int, path: str, *extra: str) -> str:
    out = subprocess.run(["curl", "-sS", "-i", f"http://127.0.0.1:{port}{path}", "--max-time", "5", *extra],
                         capture_output=True, timeout=10, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode("latin-1")


def test_redirect_to_https_port(ft):
    out = curl_http(ft.http_port, "/a?b=1", "-H", "Host: example.com")
    assert out.startswith("HTTP/1.1 301"), out
    assert f"Location: https://example.com:{ft.https_port}/a?b=1\r\n" in out, out


def test_redirect_strips_request_port(ft):
    out = curl_http(ft.http_port, "/x", "-H", "Host: example.com:80")
    assert f"Location: https://example.com:{ft.https_port}/x\r\n" in out, out


def test_redirect_443_has_no_port(fastterm, demo_backend):
    ft = fastterm(demo_backend, https_port_in_redirect=443)
    out = curl_http(ft.http_port, "/a?b=1", "-H", "Host: example.com")
    assert out.startswith("HTTP/1.1 301"), out
    assert "Location: https://example.com/a?b=1\r\n" in out, out


def test_redirect_head_has_no_body(ft):
    import socket

    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        s.sendall(b"HEAD /h HTTP/1.1\r\nHost: example.com\r\n\r\n")
        rd = Reader(s)
        r = read_response(rd, "HEAD")
        assert r.status == 301
        assert rd.read_to_eof() == b""


def test_redirect_port_rejects_garbage(ft):
    import socket

    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        r = read_response(Reader(s))
        assert r.status == 400
    assert ft.alive()


def test_redirect_does_not_touch_backend(raw_backend, fastterm):
    be = raw_backend(keepalive_handler)
    ft = fastterm(be.address)
    curl_http(ft.http_port, "/", "-H", "Host: example.com")
    assert be.accepts == 0


# ---------------------------------------------------------------------------------------
# virtual hosts on one listener; request targets


@pytest.fixture
def vhosts(fastterm, raw_backend, write, intermediate, ec_cert, other_leaf):
    from harness import cert_entry

    a, b = raw_backend(), raw_backend()
    servers = [
        {"server_names": [NAME], "default_server": True, "certificate": [ec_cert],
         "route": [{"path": "/", "upstream": "a"}]},
        {"server_names": ["other.test"], "certificate": [cert_entry(write, other_leaf, intermediate, "other")],
         "route": [{"path": "/", "upstream": "b"}]},
    ]
    ft = fastterm(upstreams=[{"name": "a", "servers": [a.address]}, {"name": "b", "servers": [b.address]}],
                  servers=servers)
    return ft, a, b


def test_vhost_routes_by_server(vhosts):
    ft, a, b = vhosts
    with ft.connect("other.test") as s:
        s.sendall(b"GET /o HTTP/1.1\r\nHost: other.test\r\n\r\n")
        assert read_response(Reader(s)).status == 200
    with ft.connect(NAME) as s:
        s.sendall(b"GET /w HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert read_response(Reader(s)).status == 200
    assert [r.target for r in a.requests] == ["/w"]
    assert [r.target for r in b.requests] == ["/o"]


@pytest.mark.parametrize("sni", [NAME, None])
def test_host_other_than_sni_not_served_by_sni_server(vhosts, sni):
    """nginx picks the virtual server by Host (SNI only picks the certificate): a request for
    other.test is served by other.test's server, or refused with 421, never sent to www's backend."""
    ft, a, b = vhosts
    ctx = ft.client_context()
    ctx.check_hostname = False
    with ft.connect(sni, ctx) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: other.test\r\n\r\n")
        r = read_response(Reader(s))
    assert not a.requests, "request for Host other.test went to www.example.com's upstream"
    assert (r.status == 200 and [q.target for q in b.requests] == ["/x"]) or r.status == 421, r.start_line


def test_absolute_form_target(raw_backend, fastterm):
    """RFC 9112 3.2.2: a server MUST accept the absolute-form; nginx routes it by its path."""
    be = raw_backend()
    ft = fastterm(be.address)
    with ft.connect() as s:
        s.sendall(b"GET https://www.example.com/abs?q=1 HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        r = read_response(Reader(s))
    assert r.status == 200, r.start_line
    (req,) = be.requests
    assert req.target.endswith("/abs?q=1"), req.target
