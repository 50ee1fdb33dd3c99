"""nginx's proxy_hide_header / proxy_pass_header: which backend response fields reach the
client, from nginx.conf to the model (nginx's defaults and inheritance) and through the
exchange (tests/differential/configs/proxy_hide_header.conf compares the same with nginx)."""

from __future__ import annotations

import pytest
from fastterm._core import ClientFacts, Exchange, ServerPolicy, SiteTable, UpstreamPool

from fastterm.config.model import Certificate, ProxyRequest, Server
from fastterm.config.nginx import load_config
from fastterm.config.plan import _rewrite, check_proxy_request
from fastterm.config.toml import dump_config
from fastterm.config.toml import load_config as load_toml

NGINX_HIDDEN = ["Server", "X-Pad", "X-Accel-Expires", "X-Accel-Redirect", "X-Accel-Limit-Rate",
                "X-Accel-Buffering", "X-Accel-Charset"]


def nginx_conf(server: str = "", location: str = "", other: str = "") -> str:
    return f"""\
upstream notes {{ server 127.0.0.1:8081; }}
server {{
    listen 443 ssl;
    server_name www.example.com;
    ssl_certificate certs/ec.crt;
    ssl_certificate_key certs/ec.key;
{server}
    location / {{
        proxy_pass http://notes;
{location}
    }}
{other}
}}
"""


@pytest.fixture
def hidden(write, ec_files):
    """``hidden(text)`` -> {route path: its hide_headers}."""
    def _hidden(text: str) -> dict[str, list[str]]:
        config = load_config(write("nginx.conf", text), lambda *a, **k: None)
        return {r.path: r.proxy.hide_headers for r in config.servers[0].routes}
    return _hidden


def test_nginx_hides_server_x_pad_and_x_accel_by_default(hidden):
    assert hidden(nginx_conf())["/"] == NGINX_HIDDEN


def test_proxy_hide_header_adds_and_a_level_with_its_own_lines_loses_the_parents(hidden):
    got = hidden(nginx_conf(server="    proxy_hide_header X-Powered-By;\n    proxy_hide_header X-Internal;",
                            other="    location /own/ { proxy_hide_header X-Debug; proxy_pass http://notes; }"))
    assert got["/"] == NGINX_HIDDEN + ["X-Powered-By", "X-Internal"]
    assert got["/own/"] == NGINX_HIDDEN + ["X-Debug"]


def test_proxy_pass_header_unhides_and_inherits_apart_from_proxy_hide_header(hidden):
    got = hidden(nginx_conf(server="    proxy_hide_header X-Internal;\n    proxy_pass_header server;",
                            location="        proxy_pass_header X-Accel-Buffering;",
                            other="    location /b/ { proxy_hide_header X-B; proxy_pass http://notes; }"))
    # "/" has its own proxy_pass_header: the server's (Server) is not inherited, its hide list is
    assert got["/"] == [n for n in NGINX_HIDDEN if n != "X-Accel-Buffering"] + ["X-Internal"]
    assert got["/b/"] == [n for n in NGINX_HIDDEN if n != "Server"] + ["X-B"]


def test_date_always_passes_and_a_name_that_is_no_token_never_matches(hidden):
    got = hidden(nginx_conf(location='        proxy_hide_header Date;\n        proxy_hide_header "X Bad";'))
    assert got["/"] == NGINX_HIDDEN


def test_check_maps_them_without_a_warning(write, ec_files):
    warnings = []
    load_config(write("nginx.conf", nginx_conf(server="    proxy_hide_header X-A;\n    proxy_pass_header X-Pad;")),
                lambda m, level="warn": warnings.append(m))
    assert not [m for m in warnings if "proxy_" in m]


def test_convert_round_trip(write, ec_files):
    config = load_config(write("nginx.conf", nginx_conf(server="    proxy_hide_header X-A;")), lambda *a, **k: None)
    text = dump_config(config)
    assert "hide_headers" in text
    assert load_toml(write("converted/fastterm.toml", text)) == config


def test_a_bad_name_in_toml_hide_headers_is_refused():
    with pytest.raises(ValueError, match="hide_headers"):
        check_proxy_request(ProxyRequest(hide_headers=["X Bad"]))


SERVER = Server(listen=["127.0.0.1:443"], certificates=[Certificate(cert="x.pem")], server_names=["api.example.com"])


