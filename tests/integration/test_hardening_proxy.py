"""Holes found by reading the proxy, each sent as an attacker would and checked at the backend.

Routing on the normalised path, forwarded-header trust by the server block Host chose,
TRACE, sampled handshake-failure logging, and the worker's file-descriptor limits
(EMFILE back-off, worker_connections, the port-80 listener's timeouts).
"""

from __future__ import annotations

import os
import socket
import time

import pytest
from harness import HOST, NAME, wait_for
from httpwire import Reader, closed_by_peer, read_response, request_bytes


def routed(raw_backend, fastterm):
    api, web = raw_backend(), raw_backend()
    ft = fastterm(upstreams=[{"name": "api", "servers": [api.address]}, {"name": "web", "servers": [web.address]}],
                  routes=[{"path": "/", "upstream": "web"}, {"path": "/api/", "upstream": "api"}])
    return ft, api, web


@pytest.mark.parametrize("target", ["/api/../admin", "/api/%2e%2e/admin", "/api/%2E%2e/admin",
                                    "/api/./../admin", "/api/v1/../../admin?x=/api/"])
def test_dot_segments_do_not_reach_the_prefix_upstream(raw_backend, fastterm, target):
    """nginx matches locations on the normalised $uri: /api/../admin is /admin."""
    ft, api, web = routed(raw_backend, fastterm)
    assert ft.request("GET", target).status == 200
    assert not api.requests, f"{target} reached the /api/ upstream"
    assert [r.target for r in web.requests] == [target]   # forwarded as the client sent it


@pytest.mark.parametrize("target", ["//api//v1", "/x/../api/v1", "/%61pi/v1", "/api/./v1"])
def test_normalised_path_still_matches_its_route(raw_backend, fastterm, target):
    ft, api, web = routed(raw_backend, fastterm)
    assert ft.request("GET", target).status == 200
    assert [r.target for r in api.requests] == [target] and not web.requests


@pytest.mark.parametrize("target", ["/../etc/passwd", "/api/../../x", "/a%zz", "/a%00b", "/a%2"])
def test_unnormalisable_path_is_400(raw_backend, fastterm, target):
    ft, api, web = routed(raw_backend, fastterm)
    assert ft.request("GET", target).status == 400
    assert not api.requests and not web.requests


def test_trace_is_405_and_not_forwarded(raw_backend, fastterm):
    """nginx answers TRACE with 405: forwarded, it echoes cookies and auth back (XST)."""
    be = raw_backend()
    ft = fastterm(be.address)
    r = ft.request("TRACE", "/", headers=[("Cookie", "secret=1")])
    assert r.status == 405
    assert be.accepts == 0


def test_forwarded_trust_follows_the_host_chosen_server(trust_split):
    """SNI names the trusting server, Host the one that trusts nobody: the spoofed
    X-Forwarded-For must not reach other.test's backend."""
    ft, a, b = trust_split
    with ft.connect(NAME) as s:
        s.sendall(request_bytes("GET", "/one", "other.test", [("X-Forwarded-For", "6.6.6.6"),
                                                               ("Forwarded", "for=6.6.6.6")]))
        assert read_response(Reader(s)).status == 200
        # and back: the same connection, now for the trusting server, appends again
        s.sendall(request_bytes("GET", "/two", NAME, [("X-Forwarded-For", "7.7.7.7")]))
        assert read_response(Reader(s)).status == 200
    (one,) = b.requests
    assert one.all("x-forwarded-for") == ["127.0.0.1"], one.all("x-forwarded-for")
    assert not one.has("forwarded")
    (two,) = a.requests
    assert two.all("x-forwarded-for") == ["7.7.7.7, 127.0.0.1"]


