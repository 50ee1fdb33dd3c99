"""HTTP/1.1 framing, sans-IO: request/response heads and the body framer, fed bytes.

Strict where leniency lets a request be smuggled past us (RFC 9112 §6.3, §11.2): every
vector must be a 400, never a guess. httptools (llhttp) runs beside our parser as a
reference on the messages both must accept. A bounded, seeded fuzz run at the end checks
that mutated input only ever yields a dict or a ValueError.
"""

from __future__ import annotations

import random
import re

import httptools
import pytest
from fastterm._core import ChunkedDecoder, check_head_line_sizes, parse_request_head, parse_response_head

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:   # pragma: no cover - the generated corpus is extra, the fixed one stays
    given = None


def req(*lines: str | bytes, start: bytes = b"GET / HTTP/1.1") -> bytes:
    """A request head: start line, field lines, blank line (CRLF everywhere)."""
    raw = [start] + [line.encode("latin-1") if isinstance(line, str) else line for line in lines]
    return b"\r\n".join(raw) + b"\r\n\r\n"


def status_of(data: bytes, **kwargs):
    with pytest.raises(ValueError) as info:
        parse_request_head(data, **kwargs)
    return info.value.args[0]


# ---- Valid requests ----------------------------------------------------------

@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH",
                                    "TRACE", "PROPFIND", "M-SEARCH", "get"])
def test_methods(method):
    head = parse_request_head(req("Host: example.com", start=f"{method} / HTTP/1.1".encode()))
    assert head["method"] == method
    assert head["target"] == "/"


@pytest.mark.parametrize("target", [
    "/", "/index.html", "/a/b/c?x=1&y=2", "/search?q=a%20b&lang=fr#frag", "/?", "/p;param?q",
    "http://example.com/abs?x", "*", "/%E2%82%AC", "/~user/!$&'()*+,;=:@",
])
def test_targets(target):
    method = "OPTIONS" if target == "*" else "GET"
    head = parse_request_head(req("Host: h", start=f"{method} {target} HTTP/1.1".encode()))
    assert head["target"] == target


def test_connect_authority_form():
    head = parse_request_head(req("Host: example.com:443", start=b"CONNECT example.com:443 HTTP/1.1"))
    assert head["method"] == "CONNECT" and head["target"] == "example.com:443"


def test_http10_without_host():
    head = parse_request_head(b"GET /old HTTP/1.0\r\n\r\n")
    assert head["version"] == "1.0"
    assert head["host"] is None
    assert head["headers"] == []
    assert head["head_len"] == len(b"GET /old HTTP/1.0\r\n\r\n")


def test_http11_fields_and_flags():
    data = req("Host: example.com", "User-Agent: t/1", "Content-Length: 12", "Connection: close",
               "Expect: 100-continue", start=b"POST /upload HTTP/1.1")
    head = parse_request_head(data)
    assert head["version"] == "1.1"
    assert head["host"] == "example.com"
    assert head["content_length"] == 12
    assert head["chunked"] is False
    assert head["keep_alive_off"] is True
    assert head["expect_continue"] is True
    assert head["head_len"] == len(data)
    assert [name for name, _ in head["headers"]] == ["Host", "User-Agent", "Content-Length", "Connection",
                                                     "Expect"]


def test_chunked_request_head():
    head = parse_request_head(req("Host: h", "Transfer-Encoding: chunked", start=b"POST / HTTP/1.1"))
    assert head["chunked"] is True and head["content_length"] is None


@pytest.mark.parametrize("value", ["chunked", "Chunked", "CHUNKED", " chunked ", "\tchunked"])
def test_chunked_is_case_insensitive_and_trimmed(value):
    head = parse_request_head(req("Host: h", f"Transfer-Encoding:{value}", start=b"POST / HTTP/1.1"))
    assert head["chunked"] is True


@pytest.mark.parametrize("line, name, value", [
    ("X-A: v", "X-A", "v"),
    ("X-A:v", "X-A", "v"),
    ("X-A:    v", "X-A", "v"),
    ("X-A: v   ", "X-A", "v"),
    ("X-A:\t v \t", "X-A", "v"),
    ("X-A: a  b\tc", "X-A", "a  b\tc"),       # inner whitespace is part of the value
    ("X-A:", "X-A", ""),
    ("X-A:   ", "X-A", ""),
    ("x-lower: V", "x-lower", "V"),           # names keep their case
    ("X-Obs: caf\xe9", "X-Obs", "caf\xe9"),   # obs-text is allowed in values
    ("!#$%&'*+-.^_`|~: tchar", "!#$%&'*+-.^_`|~", "tchar"),
])
def test_ows_trimming(line, name, value):
    head = parse_request_head(req("Host: h", line))
    assert head["headers"][1] == (name, value)


def test_many_headers_up_to_the_limit():
    lines = ["Host: h"] + [f"X-{i}: {i}" for i in range(99)]
    head = parse_request_head(req(*lines))
    assert len(head["headers"]) == 100
    assert head["headers"][-1] == ("X-98", "98")


@pytest.mark.parametrize("count", [101, 150, 256, 300])
def test_too_many_headers_is_431(count):
    lines = ["Host: h"] + [f"X-{i}: {i}" for i in range(count - 1)]
    assert status_of(req(*lines)) == 431


@pytest.mark.parametrize("limit", [1, 5, 20])
def test_max_headers_argument(limit):
    ok = req(*(["Host: h"] + [f"X-{i}: v" for i in range(limit - 1)]))
    assert len(parse_request_head(ok, max_headers=limit)["headers"]) == limit
    assert status_of(req(*(["Host: h"] + [f"X-{i}: v" for i in range(limit)])), max_headers=limit) == 431


def test_duplicate_identical_content_length_accepted():
    head = parse_request_head(req("Host: h", "Content-Length: 5", "Content-Length: 5", start=b"POST / HTTP/1.1"))
    assert head["content_length"] == 5


