"""A route's RequestRewrite (model.ProxyRequest, the nginx front-end's proxy_set_header and
proxy_http_version), sans-IO: the head its backend gets, as nginx 1.22's proxy module
builds it (tests/differential compares the same against real nginx)."""

from __future__ import annotations

import pytest
from fastterm._core import ClientFacts, Exchange, ServerPolicy, SiteTable, UpstreamPool

from fastterm.config.model import Certificate, ProxyHeader, ProxyRequest, Server
from fastterm.config.plan import _rewrite, check_proxy_request, template_parts

R_FINAL = 0
SERVER = Server(listen=["127.0.0.1:443"], certificates=[Certificate(cert="x.pem")],
                server_names=["API.example.com", "*.example.com"])


def rewrite(*headers: tuple[str, str], version: str = "1.0", keepalive: bool = False, upstream: str = "notes"):
    return _rewrite(ProxyRequest(http_version=version, headers=[ProxyHeader(name=n, value=v) for n, v in headers],
                                 keepalive=keepalive), upstream, SERVER)


NGINX_DEFAULTS = (("Host", "$proxy_host"), ("Connection", "close"))


def exchange(rw, peer="192.0.2.7", **connection) -> Exchange:
    pool = UpstreamPool("notes", [("127.0.0.1", 1)])
    policy = ServerPolicy("api", [("/", pool, rw)])
    facts = ClientFacts(peer, SiteTable({"api.example.com": policy}, policy))
    facts.connection(**connection)
    return Exchange(facts)


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def sent(rw, raw: bytes, **kw) -> tuple[str, list[tuple[str, str]]]:
    status, out = exchange(rw, **kw).feed_request(raw)
    assert status == 0
    lines = out.decode("latin-1").split("\r\n")
    assert lines[-2:] == ["", ""]
    return lines[0], [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:-2]]


def test_nginx_defaults_http10_proxy_host_connection_close():
    line, fields = sent(rewrite(*NGINX_DEFAULTS), head("GET /a?b HTTP/1.1", "Host: API.example.com:8443",
                                                      "Connection: keep-alive", "User-Agent: t"))
    assert line == "GET /a?b HTTP/1.0"
    assert fields == [("Host", "notes"), ("Connection", "close"), ("User-Agent", "t")]


def test_client_fields_pass_as_nginx_passes_them():
    raw = head("POST /p HTTP/1.1", "Host: api.example.com", "X-Forwarded-For: 203.0.113.7", "X-Real-IP: 1.2.3.4",
               "Forwarded: for=x", "X_Underscore: u", "TE: trailers", "Keep-Alive: 5", "Upgrade: ws",
               "Connection: keep-alive, X-Hop", "X-Hop: h", "Content-Length: 3", "Cookie: a=1")
    _, fields = sent(rewrite(("X-Real-IP", "$remote_addr"), *NGINX_DEFAULTS), raw)
    assert fields == [("X-Real-IP", "192.0.2.7"), ("Host", "notes"), ("Connection", "close"),
                      ("Content-Length", "3"), ("X-Forwarded-For", "203.0.113.7"), ("Forwarded", "for=x"),
                      ("X-Hop", "h"), ("Cookie", "a=1")]


@pytest.mark.parametrize("target, host, want", [
    ("/x", "API.Example.COM:9999", "api.example.com"),
    ("/x", "[::1]:8443", "[::1]"),
    ("https://Other.Example.com:1/x", "api.example.com", "other.example.com"),
    ("/x", None, "api.example.com"),       # no Host (HTTP/1.0): the server's first name
])
def test_dollar_host(target, host, want):
    lines = [f"GET {target} HTTP/1.{0 if host is None else 1}"] + ([f"Host: {host}"] if host else [])
    _, fields = sent(rewrite(("Host", "$host"), ("Connection", "close")), head(*lines))
    assert fields[0] == ("Host", want)


def test_proxy_add_x_forwarded_for_joins_the_clients_fields():
    rw = rewrite(("X-Forwarded-For", "$proxy_add_x_forwarded_for"), *NGINX_DEFAULTS)
    _, fields = sent(rw, head("GET / HTTP/1.1", "Host: a", "X-Forwarded-For: 1.1.1.1", "X-Forwarded-For: 2.2.2.2"))
    assert fields[0] == ("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 192.0.2.7")
    assert [f for f in fields if f[0] == "X-Forwarded-For"] == [fields[0]]
    _, fields = sent(rw, head("GET / HTTP/1.1", "Host: a"))
    assert fields[0] == ("X-Forwarded-For", "192.0.2.7")


