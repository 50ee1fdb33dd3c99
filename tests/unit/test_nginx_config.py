"""nginx.conf -> Config (fastterm/config/nginx.py): each mapped directive, inheritance, the
warnings, every error kind with its file:line, includes, and the convert round trip."""

from __future__ import annotations

import grp
import os

import pytest

from fastterm.config import ConfigSource
from fastterm.config.model import (
    INTERMEDIATE_CIPHERS,
    INTERMEDIATE_GROUPS,
    AddHeader,
    Answer,
    ErrorPage,
    Limits,
)
from fastterm.config.nginx import OPENSSL_CIPHERSUITES, Node, load_config, parse_size, parse_time
from fastterm.config.toml import dump_config
from fastterm.config.toml import load_config as load_toml
from fastterm.errors import ConfigError


def site(server: str = "", location: str = "", http: str = "", extra: str = "", listen: str = "443 ssl") -> str:
    """One TLS server proxying / to upstream notes, with lines added at each level."""
    return f"""\
{http}
upstream notes {{
    server 127.0.0.1:8081;
}}
server {{
    listen {listen};
    server_name www.example.com;
    ssl_certificate certs/ec.crt;
    ssl_certificate_key certs/ec.key;
{server}
    location / {{
        proxy_pass http://notes;
{location}
    }}
}}
{extra}
"""


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


class Loaded:
    def __init__(self, config, warnings):
        self.config = config
        self.warnings = warnings          # [(level, message)]
        self.server = config.servers[0]

    def warned(self, needle: str, level: str = "warn") -> bool:
        return any(needle in m and lv == level for lv, m in self.warnings)


@pytest.fixture
def load(write, ec_files):
    def _load(text: str, name: str = "nginx.conf") -> Loaded:
        warnings: list[tuple[str, str]] = []
        config = load_config(write(name, text), lambda m, level="warn": warnings.append((level, m)))
        return Loaded(config, warnings)

    return _load


