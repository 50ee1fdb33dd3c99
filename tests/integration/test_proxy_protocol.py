"""The PROXY protocol on the front (accept_proxy): real processes on loopback, a raw socket
that sends the header and then does TLS on the same socket (Python ssl), the raw backend's
received requests asserted. The test port's default server has no accept_proxy (the
fixture's readiness probe is a bare handshake); a second server, default on its own port,
has it."""

from __future__ import annotations

import socket
import ssl
import struct
import time

import pytest
from fastterm._core import parse_proxy_header
from harness import HOST, NAME, RawBackend, free_port, keepalive_handler, metrics, wait_for
from httpwire import Reader, read_message
from test_nginx_mode import certs, cli, nginx_mode  # noqa: F401  (fixtures)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


@pytest.fixture
def proxied(fastterm, be, ec_cert):
    """(Fastterm, the accept_proxy port) for ``proxy_trusted`` (loopback by default)."""
    def start(trusted=("127.0.0.0/8",), admin: int | None = None):
        port = free_port()
        plain = {"server_names": ["other.test"], "default_server": True, "certificate": [ec_cert],
                 "route": [{"path": "/", "upstream": "app"}]}
        proxy = {"listen": [f"{HOST}:{port}"], "server_names": [NAME], "certificate": [ec_cert],
                 "route": [{"path": "/", "upstream": "app"}], "accept_proxy": True,
                 "proxy_trusted": list(trusted)}
        ft = fastterm(be.address, servers=[plain, proxy], top={"admin": f"{HOST}:{admin}"} if admin else None)
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
    admin = free_port()
    ft, port = proxied(trusted=["192.0.2.0/24"], admin=admin)
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(b"PROXY TCP4 192.0.2.9 127.0.0.1 1 443\r\n")
    assert closed_unheard(sock)
    assert be.requests == []
    assert "is not in proxy_trusted" in ft.log()
    assert wait_for(lambda: metrics(admin, "fastterm_proxy_headers_total").get('fastterm_proxy_headers_total{result="rejected_untrusted"}') == 1)


def test_metrics_count_accepted_and_malformed(proxied, be):
    admin = free_port()
    ft, port = proxied(admin=admin)
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")
    assert tls_request(ft, sock).startswith("HTTP/1.1 200")
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert closed_unheard(sock)
    want = {'fastterm_proxy_headers_total{result="accepted"}': 1,
            'fastterm_proxy_headers_total{result="rejected_malformed"}': 1,
            'fastterm_proxy_headers_total{result="rejected_untrusted"}': 0}
    assert wait_for(lambda: metrics(admin, "fastterm_proxy_headers_total") == want), metrics(admin, "fastterm_proxy_headers_total")


def test_silent_client_is_closed_after_the_header_timeout(proxied):
    _, port = proxied()
    sock = socket.create_connection((HOST, port), timeout=8)
    start = time.monotonic()
    assert closed_unheard(sock)
    assert 1.0 < time.monotonic() - start < 7


# ---- send_proxy: the backend hears a PROXY header first -------------------------------

def send_proxy_ft(fastterm, be, version: str):
    return fastterm(upstreams=[{"name": "app", "servers": [be.address], "send_proxy": version}])


def get(tls, target: str = "/") -> str:
    tls.sendall(f"GET {target} HTTP/1.1\r\nHost: {NAME}\r\n\r\n".encode())
    return read_message(Reader(tls, bytearray())).start_line


def test_send_proxy_v1_exact_bytes_one_backend_connection_per_request(fastterm, be):
    ft = send_proxy_ft(fastterm, be, "v1")
    clients = [ft.connect(), ft.connect()]
    for tls in clients:
        assert get(tls, "/a").startswith("HTTP/1.1 200")
        assert get(tls, "/b").startswith("HTTP/1.1 200")
    assert be.accepts == 4   # a connection with a PROXY header never serves another request
    records = [bytes(r) for r in be.records]
    for i, tls in enumerate(clients):
        host, port = tls.getsockname()
        header = f"PROXY TCP4 {host} {HOST} {port} {ft.https_port}\r\n".encode()
        for k, target in ((0, "/a"), (1, "/b")):
            assert records[2 * i + k].startswith(header + f"GET {target} HTTP/1.1\r\n".encode())
        tls.close()


def proxy_v2_handler(conn) -> None:
    """Takes the v2 header (16 bytes, then its length), then answers as keepalive_handler."""
    head = conn.reader.read_exact(16)
    conn.reader.read_exact(struct.unpack("!H", head[14:16])[0])
    keepalive_handler(conn)


def test_send_proxy_v2_tlvs_name_the_client_tls(fastterm, raw_backend):
    be = raw_backend(proxy_v2_handler)
    ft = send_proxy_ft(fastterm, be, "v2")
    tls = ft.connect()
    assert get(tls).startswith("HTTP/1.1 200")
    record = bytes(be.records[0])
    got = parse_proxy_header(record)
    host, port = tls.getsockname()
    assert (got["command"], got["src"], got["src_port"], got["dst"], got["dst_port"]) == \
        ("PROXY", host, port, HOST, ft.https_port)
    tlvs = dict(got["tlvs"])
    assert tlvs[0x01] == b"http/1.1"
    assert tlvs[0x02] == NAME.encode()
    client, verify, sub = tlvs[0x20]
    assert (client, verify) == (0x01, 0)   # PP2_CLIENT_SSL, no certificate
    assert dict(sub) == {0x21: tls.version().encode(), 0x23: tls.cipher()[0].encode()}
    assert record[got["length"]:].startswith(b"GET / HTTP/1.1\r\n")
    tls.close()


