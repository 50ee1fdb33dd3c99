"""Balancing across an upstream's servers (nginx semantics): smooth weighted round robin,
least_conn, backup servers, with real backends on loopback."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time

import pytest
from harness import HOST, NAME, response_bytes, wait_for


def _answer(conn) -> None:
    """200 at once; ``/slow`` after 1.5 s (a request the server is busy with)."""
    while (req := conn.read_request()) is not None:
        if req.target.startswith("/slow"):
            time.sleep(1.5)
        conn.send(response_bytes(200, b"ok"))


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed")
def test_weighted_distribution_within_two_percent(fastterm, raw_backend):
    a, b = raw_backend(_answer), raw_backend(_answer)
    ft = fastterm(upstreams=[{"name": "app", "servers": [a.address, f"{b.address} weight=3"]}])
    out = subprocess.run(["h2load", "-n", "10000", "-c", "4", "-m", "8", "--connect-to", f"{HOST}:{ft.https_port}",
                          f"https://{NAME}:{ft.https_port}/"], check=False, capture_output=True, text=True,
                         timeout=120)
    assert "10000 succeeded" in out.stdout, out.stdout[-2000:]
    total = len(a.requests) + len(b.requests)
    assert total == 10000
    assert abs(len(b.requests) / total - 0.75) < 0.02, (len(a.requests), len(b.requests))


def _slow_then_fast(ft, a, b) -> list[int]:
    """One slow request in flight on the first server, then six quick ones: which server
    each quick one went to (0: the busy one, 1: the idle one)."""
    slow = threading.Thread(target=lambda: ft.request("GET", "/slow", timeout=10))
    slow.start()
    try:
        assert wait_for(lambda: len(a.requests) + len(b.requests) == 1)
        _busy, idle = (a, b) if a.requests else (b, a)
        went = []
        for i in range(6):
            before = len(idle.requests)
            assert ft.request("GET", f"/fast{i}").status == 200
            went.append(1 if len(idle.requests) > before else 0)
        return went
    finally:
        slow.join(10)


def test_least_conn_prefers_the_idle_server(fastterm, raw_backend):
    a, b = raw_backend(_answer), raw_backend(_answer)
    ft = fastterm(upstreams=[{"name": "app", "servers": [a.address, b.address], "balance": "least_conn"}])
    assert _slow_then_fast(ft, a, b) == [1] * 6


def test_round_robin_does_not_look_at_load(fastterm, raw_backend):
    """The contrast: the same load under round robin sends half the quick requests to the
    busy server."""
    a, b = raw_backend(_answer), raw_backend(_answer)
    ft = fastterm(upstreams=[{"name": "app", "servers": [a.address, b.address]}])
    assert _slow_then_fast(ft, a, b).count(0) == 3


def test_backup_serves_only_when_the_primaries_are_down(fastterm, raw_backend):
    a, b, c = raw_backend(_answer), raw_backend(_answer), raw_backend(_answer)
    ft = fastterm(upstreams=[{"name": "app", "servers": [a.address, b.address, f"{c.address} backup"]}])
    for i in range(6):
        assert ft.request("GET", f"/r{i}").status == 200
    assert (len(a.requests), len(b.requests), len(c.requests)) == (3, 3, 0)
    a.close()
    b.close()
    for i in range(4):
        assert ft.request("GET", f"/down{i}").status == 200
    assert len(c.requests) == 4
    assert "connect to" in ft.log()
