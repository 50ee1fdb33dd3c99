"""The Exchange, sans-IO: request heads in, verdicts and rewritten heads out; no socket.

Heads are fed whole (the codecs cut them; their byte-by-byte tests live with the codecs
and the framing). Each verdict is checked against what nginx does for the same request.
"""

from __future__ import annotations

import pytest
from fastterm._core import (
    HTTP_FIELD,
    LITERAL,
    VARIABLES,
    ClientFacts,
    Exchange,
    RequestRewrite,
    ServerPolicy,
    SiteTable,
    UpstreamPool,
)

R_FINAL, R_INTERIM, R_BAD = 0, 1, 2


@pytest.fixture
def pools():
    return {"web": UpstreamPool("web", [("127.0.0.1", 1)]), "api": UpstreamPool("api", [("127.0.0.1", 2)])}


@pytest.fixture
def sites(pools):
    www = ServerPolicy("www", [("/", pools["web"]), ("/api/", pools["api"])], "max-age=1", ["10.0.0.0/8"])
    other = ServerPolicy("other", [("/", pools["api"])])
    return SiteTable({"www.example.com": www, "*.wild.test": other, "other.test": other}, www)


def test_longest_wildcard_wins_at_any_depth(pools):
    """nginx's server_name rule: ``*.example.com`` also names ``a.b.example.com``, and of two
    wildcards that match, the longer suffix wins."""
    outer = ServerPolicy("outer", [("/", pools["web"])])
    inner = ServerPolicy("inner", [("/", pools["api"])])
    default = ServerPolicy("default", [("/", pools["web"])])
    sites = SiteTable({"*.example.com": outer, "*.b.example.com": inner}, default)
    assert sites.select("a.example.com") is outer
    assert sites.select("a.c.example.com") is outer
    assert sites.select("a.b.example.com") is inner
    assert sites.select("x.y.b.example.com") is inner
    assert sites.select("b.example.com") is outer
    assert sites.select("example.com") is default