def test_variables_and_an_empty_value_removes_the_field():
    rw = rewrite(("X-All", "$scheme $server_name $proxy_host $request_method $request_uri $http_x_id"),
                 ("X-Conn", "$remote_addr:$remote_port $server_addr:$server_port $ssl_protocol $ssl_server_name"),
                 ("X-Absent", "$http_x_missing"), ("User-Agent", ""), ("Host", "$http_host"), version="1.1")
    line, fields = sent(rw, head("PUT /u?q=1 HTTP/1.1", "Host: h:1", "X-ID: 7", "User-Agent: gone"),
                        peer_port=5555, server_addr="127.0.0.1", server_port=443, ssl_protocol="TLSv1.3",
                        ssl_server_name="api.example.com")
    assert line == "PUT /u?q=1 HTTP/1.1"
    assert fields == [("X-All", "https API.example.com notes PUT /u?q=1 7"),
                      ("X-Conn", "192.0.2.7:5555 127.0.0.1:443 TLSv1.3 api.example.com"), ("Host", "h:1"),
                      ("X-ID", "7")]


def test_backend_reuse_only_with_keepalive():
    for rw, reusable in ((rewrite(*NGINX_DEFAULTS), False),
                         (rewrite(("Host", "$proxy_host"), ("Connection", ""), version="1.1", keepalive=True), True)):
        ex = exchange(rw)
        assert ex.feed_request(head("GET / HTTP/1.1", "Host: a"))[0] == 0
        assert ex.feed_response(head("HTTP/1.1 200 OK", "Content-Length: 0"))[0] == R_FINAL
        assert ex.verdict["backend_reusable"] is reusable


def test_a_rewritten_head_too_large_is_431_not_a_crash():
    rw = rewrite(*((f"X-Copy-{i}", "$http_x_big") for i in range(10)))
    status, out = exchange(rw).feed_request(head("GET / HTTP/1.1", "Host: a", "X-Big: " + "b" * 8000))
    assert (status, out) == (431, None)


@pytest.mark.parametrize("value, parts", [
    ("a$host-b", [("", "a"), ("host", ""), ("", "-b")]),
    ("${http_x_id}z", [("http_x_id", ""), ("", "z")]),
])
def test_template_parts(value, parts):
    assert template_parts(value) == parts


@pytest.mark.parametrize("name, value", [("X-Id", "$request_id"), ("Bad Name", "x"), ("Content-Length", "1"),
                                         ("X-Lone", "$"), ("X-Lone", "a $ b $host"), ("X-Wide", "\u20ac")])
def test_what_a_rewrite_refuses(name, value):
    with pytest.raises(ValueError):
        check_proxy_request(ProxyRequest(headers=[ProxyHeader(name=name, value=value)]))


def test_toml_round_trip_and_check(tmp_path):
    from fastterm.config.model import Config, Route, Upstream
    from fastterm.config.toml import dump_config, load_config
    from fastterm.errors import ConfigError

    proxy = ProxyRequest(http_version="1.1", headers=[ProxyHeader(name="Host", value="$host"),
                                                      ProxyHeader(name="Connection", value="")], keepalive=True)
    server = Server(listen=["127.0.0.1:8443"], certificates=[Certificate(cert=str(tmp_path / "x.pem"))],
                    routes=[Route(path="/", upstream="notes", proxy=proxy)])
    config = Config(servers=[server], upstreams=[Upstream(name="notes", servers=["127.0.0.1:81"])])
    path = tmp_path / "fastterm.toml"
    path.write_text(dump_config(config))
    assert load_config(str(path)) == config
    path.write_text(dump_config(config).replace('"$host"', '"$request_id"'))
    with pytest.raises(ConfigError, match=r"request_id"):
        load_config(str(path))


@pytest.mark.parametrize("peer, fields, want", [
    ("127.0.0.1", ("X-Forwarded-For: 203.0.113.7, 203.0.113.8", "X-Forwarded-For: 198.51.100.1 "), "198.51.100.1"),
    ("127.0.0.1", ("X-Forwarded-For: not-an-address",), "127.0.0.1"),
    ("192.0.2.7", ("X-Forwarded-For: 203.0.113.7",), "192.0.2.7"),     # not a trusted peer
])
def test_real_ip_from_rewrites_remote_addr(peer, fields, want):
    rw = _rewrite(ProxyRequest(headers=[ProxyHeader(name="X-Real-IP", value="$remote_addr")],
                               real_ip_from=["127.0.0.0/8"], real_ip_header="X-Forwarded-For"), "notes", SERVER)
    _, got = sent(rw, head("GET / HTTP/1.1", "Host: a", *fields), peer=peer)
    assert got[0] == ("X-Real-IP", want)


def test_expect_100_continue_is_answered_by_fastterm_not_forwarded():
    ex = exchange(rewrite(*NGINX_DEFAULTS))
    status, out = ex.feed_request(head("POST / HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 3"))
    assert status == 0 and b"expect" not in out.lower()
    assert ex.continue_client
    h2 = Exchange(ClientFacts("192.0.2.7", ex_sites(), None, True))
    status, out = h2.feed_request(head("POST / HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 3"))
    assert b"Expect: 100-continue" in out and not h2.continue_client


def ex_sites():
    pool = UpstreamPool("notes", [("127.0.0.1", 1)])
    policy = ServerPolicy("api", [("/", pool, rewrite(*NGINX_DEFAULTS))])
    return SiteTable({}, policy)
