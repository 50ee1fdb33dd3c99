"""TLS 1.3 0-RTT, sans-IO parts: the shared replay table (single use, bounded, shared through
fork), the exchange's Early-Data field (fastterm's own forwarding and nginx's $ssl_early_data),
and the configuration of both front-ends. tests/integration/test_early_data.py runs it through
openssl s_client."""

from __future__ import annotations

import os

import pytest
from fastterm._core import (
    ClientFacts,
    Exchange,
    ReplayTable,
    ServerPolicy,
    SharedState,
    SiteTable,
    UpstreamPool,
)
from forked import in_child

from fastterm.config.model import Certificate, ProxyHeader, ProxyRequest, Server, TLSPolicy
from fastterm.config.nginx import load_config as load_nginx
from fastterm.config.plan import _rewrite
from fastterm.config.toml import load_config as load_toml
from fastterm.errors import ConfigError

FRESH, SEEN, FULL = 0, 1, 2


def test_a_client_random_is_accepted_once():
    table = ReplayTable(1024)
    first, second = os.urandom(32), os.urandom(32)
    assert table.check(first) == FRESH
    assert table.check(second) == FRESH
    assert table.check(first) == SEEN
    assert table.check(first) == SEEN
    assert table.stats() == {"recorded": 2, "replays": 2, "full": 0, "capacity": 1024}


def test_a_full_table_refuses_rather_than_forgets():
    """Every slot live: a new random is refused (early data off for it), and what the table
    holds is still recognised: nothing recorded is evicted to make room."""
    table = ReplayTable(16)
    held = [os.urandom(32) for _ in range(16)]
    assert [table.check(r) for r in held] == [FRESH] * 16
    assert table.check(os.urandom(32)) == FULL
    assert [table.check(r) for r in held] == [SEEN] * 16
    assert table.stats()["full"] == 1


def test_entries_expire_after_the_ttl():
    table = ReplayTable(16, ttl=0.0)
    random = os.urandom(32)
    assert table.check(random) == FRESH
    assert table.check(random) == FRESH   # ttl 0: expired at once, the slot is free again


def test_workers_share_the_table_through_fork():
    """The master's SharedState is made before fork: a random a worker recorded is a replay
    for every other worker (and for the master's view)."""
    shared = SharedState(1 << 20)
    random = os.urandom(32)
    assert in_child(lambda: shared.replay.check(random)) == FRESH
    assert in_child(lambda: shared.replay.check(random)) == SEEN
    assert shared.replay.check(random) == SEEN


def test_node_ids_are_random_per_table_and_an_entry_is_40_bytes():
    a, b = ReplayTable(16), ReplayTable(16)
    assert len(a.node_id) == 16 and a.node_id != b.node_id
    assert a.entry_size == 40   # 32-byte client random + 8-byte expiry
    table = SharedState(1 << 20).replay
    assert table.capacity == 65536
    assert table.mapped_bytes < 65536 * 40 + 4096   # 2.5 MiB, touched only as entries are used


def test_bad_random_length():
    with pytest.raises(ValueError):
        ReplayTable(16).check(b"short")


# ---- Early-Data towards the backend (RFC 8470 §5.1) --------------------------------------

def _exchange(rw=None) -> Exchange:
    pool = UpstreamPool("app", [("127.0.0.1", 1)])
    policy = ServerPolicy("www", [("/", pool, rw)])
    return Exchange(ClientFacts("192.0.2.7", SiteTable({"www.example.com": policy}, policy)))


def _fields(out: bytes) -> list[str]:
    return out.decode("latin-1").split("\r\n")[1:-2]


GET = b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n"


def test_a_request_in_early_data_carries_early_data_1():
    ex = _exchange()
    ex.early = True
    status, out = ex.feed_request(GET)
    assert status == 0
    assert _fields(out).count("Early-Data: 1") == 1


def test_a_request_after_the_handshake_does_not():
    status, out = _exchange().feed_request(GET)
    assert status == 0 and not any(f.lower().startswith("early-data") for f in _fields(out))


def test_a_proxy_in_fronts_early_data_field_is_kept_not_doubled():
    ex = _exchange()
    ex.early = True
    status, out = ex.feed_request(b"GET / HTTP/1.1\r\nHost: www.example.com\r\nEarly-Data: 1\r\n\r\n")
    assert status == 0
    assert [f for f in _fields(out) if f.lower().startswith("early-data")] == ["Early-Data: 1"]