@pytest.fixture
def error(write, ec_files, tmp_path):
    """``error(text, needle)`` -> the ConfigError, checked to sit at the line holding ``needle``."""

    def _error(text: str, needle: str | None = None, name: str = "nginx.conf", occurrence: int = 1) -> ConfigError:
        path = write(name, text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        err = info.value
        if needle is not None:
            line = line_of(text, needle, occurrence)
            assert (err.file, err.line) == (path, line), str(err)
            assert str(err).startswith(f"{path}:{line}: "), str(err)
        assert "\n" not in str(err)
        return err

    return _error


# ---- the seed's shape --------------------------------------------------------------------------

SEED = """\
upstream notes {
    server 127.0.0.1:8081;
}
server {
listen 443 ssl;
server_name api.example.com;
ssl_certificate certs/ec.crt;
ssl_certificate_key certs/ec.key;
ssl_protocols TLSv1.2 TLSv1.3;
ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES128-GCM-SHA256;
ssl_prefer_server_ciphers off;
ssl_session_timeout 1d;
ssl_session_cache shared:SSL:10m;
ssl_session_tickets off;
add_header Strict-Transport-Security "max-age=63072000" always;
location / {
proxy_pass http://notes;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header X-Real-IP $remote_addr;
}
}
server {
listen 80;
server_name api.example.com;
return 301 https://$host$request_uri;
}
"""


def test_seed_config_maps_onto_the_model(load, tmp_path):
    got = load(SEED)
    config, server = got.config, got.server
    assert server.listen == ["0.0.0.0:443"]
    assert server.server_names == ["api.example.com"]
    assert [(c.cert, c.key) for c in server.certificates] == [
        (str(tmp_path / "certs/ec.crt"), str(tmp_path / "certs/ec.key"))]
    assert server.hsts is None
    assert server.add_headers == [AddHeader(name="Strict-Transport-Security", value="max-age=63072000", always=True)]
    assert [(r.path, r.upstream, r.add_headers) for r in server.routes] == [("/", "notes", None)]
    assert server.trusted_proxies == []
    tls = server.tls
    assert tls.protocols == ["TLSv1.2", "TLSv1.3"]
    assert tls.ciphers.endswith("DHE-RSA-AES128-GCM-SHA256")
    assert tls.prefer_server_ciphers is False
    assert tls.session_timeout == 86400.0
    assert tls.session_cache is True and tls.session_tickets is False
    assert tls.alpn == ["http/1.1"]
    assert config.sessions.cache_size == 10 << 20
    assert [(u.name, u.servers, u.tries, u.max_conns) for u in config.upstreams] == [
        ("notes", ["127.0.0.1:8081"], 1, 0)]
    assert [(r.listen, r.server_names, r.status, r.location, r.keepalive_requests) for r in config.redirects] == [
        (["0.0.0.0:80"], ["api.example.com"], 301, "https://$host$request_uri", 1000)]
    assert config.workers == 1
    assert got.warnings == []


def test_nginx_defaults_where_the_config_says_nothing(load):
    got = load(site())
    tls = got.server.tls
    assert tls.protocols == ["TLSv1.2", "TLSv1.3"]      # documented: not 1.22's TLSv1 TLSv1.1 TLSv1.2
    assert tls.ciphers == INTERMEDIATE_CIPHERS           # documented: not HIGH:!aNULL:!MD5
    assert tls.groups == INTERMEDIATE_GROUPS
    assert tls.ciphersuites == OPENSSL_CIPHERSUITES      # nginx leaves OpenSSL's order
    assert tls.prefer_server_ciphers is False            # nginx's default
    assert tls.session_cache is False                    # ssl_session_cache none
    assert tls.session_timeout == 300.0 and tls.session_tickets is True
    assert got.server.hsts is None and got.server.add_headers == []
    limits = got.config.limits
    assert limits.client_max_body_size == 1 << 20
    assert limits.client_header_timeout == 60.0
    assert limits.keepalive_timeout == 75.0
    assert limits.send_timeout == 60.0
    assert limits.backend_connect_timeout == 60.0 and limits.backend_read_timeout == 60.0
    assert (limits.header_buffer_size, limits.header_line_size) == (4 * 8192, 8192)   # nginx's statuses
    assert limits.http2_max_concurrent_streams == 128 and limits.http2_max_requests == 1000
    assert limits.keepalive_requests == 1000      # HTTP/1.1 too
    assert limits.max_header_fields == 256        # nginx counts bytes, not fields
    assert limits.underscores_in_headers is False
    assert limits.worker_connections == Limits().worker_connections
    assert limits.drain_timeout == Limits().drain_timeout


# ---- TLS directives ---------------------------------------------------------------------------------

def test_tls_directives(load, tmp_path, write):
    write("keys/ticket.key", os.urandom(80))
    got = load(site(server="""
    ssl_protocols TLSv1.3;
    ssl_ciphers ECDHE-ECDSA-AES256-GCM-SHA384;
    ssl_prefer_server_ciphers on;
    ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;
    ssl_ecdh_curve X25519:prime256v1;
    ssl_session_cache shared:one:20m;
    ssl_session_timeout 10m;
    ssl_session_tickets on;
    ssl_session_ticket_key keys/ticket.key;
    http2 on;
"""))
    tls = got.server.tls
    assert tls.protocols == ["TLSv1.3"]
    assert tls.ciphers == "ECDHE-ECDSA-AES256-GCM-SHA384"
    assert tls.prefer_server_ciphers is True
    assert tls.ciphersuites == "TLS_AES_128_GCM_SHA256"
    assert tls.groups == "X25519:prime256v1"
    assert tls.session_cache is True and tls.session_timeout == 600.0 and tls.session_tickets is True
    assert tls.alpn == ["h2", "http/1.1"]
    assert got.config.sessions.cache_size == 20 << 20
    assert got.config.sessions.ticket_key_file == [str(tmp_path / "keys/ticket.key")]


def test_deprecated_protocols_are_dropped_with_a_warning(load):
    got = load(site(server="    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;"))
    assert got.server.tls.protocols == ["TLSv1.2", "TLSv1.3"]
    assert got.warned('"ssl_protocols TLSv1" is ignored') and got.warned('"ssl_protocols TLSv1.1" is ignored')


def test_protocols_leaving_nothing_is_an_error(error):
    text = site(server="    ssl_protocols TLSv1 TLSv1.1;")
    assert "no protocol fastterm serves" in str(error(text, "ssl_protocols"))


@pytest.mark.parametrize("value, expected", [("off", False), ("none", False), ("shared:SSL:1m", True)])
def test_session_cache_values(load, value, expected):
    assert load(site(server=f"    ssl_session_cache {value};")).server.tls.session_cache is expected


def test_auto_curve_and_http2_listen(load):
    got = load(site(server="    ssl_ecdh_curve auto;", listen="443 ssl http2"))
    assert got.server.tls.groups == INTERMEDIATE_GROUPS
    assert got.server.tls.alpn == ["h2", "http/1.1"]


def test_other_conf_commands_are_not_supported(error):
    text = site(server="    ssl_conf_command Options PrioritizeChaCha;")
    assert '"ssl_conf_command Options" is not supported yet' in str(error(text, "ssl_conf_command"))


def test_several_certificates(load, write, rsa_www_leaf, intermediate, tmp_path):
    write("certs/rsa.crt", rsa_www_leaf.cert_pem + intermediate.cert_pem)
    write("certs/rsa.key", rsa_www_leaf.key_pem)
    got = load(site(server="    ssl_certificate certs/rsa.crt;\n    ssl_certificate_key certs/rsa.key;"))
    assert [os.path.basename(c.cert) for c in got.server.certificates] == ["ec.crt", "rsa.crt"]
    assert [os.path.basename(c.key) for c in got.server.certificates] == ["ec.key", "rsa.key"]


def test_certificates_inherit_from_http_unless_the_server_has_its_own(load):
    text = """\
http {
    ssl_certificate certs/ec.crt;
    ssl_certificate_key certs/ec.key;
    ssl_protocols TLSv1.3;
    server {
        listen 443 ssl;
        server_name a.example.com;
        location / { proxy_pass http://127.0.0.1:8081; }
    }
    server {
        listen 443 ssl;
        server_name b.example.com;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { proxy_pass http://127.0.0.1:8081; }
    }
}
"""
    got = load(text)
    a, b = got.config.servers
    assert a.certificates == b.certificates and len(a.certificates) == 1
    assert a.tls.protocols == ["TLSv1.3"]
    # b is not the default server of 0.0.0.0:443: in nginx its ssl_protocols have no effect.
    assert b.tls.protocols == ["TLSv1.3"]
    assert got.warned('"ssl_protocols" of a server that is not the default of its address has no effect')
    assert [u.name for u in got.config.upstreams] == ["127.0.0.1:8081"]


def test_missing_certificate_file_is_located(error, tmp_path):
    text = site().replace("certs/ec.crt", "certs/absent.crt")
    err = error(text, "certs/absent.crt")
    assert "absent.crt" in str(err) and "No such file" in str(err)


def test_ssl_dhparam_maps_to_the_policy(load, write, tmp_path, dhparam_pem):
    write("dhparam.pem", dhparam_pem)
    got = load(site(http="ssl_dhparam dhparam.pem;"))
    assert got.server.tls.dhparam == str(tmp_path / "dhparam.pem")   # against the conf prefix
    assert load(site()).server.tls.dhparam is None   # nginx: no DHE suites then


@pytest.mark.parametrize(("content", "reason"), [
    (None, "No such file"), (b"not parameters", "no DH parameters"),
], ids=["missing", "bad"])
def test_bad_ssl_dhparam_is_located(error, write, content, reason):
    if content is not None:
        write("dhparam.pem", content)
    err = error(site(server="    ssl_dhparam dhparam.pem;"), "ssl_dhparam")
    assert "dhparam.pem" in str(err) and reason in str(err)


def test_mismatched_key_is_located(error, write, rsa_leaf):
    write("certs/other.key", rsa_leaf.key_pem)
    text = site().replace("certs/ec.key", "certs/other.key")
    assert "does not match" in str(error(text, "ssl_certificate certs/ec.crt"))


def test_server_without_certificate(error):
    text = site().replace("    ssl_certificate certs/ec.crt;\n", "")
    assert 'no "ssl_certificate" is defined' in str(error(text, "listen 443 ssl"))


# ---- listen and server_name ---------------------------------------------------------------------------------

def test_listen_forms(load):
    text = site(server="""
    listen [::]:443 ssl;
    listen 127.0.0.1:8443 ssl default_server reuseport;
    listen *:9443 ssl;
""")
    got = load(text)
    assert got.server.listen == ["0.0.0.0:443", "[::]:443", "127.0.0.1:8443", "0.0.0.0:9443"]
    assert got.server.default_server is True
    assert got.warnings == []


def test_listen_parameters_without_effect_warn_and_unknown_ones_fail(load, error):
    assert load(site(listen="443 ssl deferred backlog=511")).warned('"listen ... deferred" is ignored')
    assert '"listen ... proxy_protocol" is not supported yet' in str(
        error(site(listen="443 ssl proxy_protocol"), "listen 443"))
    assert 'invalid parameter "sll"' in str(error(site(listen="443 sll"), "listen 443"))


def test_server_names(load):
    got = load(site().replace("server_name www.example.com;",
                              "server_name www.example.com *.api.example.com .example.org _;"))
    assert got.server.server_names == ["www.example.com", "*.api.example.com", "example.org", "*.example.org", "_"]


def test_regex_and_suffix_wildcard_server_names_map_as_written(load):
    text = site().replace("server_name www.example.com;", r"server_name ~^(?<n>WWW\d+)\.example\.com$ www.example.*;")
    assert load(text).server.server_names == [r"~^(?<n>WWW\d+)\.example\.com$", "www.example.*"]


@pytest.mark.parametrize("name, why", [(r"~^www\R", "is not supported yet"), ("~^(www", "does not compile"),
                                       ("www.*.com", "invalid server name or wildcard"),
                                       ("*.example.*", "invalid server name or wildcard")])
def test_bad_server_names(error, name, why):
    text = site().replace("server_name www.example.com;", f"server_name {name};")
    assert why in str(error(text, "server_name"))


def test_a_regex_capture_in_proxy_set_header_is_not_supported(error):
    text = site(location="        proxy_set_header X-Sub $sub;").replace(
        "server_name www.example.com;", r"server_name ~^(?<sub>\w+)\.example\.com$;")
    err = str(error(text, "X-Sub"))
    assert "is not supported yet" in err and "$sub" in err


def test_regex_server_name_on_a_plain_server_is_not_supported(error):
    text = site(extra="server {\n    listen 80;\n    server_name ~^www\\.;\n    return 301 https://$host;\n}\n")
    assert "is not supported yet" in str(error(text, "server_name ~^www"))


def test_conflicting_server_name_warns_and_keeps_the_first(load):
    text = site(extra="""
server {
    listen 443 ssl;
    server_name www.example.com other.example.com;
    ssl_certificate certs/ec.crt;
    ssl_certificate_key certs/ec.key;
    location / { proxy_pass http://notes; }
}
""")
    got = load(text)
    assert got.config.servers[1].server_names == ["other.example.com"]
    assert got.warned('conflicting server name "www.example.com", ignored')


def test_duplicate_default_server(error):
    text = site(listen="443 ssl default_server", extra="""
server {
    listen 443 ssl default_server;
    server_name other.example.com;
    ssl_certificate certs/ec.crt;
    ssl_certificate_key certs/ec.key;
    location / { proxy_pass http://notes; }
}
""")
    assert "a duplicate default server for 0.0.0.0:443" in str(
        error(text, "listen 443 ssl default_server", occurrence=2))


# ---- locations, upstreams, proxy ---------------------------------------------------------------------------------

def test_prefix_locations_and_implicit_upstreams(load):
    text = site(server="""
    location /api/ { proxy_pass http://127.0.0.1:9000; }
    location ^~ /static/ { proxy_pass http://127.0.0.1:9001; }
""")
    got = load(text)
    assert [(r.path, r.upstream) for r in got.server.routes] == [
        ("/api/", "127.0.0.1:9000"), ("/static/", "127.0.0.1:9001"), ("/", "notes")]
    implicit = {u.name: u for u in got.config.upstreams}["127.0.0.1:9000"]
    assert implicit.servers == ["127.0.0.1:9000"] and implicit.tries == 1


def test_exact_locations_and_proxy_redirect(load):
    """location = PATH -> an exact route (beside a prefix of the same path); proxy_redirect
    default (also when absent) -> redirect_from proxy_pass's URL + "/", off -> ""; /dir/ -> slash_redirect."""
    text = site(server="""
    location = /exact { proxy_pass http://notes; }
    location /exact { proxy_pass http://127.0.0.1:9000; proxy_redirect off; }
    location = /dir/ { proxy_pass http://127.0.0.1:9001; proxy_redirect default; }
""")
    got = load(text)
    assert [(r.path, r.exact, r.upstream, r.redirect_from, r.slash_redirect) for r in got.server.routes] == [
        ("/exact", True, "notes", "http://notes/", False), ("/exact", False, "127.0.0.1:9000", "", False),
        ("/dir/", True, "127.0.0.1:9001", "http://127.0.0.1:9001/", True), ("/", False, "notes", "http://notes/", False)]


@pytest.mark.parametrize("location", ["@named"])
def test_other_location_forms_are_not_supported(error, location):
    text = site(server=f"    location {location} {{ proxy_pass http://notes; }}")
    assert "is not supported yet" in str(error(text, f"location {location}"))


def test_regex_and_no_regex_locations_map_in_order(load):
    got = load(site(server="    location ~ \\.php$ { proxy_pass http://notes; }\n"
                           "    location ^~ /assets/ { proxy_pass http://notes; }\n"
                           "    location ~*\\.(?<ext>jpg|png)$ { proxy_pass http://127.0.0.1:9000; }"))
    routes = [(r.path, r.regex, r.no_regex, r.slash_redirect) for r in got.server.routes]
    assert routes == [("\\.php$", "~", False, False), ("/assets/", "", True, True),
                      ("\\.(?<ext>jpg|png)$", "~*", False, False), ("/", "", False, False)]


@pytest.mark.parametrize("pattern, construct", [
    ("\\.php\\Z", "\\Z"), ("[[:alpha:]]+", "POSIX classes"), ("(?|a|b)", "branch reset"),
    ("a\\hb", "\\h"), ("x\\vy", "\\v"), ("(*UCP)a", "PCRE verbs"), ("a{,3}", "{,n}"),
    ("\\p{L}", "\\p"), ("(?R)", "recursion"), ("\\x{41}", "\\x{"), ("^/a(?i)b", "inline flags"),
    ("(?U)a+", "inline flags")])
def test_pcre_constructs_python_reads_otherwise_are_refused_by_name(error, pattern, construct):
    text = site(server=f'    location ~ "{pattern}" {{ proxy_pass http://notes; }}')
    err = str(error(text, f'location ~ "{pattern}"'))
    assert "is not supported yet" in err and construct in err


def test_a_regex_location_is_no_duplicate_of_a_prefix_with_its_text(load):
    got = load(site(server="    location ~ /a { proxy_pass http://notes; }\n    location /a { proxy_pass http://notes; }"))
    assert [(r.path, r.regex) for r in got.server.routes] == [("/a", "~"), ("/a", ""), ("/", "")]


def test_a_regex_that_does_not_compile_is_an_error(error):
    text = site(server="    location ~ ^/(a { proxy_pass http://notes; }")
    err = str(error(text, "location ~ ^/(a"))
    assert "does not compile" in err and "not supported" not in err


def test_proxy_pass_uri_part_in_a_regex_location_is_nginxs_error(error):
    text = site(server="    location ~ ^/api { proxy_pass http://notes/v2/; }")
    err = str(error(text, "proxy_pass http://notes/v2/"))
    assert '"proxy_pass" cannot have URI part in location given by regular expression' in err


def test_proxy_pass_uri_part_maps_to_upstream_path_and_proxy_redirect(load):
    got = load(site(server="    location /v1/ { proxy_pass http://notes/api/v1/; }\n"
                           "    location = /x { proxy_pass http://127.0.0.1:9000/y; }"))
    routes = {r.path: (r.upstream, r.upstream_path, r.redirect_from, r.redirect_to) for r in got.server.routes}
    assert routes == {"/v1/": ("notes", "/api/v1/", "http://notes/api/v1/", "/v1/"),
                      "/x": ("127.0.0.1:9000", "/y", "http://127.0.0.1:9000/y", "/x"),
                      "/": ("notes", None, "http://notes/", "/")}


def test_location_without_proxy_pass(error):
    text = site(server="    location /files/ { root /srv; }")
    err = error(text, "location /files/")
    assert '"location" is not supported yet: a location without "proxy_pass"' in str(err)


def test_duplicate_location(error):
    text = site(server="    location / { proxy_pass http://notes; }")
    assert 'duplicate location "/"' in str(error(text, "location / {", occurrence=2))


def test_upstream_block(load):
    text = site().replace("    server 127.0.0.1:8081;", """\
    server 127.0.0.1:8081 max_fails=1 fail_timeout=30s weight=1;
    server 127.0.0.1:8082 fail_timeout=30s;
    keepalive 8;
    keepalive_timeout 20s;
    zone notes 64k;""")
    got = load(text)
    up = got.config.upstreams[0]
    assert up.servers == ["127.0.0.1:8081", "127.0.0.1:8082"]
    assert (up.fail_timeout, up.tries, up.keepalive, up.keepalive_max, up.keepalive_timeout) == (30.0, 2, 8, 8, 20.0)
    assert got.warned('"zone" is ignored')


def test_upstream_balancing(load):
    text = site().replace("    server 127.0.0.1:8081;", """\
    least_conn;
    server 127.0.0.1:8081 weight=3 max_fails=2 fail_timeout=5s;
    server 127.0.0.1:8082 max_fails=0;
    server 127.0.0.1:8083 backup;""")
    up = load(text).config.upstreams[0]
    assert up.balance == "least_conn"
    assert up.servers == ["127.0.0.1:8081 weight=3 max_fails=2 fail_timeout=5", "127.0.0.1:8082 max_fails=0",
                          "127.0.0.1:8083 backup"]
    assert (up.fail_timeout, up.tries) == (10.0, 3)


@pytest.mark.parametrize("line, message", [("server 127.0.0.1:8082 weight=0;", 'invalid parameter "weight=0"'),
                                           ("server 127.0.0.1:8082 max_fails=x;", 'invalid parameter "max_fails=x"'),
                                           ("server 127.0.0.1:8082 bogus;", 'invalid parameter "bogus"')])
def test_upstream_server_bad_parameters(error, line, message):
    text = site().replace("    server 127.0.0.1:8081;", f"    server 127.0.0.1:8081;\n    {line}")
    assert message in str(error(text, line))


def test_upstream_of_backup_servers_only(error):
    text = site().replace("    server 127.0.0.1:8081;", "    server 127.0.0.1:8081 backup;")
    assert 'no servers in upstream "notes"' in str(error(text, "upstream notes"))


@pytest.mark.parametrize("line", ["server 127.0.0.1:8082 down;", "server 127.0.0.1:8082 max_conns=5;",
                                  "keepalive_requests 100;", "hash $remote_addr;"])
def test_upstream_features_not_supported_yet(error, line):
    text = site().replace("    server 127.0.0.1:8081;", f"    server 127.0.0.1:8081;\n    {line}")
    assert "is not supported yet" in str(error(text, line))


@pytest.mark.parametrize("url, why", [("http://notes/a?b", "a query"), ("http://$host", "variables")])
def test_proxy_pass_forms_not_supported(error, url, why):
    text = site().replace("proxy_pass http://notes;", f"proxy_pass {url};")
    err = error(text, "proxy_pass")
    assert "is not supported yet" in str(err) and why in str(err)


def test_proxy_set_header_lines_then_nginx_implicit_host_and_connection(load):
    got = load(site(location="        proxy_set_header X-Forwarded-Proto $scheme;\n"
                             "        proxy_set_header X-Real-IP $remote_addr;"))
    proxy = got.server.routes[0].proxy
    assert [(h.name, h.value) for h in proxy.headers] == [
        ("X-Forwarded-Proto", "$scheme"), ("X-Real-IP", "$remote_addr"), ("Host", "$proxy_host"),
        ("Connection", "close")]
    assert proxy.http_version == "1.0" and not proxy.keepalive
    assert got.server.trusted_proxies == []


def test_a_level_with_proxy_set_header_does_not_inherit_the_parents(load):
    got = load(site(server="    proxy_set_header X-From server;",
                    location="        proxy_set_header Host $host;\n        proxy_set_header Connection \"\";"))
    assert [(h.name, h.value) for h in got.server.routes[0].proxy.headers] == [("Host", "$host"), ("Connection", "")]
    inherited = load(site(server="    proxy_set_header X-From server;"))
    assert [h.name for h in inherited.server.routes[0].proxy.headers] == ["X-From", "Host", "Connection"]


@pytest.mark.parametrize("header", ["X-Forwarded-Host $host", "X-Real-IP $http_x_real_ip", "Upgrade $http_upgrade",
                                    "Host backend.internal", "X-TLS \"$ssl_protocol $ssl_cipher\"",
                                    "X-Port ${server_port}", "X-Forwarded-For $proxy_add_x_forwarded_for",
                                    "Early-Data $ssl_early_data"])
def test_proxy_set_header_values_with_the_supported_variables(load, header):
    name = header.split()[0]
    proxy = load(site(location=f"        proxy_set_header {header};")).server.routes[0].proxy
    assert proxy.headers[0].name == name


@pytest.mark.parametrize("header", ["X-Id $request_id", "Content-Length 5"])
def test_other_proxy_set_header_values_are_not_supported(error, header):
    text = site(location=f"        proxy_set_header {header};")
    assert "is not supported yet" in str(error(text, "proxy_set_header"))


def test_backend_keepalive_needs_http11_an_empty_connection_and_upstream_keepalive(load):
    def proxy(location, upstream=""):
        text = site(location=location)
        if upstream:
            text = text.replace("server 127.0.0.1:8081;", "server 127.0.0.1:8081;\n    " + upstream)
        return load(text).server.routes[0].proxy
    one_one = "        proxy_http_version 1.1;\n"
    empty = '        proxy_set_header Connection "";\n'
    assert proxy(one_one + empty, "keepalive 8;").keepalive
    assert proxy(one_one + empty, "keepalive 8;").http_version == "1.1"
    assert not proxy(one_one + empty).keepalive
    assert not proxy(one_one, "keepalive 8;").keepalive
    assert not proxy(empty, "keepalive 8;").keepalive


def test_set_real_ip_from(load, error):
    got = load(site(server="    set_real_ip_from 10.0.0.0/8;\n    set_real_ip_from 192.0.2.1;\n"
                           "    real_ip_header X-Forwarded-For;"))
    proxy = got.server.routes[0].proxy
    assert (proxy.real_ip_from, proxy.real_ip_header) == (["10.0.0.0/8", "192.0.2.1/32"], "X-Forwarded-For")
    assert got.server.trusted_proxies == []
    default = load(site(server="    set_real_ip_from 10.0.0.0/8;")).server.routes[0].proxy
    assert default.real_ip_header == "X-Real-IP"
    realip = "    set_real_ip_from 10.0.0.0/8;\n    real_ip_header proxy_protocol;"
    plain = load(site(server=realip)).server   # no PROXY header on this listener: $remote_addr is the peer
    assert (plain.accept_proxy, plain.routes[0].proxy.real_ip_from) == (False, [])
    proxied = load(site(listen="443 ssl proxy_protocol", server=realip)).server
    assert (proxied.accept_proxy, proxied.proxy_trusted, proxied.routes[0].proxy.real_ip_from) == \
        (True, ["10.0.0.0/8"], [])


def test_proxy_http_version_is_1_0_or_1_1(load, error):
    assert load(site(location="        proxy_http_version 1.0;")).server.routes[0].proxy.http_version == "1.0"
    assert 'must be "1.0" or "1.1"' in str(error(site(location="        proxy_http_version 2.0;"), "proxy_http_version"))


# ---- add_header and its inheritance ---------------------------------------------------------------------------------

def test_hsts_inherited_from_http(load):
    got = load(site(http='add_header Strict-Transport-Security "max-age=300" always;'))
    assert got.server.add_headers == [AddHeader(name="Strict-Transport-Security", value="max-age=300", always=True)]
    assert got.server.hsts is None   # nginx duplicates a backend's: not fastterm's replacing hsts


def test_server_add_header_replaces_the_http_levels(load):
    got = load(site(http='add_header Strict-Transport-Security "max-age=300" always;',
                    server='    add_header Strict-Transport-Security "max-age=600; includeSubDomains" always;\n'
                           "    add_header X-Content-Type-Options nosniff;"))
    assert [(h.name, h.value, h.always) for h in got.server.add_headers] == [
        ("Strict-Transport-Security", "max-age=600; includeSubDomains", True),
        ("X-Content-Type-Options", "nosniff", False)]


def test_location_with_its_own_add_header_loses_the_servers(load):
    text = site(server='    add_header Strict-Transport-Security "max-age=600" always;\n'
                       "    location /api/ { proxy_pass http://notes; add_header X-Frame-Options DENY; }")
    routes = {r.path: r for r in load(text).server.routes}
    assert routes["/"].add_headers is None     # inherits the server's
    assert routes["/api/"].add_headers == [AddHeader(name="X-Frame-Options", value="DENY")]


def test_add_header_with_variables(load, error):
    got = load(site(location='        add_header X-Host "$host:$server_port $request_uri" always;'))
    assert got.server.routes[0].add_headers[0].value == "$host:$server_port $request_uri"
    text = site(location="        add_header X-Uri $uri;")
    assert "$uri is not supported" in str(error(text, "X-Uri"))


@pytest.mark.parametrize("line, why", [
    ("add_header X-A b never;", 'invalid parameter "never"'),
    ("add_header ETag x;", '"add_header ETag" is not supported yet'),
    ("add_header Content-Length 5;", "fastterm writes this field itself"),
    ('add_header "X A" b;', "invalid field name"),
])
def test_add_header_refused(error, line, why):
    assert why in str(error(site(server=f"    {line}"), "add_header"))


# ---- return, error_page, keepalive_timeout's header ---------------------------------------------------------------

def test_returns_in_tls_servers_and_locations(load):
    text = site(server='    location /old/ { return 301 https://$host/new$request_uri; }\n'
                       '    location = /text { return 200 "host=$host\\n"; add_header X-A b; }\n'
                       "    location /signin { return 302 /login; }\n"
                       "    location /drop { return 444; }\n"
                       "    location /teapot { return 418; }")
    routes = {r.path: r for r in load(text).server.routes}
    assert routes["/old/"].answer == Answer(status=301, location="https://$host/new$request_uri")
    assert routes["/old/"].upstream == ""
    assert routes["/text"].answer == Answer(status=200, text="host=$host\n") and routes["/text"].exact
    assert routes["/text"].add_headers == [AddHeader(name="X-A", value="b")]
    assert routes["/signin"].answer == Answer(status=302, location="/login")
    assert routes["/drop"].answer == Answer(status=444)
    assert routes["/teapot"].answer == Answer(status=418)


def test_return_on_the_server_level(load):
    got = load(site(server="    return 503;"))
    assert got.server.answer == Answer(status=503)


def test_relative_return_without_code_is_invalid(error):
    assert 'invalid return code "/login"' in str(error(site(server="    location /a { return /login; }"), "return"))


def test_error_pages(load):
    text = site(server="    error_page 502 503 =200 @down;\n"
                       "    error_page 504 https://status.example.com/;\n"
                       "    error_page 404 =301 https://www.example.com/;\n"
                       '    location @down { add_header Retry-After 30 always; return 503 "down\\n"; }',
                location="        proxy_intercept_errors on;")
    server = load(text).server
    assert server.error_pages == [
        ErrorPage(codes=[502, 503], status=200, answer=Answer(
            status=503, text="down\n", add_headers=[AddHeader(name="Retry-After", value="30", always=True)])),
        ErrorPage(codes=[504], redirect="https://status.example.com/"),
        ErrorPage(codes=[404], status=301, redirect="https://www.example.com/")]
    assert server.routes[0].intercept_errors and server.routes[0].error_pages is None


@pytest.mark.parametrize("line, why", [
    ("error_page 502 /50x.html;", "serves files"),
    ("error_page 502 @nowhere;", 'could not find named location "@nowhere"'),
    ("error_page 200 https://x.example/;", 'value "200" must be between 300 and 599'),
    ("error_page 502 https://x.example/$host;", "variables"),
])
def test_error_page_refused(error, line, why):
    assert why in str(error(site(server=f"    {line}"), "error_page"))


def test_named_location_only_returns(error):
    text = site(server="    error_page 502 @x;\n    location @x { proxy_pass http://notes; }")
    assert "a named location only returns" in str(error(text, "location @x"))


def test_error_page_for_a_plain_servers_return_is_refused(error):
    text = site(extra="server {\n    listen 80;\n    error_page 404 https://x.example/;\n    return 404;\n}")
    assert '"error_page" is not supported yet' in str(error(text, "error_page 404"))


def test_keepalive_timeout_header(load):
    limits = load(site(server="    keepalive_timeout 30s 25;")).config.limits
    assert (limits.keepalive_timeout, limits.keepalive_header) == (30.0, 25)
    assert load(site()).config.limits.keepalive_header == 0
    plain = "server {\n    listen 80;\n    keepalive_timeout 10 5;\n    return 301 https://$host$request_uri;\n}"
    assert load(site(extra=plain)).config.redirects[0].keepalive_header == 5


# ---- limits ---------------------------------------------------------------------------------

def test_limits(load):
    text = """\
worker_processes auto;
worker_shutdown_timeout 15s;
events { worker_connections 4096; }
http {
    client_max_body_size 10m;
    client_header_timeout 5s;
    keepalive_timeout 65;
    send_timeout 30s;
    proxy_connect_timeout 3s;
    proxy_read_timeout 2m;
    underscores_in_headers on;
    large_client_header_buffers 4 16k;
    http2_max_concurrent_streams 64;
    keepalive_requests 500;
""" + site() + "}\n"
    got = load(text)
    limits = got.config.limits
    assert limits.client_max_body_size == 10 << 20
    assert limits.client_header_timeout == 5.0
    assert limits.keepalive_timeout == 65.0
    assert limits.send_timeout == 30.0
    assert (limits.backend_connect_timeout, limits.backend_read_timeout) == (3.0, 120.0)
    assert limits.underscores_in_headers is True
    assert (limits.header_buffer_size, limits.header_line_size) == (4 * 16384, 16384)
    assert (limits.http2_max_concurrent_streams, limits.http2_max_requests, limits.keepalive_requests) == (64, 500, 500)
    assert (limits.worker_connections, limits.drain_timeout) == (4096, 15.0)
    assert got.config.workers == "auto"


def test_body_size_zero_is_unlimited(load):
    assert load(site(location="        client_max_body_size 0;")).server.routes[0].client_max_body_size == 0


def test_body_size_per_location_inherits_as_nginx(load):
    """A location's own value, else its server's, else http's, else 1m (nginx's default)."""
    text = "http {\n    client_max_body_size 2m;\n" + site(
        server="    client_max_body_size 1k;\n    location /up/ { proxy_pass http://notes; client_max_body_size 100m; }"
    ) + site().replace("www.example.com", "two.example.com").replace("upstream notes", "upstream notes2") + "}\n"
    got = load(text)
    first, second = got.config.servers
    assert {r.path: r.client_max_body_size for r in first.routes} == {"/up/": 100 << 20, "/": 1024}
    assert first.client_max_body_size == 1024
    assert second.client_max_body_size == 2 << 20 and second.routes[0].client_max_body_size == 2 << 20
    assert got.config.limits.client_max_body_size == 2 << 20


def test_time_and_size_syntax():
    node = Node("x", ["1"], "f", 1)
    assert parse_time(node, "30") == 30.0
    assert parse_time(node, "300s") == 300.0
    assert parse_time(node, "10m") == 600.0
    assert parse_time(node, "1d") == 86400.0
    assert parse_time(node, "500ms") == 0.5
    assert parse_time(node, "1h 30m") == 5400.0
    assert parse_time(node, "1h30m") == 5400.0
    for bad in ("", "10x", "30m 1h", "m", "-1"):
        with pytest.raises(ConfigError):
            parse_time(node, bad)
    assert parse_size(node, "512") == 512
    assert parse_size(node, "8k") == 8192 and parse_size(node, "8K") == 8192
    assert parse_size(node, "10m") == 10 << 20 and parse_size(node, "1g") == 1 << 30
    for bad in ("", "1.5m", "10mb", "k"):
        with pytest.raises(ConfigError):
            parse_size(node, bad)


# ---- (b) warnings, (c) refusals ---------------------------------------------------------------------------------

def test_directives_without_effect_warn_once_each(load):
    text = """\
user www-data;
worker_processes 2;
pid /run/nginx.pid;
worker_rlimit_nofile 65535;
events { worker_connections 768; multi_accept on; }
http {
    sendfile on;
    include_types_here;
    access_log /var/log/nginx/access.log;
    error_log /var/log/nginx/error.log warn;
    root /srv/www;
""".replace("    include_types_here;\n", "    types { text/html html; }\n    default_type application/octet-stream;\n") \
        + site() + "}\n"
    got = load(text)
    for name in ("pid", "worker_rlimit_nofile", "multi_accept", "sendfile", "types", "default_type",
                 "error_log", "root"):
        assert sum(f'"{name}" is ignored' in m for _, m in got.warnings) == 1, (name, got.warnings)
    assert got.config.workers == 2 and got.config.limits.worker_connections == 768
    assert (got.config.user, got.config.group) == ("www-data", "www-data")   # nginx: the group of that name
    assert (got.config.access_log, got.config.access_log_format) == ("/var/log/nginx/access.log", "combined")
    assert all(m.startswith(got_path := m.split(":", 1)[0]) and got_path.endswith("nginx.conf")
               for _, m in got.warnings)


def test_values_equal_to_fastterm_are_accepted_silently(load):
    got = load(site(server="    ssl_stapling off;\n    ssl_early_data off;\n    access_log off;\n    gzip off;\n"
                           "    merge_slashes on;\n    server_name_in_redirect off;",
                    location="        proxy_redirect off;\n        proxy_intercept_errors off;"))
    assert got.warnings == []


@pytest.mark.parametrize("line, name", [
    ("ssl_crl crl.pem;", '"ssl_crl" is not supported yet'),
    ("gzip on;", '"gzip on" is not supported yet'),
    ("if ($host = x) { return 404; }", '"if" is not supported yet'),
    ("limit_req_zone $binary_remote_addr zone=one:10m rate=1r/s;", "not supported yet"),
])
def test_not_supported_yet(error, line, name):
    where = "server" if not line.startswith("limit_req_zone") else "http"
    text = site(server=f"    {line}") if where == "server" else site(http=line)
    assert name in str(error(text, line.split()[0] + " "))


def test_seed_with_stapling_maps_onto_the_tls_policy(load, write, tmp_path, intermediate):
    write("certs/chain.pem", intermediate.cert_pem)
    text = SEED.replace("ssl_session_tickets off;\n", "ssl_session_tickets off;\nssl_stapling on;\n"
                        "ssl_stapling_verify on;\nssl_trusted_certificate certs/chain.pem;\n"
                        "resolver 8.8.8.8 8.8.4.4 valid=300s;\n")
    got = load(text)
    tls = got.server.tls
    assert (tls.stapling, tls.stapling_verify, tls.stapling_responder) == (True, True, None)
    assert tls.trusted_certificate == str(tmp_path / "certs/chain.pem")
    assert tls.stapling_timeout == 60.0
    assert got.server.certificates[0].ocsp_file is None
    assert [m for _, m in got.warnings if "resolver" not in m] == []


def test_stapling_defaults_are_nginx_s(load):
    tls = load(site()).server.tls
    assert (tls.stapling, tls.stapling_verify, tls.trusted_certificate) == (False, False, None)
    assert load(site(server="    ssl_stapling on;")).server.tls.stapling_verify is False


def test_stapling_file_and_responder(load, write, tmp_path):
    write("certs/ec.ocsp", b"\x30")
    got = load(site(http="ssl_stapling on;", server="    ssl_stapling_file certs/ec.ocsp;\n"
                    "    ssl_stapling_responder http://127.0.0.1:9/ocsp;"))
    assert got.server.certificates[0].ocsp_file == str(tmp_path / "certs/ec.ocsp")
    assert got.server.tls.stapling_responder == "http://127.0.0.1:9/ocsp"
    # without ssl_stapling on nginx reads neither
    got = load(site(server="    ssl_stapling_file certs/absent.ocsp;"))
    assert got.server.certificates[0].ocsp_file is None


def test_stapling_file_missing(error):
    text = site(server="    ssl_stapling on;\n    ssl_stapling_file certs/absent.ocsp;")
    assert "absent.ocsp" in str(error(text, "ssl_stapling_file"))


def test_trusted_certificate_missing_or_bad(error, write):
    assert "No such file" in str(error(site(server="    ssl_trusted_certificate certs/absent.pem;"),
                                       "ssl_trusted_certificate"))
    write("certs/bad.pem", "not a certificate\n")
    assert "invalid trusted certificates" in str(error(site(server="    ssl_trusted_certificate certs/bad.pem;"),
                                                       "ssl_trusted_certificate"))


@pytest.mark.parametrize("url, message", [("https://ocsp.example.com/", "not supported yet"),
                                          ("ocsp.example.com", "invalid URL prefix")])
def test_stapling_responder_must_be_http(error, url, message):
    assert message in str(error(site(server=f"    ssl_stapling_responder {url};"), "ssl_stapling_responder"))


def test_resolver_alone_is_accepted_with_a_warning(load):
    got = load(site(server="    resolver 8.8.8.8 valid=300s;"))
    assert got.warned('"resolver" is ignored: fastterm looks OCSP responders and ACME servers up with the system resolver')


# ---- syntax and structure errors, located ---------------------------------------------------------------------------------

def test_unknown_directive(error):
    assert 'unknown directive "proxy_passs"' in str(error(site(location="        proxy_passs x;"), "proxy_passs"))


def test_wrong_argument_count(error):
    err = error(site(location="        proxy_set_header X-Real-IP;"), "proxy_set_header")
    assert 'invalid number of arguments in "proxy_set_header" directive' in str(err)


def test_directive_not_allowed_here(error):
    assert '"listen" directive is not allowed here' in str(error(site(location="        listen 8443;"), "listen 8443"))


def test_missing_semicolon(error):
    text = site().replace("proxy_pass http://notes;", "proxy_pass http://notes")
    assert 'is not terminated by ";"' in str(error(text, "proxy_pass"))


def test_unbalanced_braces(error, write, tmp_path):
    extra = site() + "}\n"
    err = error(extra)
    assert 'unexpected "}"' in str(err) and err.line == len(extra.splitlines())
    missing = site()[: site().rindex("}")]
    err = error(missing)
    assert 'unexpected end of file, expecting "}"' in str(err) and err.file.endswith("nginx.conf")


def test_unknown_variable(error):
    text = site(server='    add_header Strict-Transport-Security "max-age=$hsts_age" always;')
    assert 'unknown "hsts_age" variable' in str(error(text, "add_header"))
    text = SEED.replace("https://$host$request_uri", "https://$hots$request_uri")
    assert 'unknown "hots" variable' in str(error(text, "return 301"))


def test_duplicate_directive(error):
    text = site(server="    ssl_session_timeout 1d;\n    ssl_session_timeout 2d;")
    assert '"ssl_session_timeout" directive is duplicate' in str(error(text, "2d"))


def test_invalid_values_are_located(error):
    assert 'invalid value "1x"' in str(error(site(server="    ssl_session_timeout 1x;"), "1x"))
    assert 'it must be "on" or "off"' in str(error(site(server="    ssl_session_tickets yes;"), "yes"))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "absent.conf"))
    assert "cannot read configuration" in str(info.value) and "absent.conf" in str(info.value)


