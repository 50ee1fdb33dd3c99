"""Every OpenSSL object has one owner and is freed once: the live counters in
fastterm._core return to their baseline after connections of every ending."""

import gc
import ssl

import pytest
from fastterm._core import WANT_READ, TLSConnection, TLSContext, live_objects

from fastterm import TLSError


@pytest.fixture
def server_ctx(ec_leaf, intermediate):
    ctx = TLSContext()
    ctx.add_certificate(ec_leaf.cert_pem + intermediate.cert_pem, ec_leaf.key_pem)
    return ctx


def client_pair(ctx):
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return client.wrap_bio(incoming, outgoing, server_hostname="www.example.com"), incoming, outgoing


def drive(server, client, incoming, outgoing, rounds=10):
    for _ in range(rounds):
        try:
            client.do_handshake()
            return True
        except ssl.SSLWantReadError:
            pass
        server.feed(outgoing.read())
        server.do_handshake()
        incoming.write(server.data_to_send())
    return False


def test_connections_free_their_ssl(server_ctx):
    gc.collect()
    base = live_objects()["SSL"]
    for ending in ("complete", "garbage", "abandoned", "eof"):
        for _ in range(20):
            server = TLSConnection(server_ctx)
            if ending == "complete":
                client, incoming, outgoing = client_pair(server_ctx)
                assert drive(server, client, incoming, outgoing)
            elif ending == "garbage":
                server.feed(b"\x16\x03\x01\x00\x05garbage-not-tls")
                assert server.do_handshake() < 0
            elif ending == "abandoned":
                assert server.do_handshake() == WANT_READ
            else:
                server.feed_eof()
                server.do_handshake()
            assert live_objects()["SSL"] == base + 1
            del server
    gc.collect()
    assert live_objects()["SSL"] == base


def test_contexts_free_their_ssl_ctx(ec_leaf, intermediate):
    gc.collect()
    base = live_objects()["SSL_CTX"]
    contexts = [TLSContext() for _ in range(10)]
    assert live_objects()["SSL_CTX"] == base + 10
    # A failed construction frees what it made too.
    with pytest.raises(TLSError, match="no cipher match"):
        TLSContext(ciphers="NOT-A-CIPHER")
    del contexts
    gc.collect()
    assert live_objects()["SSL_CTX"] == base


def test_a_connection_keeps_its_context_alive(server_ctx):
    """The SSL holds a reference to the SSL_CTX (and our callbacks a borrowed pointer to the
    TLSContext): dropping the context first must not free it under the connection."""
    gc.collect()
    base = live_objects()["SSL_CTX"]
    server = TLSConnection(server_ctx)
    ctx_ref = server.context
    assert ctx_ref is server_ctx
    del server_ctx, ctx_ref
    gc.collect()
    assert live_objects()["SSL_CTX"] == base   # still owned through server.context
    client, incoming, outgoing = client_pair(server.context)
    assert drive(server, client, incoming, outgoing)
