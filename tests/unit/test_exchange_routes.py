"""The routing table, sans-IO: model Routes compiled by plan.py, request heads through the
Exchange. nginx's location order (exact, then the longest prefix, ^~ stopping the regex
search, regexes in order, else that prefix), the upstream URI part, body limits per route.
Each expectation is what nginx 1.22 does (the differential configs locations_regex,
proxy_pass_uri and body_limits_per_location compare the same against it)."""

from __future__ import annotations

import pytest
from fastterm._core import ClientFacts, Exchange, SiteTable, UpstreamPool

from fastterm.config import plan
from fastterm.config.model import Answer, Certificate, ProxyRequest, Route, Server
from fastterm.errors import ConfigError

NAMES = ("api", "static", "php", "images", "exact")


@pytest.fixture
def pools():
    return {name: UpstreamPool(name, [("127.0.0.1", i + 1)]) for i, name in enumerate(NAMES)}


def table(pools, routes, **server) -> SiteTable:
    block = Server(listen=["443"], certificates=[Certificate(cert="unused.pem")], server_names=["api.example.com"],
                   routes=routes, **server)
    policy = plan._server_policy(block, pools, 0)
    return SiteTable({"api.example.com": policy}, policy)


def send(sites, target, *fields, max_body=0):
    ex = Exchange(ClientFacts("192.0.2.7", sites))
    raw = "\r\n".join([f"POST {target} HTTP/1.1", "Host: api.example.com", *fields]) + "\r\n\r\n"
    status, up = ex.feed_request(raw.encode("latin-1"), max_body=max_body)
    return status, ex.verdict["upstream"], up.split(b"\r\n", 1)[0].decode("latin-1") if up else None


@pytest.fixture
def locations(pools):
    """locations_regex.conf's server as routes, in its order."""
    return table(pools, [
        Route(path="/", upstream="api"),
        Route(path="/static/", upstream="static"),
        Route(path="/assets/", upstream="static", no_regex=True),
        Route(path="/health", upstream="exact", exact=True),
        Route(path=r"\.php$", upstream="php", regex="~"),
        Route(path=r"\.(jpg|png)$", upstream="images", regex="~*"),
        Route(path=r"^/static/.*\.php$", upstream="api", regex="~"),   # after \.php$: never first
        Route(path="/static/deep/", upstream="static"),
    ])


@pytest.mark.parametrize("target, upstream", [
    ("/x.php", "php"),                      # a regex beats the only prefix, "/"
    ("/static/a.php", "php"),               # ... and a longer one; the first regex in order wins
    ("/static/deep/a.php", "php"),
    ("/assets/a.php", "static"),            # ^~ as the longest prefix: no regex is tried
    ("/assets/IMG.PNG", "static"),
    ("/IMG.PnG", "images"),                 # ~* is case-insensitive (ASCII)
    ("/img.PHP", "api"),                    # ~ is not
    ("/health", "exact"),                   # = beats every regex
    ("/health.php", "php"),
    ("/a%2Ephp", "php"),                    # regexes see the decoded path
    ("/x.php/../y.png", "images"),          # ... with dot segments resolved
    ("/x.php?y.png", "php"),                # ... and without the query
    ("/x.ph%70?q", "php"),
    ("/static/a.css", "static"),            # no regex matches: the longest prefix
    ("/static//deep/x", "static"),
    ("/other", "api"),
])
def test_nginx_location_order(locations, target, upstream):
    status, got, line = send(locations, target)
    assert (status, got) == (0, upstream)
    assert line == f"POST {target} HTTP/1.1"   # without a URI part the target goes as it came


def test_a_regex_route_alone_and_no_match_is_404(pools):
    sites = table(pools, [Route(path=r"^/api/(?<version>v\d+)/", upstream="api", regex="~")])
    assert send(sites, "/api/v2/users")[:2] == (0, "api")
    assert send(sites, "/api/vx/users")[0] == 404
    assert send(sites, "/API/v2/")[0] == 404


def test_slash_redirect_wins_over_regexes(pools):
    """nginx: /dir matching a location /dir/ only without its "/" answers 301 (NGX_DONE) before
    the regex locations are tried."""
    sites = table(pools, [Route(path="/dir/", upstream="api", slash_redirect=True),
                          Route(path=r"dir$", upstream="php", regex="~")])
    assert send(sites, "/dir")[0] == 301
    assert send(sites, "/xdir")[:2] == (0, "php")


