"""Resumption across workers: the shared session cache and the shared ticket keys.

With SO_REUSEPORT the kernel spreads connections over the two workers by 4-tuple hash,
so a run of ~20 connections lands on both. Each connection's worker is read from the
per-worker counters in /status (the one whose ``connections_total`` moved), so the tests
can say which worker created a session and which one resumed it.
"""

from __future__ import annotations

import select
import socket
import ssl
import time

import pytest
from harness import HOST, NAME
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

CONNECTIONS = 20

VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def _one_connection(sup, ctx, session):
    """One request on a new connection offering ``session``: (worker pid, reused, new session)."""
    before = sup.counters()
    with sup.connect(ctx, session=session) as sock:
        resp = sup.get(sock, "/")
        assert resp.status == 200
        reused = sock.session_reused
        # TLS 1.3 sessions arrive after the handshake: read the response first, then take it.
        new_session = sock.session
        version = sock.version()
    after = sup.counters()
    moved = [pid for pid, c in after.items()
             if c["connections_total"] != before.get(pid, {}).get("connections_total", 0)]
    assert len(moved) == 1, (before, after)
    return moved[0], reused, new_session, version


def _run_chain(sup, version: str, tickets: bool, reuse_first: bool):
    """CONNECTIONS connections; each offers the first session (``reuse_first``) or the last one."""
    ctx = sup.client_context(maximum_version=VERSIONS[version])
    ctx.minimum_version = VERSIONS[version]
    first_worker, reused, session, got = _one_connection(sup, ctx, None)
    assert got == version
    assert not reused
    creator = {id(session): first_worker}
    offered = session
    rows = []
    for _ in range(CONNECTIONS - 1):
        worker, reused, new_session, _ = _one_connection(sup, ctx, offered)
        rows.append((creator[id(offered)], worker, reused))
        creator[id(new_session)] = worker
        if not reuse_first:
            offered = new_session
    return rows


# TLS 1.3 without tickets means stateful "tickets" looked up in the shared cache, and
# OpenSSL makes those single-use (RFC 8446 8.1 anti-replay), so the client must offer the
# session it got last; TLS 1.3 stateless tickets and TLS 1.2 session IDs resume repeatedly.
CASES = [
    ("TLSv1.2", False, True),
    ("TLSv1.3", False, False),
    ("TLSv1.2", True, True),
    ("TLSv1.3", True, True),
]


@pytest.mark.parametrize(("version", "tickets", "reuse_first"), CASES,
                         ids=[f"{v}-{'tickets' if t else 'cache'}" for v, t, _ in CASES])
def test_resumption_across_workers(supervised, version, tickets, reuse_first):
    sup = supervised(tls={"session_tickets": tickets})
    rows = _run_chain(sup, version, tickets, reuse_first)
    not_resumed = [r for r in rows if not r[2]]
    assert not not_resumed, f"{len(not_resumed)}/{len(rows)} connections not resumed: {rows}"
    cross = [r for r in rows if r[0] != r[1]]
    assert cross, f"all {len(rows)} connections hit one worker; nothing crossed: {rows}"
    st = sup.status()
    resumed = {w["pid"]: w["counters"]["handshakes_resumed"] for w in st["workers"]}
    assert len(resumed) == 2 and all(n > 0 for n in resumed.values()), resumed
    assert sum(resumed.values()) == CONNECTIONS - 1
    full = sum(w["counters"]["handshakes_full"] for w in st["workers"])
    assert full == 1
    if not tickets:
        assert st["sessions"]["hits"] >= CONNECTIONS - 1, st["sessions"]
    elif version == "TLSv1.3":
        # Stateless tickets carry their session: none goes to the shared cache.
        assert st["sessions"]["stores"] == 0 and st["sessions"]["hits"] == 0, st["sessions"]


def _wait_readable(sock, deadline):
    left = deadline - time.monotonic()
    if left <= 0 or not select.select([sock], [], [], left)[0]:
        raise TimeoutError("pyOpenSSL client: no data before the deadline")


