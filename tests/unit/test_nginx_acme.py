"""nginx's ACME module (ngx_http_acme_module: acme_issuer, acme_certificate, $acme_certificate)
-> the model's ``Acme`` (fastterm/config/nginx.py): each directive, its defaults, the names
taken from server_name, the port-80 server http-01 needs, and every refusal at its file:line."""

from __future__ import annotations

import subprocess

import pytest

from fastterm.config.model import Acme, Certificate, Redirect
from fastterm.config.nginx import load_config
from fastterm.config.toml import dump_config
from fastterm.config.toml import load_config as load_toml
from fastterm.errors import ConfigError

ISSUER = """\
    uri         https://acme.example.com/directory;
    contact     admin@example.test;
    state_path  /var/cache/nginx/acme-example;
    accept_terms_of_service;
"""


def conf(issuer: str = ISSUER, server: str = "    acme_certificate example;\n", http: str = "resolver 127.0.0.1:53;",
         plain: str = "server {\n    listen 80;\n    location / {\n        return 404;\n    }\n}\n",
         names: str = ".example.test", cert: str = "$acme_certificate", key: str = "$acme_certificate_key") -> str:
    """nginx.org's example configuration for the module, with a location that proxies."""
    return f"""\
{http}

acme_issuer example {{
{issuer}}}

acme_shared_zone zone=ngx_acme_shared:1M;

server {{
    listen 443 ssl;
    server_name  {names};
{server}
    ssl_certificate       {cert};
    ssl_certificate_key   {key};

    # do not parse the certificate on each request
    ssl_certificate_cache max=2;

    location / {{
        proxy_pass http://127.0.0.1:8081;
    }}
}}

{plain}"""


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    return hits[occurrence - 1 if occurrence > 0 else occurrence]


@pytest.fixture
def load(write, ec_files):
    def _load(text: str):
        warnings: list[str] = []
        config = load_config(write("nginx.conf", text), lambda m, level="warn": warnings.append(m))
        return config, warnings

    return _load


