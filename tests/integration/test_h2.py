"""HTTP/2 on the front (issue 9): ALPN, real clients (curl --http2, nghttp, h2load, httpx),
the h2 -> h1 request rules (RFC 9113 §8.2-8.3), the h1 -> h2 response rules, smuggling
vectors adapted to HTTP/2, and GOAWAY on drain.

What fastterm forwarded is read at the recording RawBackend: a request HTTP/2 calls
malformed (§8.1.1) is a stream error (RST_STREAM PROTOCOL_ERROR) or a 400, and none of it
reaches a backend; the connection goes on serving its other streams.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import time

import httpx
import pytest
from h2wire import HEADERS, NO_ERROR, PING, PROTOCOL_ERROR, Stream, h2_client, h2_request, raw_h2
from harness import HOST, HSTS, NAME, echo_json, header_map, response_bytes, settle
from httpwire import Reader, read_response, request_bytes

MIB = 1024 * 1024
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: www.example.com\r\n\r\n"


def curl(ft, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--cacert", ft.ca_file, "--resolve", f"{NAME}:{ft.https_port}:{HOST}",
                           "--max-time", str(timeout), *args], capture_output=True, timeout=timeout + 5, check=False)


# ---------------------------------------------------------------------------------------
# ALPN and real clients


def test_alpn_offers_h2_first_and_http11(ft):
    with ft.connect(ctx=ft.client_context(alpn=["h2", "http/1.1"])) as s:
        assert s.selected_alpn_protocol() == "h2"
    with ft.connect(ctx=ft.client_context(alpn=["http/1.1"])) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    with ft.connect(ctx=ft.client_context(alpn=None)) as s:   # no ALPN at all: HTTP/1.1
        s.sendall(request_bytes("GET", "/plain"))
        assert read_response(Reader(s)).status == 200


def test_alpn_setting_turns_h2_off(fastterm, be):
    ft = fastterm(be.address, tls={"alpn": ["http/1.1"]})
    with ft.connect(ctx=ft.client_context(alpn=["h2", "http/1.1"])) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
    out = curl(ft, "--http2", "-D", "-", ft.url("/fallback"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(b"HTTP/1.1 200"), out.stdout[:200]


def test_curl_http2_get_and_upload(demo, tmp_path):
    out = curl(demo, "--http2", "-D", "-", demo.url("/curl?x=1"))
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    assert f"strict-transport-security: {HSTS}".encode() in head
    echo = json.loads(body)
    assert echo["path"] == "/curl?x=1"
    h = header_map(echo)
    assert h["host"] == [f"{NAME}:{demo.https_port}"] and h["x-forwarded-proto"] == ["https"]
    data = os.urandom(MIB + 5)
    (tmp_path / "up.bin").write_bytes(data)
    out = curl(demo, "--http2", "--data-binary", f"@{tmp_path / 'up.bin'}", demo.url("/upload"))
    assert out.returncode == 0, out.stderr
    echo = json.loads(out.stdout)
    assert echo["body_length"] == len(data) and echo["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_curl_http2_many_requests_on_one_connection(ft, be):
    urls = [ft.url(f"/many/{i}") for i in range(20)]
    out = curl(ft, "--http2", "-w", "%{http_version} %{response_code} %{num_connects}\\n",
               *[arg for u in urls for arg in ("-o", "/dev/null", u)])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.decode().split()
    assert lines[0::3] == ["2"] * 20 and lines[1::3] == ["200"] * 20, out.stdout
    assert sum(int(n) for n in lines[2::3]) == 1, "curl needed more than one connection"
    assert sorted(r.target for r in be.requests) == sorted(f"/many/{i}" for i in range(20))


def test_nghttp_concurrent_streams_and_upload(demo, tmp_path):
    data = os.urandom(200000)
    (tmp_path / "up.bin").write_bytes(data)
    base = f"https://{HOST}:{demo.https_port}"
    out = subprocess.run(["nghttp", "-v", "-m", "1", f"{base}/a", f"{base}/b", f"{base}/c"],
                         capture_output=True, text=True, timeout=20, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert out.stdout.count(":status: 200") == 3, out.stdout[-2000:]
    out = subprocess.run(["nghttp", "-d", str(tmp_path / "up.bin"), f"{base}/upload"],
                         capture_output=True, text=True, timeout=20, check=False)
    assert out.returncode == 0, out.stderr
    echo = json.loads(out.stdout)
    assert echo["method"] == "POST" and echo["body_sha256"] == hashlib.sha256(data).hexdigest()


def test_h2load_reuses_backend_connections(ft, be):
    """2,000 requests, 4 connections x 10 streams: all succeed, and the backend connections
    are pooled (at most one per stream in flight), not one per request."""
    out = subprocess.run(["h2load", "-n", "2000", "-c", "4", "-m", "10", f"https://{HOST}:{ft.https_port}/load"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert "Application protocol: h2" in out.stdout, out.stdout[-2000:]
    assert re.search(r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed", out.stdout), \
        out.stdout[-2000:]
    assert "status codes: 2000 2xx" in out.stdout, out.stdout[-2000:]
    assert len(be.requests) == 2000
    assert be.accepts <= 40, f"{be.accepts} backend connections for 2000 requests"


def test_httpx_http2(demo):
    ctx = demo.client_context(alpn=None)
    base = f"https://{HOST}:{demo.https_port}"
    sni = {"sni_hostname": NAME}   # the certificate's name, on a loopback address
    with httpx.Client(http2=True, verify=ctx, timeout=10, headers={"host": NAME}) as client:
        r = client.get(f"{base}/httpx", extensions=sni)
        assert r.http_version == "HTTP/2" and r.status_code == 200
        assert r.json()["path"] == "/httpx"
        assert header_map(r.json())["host"] == [NAME]
        assert r.headers["strict-transport-security"] == HSTS
        body = os.urandom(100000)
        r = client.post(f"{base}/upload", content=body, extensions=sni)
        assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()

    async def many():
        async with httpx.AsyncClient(http2=True, verify=ctx, timeout=10, headers={"host": NAME}) as client:
            return await asyncio.gather(*(client.get(f"{base}/a/{i}", extensions=sni) for i in range(50)))

    got = asyncio.run(many())
    assert [r.json()["path"] for r in got] == [f"/a/{i}" for i in range(50)]
    assert {r.http_version for r in got} == {"HTTP/2"}


def test_streams_of_one_connection_run_side_by_side(demo):
    """Ten slow requests on one connection take as long as one: each stream has its own
    backend connection, and a slow stream holds back no other."""
    with h2_client(demo) as c:
        t0 = time.monotonic()
        slow = [c.request("GET", f"/delay/1?{i}") for i in range(10)]
        fast = c.request("GET", "/fast")
        assert c.wait(lambda: c.streams[fast].done, 5)
        assert time.monotonic() - t0 < 0.9 and not any(c.streams[s].done for s in slow)
        assert c.wait(lambda: all(c.streams[s].done for s in slow), 5)
        elapsed = time.monotonic() - t0
    assert [echo_json(c.streams[s].message())["path"] for s in slow] == [f"/delay/1?{i}" for i in range(10)]
    assert elapsed < 2.5, f"ten 1 s requests on one connection took {elapsed:.1f} s"


# ---------------------------------------------------------------------------------------
# h2 -> h1 request rules


def test_authority_becomes_host(ft, be):
    assert h2_request(ft, "GET", "/a", host=f"{NAME}:{ft.https_port}").status == 200
    assert h2_request(ft, "GET", "/b", host=NAME, headers=[("host", NAME)]).status == 200
    assert [q.all("host") for q in be.requests] == [[f"{NAME}:{ft.https_port}"], [NAME]]


def test_host_without_authority_is_used(ft, be):
    assert h2_request(ft, "GET", "/h", host=None, headers=[("host", NAME)]).status == 200
    assert be.requests[0].all("host") == [NAME]


def test_host_differing_from_authority_is_400(ft, be):
    """RFC 9113 §8.3.1: an intermediary that converts to HTTP/1.1 must not let Host and
    :authority disagree; a backend that routes on Host would see another site."""
    with h2_client(ft, validate=False) as c:   # h2 itself refuses to send this
        r = c.get("GET", "/x", headers=[("host", "evil.example")])
    assert r.status == 400 and r.all("strict-transport-security") == [HSTS]
    settle()
    assert be.accepts == 0


def test_cookie_crumbs_joined(ft, be):
    """RFC 9113 §8.2.3: cookie crumbs become one field, joined with "; "."""
    assert h2_request(ft, "GET", "/c", headers=[("cookie", "a=1"), ("x-mid", "1"), ("cookie", "b=2")]).status == 200
    assert be.requests[0].all("cookie") == ["a=1; b=2"]


def test_te_trailers_accepted_and_not_forwarded(ft, be):
    assert h2_request(ft, "GET", "/te", headers=[("te", "trailers")]).status == 200
    assert not be.requests[0].has("te")


def test_connect_is_405(ft, be):
    with h2_client(ft) as c:
        sid = c.conn.get_next_available_stream_id()
        c.streams[sid] = Stream()
        c.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"internal.example:22")])
        c.flush()
        r = c.response(sid).message()
    assert r.status == 405 and r.all("strict-transport-security") == [HSTS]
    settle()
    assert be.accepts == 0


# Requests RFC 9113 §8.1.1 and §8.2 call malformed, and the HTTP/1.1 smuggling vectors
# (test_smuggling.py) as an HTTP/2 client can write them: each is refused (RST_STREAM
# PROTOCOL_ERROR, or 400) and never forwarded.
MALFORMED = {
    "uppercase-name": {"headers": [("X-Upper", "1")]},
    "connection": {"headers": [("connection", "close")]},
    "keep-alive": {"headers": [("keep-alive", "timeout=5")]},
    "proxy-connection": {"headers": [("proxy-connection", "keep-alive")]},
    "upgrade": {"headers": [("upgrade", "websocket")]},
    "transfer-encoding": {"headers": [("transfer-encoding", "chunked")], "body": b"0\r\n\r\n" + SMUGGLED},
    "cl-and-te": {"headers": [("content-length", "4"), ("transfer-encoding", "chunked")],
                  "body": b"0\r\n\r\n"},
    "te-gzip": {"headers": [("te", "gzip")]},
    "te-trailers-and-gzip": {"headers": [("te", "trailers, gzip")]},
    "cr-in-value": {"headers": [("x-a", "b\rx-injected: 1")]},
    "crlf-in-value": {"headers": [("x-a", "b\r\nx-injected: 1")]},
    "lf-in-value": {"headers": [("x-a", "b\nx-injected: 1")]},
    "nul-in-value": {"headers": [("x-a", "b\x00c")]},
    "space-in-name": {"headers": [("x a", "b")]},
    "colon-in-name": {"headers": [("x:a", "b")]},
    "crlf-in-name": {"headers": [("x-a\r\nx-injected", "b")]},
    "empty-name": {"headers": [("", "b")]},
    "pseudo-after-regular": {"headers": [("x-a", "1"), (":extra", "x")]},
    "unknown-pseudo": {"headers": [(":extra", "x")]},
    "two-paths": {"headers": [(":path", "/other")]},
    "path-not-absolute": {"path": "a/b"},
    "path-with-space": {"path": "/a b HTTP/1.1\r\nX-Injected: 1\r\n"},
    "path-with-crlf": {"path": "/a\r\nX-Injected: 1"},
    "method-with-space": {"method": "GET /x HTTP/1.1\r\nX:"},
    "authority-with-crlf": {"authority": "www.example.com\r\nX-Injected: 1"},
    "authority-with-space": {"authority": "www.example.com evil"},
    "authority-with-userinfo": {"authority": "user@www.example.com"},
    "no-authority-no-host": {"authority": None},
    "two-differing-hosts": {"authority": None, "headers": [("host", "a.example.com"), ("host", NAME)]},
    "two-content-lengths": {"headers": [("content-length", "4"), ("content-length", "5")], "body": b"abcde"},
    "content-length-list": {"headers": [("content-length", "4, 5")], "body": b"abcde"},
    "content-length-plus": {"headers": [("content-length", "+4")], "body": b"abcd"},
    "content-length-negative": {"headers": [("content-length", "-1")], "body": b"abcd"},
    "content-length-hex": {"headers": [("content-length", "0x4")], "body": b"abcd"},
    "content-length-overflow": {"headers": [("content-length", "99999999999999999999999")], "body": b"abcd"},
    "content-length-shorter-than-data": {"headers": [("content-length", "5")], "body": b"hello" + SMUGGLED},
    "content-length-longer-than-data": {"headers": [("content-length", "500")], "body": b"hello"},
    "data-on-get-with-length-0": {"headers": [("content-length", "0")], "body": SMUGGLED},
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_request_refused_and_never_forwarded(ft, be, name):
    case = dict(MALFORMED[name])
    with h2_client(ft, validate=False) as c:
        sid = c.request(case.pop("method", "POST" if "body" in case else "GET"), case.pop("path", "/bad"),
                        length=False, **case)
        st = c.response(sid, timeout=5)
        assert st.done, f"{name}: no answer"
        assert st.reset == PROTOCOL_ERROR or (st.headers and dict(st.headers)[":status"] == "400"), \
            (name, st.reset, st.headers, c.goaway)
        # A stream error, not the connection's: the next stream is served.
        r = c.get("GET", "/after")
        assert r.status == 200
    settle()
    assert [q.target for q in be.requests] == ["/after"], (name, be.received())
    assert be.received() == be.requests[0].raw_head, (name, be.received())


def test_body_without_content_length_goes_chunked(ft, be):
    """RFC 9113 §8.2.2 for an HTTP/1.1 hop: DATA without content-length is framed with
    Transfer-Encoding: chunked (the issue: "a body without Content-Length goes upstream chunked"). Here the body (an HTTP/1.1 request) comes in the same write
    as the HEADERS and END_STREAM, as h2, curl and browsers send a small POST: forwarded
    without framing, the backend would take the body for a second request."""
    with h2_client(ft) as c:
        r = c.get("POST", "/outer", body=SMUGGLED, length=False)
    assert r.status == 200
    settle()
    assert [q.target for q in be.requests] == ["/outer"], be.received()
    (req,) = be.requests
    assert req.chunked and req.body == SMUGGLED, req.raw_head


def test_body_without_content_length_sent_later_goes_chunked(ft, be):
    with h2_client(ft) as c:
        sid = c.request("POST", "/later", end_stream=False)
        time.sleep(0.2)
        c.send_body(sid, SMUGGLED)
        r = c.response(sid).message()
    assert r.status == 200
    (req,) = be.requests
    assert req.target == "/later" and req.chunked and req.body == SMUGGLED, be.received()


def test_content_length_short_body_never_reuses_backend_connection(ft, be):
    """The backend got ``content-length: 50`` and 5 bytes when the client ended the stream:
    that connection is closed, never handed the next request as the body's rest."""
    with h2_client(ft, validate=False) as c:
        sid = c.request("POST", "/short", headers=[("content-length", "50")], body=b"hello", length=False,
                        end_stream=False)
        time.sleep(0.3)
        c.end_stream(sid)
        st = c.response(sid)
        assert st.reset == PROTOCOL_ERROR or dict(st.headers or {}).get(":status") == "400", st
        assert c.get("GET", "/next").status == 200
    settle()
    assert [q.target for q in be.requests] == ["/next"], be.received()
    assert be.accepts == 2


