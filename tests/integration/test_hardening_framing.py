"""Hardening: forwarded identity look-alikes, bounded chunk framing, canonical heads.

Every test sends the attack through a real TLS client to a running fastterm and asserts
what the recording backend (or, for backend responses, the client) received.
"""

from __future__ import annotations

import pytest
from harness import settle, wait_for
from httpwire import Reader, closed_by_peer, read_response, request_bytes

MIB = 1024 * 1024
CHUNK_LINE_MAX = 4096        # ext/http.pxd
TRAILER_SECTION_MAX = 16384
TRAILER_FIELDS_MAX = 100

# Names an edge proxy sets about the client or the request it saw (ext/http.pyx, _header_kind).
CLIENT_IDENTITY = ["X-Forwarded-Host", "x-forwarded-port", "X-FORWARDED-SERVER", "X-Forwarded-Prefix",
                   "X-Forwarded-Protocol", "X-Forwarded-Scheme", "X-Forwarded-Ssl", "X-Url-Scheme",
                   "Front-End-Https", "X-Original-Forwarded-For", "True-Client-IP", "x-client-ip",
                   "X-Cluster-Client-IP", "CF-Connecting-IP", "Fastly-Client-IP"]


def forwarded(ft, be, headers):
    """The request head the backend received for one GET with ``headers``."""
    r = ft.request("GET", "/h", headers=headers)
    assert r.status == 200, r.start_line
    return be.requests[-1]


def refused(s, status: int = 400) -> None:
    r = read_response(Reader(s))
    assert r.status == status, r.start_line
    assert closed_by_peer(s, timeout=3)


def chunked_head(target: str = "/up") -> bytes:
    return request_bytes("POST", target, headers=[("Transfer-Encoding", "chunked")])


def trailers(n: int, value: bytes = b"v") -> bytes:
    return b"".join(b"T%d: %s\r\n" % (i, value) for i in range(n))


# ---------------------------------------------------------------------------------------
# forwarded identity


def test_underscore_lookalikes_never_reach_backend(ft, be):
    """WSGI/CGI fold ``_`` and ``-`` into one variable: X_Forwarded_For would be read as XFF."""
    req = forwarded(ft, be, [("X_Forwarded_For", "6.6.6.6"), ("X_Real_IP", "6.6.6.6"),
                             ("x_forwarded_proto", "http"), ("My_Header", "v")])
    assert [n for n, _ in req.headers if "_" in n] == [], req.raw_head
    assert req.all("x-forwarded-for") == ["127.0.0.1"]
    assert req.all("x-real-ip") == ["127.0.0.1"]
    assert req.all("x-forwarded-proto") == ["https"]
    assert b"6.6.6.6" not in be.received()


def test_client_identity_headers_stripped_from_untrusted_peer(ft, be):
    req = forwarded(ft, be, [(name, "evil.example") for name in CLIENT_IDENTITY] + [("X-Kept", "1")])
    assert [name for name in CLIENT_IDENTITY if req.has(name)] == [], req.raw_head
    assert b"evil.example" not in be.received()
    assert req.all("x-kept") == ["1"]


def test_client_identity_headers_kept_from_trusted_proxy(fastterm, be):
    ft = fastterm(be.address, trusted_proxies=["127.0.0.1/32"])
    req = forwarded(ft, be, [(name, "cdn.example") for name in CLIENT_IDENTITY] + [("X_Forwarded_For", "6.6.6.6")])
    assert [name for name in CLIENT_IDENTITY if req.all(name) != ["cdn.example"]] == [], req.raw_head
    # nginx drops names with "_" whoever sends them (underscores_in_headers off).
    assert [n for n, _ in req.headers if "_" in n] == []
    assert req.all("x-forwarded-for") == ["127.0.0.1"]


def test_underscores_in_headers_setting(fastterm, be):
    """``underscores_in_headers = true`` forwards such names, but never a look-alike of a
    forwarding header from an untrusted peer."""
    ft = fastterm(be.address, limits={"underscores_in_headers": True})
    req = forwarded(ft, be, [("My_Header", "v"), ("X_Forwarded_For", "6.6.6.6"), ("x_real_ip", "6.6.6.6"),
                             ("X_Forwarded_Host", "evil.example")])
    assert req.all("my_header") == ["v"]
    assert [n for n, _ in req.headers if "_" in n] == ["My_Header"], req.raw_head
    assert req.all("x-forwarded-for") == ["127.0.0.1"]


# ---------------------------------------------------------------------------------------
# chunk extensions and trailers: bounded, on requests and on responses


def test_huge_chunk_extension_refused_before_dispatch(ft, be):
    """CVE-2024-22019 class: 1 MiB of extension on a 1-byte chunk. Its first bytes come with
    the head, so the backend never hears of the request."""
    body = b"1;x=" + b"a" * MIB + b"\r\nX\r\n0\r\n\r\n"
    with ft.connect() as s:
        s.sendall(chunked_head() + body)
        refused(s)
    settle()
    assert be.received() == b""
    assert ft.request("GET", "/after").status == 200