# ---- includes ---------------------------------------------------------------------------------

def test_includes_with_globs_relative_to_the_main_file(load, write):
    write("conf.d/10-upstream.conf", "upstream notes { server 127.0.0.1:8081; }\n")
    server = site()[site().index("server {"):].replace("proxy_pass http://notes;", "include snippets/proxy.conf;")
    write("conf.d/20-site.conf", server)
    write("snippets/proxy.conf", "proxy_pass http://notes;\nproxy_set_header X-Real-IP $remote_addr;\n")
    write("conf.d/ignored.txt", "garbage here;\n")
    got = load("events {}\nhttp {\n    include conf.d/*.conf;\n}\n")
    assert [(r.path, r.upstream) for r in got.server.routes] == [("/", "notes")]


def test_conf_d_file_alone(load, write):
    """A conf.d file (server blocks at the top) runs by itself: its top level is http's inside."""
    text = site().replace(" certs/", " ../certs/")    # relative to the file nginx -c would be given
    assert load(text, name="conf.d/site.conf").server.server_names == ["www.example.com"]


def test_include_loop(error, write, tmp_path):
    write("a.conf", "include b.conf;\n")
    write("b.conf", "\n\ninclude a.conf;\n")
    err = error("http {\n    include a.conf;\n}\n")
    assert "include loop" in str(err) and err.file == str(tmp_path / "b.conf") and err.line == 3


