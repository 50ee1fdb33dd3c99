"""The PROXY protocol (haproxy doc/proxy-protocol.txt), sans-IO: the parser fed bytes, whole
and byte by byte, and the encoder's headers parsed back. Headers are written out by hand
from the spec's layout, so the encoder is not checked against itself alone."""

from __future__ import annotations

import random
import socket
import struct

import pytest
from fastterm._core import parse_proxy_header, proxy_header, proxy_ssl_tlv

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    body = addresses + tlvs
    return SIG + bytes((0x20 | command, family)) + struct.pack("!H", len(body)) + body


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


def byte_by_byte(data: bytes):
    """Every proper prefix needs more; the whole header parses."""
    for i in range(len(data)):
        assert parse_proxy_header(data[:i]) is None, i
    return parse_proxy_header(data)


# ---- v1 ------------------------------------------------------------------------

def test_v1_tcp4():
    line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    got = byte_by_byte(line)
    assert got == {"length": len(line), "version": 1, "command": "PROXY", "family": socket.AF_INET,
                   "src": "192.0.2.1", "src_port": 56324, "dst": "198.51.100.2", "dst_port": 443}


def test_v1_tcp6_and_what_follows_is_not_taken():
    line = b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n"
    got = parse_proxy_header(line + b"\x16\x03\x01")   # the ClientHello right behind it
    assert got["length"] == len(line)
    assert (got["family"], got["src"], got["dst"], got["src_port"], got["dst_port"]) == \
        (socket.AF_INET6, "2001:db8::1", "2001:db8::2", 65535, 0)


def test_v1_unknown_keeps_the_peer():
    assert byte_by_byte(b"PROXY UNKNOWN\r\n") == {"length": 15, "version": 1, "command": "LOCAL"}
    line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"
    assert parse_proxy_header(line)["command"] == "LOCAL"


def test_v1_longest_line_is_accepted():
    line = (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
            b" 65535 65535\r\n")
    assert len(line) == 104
    assert parse_proxy_header(line)["src"] == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\n",          # LF without CR
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",            # a field missing
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 1\r\n",      # one too many
    b"PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n",       # two spaces
    b"PROXY TCP4 ::1 ::1 1 2\r\n",                              # IPv6 under TCP4
    b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",              # IPv4 under TCP6
    b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2x\r\n",
    b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY\r\n",
    b"proxy TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
])
def test_v1_malformed(line):
    with pytest.raises(ValueError, match="malformed"):
        parse_proxy_header(line)


def test_v1_without_crlf_within_107_bytes_is_too_long():
    assert parse_proxy_header(b"PROXY " + b"1" * 100) is None
    with pytest.raises(ValueError, match="too long"):
        parse_proxy_header(b"PROXY " + b"1" * 101)


# ---- v2 ------------------------------------------------------------------------

def test_v2_inet():
    header = v2(1, 0x11, inet("192.0.2.1", "198.51.100.2", 56324, 443))
    got = byte_by_byte(header)
    assert got == {"length": 28, "version": 2, "command": "PROXY", "family": socket.AF_INET,
                   "src": "192.0.2.1", "src_port": 56324, "dst": "198.51.100.2", "dst_port": 443, "tlvs": []}


def test_v2_inet6_with_tlvs():
    tlvs = (b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com"
            + b"\x20\x00\x0f\x07\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3")
    header = v2(1, 0x21, inet6("2001:db8::1", "2001:db8::2", 1, 443), tlvs)
    got = byte_by_byte(header)
    assert (got["src"], got["dst"], got["src_port"], got["dst_port"]) == ("2001:db8::1", "2001:db8::2", 1, 443)
    assert got["tlvs"] == [(1, b"h2"), (2, b"example.com"), (0x20, (7, 0, [(0x21, b"TLSv1.3")]))]


def test_v2_local_keeps_the_peer():
    assert byte_by_byte(v2(0, 0x00, b"")) == {"length": 16, "version": 2, "command": "LOCAL", "tlvs": []}
    # LOCAL with addresses: they are skipped, not used (spec 2.2)
    assert parse_proxy_header(v2(0, 0x11, inet("192.0.2.1", "192.0.2.2", 1, 2)))["command"] == "LOCAL"