def test_huge_chunk_extension_after_head_is_bounded(ft, be):
    """The head already went to the backend: what follows it there stays under one chunk line."""
    with ft.connect() as s:
        s.sendall(chunked_head())
        assert wait_for(lambda: b"\r\n\r\n" in be.received())
        head_len = len(be.received())
        s.sendall(b"1;x=" + b"a" * MIB + b"\r\nX\r\n0\r\n\r\n")
        refused(s)
    settle()
    assert len(be.received()) - head_len <= CHUNK_LINE_MAX, len(be.received())
    assert be.requests == []


def test_chunk_extension_under_the_limit_forwarded(ft, be):
    ext = b";x=" + b"a" * (CHUNK_LINE_MAX - 16)
    with ft.connect() as s:
        s.sendall(chunked_head() + b"5" + ext + b"\r\nhello\r\n0\r\n\r\n")
        assert read_response(Reader(s)).status == 200
    assert be.requests[0].body == b"hello"


def test_trailer_field_count_over_limit_refused(ft, be):
    with ft.connect() as s:
        s.sendall(chunked_head() + b"5\r\nhello\r\n0\r\n" + trailers(TRAILER_FIELDS_MAX + 1) + b"\r\n")
        refused(s)
    settle()
    assert be.received() == b""


def test_trailer_fields_at_the_limit_forwarded(ft, be):
    with ft.connect() as s:
        s.sendall(chunked_head() + b"5\r\nhello\r\n0\r\n" + trailers(TRAILER_FIELDS_MAX) + b"\r\n")
        assert read_response(Reader(s)).status == 200
    assert len(be.requests[0].trailers) == TRAILER_FIELDS_MAX


def test_trailer_section_over_limit_refused(ft, be):
    big = b"T: " + b"v" * (TRAILER_SECTION_MAX + 1) + b"\r\n"
    with ft.connect() as s:
        s.sendall(chunked_head() + b"5\r\nhello\r\n0\r\n" + big + b"\r\n")
        refused(s)
    settle()
    assert be.requests == []   # never a complete request
    assert len(be.received()) < TRAILER_SECTION_MAX + 1024


def _answering(raw_backend, fastterm, response: bytes):
    def handler(conn):
        if conn.read_request() is not None:
            conn.send(response)
            conn.hang()
    return fastterm(raw_backend(handler).address)


def test_backend_huge_chunk_extension_is_502(raw_backend, fastterm):
    ft = _answering(raw_backend, fastterm, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"1;x=" + b"a" * MIB + b"\r\nX\r\n0\r\n\r\n")
    with ft.connect() as s:
        s.sendall(request_bytes("GET", "/"))
        rd = Reader(s)
        assert read_response(rd).status == 502
        assert rd.read_to_eof() == b""   # nothing of the backend's after it


def test_backend_trailer_over_limit_is_502(raw_backend, fastterm):
    ft = _answering(raw_backend, fastterm, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nok\r\n0\r\n" + trailers(TRAILER_FIELDS_MAX + 1) + b"\r\n")
    with ft.connect() as s:
        s.sendall(request_bytes("GET", "/"))
        refused(s, 502)


# ---------------------------------------------------------------------------------------
# canonical framing


def test_duplicate_content_length_collapsed_to_one(ft, be):
    """RFC 9112 §6.3: identical Content-Length fields may be accepted, as one."""
    with ft.connect() as s:
        s.sendall(request_bytes("POST", "/cl", headers=[("Content-Length", "5"), ("content-length", "5")],
                                body=b"hello"))
        assert read_response(Reader(s)).status == 200
    req = be.requests[0]
    assert req.all("content-length") == ["5"], req.raw_head
    assert req.body == b"hello"


def test_duplicate_content_length_in_response_collapsed(raw_backend, fastterm):
    ft = _answering(raw_backend, fastterm, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok")
    r = ft.request("GET", "/")
    assert r.status == 200 and r.body == b"ok"
    assert r.all("content-length") == ["2"], r.raw_head


@pytest.mark.parametrize("start", [b"HTTP/1.1 200 OK\rX-Injected: 1", b"HTTP/1.1 200\rX-Injected: 1",
                                   b"HTTP/1.1 200 OK\r\rX-Injected: 1"],
                         ids=["after-reason", "no-reason", "cr-cr"])
def test_bare_cr_in_status_line_is_502(raw_backend, fastterm, start):
    ft = _answering(raw_backend, fastterm, start + b"\r\nContent-Length: 2\r\n\r\nok")
    r = ft.request("GET", "/")
    assert r.status == 502, r.raw_head
    assert not r.has("x-injected")


@pytest.mark.parametrize("te", [b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                                b"Transfer-Encoding: chunked, chunked"], ids=["two-fields", "one-field"])
def test_response_chunked_twice_is_502(raw_backend, fastterm, te):
    """RFC 9112 §6.1: chunked is applied once. Forwarded, a client could unframe it twice or not."""
    ft = _answering(raw_backend, fastterm, b"HTTP/1.1 200 OK\r\n" + te + b"\r\n\r\n2\r\nok\r\n0\r\n\r\n")
    assert ft.request("GET", "/").status == 502
