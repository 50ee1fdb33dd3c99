"""fastterm.toml loading: every error names the file, the line and the directive."""

from __future__ import annotations

import os

import pytest

from fastterm.config.toml import KeyLines, load_config, parse_address
from fastterm.errors import ConfigError

GOOD = """\
workers = 2

[[upstream]]
name = "app"
servers = ["127.0.0.1:8081", "[::1]:8082"]

[[server]]
listen = ["443", "[::]:443"]
server_names = ["example.com", "www.example.com"]
default_server = true
hsts = "max-age=63072000"

[[server.certificate]]
cert = "certs/ec.crt"
key = "certs/ec.key"

[server.tls]
protocols = ["TLSv1.3"]
session_timeout = 600
"""


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the ``occurrence``-th line containing ``needle``: tests never hardcode lines."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1]


@pytest.fixture
def load(write):
    """Write ``text`` as fastterm.toml and load it."""

    def _load(text: str):
        return load_config(write("fastterm.toml", text))

    return _load


def config_error(load, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(text)
    err = info.value
    assert "fastterm.toml" in str(err)
    return err


def assert_located(err: ConfigError, line: int, directive: str) -> None:
    assert err.line == line, str(err)
    assert f"fastterm.toml:{line}:" in str(err)
    assert directive in str(err)


def test_good_config_loads(load, tmp_path):
    config = load(GOOD)
    assert config.workers == 2
    server = config.servers[0]
    assert server.listen == ["443", "[::]:443"]
    assert server.tls.protocols == ["TLSv1.3"]
    assert server.tls.session_timeout == 600.0
    assert server.hsts == "max-age=63072000"
    assert config.upstreams[0].servers == ["127.0.0.1:8081", "[::1]:8082"]


def test_relative_certificate_paths_resolve_against_the_config_directory(load, tmp_path):
    cert = load(GOOD).servers[0].certificates[0]
    assert cert.cert == str(tmp_path / "certs" / "ec.crt")
    assert cert.key == str(tmp_path / "certs" / "ec.key")
    assert os.path.isabs(cert.cert)


def test_server_without_routes_gets_the_only_upstream(load):
    routes = load(GOOD).servers[0].routes
    assert [(r.path, r.upstream) for r in routes] == [("/", "app")]


def test_server_without_routes_and_two_upstreams_is_an_error(load):
    text = GOOD + '\n[[upstream]]\nname = "other"\nservers = ["127.0.0.1:9000"]\n'
    err = config_error(load, text)
    assert_located(err, line_of(text, "[[server]]"), "server")
    assert "exactly one upstream" in str(err)


def test_missing_file():
    with pytest.raises(ConfigError) as info:
        load_config("/nonexistent/fastterm.toml")
    assert "/nonexistent/fastterm.toml" in str(info.value)


def test_syntax_error_has_line(load):
    text = GOOD.replace('hsts = "max-age=63072000"', "hsts = max-age")
    err = config_error(load, text)
    assert err.line == line_of(text, "hsts = max-age")
    assert "syntax error" in str(err)


def test_wrong_type_names_key_and_line(load):
    text = GOOD.replace("session_timeout = 600", 'session_timeout = "ten minutes"')
    err = config_error(load, text)
    assert_located(err, line_of(text, "session_timeout"), "server.tls.session_timeout")
    assert "Expected float" in str(err)


def test_unknown_key_names_key_and_line(load):
    text = GOOD.replace("default_server = true", "default_server = true\nssl_stapling = true")
    err = config_error(load, text)
    assert_located(err, line_of(text, "ssl_stapling"), "server.ssl_stapling")
    assert "unknown directive" in str(err)


def test_missing_required_key_points_at_its_table(load):
    text = GOOD.replace('listen = ["443", "[::]:443"]\n', "")
    err = config_error(load, text)
    assert_located(err, line_of(text, "[[server]]"), "server.listen")
    assert "missing required" in str(err)


def test_error_in_second_server_points_at_second_server(load):
    second = '\n[[server]]\nlisten = ["8443"]\ncertificate = [{ cert = "b.pem" }]\nhsts = 5\n'
    text = GOOD + second
    err = config_error(load, text)
    assert_located(err, line_of(text, "hsts = 5"), "server.hsts")


def test_route_to_unknown_upstream(load):
    text = GOOD + '\n[[server.route]]\npath = "/api"\nupstream = "missing"\n'
    err = config_error(load, text)
    assert_located(err, line_of(text, 'upstream = "missing"'), "server.route.upstream")
    assert "'missing'" in str(err)


@pytest.mark.parametrize("route, needle, why", [
    ('path = "^/(a"\nregex = "~"', 'path = "^/(a"', "does not compile"),
    ('path = "^/a"\nregex = "~"\nupstream_path = "/b/"', 'path = "^/a"', "cannot have an upstream_path"),
    ('path = "\\\\.php\\\\Z"\nregex = "~"', 'path = "\\\\.php', "\\Z"),
    ('path = "/a"\nupstream_path = "b"', 'path = "/a"', "upstream_path"),
])
def test_bad_routes_are_located(load, route, needle, why):
    text = GOOD + f'\n[[server.route]]\n{route}\nupstream = "app"\n'
    err = config_error(load, text)
    assert_located(err, line_of(text, needle), "server.route.path")
    assert why in str(err)


@pytest.mark.parametrize("where, needle", [
    ("upstream", 'servers = ["127.0.0.1:8081", "[::1]:8082"]'), ("route", 'path = "/t/"')])
def test_timeouts_must_be_positive(load, where, needle):
    if where == "upstream":
        text = GOOD.replace(needle, needle + "\nread_timeout = 0")
    else:
        text = GOOD + '\n[[server.route]]\npath = "/t/"\nupstream = "app"\nconnect_timeout = -1\n'
    err = config_error(load, text)
    assert "must be more than 0" in str(err)
    assert err.line == line_of(text, "[[upstream]]" if where == "upstream" else needle), str(err)


@pytest.mark.parametrize("names", ['["www.*.com"]', '["~^(a"]', '["~a\\\\Qb"]'])
def test_bad_server_names_are_located(load, names):
    text = GOOD.replace('server_names = ["example.com", "www.example.com"]', f"server_names = {names}")
    err = config_error(load, text)
    assert_located(err, line_of(text, "server_names ="), "server.server_names")


def test_server_name_forms_load(load):
    text = GOOD.replace('server_names = ["example.com", "www.example.com"]',
                        'server_names = ["www.example.*", "~^(?<sub>\\\\w+)\\\\.example\\\\.com$", "*.example.org"]')
    assert load(text).servers[0].server_names == ["www.example.*", r"~^(?<sub>\w+)\.example\.com$", "*.example.org"]


def test_regex_route_upstream_path_and_body_limit_load(load):
    text = GOOD.replace('hsts = "max-age=63072000"\n', 'hsts = "max-age=63072000"\nclient_max_body_size = 1024\n') + (
        '\n[[server.route]]\npath = "\\\\.php$"\nregex = "~"\nupstream = "app"\nclient_max_body_size = 0\n'
        '\n[[server.route]]\npath = "/v1/"\nupstream = "app"\nupstream_path = "/api/"\nno_regex = true\n')
    server = load(text).servers[0]
    assert [(r.path, r.regex, r.no_regex, r.upstream_path, r.client_max_body_size) for r in server.routes] == [
        ("\\.php$", "~", False, None, 0), ("/v1/", "", True, "/api/", None)]
    assert server.client_max_body_size == 1024


def test_server_needs_a_certificate(load):
    text = GOOD.replace('[[server.certificate]]\ncert = "certs/ec.crt"\nkey = "certs/ec.key"\n',
                        "certificate = []\n")
    err = config_error(load, text)
    assert_located(err, line_of(text, "certificate = []"), "server.certificate")


def test_server_needs_a_listen(load):
    text = GOOD.replace('listen = ["443", "[::]:443"]', "listen = []")
    err = config_error(load, text)
    assert_located(err, line_of(text, "listen = []"), "server.listen")


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "::1:443", "host:", "[::1]443", "[nope]:443", ":443"])
def test_bad_listen_address(load, address):
    text = GOOD.replace('listen = ["443", "[::]:443"]', f'listen = ["{address}"]')
    err = config_error(load, text)
    assert_located(err, line_of(text, "listen ="), "server.listen")