def test_missing_include_file(error, tmp_path):
    err = error("http {\n    include absent.conf;\n}\n", "include absent.conf")
    assert "absent.conf" in str(err) and "No such file" in str(err)


def test_error_inside_an_included_file_names_that_file(error, write, tmp_path):
    write("conf.d/site.conf", site(server="    ssl_crl crl.pem;"))
    err = error("http {\n    include conf.d/*.conf;\n}\n")
    assert err.file == str(tmp_path / "conf.d/site.conf")
    assert err.line == line_of(site(server="    ssl_crl crl.pem;"), "ssl_crl")


# ---- redirects ---------------------------------------------------------------------------------

def test_redirect_to_another_https_port(load):
    got = load(SEED.replace("https://$host$request_uri", "https://$host:8443$request_uri"))
    assert [(r.listen, r.location) for r in got.config.redirects] == [(["0.0.0.0:80"], "https://$host:8443$request_uri")]


def test_redirect_in_a_location(load):
    got = load(SEED.replace("return 301 https://$host$request_uri;",
                            "location / { return 301 https://$host$request_uri; }"))
    assert got.config.redirects[0].location == "https://$host$request_uri"


@pytest.mark.parametrize(("ret", "status", "location", "text"), [
    ("return 302 https://$host$request_uri;", 302, "https://$host$request_uri", None),
    ("return 301 https://example.com$request_uri;", 301, "https://example.com$request_uri", None),
    ("return 308 https://$server_name:8443$uri$is_args$args;", 308, "https://$server_name:8443$uri$is_args$args",
     None),
    ("return 301 /moved$request_uri;", 301, "/moved$request_uri", None),
    ("return https://$host$request_uri;", 302, "https://$host$request_uri", None),
    ("return $scheme://$http_host/x;", 302, "$scheme://$http_host/x", None),
    ('return 404 "no such site\\n";', 404, None, "no such site\n"),
    ("return 403;", 403, None, None),
    ("return 204;", 204, None, None),
    ("return 444;", 444, None, None),
])
def test_plain_server_returns(load, ret, status, location, text):
    redirect = load(SEED.replace("return 301 https://$host$request_uri;", ret)).config.redirects[0]
    assert (redirect.status, redirect.location, redirect.text) == (status, location, text)


