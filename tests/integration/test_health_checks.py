"""Active health checks ([upstream.check]) with real processes: the master checks, two
workers honour its verdicts through shared memory."""

import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.request

from harness import HOST, NAME, free_port, metrics_text, response_bytes, settle, wait_for
from httpwire import Reader, read_response, request_bytes
from test_reencrypt import TLSBackend

FAST = {"interval": 0.2, "timeout": 0.5, "rise": 2, "fall": 2}


def _upstream(servers, **check):
    return [{"name": "app", "servers": servers, "check": dict(FAST, **check)}]


def _start_backend(python, port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    proc = subprocess.Popen([python, "-m", "fastterm.backend", "--port", str(port)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert "listening on http://" in proc.stdout.readline()
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)


def _load(ft, stop: threading.Event, results: list) -> None:
    """Keep-alive GETs, a new connection every 20 requests, until ``stop``."""
    while not stop.is_set():
        try:
            with ft.connect(timeout=5) as sock:
                reader = Reader(sock)
                for _ in range(20):
                    if stop.is_set():
                        break
                    sock.sendall(request_bytes("GET", "/", NAME, None, b""))
                    results.append(read_response(reader, "GET").status)
        except (OSError, EOFError) as exc:
            results.append(repr(exc))


def test_a_killed_backend_costs_no_failed_get_is_checked_down_and_back_up(fastterm, python):
    ports = [free_port() for _ in range(3)]
    backends = [_start_backend(python, p) for p in ports]
    try:
        ft = fastterm(upstreams=_upstream([f"{HOST}:{p}" for p in ports]), workers=2)
        stop, results = threading.Event(), []
        clients = [threading.Thread(target=_load, args=(ft, stop, results)) for _ in range(3)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        _stop(backends[1])                   # by its PID, mid-run
        time.sleep(1.5)
        stop.set()
        for c in clients:
            c.join(10)
        assert len(results) > 50
        # connect failures and resets before a response byte are retried on another server
        assert [r for r in results if r != 200] == []
        assert wait_for(lambda: f"server {HOST}:{ports[1]} is down" in ft.log(), 5), ft.log()[-2000:]
        backends[1] = _start_backend(python, ports[1])     # back on the same port
        assert wait_for(lambda: f"server {HOST}:{ports[1]} is up" in ft.log(), 5), ft.log()[-2000:]
        assert all(ft.request("GET", "/", host=NAME).status == 200 for _ in range(6))
    finally:
        for b in backends:
            _stop(b)


def _established(port: int) -> int:
    """TCP connections established to ``port`` on loopback (``ss``)."""
    out = subprocess.run(["ss", "-Htn", "state", "established", f"dport = :{port}"], capture_output=True,
                         text=True, timeout=10, check=True)
    return len(out.stdout.splitlines())


def test_h2load_through_a_backend_kill_fails_only_what_was_in_flight(fastterm, python):
    """h2load over HTTP/1.1 keep-alive (10 connections, one request each in flight) while one of
    three backend processes is killed: at most the requests in flight at the kill fail; the server,
    back on its port, gets connections again once it passed ``rise`` checks."""
    ports = [free_port() for _ in range(3)]
    backends = [_start_backend(python, p) for p in ports]
    try:
        ft = fastterm(upstreams=_upstream([f"{HOST}:{p}" for p in ports]), workers=2)
        load = subprocess.Popen(["h2load", "--h1", "-c", "10", "-m", "1", "-D", "4", "-t", "1",
                                 f"https://{HOST}:{ft.https_port}/"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        _stop(backends[1])
        out, _ = load.communicate(timeout=30)
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                         r"(\d+) errored", out)
        assert done, out
        finished, ok, failed, errored = map(int, done.groups())
        assert finished > 100 and ok >= finished - 10 and failed + errored <= 10, out
        assert wait_for(lambda: f"server {HOST}:{ports[1]} is down" in ft.log(), 5), ft.log()[-2000:]
        backends[1] = _start_backend(python, ports[1])
        assert wait_for(lambda: f"server {HOST}:{ports[1]} is up" in ft.log(), 5), ft.log()[-2000:]
        assert wait_for(lambda: ft.request("GET", "/", host=NAME).status == 200 and _established(ports[1]) > 0,
                        10, 0.05)
    finally:
        for b in backends:
            _stop(b)


def _health_backend(raw_backend, health: dict):
    """A backend whose /health answers ``health["status"]`` and whose other paths answer 200."""
    def handler(conn):
        while (req := conn.read_request()) is not None:
            if req.target == "/health":
                conn.send(response_bytes(health["status"], b"health"))
            else:
                conn.send(response_bytes(200, b"app"))
    return raw_backend(handler)


def _app_requests(backend) -> int:
    return sum(1 for r in backend.requests if r.target != "/health")



def test_an_http_check_answered_500_takes_a_server_down_though_it_accepts(fastterm, raw_backend):
    good_health, bad_health = {"status": 200}, {"status": 500}
    good, bad = _health_backend(raw_backend, good_health), _health_backend(raw_backend, bad_health)
    admin = free_port()
    ft = fastterm(upstreams=_upstream([good.address, bad.address], kind="http", path="/health"), workers=2,
                  admin=f"{HOST}:{admin}")
    assert wait_for(lambda: f"server {bad.address} is down: status 500" in ft.log(), 5), ft.log()[-2000:]
    metrics = metrics_text(admin)
    assert f'fastterm_upstream_server_up{{upstream="app",server="{bad.address}"}} 0' in metrics
    assert f'fastterm_upstream_server_up{{upstream="app",server="{good.address}"}} 1' in metrics
    with urllib.request.urlopen(f"http://{HOST}:{admin}/status", timeout=5) as r:
        checks = {c["server"]: c for c in json.load(r)["health_checks"]}
    assert not checks[bad.address]["up"] and checks[bad.address]["last_error"] == "status 500"
    assert checks[good.address]["up"] and checks[good.address]["kind"] == "http"
    before = _app_requests(bad)
    for _ in range(10):
        assert ft.request("GET", "/app", host=NAME).status == 200
    assert _app_requests(bad) == before          # no request went to the server checked down
    assert any(r.target == "/health" for r in bad.requests)
    bad_health["status"] = 200
    assert wait_for(lambda: f"server {bad.address} is up" in ft.log(), 5), ft.log()[-2000:]
    assert f'server="{bad.address}"}} 1' in metrics_text(admin)
    assert wait_for(lambda: ft.request("GET", "/app", host=NAME).status == 200 and _app_requests(bad) > before,
                    5, 0.05)


def test_every_server_down_answers_503_at_once_and_a_check_never_answered_is_a_failure(
        fastterm, raw_backend, refused_address):
    silent = raw_backend(lambda conn: (conn.read_request(), conn.hang()))   # reads, never answers
    ft = fastterm(upstreams=_upstream([silent.address, refused_address], kind="http", path="/health",
                                      timeout=0.3), workers=2)
    assert wait_for(lambda: f"server {silent.address} is down: timed out" in ft.log(), 5), ft.log()[-2000:]
    assert wait_for(lambda: "connect" in ft.log() and ft.log().count(" is down: ") >= 2, 5), ft.log()[-2000:]
    for _ in range(6):                          # new connections: both workers answer
        began = time.monotonic()
        assert ft.request("GET", "/", host=NAME).status == 503
        assert time.monotonic() - began < 2.0   # no connect attempt, no connect timeout
    settle()
    assert [r.target for r in silent.requests if r.target != "/health"] == []


def test_a_tls_upstream_is_checked_over_tls_with_its_verification(fastterm, raw_backend, ec_cert, ca_file):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ec_cert["cert"], ec_cert["key"])
    good_health = {"status": 200}
    tls = TLSBackend(ctx, _health_backend(raw_backend, good_health).handler)
    plain = _health_backend(raw_backend, good_health)     # speaks no TLS: the handshake never completes
    try:
        servers = [f"https://{HOST}:{tls.port}", f"https://{HOST}:{plain.port}"]
        check = dict(FAST, kind="http", path="/health")
        ft = fastterm(upstreams=[{"name": "app", "servers": servers, "check": check,
                                  "tls": {"ca_file": ca_file, "server_name": NAME}},
                                 {"name": "strict", "servers": servers[:1], "check": check,
                                  "tls": {"ca_file": ca_file, "server_name": "other.test"}}], workers=2)
        assert wait_for(lambda: f"upstream strict server {HOST}:{tls.port} is down: TLS: CERTIFICATE_VERIFY_FAILED"
                        in ft.log(), 5), ft.log()[-2000:]
        assert wait_for(lambda: f"server {HOST}:{plain.port} is down: timed out" in ft.log(), 5), ft.log()[-2000:]
        assert wait_for(lambda: any(r.target == "/health" for r in tls.requests), 5)
        assert f"upstream app server {HOST}:{tls.port} is down" not in ft.log()
        assert all(ft.request("GET", "/app", host=NAME).status == 200 for _ in range(4))
        assert _app_requests(plain) == 0
    finally:
        tls.close()