def test_bad_upstream_server_address(load):
    text = GOOD.replace('"[::1]:8082"', '"backend:http"')
    err = config_error(load, text)
    assert_located(err, line_of(text, "servers ="), "upstream.servers")


def test_duplicate_server_name_on_the_same_listen(load):
    second = ('\n[[server]]\nlisten = ["443"]\nserver_names = ["WWW.example.com"]\n'
              'certificate = [{ cert = "b.pem" }]\n')
    text = GOOD + second
    err = config_error(load, text)
    assert_located(err, line_of(text, "server_names", 2), "server.server_names")
    assert "WWW.example.com" in str(err)


def test_same_server_name_on_other_listens_is_fine(load):
    second = ('\n[[server]]\nlisten = ["8443"]\nserver_names = ["example.com"]\n'
              'certificate = [{ cert = "b.pem" }]\n')
    assert len(load(GOOD + second).servers) == 2


def test_two_default_servers_on_one_listen(load):
    second = ('\n[[server]]\nlisten = ["0.0.0.0:443"]\ndefault_server = true\n'
              'certificate = [{ cert = "b.pem" }]\n')
    text = GOOD + second
    err = config_error(load, text)
    assert_located(err, line_of(text, "default_server", 2), "server.default_server")
    assert f"line {line_of(text, '[[server]]')}" in str(err)