def test_duplicate_identical_content_length_forwarded_once():
    """RFC 9112 §6.3: identical fields may be accepted but are one field: the repeats are dropped."""
    head = parse_request_head(req("Host: h", "Content-Length: 5", "content-length: 05", "Content-Length: 5",
                                  start=b"POST / HTTP/1.1"))
    assert head["dropped"] == ["content-length", "Content-Length"]
    assert parse_request_head(req("Host: h", "Content-Length: 5", start=POST))["dropped"] == []
    head = parse_response_head(resp("Content-Length: 2", "Content-Length: 2"))
    assert head["content_length"] == 2 and head["dropped"] == ["Content-Length"]


# ---- Forwarded identity: recognised in any case, look-alikes with "_" -------------

CLIENT_IDENTITY = ["X-Forwarded-Host", "X-Forwarded-Port", "X-Forwarded-Server", "X-Forwarded-Prefix",
                   "X-Forwarded-Protocol", "X-Forwarded-Scheme", "X-Forwarded-Ssl", "X-Url-Scheme",
                   "Front-End-Https", "X-Original-Forwarded-For", "True-Client-IP", "X-Client-IP",
                   "X-Cluster-Client-IP", "CF-Connecting-IP", "Fastly-Client-IP"]
FORWARDING = ["X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto", "Forwarded"]


@pytest.mark.parametrize("name", CLIENT_IDENTITY)
def test_client_identity_names_in_any_case(name):
    for variant in (name, name.lower(), name.upper(), name.swapcase()):
        head = parse_request_head(req("Host: h", f"{variant}: 6.6.6.6"))
        assert head["client_identity"] == [variant]
        assert head["underscore"] == []


@pytest.mark.parametrize("name", FORWARDING + ["X-Forwarded-", "X-Forwarded-Hostname", "X-Forwarded-Fo",
                                               "X-Client-IPs", "True-Client", "X-Custom"])
def test_other_names_are_not_client_identity(name):
    """X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, Forwarded have kinds of their own."""
    assert parse_request_head(req("Host: h", f"{name}: v"))["client_identity"] == []


@pytest.mark.parametrize("name", [n.replace("-", "_") for n in FORWARDING[:3] + CLIENT_IDENTITY]
                         + ["x_forwarded-for", "X-Forwarded_Host", "x_REAL_ip"])
def test_underscore_lookalikes_are_client_identity(name):
    """CGI and WSGI read X_Forwarded_For as HTTP_X_FORWARDED_FOR, the same variable as X-Forwarded-For."""
    head = parse_request_head(req("Host: h", f"{name}: 6.6.6.6"))
    assert head["underscore"] == [name]
    assert head["client_identity"] == [name]


@pytest.mark.parametrize("line", ["Content_Length: 5", "Transfer_Encoding: chunked", "Connection_: close",
                                  "My_Header: v", "_: v", "X_" + "a" * 40 + ": v"])
def test_underscore_names_are_never_framing(line):
    head = parse_request_head(req("Host: h", line, start=POST))
    name = line.split(":")[0]
    assert head["underscore"] == [name]
    assert head["client_identity"] == []
    assert head["content_length"] is None and not head["chunked"] and not head["keep_alive_off"]


@pytest.mark.parametrize("value, expected", [("0", 0), ("7", 7), ("007", 7), ("123456789012", 123456789012)])
def test_content_length_values(value, expected):
    head = parse_request_head(req("Host: h", f"Content-Length: {value}", start=b"POST / HTTP/1.1"))
    assert head["content_length"] == expected


def test_incomplete_head():
    for partial in (b"", b"GET", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: h\r\n",
                    b"GET / HTTP/1.1\r\nHost: h\r\n\r"):
        with pytest.raises(ValueError) as info:
            parse_request_head(partial)
        assert info.value.args[0] == "incomplete"


@pytest.mark.parametrize("at", [0, 1, 7, 8, 9, 15, 16, 20])
def test_every_value_byte_at_every_word_offset(at):
    """A field value is checked eight bytes at a time, then byte by byte: each byte value,
    at each offset of a word, is accepted exactly when it is HTAB, SP, VCHAR or obs-text."""
    for byte in range(256):
        value = bytearray(b"v" * 21)
        value[at] = byte
        data = b"GET / HTTP/1.1\r\nHost: h\r\nX-V: " + bytes(value) + b"\r\n\r\n"
        allowed = byte == 9 or 32 <= byte <= 126 or byte >= 128
        if allowed:
            head = parse_request_head(data)
            assert head["headers"][1] == ("X-V", bytes(value).decode("latin-1").strip(" \t")), byte
        else:
            with pytest.raises(ValueError) as info:
                parse_request_head(data)
            assert info.value.args[0] == 400, byte


@pytest.mark.parametrize("at", [1, 7, 8, 9, 15, 16])
def test_every_target_byte_at_every_word_offset(at):
    """The request-target is scanned eight bytes at a time too: each byte value is taken
    into it exactly when it is VCHAR or obs-text (SP ends it early: then not HTTP/1.x, 400)."""
    for byte in range(256):
        target = bytearray(b"/" + b"t" * 20)
        target[at] = byte
        data = b"GET " + bytes(target) + b" HTTP/1.1\r\nHost: h\r\n\r\n"
        if 33 <= byte <= 126 or byte >= 128:
            assert parse_request_head(data)["target"] == bytes(target).decode("latin-1"), byte
        else:
            with pytest.raises(ValueError) as info:
                parse_request_head(data)
            assert info.value.args[0] == 400, byte


@pytest.mark.parametrize("data, head_len", [
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 27),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\r\n\r\n", 27),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX: \n\r\n\r\n", None),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r", "incomplete"),
    (b"GET / HTTP/1.1\r\nHost: h\r\n\n\r\n", None),
])
def test_head_end_is_the_first_crlfcrlf(data, head_len):
    if head_len == "incomplete" or head_len is None:
        with pytest.raises(ValueError) as info:
            parse_request_head(data)
        assert info.value.args[0] == (head_len or 400)
    else:
        assert parse_request_head(data)["head_len"] == head_len