@pytest.mark.parametrize(("ret", "needle"), [("return 301;", "return 301"), ("return 304 x;", "return 304 x"),
                                             ("return 302 https://$remote_addr/;", "return ... $remote_addr"),
                                             ("return 100;", "return 100")])
def test_other_returns_are_not_supported(error, ret, needle):
    text = SEED.replace("return 301 https://$host$request_uri;", ret)
    assert f'"{needle}" is not supported yet' in str(error(text, "return"))


def test_invalid_return_code(error):
    text = SEED.replace("return 301 https://$host$request_uri;", "return moved;")
    assert 'invalid return code "moved"' in str(error(text, "return"))


def test_several_plain_servers_on_one_address(load):
    text = SEED + """
server {
    listen 80 default_server;
    server_name _;
    keepalive_requests 5;
    keepalive_timeout 10s;
    return 404;
}
server {
    listen 80;
    server_name .example.org;
    keepalive_timeout 0;
    return 302 https://$host$request_uri;
}
"""
    got = load(text).config.redirects
    assert [(r.server_names, r.default_server, r.status, r.keepalive_requests, r.keepalive_timeout)
            for r in got] == [(["api.example.com"], False, 301, 1000, 75.0), (["_"], True, 404, 5, 10.0),
                              (["example.org", "*.example.org"], False, 302, 0, 75.0)]


