"""Request and response bodies through fastterm: every framing, large transfers in bounded memory."""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import threading
import time

import pytest
from harness import HOST, NAME, echo_json, response_bytes, within_rss_bound
from httpwire import Reader, closed_by_peer, read_response, request_bytes

MIB = 1024 * 1024


@pytest.fixture
def ft(fastterm, demo_backend):
    return fastterm(demo_backend)


def chunked(data: bytes, sizes=(1, 7, 4096, 65536, 300000)) -> bytes:
    out, i, k = bytearray(), 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        piece = data[i:i + n]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
        i += n
        k += 1
    return bytes(out) + b"0\r\n\r\n"


def test_content_length_upload(ft):
    body = os.urandom(MIB + 17)
    r = ft.request("POST", "/upload", body=body)
    echo = echo_json(r)
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_upload(ft):
    body = os.urandom(2 * MIB + 3)
    with ft.connect() as s:
        s.sendall(request_bytes("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]) + chunked(body))
        echo = echo_json(read_response(Reader(s)))
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_upload_byte_by_byte_writes(ft):
    body = b"hello chunked world"
    with ft.connect() as s:
        s.sendall(request_bytes("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]))
        for b in chunked(body, sizes=(3, 5)):
            s.sendall(bytes([b]))
        echo = echo_json(read_response(Reader(s)))
    assert echo["body_length"] == len(body)


def test_chunked_upload_with_trailers_and_extensions(ft):
    wire = b"5;name=val\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
    with ft.connect() as s:
        s.sendall(request_bytes("POST", "/upload", headers=[("Transfer-Encoding", "chunked")]) + wire)
        rd = Reader(s)
        echo = echo_json(read_response(rd))
        assert echo["body_length"] == 5
        s.sendall(request_bytes("GET", "/next"))
        assert echo_json(read_response(rd))["path"] == "/next"


def test_http_client_chunked_upload(ft):
    conn = http.client.HTTPSConnection(NAME, ft.https_port, context=ft.client_context(), timeout=10)
    conn.sock = ft.connect()
    parts = [b"a" * 1000, b"b" * 70000, b"c"]
    conn.request("POST", "/upload", body=iter(parts), encode_chunked=True)
    echo = echo_json_bytes(conn.getresponse().read())
    conn.close()
    assert echo["body_length"] == 71001
    assert echo["body_sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def echo_json_bytes(data: bytes) -> dict:
    import json

    return json.loads(data)


def test_chunked_download(ft):
    with ft.connect() as s:
        rd = Reader(s)
        s.sendall(request_bytes("GET", "/chunked/1000000"))
        r = read_response(rd)
        assert r.chunked and not r.has("content-length")
        assert r.body == b"x" * 1000000
        s.sendall(request_bytes("GET", "/chunked/0"))
        assert read_response(rd).body == b""


def test_content_length_download(ft):
    r = ft.request("GET", "/bytes/3000000")
    assert r.header("content-length") == "3000000" and r.body == b"x" * 3000000


def test_close_delimited_response(raw_backend, fastterm):
    body = os.urandom(300000)

    def handler(conn):
        if conn.read_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n" + body)

    ft = fastterm(raw_backend(handler).address)
    with ft.connect() as s:
        s.sendall(request_bytes("GET", "/"))
        rd = Reader(s)
        r = read_response(rd)
        assert r.status == 200 and r.body == body
        if not r.close_delimited:  # re-framed (chunked): the connection may stay open
            assert r.chunked
    out = subprocess.run(["curl", "-sS", "--cacert", ft.ca_file, "--resolve", f"{NAME}:{ft.https_port}:{HOST}",
                          ft.url("/"), "--max-time", "10", "-o", "-"], capture_output=True, timeout=15, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == body


def test_close_delimited_http10_backend(raw_backend, fastterm):
    def handler(conn):
        if conn.read_request() is not None:
            conn.send(b"HTTP/1.0 200 OK\r\n\r\nold style body")

    ft = fastterm(raw_backend(handler).address)
    r = ft.request("GET", "/")
    assert r.status == 200 and r.body == b"old style body"


def test_chunked_response_with_trailers(raw_backend, fastterm):
    def handler(conn):
        while conn.read_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                      b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")

    ft = fastterm(raw_backend(handler).address)
    with ft.connect() as s:
        rd = Reader(s)
        for _ in range(2):
            s.sendall(request_bytes("GET", "/"))
            r = read_response(rd)
            assert r.body == b"abcde"


def test_backend_response_head_split_in_small_writes(raw_backend, fastterm):
    wire = response_bytes(200, b"split body", [("X-A", "1"), ("X-B", "2")])

    def handler(conn):
        while conn.read_request() is not None:
            for i in range(len(wire)):
                conn.send(wire[i:i + 1])

    ft = fastterm(raw_backend(handler).address)
    r = ft.request("GET", "/")
    assert r.status == 200 and r.body == b"split body" and r.header("x-b") == "2"


def test_empty_post(ft):
    echo = echo_json(ft.request("POST", "/e", headers=[("Content-Length", "0")]))
    assert echo["body_length"] == 0 and echo["method"] == "POST"


# ---------------------------------------------------------------------------------------
# 200 MiB each way in bounded memory


class RssWatch:
    """Max VmRSS of fastterm while a transfer runs, sampled every 20 ms."""

    def __init__(self, ft):
        self.ft = ft
        self.base = ft.rss_kib()
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.ft.rss_kib())
            except (OSError, AssertionError):
                return
            self.stop.wait(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(2)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 1024


BIG = 200 * MIB


def warm(ft):
    # Buffers and pooled connections exist before the baseline is taken.
    ft.request("POST", "/warm", body=b"w" * MIB)
    ft.request("GET", "/bytes/1048576")


def test_200mib_upload_bounded_memory(ft):
    warm(ft)
    piece = os.urandom(MIB)
    digest = hashlib.sha256()
    t0 = time.monotonic()
    with RssWatch(ft) as watch, ft.connect(timeout=30) as s:
        s.sendall(request_bytes("POST", "/upload", headers=[("Content-Length", str(BIG))]))
        for i in range(BIG // MIB):
            s.sendall(piece)
            digest.update(piece)
        echo = echo_json(read_response(Reader(s)))
    elapsed = time.monotonic() - t0
    assert echo["body_length"] == BIG
    assert echo["body_sha256"] == digest.hexdigest()
    assert within_rss_bound(watch.growth_mib, 20), f"RSS grew {watch.growth_mib:.1f} MiB during a 200 MiB upload"
    assert elapsed < 30, elapsed


def test_200mib_download_bounded_memory(ft):
    warm(ft)
    t0 = time.monotonic()
    with RssWatch(ft) as watch, ft.connect(timeout=30) as s:
        s.sendall(request_bytes("GET", f"/bytes/{BIG}"))
        rd = Reader(s)
        h = hashlib.sha256()
        r = read_response(rd, keep_body=False, hasher=h)
    elapsed = time.monotonic() - t0
    assert r.status == 200 and r.header("content-length") == str(BIG)
    expect = hashlib.sha256()
    fill = b"x" * MIB
    for _ in range(BIG // MIB):
        expect.update(fill)
    assert h.hexdigest() == expect.hexdigest()
    assert within_rss_bound(watch.growth_mib, 20), f"RSS grew {watch.growth_mib:.1f} MiB during a 200 MiB download"
    assert elapsed < 30, elapsed


def test_slow_reader_download_bounded_memory(ft):
    """A client that reads slowly: fastterm applies backpressure to the backend, not buffers."""
    warm(ft)
    with RssWatch(ft) as watch, ft.connect(timeout=30) as s:
        s.sendall(request_bytes("GET", f"/bytes/{100 * MIB}"))
        time.sleep(1.5)  # the backend could have sent all 100 MiB by now if nothing pushed back
        rd = Reader(s)
        r = read_response(rd, keep_body=False)
    assert r.status == 200
    assert within_rss_bound(watch.growth_mib, 20), f"RSS grew {watch.growth_mib:.1f} MiB behind a slow reader"


def test_client_closes_mid_download(ft):
    with ft.connect() as s:
        s.sendall(request_bytes("GET", f"/bytes/{50 * MIB}"))
        s.recv(65536)
    time.sleep(0.3)
    assert ft.alive()
    assert ft.request("GET", "/after").status == 200


def test_close_after_connection_close_request_with_body(ft):
    with ft.connect() as s:
        s.sendall(request_bytes("POST", "/x", headers=[("Connection", "close")], body=b"abc"))
        assert echo_json(read_response(Reader(s)))["body_length"] == 3
        assert closed_by_peer(s, timeout=3)