@pytest.mark.parametrize("protocol", ["TLSv1", "TLSv1.1", "SSLv3"])
def test_old_protocols_are_refused(load, protocol):
    text = GOOD.replace('protocols = ["TLSv1.3"]', f'protocols = ["{protocol}", "TLSv1.2"]')
    err = config_error(load, text)
    assert_located(err, line_of(text, "protocols"), "server.tls.protocols")
    assert f"{protocol} is refused by fastterm" in str(err)


def test_unknown_protocol(load):
    text = GOOD.replace('protocols = ["TLSv1.3"]', 'protocols = ["TLSv1.4"]')
    err = config_error(load, text)
    assert_located(err, line_of(text, "protocols"), "server.tls.protocols")


def test_duplicate_upstream_name(load):
    text = GOOD + '\n[[upstream]]\nname = "app"\nservers = ["127.0.0.1:9000"]\n'
    err = config_error(load, text)
    assert_located(err, line_of(text, 'name = "app"', 2), "upstream.name")


@pytest.mark.parametrize("address, expected", [
    ("443", ("0.0.0.0", 443)),
    ("*:8443", ("0.0.0.0", 8443)),
    ("127.0.0.1:80", ("127.0.0.1", 80)),
    ("[::1]:443", ("::1", 443)),
    ("[::]:443", ("::", 443)),
    ("localhost:8081", ("localhost", 8081)),
])
def test_parse_address(address, expected):
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", "0", "65536", "::1", "[::1]", "host", "host:port", "[::1]:x"])
def test_parse_address_rejects(address):
    with pytest.raises(ValueError):
        parse_address(address)


def test_key_lines_follow_arrays_of_tables_dotted_keys_and_multiline_values():
    text = """\
[[server]]
listen = [
  "443",  # a = 1
]
tls.ciphers = "x"
hsts = \"\"\"
fake = 1
\"\"\"
[[server.route]]
upstream = "a"
[[server]]
listen = ["8443"]
"""
    keys = KeyLines(text)
    assert keys.line(("server", 0, "listen", 0)) == 2
    assert keys.line(("server", 0, "tls", "ciphers")) == 5
    assert keys.line(("server", 0, "fake")) == 1
    assert keys.line(("server", 0, "route", 0, "upstream")) == 10
    assert keys.line(("server", 1, "listen")) == 12
    assert keys.line(("upstream",)) is None