@pytest.fixture
def error(write, ec_files):
    """``error(text, needle)`` -> the message, checked to be located at the line holding ``needle``
    (its last occurrence: a duplicate is refused where it repeats)."""

    def _error(text: str, needle: str) -> str:
        path = write("nginx.conf", text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        line = line_of(text, needle, -1)
        assert (info.value.file, info.value.line) == (path, line), str(info.value)
        assert str(info.value).startswith(f"{path}:{line}: ")
        return str(info.value)

    return _error


def test_the_modules_example_maps_onto_server_acme(load):
    config, warnings = load(conf())
    server = config.servers[0]
    assert server.certificates == []
    assert server.acme == Acme(directory="https://acme.example.com/directory", email="admin@example.test",
                               accept_terms=True, ca_file=None, state_dir="/var/cache/nginx/acme-example",
                               challenge="http-01", key_type="ecdsa", names=["www.example.test", "example.test"])
    assert config.acme is None
    # the port-80 server the CA's http-01 request reaches stays in the model
    assert [(r.listen, r.status) for r in config.redirects] == [(["0.0.0.0:80"], 404)]
    assert any('"acme_shared_zone" is ignored' in w for w in warnings)
    assert any('"ssl_certificate_cache" is ignored' in w for w in warnings)
    assert any('"resolver" is ignored' in w and "ACME servers" in w for w in warnings)


def test_a_port_80_server_that_only_redirects_stays_a_redirect(load):
    config, _ = load(conf(plain="server {\n    listen 80;\n    server_name example.test;\n"
                                "    return 301 https://$host$request_uri;\n}\n"))
    assert config.redirects == [Redirect(listen=["0.0.0.0:80"], server_names=["example.test"], status=301,
                                         location="https://$host$request_uri", keepalive_requests=1000,
                                         keepalive_timeout=75.0)]
    assert config.servers[0].acme is not None


def test_every_issuer_directive(load, write, ca, tmp_path):
    write("acme/pebble.pem", ca.cert_pem)
    config, warnings = load(conf(
        issuer="    uri https://old.example/dir;\n    uri https://127.0.0.1:14000/dir;\n"
               "    contact mailto:ops@example.test;\n    state_path state/pebble;\n"
               "    ssl_trusted_certificate acme/pebble.pem;\n    ssl_verify on;\n    challenge tls-alpn;\n"
               "    common_name_in_csr off;\n    account_key ecdsa:384;\n",
        server="    acme_certificate example API.example.test 192.0.2.1 2001:db8::0001 .example.test key=rsa;\n",
        plain=""))
    assert config.servers[0].acme == Acme(
        directory="https://127.0.0.1:14000/dir", email="ops@example.test", accept_terms=False,
        ca_file=str(tmp_path / "acme/pebble.pem"), state_dir=str(tmp_path / "state/pebble"),
        challenge="tls-alpn-01", key_type="rsa",
        names=["api.example.test", "192.0.2.1", "2001:db8::1", "www.example.test", "example.test"])
    assert any('"account_key ecdsa:384" is ignored' in w for w in warnings)
    assert config.redirects == []     # tls-alpn-01 is answered on the TLS port


def test_defaults_of_an_issuer_and_a_certificate(load):
    config, _ = load(conf(issuer="    uri https://acme.example.com/directory;\n    challenge http-01;\n",
                          server="    acme_certificate example key=ecdsa:256;\n", names="www.example.test"))
    acme = config.servers[0].acme
    assert (acme.email, acme.accept_terms, acme.ca_file, acme.challenge, acme.key_type, acme.names) == (
        None, False, None, "http-01", "ecdsa", ["www.example.test"])
    assert acme.state_dir == f"{Acme().state_dir}/example"   # one directory per issuer, as nginx's acme_NAME


def test_names_from_server_name_as_nginx_reads_them(load):
    config, warnings = load(conf(names="Example.test www.example.test ~^(?<sub>.+)\\.example\\.test$ \"\"",
                                 server="    server_name example.test api.example.test;\n"
                                        "    acme_certificate example;\n"))
    assert config.servers[0].acme.names == ["example.test", "www.example.test", "api.example.test"]
    assert any("unsupported regular expression in server_name: ~^(?<sub>" in w for w in warnings)


def test_certificate_files_beside_the_acme_one(load, tmp_path):
    text = conf().replace("    ssl_certificate_key   $acme_certificate_key;\n",
                          "    ssl_certificate_key   $acme_certificate_key;\n"
                          "    ssl_certificate certs/ec.crt;\n    ssl_certificate_key certs/ec.key;\n")
    server = load(text)[0].servers[0]
    assert server.certificates == [Certificate(cert=str(tmp_path / "certs/ec.crt"), key=str(tmp_path / "certs/ec.key"))]
    assert server.acme.names == ["www.example.test", "example.test"]


def test_two_issuers_and_variables_inherited_from_http(load):
    text = """\
resolver 127.0.0.1;
acme_issuer le { uri https://acme-v02.api.letsencrypt.org/directory; accept_terms_of_service; }
acme_issuer test { uri https://127.0.0.1:14000/dir; challenge tls-alpn-01; state_path /tmp/acme-test; }
ssl_certificate $acme_certificate;
ssl_certificate_key $acme_certificate_key;
server { listen 443 ssl; server_name a.example.test; acme_certificate le;
         location / { proxy_pass http://127.0.0.1:8081; } }
server { listen 443 ssl; server_name b.example.test; acme_certificate test b.example.test c.example.test;
         location / { proxy_pass http://127.0.0.1:8081; } }
server { listen 80; return 301 https://$host$request_uri; }
"""
    a, b = load(text)[0].servers
    assert (a.acme.directory, a.acme.names, a.acme.state_dir, a.acme.challenge) == (
        "https://acme-v02.api.letsencrypt.org/directory", ["a.example.test"], f"{Acme().state_dir}/le", "http-01")
    assert (b.acme.directory, b.acme.names, b.acme.state_dir, b.acme.challenge) == (
        "https://127.0.0.1:14000/dir", ["b.example.test", "c.example.test"], "/tmp/acme-test", "tls-alpn-01")
    assert a.certificates == b.certificates == []


def test_convert_round_trip(load, write):
    config, _ = load(conf())
    toml_text = dump_config(config)
    assert "[server.acme]" in toml_text
    assert load_toml(write("converted/fastterm.toml", toml_text)) == config


@pytest.mark.parametrize("change, needle, message", [
    ({"server": ""}, "ssl_certificate       $acme_certificate;",
     '"$acme_certificate" without "acme_certificate" in the server at'),
    ({"key": "certs/ec.key"}, "ssl_certificate_key   certs/ec.key",
     '"ssl_certificate $acme_certificate" goes with "ssl_certificate_key $acme_certificate_key"'),
    ({"cert": "certs/ec.crt"}, "ssl_certificate       certs/ec.crt",
     '"ssl_certificate_key $acme_certificate_key" goes with "ssl_certificate $acme_certificate"'),
    ({"cert": "certs/ec.crt", "key": "certs/ec.key"}, "acme_certificate example",
     '"acme_certificate" is not supported yet: a server whose "ssl_certificate" is not "$acme_certificate"'),
    ({"server": "    acme_certificate other;\n"}, "acme_certificate other", 'issuer "other" is missing'),
    ({"server": "    acme_certificate example;\n    acme_certificate example;\n"}, "acme_certificate example",
     '"acme_certificate" directive is duplicate'),
    ({"issuer": "    contact a@example.test;\n"}, "acme_issuer example", '"uri" is missing'),
    ({"issuer": "    uri http://acme.example.com/dir;\n"}, "uri http://",
     '"uri http://acme.example.com/dir" is not supported yet'),
    ({"issuer": "    uri acme.example.com;\n"}, "uri acme.example.com", 'invalid value "acme.example.com"'),
    ({"issuer": ISSUER + "    ssl_verify off;\n"}, "ssl_verify off",
     '"ssl_verify off" is not supported yet: fastterm always verifies'),
    ({"issuer": ISSUER + "    external_account_key kid-1 data:c2VjcmV0;\n"}, "external_account_key",
     '"external_account_key" is not supported yet: external account binding'),
    ({"issuer": ISSUER + "    preferred_chain \"ISRG Root X1\";\n"}, "preferred_chain",
     '"preferred_chain" is not supported yet'),
    ({"issuer": ISSUER + "    profile shortlived require;\n"}, "profile", '"profile" is not supported yet'),
    ({"issuer": ISSUER + "    common_name_in_csr on;\n"}, "common_name_in_csr",
     '"common_name_in_csr on" is not supported yet'),
    ({"issuer": ISSUER + "    state_path off;\n"}, "state_path off", '"state_path" directive is duplicate'),
    ({"issuer": "    uri https://a.example/dir;\n    state_path off;\n"}, "state_path off",
     '"state_path off" is not supported yet'),
    ({"issuer": ISSUER + "    contact b@example.test;\n"}, "contact b@", "more than one contact"),
    ({"issuer": "    uri https://a.example/dir;\n    contact tel:+1555;\n"}, "contact tel",
     '"contact tel:+1555" is not supported yet: contacts other than e-mail addresses'),
    ({"issuer": "    uri https://a.example/dir;\n    contact nobody;\n"}, "contact nobody", 'invalid value "nobody"'),
    ({"issuer": ISSUER + "    challenge dns-01;\n"}, "challenge dns-01", "unsupported challenge: dns-01"),
    ({"issuer": ISSUER + "    account_key /etc/acme/account.key;\n"}, "account_key",
     '"account_key FILE" is not supported yet'),
    ({"issuer": ISSUER + "    account_key rsa:1024;\n"}, "account_key", "unsupported key size"),
    ({"issuer": ISSUER + "    ssl_trusted_certificate missing.pem;\n"}, "ssl_trusted_certificate",
     "missing.pem"),
    ({"issuer": ISSUER + "    listen 443;\n"}, "listen 443;", '"listen" directive is not allowed here'),
    ({"issuer": ISSUER + "    retries 3;\n"}, "retries 3", 'unknown directive "retries"'),
    ({"issuer": ISSUER + "    accept_terms_of_service on;\n"}, "accept_terms_of_service on",
     "invalid number of arguments"),
    ({"server": "    acme_certificate example key=ecdsa:384;\n"}, "acme_certificate example",
     '"acme_certificate ... key=ecdsa:384" is not supported yet'),
    ({"server": "    acme_certificate example key=ecdsa:999;\n"}, "acme_certificate example", "unsupported curve"),
    ({"server": "    acme_certificate example key=/etc/key.pem;\n"}, "acme_certificate example", 'invalid "key" value'),
    ({"server": "    acme_certificate example *.example.test;\n"}, "acme_certificate example",
     "wildcard names"),
    ({"names": "*.example.test"}, "server_name  *.example.test", "wildcard names"),
    ({"names": "www.example.*"}, "server_name  www.example.*", 'invalid server name "www.example.*"'),
    ({"names": "_"}, "server_name  _", 'invalid server name "_"'),
    ({"names": "~^www\\.example\\.test$"}, "acme_certificate example",
     '"acme_certificate": no identifiers found in "server_name"'),
    ({"http": ""}, "acme_issuer example", '"resolver" is not configured'),
    ({"plain": ""}, "acme_certificate example", "needs a server without ssl"),
])
def test_refusals_at_their_line(error, change, needle, message):
    assert message in error(conf(**change), needle)


def test_acme_directives_out_of_their_context(error):
    text = conf().replace("acme_shared_zone zone=ngx_acme_shared:1M;", "uri https://a.example/dir;")
    assert '"uri" directive is not allowed here' in error(text, "uri https://a.example/dir;")
    text = conf().replace("acme_shared_zone zone=ngx_acme_shared:1M;", "acme_certificate example a.example.test;")
    assert '"acme_certificate" directive is not allowed here' in error(text, "acme_certificate example a.")
    text = conf().replace("acme_shared_zone zone=ngx_acme_shared:1M;", "acme_shared_zone ngx_acme_shared:1M;")
    assert '"acme_shared_zone" must have "zone" parameter' in error(text, "acme_shared_zone")
    text = conf().replace("acme_issuer example {", "acme_issuer other {\n    uri https://b.example/dir;\n}\n"
                                                   "acme_issuer example {", 1).replace(
        "acme_issuer other", "acme_issuer example", 1)
    assert '"acme_issuer" directive is duplicate' in error(text, "acme_issuer example {")


def test_challenge_port_warnings(load):
    _, warnings = load(conf(plain="server {\n    listen 8080;\n    return 404;\n}\n"))
    assert any("http-01 tokens on port 80, where no server listens (only 8080" in w for w in warnings)
    text = conf(issuer=ISSUER + "    challenge tls-alpn-01;\n", plain="").replace("listen 443 ssl", "listen 8443 ssl")
    _, warnings = load(text)
    assert any("tls-alpn-01 on port 443" in w for w in warnings)


@pytest.fixture
def check(python, subprocess_env, tmp_path):
    def _check(path: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "fastterm", "check", "--nginx", path], check=False, capture_output=True,
                              text=True, env=subprocess_env, cwd=tmp_path, timeout=60)

    return _check


