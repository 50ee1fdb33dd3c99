"""Fuzz target: the request head parser (``parse_request_head``, ext/http.pyx).

Besides never crashing: a rejection is 400, 431 or "incomplete" and only where the
bytes allow it; an accepted block is well framed (heads.check_block), carries no
smuggling ambiguity (one Host, at most one Transfer-Encoding, Host on HTTP/1.1), and
httptools (llhttp, the reference in tests/unit/test_http_framing.py) parses the same
method, target, version and fields from it.
"""

from __future__ import annotations

import re

import httptools
from fastterm._core import parse_request_head
from heads import Recorder, check_block, check_rejection, reference_parse, same_fields

# RFC 9112 §3.2: origin-form, absolute-form (a scheme), authority-form (host:port, which
# the scheme pattern covers too), asterisk-form.
TARGET_FORM = re.compile(rb"/|[A-Za-z][-A-Za-z0-9+.]*:|\*$")


def one_input(data: bytes):
    try:
        head = parse_request_head(data)
    except ValueError as err:
        check_rejection(data, err, (400, 431))
        return
    lines = check_block(parse_request_head, data, head)
    method, target, version = lines[0].split(b" ")
    assert (method.decode("latin-1"), target.decode("latin-1"), version) == \
        (head["method"], head["target"], b"HTTP/" + head["version"].encode())
    assert len(head["headers"]) <= 100
    names = [n.lower() for n, _ in head["headers"]]
    assert names.count("host") <= 1 and names.count("transfer-encoding") <= 1
    assert head["host"] is not None or head["version"] == "1.0"
    assert not (head["chunked"] and head["version"] == "1.0")
    if names.count("content-length") > 1:
        return   # identical duplicates pass (RFC 9110 §8.6, test_http_framing); llhttp refuses them
    if not TARGET_FORM.match(target):
        return   # the parser leaves target forms to the Exchange, which answers 400 (_origin_form)
    # llhttp's URL parser refuses obs-text and reads only some absolute forms: other
    # targets (checked above) go to it as "/", so that it still checks the rest.
    ref_target = target if target.startswith(b"/") and max(target) < 0x80 else b"/"
    block = data[:head["head_len"]]
    rec = Recorder()
    parser = httptools.HttpRequestParser(rec)
    try:
        reference_parse(parser, method + b" " + ref_target + block[len(method) + 1 + len(target):])
    except httptools.HttpParserInvalidMethodError:
        return   # llhttp knows a fixed list of methods; any token is a method (RFC 9110 §9.1)
    assert rec.complete
    assert parser.get_method() == method and rec.url == ref_target
    assert parser.get_http_version() == head["version"]
    same_fields(head, rec)


def seeds() -> dict[str, bytes]:
    from tests.unit.test_http_framing import CORPUS, SMUGGLING

    out = {f"valid-{i}": data for i, data in enumerate(CORPUS)}
    out.update({f"smuggling-{name}": data for name, data in SMUGGLING.items()})
    out["pipelined"] = CORPUS[0] + CORPUS[4]
    return out
