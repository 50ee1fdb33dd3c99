"""Server blocks on one listener, as clients see them: SNI picks the block's TLS settings
before anything is negotiated, and a session is good only in the block and on the listener
that made it.

Four blocks share a listener (two workers, so sessions and tickets go through shared
memory): the default (www.example.com), its twin (b.example.com: the same TLS policy), a
TLS 1.3-only block with one TLS 1.3 suite (other.test) and a block with one TLS 1.2
cipher, no tickets and a 60 s session lifetime (*.example.com). Python ``ssl`` and ``openssl s_client`` are the clients; what reached the
backend is read from the raw backend's record.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from harness import HOST, NAME, cert_entry, free_port, to_toml, wait_for
from httpwire import Reader, read_response, request_bytes

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3
TWIN = "b.example.com"
STRICT = "other.test"
WILD = "a.example.com"


def blocks(write, intermediate, ec_cert, other_leaf, wildcard_leaf, default_tls=None, **extra_listen):
    """The four server tables; ``default_tls`` for the default and its twin."""
    route = [{"path": "/", "upstream": "app"}]
    wildcard = cert_entry(write, wildcard_leaf, intermediate, "wild")
    default = {"server_names": [NAME, "example.com"], "default_server": True, "certificate": [ec_cert],
               "route": route, **extra_listen}
    twin = {"server_names": [TWIN], "route": route, "certificate": [wildcard]}
    if default_tls:
        default["tls"] = twin["tls"] = default_tls
    return [
        default,
        twin,
        {"server_names": [STRICT], "route": route,
         "certificate": [cert_entry(write, other_leaf, intermediate, "other")],
         "tls": {"protocols": ["TLSv1.3"], "ciphersuites": "TLS_CHACHA20_POLY1305_SHA256"}},
        {"server_names": ["*.example.com"], "route": route, "certificate": [wildcard],
         "tls": {"ciphers": "ECDHE-ECDSA-CHACHA20-POLY1305", "session_tickets": False,
                 "session_timeout": 60}},
    ]


@pytest.fixture
def backend(raw_backend):
    return raw_backend()


@pytest.fixture
def scoped(fastterm, backend, write, intermediate, ec_cert, other_leaf, wildcard_leaf):
    return fastterm(backend.address, workers=2,
                    servers=blocks(write, intermediate, ec_cert, other_leaf, wildcard_leaf))


def client(ft, *, minimum=None, maximum=None, ciphers=None, tickets=True) -> ssl.SSLContext:
    ctx = ft.client_context()
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    if ciphers:
        ctx.set_ciphers(ciphers)
    if not tickets:
        ctx.options |= ssl.OP_NO_TICKET
    return ctx


def get(ft, ctx, name, session=None, port=None, host=HOST):
    """GET /NAME on a new connection naming ``name``: (reused, session, version, cipher)."""
    raw = socket.create_connection((host, port or ft.https_port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname=name, session=session) as sock:
        sock.sendall(request_bytes("GET", f"/{name}", name))
        resp = read_response(Reader(sock), "GET")
        assert resp.status == 200, resp.start_line
        # TLS 1.3 tickets arrive after the handshake: the response has been read by now.
        return sock.session_reused, sock.session, sock.version(), sock.cipher()[0]


def chain(ft, ctx, name, session, count, port=None, host=HOST) -> list[bool]:
    """``count`` connections, each offering the session the previous one got (TLS 1.3
    sessions without tickets are single-use, RFC 8446 §8.1): whether each resumed."""
    resumed = []
    for _ in range(count):
        reused, session, _, _ = get(ft, ctx, name, session, port, host)
        resumed.append(reused)
    return resumed


def s_client(ft, name, *args: str) -> subprocess.CompletedProcess:
    cmd = ["openssl", "s_client", "-connect", f"{HOST}:{ft.https_port}", "-brief", "-CAfile", ft.ca_file,
           "-servername", name, *args]
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=15,
                          check=False)


def forwarded(backend, name) -> int:
    """How many requests for /NAME reached the backend."""
    return sum(1 for r in backend.requests if r.target == f"/{name}" and r.header("Host") == name)


# ---------------------------------------------------------------------------------------
# settings of the named block


def test_tls13_only_block_refuses_tls12_client_that_names_it(scoped, backend):
    with pytest.raises(ssl.SSLError) as info:
        get(scoped, client(scoped, maximum=TLS12), STRICT)
    assert info.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNSUPPORTED_PROTOCOL"), info.value
    assert get(scoped, client(scoped, maximum=TLS12), NAME)[2] == "TLSv1.2"
    assert get(scoped, client(scoped, maximum=TLS12), WILD)[2] == "TLSv1.2"
    out = s_client(scoped, STRICT, "-tls1_2")
    assert out.returncode != 0 and "alert protocol version" in out.stderr, out.stderr
    out = s_client(scoped, NAME, "-tls1_2")
    assert out.returncode == 0 and "Protocol version: TLSv1.2" in out.stderr, out.stderr
    assert forwarded(backend, STRICT) == 0
    assert forwarded(backend, NAME) == forwarded(backend, WILD) == 1


def test_tls12_cipher_of_the_named_block(scoped, backend):
    aes = client(scoped, maximum=TLS12, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises(ssl.SSLError):
        get(scoped, aes, WILD)
    assert get(scoped, aes, NAME)[3] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert get(scoped, client(scoped, maximum=TLS12), WILD)[3] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    out = s_client(scoped, WILD, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert out.returncode != 0 and "handshake failure" in out.stderr, out.stderr
    assert forwarded(backend, WILD) == 1


def test_tls13_suite_of_the_named_block(scoped):
    assert get(scoped, client(scoped), STRICT)[3] == "TLS_CHACHA20_POLY1305_SHA256"
    assert get(scoped, client(scoped), NAME)[3] == "TLS_AES_128_GCM_SHA256"
    out = s_client(scoped, STRICT, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
    assert out.returncode != 0 and "handshake failure" in out.stderr, out.stderr
    out = s_client(scoped, NAME, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("version", [TLS12, TLS13], ids=["tls12", "tls13"])
def test_session_lifetime_and_tickets_of_the_named_block(scoped, version):
    """The wildcard block: no tickets (TLS 1.2 gets a session ID), and its 60 s lifetime in
    the ticket's hint (TLS 1.3) where the default's is 300 s."""
    ctx = client(scoped, minimum=version, maximum=version)
    _, session, _, _ = get(scoped, ctx, WILD)
    _, default_session, _, _ = get(scoped, ctx, NAME)
    assert default_session.has_ticket
    if version == TLS12:
        assert not session.has_ticket
        assert default_session.ticket_lifetime_hint == 300
    else:
        assert session.ticket_lifetime_hint == 60 and default_session.ticket_lifetime_hint == 300
    assert all(chain(scoped, ctx, WILD, session, 6)), "the block's own sessions did not resume"


# ---------------------------------------------------------------------------------------
# where a session resumes


@pytest.mark.parametrize("version, tickets", [(TLS12, False), (TLS12, True), (TLS13, True)],
                         ids=["tls12-session-id", "tls12-ticket", "tls13-ticket"])
def test_session_does_not_cross_server_blocks(scoped, backend, version, tickets):
    """A session from the default block offered under its twin's name (same TLS policy,
    another block) or another block's gets a full handshake, and the request is served;
    under its own name it resumes, whichever worker made it."""
    ctx = client(scoped, minimum=version, maximum=version, tickets=tickets)
    _, session, _, _ = get(scoped, ctx, NAME)
    assert all(chain(scoped, ctx, NAME, session, 4)), "a session did not resume in its own block"
    for name in (TWIN, WILD) + ((STRICT,) if version == TLS13 else ()):
        assert not get(scoped, ctx, name, session)[0], f"a session of {NAME} resumed under {name}"
        assert forwarded(backend, name) == 1
    _, twin_session, _, _ = get(scoped, ctx, TWIN)
    assert not get(scoped, ctx, NAME, twin_session)[0], f"a session of {TWIN} resumed under {NAME}"
    assert all(chain(scoped, ctx, TWIN, twin_session, 2))


def test_session_does_not_cross_listeners(fastterm, backend, write, intermediate, ec_cert, other_leaf,
                                          wildcard_leaf):
    """The same server block on a second port is another scope; IPv4 and IPv6 of one port
    are one listener (a client may come back over either)."""
    second = free_port()
    ft = fastterm(backend.address, workers=2,
                  servers=blocks(write, intermediate, ec_cert, other_leaf, wildcard_leaf,
                                 listen=[f"{HOST}:{second}", f"[::1]:{second}"]))
    for version in (TLS12, TLS13):
        ctx = client(ft, minimum=version, maximum=version)
        _, session, _, _ = get(ft, ctx, NAME)
        assert all(chain(ft, ctx, NAME, session, 2))
        assert not get(ft, ctx, NAME, session, port=second)[0], f"{version.name}: resumed on another listener"
        _, there, _, _ = get(ft, ctx, NAME, port=second)
        assert all(chain(ft, ctx, NAME, there, 2, port=second, host="::1")), \
            f"{version.name}: a session of 127.0.0.1:{second} did not resume on [::1]:{second}"


def reload(ft) -> None:
    """SIGHUP the master; return once only new workers serve."""
    old_workers = set(ft.serving_pids())
    os.kill(ft.pid, signal.SIGHUP)
    assert wait_for(lambda: not old_workers & set(ft.serving_pids()) and len(ft.serving_pids()) == 2,
                    timeout=15), ft.log()


def test_tickets_of_a_block_behind_a_default_without_them(fastterm, backend, write, intermediate, ec_cert,
                                                          other_leaf, wildcard_leaf):
    """The default block has tickets off, the wildcard block on: its TLS 1.2 clients get
    tickets, which resume on both workers and after a reload. OpenSSL encrypts them with
    the listener default's ticket keys: those must be the shared ones, not the keys each
    new SSL_CTX makes for itself."""
    servers = blocks(write, intermediate, ec_cert, other_leaf, wildcard_leaf,
                     default_tls={"session_tickets": False})
    servers[3]["tls"] = {"session_tickets": True}
    ft = fastterm(backend.address, workers=2, servers=servers)
    ctx = client(ft, maximum=TLS12)
    assert not get(ft, ctx, NAME)[1].has_ticket
    _, session, _, _ = get(ft, ctx, WILD)
    assert session.has_ticket
    resumed = chain(ft, ctx, WILD, session, 8)
    reload(ft)
    resumed += chain(ft, ctx, WILD, session, 8)
    assert all(resumed), f"{resumed.count(False)}/16 connections did not resume the ticket: {resumed}"


def test_reload_keeps_sessions_of_an_unchanged_block(fastterm, backend, write, intermediate, ec_cert,
                                                     other_leaf, wildcard_leaf):
    """A reload resumes the sessions of blocks whose TLS policy stayed; a block whose
    policy changed starts afresh."""
    ft = fastterm(backend.address, workers=2,
                  servers=blocks(write, intermediate, ec_cert, other_leaf, wildcard_leaf))
    ctx = client(ft, maximum=TLS12)
    _, kept, _, _ = get(ft, ctx, NAME)
    _, changed, _, _ = get(ft, ctx, WILD)
    config = Path(ft.config_path)
    config.write_text(config.read_text().replace('"ECDHE-ECDSA-CHACHA20-POLY1305"',
                                                 '"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256"'))
    reload(ft)
    assert all(chain(ft, ctx, NAME, kept, 4)), "a reload dropped an unchanged block's sessions"
    assert not get(ft, ctx, WILD, changed)[0], "a session resumed under a changed TLS policy"


# ---------------------------------------------------------------------------------------
# what cannot apply per server block


def test_check_refuses_a_session_cache_per_server_block(write, python, subprocess_env, tmp_path, intermediate,
                                                        ec_cert, other_leaf, wildcard_leaf):
    port = free_port()
    servers = blocks(write, intermediate, ec_cert, other_leaf, wildcard_leaf)
    servers[2]["tls"]["session_cache"] = False
    config = {"upstream": [{"name": "app", "servers": [f"{HOST}:1"]}],
              "server": [dict(s, listen=[f"{HOST}:{port}"]) for s in servers]}
    path = write("fastterm.toml", to_toml(config) + "\n")
    line = next(i for i, text in enumerate(Path(path).read_text().splitlines(), 1) if "session_cache" in text)

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "fastterm", "check", "-c", path], capture_output=True, text=True,
                              env=subprocess_env, cwd=tmp_path, timeout=60, check=False)

    result = check()
    assert result.returncode == 1, result.stdout + result.stderr
    assert (f"fastterm: [emerg] {path}:{line}: server.tls.session_cache: server {STRICT}: session_cache = false "
            f"differs from the default server ({NAME}, example.com) on {HOST}:{port}; OpenSSL applies the "
            "listener's") in result.stderr, result.stderr
    assert "test failed" in result.stderr
    # The other per-server settings (lifetime included) take effect: accepted.
    del servers[2]["tls"]["session_cache"]
    config["server"] = [dict(s, listen=[f"{HOST}:{port}"]) for s in servers]
    Path(path).write_text(to_toml(config) + "\n")
    result = check()
    assert result.returncode == 0, result.stderr


def test_host_of_a_stricter_block_on_a_lax_connection_is_421(scoped, backend):
    """TLS 1.2 negotiated as www (which allows it), then ``Host: other.test`` (TLS 1.3 only):
    421 Misdirected Request, nothing forwarded; the twin block, same policy, is served."""
    ctx = client(scoped, maximum=TLS12)
    with socket.create_connection((HOST, scoped.https_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=NAME) as sock:
        sock.sendall(request_bytes("GET", "/twin", TWIN))
        reader = Reader(sock)
        assert read_response(reader).status == 200
        sock.sendall(request_bytes("GET", "/strict", STRICT))
        assert read_response(reader).status == 421
    assert [r.target for r in backend.requests] == ["/twin"]