def test_plain_server_that_proxies_is_not_supported(error):
    text = SEED.replace("return 301 https://$host$request_uri;", "location / { proxy_pass http://notes; }")
    assert "is not supported yet" in str(error(text, "server {", occurrence=2))


# ---- the loader entry point and convert ---------------------------------------------------------------------------------

def test_config_source_loads_either_format(write, ec_files):
    path = write("nginx.conf", SEED)
    assert ConfigSource(path, "nginx").load() == load_config(path)
    assert ConfigSource(path, "nginx").toml_path is None


@pytest.mark.parametrize("text", [SEED, site(listen="443 ssl http2", http="""
client_max_body_size 0;
add_header Strict-Transport-Security "max-age=1" always;
""", server="    set_real_ip_from 10.0.0.0/8;\n    real_ip_header X-Forwarded-For;\n    listen [::]:443 ssl http2;\n"
            "    location /api/ { proxy_pass http://127.0.0.1:9000; }"), SEED + """
server {
    listen 80 default_server;
    server_name _;
    keepalive_timeout 5s;
    return 404 "no such site $host\\n";
}
server {
    listen 80;
    server_name .example.org;
    return 308 /moved$uri$is_args$args;
}
"""])
def test_convert_round_trip(load, write, text):
    config = load(text).config
    toml_text = dump_config(config)
    assert load_toml(write("converted/fastterm.toml", toml_text)) == config


