"""Properties of a parsed header block, shared by the request and response head targets.

The Python API gives names and values as strings, not the parser's slot offsets, so the
offsets are checked through what they select: each field line of the block, split on
CRLF, must give back exactly the (name, value) pair the parser reported, in order.
"""

from __future__ import annotations

import re
import zlib

import httptools

TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
FIELD_VALUE_BYTE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


class Recorder:
    """httptools callbacks: the head only (the targets feed it the header block alone)."""

    def __init__(self):
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = False

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_headers_complete(self):
        self.complete = True


def check_rejection(data: bytes, err: ValueError, statuses: tuple):
    status = err.args[0]
    if b"\r\n\r\n" in data:
        assert status in statuses, err.args
    else:
        # Without a complete block only a bare LF or a CR not followed by LF is refused early
        # (check_line_endings; a CR at the very end waits for the next byte), and as 400 for a
        # response too: _parse_py does not look at is_request there.
        bare = data.startswith(b"\n") or re.search(rb"[^\r]\n|\r[^\n]", data) is not None
        assert status == (400 if bare else "incomplete"), (status, data)


def check_block(parse, data: bytes, head: dict) -> list[bytes]:
    """Asserts the block's framing and fields; returns its lines (start line first)."""
    end = head["head_len"]
    assert 0 < end <= len(data)
    block = data[:end]
    assert data.find(b"\r\n\r\n") == end - 4, "head_len is not the first CRLFCRLF"
    assert block.count(b"\n") == block.count(b"\r\n") == block.count(b"\r"), "bare CR or LF"
    assert b"\x00" not in block
    lines = block[:-4].split(b"\r\n")
    assert len(lines) - 1 == len(head["headers"])
    for raw, (name, value) in zip(lines[1:], head["headers"]):
        raw_name, colon, rest = raw.partition(b":")
        assert colon and TOKEN.fullmatch(raw_name), raw
        assert raw_name.decode("latin-1") == name
        assert rest.strip(b" \t").decode("latin-1") == value, (raw, value)
        assert FIELD_VALUE_BYTE.fullmatch(rest), raw
    assert not (head["chunked"] and head["content_length"] is not None)
    assert head["content_length"] is None or head["content_length"] >= 0
    assert head["version"] in ("1.0", "1.1")
    # The verdict depends on the block alone: what follows it (a pipelined message, a
    # body) changes nothing, and every cut inside the block is still incomplete.
    assert parse(block) == head
    for cut in {end - 1, zlib.crc32(data) % end}:
        try:
            parse(data[:cut])
        except ValueError as err:
            assert err.args[0] == "incomplete", (cut, err.args)
        else:
            raise AssertionError(f"a head cut at {cut} of {end} parsed")
    return lines


def reference_parse(parser, block: bytes):
    """Feed httptools the block (which it must accept, or this raises)."""
    try:
        parser.feed_data(block)
    except httptools.HttpParserUpgrade:
        pass   # CONNECT or Upgrade on a request: llhttp stops after the head, parsed
    except httptools.HttpParserError as err:
        if str(err) != "Pause on CONNECT/Upgrade":   # the same for a response
            raise


def same_fields(head: dict, rec: Recorder):
    # llhttp keeps trailing OWS in a value; RFC 9110 §5.5 says it is not part of it.
    assert [(n.encode("latin-1"), v.encode("latin-1")) for n, v in head["headers"]] == \
        [(n, v.rstrip(b" \t")) for n, v in rec.headers]