def test_request_trailers_end_the_body(demo):
    """Trailers (HEADERS with END_STREAM after DATA, RFC 9113 §8.1) end a request whose
    head already went to the backend: the body arrives whole, and the worker serves on
    (the same PID: none crashed and was respawned)."""
    pids = demo.serving_pids()
    with h2_client(demo) as c:
        sid = c.request("POST", "/upload", body=b"hello", length=False, end_stream=False)
        time.sleep(0.3)   # the head and the body went to the backend
        c.conn.send_headers(sid, [(b"x-checksum", b"1")], end_stream=True)
        c.flush()
        st = c.response(sid)
        assert st.ended, st
        assert echo_json(st.message())["body_length"] == 5
    assert demo.serving_pids() == pids, "the worker died"
    assert h2_request(demo, "GET", "/still-here").status == 200


# ---------------------------------------------------------------------------------------
# h1 -> h2 response rules


def test_response_chunked_decoded_and_content_length_kept(demo):
    with h2_client(demo) as c:
        chunked = c.get("GET", "/chunked/100000")
        sized = c.get("GET", "/bytes/5000")
    assert chunked.body == b"x" * 100000
    assert not chunked.has("transfer-encoding") and not chunked.has("content-length")
    assert sized.all("content-length") == ["5000"] and sized.body == b"x" * 5000


