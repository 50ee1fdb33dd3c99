"""HTTP/2 limits and DoS defences (issue 9), each attack sent with raw frames over TLS
(ALPN h2) as an attacker would: what the recording backend received, what the worker's
RSS did, and that the same worker PID still serves afterwards are the assertions.

Stream concurrency and the per-connection stream cap, Rapid Reset (CVE-2023-44487),
CONTINUATION floods (CVE-2024-27316), HPACK bombs, SETTINGS and PING floods, flow-control
violations, zero-window and non-reading clients, slow headers, idle connections.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest
from h2wire import (
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    NO_ERROR,
    PING,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    frame,
    h2_client,
    h2_request,
    raw_h2,
    settings_payload,
)
from harness import response_bytes, wait_for, within_rss_bound
from test_bodies import RssWatch

MIB = 1024 * 1024
MAX_STREAMS = 128                 # ext/h2.pyx H2_MAX_STREAMS
STREAMS_PER_CONNECTION = 10000    # H2_STREAMS_PER_CONNECTION
RESET_BURST = 1000                # H2_RESET_BURST
OUT_MAX = 65536                   # H2_OUT_MAX: response bytes held per stream


def answering(conn) -> None:
    """A backend that answers ``ok PATH``, except /hang... which it holds unanswered."""
    while (req := conn.read_request()) is not None:
        if req.target.startswith("/hang"):
            conn.hang()
            return
        conn.send(response_bytes(200, f"ok {req.target}".encode()))


@pytest.fixture
def be(raw_backend):
    return raw_backend(answering)


def still_serves(ft, pids: list[int], prefix: str = "") -> None:
    """The same worker (none crashed and was respawned) answers over HTTP/2 and HTTP/1.1."""
    assert ft.alive(), ft.log()
    assert ft.serving_pids() == pids, (pids, ft.serving_pids(), ft.log()[-3000:])
    assert h2_request(ft, "GET", f"{prefix}/still-here").body == f"ok {prefix}/still-here".encode()
    assert ft.request("GET", f"{prefix}/still-here-h1").body == f"ok {prefix}/still-here-h1".encode()
    assert "Traceback" not in ft.log(), ft.log()


def warm(ft) -> None:
    """Buffers, pools and HPACK tables exist before an RSS baseline is taken."""
    for _ in range(3):
        h2_request(ft, "GET", "/warm")
        ft.request("GET", "/warm")


# ---------------------------------------------------------------------------------------
# streams: concurrency and the per-connection cap


def test_max_concurrent_streams_advertised_and_enforced(ft, be):
    """SETTINGS_MAX_CONCURRENT_STREAMS 128: past it a stream is refused (REFUSED_STREAM,
    RFC 9113 §5.1.2) and never reaches a backend; the connection stays usable."""
    pids = ft.serving_pids()
    with raw_h2(ft) as c:
        opened = [c.headers(f"/hang/{i}") for i in range(MAX_STREAMS + 2)]
        c.send(b"".join(f for _, f in opened))
        over = [sid for sid, _ in opened[MAX_STREAMS:]]
        c.read(3, until=lambda: all(sid in c.rst for sid in over))
        assert c.settings.get(MAX_CONCURRENT_STREAMS) == MAX_STREAMS, c.settings
        assert {sid: c.rst.get(sid) for sid in over} == {sid: REFUSED_STREAM for sid in over}
        assert wait_for(lambda: len(be.requests) == MAX_STREAMS, timeout=5), len(be.requests)
        assert not c.closed and c.goaway is None
    time.sleep(0.3)
    assert sorted(r.target for r in be.requests) == sorted(f"/hang/{i}" for i in range(MAX_STREAMS))
    still_serves(ft, pids)


def test_total_streams_per_connection_capped(fastterm, be):
    """After 10,000 streams, GOAWAY (NO_ERROR) naming the last one: the client opens a new
    connection; the streams it opened after are not processed, and the connection closes."""
    ft = fastterm(be.address, routes=[{"path": "/only/", "upstream": "app"}])   # 404s: no backend
    pids = ft.serving_pids()
    with raw_h2(ft) as c:
        for _ in range(STREAMS_PER_CONNECTION // 100 + 1):
            batch = [c.headers(f"/s/{c.next_id}") for _ in range(100)]
            if not c.send(b"".join(f for _, f in batch)):
                break
            last_sid = batch[-1][0]
            c.read(5, until=lambda last_sid=last_sid: c.goaway is not None or last_sid in c.ended)
            if c.goaway is not None:
                break
        c.read(5)
        last = 2 * STREAMS_PER_CONNECTION - 1
        assert c.goaway == (last, NO_ERROR), c.goaway
        assert len(c.status) == STREAMS_PER_CONNECTION and set(c.status.values()) == {404}
        assert max(c.status) == last
        assert c.closed
    still_serves(ft, pids, "/only")


# ---------------------------------------------------------------------------------------
# Rapid Reset (CVE-2023-44487)


def test_rapid_reset_never_reaches_backend(ft, be):
    """HEADERS then RST_STREAM, each pair in one write, thousands of times: no stream reaches
    a backend (each is reset within the read that opened it), and after the reset burst the
    connection is closed with a GOAWAY that is not NO_ERROR."""
    pids = ft.serving_pids()
    warm(ft)
    accepts, requests = be.accepts, len(be.requests)
    with RssWatch(ft) as rss, raw_h2(ft) as c:
        for _ in range(3 * RESET_BURST):
            sid, f = c.headers("/rapid")
            if not c.send(f + frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))):
                break
        c.read(5)
        assert c.goaway is not None and c.goaway[1] != NO_ERROR, c.goaway
        assert c.goaway[0] <= 2 * (RESET_BURST + MAX_STREAMS) + 1, c.goaway
        assert c.closed
    time.sleep(0.3)
    assert len(be.requests) == requests and be.accepts == accepts, \
        f"{len(be.requests) - requests} reset streams reached the backend ({be.accepts - accepts} connects)"
    assert within_rss_bound(rss.growth_mib, 16), f"RSS grew {rss.growth_mib:.1f} MiB"
    still_serves(ft, pids)


def test_rapid_reset_across_reads_is_bounded(ft, be):
    """HEADERS and its RST_STREAM in separate writes (the stream may reach a backend before
    its reset): the reset rate limit still closes the connection, and what reached the
    backend stays under the concurrency limit."""
    pids = ft.serving_pids()
    with raw_h2(ft) as c:
        for _ in range(3 * RESET_BURST):
            sid, f = c.headers("/rapid")
            if not c.send(f) or not c.send(frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))):
                break
        c.read(5)
        assert c.goaway is not None and c.goaway[1] != NO_ERROR, c.goaway
        assert c.closed
    time.sleep(0.3)
    assert len(be.requests) < MAX_STREAMS, len(be.requests)
    still_serves(ft, pids)


# ---------------------------------------------------------------------------------------
# header blocks: CONTINUATION floods (CVE-2024-27316), size caps, HPACK bombs


@pytest.mark.parametrize("fill", ["fields", "empty"])
def test_continuation_flood_closes_connection(ft, be, fill):
    """HEADERS without END_HEADERS, then CONTINUATION frames without end: the connection is
    closed after a few of them, memory stays flat, and the backend hears nothing."""
    pids = ft.serving_pids()
    warm(ft)
    accepts = be.accepts
    with RssWatch(ft) as rss, raw_h2(ft) as c:
        c.send(frame(HEADERS, 0, 1, c.block("/cont")))
        sent = 0
        for i in range(20000):
            payload = c.encoder.encode([(b"x-c%d" % i, b"v" * 100)]) if fill == "fields" else b""
            if not c.send(frame(CONTINUATION, 0, 1, payload)):
                break
            sent += 1
        c.read(5)
        assert c.closed, f"connection open after {sent} CONTINUATION frames"
    time.sleep(0.3)
    assert be.accepts == accepts and not any(r.target == "/cont" for r in be.requests)
    assert within_rss_bound(rss.growth_mib, 16), f"RSS grew {rss.growth_mib:.1f} MiB"
    still_serves(ft, pids)


def test_header_block_over_header_buffer_size_in_continuations(ft, be):
    """A header block spread over CONTINUATION frames counts as one: past
    header_buffer_size (16 KiB) it is refused (431, a reset or a GOAWAY), never forwarded."""
    pids = ft.serving_pids()
    with raw_h2(ft) as c:
        block = c.block("/big", extra=[(b"x-f%d" % i, b"v" * 1000) for i in range(20)])
        pieces = [block[i:i + 4000] for i in range(0, len(block), 4000)]
        c.send(frame(HEADERS, END_STREAM, 1, pieces[0]) +
               b"".join(frame(CONTINUATION, END_HEADERS if i == len(pieces) - 1 else 0, 1, p)
                        for i, p in enumerate(pieces[1:], 1)))
        c.read(3, until=lambda: 1 in c.status or 1 in c.rst or c.goaway is not None)
        assert c.status.get(1) == 431 or 1 in c.rst or c.goaway is not None, (c.status, c.rst, c.goaway)
    time.sleep(0.3)
    assert not any(r.target == "/big" for r in be.requests)
    still_serves(ft, pids)


def test_hpack_bomb_refused(ft, be):
    """One 4 KiB field in the HPACK dynamic table, then referenced 4,000 times with one
    byte each: a ~4 KiB block that decodes to 16 MB. The decoded list is capped: 431 (or
    a reset), no backend hears of it, the worker's memory stays flat, and the connection's
    next stream is served."""
    pids = ft.serving_pids()
    warm(ft)
    with RssWatch(ft) as rss, raw_h2(ft) as c:
        sid, bomb = c.headers("/bomb", extra=[(b"x-bomb", b"a" * 4000)] * 4000)
        assert len(bomb) < 16384, len(bomb)
        c.send(bomb)
        c.read(3, until=lambda: sid in c.ended or sid in c.rst or c.closed)
        assert c.status.get(sid) == 431 or sid in c.rst or c.goaway is not None, (c.status, c.rst, c.goaway)
        if not c.closed and c.goaway is None:
            nxt, f = c.headers("/after-bomb")
            c.send(f)
            c.read(3, until=lambda: nxt in c.ended)
            assert c.status.get(nxt) == 200
    time.sleep(0.3)
    assert not any(r.target == "/bomb" for r in be.requests)
    assert within_rss_bound(rss.growth_mib, 16), f"RSS grew {rss.growth_mib:.1f} MiB"
    still_serves(ft, pids)


# ---------------------------------------------------------------------------------------
# SETTINGS and PING floods


def test_settings_flood_closes_connection(ft, be):
    """20,000 SETTINGS frames in one go, no ACK read: more queued ACKs than
    max_outbound_ack, and the connection is closed."""
    pids = ft.serving_pids()
    warm(ft)
    with RssWatch(ft) as rss, raw_h2(ft) as c:
        c.send(frame(SETTINGS, 0, 0) * 20000)
        c.read(5)
        assert c.closed
        assert c.acks < 20000, "every SETTINGS frame was answered"
    assert within_rss_bound(rss.growth_mib, 16), f"RSS grew {rss.growth_mib:.1f} MiB"
    still_serves(ft, pids)


def test_settings_with_too_many_entries_is_refused(ft):
    pids = ft.serving_pids()
    with raw_h2(ft) as c:
        c.send(frame(SETTINGS, 0, 0, settings_payload([(INITIAL_WINDOW_SIZE, 65535)] * 40)))
        c.read(3)
        assert c.goaway is not None and c.goaway[1] == ENHANCE_YOUR_CALM, c.goaway
        assert c.closed
    still_serves(ft, pids)


def test_ping_flood_from_a_client_that_does_not_read(fastterm, be):
    """PINGs as fast as the socket takes them, no ACK ever read: the worker stops reading a
    client whose output waits, memory stays flat, other clients are served meanwhile, and
    after send_timeout the connection is closed."""
    ft = fastterm(be.address, limits={"send_timeout": 2})
    pids = ft.serving_pids()
    warm(ft)
    with RssWatch(ft) as rss, raw_h2(ft, rcvbuf=4096) as c:
        c.sock.setblocking(False)
        flood = frame(PING, 0, 0, b"12345678") * 1000
        deadline = time.monotonic() + 3
        sent = 0
        while time.monotonic() < deadline:
            try:
                sent += c.sock.send(flood)
            except (BlockingIOError, OSError):
                time.sleep(0.01)
            if sent > 64 * MIB:
                break
        assert h2_request(ft, "GET", "/meanwhile").status == 200
        c.sock.setblocking(True)
        c.read(8)
        assert c.closed, "the flooding connection outlived send_timeout"
    assert within_rss_bound(rss.growth_mib, 16), f"RSS grew {rss.growth_mib:.1f} MiB"
    still_serves(ft, pids)


# ---------------------------------------------------------------------------------------
# flow control


def test_data_beyond_the_stream_window_is_a_flow_control_error(fastterm, raw_backend, be):
    """An upload that ignores flow control, to a backend that takes nothing: once the
    window fastterm advertised (65,535) is used up, more DATA is FLOW_CONTROL_ERROR (RFC
    9113 §6.9.1), and the worker buffers no more than that window meanwhile."""
    stuck = raw_backend(lambda conn: conn.hang())
    ft = fastterm(upstreams=[{"name": "stuck", "servers": [stuck.address]}, {"name": "ok", "servers": [be.address]}],
                  routes=[{"path": "/", "upstream": "stuck"}, {"path": "/ok/", "upstream": "ok"}],
                  limits={"backend_read_timeout": 30})
    pids = ft.serving_pids()
    with RssWatch(ft) as rss, raw_h2(ft) as c:
        sid, head = c.headers("/upload", method="POST", flags=END_HEADERS)
        c.send(head)
        piece = b"".join(frame(DATA, 0, sid, b"d" * 16384) for _ in range(64))
        c.sock.settimeout(0.5)
        for _ in range(64):   # up to 64 MiB, more than the kernel's buffers on the way hold
            try:
                if not c.send(piece):
                    break
            except TimeoutError:
                break
        c.read(5, until=lambda: sid in c.rst or c.goaway is not None)
        code = c.rst.get(sid, c.goaway[1] if c.goaway else None)
        assert code == FLOW_CONTROL_ERROR, (c.rst, c.goaway)
    assert within_rss_bound(rss.growth_mib, 16), f"RSS grew {rss.growth_mib:.1f} MiB"
    still_serves(ft, pids, "/ok")


@pytest.mark.parametrize("size", [1000, 10 * MIB], ids=["small", "large"])
def test_zero_window_client_stream_reset_after_send_timeout(fastterm, be, demo_backend, size):
    """A client that advertises a zero window and never opens it holds a stream whose
    response cannot be sent: after send_timeout (nginx's send_timeout for a stream waiting
    on flow control) it is reset, whatever the response's size, not at backend_read_timeout."""
    ft = fastterm(demo_backend, limits={"send_timeout": 2, "backend_read_timeout": 30})
    pids = ft.serving_pids()
    with raw_h2(ft, window=0) as c:
        sid, f = c.headers(f"/bytes/{size}")
        t0 = time.monotonic()
        c.send(f)
        c.read(8, until=lambda: sid in c.rst or c.closed)
        waited = time.monotonic() - t0
        assert sid in c.rst or c.closed, f"stream {sid} still held after {waited:.1f} s"
        assert waited < 5, waited
    assert ft.serving_pids() == pids and h2_request(ft, "GET", "/bytes/3").body == b"xxx"


