"""Fuzz target: the backend response head parser (``parse_response_head``, ext/http.pyx).

A rejection is 502 or "incomplete"; an accepted block is well framed (heads.check_block),
its status is three digits from 100, and httptools (llhttp) reads the same status,
version and fields from it.
"""

from __future__ import annotations

import httptools
from fastterm._core import parse_response_head
from heads import Recorder, check_block, check_rejection, reference_parse, same_fields


def one_input(data: bytes):
    try:
        head = parse_response_head(data)
    except ValueError as err:
        check_rejection(data, err, (502,))
        return
    lines = check_block(parse_response_head, data, head)
    assert lines[0].startswith(b"HTTP/" + head["version"].encode() + b" %d" % head["status"])
    assert 100 <= head["status"] <= 999   # three digits; parse_head takes 600-999 too
    names = [n.lower() for n, _ in head["headers"]]
    if "transfer-encoding" in names and "content-length" in names:
        return   # llhttp refuses both; RFC 9112 §6.3 lets Transfer-Encoding win (we read it chunked)
    if names.count("content-length") > 1:
        return   # identical duplicates pass (RFC 9110 §8.6); llhttp refuses them
    if any(n.lower() == "transfer-encoding" and not v for n, v in head["headers"]):
        return   # not chunked, so read until close (RFC 9112 §6.3); llhttp refuses an empty one
    rec = Recorder()
    parser = httptools.HttpResponseParser(rec)
    reference_parse(parser, data[:head["head_len"]])
    assert rec.complete
    assert parser.get_status_code() == head["status"]
    assert parser.get_http_version() == head["version"]
    same_fields(head, rec)


def seeds() -> dict[str, bytes]:
    crlf = b"\r\n"
    heads = {
        "ok-length": [b"HTTP/1.1 200 OK", b"Content-Length: 5", b"Content-Type: text/plain"],
        "chunked": [b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Connection: keep-alive"],
        "gzip-chunked": [b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip, chunked"],
        "http10-close": [b"HTTP/1.0 404 Not Found", b"Connection: close"],
        "no-reason": [b"HTTP/1.1 204", b"Server: x"],
        "continue": [b"HTTP/1.1 100 Continue"],
        "switching": [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade"],
        "hsts-cookies": [b"HTTP/1.1 302 Found", b"Location: /a", b"Strict-Transport-Security: max-age=1",
                         b"Set-Cookie: a=1", b"Set-Cookie: b=2", b"Keep-Alive: timeout=5"],
        "cl-and-te": [b"HTTP/1.1 200 OK", b"Content-Length: 42", b"Transfer-Encoding: chunked"],
        "bad-differing-cl": [b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Content-Length: 2"],
        "bad-fold": [b"HTTP/1.1 200 OK", b"X-A: b", b" folded"],
    }
    out = {name: crlf.join(lines) + crlf + crlf for name, lines in heads.items()}
    out["ok-with-body"] = out["ok-length"] + b"hello"
    return out
