"""Fuzz target: the body framer (``ChunkedDecoder``, ext/http.pyx), chunked and length mode.

The first byte steers: low three bits 7 is length mode (the next three bytes the
Content-Length), anything else chunked. The rest is the body, fed three ways: whole, cut
at points drawn from its CRC, and (when short) a byte at a time. All three must agree on
where the body ends, whether it is complete and whether it is refused (400); a chunked
body the framer completes must match RFC 9112 §7.1's grammar and de-chunk with the
reference decoder of tests/unit/test_http_framing.py.
"""

from __future__ import annotations

import itertools
import zlib

from fastterm._core import ChunkedDecoder

from tests.unit.test_http_framing import STRICT_CHUNKED, dechunk

BYTEWISE_MAX = 300


def feed(pieces, mode: str, length: int):
    """(bytes consumed, done), or None when refused."""
    dec = ChunkedDecoder(mode, length)
    total = 0
    for piece in pieces:
        try:
            n = dec.feed(piece)
        except ValueError as err:
            assert err.args[0] == 400 and not dec.done, err.args
            return None
        assert 0 <= n <= len(piece)
        total += n
        if dec.done:
            assert dec.feed(b"0\r\n\r\n") == 0, "bytes taken after the end of the body"
            return total, True
        assert n == len(piece), "an unfinished body left bytes unconsumed"
    return total, False


def one_input(data: bytes):
    if not data:
        return
    body = data[1:]
    mode, length = "chunked", 0
    if data[0] & 7 == 7:
        mode, length, body = "length", int.from_bytes(body[:3], "big"), body[3:]
    whole = feed([body], mode, length)
    h = zlib.crc32(body)
    cuts = sorted({0, len(body)} | {(h >> shift) % (len(body) + 1) for shift in (0, 11, 22)})
    assert feed([body[a:b] for a, b in itertools.pairwise(cuts)] or [b""], mode, length) == whole, cuts
    if len(body) <= BYTEWISE_MAX:
        assert feed([body[i:i + 1] for i in range(len(body))] or [b""], mode, length) == whole
    if mode == "length":
        assert whole == (min(len(body), length), len(body) >= length)
    elif whole is not None and whole[1]:
        framed = body[:whole[0]]
        assert STRICT_CHUNKED.fullmatch(framed), framed
        dechunk(framed)


def seeds() -> dict[str, bytes]:
    from tests.unit.test_http_framing import INVALID_CHUNKED, VALID_CHUNKED

    out = {f"valid-{name}": b"\x00" + body for name, body in VALID_CHUNKED.items() if len(body) < 1024}
    out.update({f"invalid-{name}": b"\x00" + body for name, body in INVALID_CHUNKED.items()})
    out["pipelined"] = b"\x00" + VALID_CHUNKED["trailer"] + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    out["length-5"] = b"\x07\x00\x00\x05helloGET /"
    out["length-0"] = b"\x07\x00\x00\x00"
    return out
