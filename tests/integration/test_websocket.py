"""WebSocket (and any HTTP/1.1 Upgrade) through fastterm: a real ``websockets`` server as
the backend, a real ``websockets`` client over wss:// with the test CA; raw sockets where the
bytes on the wire are the assertion (pipelined bytes after the upgrade, a 101 nobody asked for,
a tunnel peer that never reads)."""

from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
import test_nginx_mode
from harness import HOST, NAME, free_port, metrics_text, response_bytes, wait_for, within_rss_bound
from httpwire import Reader, read_response, request_bytes
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

MIB = 1024 * 1024
certs, nginx_mode = test_nginx_mode.certs, test_nginx_mode.nginx_mode   # its fixtures, reused
UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"),
           ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]


@pytest.fixture
def ws_backend():
    """Factory: ``ws_backend(handler) -> "127.0.0.1:PORT"``, a websockets server in a thread."""
    servers = []

    def make(handler):
        server = ws_serve(handler, HOST, 0, max_size=4 * MIB)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"{HOST}:{server.socket.getsockname()[1]}"

    yield make
    for server in servers:
        server.shutdown()


def echo(ws):
    for message in ws:
        ws.send(message)


def ws_client(ft, path: str = "/", **kwargs):
    ctx = ft.client_context()
    return ws_connect(f"wss://{HOST}:{ft.https_port}{path}", ssl=ctx, server_hostname=NAME,
                      max_size=4 * MIB, open_timeout=5, close_timeout=5, **kwargs)



def test_echo_text_binary_large_and_many(fastterm, ws_backend):
    admin_port = free_port()
    ft = fastterm(ws_backend(echo), admin=f"{HOST}:{admin_port}")
    with ws_client(ft) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xff"
        big = bytes(range(256)) * (4 * 1024)   # 1 MiB
        ws.send(big)
        assert ws.recv(timeout=10) == big
        for i in range(300):
            ws.send(f"m{i}")
        assert [ws.recv(timeout=5) for _ in range(300)] == [f"m{i}" for i in range(300)]
        ws.close()
        assert ws.close_code == 1000
    assert wait_for(lambda: "fastterm_upgrades_total 1" in metrics_text(admin_port))


def test_server_initiated_close(fastterm, ws_backend):
    def closer(ws):
        ws.send("bye")
        ws.close(4001, "done")

    ft = fastterm(ws_backend(closer))
    with ws_client(ft) as ws:
        assert ws.recv(timeout=5) == "bye"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 4001 and ws.close_reason == "done"


def test_plain_request_on_the_same_route_is_pooled(fastterm, raw_backend):
    be = raw_backend()
    ft = fastterm(be.address)
    with ft.connect() as sock:
        reader = Reader(sock)
        for _ in range(3):
            sock.sendall(request_bytes("GET", "/plain", NAME))
            assert read_response(reader, "GET").status == 200
    assert be.accepts == 1
    assert b"upgrade" not in be.received().lower()


def test_unrequested_101_is_502(fastterm, raw_backend):
    def switcher(conn):
        if conn.read_request() is not None:
            conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            conn.backend.stopping.wait(3)

    ft = fastterm(raw_backend(switcher).address)
    assert ft.request("GET", "/").status == 502


def test_backend_400_to_an_upgrade_passes_through(fastterm, raw_backend):
    def refuser(conn):
        while conn.read_request() is not None:
            conn.send(response_bytes(400, b"no upgrade here", reason="Bad Request"))

    be = raw_backend(refuser)
    ft = fastterm(be.address)
    with pytest.raises(InvalidStatus) as info:
        ws_client(ft)
    assert info.value.response.status_code == 400
    assert b"upgrade: websocket" in be.received().lower()


