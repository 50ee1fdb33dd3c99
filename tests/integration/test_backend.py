"""The demo backend as users run it: a real process on loopback, real sockets."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """``python -m fastterm.backend --port 0``; yields (host, port) read from its banner."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "fastterm.backend", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    try:
        banner = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in banner, banner
        yield "127.0.0.1", int(banner.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def request(backend, method: str, path: str, body=None, headers=None,
            **kw) -> tuple[http.client.HTTPResponse, bytes]:
    conn = http.client.HTTPConnection(*backend, timeout=10)
    conn.request(method, path, body=body, headers=headers or {}, **kw)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[bytes, bytes]:
    """One Content-Length response off a raw socket: (head, body); leftovers stay in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response head"
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    buffer[:] = rest
    while len(buffer) < length:
        buffer += sock.recv(65536)
    body = bytes(buffer[:length])
    del buffer[:length]
    return head, body


def test_echo(backend):
    response, data = request(backend, "GET", "/some/path?q=1", headers={"X-Forwarded-Proto": "https"})
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    echo = json.loads(data)
    assert echo["method"] == "GET"
    assert echo["path"] == "/some/path?q=1"
    assert echo["version"] == "1.1"
    assert ["X-Forwarded-Proto", "https"] in echo["headers"]
    assert echo["body_length"] == 0


def test_content_length_body(backend):
    body = bytes(range(256)) * 1000
    _, data = request(backend, "POST", "/upload", body=body)
    echo = json.loads(data)
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body(backend):
    pieces = [b"a" * 10, b"b" * 70000, b"", b"c"]
    _, data = request(backend, "POST", "/chunked-upload", body=iter(pieces), encode_chunked=True,
                      headers={"Transfer-Encoding": "chunked"})
    echo = json.loads(data)
    expected = b"".join(pieces)
    assert ["Transfer-Encoding", "chunked"] in echo["headers"]
    assert echo["body_length"] == len(expected)
    assert echo["body_sha256"] == hashlib.sha256(expected).hexdigest()


def test_keep_alive_two_requests_on_one_socket(backend):
    with socket.create_connection(backend, timeout=10) as sock:
        buffer = bytearray()
        sock.sendall(b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        head, body = read_response(sock, buffer)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(body)["path"] == "/first"
        sock.sendall(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_response(sock, buffer)
        assert json.loads(body)["path"] == "/second"


def test_pipelined_requests_answer_in_order(backend):
    with socket.create_connection(backend, timeout=10) as sock:
        sock.sendall(b"GET /delay/0.1 HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        buffer = bytearray()
        _, first = read_response(sock, buffer)
        _, second = read_response(sock, buffer)
    assert json.loads(first)["path"] == "/delay/0.1"
    assert second == b"xxx"


def test_bytes_and_chunked_responses(backend):
    response, data = request(backend, "GET", "/bytes/3000000")
    assert response.getheader("Content-Length") == "3000000" and data == b"x" * 3000000
    response, data = request(backend, "GET", "/chunked/40000")
    assert response.getheader("Transfer-Encoding") == "chunked" and data == b"x" * 40000


@pytest.mark.parametrize("status", [204, 304, 404, 503])
def test_status(backend, status):
    response, data = request(backend, "GET", f"/status/{status}")
    assert response.status == status and data == b""


def test_malformed_request_gets_400_and_close(backend):
    with socket.create_connection(backend, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in data


def test_oversized_header_block_is_refused(backend):
    with socket.create_connection(backend, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 431 ")


def test_upgrade_is_ignored_and_the_connection_closes_after_the_response(backend):
    with socket.create_connection(backend, timeout=10) as sock:
        sock.sendall(b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                     b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["path"] == "/up"
