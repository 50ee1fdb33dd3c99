"""Fuzz target: the TLS engine's server side, sans-IO (``TLSConnection`` on memory BIOs).

Arbitrary bytes go in as a client's flights, cut at points drawn from their CRC, with a
handshake step after each piece, then EOF. The server runs the product's TLS policy,
an SNI map, ALPN, and the shared session cache and ticket keys (ext/shm.pyx), so our own
callbacks (SNI, ALPN, session cache, ticket keys) see the fuzzed ClientHello fields.
Nothing may crash, and:
- every status is one of the engine's codes, and a failed connection never goes on;
- no handshake completes and no plaintext comes out (a client's bytes alone cannot
  produce a Finished that matches the server's fresh random);
- what the server sends is a sequence of well-formed TLS records;
- the SSL object is freed when the connection goes (``live_objects``).
The ticket key is fixed so that tickets in the seed corpus still decrypt.
"""

from __future__ import annotations

import hashlib
import itertools
import ssl
import zlib

from fastterm._core import (
    CLOSED,
    EOF,
    FAILED,
    WANT_READ,
    WANT_WRITE,
    SharedState,
    TLSConnection,
    TLSContext,
    live_objects,
)

from fastterm.config.model import TLSPolicy
from fastterm.demo import issue_cert, make_ca

OK = 0
STATUSES = {OK, WANT_READ, WANT_WRITE, CLOSED, EOF, FAILED}
TICKET_KEY = hashlib.shake_256(b"fastterm fuzz ticket key").digest(80)
RECORD_TYPES = {20, 21, 22, 23}        # change_cipher_spec, alert, handshake, application_data
MAX_RECORD = (1 << 14) + 2048          # RFC 5246 §6.2.3 TLSCiphertext.length
SESSION_TIMEOUT = 10 * 365 * 86400.0   # seed tickets must not expire


def _contexts():
    shared = SharedState(1 << 20)
    shared.set_ticket_keys([TICKET_KEY])
    ca = make_ca("fastterm fuzz root")
    policy = TLSPolicy(alpn=["h2", "http/1.1"], session_timeout=SESSION_TIMEOUT)
    contexts = {}
    for name, key_type in (("www.example.com", "EC"), ("rsa.example.com", "RSA"), ("*.wild.example", "EC")):
        leaf = issue_cert(ca, [name], key_type)
        ctx = TLSContext(protocols=policy.protocols, ciphers=policy.ciphers, ciphersuites=policy.ciphersuites,
                         groups=policy.groups, session_timeout=policy.session_timeout, alpn=policy.alpn,
                         shared=shared)
        ctx.add_certificate(leaf.cert_pem + ca.cert_pem, leaf.key_pem)
        contexts[name] = ctx
    default = contexts["www.example.com"]
    default.set_sni(contexts)
    return shared, default, set(contexts.values())


SHARED, SERVER, CONTEXTS = _contexts()


def check_records(out: bytes):
    i = 0
    while i < len(out):
        assert i + 5 <= len(out), "a truncated record header"
        # The version is not checked: an alert sent before a version is agreed carries
        # the one of the client's record (OpenSSL echoes it, 0x0203 included).
        assert out[i] in RECORD_TYPES, out[i:i + 5]
        length = int.from_bytes(out[i + 3:i + 5], "big")
        assert 0 < length <= MAX_RECORD
        i += 5 + length
    assert i == len(out), "a truncated record"


def one_input(data: bytes):
    before = live_objects()["SSL"]
    conn = TLSConnection(SERVER)
    h = zlib.crc32(data)
    cuts = sorted({0, len(data)} | {(h >> shift) % (len(data) + 1) for shift in (0, 16)})
    failed = False
    for a, b in itertools.pairwise(cuts):
        conn.feed(data[a:b])
        status = conn.do_handshake()
        assert status in STATUSES and status != OK, status
        # After a fatal error OpenSSL reports SSL_ERROR_SYSCALL with an empty queue,
        # which reads as EOF: either way the connection never goes on.
        assert not failed or status in (FAILED, EOF), "a failed connection went on"
        failed = failed or status == FAILED
        check_records(conn.data_to_send())
    conn.feed_eof()
    assert conn.do_handshake() in {EOF, FAILED}
    assert conn.read() in {WANT_READ, EOF, FAILED, CLOSED}
    assert not conn.handshake_done and conn.version is None
    assert conn.selected_context in CONTEXTS
    check_records(conn.data_to_send())
    del conn
    assert live_objects()["SSL"] == before


def _client_flights(client_ctx: ssl.SSLContext, server_hostname=None, session=None):
    """Everything a CPython ``ssl`` client sends through a full handshake with SERVER
    (and the session it got), pumped in memory like tests/unit/test_tls_engine.py."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname, session=session)
    server = TLSConnection(SERVER)
    sent = bytearray()
    for _ in range(10):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError:   # refused (no shared ALPN protocol): the flights so far
            return bytes(sent + outgoing.read()), None
        data = outgoing.read()
        sent += data
        server.feed(data)
        server.do_handshake()
        incoming.write(server.data_to_send())
        if done and server.handshake_done:
            break
    client.write(b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
    data = outgoing.read()
    sent += data
    server.feed(data)
    server.read()
    incoming.write(server.data_to_send())
    try:
        client.read()   # takes the TLS 1.3 tickets
    except ssl.SSLWantReadError:
        pass
    return bytes(sent), client.session


def seeds() -> dict[str, bytes]:
    out = {}
    variants = {
        "tls13-sni-alpn": {"hostname": "www.example.com", "alpn": ["http/1.1"]},
        "tls13-h2-rsa-sni": {"hostname": "rsa.example.com", "alpn": ["h2", "http/1.1"]},
        "tls13-wildcard": {"hostname": "a.wild.example", "alpn": ["h2"]},
        "tls13-no-sni-no-alpn": {"hostname": None, "alpn": None},
        "tls13-alpn-mismatch": {"hostname": "www.example.com", "alpn": ["spdy/3"]},
        "tls12-ecdsa": {"hostname": "www.example.com", "alpn": ["http/1.1"], "maximum": ssl.TLSVersion.TLSv1_2},
        "tls12-rsa": {"hostname": "rsa.example.com", "alpn": ["http/1.1"], "maximum": ssl.TLSVersion.TLSv1_2,
                          "ciphers": "ECDHE-RSA-AES128-GCM-SHA256"},
        "tls12-unknown-sni": {"hostname": "nobody.invalid", "alpn": None, "maximum": ssl.TLSVersion.TLSv1_2},
    }
    for name, v in variants.items():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if v["alpn"]:
            ctx.set_alpn_protocols(v["alpn"])
        if "maximum" in v:
            ctx.maximum_version = v["maximum"]
        if "ciphers" in v:
            ctx.set_ciphers(v["ciphers"])
        flights, session = _client_flights(ctx, v["hostname"])
        out[name] = flights
        if session is not None:
            # The resumption ClientHello carries a ticket under TICKET_KEY.
            out[name + "-resume"], _ = _client_flights(ctx, v["hostname"], session)
    return out