def test_failed_handshakes_are_sampled_in_the_log(fastterm, demo_backend):
    ft = fastterm(demo_backend, top={"handshake_log_rate": 1})
    for _ in range(40):
        with socket.create_connection((HOST, ft.https_port), timeout=5) as s:
            s.sendall(b"\x16\x03\x01\x00\x05" + os.urandom(5))
            closed_by_peer(s, timeout=5)
    time.sleep(1.5)
    with socket.create_connection((HOST, ft.https_port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00\x05" + os.urandom(5))
        closed_by_peer(s, timeout=5)
    assert wait_for(lambda: "more failed handshakes not logged" in ft.log(), timeout=5), ft.log()[-2000:]
    lines = [line for line in ft.log().splitlines() if "handshake failed" in line]
    assert 1 <= len(lines) <= 6, lines


def test_out_of_fds_backs_off_instead_of_spinning(fastterm, demo_backend, tmp_path):
    """EMFILE leaves the listen queue readable: polling it would spin at 100% CPU and log a
    line per loop iteration. The worker backs off and serves again once fds are free."""
    ft = fastterm(demo_backend, limits={"worker_connections": 1000},
                  command_prefix=["prlimit", "--nofile=48:48", "--"])
    held = []
    try:
        for _ in range(80):
            held.append(socket.create_connection((HOST, ft.https_port), timeout=5))
        time.sleep(1)
        (pid,) = ft.serving_pids()
        cpu0 = _cpu_seconds(pid)
        time.sleep(3)
        used = _cpu_seconds(pid) - cpu0
        assert used < 0.5, f"the worker burnt {used:.2f} s of CPU in 3 s while out of fds"
        assert ft.log().count("out of file descriptors") <= 2, ft.log()[-2000:]
    finally:
        for s in held:
            s.close()
    assert wait_for(lambda: _serves(ft), timeout=10), ft.log()[-2000:]


def test_worker_connections_caps_clients_and_resumes(fastterm, demo_backend):
    ft = fastterm(demo_backend, limits={"worker_connections": 20})
    conns = [ft.connect() for _ in range(20)]
    try:
        extra = socket.create_connection((HOST, ft.https_port), timeout=2)
        extra.sendall(b"\x16\x03\x01")
        extra.settimeout(1.5)
        with pytest.raises(TimeoutError):
            extra.recv(1)   # queued in the kernel, not served
        assert "worker_connections (20) reached" in ft.log()
    finally:
        conns.pop().close()
    assert wait_for(lambda: _serves(ft), timeout=10)
    for c in conns:
        c.close()
    extra.close()


def test_redirect_listener_closes_idle_and_dripping_connections(fastterm, demo_backend):
    """Port 80 has client_header_timeout too (2 s here), for the whole head."""
    ft = fastterm(demo_backend)
    idle = socket.create_connection((HOST, ft.http_port), timeout=5)
    drip = socket.create_connection((HOST, ft.http_port), timeout=5)
    start = time.monotonic()
    with pytest.raises(OSError):
        for ch in b"GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Drip: " + b"x" * 40:
            drip.sendall(bytes([ch]))   # a byte every 0.25 s: fails once the server closed
            time.sleep(0.25)
    assert time.monotonic() - start < 5, "a dripping client outlived client_header_timeout"
    assert closed_by_peer(idle, timeout=3)
    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 301")


def test_redirect_listener_connections_are_capped(fastterm, demo_backend):
    """A quarter of worker_connections (at least 16): the rest of the fds stay for TLS."""
    ft = fastterm(demo_backend, limits={"worker_connections": 64, "client_header_timeout": 10})
    idle = [socket.create_connection((HOST, ft.http_port), timeout=5) for _ in range(16)]
    try:
        with socket.create_connection((HOST, ft.http_port), timeout=5) as over:
            assert closed_by_peer(over, timeout=5)
        assert _serves(ft)
    finally:
        for s in idle:
            s.close()
    with socket.create_connection((HOST, ft.http_port), timeout=5) as s:
        s.sendall(b"GET /x HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 301")


def _serves(ft) -> bool:
    try:
        return ft.request("GET", "/ok", timeout=2).status == 200
    except OSError:
        return False


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