def _switch_and_echo(conn):
    """Answer the upgrade with 101 and a first byte string in the same write, then echo."""
    if conn.read_request() is None:
        return
    conn.send(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-raw\r\nConnection: Upgrade\r\n\r\nHELLO")
    while True:
        data = conn.sock.recv(65536)
        if not data:
            return
        conn.record += data
        conn.sock.sendall(data)


def _upgrade_socket(ft, extra: bytes = b"", rcvbuf: int | None = None) -> ssl.SSLSocket:
    raw = socket.socket()
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(5)
    raw.connect((HOST, ft.https_port))
    sock = ft.client_context().wrap_socket(raw, server_hostname=NAME)
    sock.sendall(request_bytes("GET", "/raw", NAME, [("Connection", "upgrade"), ("Upgrade", "x-raw")]) + extra)
    return sock


def _read_until(sock, marker: bytes, limit: int = 1 << 20) -> bytes:
    got = b""
    while marker not in got and len(got) < limit:
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


def test_bytes_after_the_upgrade_head_reach_the_backend_after_101(fastterm, raw_backend):
    be = raw_backend(_switch_and_echo)
    ft = fastterm(be.address)
    with _upgrade_socket(ft, b"PIPELINED-BYTES") as sock:
        got = _read_until(sock, b"PIPELINED-BYTES")
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: x-raw" in head.lower() and b"connection: upgrade" in head.lower()
        assert rest == b"HELLOPIPELINED-BYTES"   # the backend's first bytes, then the echo
        received = be.received()
        assert received.index(b"\r\n\r\n") + 4 == received.index(b"PIPELINED-BYTES")
        assert b"upgrade: x-raw" in received.lower() and b"connection: upgrade" in received.lower()
        # the tunnel goes on both ways after the pipelined bytes
        sock.sendall(b"more")
        assert _read_until(sock, b"more").endswith(b"more")


def test_tunnel_peer_that_never_reads_keeps_rss_bounded(fastterm, raw_backend):
    be = raw_backend(_switch_and_echo)
    ft = fastterm(be.address, limits={"send_timeout": 5})
    with _upgrade_socket(ft, rcvbuf=4096) as sock:
        assert _read_until(sock, b"HELLO").endswith(b"HELLO")
        before = ft.rss_kib()
        chunk = b"x" * 65536
        sent = 0
        sock.settimeout(1)
        try:
            while sent < 256 * MIB:
                sock.sendall(chunk)
                sent += len(chunk)
        except (TimeoutError, ssl.SSLError, OSError):
            pass
        assert sent < 256 * MIB   # the tunnel pushed back on the client
        assert within_rss_bound(ft.rss_kib() - before, 16 * 1024)


def test_idle_tunnel_closes_after_read_timeout(fastterm, raw_backend):
    be = raw_backend(_switch_and_echo)
    ft = fastterm(be.address, limits={"backend_read_timeout": 1})
    with _upgrade_socket(ft) as sock:
        assert _read_until(sock, b"HELLO").endswith(b"HELLO")
        start = time.monotonic()
        sock.settimeout(10)
        try:
            while sock.recv(4096):
                pass
        except (ssl.SSLError, OSError):
            pass
        assert time.monotonic() - start < 8
    assert wait_for(lambda: be.accepts == 1)


NGINX_WS = """\
map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
upstream app {{ server {backend}; }}
server {{
    listen {host}:{https} ssl;
    server_name www.example.com;
    ssl_certificate certs/www.crt;
    ssl_certificate_key certs/www.key;
    location /ws/ {{
        proxy_pass http://app;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection "upgrade";
        proxy_set_header Host $host;
    }}
    location /mapped/ {{
        proxy_pass http://app;
        proxy_http_version 1.1;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
    }}
    location / {{
        proxy_pass http://app;
    }}
}}
"""


def test_nginx_websocket_locations(nginx_mode, ws_backend):
    """nginx's WebSocket proxying: tunnelled only where the config passes Upgrade (both the
    literal Connection and the map form); elsewhere Upgrade is not forwarded, as nginx."""
    ft = nginx_mode(NGINX_WS, backend=ws_backend(echo))
    for path in ("/ws/chat", "/mapped/chat"):
        with ws_connect(f"wss://{HOST}:{ft.https_port}{path}", ssl=ft.client_context(),
                        server_hostname="www.example.com", open_timeout=5) as ws:
            ws.send("over nginx " + path)
            assert ws.recv(timeout=5) == "over nginx " + path
    with pytest.raises(InvalidStatus):
        ws_connect(f"wss://{HOST}:{ft.https_port}/plain", ssl=ft.client_context(),
                   server_hostname="www.example.com", open_timeout=5)


def test_nginx_mapped_connection_is_close_without_upgrade(nginx_mode, raw_backend):
    be = raw_backend()
    ft = nginx_mode(NGINX_WS, backend=be.address)
    with ft.connect(server_hostname="www.example.com") as sock:
        sock.sendall(request_bytes("GET", "/mapped/x", "www.example.com"))
        assert read_response(Reader(sock)).status == 200
    head = be.received().lower()
    assert b"connection: close" in head and b"upgrade" not in head