@pytest.mark.parametrize("target, upstream_line", [
    ("/v1/users?x=1", "/api/v1/users?x=1"),
    ("/v1/a%20b?x=%20", "/api/v1/a%20b?x=%20"),              # decoded, re-escaped; the query as sent
    ("/v1/a%2Fb%3Fc%23d%25e", "/api/v1/a/b%3Fc%23d%25e"),    # %2F decoded stays "/"
    ("/v1/%7Euser/%41%2b", "/api/v1/~user/A+"),             # unreserved characters unescaped
    ("/v1/ctl%01%7F%FF", "/api/v1/ctl%01%7F%FF"),
    ("/v1/%22%3C%3E%7B%7D%7C%5C%5E%60%27%3B%3D%26%2C%40%21%24%2A%28%29%5B%5D",
     "/api/v1/%22%3C%3E%7B%7D%7C%5C%5E%60';=&,@!$*()[]"),  # nginx 1.22's NGX_ESCAPE_URI table
    ("/v1/a.b%20c", "/api/v1/a.b%20c"),
    ('/v1/a"b<c>', '/api/v1/a"b<c>'),                        # no %-escape: the path as it came
    ("/v1/x/../y/./z", "/api/v1/y/z"),                      # ... normalised
    ("/v1//double", "/api/v1/double"),
    ("/v1/x?", "/api/v1/x"),                                # an empty query is dropped
    ("/v1/", "/api/v1/"),
    ("/legacy", "/new"),
    ("/legacyx/y?z", "/newx/y?z"),
    ("/root/a%20b/../c", "/c"),
    ("/exact", "/exact-target"),
    ("/exact?q=1", "/exact-target?q=1"),
    ("https://api.example.com/v1/abs", "/api/v1/abs"),
])
def test_upstream_path_replaces_the_matched_prefix(pools, target, upstream_line):
    sites = table(pools, [Route(path="/", upstream="api"),
                          Route(path="/v1/", upstream="api", upstream_path="/api/v1/"),
                          Route(path="/legacy", upstream="api", upstream_path="/new"),
                          Route(path="/root/", upstream="api", upstream_path="/"),
                          Route(path="/exact", upstream="exact", exact=True, upstream_path="/exact-target")])
    status, _, line = send(sites, target)
    assert (status, line) == (0, f"POST {upstream_line} HTTP/1.1")


