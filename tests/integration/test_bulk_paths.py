"""The bulk paths: records the worker gathers from one read (many small TLS records, a
pipelined request and close_notify in one segment), and request bodies written straight
into the backend's socket with the transport taking over what the socket does not take."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time

import pytest
from harness import HOST, NAME, echo_json, response_bytes
from httpwire import Reader, read_response, request_bytes

MIB = 1024 * 1024


class MemoryTLS:
    """A Python ssl client on memory BIOs: each ``write`` is one TLS record, and ``flush``
    sends every record made so far in one ``sendall`` (the server reads them together)."""

    def __init__(self, ft, timeout: float = 10.0):
        self.sock = socket.create_connection((HOST, ft.https_port), timeout=timeout)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ft.client_context().wrap_bio(self.incoming, self.outgoing, server_hostname=NAME)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self._pull()
        self.flush()

    def _pull(self) -> bool:
        data = self.sock.recv(262144)
        if not data:
            self.incoming.write_eof()
            return False
        self.incoming.write(data)
        return True

    def write(self, data: bytes) -> None:
        self.tls.write(data)

    def close_notify(self) -> None:
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass   # the server's close_notify comes later

    def flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        """Plaintext for httpwire's Reader; b"" at the server's close_notify or EOF."""
        while True:
            try:
                return self.tls.read(n)
            except ssl.SSLWantReadError:
                if not self._pull():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ft(fastterm, demo_backend):
    return fastterm(demo_backend)


def test_body_in_many_small_records_read_together_arrives_whole(ft):
    """Thousands of records of 1 to 997 bytes in one segment: the worker gathers them from
    its reads into larger writes, and the backend sees the body byte for byte."""
    body = os.urandom(MIB + 5)
    c = MemoryTLS(ft)
    try:
        c.write(request_bytes("POST", "/upload", headers=[("Content-Length", str(len(body)))]))
        i, k = 0, 0
        while i < len(body):
            n = 1 + (k * 37) % 997
            c.write(body[i:i + n])
            i += n
            k += 1
        c.flush()
        echo = echo_json(read_response(Reader(c)))
    finally:
        c.close()
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_pipelined_requests_and_close_notify_in_one_segment_are_all_answered(ft):
    """Two requests, a body, then close_notify, all in one write: the client's EOF, read
    together with the requests, waits until both responses are out (then close_notify)."""
    body = os.urandom(100_000)
    c = MemoryTLS(ft)
    try:
        c.write(request_bytes("POST", "/first", headers=[("Content-Length", str(len(body)))]))
        c.write(body)
        c.write(request_bytes("GET", "/second"))
        c.close_notify()
        c.flush()
        rd = Reader(c)
        first = echo_json(read_response(rd))
        second = echo_json(read_response(rd))
        with pytest.raises(EOFError):
            read_response(rd)
    finally:
        c.close()
    assert first["path"] == "/first" and first["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert second["path"] == "/second"


def test_upload_to_a_backend_that_reads_slowly_arrives_whole_and_in_order(fastterm, raw_backend):
    """The socket to the backend fills: what send() does not take goes through the
    transport (buffered, the client paused), after what it took and before what follows."""
    body = os.urandom(8 * MIB + 3)
    got = {}

    def slow_reader(conn):
        head = conn.reader.read_until(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        h, n = hashlib.sha256(), 0
        time.sleep(0.5)   # the worker's writes back up meanwhile: 8 MiB do not fit in the sockets
        while n < length:
            if conn.reader.buf:
                chunk = bytes(conn.reader.buf[:length - n])
                del conn.reader.buf[:len(chunk)]
            else:
                chunk = conn.sock.recv(min(32768, length - n))
                if not chunk:
                    break
            h.update(chunk)
            n += len(chunk)
        got["length"], got["sha256"] = n, h.hexdigest()
        conn.send(response_bytes(200, b"stored"))

    backend = raw_backend(slow_reader)
    ft = fastterm(backend.address)
    with ft.connect(timeout=30) as s:
        s.sendall(request_bytes("POST", "/upload", headers=[("Content-Length", str(len(body)))]) + body)
        r = read_response(Reader(s))
    assert r.status == 200 and r.body == b"stored"
    assert got == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert "Traceback" not in ft.log()
