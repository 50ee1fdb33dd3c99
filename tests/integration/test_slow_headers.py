"""A slow-header flood (slowloris): connections that drip a header block and never end it.

Each one must get its 408 at its own ``client_header_timeout``, counted from its own first
bytes. Connections expired together reconnect together: a burst of full handshakes in one
loop iteration, in front of everyone else's new connections (the hardening issue, item 7;
``fastterm bench --scenario slowheaders`` measures the latency it costs).
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from harness import TEST_LIMITS, keepalive_handler
from httpwire import Reader, closed_by_peer, read_response

TIMEOUT = TEST_LIMITS["client_header_timeout"]
SPACING = 0.15


@pytest.fixture
def be(raw_backend):
    return raw_backend(keepalive_handler)


@pytest.fixture
def ft(fastterm, be):
    return fastterm(be.address)


def test_slow_headers_expire_at_their_own_deadlines(ft, be):
    """Six slow clients, 150 ms apart: each 408 comes TIMEOUT after that client's first
    bytes, and they come 150 ms apart, as the clients started, not together."""
    results: list[tuple[float, float, int, bool]] = []
    lock = threading.Lock()

    def slow_client() -> None:
        with ft.connect(timeout=TIMEOUT + 5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Slow: ")
            sent = time.monotonic()
            reader = Reader(s)
            r = read_response(reader)
            got = time.monotonic()
            closed = closed_by_peer(s, reader, timeout=3)
        with lock:
            results.append((sent, got, r.status, closed))

    threads = []
    for _ in range(6):
        t = threading.Thread(target=slow_client)
        t.start()
        threads.append(t)
        time.sleep(SPACING)
    for t in threads:
        t.join(TIMEOUT + 10)
    assert len(results) == 6, ft.log()
    results.sort()
    for sent, got, status, closed in results:
        assert status == 408 and closed
        # Before: up to 1 s early (deadlines counted from the sweep's clock, a second old at worst).
        assert TIMEOUT - 0.05 <= got - sent <= TIMEOUT + 0.5, [round(g - s, 3) for s, g, _, _ in results]
    arrivals = [got for _, got, _, _ in results]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Before: the clients whose bytes came in the same second were all answered by one sweep.
    assert min(gaps) >= SPACING - 0.05, [round(g, 3) for g in gaps]
    assert be.accepts == 0
    assert ft.request("GET", "/after").status == 200
