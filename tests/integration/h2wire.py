"""Wire-level HTTP/2 for integration tests: a client that shows every response as it came,
and raw frames for what no well-behaved client sends.

``H2Client`` drives python-hyper's ``h2`` as the client over one TLS connection with ALPN
h2; with ``validate=False`` it sends header fields exactly as given (uppercase names,
connection-specific fields, CR/LF in values), as an attacker would. ``frame`` builds any
frame by hand (CONTINUATION floods, SETTINGS with too many entries), sent with
``H2Client.send_raw`` on a stream id the h2 state machine does not track. Responses come
back as ``httpwire.Message`` (``start_line`` "HTTP/2 200"), so the HTTP/1.1 helpers apply.
Every read is bounded by a deadline.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from typing import Self

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from harness import HOST, NAME
from httpwire import Message

# Frame types and flags (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xB
# SETTINGS identifiers (RFC 9113 §6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 0x1, 0x2, 0x3, 0x4
MAX_WINDOW = 2**31 - 1


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame as it goes on the wire: 24-bit length, type, flags, stream id, payload."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def settings_payload(entries: list[tuple[int, int]]) -> bytes:
    return b"".join(struct.pack(">HI", ident, value) for ident, value in entries)


def connect_h2(ft, *, timeout: float = 5.0, rcvbuf: int | None = None, ctx: ssl.SSLContext | None = None,
               server_hostname: str = NAME) -> ssl.SSLSocket:
    """A TLS connection to fastterm that negotiated h2 by ALPN. ``rcvbuf``: a small kernel
    receive buffer, for clients that stop reading; ``ctx``: its TLS settings (ALPN h2 is set)."""
    ctx = ctx or ft.client_context()
    ctx.set_alpn_protocols(["h2"])
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # as curl and browsers: no Nagle stall per window
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(timeout)
    raw.connect((HOST, ft.https_port))
    sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
    assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
    return sock


class _Socket:
    """Both clients own one socket (``self.sock``): ``close()`` and ``with`` close it."""

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class Stream:
    """What came back on one stream."""

    headers: list[tuple[str, str]] | None = None
    interim: list[list[tuple[str, str]]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    received: int = 0                                        # DATA bytes, kept or not
    sha256: hashlib._Hash = field(default_factory=hashlib.sha256, repr=False)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None   # the RST_STREAM error code fastterm sent

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def message(self) -> Message:
        assert self.headers is not None, f"no response head (reset {self.reset})"
        status = dict(self.headers)[":status"]
        return Message(f"HTTP/2 {status}", [(n, v) for n, v in self.headers if not n.startswith(":")],
                       bytes(self.body), trailers=list(self.trailers))


def _text(headers) -> list[tuple[str, str]]:
    return [(n.decode("latin-1") if isinstance(n, bytes) else n, v.decode("latin-1") if isinstance(v, bytes) else v)
            for n, v in headers]


class H2Client(_Socket):
    """One HTTP/2 connection driven by h2 as the client.

    ``window``: the stream window this client advertises (0: a client that takes no DATA);
    ``auto_window``: give back what was read (WINDOW_UPDATE), as a real client does.
    """

    def __init__(self, sock: ssl.SSLSocket, *, validate: bool = True, window: int = 1 << 24,
                 auto_window: bool = True, settings: dict[int, int] | None = None, keep_body: bool = True):
        self.sock = sock
        self.keep_body = keep_body   # False: large bodies are only counted and hashed
        config = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                           validate_outbound_headers=validate,
                                           normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(config)
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window,
                                         h2.settings.SettingCodes.ENABLE_PUSH: 0, **(settings or {})})
        self.auto_window = auto_window
        self.streams: dict[int, Stream] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.remote_settings: dict[int, int] = {}
        self.conn.initiate_connection()
        if auto_window and window > 65535:
            self.conn.increment_flow_control_window(window - 65535)
        self.flush()

    # ---- Out ------------------------------------------------------------------------
    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            try:
                self.sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self.closed = True

    def send_raw(self, data: bytes) -> None:
        """Bytes h2 does not know about (hand-built frames)."""
        self.flush()
        self.sock.sendall(data)

    def request(self, method: str = "GET", path: str = "/", *, authority: str | None = NAME,
                headers: list[tuple[str, str]] | None = None, body: bytes = b"", end_stream: bool = True,
                length: bool = True, scheme: str = "https", flush: bool = True) -> int:
        """Open a stream: HEADERS (``:authority`` unless None), then ``body`` as DATA within
        the flow-control windows. ``length``: send content-length for a body, as clients do."""
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", scheme), (":path", path)]
        if authority is not None:
            fields.append((":authority", authority))
        fields += list(headers or [])
        if body and length and not any(n.lower() == "content-length" for n, _ in fields):
            fields.append(("content-length", str(len(body))))
        self.streams[sid] = Stream()
        self.conn.send_headers(sid, [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields],
                               end_stream=end_stream and not body)
        if body:
            self.send_body(sid, body, end_stream=end_stream)
        elif flush:
            self.flush()
        return sid

    def send_body(self, sid: int, body: bytes, *, end_stream: bool = True, timeout: float = 30.0) -> None:
        """DATA as fast as fastterm's windows allow (waiting for its WINDOW_UPDATEs)."""
        view = memoryview(body)
        deadline = time.monotonic() + timeout
        while True:
            n = min(len(view), self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if n == 0 and view:
                assert time.monotonic() < deadline, "fastterm's window stayed shut"
                assert self.pump(deadline - time.monotonic()), "connection closed during the upload"
                assert not self.streams[sid].done, "stream ended during the upload"
                continue
            self.conn.send_data(sid, bytes(view[:n]), end_stream=end_stream and n == len(view))
            view = view[n:]
            self.flush()
            if not view:
                return

    def end_stream(self, sid: int) -> None:
        self.conn.end_stream(sid)
        self.flush()

    def reset(self, sid: int, code: int = CANCEL) -> None:
        self.conn.reset_stream(sid, code)
        self.flush()

    # ---- In -------------------------------------------------------------------------
    def pump(self, timeout: float = 5.0) -> bool:
        """One read (within ``timeout``) and the events it brings; False once closed."""
        if self.closed:
            return False
        self.sock.settimeout(max(0.01, timeout))
        try:
            data = self.sock.recv(262144)
        except TimeoutError:
            return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.StreamClosedError:
            events = []   # DATA on a stream we reset, in flight when the RST went out
        except h2.exceptions.ProtocolError:
            if self.goaway is None:
                raise
            events = []   # h2 takes nothing after a GOAWAY: RawH2 reads what follows one
        for ev in events:
            self._on(ev)
        self.flush()
        return True

    def _on(self, ev) -> None:
        st = self.streams.setdefault(ev.stream_id, Stream()) if getattr(ev, "stream_id", 0) else None
        if isinstance(ev, h2.events.ResponseReceived):
            st.headers = _text(ev.headers)
        elif isinstance(ev, h2.events.InformationalResponseReceived):
            st.interim.append(_text(ev.headers))
        elif isinstance(ev, h2.events.DataReceived):
            st.received += len(ev.data)
            st.sha256.update(ev.data)
            if self.keep_body:
                st.body += ev.data
            if self.auto_window and ev.flow_controlled_length:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            st.trailers = _text(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset):
            st.reset = ev.error_code
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = ev
        elif isinstance(ev, h2.events.RemoteSettingsChanged):
            self.remote_settings.update({k: v.new_value for k, v in ev.changed_settings.items()})

    def wait(self, predicate, timeout: float = 5.0) -> bool:
        """Pump until ``predicate()`` holds, the connection closes, or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0 or not self.pump(min(left, 0.5)):
                return predicate()
        return True

    def response(self, sid: int, timeout: float = 10.0) -> Stream:
        """The stream once it ended or was reset (or the connection closed first)."""
        self.wait(lambda: self.streams[sid].done, timeout)
        return self.streams[sid]

    def get(self, method: str = "GET", path: str = "/", timeout: float = 10.0, **kw) -> Message:
        """One request, its whole response as a Message (it must not be reset)."""
        st = self.response(self.request(method, path, **kw), timeout)
        assert st.ended, f"stream not ended: reset={st.reset} goaway={self.goaway} closed={self.closed}"
        return st.message()

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once fastterm closed the connection (frames before the close are read)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pump(min(0.5, deadline - time.monotonic())):
                return True
        return self.closed



def h2_client(ft, *, timeout: float = 5.0, rcvbuf: int | None = None, ctx: ssl.SSLContext | None = None,
              server_hostname: str = NAME, **kw) -> H2Client:
    return H2Client(connect_h2(ft, timeout=timeout, rcvbuf=rcvbuf, ctx=ctx, server_hostname=server_hostname), **kw)


def h2_request(ft, method: str = "GET", target: str = "/", *, host: str | None = NAME,
               headers: list[tuple[str, str]] | None = None, body: bytes = b"", timeout: float = 10.0) -> Message:
    """``Fastterm.request`` over HTTP/2: one stream on a fresh connection; names lowercased
    as HTTP/2 requires (RFC 9113 §8.2.1)."""
    with h2_client(ft, timeout=timeout) as c:
        return c.get(method, target, authority=host, headers=[(n.lower(), v) for n, v in headers or []],
                     body=body, timeout=timeout)


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class RawH2(_Socket):
    """Hand-built frames on one h2 connection, for what h2 itself refuses to send (more
    streams than SETTINGS_MAX_CONCURRENT_STREAMS, CONTINUATION floods, bombs) or to read
    (h2 takes no frame after a GOAWAY). The HPACK encoder and decoder keep their dynamic
    tables in step with fastterm's. What came back is in ``status`` (stream id -> final
    :status), ``ended``, ``rst`` (stream id -> error code) and ``goaway`` ((last stream id,
    error code), the last one received), ``settings`` and ``acks``."""

    def __init__(self, sock: ssl.SSLSocket, settings: list[tuple[int, int]] = (), window: int = MAX_WINDOW):
        """``window``: this client's stream and connection windows (the largest by default,
        so that fastterm's DATA never waits on a client that sends no WINDOW_UPDATE)."""
        self.sock = sock
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.next_id = 1
        self.buf = bytearray()
        self.status: dict[int, int] = {}
        self.ended: set[int] = set()
        self.rst: dict[int, int] = {}
        self.goaway: tuple[int, int] | None = None
        self.settings: dict[int, int] = {}   # fastterm's SETTINGS
        self.acks = 0                        # SETTINGS and PING ACKs received
        self.closed = False
        grow = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", window - 65535)) if window > 65535 else b""
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings_payload([(INITIAL_WINDOW_SIZE, window), *settings]))
                     + grow)

    def block(self, path: str = "/", method: str = "GET", extra: list[tuple[bytes, bytes]] = ()) -> bytes:
        """An HPACK header block for a request to www.example.com."""
        return self.encoder.encode([(b":method", method.encode()), (b":scheme", b"https"),
                                    (b":path", path.encode()), (b":authority", NAME.encode()), *extra])

    def headers(self, path: str = "/", *, flags: int = END_HEADERS | END_STREAM, **kw) -> tuple[int, bytes]:
        """(stream id, a HEADERS frame opening it), not sent yet."""
        sid = self.next_id
        self.next_id += 2
        return sid, frame(HEADERS, flags, sid, self.block(path, **kw))

    def send(self, data: bytes) -> bool:
        """False when fastterm had closed the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.closed = True
            return False

    def read(self, timeout: float = 5.0, until=None) -> list[tuple[int, int, int, bytes]]:
        """Frames fastterm sends, until it closes, ``until()`` holds or ``timeout``:
        [(type, flags, stream id, payload)]."""
        out = []
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline and not (until and until()):
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(262144)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
                break
            self.buf += data
            while len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + n:
                    break
                f = (self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF,
                     bytes(self.buf[9:9 + n]))
                del self.buf[:9 + n]
                self._on(*f)
                out.append(f)
        return out

    def _on(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if kind == HEADERS:
            # fastterm sends no padding or priority; every block must be decoded, in order.
            fields = dict(self.decoder.decode(payload, raw=True))
            if int(fields.get(b":status", b"0")) >= 200:
                self.status[sid] = int(fields[b":status"])
        elif kind == RST_STREAM:
            self.rst[sid] = struct.unpack(">I", payload[:4])[0]
        elif kind == GOAWAY:
            self.goaway = struct.unpack(">II", payload[:8])
        elif kind in (SETTINGS, PING) and flags & ACK:
            self.acks += 1
        elif kind == SETTINGS:
            self.settings.update(struct.unpack(">HI", payload[i:i + 6]) for i in range(0, len(payload), 6))
        if kind in (HEADERS, DATA) and flags & END_STREAM:
            self.ended.add(sid)



def raw_h2(ft, settings: list[tuple[int, int]] = (), window: int = MAX_WINDOW, **kw) -> RawH2:
    return RawH2(connect_h2(ft, **kw), settings, window)
