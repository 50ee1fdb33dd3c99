"""The PROXY protocol on the front (accept_proxy): real processes on loopback, a raw socket
that sends the header and then does TLS on the same socket (Python ssl), the raw backend's
received requests asserted. The test port's default server has no accept_proxy (the
fixture's readiness probe is a bare handshake); a second server, default on its own port,
has it."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from harness import HOST, NAME, free_port
from httpwire import Reader, read_message

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture
def proxied(fastterm, be, ec_cert):
    """(Fastterm, the accept_proxy port) for ``proxy_trusted`` (loopback by default)."""
    def start(trusted=("127.0.0.0/8",)):
        port = free_port()
        plain = {"server_names": ["other.test"], "default_server": True, "certificate": [ec_cert],
                 "route": [{"path": "/", "upstream": "app"}]}
        proxy = {"listen": [f"{HOST}:{port}"], "server_names": [NAME], "certificate": [ec_cert],
                 "route": [{"path": "/", "upstream": "app"}], "accept_proxy": True,
                 "proxy_trusted": list(trusted)}
        ft = fastterm(be.address, servers=[plain, proxy])
        return ft, port
    return start


def tls_request(ft, sock: socket.socket) -> bytes:
    """TLS on ``sock`` (the header already sent), one request; the response head's status line."""
    tls = ft.client_context().wrap_socket(sock, server_hostname=NAME)
    tls.sendall(f"GET /pp HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n".encode())
    return read_message(Reader(tls, bytearray())).start_line


def test_v1_header_sets_the_client_address(proxied, be):
    ft, port = proxied()
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")
    assert tls_request(ft, sock).startswith("HTTP/1.1 200")
    req = be.requests[-1]
    assert req.header("x-real-ip") == "192.0.2.7"
    assert req.header("x-forwarded-for") == "192.0.2.7"


def test_v2_header_split_across_writes(proxied, be):
    ft, port = proxied()
    addresses = socket.inet_pton(socket.AF_INET6, "2001:db8::5") + socket.inet_pton(socket.AF_INET6, "::1") \
        + struct.pack("!HH", 51000, 443)
    tlv = b"\x02\x00\x0b" + NAME.encode()[:11].ljust(11, b"x")   # a TLV we do not use is skipped
    header = SIG + b"\x21\x21" + struct.pack("!H", len(addresses) + len(tlv)) + addresses + tlv
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(0, len(header), 7):
        sock.sendall(header[i:i + 7])
        time.sleep(0.02)
    assert tls_request(ft, sock).startswith("HTTP/1.1 200")
    assert be.requests[-1].header("x-real-ip") == "2001:db8::5"


def test_v2_local_and_v1_unknown_keep_the_peer(proxied, be):
    ft, port = proxied()
    for header in (SIG + b"\x20\x00\x00\x00", b"PROXY UNKNOWN\r\n"):
        sock = socket.create_connection((HOST, port), timeout=5)
        sock.sendall(header)
        assert tls_request(ft, sock).startswith("HTTP/1.1 200")
        assert be.requests[-1].header("x-real-ip") == "127.0.0.1"


def closed_unheard(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("data", [b"\x16\x03\x01\x00\x05hello", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n",
                                  b"PROXY " + b"9" * 120, SIG + b"\x21\x11\xff\xff"])
def test_malformed_header_is_closed_and_the_worker_goes_on(proxied, be, data):
    ft, port = proxied()
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(data)
    assert closed_unheard(sock)
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(b"PROXY TCP4 192.0.2.8 127.0.0.1 1 443\r\n")
    assert tls_request(ft, sock).startswith("HTTP/1.1 200")
    assert len(be.requests) == 1
    assert "PROXY header: closing" in ft.log()


def test_untrusted_peer_is_closed_unheard(proxied, be):
    ft, port = proxied(trusted=["192.0.2.0/24"])
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 1 443\r\n")
    assert closed_unheard(sock)
    assert be.requests == []
    assert "is not in proxy_trusted" in ft.log()


def test_silent_client_is_closed_after_the_header_timeout(proxied):
    _, port = proxied()
    sock = socket.create_connection((HOST, port), timeout=8)
    start = time.monotonic()
    assert closed_unheard(sock)
    assert 1.0 < time.monotonic() - start < 7