def test_convert_round_trip_regex_locations_uri_parts_and_body_limits(load, write):
    text = site(server="    client_max_body_size 1k;\n"
                       "    location ~* \\.(?<ext>jpg|png)$ { proxy_pass http://notes; client_max_body_size 0; }\n"
                       "    location ^~ /assets/ { proxy_pass http://notes; }\n"
                       "    location /v1/ { proxy_pass http://notes/api/v1/; }")
    config = load(text).config
    toml_text = dump_config(config)
    assert 'regex = "~*"' in toml_text and 'upstream_path = "/api/v1/"' in toml_text
    assert load_toml(write("converted/fastterm.toml", toml_text)) == config


def test_convert_round_trip_dhparam_and_header_buffers(load, write, dhparam_pem):
    write("dhparam.pem", dhparam_pem)
    config = load(site(http="ssl_dhparam dhparam.pem;\nlarge_client_header_buffers 4 2k;")).config
    assert (config.limits.header_buffer_size, config.limits.header_line_size) == (8192, 2048)
    assert load_toml(write("converted/fastterm.toml", dump_config(config))) == config


# ---- more mapping details ---------------------------------------------------------------------------------

def test_host_dollar_host_is_mapped_without_a_warning(load):
    assert not load(site(location="        proxy_set_header Host $host;")).warnings
    assert not load(site(location="        proxy_set_header Host $http_host;")).warnings


def test_non_default_servers_session_cache_follows_the_default_as_in_nginx(load):
    text = site(extra="""
server {
    listen 443 ssl;
    server_name other.example.com;
    ssl_certificate certs/ec.crt;
    ssl_certificate_key certs/ec.key;
    ssl_session_cache shared:SSL:1m;
    location / { proxy_pass http://notes; }
}
""")
    got = load(text)
    assert [s.tls.session_cache for s in got.config.servers] == [False, False]
    assert got.warned('"ssl_session_cache" of a server that is not the default of its address has no effect')


def test_http2_on_one_of_two_addresses_of_a_server_is_not_supported(error):
    text = site(server="    listen 8443 ssl http2;")
    assert "with and without http2" in str(error(text, "listen 443 ssl"))


def test_x_forwarded_for_remote_addr_with_trusted_proxies(load):
    text = site(server="    set_real_ip_from 10.0.0.0/8;\n    real_ip_header X-Forwarded-For;",
                location="        proxy_set_header X-Forwarded-For $remote_addr;")
    assert load(text).server.routes[0].proxy.headers[0].value == "$remote_addr"


def test_upstream_name_with_a_port(error):
    text = site().replace("proxy_pass http://notes;", "proxy_pass http://notes:8080;")
    assert 'upstream "notes" may not have port 8080' in str(error(text, "proxy_pass"))


def test_proxy_pass_to_a_host_name(load, error):
    got = load(site().replace("proxy_pass http://notes;", "proxy_pass http://localhost:8081;"))
    assert got.server.routes[0].upstream == "localhost:8081"
    text = site().replace("proxy_pass http://notes;", "proxy_pass http://no-such-host.invalid;")
    assert 'host not found in upstream "no-such-host.invalid"' in str(error(text, "proxy_pass"))


def test_streaming_directives_warn_with_the_semantics(load):
    got = load(site(location="        proxy_buffering on;\n        proxy_request_buffering off;"))
    assert got.warned('"proxy_buffering" is ignored: fastterm streams responses')
    assert got.warned('"proxy_request_buffering" is ignored: fastterm streams request bodies')