def test_pipelined_request_is_not_part_of_the_head():
    first = req("Host: a", start=b"GET /1 HTTP/1.1")
    head = parse_request_head(first + req("Host: b", start=b"GET /2 HTTP/1.1"))
    assert head["head_len"] == len(first)
    assert head["target"] == "/1" and head["headers"] == [("Host", "a")]


# ---- Smuggling vectors and malformed heads: 400 -------------------------------

POST = b"POST / HTTP/1.1"

SMUGGLING = {
    "cl-and-te": req("Host: h", "Content-Length: 5", "Transfer-Encoding: chunked", start=POST),
    "te-and-cl": req("Host: h", "Transfer-Encoding: chunked", "Content-Length: 5", start=POST),
    "cl-zero-and-te": req("Host: h", "Content-Length: 0", "Transfer-Encoding: chunked", start=POST),
    "differing-cl": req("Host: h", "Content-Length: 5", "Content-Length: 6", start=POST),
    "cl-list": req("Host: h", "Content-Length: 5, 5", start=POST),
    "cl-list-differing": req("Host: h", "Content-Length: 5, 6", start=POST),
    "te-gzip-chunked": req("Host: h", "Transfer-Encoding: gzip, chunked", start=POST),
    "te-chunked-gzip": req("Host: h", "Transfer-Encoding: chunked, gzip", start=POST),
    "te-chunked-chunked": req("Host: h", "Transfer-Encoding: chunked, chunked", start=POST),
    "te-two-fields": req("Host: h", "Transfer-Encoding: chunked", "Transfer-Encoding: chunked", start=POST),
    "te-gzip-then-chunked-fields": req("Host: h", "Transfer-Encoding: gzip", "Transfer-Encoding: chunked",
                                       start=POST),
    "te-identity": req("Host: h", "Transfer-Encoding: identity", start=POST),
    "te-empty": req("Host: h", "Transfer-Encoding:", start=POST),
    "te-chunked-param": req("Host: h", "Transfer-Encoding: chunked;q=1", start=POST),
    "te-leading-comma": req("Host: h", "Transfer-Encoding: ,chunked", start=POST),
    "te-xchunked": req("Host: h", "Transfer-Encoding: xchunked", start=POST),
    "te-on-http10": req("Transfer-Encoding: chunked", start=b"POST / HTTP/1.0"),
    "te-on-http10-with-host": req("Host: h", "Transfer-Encoding: chunked", start=b"POST / HTTP/1.0"),
    "te-space-before-colon": req("Host: h", "Transfer-Encoding : chunked", start=POST),
    "te-tab-before-colon": req("Host: h", "Transfer-Encoding\t: chunked", start=POST),
    "cl-space-before-colon": req("Host: h", "Content-Length : 5", start=POST),
    "te-obs-fold": req("Host: h", "Transfer-Encoding:", " chunked", start=POST),
    "obs-fold-space": req("Host: h", "X-A: b", " c"),
    "obs-fold-tab": req("Host: h", "X-A: b", "\tc"),
    "first-line-folded": req(" Host: h"),
    "bare-lf-after-start-line": b"GET / HTTP/1.1\nHost: h\r\n\r\n",
    "bare-lf-between-fields": b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n",
    "bare-lf-end": b"GET / HTTP/1.1\r\nHost: h\r\n\n",
    "bare-lf-everywhere": b"GET / HTTP/1.1\nHost: h\n\n",
    "bare-lf-in-value": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nb\r\n\r\n",
    "bare-cr-in-start-line": b"GET /\r HTTP/1.1\r\nHost: h\r\n\r\n",
    "bare-cr-between-fields": b"GET / HTTP/1.1\r\nHost: h\rX-A: b\r\n\r\n",
    "bare-cr-in-value": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
    "bare-cr-te": b"POST / HTTP/1.1\r\nHost: h\r\nX: y\rTransfer-Encoding: chunked\r\n\r\n",
    "nul-in-value": req("Host: h", b"X-A: a\x00b"),
    "nul-in-name": req("Host: h", b"X\x00A: b"),
    "nul-in-target": req("Host: h", start=b"GET /\x00 HTTP/1.1"),
    "ctl-in-value": req("Host: h", b"X-A: a\x01b"),
    "vt-in-value": req("Host: h", b"X-A: \x0bb"),
    "esc-in-value": req("Host: h", b"X-A: \x1b[31m"),
    "del-in-value": req("Host: h", b"X-A: a\x7fb"),
    "ctl-in-target": req("Host: h", start=b"GET /\x01 HTTP/1.1"),
    "space-before-colon": req("Host: h", "X-A : b"),
    "space-in-name": req("Host: h", "X A: b"),
    "bad-char-in-name": req("Host: h", "X@A: b"),
    "utf8-name": req("Host: h", "X-\xe9: b"),
    "empty-name": req("Host: h", ": b"),
    "no-colon": req("Host: h", "X-A b"),
    "two-host": req("Host: a", "Host: b"),
    "two-host-same": req("Host: a", "Host: a"),
    "two-host-case": req("Host: a", "hOST: a"),
    "two-host-http10": req("Host: a", "Host: b", start=b"GET / HTTP/1.0"),
    "no-host-http11": req("X-A: b"),
    "no-host-no-fields": b"GET / HTTP/1.1\r\n\r\n",
    "version-1.2": req("Host: h", start=b"GET / HTTP/1.2"),
    "version-2.0": req("Host: h", start=b"GET / HTTP/2.0"),
    "version-0.9": req("Host: h", start=b"GET / HTTP/0.9"),
    "version-1.10": req("Host: h", start=b"GET / HTTP/1.10"),
    "version-lowercase": req("Host: h", start=b"GET / http/1.1"),
    "version-missing": req("Host: h", start=b"GET /"),
    "version-trailing-space": req("Host: h", start=b"GET / HTTP/1.1 "),
    "start-line-double-space": req("Host: h", start=b"GET  / HTTP/1.1"),
    "start-line-tab": req("Host: h", start=b"GET\t/ HTTP/1.1"),
    "space-in-target": req("Host: h", start=b"GET /a b HTTP/1.1"),
    "empty-target": req("Host: h", start=b"GET  HTTP/1.1"),
    "no-method": req("Host: h", start=b" / HTTP/1.1"),
    "bad-method-char": req("Host: h", start=b"G(T / HTTP/1.1"),
    "cl-non-digit": req("Host: h", "Content-Length: five", start=POST),
    "cl-hex": req("Host: h", "Content-Length: 0x10", start=POST),
    "cl-plus": req("Host: h", "Content-Length: +5", start=POST),
    "cl-minus": req("Host: h", "Content-Length: -5", start=POST),
    "cl-empty": req("Host: h", "Content-Length:", start=POST),
    "cl-inner-space": req("Host: h", "Content-Length: 1 0", start=POST),
    "cl-decimal-point": req("Host: h", "Content-Length: 5.0", start=POST),
    "cl-trailing-garbage": req("Host: h", "Content-Length: 5x", start=POST),
    "cl-19-digits": req("Host: h", "Content-Length: 1234567890123456789", start=POST),
    "cl-overflow": req("Host: h", "Content-Length: 99999999999999999999999", start=POST),
    "cl-many-zeros": req("Host: h", "Content-Length: 0000000000000000000005", start=POST),
    "cl-unicode-digit": req("Host: h", "Content-Length: \xb2", start=POST),
}


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_vectors_are_400(data):
    assert status_of(data) == 400


