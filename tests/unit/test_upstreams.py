"""Upstreams, sans-IO: the balancing (nginx's smooth weighted round robin, least_conn,
backup, max_fails/fail_timeout) on an UpstreamPool without a socket, the backend TLS client
on memory BIOs (name check, verify reason, session resumption), and the configuration of
both from fastterm.toml and nginx.conf."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
from fastterm._core import CLOSED, FAILED, WANT_READ, TLSConnection, TLSContext, UpstreamPool

from fastterm.config.nginx import load_config as load_nginx
from fastterm.config.toml import load_config as load_toml
from fastterm.config.toml import parse_upstream_server
from fastterm.errors import ConfigError

OK = 0


def pool(n: int, weights=None, backup=None, max_fails=None, fail_timeout=10.0, least_conn=False) -> UpstreamPool:
    p = UpstreamPool("app", [("127.0.0.1", 8000 + i) for i in range(n)], fail_timeout=fail_timeout)
    p.set_balancing(weights or [1] * n, backup or [False] * n, max_fails or [1] * n, [fail_timeout] * n, least_conn)
    return p


# ---- balancing ----------------------------------------------------------------------------

def test_smooth_weighted_round_robin_is_nginxs_sequence():
    """nginx's example (ngx_http_upstream_round_robin.c): weights 5, 1, 1 give a a b a c a a."""
    p = pool(3, weights=[5, 1, 1])
    assert [p.choose(0.0) for _ in range(14)] == [0, 0, 1, 0, 2, 0, 0] * 2


def test_weights_split_exactly():
    p = pool(3, weights=[1, 2, 7])
    counts = collections.Counter(p.choose(0.0) for _ in range(10_000))
    assert counts == {0: 1000, 1: 2000, 2: 7000}


def test_backup_serves_only_while_every_primary_is_out():
    p = pool(3, backup=[False, False, True], fail_timeout=10.0)
    assert {p.choose(0.0) for _ in range(20)} == {0, 1}
    p.failed(0, 1.0)
    assert {p.choose(1.5) for _ in range(10)} == {1}
    p.failed(1, 2.0)
    assert {p.choose(2.5) for _ in range(10)} == {2}
    # fail_timeout later, the primaries are tried again
    assert p.choose(11.5) in (0, 1)


def test_max_fails_counts_within_fail_timeout_and_a_success_clears_it():
    p = pool(2, max_fails=[3, 3], fail_timeout=10.0)
    p.failed(0, 1.0)
    p.failed(0, 1.1)
    assert 0 in {p.choose(1.2) for _ in range(8)}   # two of three: still in
    p.failed(0, 1.3)
    assert {p.choose(1.4) for _ in range(8)} == {1}
    picks = [p.choose(12.0) for _ in range(6)]
    assert 0 in picks                                  # back after fail_timeout, on probation
    p.succeeded(0)
    p.failed(0, 12.5)
    assert 0 in {p.choose(12.6) for _ in range(8)}    # the success cleared the count: one of three


def test_max_fails_zero_never_takes_a_server_out():
    p = pool(2, max_fails=[0, 1])
    for t in range(5):
        p.failed(0, float(t))
    assert 0 in {p.choose(5.0) for _ in range(4)}


def test_a_retry_skips_the_servers_this_request_tried():
    p = pool(3, max_fails=[0, 0, 0])
    assert {p.choose(0.0, 0b011) for _ in range(6)} == {2}
    assert {p.choose(0.0, 0b101) for _ in range(6)} == {1}


def test_all_out_falls_back_to_the_one_back_soonest():
    p = pool(2, fail_timeout=10.0)
    p.failed(1, 1.0)
    p.failed(0, 2.0)
    assert p.choose(3.0) == 1


def test_least_conn_prefers_the_idle_server():
    p = pool(3, least_conn=True)
    p.set_active(0, 4)
    p.set_active(1, 1)
    p.set_active(2, 2)
    assert {p.choose(0.0) for _ in range(5)} == {1}
    p.set_active(1, 2)
    assert [p.choose(0.0) for _ in range(4)] == [1, 2, 1, 2]   # ties: round robin among them