def _nginx_rewrite():
    server = Server(listen=["127.0.0.1:443"], certificates=[Certificate(cert="x.pem")],
                    server_names=["www.example.com"])
    proxy = ProxyRequest(headers=[ProxyHeader(name="Early-Data", value="$ssl_early_data"),
                                  ProxyHeader(name="Host", value="$proxy_host")])
    return _rewrite(proxy, "notes", server)


@pytest.mark.parametrize("early", [True, False])
def test_nginx_ssl_early_data_variable(early):
    """nginx: "1" while the handshake is not complete, else "" (and an empty field is not sent)."""
    ex = _exchange(_nginx_rewrite())
    ex.early = early
    status, out = ex.feed_request(GET)
    assert status == 0
    fields = _fields(out)
    assert ("Early-Data: 1" in fields) is early
    assert not any(f.startswith("Early-Data") for f in fields) or early


# ---- configuration ---------------------------------------------------------------------

TOML = """
[[upstream]]
name = "app"
servers = ["127.0.0.1:8080"]

[[server]]
listen = ["443"]
server_names = ["www.example.com"]

[[server.certificate]]
cert = "certs/ec.crt"
key = "certs/ec.key"

[server.tls]
{tls}
"""


def test_toml_early_data_defaults_off(write, ec_files):
    config = load_toml(write("fastterm.toml", TOML.format(tls="")))
    assert config.servers[0].tls.early_data is False
    assert config.servers[0].tls.max_early_data == 16384


def test_toml_early_data_on(write, ec_files):
    config = load_toml(write("fastterm.toml", TOML.format(tls="early_data = true\nmax_early_data = 4096")))
    assert config.servers[0].tls.early_data is True and config.servers[0].tls.max_early_data == 4096


@pytest.mark.parametrize("tls, needle", [
    ("max_early_data = 0", "max_early_data"),
    ("max_early_data = 10000000", "max_early_data"),
    ('early_data = true\nprotocols = ["TLSv1.2"]', "early_data"),
])
def test_toml_early_data_errors_are_located(write, ec_files, tls, needle):
    text = TOML.format(tls=tls)
    with pytest.raises(ConfigError) as info:
        load_toml(write("fastterm.toml", text))
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(needle))
    assert info.value.line == line, str(info.value)
    assert needle in str(info.value)


NGINX = """
upstream notes { server 127.0.0.1:8081; }
server {
    listen 443 ssl;
    server_name www.example.com;
    ssl_certificate certs/ec.crt;
    ssl_certificate_key certs/ec.key;
    %s
    location / {
        proxy_pass http://notes;
        proxy_set_header Early-Data $ssl_early_data;
    }
}
"""


@pytest.mark.parametrize("directive, on", [("ssl_early_data on;", True), ("ssl_early_data off;", False),
                                           ("", False)])
def test_nginx_ssl_early_data(write, ec_files, directive, on):
    config = load_nginx(write("nginx.conf", NGINX % directive), lambda m, level="warn": None)
    server = config.servers[0]
    assert server.tls.early_data is on
    assert ProxyHeader(name="Early-Data", value="$ssl_early_data") in server.routes[0].proxy.headers


R_FINAL, R_TOO_EARLY = 0, 3
TOO_EARLY = b"HTTP/1.1 425 Too Early\r\nContent-Length: 0\r\n\r\n"


def test_a_425_to_an_early_request_is_retried_once():
    """RFC 8470 §5.2: the first 425 asks for the retry (without Early-Data); a 425 to that
    retry goes to the client."""
    ex = _exchange()
    ex.early = True
    assert ex.feed_request(GET)[0] == 0
    assert ex.feed_response(TOO_EARLY)[0] == R_TOO_EARLY
    assert ex.early is False
    r, head = ex.feed_response(TOO_EARLY)
    assert r == R_FINAL and head.startswith(b"HTTP/1.1 425")


@pytest.mark.parametrize("early, raw", [
    (False, GET),                                                              # not early
    (True, b"GET / HTTP/1.1\r\nHost: www.example.com\r\nEarly-Data: 1\r\n\r\n"),  # a proxy's field: its 425
])
def test_other_425s_go_to_the_client(early, raw):
    ex = _exchange()
    ex.early = early
    assert ex.feed_request(raw)[0] == 0
    assert ex.feed_response(TOO_EARLY)[0] == R_FINAL