@pytest.mark.parametrize("data", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_smuggling_vectors_are_400_followed_by_more(data):
    """The same vector with a pipelined request behind it: still 400, never a partial parse."""
    assert status_of(data + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n") == 400


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\nHost: h\n",           # bare LF, and no CRLFCRLF ever comes
    b"GET / HTTP/1.1\r\nHost: h\nX",
], ids=["bare-lf-no-end", "bare-lf-partial"])
def test_bare_lf_refused_before_the_head_is_complete(data):
    assert status_of(data) == 400


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: h\rX",       # a bare CR is refused as soon as the next byte is seen
    b"GET /\rx HTTP/1.1\r\n",
], ids=["bare-cr-in-field", "bare-cr-in-start-line"])
def test_bare_cr_refused_before_the_head_is_complete(data):
    assert status_of(data) == 400


@pytest.mark.parametrize("host", ["ex ample.com", "a/b", "user@host"], ids=["space", "slash", "userinfo"])
def test_invalid_host_value_is_400(host):
    """RFC 9112 §3.2: 400 for a Host field with an invalid value (uri-host [":" port]).
    Forwarding it lets a backend or cache see a different host than we routed on."""
    assert status_of(req(f"Host: {host}")) == 400


# ---- Responses -----------------------------------------------------------------

