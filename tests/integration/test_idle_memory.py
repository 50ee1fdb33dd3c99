"""What an idle keep-alive TLS connection costs the worker (issue 16, bench/PROFILE.md "Round 2 —
idle connection memory"): its SSL (~13.8 KiB OpenSSL 3.0 keeps) and ~0.7 KiB of ours. Before,
each one also kept its last request's Exchange and stream, a larger ClientFacts with a GC header
and a bytes copy of the address, and set + dict slots and an int (~1.7 KiB of ours): 15.5 KiB here."""

from __future__ import annotations

import ssl

from harness import NAME, within_rss_bound
from httpwire import Reader, read_response

from fastterm.bench.system import raise_fd_limit

WARM = 300        # grows the allocator's arenas and the fd array before the measurement
MEASURED = 2000
BOUND_KIB = 15.2  # per connection; this test measured 15.5 on the build before, 14.6 after


def _open_idle(ft, ctx: ssl.SSLContext, count: int, held: list) -> None:
    for _ in range(count):
        sock = ft.connect(ctx=ctx)
        held.append(sock)
        sock.sendall(f"GET /idle HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
        assert read_response(Reader(sock), "GET").status == 200


def test_idle_keepalive_connection_memory_is_bounded(ft):
    raise_fd_limit(WARM + MEASURED + 1000)
    ctx = ft.client_context()
    held: list[ssl.SSLSocket] = []
    try:
        _open_idle(ft, ctx, WARM, held)
        before = ft.rss_kib()
        _open_idle(ft, ctx, MEASURED, held)
        per_conn = (ft.rss_kib() - before) / MEASURED
        assert within_rss_bound(per_conn, BOUND_KIB), f"{per_conn:.2f} KiB per idle connection"
        # every connection is still served: none was dropped to save memory
        for sock in held[::250]:
            sock.sendall(f"GET /again HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
            assert read_response(Reader(sock), "GET").status == 200
    finally:
        for sock in held:
            sock.close()