# ---- [[redirect]] ------------------------------------------------------------------------

REDIRECT = GOOD + """
[[redirect]]
listen = ["80"]
"""


def test_redirect_defaults_are_fastterms_own_answer(load):
    redirect = load(REDIRECT).redirects[0]
    assert (redirect.https_port, redirect.status, redirect.location, redirect.text, redirect.keepalive_requests,
            redirect.server_names, redirect.default_server) == (443, 301, None, None, 0, [], False)


def test_redirect_with_nginx_fields_round_trips(load, write):
    from fastterm.config.toml import dump_config

    text = REDIRECT + """server_names = ["example.com", "*.example.com"]
status = 308
location = "https://$host:8443$uri$is_args$args"
keepalive_requests = 1000
keepalive_timeout = 5

[[redirect]]
listen = ["80"]
server_names = ["_"]
default_server = true
status = 404
text = "no such site\\n"
"""
    config = load(text)
    assert [(r.status, r.location, r.text) for r in config.redirects] == [
        (308, "https://$host:8443$uri$is_args$args", None), (404, None, "no such site\n")]
    assert load_config(write("dumped/fastterm.toml", dump_config(config))) == config


@pytest.mark.parametrize(("lines", "key", "message"), [
    ('status = 304', "status", "status 304"),
    ('status = 404\nlocation = "https://x/"', "location", "location with status 404"),
    ('text = "x"', "text", "text with status 301"),
    ('location = "https://$remote_addr/"', "location", "unknown variable $remote_addr"),
    ('keepalive_requests = -1', "keepalive_requests", "keepalive_requests must be 0 or more"),
    ('keepalive_timeout = 0', "keepalive_timeout", "keepalive_timeout must be positive"),
    ('server_names = ["www.*"]', "server_names", "exact names or *.suffix"),
])
def test_redirect_field_errors_name_the_key(load, lines, key, message):
    text = REDIRECT + lines + "\n"
    err = config_error(load, text)
    assert message in str(err)
    assert_located(err, line_of(text, lines.splitlines()[-1]), f"redirect.{key}")


def test_header_line_size_defaults_off_and_is_checked(load):
    assert load(GOOD).limits.header_line_size == 0   # TOML: no line limit, 431 for a head too large
    assert load(GOOD + "\n[limits]\nheader_line_size = 2048\n").limits.header_line_size == 2048
    for value in ("-1", "20000"):
        text = GOOD + f"\n[limits]\nheader_line_size = {value}\n"
        err = config_error(load, text)
        assert "header_line_size must be 0" in str(err)
        assert_located(err, line_of(text, "header_line_size"), "limits.header_line_size")


def test_dhparam_is_made_absolute_and_checked(load, write, tmp_path, dhparam_pem):
    write("dh/params.pem", dhparam_pem)
    assert load(GOOD).servers[0].tls.dhparam is None
    text = GOOD + 'dhparam = "dh/params.pem"\n'
    assert load(text).servers[0].tls.dhparam == str(tmp_path / "dh/params.pem")
    for name, content, reason in (("absent.pem", None, "No such file"), ("bad.pem", b"junk", "no DH parameters")):
        if content is not None:
            write(name, content)
        bad = GOOD + f'dhparam = "{name}"\n'
        err = config_error(load, bad)
        assert reason in str(err) and name in str(err)
        assert_located(err, line_of(bad, "dhparam"), "server.tls.dhparam")


CLIENT_CA = GOOD + 'verify_client = "{mode}"\n{extra}'


def test_client_verification_keys(load, write, tmp_path, ca):
    write("clients.pem", ca.cert_pem)
    tls = load(CLIENT_CA.format(mode="on", extra='client_ca = "clients.pem"\nverify_depth = 2\n')).servers[0].tls
    assert (tls.verify_client, tls.client_ca, tls.verify_depth) == ("on", str(tmp_path / "clients.pem"), 2)
    assert load(GOOD).servers[0].tls.verify_client == "off"