def test_backend_trailers_passed(raw_backend, fastterm):
    """The issue: trailers are passed when the backend sends them (gRPC's status is one):
    the last chunk's fields arrive as a trailing HEADERS frame."""
    def handler(conn):
        while conn.read_request() is not None:
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                      b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 5\r\n\r\n")

    ft = fastterm(raw_backend(handler).address)
    with h2_client(ft) as c:
        r = c.get("GET", "/", headers=[("te", "trailers")])
    assert r.status == 200 and r.body == b"abcde"
    assert r.trailers == [("x-sum", "5")], r.trailers


def test_backend_100_continue_then_final(raw_backend, fastterm):
    def handler(conn):
        while conn.read_request() is not None:
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n" + response_bytes(200, b"final"))

    ft = fastterm(raw_backend(handler).address)
    with h2_client(ft) as c:
        st = c.response(c.request("POST", "/", body=b"x"))
    assert st.ended and [dict(h)[":status"] for h in st.interim] == ["100"]
    assert st.message().status == 200 and bytes(st.body) == b"final"


def test_expect_100_continue(demo):
    """The client waits for 100 before it sends the body (RFC 9110 §10.1.1)."""
    with h2_client(demo) as c:
        sid = c.request("POST", "/upload", headers=[("content-length", "5"), ("expect", "100-continue")],
                        end_stream=False)
        assert c.wait(lambda: c.streams[sid].interim or c.streams[sid].done, 5)
        assert [dict(h)[":status"] for h in c.streams[sid].interim] == ["100"], c.streams[sid]
        c.send_body(sid, b"hello")
        assert echo_json(c.response(sid).message())["body_length"] == 5


