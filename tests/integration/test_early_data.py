"""TLS 1.3 0-RTT early data (``[server.tls] early_data``): accepted once, Early-Data: 1 to the
backend, unsafe methods held until the handshake completes (RFC 8470), replays refused by the
shared replay table (RFC 8446 §8), and only on tickets this node issued.

The client is ``openssl s_client``: ``-sess_out`` after a full handshake, then ``-sess_in ...
-early_data FILE`` sends FILE as early data and reports what the server did with it. A replay
is made with a recording TCP relay on loopback: it captures every byte the client sent on a
0-RTT connection and sends them again, as they were, on a new connection.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest
from harness import HOST, NAME, free_port, response_bytes, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl s_client")

EARLY = {"early_data": True}
ACCEPTED = "Early data was accepted"
REJECTED = "Early data was rejected"


def _request(method: str = "GET", target: str = "/", body: bytes = b"") -> bytes:
    head = f"{method} {target} HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def s_client(port: int, ca_file: str, *, sess_out: str | None = None, sess_in: str | None = None,
             early: str | None = None, request: bytes = b"", alpn: str = "http/1.1",
             timeout: float = 10.0) -> str:
    """One s_client run (TLS 1.3, SNI www.example.com); its stdout and stderr together."""
    cmd = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", NAME, "-CAfile", ca_file,
           "-tls1_3", "-alpn", alpn, "-ign_eof"]
    if sess_out:
        cmd += ["-sess_out", sess_out]
    if sess_in:
        cmd += ["-sess_in", sess_in]
    if early:
        cmd += ["-early_data", early]
    r = subprocess.run(cmd, input=request, capture_output=True, timeout=timeout, check=False)
    return (r.stdout + r.stderr).decode("latin-1")


def new_session(port: int, ca_file: str, path: str) -> None:
    """A full handshake and one request, the ticket saved in ``path``."""
    out = s_client(port, ca_file, sess_out=path, request=_request())
    assert "HTTP/1.1 200" in out, out[-3000:]


class Relay:
    """A TCP relay on loopback to ``port`` that records what the client sends (one connection)."""

    def __init__(self, port: int):
        self.target = port
        self.sock = socket.create_server((HOST, 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.sent = bytearray()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            client, _ = self.sock.accept()
        except OSError:
            return
        server = socket.create_connection((HOST, self.target), timeout=10)

        def pump(src, dst, record):
            try:
                while data := src.recv(65536):
                    if record is not None:
                        record += data
                    dst.sendall(data)
            except OSError:
                pass
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        back = threading.Thread(target=pump, args=(server, client, None), daemon=True)
        back.start()
        pump(client, server, self.sent)
        back.join(10)
        client.close()
        server.close()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(10)


def replay(port: int, flight: bytes, timeout: float = 5.0) -> bytes:
    """Send a recorded client flight, as it was, on a new connection; what came back."""
    got = bytearray()
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(flight)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and (data := sock.recv(65536)):
                got += data
        except OSError:
            pass
    return bytes(got)


def counting_backend(raw_backend):
    """A backend answering 200 with the Early-Data field it saw, keeping every request."""
    def handler(conn):
        while (req := conn.read_request()) is not None:
            early = req.header("early-data") or "-"
            conn.send(response_bytes(200, f"early={early} {req.method} {req.target}".encode(),
                                     headers=[("Connection", "close")]))
            return
    return raw_backend(handler)


def _metrics(admin_port: int) -> dict[str, int]:
    with socket.create_connection((HOST, admin_port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    out = {}
    for line in data.partition(b"\r\n\r\n")[2].decode().splitlines():
        if line.startswith("fastterm_early_data"):
            name, value = line.rsplit(" ", 1)
            out[name] = int(value)
    return out


def test_early_data_accepted_and_marked(fastterm, raw_backend, tmp_path, write):
    be = counting_backend(raw_backend)
    admin = free_port()
    ft = fastterm(be.address, tls=EARLY, top={"admin": f"{HOST}:{admin}"})
    sess = str(tmp_path / "sess.pem")
    new_session(ft.https_port, ft.ca_file, sess)
    early = write("early.txt", _request(target="/early").decode())
    out = s_client(ft.https_port, ft.ca_file, sess_in=sess, early=early)
    assert ACCEPTED in out, out[-3000:]
    assert "HTTP/1.1 200" in out and "early=1 GET /early" in out, out[-3000:]
    assert [r.target for r in be.requests] == ["/", "/early"]
    assert be.requests[1].header("early-data") == "1"
    m = _metrics(admin)
    assert m["fastterm_early_data_total{result=\"offered\"}"] == 1
    assert m["fastterm_early_data_total{result=\"accepted\"}"] == 1