def client_head(hide: list[str], response: bytes, http2: bool = False) -> list[str]:
    rw = _rewrite(ProxyRequest(hide_headers=hide), "notes", SERVER)
    policy = ServerPolicy("api", [("/", UpstreamPool("notes", [("127.0.0.1", 1)]), rw)])
    facts = ClientFacts("192.0.2.7", SiteTable({"api.example.com": policy}, policy), http2=http2)
    facts.connection()
    ex = Exchange(facts)
    assert ex.feed_request(b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n")[0] == 0
    status, out = ex.feed_response(response)
    assert status == 0
    return out.decode("latin-1").split("\r\n")


@pytest.mark.parametrize("http2", [False, True])
def test_the_exchange_drops_hidden_fields_caselessly_and_keeps_the_rest(http2):
    response = (b"HTTP/1.1 200 OK\r\nserver: backend/1.0\r\nDate: Wed, 02 Dec 2026 04:00:00 GMT\r\n"
                b"X-Pad: avoid browser bug\r\nX-ACCEL-BUFFERING: no\r\nX-Accel-Buffering-Not: kept\r\n"
                b"X-Internal: 1\r\nX-Internal: 2\r\nContent-Length: 0\r\nX-Kept: yes\r\n\r\n")
    lines = client_head(NGINX_HIDDEN + ["x-internal"], response, http2)
    assert lines[0] == "HTTP/1.1 200 OK"
    assert lines[1:-2] == ["Date: Wed, 02 Dec 2026 04:00:00 GMT", "X-Accel-Buffering-Not: kept",
                           "Content-Length: 0", "X-Kept: yes"]


def test_without_hide_headers_every_field_passes():
    lines = client_head([], b"HTTP/1.1 200 OK\r\nServer: b\r\nX-Pad: p\r\nContent-Length: 0\r\n\r\n")
    assert lines[1:-2] == ["Server: b", "X-Pad: p", "Content-Length: 0"]


# ---- proxy_next_upstream ----------------------------------------------------------------------

@pytest.fixture
def retries(write, ec_files):
    """``retries(text)`` -> {route path: (next_upstream, next_upstream_tries, next_upstream_timeout)}."""
    def _retries(text: str):
        config = load_config(write("nginx.conf", text), lambda *a, **k: None)
        return {r.path: (r.proxy.next_upstream, r.proxy.next_upstream_tries, r.proxy.next_upstream_timeout)
                for r in config.servers[0].routes}
    return _retries


def test_next_upstream_defaults_to_error_timeout_and_inherits(retries):
    assert retries(nginx_conf())["/"] == (["error", "timeout"], 0, 0.0)
    got = retries(nginx_conf(server="    proxy_next_upstream error HTTP_502 non_idempotent;\n"
                                    "    proxy_next_upstream_tries 2;\n    proxy_next_upstream_timeout 5s;",
                             other="    location /own/ { proxy_next_upstream http_404; proxy_pass http://notes; }"))
    assert got["/"] == (["error", "http_502", "non_idempotent"], 2, 5.0)
    assert got["/own/"] == (["http_404"], 2, 5.0)


def test_next_upstream_off_wins_over_the_other_words(retries):
    assert retries(nginx_conf(location="        proxy_next_upstream error off;"))["/"][0] == []


def test_next_upstream_bad_values(write, ec_files):
    from fastterm.errors import ConfigError

    for line, message in (("proxy_next_upstream http_418;", 'invalid value "http_418"'),
                          ("proxy_next_upstream error invalid_header;", "proxy_next_upstream invalid_header"),
                          ("proxy_next_upstream_tries many;", "many")):
        path = write("nginx.conf", nginx_conf(location=f"        {line}"))
        with pytest.raises(ConfigError, match=message) as info:
            load_config(path)
        assert info.value.line == 10, str(info.value)


def test_toml_next_upstream_words_are_checked():
    check_proxy_request(ProxyRequest(next_upstream=["error", "http_503", "non_idempotent"]))
    with pytest.raises(ValueError, match="next_upstream"):
        check_proxy_request(ProxyRequest(next_upstream=["invalid_header"]))
    with pytest.raises(ValueError, match="0 or more"):
        check_proxy_request(ProxyRequest(next_upstream_tries=-1))


# ---- keepalive_time -----------------------------------------------------------------------------

def test_keepalive_time_maps_to_the_limits_with_nginx_s_default(write, ec_files):
    from fastterm.config.model import Limits

    def limits(server: str = "", other: str = ""):
        return load_config(write("nginx.conf", nginx_conf(server=server, other=other)), lambda *a, **k: None).limits

    assert Limits().keepalive_time == 0.0       # fastterm.toml: no lifetime unless set
    assert limits().keepalive_time == 3600.0    # nginx's 1h
    assert limits(server="    keepalive_time 90s;").keepalive_time == 90.0
    from fastterm.errors import ConfigError
    with pytest.raises(ConfigError, match="keepalive_time"):
        limits(server="    keepalive_time 90s;",
               other="    location /b/ { keepalive_time 5s; proxy_pass http://notes; }")


def test_client_body_timeout_maps_to_the_limits_proxy_send_timeout_to_the_route(write, ec_files):
    from fastterm.config.model import Limits

    def config(server: str = ""):
        return load_config(write("nginx.conf", nginx_conf(server=server)), lambda *a, **k: None)

    assert (Limits().client_body_timeout, Limits().backend_send_timeout) == (None, None)  # toml: the read timeout
    assert (config().limits.client_body_timeout, config().limits.backend_send_timeout) == (60.0, 60.0)  # nginx's
    got = config("    client_body_timeout 5s;\n    proxy_send_timeout 2m;")
    assert (got.limits.client_body_timeout, got.servers[0].routes[0].send_timeout) == (5.0, 120.0)