def test_upstream_path_keeps_request_uri_the_clients(pools):
    from fastterm.config.model import ProxyHeader, ProxyRequest

    proxy = ProxyRequest(headers=[ProxyHeader(name="X-Original", value="$request_uri")])
    sites = table(pools, [Route(path="/v1/", upstream="api", upstream_path="/api/", proxy=proxy)])
    ex = Exchange(ClientFacts("192.0.2.7", sites))
    status, up = ex.feed_request(b"GET /v1/a%20b?q HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
    assert status == 0
    assert up.startswith(b"GET /api/a%20b?q HTTP/1.0\r\nX-Original: /v1/a%20b?q\r\n")


@pytest.mark.parametrize("target, length, status", [
    ("/small", 1024, 0), ("/small", 1025, 413),             # the server's 1k
    ("/upload/x", 5000, 0), ("/upload/x", 10 * 1024 + 1, 413),
    ("/stream/x", 1 << 30, 0),                              # 0: no limit
    ("/upload/%2e%2e/x", 5000, 413),                        # the normalised path's route decides
    ("/a.bin", 4096, 0), ("/a.bin", 4097, 413),             # a regex route's own
    ("/upload/a.bin", 4097, 413),
    ("/upload", 5000, 301),                                 # the /upload/ route answers its redirect
    ("/upload", 20000, 413),
])
def test_body_limit_of_the_route_that_answers(pools, target, length, status):
    sites = table(pools, [Route(path="/", upstream="api"),
                          Route(path="/upload/", upstream="api", slash_redirect=True, client_max_body_size=10240),
                          Route(path="/stream/", upstream="api", client_max_body_size=0),
                          Route(path=r"\.bin$", upstream="api", regex="~", client_max_body_size=4096)],
                  client_max_body_size=1024)
    assert send(sites, target, f"Content-Length: {length}", max_body=1 << 20)[0] == status


def test_body_limit_falls_back_to_the_global_one(pools):
    sites = table(pools, [Route(path="/", upstream="api")])
    assert send(sites, "/x", "Content-Length: 2000", max_body=1000)[0] == 413
    assert send(sites, "/x", "Content-Length: 1000", max_body=1000)[0] == 0
    ex = Exchange(ClientFacts("192.0.2.7", sites))
    ex.feed_request(b"POST /x HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n", max_body=77)
    assert ex.max_body == 77   # what the codec counts a chunked body against


def test_the_routes_limit_is_what_a_chunked_body_is_counted_against(pools):
    sites = table(pools, [Route(path="/", upstream="api"), Route(path="/up/", upstream="api", client_max_body_size=0)],
                  client_max_body_size=10)
    for target, limit in (("/up/x", 0), ("/x", 10)):
        ex = Exchange(ClientFacts("192.0.2.7", sites))
        raw = f"POST {target} HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        assert ex.feed_request(raw.encode(), max_body=1 << 20)[0] == 0
        assert ex.max_body == limit


def test_the_routes_limit_decides_whether_a_chunked_body_is_read_whole(pools):
    """nginx's proxy_request_buffering in memory: bounded by the answering route's limit (its
    own, a regex route's too, else the server's), streamed chunked where that limit is 0."""
    proxy = ProxyRequest()
    sites = table(pools, [Route(path="/", upstream="api", proxy=proxy),
                          Route(path="/up/", upstream="api", proxy=proxy, client_max_body_size=0),
                          Route(path=r"\.bin$", upstream="api", proxy=proxy, regex="~", client_max_body_size=4096)],
                  client_max_body_size=0)
    for target, buffered, limit in (("/x", False, 0), ("/up/x", False, 0), ("/up/a.bin", True, 4096)):
        ex = Exchange(ClientFacts("192.0.2.7", sites))
        raw = f"POST {target} HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        status, up = ex.feed_request(raw.encode(), max_body=1 << 20)
        assert (status, ex.buffer_body, ex.max_body) == (0, buffered, limit), target
        assert (b"Transfer-Encoding: chunked" in up) != buffered


def test_returns_in_regex_and_exact_routes_keep_nginx_s_location_order(pools):
    """A route that answers (nginx location { return }) is matched as any other: exact, the
    longest prefix (^~ stopping the regexes), the regexes in order; its client_max_body_size
    is checked before its return (nginx's find-config phase runs before the rewrite phase)."""
    sites = table(pools, [Route(path="/", upstream="api"),
                          Route(path="/assets/", upstream="static", no_regex=True),
                          Route(path="/health", exact=True, answer=Answer(status=200, text="healthy\n")),
                          Route(path=r"\.php$", regex="~", answer=Answer(status=403), client_max_body_size=10),
                          Route(path=r"\.(jpg|png)$", upstream="images", regex="~*")],
                  client_max_body_size=0)
    for target, length, status, upstream in (
            ("/index.php", 0, 403, None), ("/a/b.php", 10, 403, None), ("/a/b.php", 11, 413, None),
            ("/assets/x.php", 0, 0, "static"), ("/health", 0, 200, None), ("/health.php", 0, 403, None),
            ("/IMG.JPG", 0, 0, "images"), ("/x.phpx", 0, 0, "api")):
        ex = Exchange(ClientFacts("192.0.2.7", sites))
        raw = f"POST {target} HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: {length}\r\n\r\n"
        got, _ = ex.feed_request(raw.encode())
        assert (got, ex.verdict["upstream"], ex.answering) == (status, upstream, status in (200, 403)), target


@pytest.mark.parametrize("pattern, python", [
    (r"^/(?<id>\d+)$", r"^/(?P<id>\d+)$"), (r"a\z", r"a\Z"), (r"(?<=x)y(?<!z)", r"(?<=x)y(?<!z)"),
    (r"[]a]+", r"[]a]+"), (r"[\]\\]", r"[\]\\]"), (r"a++b(?>c)", r"a++b(?>c)"), ("(?i)^/a", "(?i)^/a"),
    ("(?s-i:a.)b", "(?s-i:a.)b")])
def test_pcre_patterns_python_reads_the_same(pattern, python):
    assert plan.pcre_to_python(pattern) == python
    plan.location_regex(pattern, False)


def test_possessive_and_atomic_groups_behave_as_pcre():
    assert plan.location_regex(r"^/a++a", False).search(b"/aaa") is None
    assert plan.location_regex(r"^/(?>a+)b", False).search(b"/aab") is not None
    assert plan.location_regex(r"^/\w+\.jpg$", True).search(b"/ab.JPG") is not None
    assert plan.location_regex(r"^/\w+\.jpg$", True).search("/é.jpg".encode()) is None   # PCRE without UTF


@pytest.mark.parametrize("route, why", [
    (Route(path=r"^/a", upstream="api", regex="~", upstream_path="/b/"), "cannot have an upstream_path"),
    (Route(path=r"^/a", upstream="api", regex="~", exact=True), "neither exact"),
    (Route(path="^/(a", upstream="api", regex="~"), "does not compile"),
    (Route(path=r"\Qa\E", upstream="api", regex="~"), r"\Q"),
    (Route(path="a", upstream="api"), "must start with '/'"),
    (Route(path="/a", upstream="api", upstream_path="b"), "upstream_path"),
    (Route(path="/a", upstream="api", upstream_path="/b?c"), "upstream_path"),
    (Route(path="/a", upstream="api", client_max_body_size=-1), "client_max_body_size"),
])
def test_routes_plan_refuses(pools, route, why):
    with pytest.raises(ConfigError) as info:
        table(pools, [route])
    assert why in str(info.value)


def test_server_names_in_nginx_order(pools):
    """server_name_regex.conf's blocks: exact, the longest *.suffix, the longest prefix.*, then
    the regexes in config order; a regex with an upper-case letter is caseless (as nginx)."""
    def block(name):
        return plan._server_policy(Server(listen=["443"], certificates=[Certificate(cert="x")], server_names=[name],
                                          routes=[Route(path="/", upstream="api")]), pools, 0)

    exact, regex, tail, tail_long, head, upper = (block(n) for n in ("exact", "regex", "tail", "tail2", "head", "up"))
    names = {"api.example.com": exact, "app.example.*": tail, "app.example.co.*": tail_long, "*.b.example.com": head}
    patterns = [(plan.server_name_regex(r"~^(?<sub>[a-z]+)\.example\.com$"), regex),
                (plan.server_name_regex(r"~^app\d*\."), regex), (plan.server_name_regex(r"~^www\."), tail),
                (plan.server_name_regex(r"~UPPER\.test$"), upper)]
    sites = SiteTable(names, exact, False, patterns)
    for host, chosen in (("foo.example.com", regex), ("app.example.com", tail), ("app.example.org", tail),
                         ("app.example.co.uk", tail_long), ("app.example.co", tail), ("app7.x.test", regex),
                         ("www.example.com", regex), ("www.other.test", tail), ("app.b.example.com", head),
                         ("API.EXAMPLE.COM", exact), ("thing.upper.test", upper), ("nomatch.test", exact),
                         ("app.example", regex), ("app.example.com.", tail), ("example", exact)):
        assert sites.select(host) is chosen, host


@pytest.mark.parametrize("name, ok", [("www.example.*", True), ("*.example.com", True), ("~^a", True),
                                      ("a.*.com", False), ("*", False), ("*.", False), ("w*.example.com", False),
                                      ("~^(a", False), ("~a\\Rb", False), ("", False), ("~^é", False)])
def test_server_name_forms(name, ok):
    if ok:
        plan.check_server_name(name)
    else:
        with pytest.raises(ValueError):
            plan.check_server_name(name)


def test_a_regex_route_with_a_rewrite_asks_for_the_connections_facts(pools):
    """$server_port and friends read the connection: a server whose only proxying route is a
    regex one must have them set."""
    from fastterm.config.model import ProxyHeader, ProxyRequest

    proxy = ProxyRequest(headers=[ProxyHeader(name="X-Port", value="$server_port")])
    assert table(pools, [Route(path=r"^/", upstream="api", regex="~", proxy=proxy)]).connection_facts
    assert not table(pools, [Route(path=r"^/", upstream="api", regex="~")]).connection_facts