def test_least_conn_counts_per_weight():
    p = pool(2, weights=[3, 1], least_conn=True)
    p.set_active(0, 2)
    p.set_active(1, 1)
    assert p.choose(0.0) == 0    # 2/3 < 1/1


# ---- server strings ----------------------------------------------------------------------

def test_server_string_forms():
    s = parse_upstream_server("https://backend.internal:8443 weight=3 max_fails=2 fail_timeout=5s backup")
    assert (s.host, s.port, s.tls, s.weight, s.max_fails, s.fail_timeout, s.backup) == \
        ("backend.internal", 8443, True, 3, 2, 5.0, True)
    s = parse_upstream_server("10.0.0.10:3000", fail_timeout=30.0)
    assert (s.host, s.port, s.tls, s.weight, s.max_fails, s.fail_timeout, s.backup) == \
        ("10.0.0.10", 3000, False, 1, 1, 30.0, False)
    assert parse_upstream_server("http://[::1]:80/").host == "::1"


@pytest.mark.parametrize("spec, message", [("ftp://a:1", "unknown scheme"), ("a:1 weight=0", "weight must be"),
                                           ("a:1 heavy", "invalid server parameter"), ("https://443", "expected"),
                                           ("a:1 fail_timeout=soon", "invalid fail_timeout")])