def test_pyopenssl_set_session(supervised, ca_file):
    """pyOpenSSL: a session from one connection, offered with set_session, resumes."""
    sup = supervised()

    # pyOpenSSL only accepts a session made under the same Context.
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.load_verify_locations(ca_file)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
    ctx.set_alpn_protos([b"http/1.1"])

    def connect(session=None):
        raw = socket.create_connection((HOST, sup.https_port), timeout=5)
        conn = SSL.Connection(ctx, raw)
        conn.set_tlsext_host_name(NAME.encode())
        if session is not None:
            conn.set_session(session)
        conn.set_connect_state()
        deadline = time.monotonic() + 5
        # A socket with a timeout is non-blocking underneath: pyOpenSSL raises WantRead.
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                _wait_readable(raw, deadline)
        conn.sendall(f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except SSL.WantReadError:
                _wait_readable(raw, deadline)
                continue
            except (SSL.ZeroReturnError, SSL.SysCallError):
                break
            if not chunk:
                break
            data += chunk
        reused = bool(_lib.SSL_session_reused(conn._ssl))  # pyOpenSSL has no wrapper
        sess = conn.get_session()
        # Without close_notify sent, SSL_free marks the client's session not resumable
        # (ssl_clear_bad_session), and this session object is the connection's own.
        try:
            conn.shutdown()
        except SSL.Error:
            pass
        conn.close()
        raw.close()
        return data, reused, sess

    data, reused, session = connect()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert not reused
    results = [connect(session)[:2] for _ in range(4)]
    assert all(d.startswith(b"HTTP/1.1 200") for d, _ in results)
    assert all(r for _, r in results), results
    st = sup.status()
    assert sum(w["counters"]["handshakes_resumed"] for w in st["workers"]) == 4


def _resume_until_both_workers(sup, ctx, session, limit=60):
    """Offer ``session`` until each worker has resumed it at least once (each then holds
    its decoded copy); the workers' pids."""
    resumed_on = set()
    for _ in range(limit):
        worker, reused, _, _ = _one_connection(sup, ctx, session)
        assert reused
        resumed_on.add(worker)
        if len(resumed_on) == 2:
            return resumed_on
    raise AssertionError(f"{limit} connections resumed on one worker only: {resumed_on}")


def _corrupted_record(sup, ctx, session):
    """Resume ``session`` through a memory BIO, then send an application record with a
    flipped tag byte: the server answers bad_record_mac, a fatal alert. Whether it resumed."""
    raw = socket.create_connection((HOST, sup.https_port), timeout=5)
    with raw:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname=NAME, session=session)
        for _ in range(20):
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                data = raw.recv(65536)
                assert data, "closed during the handshake"
                incoming.write(data)
        raw.sendall(outgoing.read())
        reused = tls.session_reused
        tls.write(f"GET / HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
        record = bytearray(outgoing.read())
        record[-1] ^= 0x01
        raw.sendall(bytes(record))
        answer = b""
        while True:
            chunk = raw.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer[:1] == b"\x15", answer[:20]   # an alert record, then the close
    return reused


def test_a_session_ended_by_a_fatal_alert_resumes_on_no_worker(supervised):
    """RFC 5246 §7.2.2: a session whose connection ended with a fatal alert is not resumed.
    OpenSSL drops it from the cache; here every worker must stop resuming it, also one that
    holds its own decoded copy of it (SharedState's per-worker sessions)."""
    sup = supervised(tls={"session_tickets": False})
    ctx = sup.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    _, reused, session, version = _one_connection(sup, ctx, None)
    assert version == "TLSv1.2" and not reused
    _resume_until_both_workers(sup, ctx, session)
    assert _corrupted_record(sup, ctx, session)
    after = [_one_connection(sup, ctx, session) for _ in range(CONNECTIONS)]
    assert not [row for row in after if row[1]], [(w, r) for w, r, _, _ in after]
    assert len({w for w, _, _, _ in after}) == 2, "the later connections all hit one worker"


def test_openssl_s_client_sess_out_sess_in_resumes_on_both_workers(supervised, ca_file, tmp_path):
    """openssl s_client: a TLS 1.2 session ID saved with -sess_out resumes with -sess_in on
    whichever worker the kernel picks."""
    import subprocess
    sup = supervised(tls={"session_tickets": False})
    sess = tmp_path / "s_client.sess"
    request = f"GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode()

    def s_client(*args):
        before = sup.counters()
        out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{sup.https_port}",
                              "-servername", NAME, "-CAfile", ca_file, "-tls1_2", "-no_ticket",
                              "-ign_eof", *args], input=request, capture_output=True, timeout=20,
                             check=False).stdout
        after = sup.counters()
        moved = [pid for pid, c in after.items()
                 if c["connections_total"] != before.get(pid, {}).get("connections_total", 0)]
        assert len(moved) == 1, (before, after)
        assert b"HTTP/1.1 200" in out, out[-500:]
        return moved[0], out

    _, out = s_client("-sess_out", str(sess))
    assert b"\nNew, TLSv1.2" in out, out[:2000]
    workers = set()
    for _ in range(CONNECTIONS):
        worker, out = s_client("-sess_in", str(sess))
        assert b"\nReused, TLSv1.2" in out, out[:2000]
        workers.add(worker)
    assert len(workers) == 2, f"{CONNECTIONS} connections resumed on one worker only"