@pytest.mark.parametrize("mode", ["on", "optional"])
def test_verify_client_needs_client_ca(load, mode):
    text = CLIENT_CA.format(mode=mode, extra="")
    err = config_error(load, text)
    assert_located(err, line_of(text, "verify_client"), "verify_client")
    assert "needs client_ca" in str(err)


@pytest.mark.parametrize("content, reason", [(None, "No such file"), (b"junk\n", "no certificate")])
def test_bad_client_ca_is_located(load, write, content, reason):
    if content is not None:
        write("clients.pem", content)
    text = CLIENT_CA.format(mode="optional_no_ca", extra='client_ca = "clients.pem"\n')
    err = config_error(load, text)
    assert_located(err, line_of(text, "client_ca"), "client_ca")
    assert reason in str(err)


def test_unknown_verify_client_mode(load):
    text = CLIENT_CA.format(mode="maybe", extra="")
    assert_located(config_error(load, text), line_of(text, "verify_client"), "verify_client")


def test_reject_handshake_server_needs_no_certificate(load):
    minimal = """\
[[upstream]]
name = "app"
servers = ["127.0.0.1:8081"]

[[server]]
listen = ["127.0.0.1:8443"]
default_server = true
reject_handshake = true
"""
    config = load(minimal)
    assert config.servers[0].reject_handshake and config.servers[0].routes == []
    err = config_error(load, minimal.replace("reject_handshake = true\n", ""))
    assert "no certificate" in str(err)


def test_client_cert_header_names_must_be_field_names(tmp_path):
    from fastterm._core import UpstreamPool

    from fastterm.config.model import Certificate, ClientCertHeaders, Route, Server
    from fastterm.config.plan import _server_policy

    pools = {"app": UpstreamPool("app", [("127.0.0.1", 1)])}
    for bad in ("Bad Name", "X-Ok:", "Caf\u00e9"):
        server = Server(listen=["127.0.0.1:8443"], certificates=[Certificate(cert="x.pem")],
                        routes=[Route(path="/", upstream="app")], client_cert_headers=ClientCertHeaders(subject=bad))
        with pytest.raises(ConfigError, match="client_cert_headers.subject"):
            _server_policy(server, pools, 0)
    ok = Server(listen=["127.0.0.1:8443"], certificates=[Certificate(cert="x.pem")],
                routes=[Route(path="/", upstream="app")], client_cert_headers=ClientCertHeaders(issuer=""))
    _server_policy(ok, pools, 0)


def test_access_log_settings(load, tmp_path):
    config = load('access_log = "logs/access.log"\naccess_log_format = "combined"\n' + GOOD)
    assert config.access_log == str(tmp_path / "logs/access.log")
    assert config.access_log_format == "combined"
    assert load('access_log = "off"\n' + GOOD).access_log is None
    assert load(GOOD).access_log is None and load(GOOD).access_log_format == "json"
    assert load('access_log_format = "$remote_addr $status"\n' + GOOD).access_log_format == "$remote_addr $status"


def test_access_log_format_with_a_variable_not_logged_is_located(load):
    text = 'access_log = "a.log"\naccess_log_format = "$remote_addr $cookie_x"\n' + GOOD
    err = config_error(load, text)
    assert_located(err, line_of(text, "access_log_format"), "access_log_format")
    assert '"$cookie_x" is not one fastterm logs' in str(err)


def test_an_access_log_that_cannot_be_opened_fails_check(tmp_path, write):
    from fastterm.config.plan import build

    config = load_config(write("fastterm.toml", f'access_log = "{tmp_path}/missing/access.log"\n' + GOOD))
    with pytest.raises(ConfigError, match=r"access_log: cannot write .*/missing/access.log: no directory"):
        build(config)
    assert not (tmp_path / "missing").exists()