def test_zero_window_streams_bounded_memory(fastterm, raw_backend):
    """128 streams of endless responses to a zero-window client: each holds at most
    H2_OUT_MAX, the backends are paused (their sends stall), memory stays flat."""
    progress = {"sent": 0}
    lock = threading.Lock()

    def endless(conn):
        if conn.read_request() is None:
            return
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"y" * 65536 + b"\r\n"
        conn.sock.settimeout(30)
        for _ in range(2048):   # 128 MiB at most per stream
            conn.sock.sendall(chunk)
            with lock:
                progress["sent"] += len(chunk)

    be = raw_backend(endless)
    ft = fastterm(be.address, limits={"send_timeout": 30, "backend_read_timeout": 30})
    pids = ft.serving_pids()
    with RssWatch(ft) as rss, raw_h2(ft, window=0) as c:
        c.send(b"".join(c.headers(f"/endless/{i}")[1] for i in range(MAX_STREAMS)))
        assert wait_for(lambda: be.accepts == MAX_STREAMS, timeout=10), be.accepts
        time.sleep(3)
        stalled = progress["sent"]
        time.sleep(1)
        assert progress["sent"] - stalled < 4 * MIB, "backends kept sending to a client with no window"
    assert stalled < MAX_STREAMS * 4 * MIB, stalled
    assert within_rss_bound(rss.growth_mib, 32), f"RSS grew {rss.growth_mib:.1f} MiB"
    assert ft.serving_pids() == pids