def exchange(sites, peer="192.0.2.7", sni=None) -> Exchange:
    return Exchange(ClientFacts(peer, sites, sites.select(sni) if sni else None))


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def headers_of(raw: bytes) -> list[tuple[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")[1:]
    return [tuple(x.strip() for x in line.split(":", 1)) for line in lines if line]


def test_request_routed_and_rewritten(sites):
    ex = exchange(sites)
    status, up = ex.feed_request(head("GET /api/v1?q=1 HTTP/1.1", "Host: www.example.com", "Connection: close",
                                      "X-Real-IP: 6.6.6.6", "X-Forwarded-For: 6.6.6.6", "Accept: */*"))
    assert status == 0
    assert up.startswith(b"GET /api/v1?q=1 HTTP/1.1\r\n")
    assert headers_of(up) == [("Host", "www.example.com"), ("Accept", "*/*"), ("X-Forwarded-For", "192.0.2.7"),
                              ("X-Forwarded-Proto", "https"), ("X-Real-IP", "192.0.2.7")]
    v = ex.verdict
    assert v["state"] == "forwarding" and v["upstream"] == "api" and v["server"] == "www"
    assert v["client_close"] and v["retryable"] and v["body_mode"] == "none"


def test_trusted_proxy_appends_and_keeps_forwarded(sites):
    ex = exchange(sites, peer="10.1.2.3")
    status, up = ex.feed_request(head("GET / HTTP/1.1", "Host: www.example.com", "X-Forwarded-For: 1.1.1.1",
                                      "Forwarded: for=1.1.1.1"))
    assert status == 0
    assert ("X-Forwarded-For", "1.1.1.1, 10.1.2.3") in headers_of(up)
    assert ("Forwarded", "for=1.1.1.1") in headers_of(up)


def test_trust_follows_the_host_not_sni(sites):
    """SNI named the server that trusts 10/8; Host names one that trusts nobody."""
    ex = exchange(sites, peer="10.1.2.3", sni="www.example.com")
    status, up = ex.feed_request(head("GET / HTTP/1.1", "Host: other.test", "X-Forwarded-For: 1.1.1.1"))
    assert status == 0 and ex.verdict["server"] == "other"
    assert [v for n, v in headers_of(up) if n == "X-Forwarded-For"] == ["10.1.2.3"]


@pytest.mark.parametrize(("host", "server"), [("www.example.com:8443", "www"), ("WWW.Example.COM.", "www"),
                                              ("a.wild.test", "other"), ("wild.test", "www"),
                                              ("[::1]:443", "www"), ("unknown.test", "www")])
def test_host_picks_the_server_block(sites, host, server):
    ex = exchange(sites)
    assert ex.feed_request(head("GET / HTTP/1.1", f"Host: {host}"))[0] == 0
    assert ex.verdict["server"] == server


def test_http10_without_host_uses_sni_server_and_pool_host(sites):
    ex = exchange(sites, sni="other.test")
    status, up = ex.feed_request(head("GET /x HTTP/1.0"))
    assert status == 0 and ex.verdict["server"] == "other"
    assert up.startswith(b"GET /x HTTP/1.1\r\nHost: api\r\n")
    assert ex.verdict["client_close"]


@pytest.mark.parametrize(("raw", "status"), [
    (head("GET /x HTTP/1.1"), 400),                                                 # no Host
    (head("GET /x HTTP/1.1", "Host: a", "Host: b"), 400),
    (head("TRACE / HTTP/1.1", "Host: www.example.com"), 405),
    (head("GET /../x HTTP/1.1", "Host: www.example.com"), 400),
    (head("GET ftp://x/y HTTP/1.1", "Host: www.example.com"), 400),
    (head("GET /x HTTP/1.1", "Host: www.example.com", "Content-Length: 11"), 413),
    (head("POST /x HTTP/1.1", "Host: www.example.com", "Transfer-Encoding: gzip"), 400),
])
def test_rejected_requests(sites, raw, status):
    ex = exchange(sites)
    assert ex.feed_request(raw, max_body=10) == (status, None)
    assert ex.verdict["state"] == "rejected" and ex.verdict["error_status"] == status
    page = ex.error_page(status)
    assert page.startswith(f"HTTP/1.1 {status} ".encode()) and b"Connection: close\r\n" in page


def test_no_route_is_404(pools):
    only_api = ServerPolicy("api-only", [("/api/", pools["api"])])
    ex = Exchange(ClientFacts("192.0.2.7", SiteTable({}, only_api)))
    assert ex.feed_request(head("GET /other HTTP/1.1", "Host: x"))[0] == 404


@pytest.mark.parametrize(("target", "upstream"), [("/api/../x", "web"), ("/x/%2e%2E/api/v", "api"),
                                                  ("//api//v", "api"), ("/%61pi/", "api")])
def test_routing_on_the_normalised_path(sites, target, upstream):
    ex = exchange(sites)
    status, up = ex.feed_request(head(f"GET {target} HTTP/1.1", "Host: www.example.com"))
    assert status == 0 and ex.verdict["upstream"] == upstream
    assert up.startswith(f"GET {target} HTTP/1.1".encode())   # forwarded unchanged


def test_absolute_form_goes_as_origin_form(sites):
    ex = exchange(sites)
    status, up = ex.feed_request(head("GET https://www.example.com/api/a?b HTTP/1.1", "Host: www.example.com"))
    assert status == 0 and ex.verdict["upstream"] == "api"
    assert up.startswith(b"GET /api/a?b HTTP/1.1\r\n")


def test_body_modes_and_retryable(sites):
    ex = exchange(sites)
    assert ex.feed_request(head("POST / HTTP/1.1", "Host: www.example.com", "Content-Length: 5"))[0] == 0
    assert ex.verdict["body_mode"] == "length" and not ex.verdict["retryable"]
    ex = exchange(sites)
    assert ex.feed_request(head("PUT / HTTP/1.1", "Host: www.example.com", "Transfer-Encoding: chunked"))[0] == 0
    assert ex.verdict["body_mode"] == "chunked"


def test_response_rewritten_with_hsts_once(sites):
    ex = exchange(sites)
    ex.feed_request(head("GET / HTTP/1.1", "Host: www.example.com"))
    r, out = ex.feed_response(head("HTTP/1.1 200 OK", "Content-Length: 2", "Connection: keep-alive",
                                   "Keep-Alive: timeout=5", "Strict-Transport-Security: max-age=9"))
    assert r == R_FINAL
    assert headers_of(out) == [("Content-Length", "2"), ("Strict-Transport-Security", "max-age=1")]
    v = ex.verdict
    assert v["state"] == "responding" and v["backend_reusable"] and not v["client_close"]
    ex.end()
    assert ex.verdict["state"] == "done"


def test_response_for_http10_client_is_dechunked_and_closes(sites):
    ex = exchange(sites)
    ex.feed_request(head("GET / HTTP/1.0"))
    r, out = ex.feed_response(head("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"))
    assert r == R_FINAL
    assert ("Transfer-Encoding", "chunked") not in headers_of(out)
    assert ("Connection", "close") in headers_of(out)
    assert ex.verdict["dechunk"] and ex.verdict["client_close"]


def test_response_until_close_is_not_reusable(sites):
    ex = exchange(sites)
    ex.feed_request(head("GET / HTTP/1.1", "Host: www.example.com"))
    r, out = ex.feed_response(head("HTTP/1.1 200 OK"))
    assert r == R_FINAL and ex.verdict["response_mode"] == "until-close"
    assert ("Connection", "close") in headers_of(out)
    assert not ex.verdict["backend_reusable"] and ex.verdict["client_close"]


def test_interim_then_final(sites):
    ex = exchange(sites)
    ex.feed_request(head("POST / HTTP/1.1", "Host: www.example.com", "Content-Length: 1", "Expect: 100-continue"))
    assert ex.feed_response(head("HTTP/1.1 100 Continue")) == (R_INTERIM, None)
    assert ex.verdict["state"] == "forwarding"
    assert ex.feed_response(head("HTTP/1.1 201 Created", "Content-Length: 0"))[0] == R_FINAL


@pytest.mark.parametrize("raw", [head("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket"),
                                 head("HTTP/1.1 200 OK", "Content-Length: 1", "Transfer-Encoding: chunked"),
                                 b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"])
def test_bad_responses_fail_the_exchange(sites, raw):
    ex = exchange(sites)
    ex.feed_request(head("GET / HTTP/1.1", "Host: www.example.com"))
    assert ex.feed_response(raw) == (R_BAD, None)
    assert ex.verdict["state"] == "failed" and ex.verdict["failure"]


def test_head_request_response_has_no_body(sites):
    ex = exchange(sites)
    ex.feed_request(head("HEAD / HTTP/1.1", "Host: www.example.com"))
    assert ex.feed_response(head("HTTP/1.1 200 OK", "Content-Length: 99"))[0] == R_FINAL
    assert ex.verdict["response_mode"] == "none" and ex.verdict["backend_reusable"]


def test_transitions_outside_the_table_raise(sites):
    ex = exchange(sites)
    with pytest.raises(RuntimeError):
        ex.end()   # no response yet
    ex.feed_request(head("GET / HTTP/1.1", "Host: www.example.com"))
    with pytest.raises(RuntimeError):
        ex.feed_request(head("GET / HTTP/1.1", "Host: www.example.com"))
    ex.abort()
    assert ex.verdict["state"] == "failed"
    ex.abort()   # terminal states take abort and stay
    assert ex.verdict["state"] == "failed"


def test_host_of_a_block_with_another_tls_policy_is_421(pools):
    """Negotiated under one block's TLS policy, a request for a block with another policy
    is misdirected (RFC 9110 §15.5.20); blocks with the same policy share a connection."""
    lax = ServerPolicy("lax", [("/", pools["web"])], tls_policy=b"tls1.2+")
    strict = ServerPolicy("strict", [("/", pools["api"])], tls_policy=b"tls1.3")
    twin = ServerPolicy("twin", [("/", pools["api"])], tls_policy=b"tls1.2+")
    sites = SiteTable({"lax.test": lax, "strict.test": strict, "twin.test": twin}, lax)
    ex = Exchange(ClientFacts("192.0.2.7", sites, lax))
    assert ex.feed_request(head("GET / HTTP/1.1", "Host: strict.test"))[0] == 421
    ex = Exchange(ClientFacts("192.0.2.7", sites, lax))
    assert ex.feed_request(head("GET / HTTP/1.1", "Host: twin.test"))[0] == 0


def test_absolute_form_target_host_picks_the_block_and_is_sent_as_host(sites):
    """RFC 9112 §3.2.2: the target's host overrides Host, for the block and upstream (nginx
    picks the block by it too); a proxy generates Host from it rather than forwarding the client's."""
    ex = exchange(sites)
    status, up = ex.feed_request(head("GET https://other.test:443/x HTTP/1.1", "Host: www.example.com"))
    assert status == 0 and ex.verdict["server"] == "other"
    assert ("Host", "other.test:443") in headers_of(up) and ("Host", "www.example.com") not in headers_of(up)
    assert len([h for h in headers_of(up) if h[0].lower() == "host"]) == 1
    ex = exchange(sites, sni="other.test")
    assert ex.feed_request(head("GET http://unknown.test/x HTTP/1.0"))[0] == 0
    assert ex.verdict["server"] == "www"   # the default, as a Host unknown.test would
    assert exchange(sites).feed_request(head("GET http:///x HTTP/1.1", "Host: www.example.com"))[0] == 400


def test_no_host_goes_to_the_default_server_where_the_table_says(pools):
    """nginx (model.Server.no_host = "default"): an HTTP/1.0 request without Host is the
    listener's default server's, whatever the SNI chose; fastterm's own tables keep SNI's."""
    www = ServerPolicy("www", [("/", pools["web"])])
    other = ServerPolicy("other", [("/", pools["api"])])
    for no_host_default, server in ((True, "www"), (False, "other")):
        sites = SiteTable({"other.test": other}, www, no_host_default)
        ex = Exchange(ClientFacts("192.0.2.7", sites, other))
        assert ex.feed_request(head("GET /x HTTP/1.0"))[0] == 0
        assert ex.verdict["server"] == server


def test_misdirected_off_serves_the_host_block_whatever_the_tls(pools):
    """nginx: Host picks the server block, no 421 when the connection's TLS policy is another's."""
    lax = ServerPolicy("lax", [("/", pools["web"])], tls_policy=b"tls1.2+", misdirected=False)
    strict = ServerPolicy("strict", [("/", pools["api"])], tls_policy=b"tls1.3", misdirected=False)
    ex = Exchange(ClientFacts("192.0.2.7", SiteTable({"lax.test": lax, "strict.test": strict}, lax, True), lax))
    assert ex.feed_request(head("GET / HTTP/1.1", "Host: strict.test"))[0] == 0
    assert ex.verdict["server"] == "strict"


@pytest.fixture
def slash_sites(pools):
    policy = ServerPolicy("api.test,other.test", [("/", pools["web"]), ("/static/", pools["api"], None, True),
                                                  ("/exact", pools["api"]), ("/exact/", pools["api"], None, True)])
    return SiteTable({"api.test": policy}, policy)


@pytest.mark.parametrize(("target", "host", "port", "location"), [
    ("/static", "API.test:8443", 8443, "https://api.test:8443/static/"),
    ("/static?a=1&b", "api.test", 8443, "https://api.test:8443/static/?a=1&b"),
    ("/st%61tic?", "api.test.", 443, "https://api.test/static/"),           # $uri matched; no empty ?
    ("https://other.test/static", "api.test", 0, "https://other.test/static/"),
    ("/static", None, 8443, "https://api.test:8443/static/"),               # HTTP/1.0: the server's name
])
def test_location_dir_redirects_dir_to_dir_slash(slash_sites, target, host, port, location):
    """nginx's auto_redirect: /dir, which no route names, gets 301 to the absolute /dir/ (the
    listen port unless 443, ?args kept); nothing reaches a backend."""
    facts = ClientFacts("192.0.2.7", slash_sites)
    facts.connection(server_port=port)
    ex = Exchange(facts)
    raw = head(f"GET {target} HTTP/1.1", f"Host: {host}") if host else head(f"GET {target} HTTP/1.0")
    assert ex.feed_request(raw) == (301, None)
    assert ex.location == location.encode()
    assert f"\r\nLocation: {location}\r\n".encode() in ex.error_page(301)


@pytest.mark.parametrize("target", ["/static/", "/static/x", "/staticx", "/exact", "/exact?x", "/"])
def test_no_slash_redirect_where_a_route_names_the_path(slash_sites, target):
    ex = exchange(slash_sites)
    assert ex.feed_request(head(f"GET {target} HTTP/1.1", "Host: api.test"))[0] == 0
    assert ex.location is None


def test_slash_redirect_without_a_root_route_and_long_values(pools):
    """No route matches /dir at all (would be 404): still the redirect; a long Host and query
    make a long Location, as long as the head (Python bytes, no fixed buffer)."""
    policy = ServerPolicy("a.test", [("/dir/", pools["api"], None, True)])
    ex = Exchange(ClientFacts("192.0.2.7", SiteTable({}, policy)))
    query = "q=" + "x" * 20000
    assert ex.feed_request(head(f"GET /dir?{query} HTTP/1.1", "Host: " + "h" * 5000))[0] == 301
    assert ex.location == ("https://" + "h" * 5000 + "/dir/?" + query).encode()
    assert exchange(SiteTable({}, policy)).feed_request(head("GET /other HTTP/1.1", "Host: a.test"))[0] == 404


@pytest.fixture
def redirect_sites(pools):
    policy = ServerPolicy("api.test", [("/", pools["web"], None, False, "http://notes/", "/"),
                                       ("/off/", pools["web"])])
    return SiteTable({"api.test": policy}, policy)


@pytest.mark.parametrize(("location", "host", "port", "client_sees"), [
    ("http://notes/elsewhere?a=b", "API.test.:8443", 8443, "https://api.test:8443/elsewhere?a=b"),
    ("http://notes/", "api.test", 443, "https://api.test/"),
    ("http://notes/x", None, 8443, "https://api.test:8443/x"),           # HTTP/1.0: the server's name
    ("http://notesx/x", "api.test", 443, "http://notesx/x"),             # not under the URL
    ("http://NOTES/x", "api.test", 443, "http://NOTES/x"),               # nginx compares case-sensitively
    ("/relative", "api.test", 443, "/relative"),
])
def test_proxy_redirect_default_rewrites_location(redirect_sites, location, host, port, client_sees):
    """nginx's proxy_redirect default: Location under proxy_pass's URL comes back as the location
    prefix on https://$host[:port]; anything else passes as it is."""
    facts = ClientFacts("192.0.2.7", redirect_sites)
    facts.connection(server_port=port)
    ex = Exchange(facts)
    raw = head("GET /a HTTP/1.1", f"Host: {host}") if host else head("GET /a HTTP/1.0")
    assert ex.feed_request(raw)[0] == 0
    r, out = ex.feed_response(head("HTTP/1.1 302 Found", f"Location: {location}", "Content-Length: 0"))
    assert r == R_FINAL and ("Location", client_sees) in headers_of(out)


def test_proxy_redirect_off_and_long_values(redirect_sites):
    ex = exchange(redirect_sites)
    ex.feed_request(head("GET /off/a HTTP/1.1", "Host: api.test"))
    assert ("Location", "http://notes/x") in headers_of(ex.feed_response(
        head("HTTP/1.1 302 Found", "Location: http://notes/x", "Content-Length: 0"))[1])
    # a rewritten head past PROXY_HEAD_MAX is a 502, never an overrun: a long Host and a long Location
    ex = exchange(redirect_sites)
    assert ex.feed_request(head("GET /a HTTP/1.1", "Host: " + "h" * 30000))[0] == 0
    r, out = ex.feed_response(head("HTTP/1.1 302 Found", "Location: http://notes/" + "x" * 40000))
    assert r == R_BAD and out is None and ex.error_status == 502
    ex = exchange(redirect_sites)
    assert ex.feed_request(head("GET /a HTTP/1.1", "Host: " + "h" * 3000))[0] == 0
    r, out = ex.feed_response(head("HTTP/1.1 302 Found", "Location: http://notes/" + "x" * 3000))
    assert r == R_FINAL and ("Location", "https://" + "h" * 3000 + "/" + "x" * 3000) in headers_of(out)


def test_the_host_cache_follows_the_host_not_the_last_server(pools):
    """One connection's exchanges (HTTP/2 streams, keep-alive): a request that names no host
    (the default server), or one refused with 421, leaves the next Host's block its own."""
    www = ServerPolicy("www", [("/", pools["web"])], tls_policy=b"a")
    other = ServerPolicy("other", [("/", pools["api"])], tls_policy=b"a")
    strict = ServerPolicy("strict", [("/", pools["api"])], tls_policy=b"b")
    facts = ClientFacts("192.0.2.7", SiteTable({"other.test": other, "strict.test": strict}, www, True), www)
    seen = []
    for raw in (head("GET / HTTP/1.1", "Host: other.test"), head("GET / HTTP/1.0"),
                head("GET / HTTP/1.1", "Host: other.test"), head("GET / HTTP/1.1", "Host: strict.test"),
                head("GET / HTTP/1.1", "Host: strict.test")):
        ex = Exchange(facts)
        status = ex.feed_request(raw)[0]
        seen.append(ex.verdict["server"] if status == 0 else status)
    assert seen == ["other", "www", "other", 421, 421]


@pytest.mark.parametrize(("target", "upstream"), [
    ("/health", "api"), ("/health?x", "api"), ("/%68ealth", "api"), ("/x/../health", "api"),
    ("/health/", "web"), ("/healthx", "web"), ("/", "api"), ("/?q", "api"), ("/a", "web")])
def test_exact_routes_win_over_prefixes_on_the_normalised_path(pools, target, upstream):
    """nginx's location = PATH: the whole $uri (query aside) or nothing, before any prefix."""
    policy = ServerPolicy("a.test", [("/", pools["web"]), ("/health", pools["api"], None, False, "", "", True),
                                     ("/health", pools["web"]), ("/", pools["api"], None, False, "", "", True)])
    ex = exchange(SiteTable({}, policy))
    assert ex.feed_request(head(f"GET {target} HTTP/1.1", "Host: a.test"))[0] == 0
    assert ex.verdict["upstream"] == upstream


def test_only_exact_routes_is_404_elsewhere(pools):
    policy = ServerPolicy("a.test", [("/only/", pools["api"], None, True, "", "", True)])
    assert exchange(SiteTable({}, policy)).feed_request(head("GET /only/x HTTP/1.1", "Host: a.test"))[0] == 404
    ex = exchange(SiteTable({}, policy))
    assert ex.feed_request(head("GET /only HTTP/1.1", "Host: a.test"))[0] == 301   # auto_redirect, as nginx


# ---- client certificates (nginx ssl_verify_client; the facts come from ext/tls.pyx) -------------

VERIFY_OFF, VERIFY_ON, VERIFY_OPTIONAL, VERIFY_OPTIONAL_NO_CA = range(4)
X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_CERT_HAS_EXPIRED = 18, 10
ALICE = (0, b"CN=alice,O=Example\\, Inc.", b"CN=root", b"0A1B", b"ab" * 20, b"-----BEGIN CERTIFICATE-----\nMII\n")


def verifying(pools, mode: int) -> SiteTable:
    www = ServerPolicy("www", [("/", pools["web"])])
    www.verify_client = mode
    www.client_headers = True
    return SiteTable({"www.example.com": www}, www)


def cert_exchange(sites, cert, sni="www.example.com") -> Exchange:
    facts = ClientFacts("192.0.2.7", sites, sites.select(sni))
    facts.connection(ssl_server_name=sni)
    facts.client_certificate(cert)
    return Exchange(facts)


def test_client_certificate_fields_reach_the_backend_and_forged_ones_do_not(pools):
    assert verifying(pools, VERIFY_ON).client_certs
    ex = cert_exchange(verifying(pools, VERIFY_ON), ALICE)
    status, up = ex.feed_request(head("GET / HTTP/1.1", "Host: www.example.com", "X-SSL-Client-S-DN: CN=forged",
                                      "x-ssl-client-verify: SUCCESS"))
    assert status == 0
    got = [(n, v) for n, v in headers_of(up) if n.lower().startswith("x-ssl-client-")]
    assert got == [("X-SSL-Client-Verify", "SUCCESS"), ("X-SSL-Client-S-DN", "CN=alice,O=Example\\, Inc."),
                   ("X-SSL-Client-I-DN", "CN=root"), ("X-SSL-Client-Serial", "0A1B"),
                   ("X-SSL-Client-Fingerprint", "ab" * 20)]


def test_client_certificate_fields_under_configured_names(pools):
    """Server.client_cert_headers: other names, "" not sent; a client's field of a configured
    name is dropped even where the certificate says nothing of it."""
    sites = verifying(pools, VERIFY_ON)
    sites.default.set_client_cert_headers("Client-Verified", "Client-DN", "", "Client-Serial", "")
    ex = cert_exchange(sites, ALICE)
    status, up = ex.feed_request(head("GET / HTTP/1.1", "Host: www.example.com", "client-dn: CN=forged",
                                      "CLIENT-SERIAL: 01", "X-SSL-Client-I-DN: CN=forged", "Other: kept"))
    assert status == 0
    assert [(n, v) for n, v in headers_of(up) if n.lower().startswith(("client-", "x-ssl-", "other"))] == [
        ("Other", "kept"), ("Client-Verified", "SUCCESS"), ("Client-DN", "CN=alice,O=Example\\, Inc."),
        ("Client-Serial", "0A1B")]


@pytest.mark.parametrize("mode, cert, status, page", [
    (VERIFY_ON, None, 400, b"No required SSL certificate was sent"),
    (VERIFY_OPTIONAL, None, 0, None),
    (VERIFY_OPTIONAL, (X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, *ALICE[1:]), 400, b"The SSL certificate error"),
    (VERIFY_OPTIONAL_NO_CA, (X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, *ALICE[1:]), 0, None),
    (VERIFY_OPTIONAL_NO_CA, (X509_V_ERR_CERT_HAS_EXPIRED, *ALICE[1:]), 400, b"The SSL certificate error"),
])
def test_verify_client_verdicts_are_nginx_s(pools, mode, cert, status, page):
    ex = cert_exchange(verifying(pools, mode), cert)
    got, up = ex.feed_request(head("GET / HTTP/1.1", "Host: www.example.com"))
    assert got == status
    if page is not None:
        assert page in ex.error_page(400)
    else:
        verify = dict(headers_of(up))["X-SSL-Client-Verify"]
        assert verify == ("NONE" if cert is None else "FAILED:self-signed certificate")


@pytest.mark.parametrize("host, status", [("www.example.com", 0), ("WWW.example.com.:443", 0),
                                          ("other.example.com", 421), (None, 421)])
def test_a_host_other_than_sni_on_a_verifying_block_is_421(pools, host, status):
    """nginx's ngx_http_set_virtual_server: the certificate was asked for SNI's name."""
    ex = cert_exchange(verifying(pools, VERIFY_OPTIONAL), ALICE)
    lines = ["GET / HTTP/1.0"] + ([f"Host: {host}"] if host else [])
    assert ex.feed_request(head(*lines))[0] == status


UPGRADE_REQUEST = ("GET /chat HTTP/1.1", "Host: www.example.com", "Connection: keep-alive, Upgrade",
                   "Upgrade: websocket", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
SWITCHING = head("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
                 "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")


def test_upgrade_is_forwarded_and_a_101_switches(sites):
    """RFC 9110 §7.8: an HTTP/1.1 GET asking to upgrade keeps Upgrade and Connection: upgrade
    to the backend; its 101 reaches the client with them, and the backend is never reused."""
    ex = exchange(sites)
    status, up = ex.feed_request(head(*UPGRADE_REQUEST))
    assert status == 0 and ex.upgrade
    fields = headers_of(up)
    assert ("Upgrade", "websocket") in fields and ("Connection", "upgrade") in fields
    r, out = ex.feed_response(SWITCHING)
    assert r == R_FINAL and ex.switched
    assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert ("Upgrade", "websocket") in headers_of(out) and ("Connection", "Upgrade") in headers_of(out)
    v = ex.verdict
    assert v["response_mode"] == "until-close" and not v["backend_reusable"] and v["client_close"]


@pytest.mark.parametrize("lines", [
    ("POST /chat HTTP/1.1", "Host: www.example.com", "Connection: Upgrade", "Upgrade: websocket",
     "Content-Length: 0"),
    ("GET /chat HTTP/1.0", "Host: www.example.com", "Connection: Upgrade", "Upgrade: websocket"),
    ("GET /chat HTTP/1.1", "Host: www.example.com", "Upgrade: websocket"),          # no Connection: upgrade
    ("GET /chat HTTP/1.1", "Host: www.example.com", "Connection: Upgrade"),         # no Upgrade
    ("GET /chat HTTP/1.1", "Host: www.example.com", "Connection: Upgrade", "Upgrade: websocket",
     "Content-Length: 3"),
])
def test_no_upgrade_without_a_bodiless_http11_get_that_asks(sites, lines):
    ex = exchange(sites)
    status, up = ex.feed_request(head(*lines))
    assert status == 0 and not ex.upgrade
    assert b"upgrade" not in up.lower()
    assert ex.feed_response(SWITCHING) == (R_BAD, None)


def test_http2_request_does_not_upgrade(sites):
    ex = Exchange(ClientFacts("192.0.2.7", sites, None, http2=True))
    status, up = ex.feed_request(head(*UPGRADE_REQUEST))
    assert status == 0 and not ex.upgrade and b"upgrade" not in up.lower()


def test_other_status_to_an_upgrade_is_an_ordinary_response(sites):
    ex = exchange(sites)
    ex.feed_request(head(*UPGRADE_REQUEST))
    r, out = ex.feed_response(head("HTTP/1.1 400 Bad Request", "Content-Length: 2"))
    assert r == R_FINAL and not ex.switched and out.startswith(b"HTTP/1.1 400")
    assert ex.verdict["response_mode"] == "length"


def test_nginx_route_upgrades_only_when_its_templates_pass_upgrade(pools):
    """nginx: Upgrade reaches the backend only through proxy_set_header Upgrade $http_upgrade;
    the map form of Connection says upgrade, or close without an Upgrade field."""
    passing = RequestRewrite("1.1", [("Upgrade", [(HTTP_FIELD, b"upgrade")]),
                                     ("Connection", [(VARIABLES["connection_upgrade"], b"")])])
    plain = RequestRewrite("1.1", [("Connection", [(LITERAL, b"close")])])
    www = ServerPolicy("www", [("/ws/", pools["web"], passing), ("/", pools["web"], plain)])
    sites = SiteTable({"www.example.com": www}, www)
    ex = exchange(sites)
    status, up = ex.feed_request(head(*UPGRADE_REQUEST))
    assert status == 0 and not ex.upgrade and b"upgrade" not in up.lower()
    ex = exchange(sites)
    status, up = ex.feed_request(head(*UPGRADE_REQUEST).replace(b"/chat", b"/ws/chat"))
    assert status == 0 and ex.upgrade
    assert ("Upgrade", "websocket") in headers_of(up) and ("Connection", "upgrade") in headers_of(up)
    assert ex.feed_response(SWITCHING)[0] == R_FINAL and ex.switched
    ex = exchange(sites)
    status, up = ex.feed_request(head("GET /ws/x HTTP/1.1", "Host: www.example.com"))
    assert status == 0 and not ex.upgrade and ("Connection", "close") in headers_of(up)