def test_check_accepts_the_acme_config_and_locates_a_refusal(check, write, ec_files):
    path = write("nginx.conf", conf())
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert f"configuration file {path} test is successful" in result.stdout
    text = conf(issuer=ISSUER + "    ssl_verify off;\n")
    path = write("nginx.conf", text)
    result = check(path)
    assert result.returncode == 1
    assert f"fastterm: [emerg] {path}:{line_of(text, 'ssl_verify off')}: \"ssl_verify off\" is not supported yet" \
        in result.stderr
    assert "test failed" in result.stderr


WEBROOT = """\
server {{
    listen 443 ssl;
    server_name www.example.test;
    ssl_certificate certs/ec.crt;
    ssl_certificate_key certs/ec.key;
    location / {{ proxy_pass http://127.0.0.1:8081; }}
}}
server {{
    listen 80;
    server_name www.example.test;
    location /.well-known/acme-challenge/ {{
        root {root};
    }}
    location / {{
        return 301 https://$host$request_uri;
    }}
}}
{more}"""


def test_a_certbot_webroot_location_maps_to_acme_challenge_dir(load, tmp_path):
    config, warnings = load(WEBROOT.format(root="/var/www/certbot", more=""))
    assert config.acme_challenge_dir == "/var/www/certbot"
    assert [(r.server_names, r.status, r.location) for r in config.redirects] == [
        (["www.example.test"], 301, "https://$host$request_uri")]
    assert not any('"root"' in w for w in warnings)
    more = ("server {\n    listen 8080;\n    location ^~ /.well-known/acme-challenge {\n        root acme;\n    }\n"
            "    location / {\n        return 404;\n    }\n}\n")
    config, _ = load(WEBROOT.format(root=tmp_path / "acme", more=more))
    assert config.acme_challenge_dir == str(tmp_path / "acme")      # relative: to the main file's directory
    assert len(config.redirects) == 2


@pytest.mark.parametrize("root, more, needle, message", [
    ("/var/www/certbot", ("server {\n    listen 8080;\n    location /.well-known/acme-challenge/ {\n"
                          "        root /srv/other;\n    }\n    location / {\n        return 404;\n    }\n}\n"),
     "location /.well-known/acme-challenge/ {", "root differs"),
    ("$document_root", "", "root $document_root", '"root" is not supported yet: variables'),
])
def test_webroot_refusals(error, root, more, needle, message):
    assert message in error(WEBROOT.format(root=root, more=more), needle)


def test_webroot_locations_nginx_would_not_reach_or_that_serve_other_files(error):
    text = WEBROOT.format(root="/var/www/certbot", more="").replace(
        "    location / {\n        return 301 https://$host$request_uri;\n    }\n",
        "    return 301 https://$host$request_uri;\n")   # a server-level return answers first
    assert '"server" is not supported yet' in error(text, "server {")
    text = WEBROOT.format(root="/var/www/certbot", more="").replace("        root /var/www/certbot;\n", "")
    assert 'a challenge location without "root"' in error(text, "location /.well-known/acme-challenge/")