def resp(*lines: str, start: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return b"\r\n".join([start] + [line.encode("latin-1") for line in lines]) + b"\r\n\r\n"


@pytest.mark.parametrize("start, status, version", [
    (b"HTTP/1.1 200 OK", 200, "1.1"),
    (b"HTTP/1.1 204 No Content", 204, "1.1"),
    (b"HTTP/1.0 404 Not Found", 404, "1.0"),
    (b"HTTP/1.1 100 Continue", 100, "1.1"),
    (b"HTTP/1.1 599 Whatever you like\tat all", 599, "1.1"),
    (b"HTTP/1.1 200 ", 200, "1.1"),
    (b"HTTP/1.1 200", 200, "1.1"),           # RFC 9112 §4: tolerate a missing reason
])
def test_response_status_lines(start, status, version):
    head = parse_response_head(resp("Content-Length: 0", start=start))
    assert head["status"] == status and head["version"] == version
    assert head["content_length"] == 0


def test_response_chunked_and_length():
    assert parse_response_head(resp("Transfer-Encoding: chunked"))["chunked"] is True
    assert parse_response_head(resp("Content-Length: 42"))["content_length"] == 42
    # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length
    head = parse_response_head(resp("Content-Length: 42", "Transfer-Encoding: chunked"))
    assert head["chunked"] is True and head["content_length"] is None


@pytest.mark.parametrize("lines", [
    ["Transfer-Encoding: gzip, chunked"],
    ["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
], ids=["one-field", "two-fields"])
def test_response_chunked_when_final_coding(lines):
    """RFC 9112 §6.3 (4): chunked as the final coding frames the response as chunked;
    reading until close instead stalls a keep-alive backend connection."""
    assert parse_response_head(resp(*lines))["chunked"] is True


def test_response_chunked_not_final_is_not_chunked():
    assert parse_response_head(resp("Transfer-Encoding: chunked, gzip"))["chunked"] is False


@pytest.mark.parametrize("data", [
    resp("Content-Length: 1", "Content-Length: 2"),
    resp("Content-Length: x"),
    resp("X-A: a\x00b"),
    resp("X-A : b"),
    resp("X-A: b", " folded"),
    b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 O\x00K\r\n\r\n",
    resp(start=b"HTTP/1.2 200 OK"),
    resp(start=b"HTTP/2 200 OK"),
    resp(start=b"HTTP/1.1 20 OK"),
    resp(start=b"HTTP/1.1 2x0 OK"),
    resp(start=b"HTTP/1.1 2000 OK"),
    resp(start=b"HTTP/1.1 200X"),
    resp(start=b"HTTP/1.1 099 Low"),
    resp(start=b"ICY 200 OK"),
    b"HTTP/1.1 200 OK\rX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200\rX-Injected: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\rX-Injected: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\n\r\n",
    resp("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
    resp("Transfer-Encoding: chunked, chunked"),
    resp("Transfer-Encoding: gzip, Chunked", "Transfer-Encoding: chunked"),
], ids=["differing-cl", "bad-cl", "nul", "space-before-colon", "obs-fold", "bare-lf", "nul-reason",
        "version-1.2", "version-2", "two-digit-status", "non-digit-status", "four-digit-status",
        "status-no-space", "status-below-100", "not-http", "bare-cr-after-reason", "bare-cr-no-reason",
        "cr-cr-after-reason", "bare-cr-between-fields", "chunked-two-fields", "chunked-chunked",
        "chunked-in-both-fields"])
def test_bad_responses_are_502(data):
    with pytest.raises(ValueError) as info:
        parse_response_head(data)
    assert info.value.args[0] == 502


# ---- Chunked bodies --------------------------------------------------------------

def feed_whole(body: bytes, mode="chunked", length=0):
    dec = ChunkedDecoder(mode, length)
    return dec.feed(body), dec.done


def feed_bytewise(body: bytes, mode="chunked", length=0):
    dec = ChunkedDecoder(mode, length)
    total = 0
    for i in range(len(body)):
        n = dec.feed(body[i:i + 1])
        assert n in (0, 1)
        assert not (dec.done and n == 0 and total < i)   # stops exactly at the end
        total += n
    return total, dec.done


def feed_split(body: bytes, cut: int):
    dec = ChunkedDecoder()
    first = dec.feed(body[:cut])
    if dec.done:
        return first, True
    return first + dec.feed(body[cut:]), dec.done


_TCHAR = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_EXT = rb'(?:[ \t]*;[ \t]*' + _TCHAR + rb'+(?:[ \t]*=[ \t]*(?:' + _TCHAR + rb'+|"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[\t -~\x80-\xff])*"))?)*'
_FIELD = rb"(?:" + _TCHAR + rb"+:[ \t]*(?:[!-~\x80-\xff](?:[ \t!-~\x80-\xff]*[!-~\x80-\xff])?)?[ \t]*\r\n)"
STRICT_CHUNKED = re.compile(
    rb"(?:0*[1-9a-fA-F][0-9a-fA-F]*" + _EXT + rb"\r\n(?s:.)*?\r\n)*0+" + _EXT + rb"\r\n" + _FIELD + rb"*\r\n")


CHUNK_LINE_MAX = 4096        # ext/http.pxd
CHUNK_EXT_MAX = 16384
TRAILER_SECTION_MAX = 16384
TRAILER_FIELDS_MAX = 100


def ext(n: int) -> bytes:
    """A chunk extension of exactly ``n`` bytes (";" and a name)."""
    return b";" + b"e" * (n - 1)


def extensions(total: int) -> bytes:
    """A body whose chunk lines carry ``total`` extension bytes, each line at its bound."""
    per_line = CHUNK_LINE_MAX - 3        # one size digit and CRLF
    lines, last = divmod(total, per_line)
    return b"".join(b"1" + ext(per_line) + b"\r\nx\r\n" for _ in range(lines)) + b"0" + ext(last) + b"\r\n\r\n"


def trailers(n: int) -> bytes:
    return b"".join(b"T%d: v\r\n" % i for i in range(n))


def dechunk(wire: bytes) -> bytes:
    """A small reference decoder (RFC 9112 §7.1) for bodies our framer accepted."""
    out, i = bytearray(), 0
    while True:
        eol = wire.index(b"\r\n", i)
        size = int(wire[i:eol].split(b";")[0].strip(b" \t"), 16)
        i = eol + 2
        if size == 0:
            break
        out += wire[i:i + size]
        assert wire[i + size:i + size + 2] == b"\r\n"
        i += size + 2
    while wire[i:i + 2] != b"\r\n":
        i = wire.index(b"\r\n", i) + 2
    assert i + 2 == len(wire)
    return bytes(out)


VALID_CHUNKED = {
    "simple": b"5\r\nhello\r\n0\r\n\r\n",
    "two-chunks": b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    "hex-upper": b"A\r\n0123456789\r\n0\r\n\r\n",
    "hex-lower": b"a\r\n0123456789\r\n0\r\n\r\n",
    "leading-zeros": b"0005\r\nhello\r\n000\r\n\r\n",
    "crlf-in-data": b"4\r\n\r\n\r\n\r\n0\r\n\r\n",
    "binary-data": b"4\r\n\x00\xff\n\r\r\n0\r\n\r\n",
    "extension": b"5;name=value\r\nhello\r\n0\r\n\r\n",
    "extensions": b"5;a=1;b=\"q s\"\r\nhello\r\n0;last\r\n\r\n",
    "extension-bws": b"5 ;a=1\r\nhello\r\n0\t;x\r\n\r\n",
    "trailer": b"5\r\nhello\r\n0\r\nExpires: never\r\n\r\n",
    "trailers": b"5\r\nhello\r\n0\r\nA: 1\r\nB: 2\r\n\r\n",
    "empty-body": b"0\r\n\r\n",
    "big-chunk": b"4000\r\n" + b"x" * 0x4000 + b"\r\n0\r\n\r\n",
    "max-size-digits": b"000000000000005\r\nhello\r\n0\r\n\r\n",   # 15 hex digits
    # The bounds of ext/http.pxd, exactly reached.
    "line-at-limit": b"5" + ext(CHUNK_LINE_MAX - 3) + b"\r\nhello\r\n0\r\n\r\n",
    "extensions-at-limit": extensions(CHUNK_EXT_MAX),
    "trailer-section-at-limit": b"0\r\nT: " + b"v" * (TRAILER_SECTION_MAX - 7) + b"\r\n\r\n",
    "trailer-fields-at-limit": b"0\r\n" + trailers(TRAILER_FIELDS_MAX) + b"\r\n",
}


@pytest.mark.parametrize("body", VALID_CHUNKED.values(), ids=VALID_CHUNKED.keys())
def test_chunked_valid_whole_and_bytewise(body):
    assert feed_whole(body) == (len(body), True)
    assert feed_bytewise(body) == (len(body), True)
    for cut in range(1, len(body), max(1, len(body) // 40)):
        assert feed_split(body, cut) == (len(body), True)


@pytest.mark.parametrize("body", VALID_CHUNKED.values(), ids=VALID_CHUNKED.keys())
def test_chunked_stops_before_pipelined_request(body):
    """feed() returns exactly the body length: the next request's bytes are not consumed."""
    following = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    dec = ChunkedDecoder()
    assert dec.feed(body + following) == len(body)
    assert dec.done
    assert dec.feed(following) == 0
    assert dec.feed(b"0\r\n\r\n") == 0


def test_chunked_pipelined_bytewise():
    body = VALID_CHUNKED["trailer"]
    data = body + b"POST / HTTP/1.1\r\n"
    dec = ChunkedDecoder()
    consumed = [dec.feed(data[i:i + 1]) for i in range(len(data))]
    assert sum(consumed) == len(body)
    assert consumed[len(body):] == [0] * (len(data) - len(body))


def test_chunked_incomplete_is_not_done():
    body = VALID_CHUNKED["two-chunks"]
    for cut in range(len(body)):
        dec = ChunkedDecoder()
        assert dec.feed(body[:cut]) == cut
        assert not dec.done


INVALID_CHUNKED = {
    "size-zz": b"zz\r\nhello\r\n0\r\n\r\n",
    "size-minus-1": b"-1\r\nhello\r\n0\r\n\r\n",
    "size-plus": b"+5\r\nhello\r\n0\r\n\r\n",
    "size-0x": b"0x5\r\nhello\r\n0\r\n\r\n",
    "size-empty": b"\r\nhello\r\n0\r\n\r\n",
    "size-leading-space": b" 5\r\nhello\r\n0\r\n\r\n",
    "size-16-hex-digits": b"1" * 16 + b"\r\n",
    "size-17-hex-digits": b"1" * 17 + b"\r\n",
    "size-overflow-ffff": b"f" * 20 + b"\r\n",
    "size-overflow-zeros": b"0" * 17 + b"5\r\nhello\r\n0\r\n\r\n",
    "size-bare-lf": b"5\nhello\r\n0\r\n\r\n",
    "size-bare-cr": b"5\rhello\r\n0\r\n\r\n",
    "size-cr-cr": b"5\r\rhello\r\n0\r\n\r\n",
    "data-too-long": b"5\r\nhelloX\r\n0\r\n\r\n",
    "data-missing-crlf": b"5\r\nhello0\r\n\r\n",
    "data-bare-lf": b"5\r\nhello\n0\r\n\r\n",
    "data-bare-cr": b"5\r\nhello\r0\r\n\r\n",
    "ext-bare-lf": b"5;a=b\nhello\r\n0\r\n\r\n",
    "ext-nul": b"5;a\x00\r\nhello\r\n0\r\n\r\n",
    "ext-ctl": b"5;a\x01\r\nhello\r\n0\r\n\r\n",
    "last-bare-lf": b"5\r\nhello\r\n0\n\r\n",
    "final-bare-lf": b"5\r\nhello\r\n0\r\n\n",
    "trailer-bare-lf": b"0\r\nA: 1\n\r\n",
    "trailer-nul": b"0\r\nA: \x00\r\n\r\n",
    "trailer-bare-cr": b"0\r\nA: 1\rB: 2\r\n\r\n",
    "trailer-ctl": b"0\r\nA: \x01\r\n\r\n",
    # trailer lines are field lines (RFC 9112 §7.1.2) and are forwarded raw: same rules as the head
    "trailer-no-colon": b"0\r\nGarbage\r\n\r\n",
    "trailer-space-in-name": b"0\r\nA B: 1\r\n\r\n",
    "trailer-space-before-colon": b"0\r\nA : 1\r\n\r\n",
    "trailer-obs-fold": b"0\r\nA: 1\r\n 2\r\n\r\n",
    "final-cr-x": b"0\r\n\rX",
    # chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ): after the size and its BWS
    # only ";" or CRLF may come. Taking "0 5" as a last chunk (size 0, "extension" "5")
    # while a lenient backend reads size 5 is the chunk-extension desync ("funky chunks").
    "size-space-junk": b"5 x\r\nhello\r\n0\r\n\r\n",
    "size-space-digits": b"0 5\r\nhello\r\n0\r\n\r\n",
    "size-tab-digits": b"000\t5\r\nhello\r\n0\r\n\r\n",
    # Framing nobody reads is bounded (CVE-2024-22019): one byte past each bound of ext/http.pxd.
    "line-over-limit": b"5" + ext(CHUNK_LINE_MAX - 2) + b"\r\nhello\r\n0\r\n\r\n",
    "line-of-whitespace": b"5" + b" " * CHUNK_LINE_MAX + b";a\r\nhello\r\n0\r\n\r\n",
    "last-chunk-line-over-limit": b"0" + ext(CHUNK_LINE_MAX - 2) + b"\r\n\r\n",
    "extension-1mib": b"1;x=" + b"a" * (1 << 20) + b"\r\nX\r\n0\r\n\r\n",
    "extensions-over-limit": extensions(CHUNK_EXT_MAX + 1),
    "many-lines-of-extensions": b"".join(b"1" + ext(1000) + b"\r\nx\r\n" for _ in range(17)) + b"0\r\n\r\n",
    "trailer-section-over-limit": b"0\r\nT: " + b"v" * (TRAILER_SECTION_MAX - 6) + b"\r\n\r\n",
    "trailer-fields-over-limit": b"0\r\n" + trailers(TRAILER_FIELDS_MAX + 1) + b"\r\n",
}


@pytest.mark.parametrize("body", INVALID_CHUNKED.values(), ids=INVALID_CHUNKED.keys())
def test_chunked_invalid_is_400(body):
    with pytest.raises(ValueError) as info:
        ChunkedDecoder().feed(body)
    assert info.value.args[0] == 400
    dec = ChunkedDecoder()
    with pytest.raises(ValueError) as info:
        for i in range(len(body)):
            dec.feed(body[i:i + 1])
    assert info.value.args[0] == 400
    assert not dec.done


def test_length_mode_whole_bytewise_pipelined():
    assert feed_whole(b"hello", "length", 5) == (5, True)
    assert feed_bytewise(b"hello", "length", 5) == (5, True)
    dec = ChunkedDecoder("length", 5)
    assert dec.feed(b"hel") == 3 and not dec.done
    assert dec.feed(b"loGET / HTTP/1.1\r\n") == 2 and dec.done
    assert dec.feed(b"more") == 0


def test_length_mode_huge():
    dec = ChunkedDecoder("length", 10 ** 12)
    assert dec.feed(b"x" * 1000) == 1000
    assert not dec.done


# ---- httptools (llhttp) as a reference -------------------------------------------

class Recorder:
    def __init__(self):
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.in_headers = True
        self.complete_at = None
        self._name = None

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        if self.in_headers:
            self.headers.append((name, value))

    def on_headers_complete(self):
        self.in_headers = False

    def on_body(self, body):
        self.body += body

    def on_message_complete(self):
        self.complete_at = True


def reference(data: bytes):
    rec = Recorder()
    parser = httptools.HttpRequestParser(rec)
    parser.feed_data(data)
    assert rec.complete_at, "httptools did not complete the message"
    return rec, parser


def ours(data: bytes):
    head = parse_request_head(data)
    rest = data[head["head_len"]:]
    if head["chunked"]:
        dec = ChunkedDecoder()
        n = dec.feed(rest)
        assert dec.done and n == len(rest)
        body = dechunk(rest[:n])
    else:
        length = head["content_length"] or 0
        dec = ChunkedDecoder("length", length)
        n = dec.feed(rest) if length else 0
        assert n == len(rest) == length
        body = rest
    return head, body


def assert_same_as_reference(data: bytes):
    rec, parser = reference(data)
    head, body = ours(data)
    assert head["method"].encode("latin-1") == parser.get_method()
    assert head["target"].encode("latin-1") == rec.url
    assert head["version"] == parser.get_http_version()
    # llhttp keeps trailing OWS in a value; RFC 9110 §5.5 says it is not part of it.
    assert [(n.encode("latin-1"), v.encode("latin-1")) for n, v in head["headers"]] == \
        [(n, v.rstrip(b" \t")) for n, v in rec.headers]
    assert body == rec.body


CORPUS = [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    (b"GET /search?q=fastterm&page=2 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n"
     b"User-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\nAccept-Language: en-US,en;q=0.5\r\n\r\n"),
    b"GET /old HTTP/1.0\r\n\r\n",
    b"HEAD /x HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    (b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"
     b"Content-Length: 7\r\n\r\na=1&b=2"),
    (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"),
    b"PUT /empty HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"DELETE /r/1 HTTP/1.1\r\nhost: h\r\nX-Spaces:   padded value\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://example.com/abs HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a=1; b=2\r\nCookie: c=3\r\nX-Empty:\r\n\r\n",
    b"PATCH /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: %d\r\n" % (i, i) for i in range(99)) + b"\r\n",
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: a\r\ntrue-client-ip: 1.2.3.4\r\nX_Forwarded_For: 6.6.6.6\r\n"
     b"My_Header: v\r\nContent-Length: 0\r\n\r\n"),
    (b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5" + ext(CHUNK_LINE_MAX - 3) + b"\r\nhello\r\n0\r\n" + trailers(TRAILER_FIELDS_MAX) + b"\r\n"),
]


@pytest.mark.parametrize("data", CORPUS, ids=range(len(CORPUS)))
def test_same_as_httptools(data):
    assert_same_as_reference(data)


if given is not None:
    TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~",
                    min_size=1, max_size=12)
    PATH = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:@/?",
                   max_size=30).map(lambda s: "/" + s)
    VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=20).flatmap(
        lambda core: st.sampled_from([core, f" {core}", f"{core}  ", f"\t{core} ",
                                      f"{core[:3]} {core[3:]}" if len(core) > 4 else core]))
    RESERVED = {"host", "content-length", "transfer-encoding", "connection", "upgrade", "expect",
                "proxy-connection", "keep-alive", "te"}
    NAME = st.one_of(TOKEN.filter(lambda n: n.lower() not in RESERVED),
                     st.sampled_from(CLIENT_IDENTITY + FORWARDING).flatmap(
                         lambda n: st.sampled_from([n, n.lower(), n.upper(), n.replace("-", "_")])))
    FIELD = st.tuples(NAME, VALUE)

    @st.composite
    def requests(draw):
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]))
        version = draw(st.sampled_from(["1.1", "1.0"]))
        fields = draw(st.lists(FIELD, max_size=20))
        if version == "1.1" or draw(st.booleans()):
            fields.insert(draw(st.integers(0, len(fields))), ("Host", "example.com"))
        framing = draw(st.sampled_from(["none", "length", "chunked"] if version == "1.1"
                                       else ["none", "length"]))
        body = b""
        wire_body = b""
        if method in ("GET", "HEAD", "OPTIONS", "DELETE") and framing == "chunked":
            framing = "length"
        if framing != "none":
            chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5))
            body = b"".join(chunks)
            if framing == "length":
                fields.append(("Content-Length", str(len(body))))
                wire_body = body
            else:
                fields.append(("Transfer-Encoding", "chunked"))
                extension = draw(st.sampled_from([b"", b";a=1", b";x", ext(CHUNK_EXT_MAX // 8)]))
                wire_body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks)
                wire_body += b"0\r\n"
                if draw(st.booleans()):
                    wire_body += b"X-Checksum: 1\r\n"
                wire_body += b"\r\n"
        target = draw(PATH)
        head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{n}:{v}\r\n" for n, v in fields)
        return head.encode("latin-1") + b"\r\n" + wire_body

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(requests())
    def test_generated_requests_same_as_httptools(data):
        assert_same_as_reference(data)

    def lookalike(name: str) -> str:
        return name.replace("_", "-").lower()

    @settings(max_examples=300, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(requests())
    def test_generated_requests_names_classified(data):
        """Client identity by name in any case, and "_" look-alikes of any forwarding name."""
        head = parse_request_head(data)
        names = [n for n, _ in head["headers"]]
        identity = {n.lower() for n in CLIENT_IDENTITY}
        forwarding = identity | {n.lower() for n in FORWARDING}
        assert head["underscore"] == [n for n in names if "_" in n]
        assert head["client_identity"] == [
            n for n in names if n.lower() in identity or ("_" in n and lookalike(n) in forwarding)]

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(requests(), st.data())
    def test_generated_requests_fragmented(data, split):
        """Our head parser sees the head only once complete; the body framer takes any split."""
        head = parse_request_head(data)
        rest = data[head["head_len"]:]
        if not head["chunked"]:
            return
        cuts = sorted(split.draw(st.lists(st.integers(0, len(rest)), max_size=6)))
        dec, total, prev = ChunkedDecoder(), 0, 0
        for cut in cuts + [len(rest)]:
            total += dec.feed(rest[prev:cut])
            prev = cut
        assert total == len(rest) and dec.done
        for cut in range(len(data) - len(rest)):
            with pytest.raises(ValueError, match="incomplete"):
                parse_request_head(data[:cut])


# ---- Fuzz: mutated requests only ever give a dict or a ValueError --------------------

FUZZ_SEEDS = CORPUS + list(SMUGGLING.values())[:20]
SPECIAL = [b"\r", b"\n", b"\r\n", b"\x00", b":", b" ", b"\t", b",", b";", b"0", b"f", b"-",
           b"\x7f", b"\xff", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"Host: x\r\n"]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:                       # flip a bit
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:                             # insert a special
            buf[pos:pos] = rng.choice(SPECIAL)
        elif op == 2 and buf:                     # delete a run
            del buf[pos:pos + rng.randint(1, 4)]
        elif op == 3 and buf:                     # duplicate a run
            end = min(len(buf), pos + rng.randint(1, 30))
            buf[end:end] = buf[pos:end]
        elif op == 4:                             # random byte
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif op == 5:                             # truncate
            del buf[pos:]
    return bytes(buf)


def check_head(data: bytes):
    try:
        head = parse_request_head(data)
    except ValueError as err:
        assert err.args[0] in (400, 431, "incomplete"), err.args
        return None
    assert isinstance(head, dict)
    block = data[:head["head_len"]]
    assert block.endswith(b"\r\n\r\n")
    assert block.count(b"\n") == block.count(b"\r\n")       # no bare LF
    assert block.count(b"\r") == block.count(b"\r\n")       # no bare CR
    assert b"\x00" not in block
    assert not (head["chunked"] and head["content_length"] is not None)
    names = [n.lower() for n, _ in head["headers"]]
    assert names.count("host") <= 1
    assert names.count("transfer-encoding") <= 1
    if head["version"] == "1.1":
        assert head["host"] is not None
    # One framing forwarded: at most one Content-Length is left once the repeats are dropped.
    assert names.count("content-length") - [n.lower() for n in head["dropped"]].count("content-length") <= 1
    assert head["underscore"] == [n for n, _ in head["headers"] if "_" in n]
    for name, value in head["headers"]:
        assert name and ":" not in name and " " not in name
        assert value == value.strip(" \t")
        assert not any(ord(c) < 32 and c != "\t" or ord(c) == 127 for c in value)
    return head


def check_body(data: bytes, head):
    rest = data[head["head_len"]:] if head else data
    mode = "chunked" if head is None or head["chunked"] else "length"
    dec = ChunkedDecoder(mode, (head or {}).get("content_length") or 0)
    try:
        n = dec.feed(rest)
    except ValueError as err:
        assert err.args[0] == 400
        return
    assert 0 <= n <= len(rest)


def test_fuzz_mutated_requests():
    rng = random.Random(20240601)
    accepted = 0
    for i in range(4000):
        data = mutate(rng, rng.choice(FUZZ_SEEDS))
        head = check_head(data)
        accepted += head is not None
        check_body(data, head)
    assert accepted > 100        # the mutations are not all fatal: the checks above did run


def test_fuzz_mutated_chunked_bodies():
    rng = random.Random(7)
    seeds = list(VALID_CHUNKED.values())
    for _ in range(4000):
        body = mutate(rng, rng.choice(seeds))
        dec = ChunkedDecoder()
        try:
            whole = dec.feed(body)
            whole_done = dec.done
        except ValueError as err:
            assert err.args[0] == 400
            whole = None
        # the same bytes split at a random point give the same verdict
        cut = rng.randrange(len(body) + 1)
        dec2 = ChunkedDecoder()
        try:
            split = dec2.feed(body[:cut])
            if not dec2.done:
                split += dec2.feed(body[cut:])
        except ValueError:
            split = None
        assert split == whole
        if whole is not None:
            assert dec2.done == whole_done


def test_fuzz_framed_bodies_are_well_formed():
    """Every mutated body the framer ends (done) is a chunked body by RFC 9112 §7.1's grammar."""
    rng = random.Random(7)
    seeds = list(VALID_CHUNKED.values())
    for _ in range(4000):
        body = mutate(rng, rng.choice(seeds))
        dec = ChunkedDecoder()
        try:
            n = dec.feed(body)
        except ValueError:
            continue
        if dec.done:
            assert STRICT_CHUNKED.fullmatch(body[:n]), body[:n]


# ---- nginx's per-line limit (large_client_header_buffers SIZE) ---------------------

@pytest.mark.parametrize(("data", "status"), [
    (req("Host: h"), 0),
    (req("Host: h", start=b"GET /" + b"t" * 33 + b" HTTP/1.1"), 0),     # 49 bytes with its CRLF
    (req("Host: h", start=b"GET /" + b"t" * 34 + b" HTTP/1.1"), 0),     # exactly 50
    (req("Host: h", start=b"GET /" + b"t" * 35 + b" HTTP/1.1"), 414),   # 51: the request line
    (req("X: " + "a" * 45), 0),                                          # 50 with its CRLF
    (req("X: " + "a" * 46), 400),                                        # a field line
    (req("A: 1", "X: " + "a" * 46, "B: 2"), 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 40, 0),                        # incomplete, 45 so far
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 47, 400),                      # incomplete, already 50: too long
    (b"GET /" + b"t" * 60, 414),
])
def test_line_sizes(data, status):
    assert check_head_line_sizes(data, 50) == status