def test_nginx_routes_pass_the_425_on():
    ex = _exchange(_nginx_rewrite())
    ex.early = True
    assert ex.feed_request(GET)[0] == 0
    assert ex.feed_response(TOO_EARLY)[0] == R_FINAL


TWO_BLOCKS = """
[[upstream]]
name = "app"
servers = ["127.0.0.1:8080"]

[[server]]
listen = ["127.0.0.1:8443"]
server_names = ["www.example.com"]
default_server = true
[[server.certificate]]
cert = "certs/ec.crt"
key = "certs/ec.key"
[server.tls]
early_data = false

[[server]]
listen = ["127.0.0.1:8443"]
server_names = ["api.example.com"]
[[server.certificate]]
cert = "certs/ec.crt"
key = "certs/ec.key"
[server.tls]
early_data = true
"""


def test_early_data_is_the_listeners_setting(write, ec_files):
    """OpenSSL decides 0-RTT on the context a connection started on (the listener default's):
    a block on the same address that differs is refused at its line, as session_cache is."""
    from fastterm.config.plan import build

    path = write("fastterm.toml", TWO_BLOCKS)
    with pytest.raises(ConfigError) as info:
        build(load_toml(path), path)
    line = [i for i, ln in enumerate(TWO_BLOCKS.splitlines(), 1) if ln.startswith("early_data")][1]
    assert info.value.line == line, str(info.value)
    assert "early_data = true differs from the default server (www.example.com)" in str(info.value)
    build(load_toml(write("fastterm.toml", TWO_BLOCKS.replace("early_data = false", "early_data = true"))))


def test_toml_early_data_unsafe_defaults_to_wait(write, ec_files):
    from fastterm.config.plan import build

    path = write("fastterm.toml", TOML.format(tls="early_data = true"))
    config = load_toml(path)
    assert config.servers[0].tls.early_data_unsafe == "wait"
    (_, _, sites), = build(config, path).listeners
    assert sites.early_reject is False


def test_toml_early_data_unsafe_reject_reaches_the_listener(write, ec_files):
    """"reject": the listener's SiteTable tells the codecs to answer 425 (ext/h1.pyx, ext/h2.pyx)."""
    from fastterm.config.plan import build

    path = write("fastterm.toml", TOML.format(tls='early_data = true\nearly_data_unsafe = "reject"'))
    config = load_toml(path)
    assert config.servers[0].tls.early_data_unsafe == "reject"
    (_, _, sites), = build(config, path).listeners
    assert sites.early_reject is True


def test_toml_early_data_unsafe_bad_value_is_located(write, ec_files):
    text = TOML.format(tls='early_data = true\nearly_data_unsafe = "drop"')
    with pytest.raises(ConfigError) as info:
        load_toml(write("fastterm.toml", text))
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("early_data_unsafe"))
    assert info.value.line == line, str(info.value)
    assert "early_data_unsafe" in str(info.value)


def test_early_data_unsafe_is_the_listeners_setting(write, ec_files):
    """Both blocks of one address answer from the same codec decision: a block that differs
    from the default server is refused at its line."""
    from fastterm.config.plan import build

    text = TWO_BLOCKS.replace("early_data = false", "early_data = true") + 'early_data_unsafe = "reject"\n'
    path = write("fastterm.toml", text)
    with pytest.raises(ConfigError) as info:
        build(load_toml(path), path)
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("early_data_unsafe"))
    assert info.value.line == line, str(info.value)
    assert "early_data_unsafe = reject differs from the default server (www.example.com)" in str(info.value)


def test_changing_early_data_unsafe_keeps_the_sessions():
    """A reload that switches wait/reject keeps the session ID context: tickets still resume."""
    from fastterm.config.plan import _session_scope

    wait = Server(listen=["443"], server_names=["www.example.com"], certificates=[Certificate(cert="c")])
    reject = Server(listen=["443"], server_names=["www.example.com"], certificates=[Certificate(cert="c")],
                    tls=TLSPolicy(early_data_unsafe="reject"))
    assert _session_scope(("0.0.0.0", 443), wait, 0) == _session_scope(("0.0.0.0", 443), reject, 0)
