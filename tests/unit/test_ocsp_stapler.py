"""The master's OCSP schedule (fastterm/certs/ocsp.py) against a real loopback responder, with
a clock the test moves: refresh at half the validity, doubling backoff after failures, the
last good response kept until its nextUpdate, then cleared from the shared slot."""

from __future__ import annotations

import http.server
import selectors
import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastterm._core import SharedState, TLSContext
from ocsp_pki import pki, response

from fastterm.certs import ocsp as ocsp_mod
from fastterm.certs.ocsp import Stapler, StapleSite


class Clock:
    def __init__(self):
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


class Responder:
    """Answers each POST with ``self.body`` (bytes), on 127.0.0.1."""

    def __init__(self):
        self.body = b""
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/ocsp-response")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def p():
    return pki(None)


@pytest.fixture
def responder():
    r = Responder()
    yield r
    r.close()


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def make(p, url, clock):
    leaf, issuer = p["leaf"], p["issuer"]
    ctx = TLSContext()
    ctx.add_certificate(leaf.cert_pem + issuer.cert_pem, leaf.key_pem)
    site = StapleSite(ctx, 0, leaf.cert, [leaf.cert, issuer.cert], ("www.example.com",), "test", url, None,
                      True, [], 2.0, (url,))
    shared = SharedState(0)
    selector = selectors.DefaultSelector()
    stapler = Stapler(shared, selector, clock=clock)
    stapler.attach([site])
    return stapler, shared, next(iter(stapler.staples.values()))


def pump(stapler, rounds: int = 100):
    for _ in range(rounds):
        stapler.tick()
        if not stapler.fetching():
            return
        for key, events in stapler.selector.select(timeout=0.05):
            key.data(events)
    raise AssertionError("the fetch did not end")


def test_refresh_at_half_the_validity(p, responder):
    clock = Clock()
    stapler, shared, staple = make(p, responder.url, clock)
    this_update = datetime.fromtimestamp(clock.now, UTC).replace(microsecond=0)
    responder.body = response(p["leaf"], p["issuer"], p["issuer"], this_update=this_update,
                              next_update=this_update + timedelta(hours=4))
    stapler.start()
    assert staple.status == "good" and shared.ocsp(staple.slot) == responder.body
    assert staple.next_refresh == pytest.approx(this_update.timestamp() + 2 * 3600)
    clock.now = staple.next_refresh - 1
    stapler.tick()
    assert responder.requests == 1 and not stapler.fetching()
    clock.now = staple.next_refresh
    pump(stapler)
    assert responder.requests == 2


def test_backoff_doubles_and_keeps_the_last_good_response(p, responder, caplog):
    clock = Clock()
    stapler, shared, staple = make(p, responder.url, clock)
    this_update = datetime.fromtimestamp(clock.now, UTC).replace(microsecond=0)
    good = response(p["leaf"], p["issuer"], p["issuer"], this_update=this_update,
                    next_update=this_update + timedelta(minutes=10))
    responder.body = good
    stapler.start()
    assert staple.status == "good"
    staple.url = refused_url()                      # the responder goes away
    delays = []
    clock.now = staple.next_refresh
    for _ in range(4):
        pump(stapler)
        delays.append(round(staple.next_refresh - clock.now))
        clock.now = staple.next_refresh
    assert delays == [5, 10, 20, 40]
    assert staple.status == "good" and shared.ocsp(staple.slot) == good    # kept meanwhile
    assert sum("failed" in r.message and "stays" in r.message for r in caplog.records) == 4
    clock.now = this_update.timestamp() + 600       # its nextUpdate
    stapler.tick()
    assert staple.status == "error" and shared.ocsp(staple.slot) is None
    assert any("expired" in r.message for r in caplog.records)


def test_backoff_is_capped(p):
    clock = Clock()
    stapler, _shared, staple = make(p, refused_url(), clock)
    for _ in range(12):
        clock.now = staple.next_refresh
        pump(stapler)
    assert staple.retry == ocsp_mod.RETRY_MAX and staple.status == "error"


def test_garbage_and_forgeries_never_reach_the_slot(p, responder, caplog):
    clock = Clock()
    stapler, shared, staple = make(p, responder.url, clock)
    for body in (b"garbage", response(p["leaf"], p["issuer"], p["forger"]),
                 response(p["leaf"], p["issuer"], p["issuer"], status="unknown")):
        responder.body = body
        clock.now = staple.next_refresh
        pump(stapler)
        assert staple.status == "error" and shared.ocsp(staple.slot) is None
    assert responder.requests == 3


def test_a_certificate_keeps_its_slot_across_plans(p, responder):
    clock = Clock()
    stapler, shared, staple = make(p, responder.url, clock)
    responder.body = response(p["leaf"], p["issuer"], p["issuer"])
    stapler.start()
    ctx = TLSContext()
    ctx.add_certificate(p["leaf"].cert_pem + p["issuer"].cert_pem, p["leaf"].key_pem)
    site = StapleSite(ctx, 0, p["leaf"].cert, [p["leaf"].cert, p["issuer"].cert], ("www.example.com",), "test",
                      responder.url, None, True, [], 2.0, (responder.url,))
    stapler.attach([site])
    again = next(iter(stapler.staples.values()))
    assert again is staple and again.slot == staple.slot and shared.ocsp(staple.slot) is not None
    assert responder.requests == 1
    stapler.attach([])   # retired: slot and response kept for draining workers
    assert stapler.staples == {} and shared.ocsp(staple.slot) is not None


def test_no_responder_url_is_one_info_line(p, caplog):
    caplog.set_level("INFO", logger="fastterm.ocsp")
    clock = Clock()
    assert ocsp_mod.responder_url(p["leaf"].cert) is None      # pki(None): no AIA
    ctx = TLSContext()
    ctx.add_certificate(p["leaf"].cert_pem, p["leaf"].key_pem)
    site = StapleSite(ctx, 0, p["leaf"].cert, [p["leaf"].cert], ("www.example.com",), "test", None, None,
                      True, [], 2.0, ())
    stapler = Stapler(SharedState(0), selectors.DefaultSelector(), clock=clock)
    stapler.attach([site])
    assert stapler.staples == {}
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "names no OCSP responder" in caplog.records[0].message