def test_bad_server_strings(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_upstream_server(spec)


# ---- fastterm.toml -----------------------------------------------------------------------

def toml_config(ec_files, upstream: str) -> str:
    cert, key = ec_files
    return f"""
[[upstream]]
name = "app"
{upstream}

[[server]]
listen = ["127.0.0.1:8443"]
[[server.certificate]]
cert = "{cert}"
key = "{key}"
"""


def test_https_servers_verify_by_default(write, ec_files):
    config = load_toml(write("f.toml", toml_config(ec_files, 'servers = ["https://backend.internal:8443"]')))
    tls = config.upstreams[0].tls
    assert (tls.verify, tls.ca_file, tls.server_name, tls.sni, tls.session_reuse) == ("required", None, None, True, True)


def test_tls_table_paths_are_absolute(write, ec_files, tmp_path):
    write("ca.pem", b"")
    write("client.pem", b"")
    text = toml_config(ec_files, 'servers = ["10.0.0.10:3000 weight=2", "10.0.0.11:3000 backup"]\n'
                                 'balance = "least_conn"\n[upstream.tls]\nca_file = "ca.pem"\n'
                                 'cert = "client.pem"\nserver_name = "notes"')
    up = load_toml(write("f.toml", text)).upstreams[0]
    assert up.tls.ca_file == str(tmp_path / "ca.pem") and up.tls.cert == str(tmp_path / "client.pem")
    assert up.balance == "least_conn"


@pytest.mark.parametrize("upstream, message", [
    ('servers = ["https://a:1", "b:2"]', "mixes https:// and plain servers"),
    ('servers = ["a:1 backup"]', "only backup servers"),
    ('servers = ["a:1 weight=x"]', "invalid server parameter"),
    ('servers = ["a:1"]\n[upstream.tls]\nkey = "k.pem"', "tls.key without tls.cert"),
    ('servers = ["a:1"]\n[upstream.tls]\nverify = "optional"', "verify"),
    ('servers = ["a:1"]\n[upstream.tls]\nca_file = "missing.pem"', "cannot read .*missing.pem"),
])
def test_bad_upstream_tables(write, ec_files, upstream, message):
    with pytest.raises(ConfigError, match=message):
        load_toml(write("f.toml", toml_config(ec_files, upstream)))


# ---- nginx.conf --------------------------------------------------------------------------

def nginx_site(location: str, proxy_pass: str = "https://notes") -> str:
    return f"""
upstream notes {{ server 127.0.0.1:8081; }}
server {{
    listen 443 ssl;
    ssl_certificate certs/ec.crt;
    ssl_certificate_key certs/ec.key;
    location / {{
        proxy_pass {proxy_pass};
{location}
    }}
}}
"""


def test_proxy_ssl_directives_map(write, ec_files, tmp_path):
    ca = write("certs/chain.pem", Path(ec_files[0]).read_bytes())
    text = nginx_site(f"""
        proxy_ssl_certificate certs/ec.crt;
        proxy_ssl_certificate_key certs/ec.key;
        proxy_ssl_verify on;
        proxy_ssl_trusted_certificate {ca};
        proxy_ssl_verify_depth 2;
        proxy_ssl_server_name on;
        proxy_ssl_name backend.internal;
        proxy_ssl_session_reuse off;
        proxy_ssl_protocols TLSv1.1 TLSv1.2;
        proxy_ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256;""")
    warnings = []
    tls = load_nginx(write("nginx.conf", text), lambda m, level="warn": warnings.append(m)).upstreams[0].tls
    assert (tls.verify, tls.ca_file, tls.verify_depth, tls.server_name, tls.sni) == \
        ("required", ca, 2, "backend.internal", True)
    assert (tls.cert, tls.key) == (str(tmp_path / "certs/ec.crt"), str(tmp_path / "certs/ec.key"))
    assert (tls.session_reuse, tls.protocols, tls.ciphers) == (False, ["TLSv1.2"], "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert any('"proxy_ssl_protocols TLSv1.1" is ignored' in w for w in warnings)


def test_proxy_pass_https_takes_nginxs_defaults_and_hints_at_verification(write, ec_files):
    warnings = []
    config = load_nginx(write("nginx.conf", nginx_site("")), lambda m, level="warn": warnings.append(m))
    tls = config.upstreams[0].tls
    assert (tls.verify, tls.sni, tls.server_name, tls.session_reuse, tls.verify_depth) == \
        ("none", False, "notes", True, None)
    assert any('without "proxy_ssl_verify on"' in w and "proxy_ssl_trusted_certificate" in w for w in warnings)


def test_implicit_https_upstream_name_and_port(write, ec_files):
    config = load_nginx(write("nginx.conf", nginx_site("", "https://127.0.0.1")))
    up = next(u for u in config.upstreams if u.tls is not None)
    assert (up.name, up.servers, up.tls.server_name) == ("127.0.0.1", ["127.0.0.1:443"], "127.0.0.1")
    config = load_nginx(write("nginx2.conf", nginx_site("", "https://127.0.0.1:8443")))
    up = next(u for u in config.upstreams if u.tls is not None)
    assert (up.name, up.tls.server_name) == ("127.0.0.1:8443", "127.0.0.1")


@pytest.mark.parametrize("location, message, needle", [
    ("        proxy_ssl_verify on;", 'no "proxy_ssl_trusted_certificate" for "proxy_ssl_verify"', "proxy_ssl_verify on"),
    ("        proxy_ssl_certificate certs/ec.crt;", 'no "proxy_ssl_certificate_key" is defined',
     "proxy_ssl_certificate certs"),
    ("        proxy_ssl_name $host;", "is not supported yet", "proxy_ssl_name"),
    ("        proxy_ssl_crl crl.pem;", "is not supported yet", "proxy_ssl_crl"),
])
def test_proxy_ssl_errors_are_located(write, ec_files, location, message, needle):
    text = nginx_site(location)
    path = write("nginx.conf", text)
    with pytest.raises(ConfigError, match=message) as info:
        load_nginx(path)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if needle in t)
    assert (info.value.file, info.value.line) == (path, line)


def test_one_upstream_with_two_tls_settings_is_refused(write, ec_files):
    text = nginx_site("").replace("    location / {", """\
    location /plain { proxy_pass http://notes; }
    location / {""")
    with pytest.raises(ConfigError, match="other TLS settings"):
        load_nginx(write("nginx.conf", text))


# ---- the backend TLS client, on memory BIOs ------------------------------------------------

def pump(client: TLSConnection, server: TLSConnection) -> tuple[int, int]:
    c = s = WANT_READ
    for _ in range(32):
        c = client.do_handshake()
        server.feed(client.data_to_send())
        s = server.do_handshake()
        client.feed(server.data_to_send())
        if c not in (WANT_READ,) and s not in (WANT_READ,):
            break
    return c, s


@pytest.fixture(scope="module")
def backend_ctx(ec_leaf, intermediate):
    ctx = TLSContext(server_side=True)
    ctx.add_certificate(ec_leaf.cert_pem + intermediate.cert_pem, ec_leaf.key_pem)
    return ctx


@pytest.fixture(scope="module")
def trust(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("trust") / "ca.pem"
    path.write_bytes(ca.cert_pem)
    return str(path)


def test_check_name_apart_from_sni(backend_ctx, trust):
    """nginx's proxy_ssl_server_name off: no SNI, the name still checked."""
    client_ctx = TLSContext(server_side=False, cafile=trust, alpn=())
    client = TLSConnection(client_ctx, server_hostname=None, check_name="www.example.com")
    server = TLSConnection(backend_ctx)
    assert pump(client, server) == (OK, OK)
    assert server.server_name is None


def test_wrong_name_fails_with_the_verify_reason(backend_ctx, trust):
    client = TLSConnection(TLSContext(server_side=False, cafile=trust, alpn=()), check_name="backend.internal")
    c, _ = pump(client, TLSConnection(backend_ctx))
    assert c == FAILED
    assert client.error == "certificate verify failed: hostname mismatch"


def test_verify_false_checks_nothing_even_with_a_ca(backend_ctx, tmp_path):
    other = tmp_path / "other.pem"
    from fastterm.demo import make_ca

    other.write_bytes(make_ca("other").cert_pem)
    ctx = TLSContext(server_side=False, cafile=str(other), verify=False, alpn=())
    assert not ctx.verify
    client = TLSConnection(ctx, check_name="backend.internal")
    assert pump(client, TLSConnection(backend_ctx)) == (OK, OK)


def test_the_depth_limit_applies(backend_ctx, trust):
    """leaf <- intermediate <- root: depth 0 allows no CA above the leaf."""
    client = TLSConnection(TLSContext(server_side=False, cafile=trust, alpn=(), verify_depth=0),
                           check_name="www.example.com")
    c, _ = pump(client, TLSConnection(backend_ctx))
    assert c == FAILED and client.error.startswith("certificate verify failed: certificate chain too long")


def test_a_taken_session_resumes_the_next_connection(backend_ctx, trust):
    ctx = TLSContext(server_side=False, cafile=trust, alpn=())
    first, server = TLSConnection(ctx, check_name="www.example.com"), TLSConnection(backend_ctx)
    assert pump(first, server) == (OK, OK)
    assert first.take_client_session() is None   # TLS 1.3: the ticket comes after the handshake
    server.write(b"hello")
    first.feed(server.data_to_send())
    assert first.read() == b"hello"
    session = first.take_client_session()
    assert session is not None
    assert first.take_client_session() is None          # taken once
    second, server2 = TLSConnection(ctx, check_name="www.example.com"), TLSConnection(backend_ctx)
    assert second.resume_session(session)
    assert pump(second, server2) == (OK, OK)
    assert second.session_reused and server2.session_reused
    assert first.shutdown() == OK
    server.feed(first.data_to_send())
    assert server.read() == CLOSED


# ---- timeouts -----------------------------------------------------------------------------

def test_route_timeouts_resolve_route_then_upstream_then_limits():
    from fastterm.config.model import Limits, Route, Upstream
    from fastterm.config.plan import route_timeouts

    limits = Limits(backend_connect_timeout=4, backend_read_timeout=30)
    up = Upstream(name="app", servers=["127.0.0.1:1"], connect_timeout=1)
    assert route_timeouts(Route(upstream="app"), up, limits) == (1, 30, 30)   # send: the read timeout
    assert route_timeouts(Route(upstream="app", read_timeout=0.5), up, limits) == (1, 0.5, 0.5)
    assert route_timeouts(Route(upstream="app", send_timeout=7), None, Limits(backend_send_timeout=9)) == (5, 60, 7)
    assert route_timeouts(Route(upstream="app"), None, Limits(backend_send_timeout=9)) == (5, 60, 9)
