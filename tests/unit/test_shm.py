"""Shared memory when a writer dies mid-write, as a SIGKILLed worker or master does.

The writer is a forked child that SIGKILLs itself at the point ``abandon_next_write`` names
(a session store then dies holding the robust lock); the reader is this process, or a forked
child with a deadline where the old code spun forever.
"""

from __future__ import annotations

import os
import ssl
import time

import pytest
from fastterm._core import FAILED, SharedState, TLSConnection, TLSContext
from forked import die_in_child, in_child

FAR = int(time.time()) + 3600


def test_a_store_killed_mid_entry_leaves_no_live_torn_entry():
    shared = SharedState(1 << 20)
    sid = b"s" * 32
    old, new = b"A" * 1000, b"B" * 1000
    assert shared.store(sid, old, FAR)
    assert shared.session(sid) == old

    def store_and_die():
        shared.abandon_next_write(500)
        shared.store(sid, new, FAR)

    die_in_child(store_and_die)
    # The next locker inherits the dead owner's lock (EOWNERDEAD) and the half-written slot:
    # 500 bytes of the new session over the old one must not be handed to OpenSSL.
    assert shared.session(sid) is None
    assert shared.store(sid, new, FAR)
    assert shared.session(sid) == new
    other = b"o" * 32
    assert shared.store(other, old, FAR) and shared.session(other) == old


def _keys():
    return [os.urandom(80) for _ in range(3)]


def test_a_key_write_killed_midway_leaves_readers_the_last_good_keys():
    shared = SharedState(1 << 16)
    k1, k2, k3 = _keys()
    shared.set_ticket_keys([k1, k2])
    assert shared.ticket_key() == (0, k1)
    assert shared.ticket_key(k2[:16]) == (1, k2)

    def write_and_die():
        shared.abandon_next_write(40)
        shared.set_ticket_keys([k3, k1])

    die_in_child(write_and_die)    # the sequence stays odd for good
    assert in_child(shared.ticket_key) == (0, k1)
    assert in_child(lambda: shared.ticket_key(k2[:16])) == (1, k2)
    assert in_child(lambda: shared.ticket_key(k3[:16])) is None


def test_a_reader_that_never_saw_consistent_keys_has_none():
    shared = SharedState(1 << 16)
    k1, k2, _ = _keys()

    def write_and_die():
        shared.abandon_next_write(40)
        shared.set_ticket_keys([k1, k2])

    die_in_child(write_and_die)
    assert in_child(shared.ticket_key) is None


def _handshake(server: TLSConnection, client: ssl.SSLObject, incoming: ssl.MemoryBIO,
               outgoing: ssl.MemoryBIO) -> bool:
    """Pump a Python ssl client and our server in memory; True once both are done."""
    for _ in range(32):
        try:
            client.do_handshake()
            client_done = True
        except ssl.SSLWantReadError:
            client_done = False
        server.feed(outgoing.read())
        if server.do_handshake() == FAILED:
            return False
        incoming.write(server.data_to_send())
        if client_done and server.handshake_done:
            return True
    return False


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_no_consistent_ticket_key_means_no_ticket_not_a_failed_handshake(ec_leaf, intermediate, version):
    shared = SharedState(1 << 16)

    def write_and_die():
        shared.abandon_next_write(40)
        shared.set_ticket_keys([os.urandom(80)])

    die_in_child(write_and_die)

    def serve():
        ctx = TLSContext(shared=shared)   # as a worker's contexts are built
        ctx.add_certificate(ec_leaf.cert_pem + intermediate.cert_pem, ec_leaf.key_pem)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        client_ctx.minimum_version = client_ctx.maximum_version = version
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_ctx.wrap_bio(incoming, outgoing)
        done = _handshake(TLSConnection(ctx), client, incoming, outgoing)
        return done, client.session is not None and client.session.has_ticket

    assert in_child(serve) == (True, False)
