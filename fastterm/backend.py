"""The demo backend: an HTTP/1.1 echo server that shows what fastterm forwarded.

Every path answers with the request as JSON (method, target, headers, body length and
SHA-256), so a user sees ``X-Forwarded-Proto`` and friends, and tests can check bodies
arrived intact. A few paths shape responses for proxy tests:

- ``/bytes/N``: N bytes with ``Content-Length``;
- ``/chunked/N``: N bytes as 16 KiB chunks (``Content-Length`` for HTTP/1.0 clients, RFC 9112 7);
- ``/status/NNN``: an empty response with that status;
- ``/delay/S``: the echo after S seconds.

Requests on one connection are answered in order (pipelining included); large bodies
respect transport flow control, so a slow reader never makes the server buffer them.

Run: ``python -m fastterm.backend --port 8081 [--host 127.0.0.1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import signal
import sys
from http import HTTPStatus

import httptools

MAX_HEADER_BYTES = 64 * 1024
MAX_DELAY = 300.0
CHUNK_SIZE = 16 * 1024
# Bodies up to this size are written in one call; larger ones wait on flow control.
DIRECT_WRITE_LIMIT = 1024 * 1024
_FILL = b"x" * DIRECT_WRITE_LIMIT
_CHUNK = b"%x\r\n" % CHUNK_SIZE + _FILL[:CHUNK_SIZE] + b"\r\n"
_NO_BODY_STATUS = frozenset((204, 304))
_SERVER = b"fastterm-demo-backend"


class _HeaderTooLarge(Exception):
    pass


class Request:
    __slots__ = (
        "body_hash",
        "body_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(self) -> None:
        self.method = b""
        self.target = bytearray()
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body_length = 0
        self.body_hash = hashlib.sha256()
        self.keep_alive = True
        self.expect_continue = False

    def echo(self) -> bytes:
        return json.dumps({
            "method": self.method.decode("latin-1"),
            "path": self.target.decode("latin-1"),
            "version": self.version,
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
            "body_length": self.body_length,
            "body_sha256": self.body_hash.hexdigest(),
        }).encode() + b"\n"


def _head(status: int, version: str, keep_alive: bool, fields: list[tuple[bytes, bytes]]) -> bytes:
    reason = HTTPStatus(status).phrase.encode() if status in HTTPStatus._value2member_map_ else b""
    lines = [b"HTTP/1.1 %d %s" % (status, reason), b"Server: " + _SERVER]
    lines += [name + b": " + value for name, value in fields]
    if not keep_alive:
        lines.append(b"Connection: close")
    elif version == "1.0":
        lines.append(b"Connection: keep-alive")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class BackendProtocol(asyncio.Protocol):
    """One client connection: httptools frames requests, responses go out in request order."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._request: Request | None = None
        self._in_headers = False
        self._header_bytes = 0
        self._queue: collections.deque[Request] = collections.deque()
        self._busy = False
        self._error_status = 0
        self._stop_after_queue = False
        self._closing = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future | None = None
        self._task: asyncio.Task | None = None

    # Connection flow

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._queue.clear()
        self._wake_writer(ConnectionResetError("client closed the connection"))

    def pause_writing(self) -> None:
        # Stop reading too: pipelined requests would otherwise pile up responses in memory.
        self._write_paused = True
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._transport.resume_reading()
        self._wake_writer(None)

    def _wake_writer(self, exc: Exception | None) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    async def _drain(self) -> None:
        if self._closing:
            raise ConnectionResetError("connection closed")
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    def data_received(self, data: bytes) -> None:
        if self._closing or self._error_status or self._stop_after_queue:
            return
        try:
            self._parser.feed_data(data)
        except _HeaderTooLarge:
            self._fail(431)
            return
        except httptools.HttpParserUpgrade:
            # Upgrade ignored (RFC 9110 7.8): answer the request, then close, since
            # the parser cannot frame what follows an upgrade request.
            self._stop_after_queue = True
            self._transport.pause_reading()
            if not self._busy:
                self._process()
            return
        except httptools.HttpParserError as exc:
            too_large = isinstance(exc.__cause__ or exc.__context__, _HeaderTooLarge)
            self._fail(431 if too_large else 400)
            return
        if self._in_headers:
            # A header line still incomplete is buffered by the parser: bound it here.
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._fail(431)

    def _fail(self, status: int) -> None:
        """Answer after the responses already owed, then close (RFC 9112 9.6)."""
        self._error_status = status
        self._transport.pause_reading()
        if not self._busy:
            self._process()

    # Parser callbacks (httptools)

    def on_message_begin(self) -> None:
        self._request = Request()
        self._in_headers = True
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_header(len(url))
        self._request.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header(len(name) + len(value) + 4)
        self._request.headers.append((name, value))
        if name.lower() == b"expect" and value.lower() == b"100-continue":
            self._request.expect_continue = True

    def _count_header(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _HeaderTooLarge()

    def on_headers_complete(self) -> None:
        request = self._request
        request.method = self._parser.get_method()
        request.version = self._parser.get_http_version()
        request.keep_alive = self._parser.should_keep_alive()
        self._in_headers = False
        if request.expect_continue and request.version == "1.1" and not self._busy and not self._queue:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._request.body_length += len(body)
        self._request.body_hash.update(body)

    def on_message_complete(self) -> None:
        self._queue.append(self._request)
        self._request = None
        if not self._busy:
            self._process()

    # Response flow

    def _process(self) -> None:
        """Answer queued requests; an answer that must wait hands over to a task."""
        while self._queue and not self._closing:
            request = self._queue.popleft()
            pending = self._respond(request)
            if pending is not None:
                self._busy = True
                self._task = self._loop.create_task(self._finish(pending))  # held: the loop keeps weak refs
                return
            if not request.keep_alive:
                self._close()
                return
        if self._error_status and not self._closing:
            status = self._error_status
            body = b"%d %s\n" % (status, HTTPStatus(status).phrase.encode())
            fields = _length_fields(len(body), b"text/plain")
            self._transport.write(_head(status, "1.1", False, fields) + body)
            self._close()
        elif self._stop_after_queue and not self._closing:
            self._close()

    async def _finish(self, pending) -> None:
        try:
            request = await pending
        except ConnectionError:
            self._close()
            return
        finally:
            self._busy = False
            self._task = None
        if request.keep_alive:
            self._process()
        else:
            self._close()

    def _close(self) -> None:
        self._closing = True
        self._queue.clear()
        self._transport.close()

    def _respond(self, request: Request):
        """Write the response now, or return an awaitable that writes it and returns ``request``."""
        path = request.target.split(b"?", 1)[0].decode("latin-1")
        _, _, rest = path.partition("/")
        route, _, arg = rest.partition("/")
        try:
            if route == "bytes" and arg:
                size = _int_arg(arg)
                if size > DIRECT_WRITE_LIMIT:
                    return self._write_large(request, size, chunked=False)
                self._send(request, 200, _length_fields(size, b"text/plain"), _FILL[:size])
            elif route == "chunked" and arg:
                size = _int_arg(arg)
                if request.version == "1.0" or size > DIRECT_WRITE_LIMIT:
                    return self._write_large(request, size, chunked=request.version != "1.0")
                fields = [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked")]
                self._send(request, 200, fields, _chunked_body(size))
            elif route == "status" and arg:
                status = _int_arg(arg)
                if not 200 <= status <= 599:
                    raise ValueError(arg)
                fields = [] if status in _NO_BODY_STATUS else _length_fields(0, None)
                self._send(request, status, fields, b"")
            elif route == "delay" and arg:
                delay = float(arg)
                if not 0 <= delay <= MAX_DELAY:
                    raise ValueError(arg)
                return self._delayed_echo(request, delay)
            else:
                body = request.echo()
                self._send(request, 200, _length_fields(len(body), b"application/json"), body)
        except ValueError:
            body = f"bad argument in {path}\n".encode()
            self._send(request, 400, _length_fields(len(body), b"text/plain"), body)
        return None

    def _send(self, request: Request, status: int, fields, body: bytes) -> None:
        head = _head(status, request.version, request.keep_alive, fields)
        self._transport.write(head if request.method == b"HEAD" else head + body)

    async def _delayed_echo(self, request: Request, delay: float) -> Request:
        await asyncio.sleep(delay)
        if self._closing:
            raise ConnectionResetError("connection closed")
        body = request.echo()
        self._send(request, 200, _length_fields(len(body), b"application/json"), body)
        return request

    async def _write_large(self, request: Request, size: int, *, chunked: bool) -> Request:
        if chunked:
            fields = [(b"Content-Type", b"text/plain"), (b"Transfer-Encoding", b"chunked")]
        else:
            fields = _length_fields(size, b"text/plain")
        self._transport.write(_head(200, request.version, request.keep_alive, fields))
        if request.method == b"HEAD":
            return request
        left = size
        while left > 0:
            await self._drain()
            n = min(left, DIRECT_WRITE_LIMIT)
            self._transport.write(_chunked_body(n, last=False) if chunked else _FILL[:n])
            left -= n
        if chunked:
            self._transport.write(b"0\r\n\r\n")
        return request


def _int_arg(text: str) -> int:
    if not text.isdigit() or len(text) > 12:
        raise ValueError(text)
    return int(text)


def _length_fields(length: int, content_type: bytes | None) -> list[tuple[bytes, bytes]]:
    fields = [(b"Content-Length", b"%d" % length)]
    if content_type:
        fields.append((b"Content-Type", content_type))
    return fields


def _chunked_body(size: int, *, last: bool = True) -> bytes:
    full, tail = divmod(size, CHUNK_SIZE)
    parts = [_CHUNK] * full
    if tail:
        parts.append(b"%x\r\n" % tail + _FILL[:tail] + b"\r\n")
    if last:
        parts.append(b"0\r\n\r\n")
    return b"".join(parts)


async def start_server(host: str = "127.0.0.1", port: int = 8081) -> asyncio.Server:
    """Bind and start serving; ``port=0`` picks a free port (read it from ``server.sockets``)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(BackendProtocol, host, port, reuse_address=True, backlog=1024)


async def serve(host: str = "127.0.0.1", port: int = 8081) -> None:
    """Serve until cancelled, or until SIGTERM/SIGINT when run in the main thread."""
    server = await start_server(host, port)
    bound = server.sockets[0].getsockname()
    print(f"fastterm.backend: listening on http://{_show(bound[0])}:{bound[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
        except (RuntimeError, ValueError, NotImplementedError):
            pass
    async with server:
        await stop


def _show(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _loop_factory():
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastterm.backend",
                                     description="fastterm demo backend: echoes each request as JSON")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(args.host, args.port))
    except OSError as exc:
        print(f"fastterm.backend: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
