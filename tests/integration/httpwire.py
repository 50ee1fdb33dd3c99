"""Wire-level HTTP/1.1 helpers for integration tests: read exactly what a peer sent.

http.client hides framing (it folds 100 Continue away, tolerates bad framing); these
helpers show every byte, so tests can assert what fastterm put on the wire. Every read
is bounded by the socket timeout.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

MAX_HEAD = 256 * 1024


class Reader:
    """Buffered reads off a (TLS or plain) socket; raises EOFError when the peer closed."""

    def __init__(self, sock: socket.socket, record: bytearray | None = None):
        self.sock = sock
        self.buf = bytearray()
        self.record = record  # every byte received is appended here when given
        self.eof = False

    def _fill(self) -> None:
        if self.eof:
            raise EOFError("peer closed the connection")
        try:
            data = self.sock.recv(262144)
        except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            raise EOFError("peer closed the connection")
        if self.record is not None:
            self.record += data
        self.buf += data

    def read_until(self, sep: bytes, limit: int = MAX_HEAD) -> bytes:
        start = 0
        while True:
            i = self.buf.find(sep, start)
            if i >= 0:
                out = bytes(self.buf[: i + len(sep)])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ValueError(f"no {sep!r} within {limit} bytes")
            start = max(0, len(self.buf) - len(sep) + 1)
            self._fill()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def discard_exact(self, n: int, hasher=None) -> None:
        """Consume ``n`` bytes without keeping them (large bodies), optionally hashing them."""
        while n > 0:
            if not self.buf:
                self._fill()
            k = min(n, len(self.buf))
            if hasher is not None:
                hasher.update(memoryview(self.buf)[:k])
            del self.buf[:k]
            n -= k

    def read_to_eof(self) -> bytes:
        try:
            while True:
                self._fill()
        except EOFError:
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out


@dataclass
class Message:
    """A request or a response as read off the wire."""

    start_line: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw_head: bytes = b""
    chunked: bool = False
    close_delimited: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)

    # response
    @property
    def status(self) -> int:
        return int(self.start_line.split(" ", 2)[1])

    @property
    def version(self) -> str:
        return self.start_line.split(" ", 1)[0] if self.start_line.startswith("HTTP/") \
            else self.start_line.rsplit(" ", 1)[1]

    # request
    @property
    def method(self) -> str:
        return self.start_line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        return self.start_line.split(" ", 2)[1]

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for n, v in self.headers if n.lower() == name]

    def has(self, name: str) -> bool:
        return bool(self.all(name))


def parse_head(raw: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = raw.decode("latin-1").split("\r\n")
    start = lines[0]
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip(" \t")))
    return start, headers


def read_chunked(reader: Reader, hasher=None, keep: bool = True) -> tuple[bytes, list[tuple[str, str]]]:
    body = bytearray()
    while True:
        line = reader.read_until(b"\r\n", limit=4096)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            break
        if keep:
            body += reader.read_exact(size)
        else:
            reader.discard_exact(size, hasher)
        assert reader.read_exact(2) == b"\r\n", "chunk not followed by CRLF"
    trailers = []
    while True:
        line = reader.read_until(b"\r\n", limit=MAX_HEAD)
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        trailers.append((name, value.strip()))
    return bytes(body), trailers


def read_message(reader: Reader, *, request: bool = False, method: str = "GET",
                 keep_body: bool = True, hasher=None) -> Message:
    """One message. Responses: 1xx, 204, 304 and HEAD have no body; no framing -> to EOF."""
    raw = reader.read_until(b"\r\n\r\n")
    start, headers = parse_head(raw[:-4])
    msg = Message(start, headers, raw_head=raw)
    te = ",".join(msg.all("transfer-encoding")).lower()
    if not request:
        status = msg.status
        if 100 <= status < 200 or status in (204, 304) or method == "HEAD":
            return msg
    if "chunked" in te:
        msg.chunked = True
        msg.body, msg.trailers = read_chunked(reader, hasher, keep_body)
    elif msg.has("content-length"):
        n = int(msg.header("content-length"))
        if keep_body:
            msg.body = reader.read_exact(n)
        else:
            reader.discard_exact(n, hasher)
    elif not request:
        msg.close_delimited = True
        if keep_body:
            msg.body = reader.read_to_eof()
        else:
            try:
                while True:
                    reader.discard_exact(max(1, len(reader.buf)), hasher)
            except EOFError:
                pass
    return msg


def read_response(reader: Reader, method: str = "GET", *, skip_1xx: bool = True, **kw) -> Message:
    while True:
        msg = read_message(reader, method=method, **kw)
        if not (skip_1xx and 100 <= msg.status < 200):
            return msg


def closed_by_peer(sock: socket.socket, reader: Reader | None = None, timeout: float = 5.0) -> bool:
    """True when the peer closes within ``timeout`` (any bytes before the close are discarded)."""
    deadline = time.monotonic() + timeout
    old = sock.gettimeout()
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, ssl.SSLEOFError, BrokenPipeError):
                return True
            except ssl.SSLError:
                return True
            except TimeoutError:
                return False
            if not data:
                return True
        return False
    finally:
        try:
            sock.settimeout(old)
        except OSError:
            pass


def request_bytes(method: str, target: str, host: str | None = "www.example.com",
                  headers: list[tuple[str, str]] | None = None, body: bytes = b"",
                  version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