def test_backend_101_is_502(raw_backend, fastterm):
    def handler(conn):
        conn.read_request()
        conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        conn.hang()

    ft = fastterm(raw_backend(handler).address)
    assert h2_request(ft).status == 502


def test_backend_close_mid_response_resets_the_stream(raw_backend, fastterm):
    """A truncated body is never passed off as complete: the stream is reset, not ended,
    and the connection's other streams go on."""
    def handler(conn):
        req = conn.read_request()
        if req is not None and req.target == "/cut":
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
        elif req is not None:
            conn.send(response_bytes(200, b"whole"))

    ft = fastterm(raw_backend(handler).address)
    with h2_client(ft) as c:
        st = c.response(c.request("GET", "/cut"))
        assert st.reset is not None and not st.ended, st
        assert c.get("GET", "/whole").body == b"whole"


# ---------------------------------------------------------------------------------------
# drain


def test_sigterm_sends_goaway_and_finishes_streams_in_flight(demo):
    """Drain (RFC 9113 §6.8): a GOAWAY notice (last stream 2^31-1) and a PING; at the
    client's PING ACK the final GOAWAY (NO_ERROR) names the last stream taken; that stream is
    answered; a stream opened after the final GOAWAY is not processed; then the connection
    closes and the process exits 0."""
    with raw_h2(demo) as c:
        first, f = c.headers("/delay/0.5")
        c.send(f)
        time.sleep(0.1)
        demo.proc.send_signal(signal.SIGTERM)
        frames = c.read(3, until=lambda: c.goaway is not None)
        assert c.goaway == (2**31 - 1, NO_ERROR), c.goaway
        frames += c.read(1, until=lambda: any(k == PING and not fl & 1 for k, fl, _, _ in frames))
        ping = next(p for k, fl, _, p in frames if k == PING and not fl & 1)
        c.send(struct.pack(">I", 8)[1:] + bytes([PING, 1]) + bytes(4) + ping)   # the ACK
        c.read(3, until=lambda: c.goaway[0] != 2**31 - 1)
        assert c.goaway == (first, NO_ERROR), c.goaway
        late, f = c.headers("/late")
        c.send(f)
        frames = c.read(5)
        assert c.status.get(first) == 200 and first in c.ended
        assert late not in c.status and not any(k == HEADERS and sid == late for k, _, sid, _ in frames)
        assert c.closed, "connection still open after its last stream"
    assert demo.proc.wait(timeout=5) == 0
