"""HTTP/2 under the master: counters per protocol in /metrics and /status, and graceful
reloads (GOAWAY with the last stream id, streams in flight finish, then close), from real
clients: h2load, and frames written by hand (hyperframe and hpack, which come with ``h2``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter

import pytest
from conftest import wait_until
from harness import HOST, NAME
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from test_sup_admin import parse_prometheus, sample

pytestmark = pytest.mark.skipif(not shutil.which("h2load"),
                                reason="h2load is not installed (apt-get install nghttp2-client)")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8
NOTICE = 2**31 - 1   # RFC 9113 §6.8: the first GOAWAY of a graceful shutdown may name no stream


class H2Client:
    """One TLS connection speaking h2 frame by frame (hyperframe, hpack): the ``h2`` state
    machine stops at a GOAWAY, and what comes after one is what these tests are about."""

    def __init__(self, sup, timeout: float = 10.0):
        ctx = ssl.create_default_context(cafile=sup.ca_file)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((HOST, sup.https_port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=NAME)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.encoder, self.decoder = Encoder(), Decoder()
        self.buf = b""
        self.next_id = 1
        self.settings_acked = False
        self.pings_acked: list[bytes] = []
        self.headers: dict[int, list] = {}
        self.data: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.resets: dict[int, int] = {}
        self.goaways: list[GoAwayFrame] = []
        self.eof = False
        self.send(PREFACE + SettingsFrame(0).serialize())

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def get(self, path: str) -> int:
        sid, self.next_id = self.next_id, self.next_id + 2
        block = self.encoder.encode([(":method", "GET"), (":scheme", "https"), (":authority", NAME),
                                     (":path", path)])
        self.send(HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
        return sid

    def reset(self, sid: int) -> None:
        self.send(RstStreamFrame(sid, error_code=CANCEL).serialize())

    def read(self) -> None:
        """One read from the socket: its frames recorded (and SETTINGS, PING, DATA answered)."""
        try:
            data = self.sock.recv(65536)
        except ssl.SSLZeroReturnError:
            data = b""
        if not data:
            self.eof = True
            return
        self.buf += data
        while len(self.buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            frame.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            self.on_frame(frame)

    def on_frame(self, frame: Frame) -> None:
        sid = frame.stream_id
        if isinstance(frame, SettingsFrame):
            if "ACK" in frame.flags:
                self.settings_acked = True
            else:
                self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.pings_acked.append(frame.opaque_data)
            else:
                self.send(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]).serialize())
        elif isinstance(frame, HeadersFrame):
            assert "END_HEADERS" in frame.flags, frame   # our responses' heads fit one frame
            self.headers.setdefault(sid, []).extend(self.decoder.decode(frame.data))
        elif isinstance(frame, DataFrame):
            self.data[sid] = self.data.get(sid, b"") + frame.data
            if frame.flow_controlled_length:
                self.send(WindowUpdateFrame(0, window_increment=frame.flow_controlled_length).serialize() +
                          WindowUpdateFrame(sid, window_increment=frame.flow_controlled_length).serialize())
        elif isinstance(frame, RstStreamFrame):
            self.resets[sid] = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append(frame)
        if "END_STREAM" in frame.flags:
            self.ended.add(sid)

    def until(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while not (found := predicate()):
            assert not self.eof, f"connection closed before {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.read()
        return found

    def final_goaway(self, timeout: float) -> GoAwayFrame:
        """The GOAWAY that names the last stream the server takes (after a notice, if any)."""
        return self.until(lambda: next((g for g in self.goaways if g.last_stream_id != NOTICE), None),
                          timeout, "a GOAWAY naming the last stream")

    def closed_by_server(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self.read()
        return self.eof

    def status(self, sid: int) -> int:
        return int(dict(self.headers[sid])[":status"])

    def close(self) -> None:
        self.sock.close()


H2LOAD_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                             r"(\d+) errored, (\d+) timeout")


def h2load(sup, *args: str, timeout: float = 60) -> dict:
    res = subprocess.run(["h2load", *args, sup.url("/")], capture_output=True, text=True, timeout=timeout,
                         check=False)
    out = res.stdout + res.stderr
    m = H2LOAD_REQUESTS.search(out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    assert res.returncode == 0 and m and codes, out
    assert "Application protocol: h2" in out, out
    names = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
    return {**dict(zip(names, map(int, m.groups()))), "2xx": int(codes.group(1)), "output": out}


def continuation_flood(sup, frames: int) -> bool:
    """HEADERS without END_HEADERS, then ``frames`` CONTINUATIONs (CVE-2024-27316); True when
    the server closed the connection."""
    client = H2Client(sup)
    block = Encoder().encode([(":method", "GET"), (":scheme", "https"), (":authority", NAME), (":path", "/")])
    crumb = Encoder().encode([("x-crumb", "a")])
    client.send(HeadersFrame(1, data=block, flags=["END_STREAM"]).serialize() +
                b"".join(ContinuationFrame(1, data=crumb).serialize() for _ in range(frames)))
    try:
        return client.closed_by_server(5)
    except OSError:
        return True
    finally:
        client.close()


def test_counters_per_protocol_in_metrics_and_status(supervised):
    sup = supervised()
    for _ in range(3):
        assert sup.request("/").status == 200
    load = h2load(sup, "-n", "20", "-c", "2", "-m", "4")
    assert load["succeeded"] == load["2xx"] == 20, load["output"]

    # A stream the client resets once it is forwarded (the PING's ACK: the RST_STREAM was read).
    reset = H2Client(sup)
    sid = reset.get("/delay/5")
    time.sleep(0.5)
    reset.reset(sid)
    reset.send(PingFrame(0, opaque_data=b"resetted").serialize())
    reset.until(lambda: b"resetted" in reset.pings_acked, 5, "the PING ACK")
    reset.close()

    assert continuation_flood(sup, 40), "a CONTINUATION flood was not closed"

    # An idle session when the workers are replaced: GOAWAY.
    idle = H2Client(sup)
    sid = idle.get("/")
    idle.until(lambda: sid in idle.ended, 5, "a response")
    os.kill(sup.read_pid_file(), signal.SIGHUP)
    goaway = idle.final_goaway(5)
    assert goaway.last_stream_id == sid and goaway.error_code == 0
    idle.close()
    sup.wait_serving(2)

    h2_requests = 20 + 1 + 1   # h2load, the reset stream, the idle session's request
    expected = {
        ("fastterm_requests_total", (("protocol", "http/1.1"),)): 3,
        ("fastterm_requests_total", (("protocol", "h2"),)): h2_requests,
        ("fastterm_h2_connections_total", ()): 2 + 3,
        ("fastterm_h2_streams_total", ()): h2_requests,
        ("fastterm_h2_resets_received_total", ()): 1,
        ("fastterm_h2_goaways_sent_total", ()): 1,
        ("fastterm_h2_flood_closed_total", ()): 1,
    }

    def counted():
        fams = parse_prometheus(sup.metrics())
        got = {key: sample(fams, key[0], **dict(key[1])) for key in expected}
        return fams if got == expected else None

    fams = wait_until(counted, 3, 0.1, f"the counters to reach {expected}")
    for name in ("fastterm_h2_connections_total", "fastterm_h2_streams_total", "fastterm_h2_resets_received_total",
                 "fastterm_h2_goaways_sent_total", "fastterm_h2_flood_closed_total"):
        assert fams[name]["type"] == "counter" and fams[name]["help"], name
    st = sup.status()
    assert st["protocols"] == {
        "http/1.1": {"requests": 3},
        "h2": {"connections": 5, "requests": h2_requests, "streams": h2_requests, "resets_received": 1,
               "goaways_sent": 1, "flood_closed": 1},
    }


def rapid_reset(streams: int) -> bytes:
    """CVE-2023-44487: each stream opened and reset at once."""
    encoder, out = Encoder(), b""
    for sid in range(1, 2 * streams, 2):
        block = encoder.encode([(":method", "GET"), (":scheme", "https"), (":authority", NAME), (":path", "/")])
        out += HeadersFrame(sid, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize()
        out += RstStreamFrame(sid, error_code=CANCEL).serialize()
    return out


def too_many_settings(entries: int) -> bytes:
    """One SETTINGS frame of ``entries`` entries (CVE-2020-11080), unknown ones: RFC 9113
    §6.5.2 has them ignored, but each costs the server its parsing."""
    return SettingsFrame(0, settings={0x100 + i: 0 for i in range(entries)}).serialize()


@pytest.mark.parametrize("flood", ["rapid reset", "too many SETTINGS entries"])
def test_flood_closures_are_counted(supervised, flood):
    sup = supervised()
    client = H2Client(sup)
    try:
        client.send(rapid_reset(3000) if flood == "rapid reset" else too_many_settings(40))
    except OSError:
        pass   # closed while we wrote
    assert client.closed_by_server(5), f"{flood}: the session stayed open"
    assert client.goaways and client.goaways[-1].error_code != 0, client.goaways
    client.close()
    h2 = sup.status()["protocols"]["h2"]
    assert h2["requests"] < 100, h2   # the reset streams did not reach the backend
    assert h2["flood_closed"] == 1, h2


def test_reload_goaway_names_the_last_stream_and_in_flight_streams_finish(supervised):
    sup = supervised(limits={"drain_timeout": 5})
    client = H2Client(sup)
    slow = client.get("/delay/2")
    fast = client.get("/")
    client.until(lambda: fast in client.ended, 5, "the fast response")
    os.kill(sup.read_pid_file(), signal.SIGHUP)
    goaway = client.final_goaway(5)
    assert all(g.error_code == 0 for g in client.goaways), client.goaways
    assert goaway.last_stream_id == fast, goaway
    assert slow not in client.ended, "the slow stream ended before GOAWAY"
    client.until(lambda: slow in client.ended, 5, "the slow stream to finish")
    assert client.status(slow) == 200 and b'"path": "/delay/2"' in client.data[slow], client.data
    assert client.resets == {}
    assert client.closed_by_server(3), "the old worker kept the connection open after its last stream"
    client.close()
    sup.wait_serving(2)


def test_request_sent_before_the_client_read_goaway_is_served(supervised):
    """RFC 9113 §6.8: a graceful shutdown SHOULD send GOAWAY 2^31-1 first and the final one
    after a round trip (a PING), so that streams the client opened before it learned of the
    shutdown are served. Here the client sends its request while the server's GOAWAY waits
    unread in its socket: that request must be answered, not refused."""
    sup = supervised(limits={"drain_timeout": 5})
    client = H2Client(sup)
    first = client.get("/")
    client.until(lambda: first in client.ended, 5, "a response")
    os.kill(sup.read_pid_file(), signal.SIGHUP)
    wait_until(lambda: sup.status()["generation"] == 2, 5, 0.05, "generation 2")
    time.sleep(0.3)   # the old worker has drained: its GOAWAY is on the way, unread
    late = client.get("/")
    goaway = client.final_goaway(5)
    assert goaway.last_stream_id == late, f"stream {late} refused: {client.goaways}"
    client.until(lambda: late in client.ended, 5, "the late request's response")
    assert client.status(late) == 200
    client.close()


def test_reloads_under_h2load(supervised, tmp_path):
    """h2load runs back to back while the master reloads ten times; each request it sends is
    logged with its status, -1 for a stream closed without a response. h2load 1.52 opens no
    new connection for an h2 client that got a GOAWAY, nor retries the streams the GOAWAY
    left out (RFC 9113 §6.8: not processed, safe to retry): that client stops, and h2load
    counts them, and what it would have sent next, as failed. So what counts is what
    fastterm took: every request it took was answered 200 and reached h2load."""
    sup = supervised()
    log = tmp_path / "h2load.log"
    runs: list[dict] = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            runs.append(h2load(sup, "-n", "2000", "-c", "10", "-m", "10", "-t", "1", f"--log-file={log}"))

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(1.0)
    pid = sup.read_pid_file()
    for _ in range(10):
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.5)
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive(), "h2load did not finish"
    st = sup.wait_serving(11)
    assert st["reloads"] == 10 and st["reload_failures"] == 0 and st["worker_restarts"] == 0
    statuses = Counter(line.split("\t")[1] for line in log.read_text().splitlines())
    answered = statuses["200"]
    taken = st["protocols"]["h2"]["requests"]
    fams = parse_prometheus(sup.metrics())
    assert len(runs) > 10 and answered > 5000, (len(runs), statuses)
    assert set(statuses) <= {"200", "-1"}, statuses
    assert taken == answered == sample(fams, "fastterm_responses_total", code="2xx"), (taken, statuses)
    assert st["protocols"]["h2"]["resets_received"] == 0
    # Every old generation's sessions were told to go (h2load holds 10 connections at a time).
    assert st["protocols"]["h2"]["goaways_sent"] >= 10, st["protocols"]