def test_accept_proxy_then_send_proxy_forwards_the_header_source(fastterm, be, ec_cert):
    port = free_port()
    plain = {"server_names": ["other.test"], "default_server": True, "certificate": [ec_cert],
             "route": [{"path": "/", "upstream": "app"}]}
    proxy = {"listen": [f"{HOST}:{port}"], "server_names": [NAME], "certificate": [ec_cert],
             "route": [{"path": "/", "upstream": "app"}], "accept_proxy": True, "proxy_trusted": ["127.0.0.1/32"]}
    ft = fastterm(servers=[plain, proxy], upstreams=[{"name": "app", "servers": [be.address], "send_proxy": "v1"}])
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")
    assert tls_request(ft, sock).startswith("HTTP/1.1 200")
    assert bytes(be.records[0]).startswith(f"PROXY TCP4 192.0.2.7 {HOST} 40000 {port}\r\nGET /pp ".encode())


class ProxyTLSBackend(RawBackend):
    """A backend that takes the PROXY v1 line off the raw socket, then does TLS on it: the
    header must come in the clear, before the ClientHello (HAProxy send-proxy + ssl)."""

    def __init__(self, ctx: ssl.SSLContext):
        self.ctx = ctx
        self.headers: list[bytes] = []
        super().__init__(keepalive_handler)

    def _serve(self, sock, record) -> None:
        line = b""
        while not line.endswith(b"\r\n") and len(line) < 107:   # a byte at a time: the ClientHello stays
            line += sock.recv(1) or b"\r\n"
        with self.lock:
            self.headers.append(line)
        try:
            tls = self.ctx.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError):
            sock.close()
            return
        with self.lock:
            self.conns = [tls if c is sock else c for c in self.conns]
        super()._serve(tls, record)


def test_send_proxy_over_a_tls_backend_comes_before_the_client_hello(fastterm, ec_cert):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ec_cert["cert"], ec_cert["key"])
    be = ProxyTLSBackend(ctx)
    try:
        ft = fastterm(upstreams=[{"name": "app", "servers": [f"https://{HOST}:{be.port}"], "send_proxy": "v1",
                                  "tls": {"verify": "none"}}])
        tls = ft.connect()
        assert get(tls, "/tls").startswith("HTTP/1.1 200")
        host, port = tls.getsockname()
        assert be.headers == [f"PROXY TCP4 {host} {HOST} {port} {ft.https_port}\r\n".encode()]
        assert bytes(be.records[0]).startswith(b"GET /tls HTTP/1.1\r\n")   # the plaintext, after TLS
        tls.close()
    finally:
        be.close()


def test_send_proxy_v2_from_an_http2_client(fastterm, raw_backend):
    """An HTTP/2 client's streams each reach the backend on a connection whose v2 header names
    that client and ALPN h2."""
    import httpx

    be = raw_backend(proxy_v2_handler)
    ft = send_proxy_ft(fastterm, be, "v2")
    with httpx.Client(http2=True, verify=ft.client_context(alpn=None), timeout=10,
                      headers={"host": NAME}) as client:
        for target in ("/a", "/b"):
            r = client.get(f"https://{HOST}:{ft.https_port}{target}", extensions={"sni_hostname": NAME})
            assert (r.http_version, r.status_code) == ("HTTP/2", 200)
    assert be.accepts == 2
    for record in be.records:
        got = parse_proxy_header(bytes(record))
        assert (got["command"], got["src"], got["dst_port"]) == ("PROXY", HOST, ft.https_port)
        assert dict(got["tlvs"])[0x01] == b"h2"


NGINX_PROXY_PROTOCOL = """
events {{}}
http {{
    upstream app {{ server {backend}; }}
    server {{
        listen {host}:{https} ssl;
        server_name www.example.com;
        ssl_certificate certs/www.crt; ssl_certificate_key certs/www.key;
        location / {{ proxy_pass http://app; }}
    }}
    server {{
        listen {host}:{http} ssl proxy_protocol;
        server_name www.example.com;
        ssl_certificate certs/www.crt; ssl_certificate_key certs/www.key;
        set_real_ip_from 127.0.0.0/8;
        real_ip_header proxy_protocol;
        location / {{
            proxy_pass http://app;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def test_nginx_listen_proxy_protocol_with_realip(nginx_mode, be):  # noqa: F811
    """nginx's ``listen ... ssl proxy_protocol`` + ``set_real_ip_from`` + ``real_ip_header
    proxy_protocol``: $remote_addr is the header's source."""
    ft = nginx_mode(NGINX_PROXY_PROTOCOL, backend=be.address)
    sock = socket.create_connection((HOST, ft.http_port), timeout=5)
    sock.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 443\r\n")
    tls = ft.client_context().wrap_socket(sock, server_hostname="www.example.com")
    tls.sendall(b"GET /nginx-pp HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
    assert read_message(Reader(tls, bytearray())).start_line.startswith("HTTP/1.1 200")
    tls.close()
    head = be.received().lower()
    assert b"x-real-ip: 203.0.113.9" in head and b"x-forwarded-for: 203.0.113.9" in head


def test_nginx_listen_proxy_protocol_without_realip_is_refused(cli, write, certs):  # noqa: F811
    """Without set_real_ip_from + real_ip_header proxy_protocol (whose peers fastterm trusts), check
    names what is missing."""
    conf = write("pp.conf", "events {}\nhttp { server { listen 127.0.0.1:8443 ssl proxy_protocol; "
                 "ssl_certificate certs/www.crt; ssl_certificate_key certs/www.key; "
                 "location / { proxy_pass http://127.0.0.1:1; } } }\n")
    out = cli("check", "--nginx", str(conf))
    assert out.returncode == 1
    assert "proxy_protocol" in out.stderr and "set_real_ip_from" in out.stderr, out.stderr