def test_non_reading_client_with_many_downloads_bounded_memory(fastterm, demo_backend):
    """128 streams of 100 MiB to a client that reads nothing off its socket: the frames
    buffered towards it are capped, its backends paused, the worker's memory flat, and other
    clients are served meanwhile."""
    ft = fastterm(demo_backend, limits={"send_timeout": 30})
    pids = ft.serving_pids()
    warm(ft)
    with RssWatch(ft) as rss, raw_h2(ft, rcvbuf=4096) as c:
        c.send(b"".join(c.headers(f"/bytes/{100 * MIB}")[1] for _ in range(MAX_STREAMS)))
        time.sleep(3)
        assert h2_request(ft, "GET", "/bytes/5").body == b"xxxxx"
    assert within_rss_bound(rss.growth_mib, 32), f"RSS grew {rss.growth_mib:.1f} MiB behind a client that reads nothing"
    assert ft.serving_pids() == pids


# ---------------------------------------------------------------------------------------
# timeouts


def test_idle_connection_gets_goaway_then_close(fastterm, be):
    """keepalive_timeout with no stream open: GOAWAY (NO_ERROR), then the connection closes."""
    ft = fastterm(be.address, limits={"keepalive_timeout": 1})
    with h2_client(ft) as c:
        assert c.get("GET", "/once").status == 200
        t0 = time.monotonic()
        assert c.wait_closed(5)
        assert time.monotonic() - t0 < 3
        assert c.goaway is not None and c.goaway.error_code == NO_ERROR


def test_connection_that_opens_no_stream_is_closed(ft):
    """A preface and SETTINGS, then nothing: closed within client_header_timeout (2 s)."""
    with raw_h2(ft) as c:
        t0 = time.monotonic()
        c.read(6)
        assert c.closed and time.monotonic() - t0 < 5


def test_slow_header_block_is_bounded(fastterm, be):
    """HEADERS without END_HEADERS, and the CONTINUATION never comes (slowloris): the
    stream and then the connection are closed within the header and idle timeouts; the
    backend hears nothing."""
    ft = fastterm(be.address, limits={"client_header_timeout": 2, "keepalive_timeout": 2})
    pids = ft.serving_pids()
    with raw_h2(ft) as c:
        t0 = time.monotonic()
        c.send(frame(HEADERS, END_STREAM, 1, c.block("/slow")))
        c.read(10)
        assert c.closed, "a header block that never ends held the connection"
        assert time.monotonic() - t0 < 8
    assert not any(r.target == "/slow" for r in be.requests)
    still_serves(ft, pids)