def test_redirect_server_directives_without_effect_warn(load):
    text = SEED.replace("return 301 https://$host$request_uri;",
                        "return 301 https://$host$request_uri;\nclient_max_body_size 5m;")
    got = load(text)
    assert got.warned('"client_max_body_size" has no effect on a server without "listen ... ssl"')
    got = load('add_header Strict-Transport-Security "max-age=1" always;\n' + SEED)
    assert got.warned('"add_header" has no effect on the redirect server')


def test_workers_and_drain(load):
    assert load("worker_processes 4;\nevents {}\nhttp {\n" + site() + "}\n").config.workers == 4


def test_escapes_as_nginx_lexes_them(load):
    got = load(site(server='    add_header Strict-Transport-Security "max-age=1; \\"x\\"" always;'))
    assert got.server.add_headers[0].value == 'max-age=1; "x"'


def test_a_stray_brace_mid_file_is_an_error_not_the_end_of_the_file(error):
    """crossplane's parser stops at a top-level "}" and drops what follows: not here."""
    text = SEED.replace("server {\nlisten 80;", "}\nserver {\nlisten 80;")
    err = error(text)
    assert 'unexpected "}"' in str(err) and err.line == line_of(text, "listen 80;") - 2


def test_end_of_file_inside_a_directive(error):
    for text in (SEED + "worker_processes", SEED + "worker_processes\n"):
        err = error(text)
        assert 'unexpected end of file, expecting ";" or "}"' in str(err)
        assert err.line == len(text.splitlines()) + text.endswith("\n")


def test_resolver_is_parsed(error):
    assert 'invalid value "5x"' in str(error(site(server="    resolver 8.8.8.8 valid=5x;"), "resolver"))


# ---- client certificates ------------------------------------------------------------------------

def test_client_certificate_directives_map_to_the_policy(load, tmp_path, write, ca):
    write("clients.pem", ca.cert_pem)
    got = load(site(http="ssl_verify_depth 3;", server="    ssl_client_certificate clients.pem;\n"
                                                       "    ssl_verify_client optional;"))
    tls = got.server.tls
    assert (tls.verify_client, tls.client_ca, tls.verify_depth) == ("optional", str(tmp_path / "clients.pem"), 3)
    assert got.warnings == []
    plain = load(site()).server.tls
    assert (plain.verify_client, plain.client_ca, plain.verify_depth) == ("off", None, 1)   # nginx's defaults


def test_ssl_client_certificate_is_read_only_when_verifying(load, error, write):
    assert load(site(server="    ssl_client_certificate absent.pem;")).server.tls.client_ca is None   # as nginx
    err = error(site(server="    ssl_client_certificate absent.pem;\n    ssl_verify_client on;"),
                "ssl_client_certificate")
    assert "absent.pem" in str(err)
    write("junk.pem", b"junk\n")
    err = error(site(server="    ssl_client_certificate junk.pem;\n    ssl_verify_client on;"), "ssl_client_certificate")
    assert "junk.pem" in str(err) and "no certificate" in str(err)


@pytest.mark.parametrize("mode", ["on", "optional"])
def test_verify_client_needs_a_client_certificate(error, mode):
    err = error(site(server=f"    ssl_verify_client {mode};"), "ssl_verify_client")
    assert "no ssl_client_certificate for ssl_verify_client" in str(err)


def test_optional_no_ca_needs_no_client_certificate(load):
    assert load(site(server="    ssl_verify_client optional_no_ca;")).server.tls.verify_client == "optional_no_ca"


def test_bad_verify_client_value_is_located(error):
    err = error(site(server="    ssl_verify_client maybe;"), "ssl_verify_client")
    assert 'invalid value "maybe" in "ssl_verify_client" directive' in str(err)


def test_ssl_client_variables_in_proxy_set_header(load):
    names = ["verify", "s_dn", "i_dn", "serial", "fingerprint", "escaped_cert", "cert"]
    got = load(site(location="\n".join(f"        proxy_set_header X-{n} $ssl_client_{n};" for n in names)))
    headers = {h.name: h.value for h in got.server.routes[0].proxy.headers}
    assert all(headers[f"X-{n}"] == f"$ssl_client_{n}" for n in names)


def test_ssl_reject_handshake_server_needs_no_certificate_nor_location(load):
    got = load(site(http="server { listen 443 ssl default_server; ssl_reject_handshake on; }"))
    reject = got.config.servers[0]
    assert reject.reject_handshake and reject.certificates == [] and reject.routes == []
    assert reject.default_server
    assert not got.config.servers[1].reject_handshake


# ---- access_log, log_format ------------------------------------------------------------------------

MAIN = """log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                    '$status $body_bytes_sent "$http_referer" "$http_user_agent"';"""


def test_access_log_path_is_combined_relative_to_the_prefix(load, tmp_path):
    got = load(site(http="access_log logs/access.log;"))
    assert got.config.access_log == str(tmp_path / "logs/access.log")
    assert got.config.access_log_format == "combined"
    assert load(site(http="access_log /l/a.log;", server="access_log off;")).config.access_log is None
    assert load(site()).config.access_log is None   # nginx would write its logs/access.log


def test_log_format_equal_to_combined_and_custom_templates(load):
    assert load(site(http=MAIN + "\naccess_log /l/a.log main;")).config.access_log_format == "combined"
    got = load(site(http="log_format t escape=default '$remote_addr $ssl_protocol ' '$upstream_addr $request_time';"
                         "\naccess_log /l/a.log t buffer=32k flush=5s;"))
    assert got.config.access_log_format == "$remote_addr $ssl_protocol $upstream_addr $request_time"
    assert got.warned('"access_log ... buffer=32k" is ignored')


@pytest.mark.parametrize("http, location, needle, message", [
    ("log_format t '$remote_addr $http_x_forwarded_for';\naccess_log /l/a.log t;", "", "log_format t",
     '"log_format t" is not supported yet: log_format variable "$http_x_forwarded_for" is not one fastterm logs'),
    ("log_format t escape=json '$remote_addr';\naccess_log /l/a.log t;", "", "log_format t",
     '"log_format escape=json" is not supported yet'),
    ("access_log /l/a.log nosuch;", "", "access_log", 'unknown log format "nosuch"'),
    ("access_log /l/a.log;", "access_log /l/b.log;", "access_log /l/b.log",
     '"access_log" is not supported yet: a value differing between servers or locations'),
    ("access_log syslog:server=127.0.0.1;", "", "access_log", '"access_log syslog:server=127.0.0.1" is not'),
    ("access_log /l/a.log combined gzip;", "", "access_log", '"access_log ... gzip" is not supported yet'),
    ("access_log /l/a.log;\naccess_log /l/b.log;", "", "access_log /l/b.log", "fastterm writes one access log"),
])
def test_access_logs_fastterm_cannot_write_are_refused_at_their_line(error, http, location, needle, message):
    assert message in str(error(site(http=http, location=location), needle))


def test_user_maps_with_nginx_default_group(load, error):
    """``user NAME [GROUP]``: no GROUP means the group named as the user (nginx's
    ngx_set_user), so Debian's ``user nobody;`` fails there too: its group is nogroup."""
    got = load("user nobody nogroup;\nevents {}\nhttp {\n" + site() + "}\n")
    assert (got.config.user, got.config.group) == ("nobody", "nogroup") and got.warnings == []
    try:
        grp.getgrnam("nobody")
    except KeyError:      # Debian; Fedora has a nobody group
        err = error("user nobody;\nevents {}\nhttp {\n" + site() + "}\n", "user nobody")
        assert "unknown group 'nobody'" in str(err)
    err = error("user no-such-user-fastterm;\nevents {}\nhttp {\n" + site() + "}\n", "user no-such")
    assert "unknown user 'no-such-user-fastterm'" in str(err)