def test_v2_udp_and_unix_are_skipped_as_local():
    assert parse_proxy_header(v2(1, 0x12, inet("192.0.2.1", "192.0.2.2", 1, 2)))["command"] == "LOCAL"
    assert parse_proxy_header(v2(1, 0x31, b"\x00" * 216))["command"] == "LOCAL"


@pytest.mark.parametrize("header", [
    SIG + b"\x11\x11\x00\x0c" + inet("192.0.2.1", "192.0.2.2", 1, 2),    # version 1 in the v2 form
    SIG + b"\x22\x11\x00\x0c" + inet("192.0.2.1", "192.0.2.2", 1, 2),    # command 2
    SIG + b"\x21\x11\x00\x08" + b"\x00" * 8,                              # addresses cut short
    SIG + b"\x21\x21\x00\x0c" + b"\x00" * 12,
    SIG[:11] + b"X" + b"\x21\x11\x00\x0c" + b"\x00" * 12,
])
def test_v2_malformed(header):
    with pytest.raises(ValueError, match="malformed"):
        parse_proxy_header(header)


def test_v2_past_the_cap_is_too_long():
    assert parse_proxy_header(SIG + b"\x21\x11\x0f\xf0") is None     # 16 + 4080 = 4096: waits
    with pytest.raises(ValueError, match="too long"):
        parse_proxy_header(SIG + b"\x21\x11\x0f\xf1")
    with pytest.raises(ValueError, match="too long"):
        parse_proxy_header(SIG + b"\x21\x11\xff\xff")


# ---- not a PROXY header ------------------------------------------------------------

@pytest.mark.parametrize("data", [b"\x16\x03\x01\x02\x00\x01", b"GET / HTTP/1.1\r\n", b"\r\n\r\n\x01", b"X"])
def test_other_protocols_are_rejected_at_once(data):
    with pytest.raises(ValueError, match="malformed"):
        parse_proxy_header(data)


def test_seeded_garbage_only_yields_none_a_dict_or_valueerror():
    rng = random.Random(12)
    seeds = [b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n",
             v2(1, 0x21, inet6("::1", "::2", 1, 2), b"\x01\x00\x02h2")]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = bytes(data[:rng.randint(0, len(data))])
        try:
            got = parse_proxy_header(data)
        except ValueError:
            continue
        assert got is None or got["length"] <= len(data)


# ---- encoder -----------------------------------------------------------------------

def test_encoder_v1_exact_bytes():
    assert proxy_header(1, "192.0.2.1", 56324, "198.51.100.2", 443) == \
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n"
    assert proxy_header(1, "::1", 1, "::1", 443) == b"PROXY TCP6 ::1 ::1 1 443\r\n"
    assert proxy_header(1, "192.0.2.1", 1, "::1", 443) == b"PROXY UNKNOWN\r\n"


def test_encoder_v2_exact_bytes_and_round_trip():
    ssl = proxy_ssl_tlv("TLSv1.3", "TLS_AES_256_GCM_SHA384", client_cert=True, verify=0)
    assert ssl == (b"\x20\x00\x28\x03\x00\x00\x00\x00" + b"\x21\x00\x07TLSv1.3"
                   + b"\x23\x00\x16TLS_AES_256_GCM_SHA384")
    header = proxy_header(2, "192.0.2.1", 56324, "198.51.100.2", 443, alpn=b"h2", authority=b"example.com",
                          ssl=ssl)
    assert header == v2(1, 0x11, inet("192.0.2.1", "198.51.100.2", 56324, 443),
                        b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com" + ssl)
    got = parse_proxy_header(header)
    assert got["tlvs"][2] == (0x20, (0x03, 0, [(0x21, b"TLSv1.3"), (0x23, b"TLS_AES_256_GCM_SHA384")]))
    six = proxy_header(2, "2001:db8::1", 1, "2001:db8::2", 2)
    assert six == v2(1, 0x21, inet6("2001:db8::1", "2001:db8::2", 1, 2))
    assert proxy_header(2, "192.0.2.1", 1, "::1", 2) == v2(0, 0x00, b"")
    assert proxy_ssl_tlv(client_cert=True, cert_this_connection=False, verify=20)[3:8] == b"\x05\x00\x00\x00\x14"
