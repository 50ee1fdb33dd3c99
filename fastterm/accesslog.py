"""The access log: one line per request, JSON (msgspec) or an nginx ``log_format`` template
(``combined`` by default in nginx front-end configs).

The worker's loop (``ext/loop.pyx``, ``Worker.log_exchange``) collects a request's fields into
a dict where the exchange ends (only while a log is configured: off costs one test per request)
and hands it to ``AccessLog.write``. Lines are buffered per worker, as nginx's ``access_log
... buffer=64k flush=1s``: one ``write(2)`` per flush, on an ``O_APPEND`` descriptor, of whole
lines only, so the workers' lines never interleave in the shared file. ``reopen`` (SIGUSR1,
logrotate's ``postrotate``) flushes into the old file, then opens the path again.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import time

import msgspec

log = logging.getLogger("fastterm.worker")

BUFFER_SIZE = 65536     # nginx buffer=64k
FLUSH_INTERVAL = 1.0    # nginx flush=1s (the worker's sweep calls flush once a second)

# The fields of a JSON line, in this order (README: what each means).
FIELDS = ("time", "client", "sni", "tls_version", "cipher", "session_reused", "alpn", "handshake_time",
          "method", "path", "protocol", "status", "bytes_in", "bytes_out", "body_bytes_out", "upstream",
          "upstream_time", "request_time", "referer", "user_agent")

COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent"')

# nginx variable -> the field it reads (None: computed below from several).
VARIABLES = {
    "remote_addr": "client", "remote_user": None, "time_local": None, "time_iso8601": None, "msec": None,
    "request": None, "request_method": "method", "request_uri": "path", "server_protocol": "protocol",
    "status": "status", "body_bytes_sent": "body_bytes_out", "bytes_sent": "bytes_out",
    "request_length": "bytes_in", "request_time": "request_time", "http_referer": "referer",
    "http_user_agent": "user_agent", "ssl_protocol": "tls_version", "ssl_cipher": "cipher",
    "ssl_server_name": "sni", "ssl_session_reused": "session_reused", "ssl_alpn_protocol": "alpn",
    "upstream_addr": "upstream", "upstream_response_time": "upstream_time",
    "ssl_handshake_time": "handshake_time",
}
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")
# The request's own bytes (method, path, Referer, User-Agent) come as bytes: JSON gets them as
# UTF-8 text (an invalid byte as \xHH), a template nginx's escaping (ngx_http_log_escape: '"',
# backslash and bytes outside 0x20..0x7e as \xHH).
BYTES_FIELDS = ("method", "path", "referer", "user_agent")
_UNSAFE = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')


def _escape_byte(m: re.Match) -> bytes:
    return b"\\x%02X" % m[0][0]


def compile_format(template: str) -> list[tuple[str, str | None]]:
    """An nginx ``log_format`` template -> [(literal, variable or None)]; ValueError names a
    variable fastterm does not log."""
    pieces: list[tuple[str, str | None]] = []
    at = 0
    for m in _VARIABLE.finditer(template):
        name = m[1] or m[2]
        if name not in VARIABLES:
            raise ValueError(f'log_format variable "${name}" is not one fastterm logs (it logs '
                             + ", ".join("$" + v for v in VARIABLES) + ")")
        pieces.append((template[at:m.start()], name))
        at = m.end()
    if at < len(template):
        pieces.append((template[at:], None))
    return pieces


def format_of(spec: str) -> list[tuple[str, str | None]] | None:
    """``access_log_format`` -> None for JSON lines, else the compiled template."""
    if spec == "json":
        return None
    return compile_format(COMBINED if spec == "combined" else spec)


def _text(value) -> str:
    if value is None or value == "":
        return "-"
    if value is True:
        return "r"      # nginx $ssl_session_reused
    if value is False:
        return "."
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return _UNSAFE.sub(_escape_byte, value).decode("ascii")
    return value


class AccessLog:
    """One worker's access log file: buffered lines, flushed by size or once a second."""

    def __init__(self, path: str, spec: str = "json"):
        self.path = path
        self.template = format_of(spec)
        self.encoder = msgspec.json.Encoder()
        self.buf = bytearray()
        self.fd = -1
        self.second = -1
        self.local = self.iso = ""
        self.failed = False
        self.open()

    def open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def reopen(self) -> None:
        """SIGUSR1: what is buffered goes to the file it was written for, then the path opens
        anew (logrotate moved the old file away, or copied it and truncated it)."""
        self.flush()
        old, self.fd = self.fd, -1
        try:
            self.open()
        finally:
            if old >= 0:
                os.close(old)

    def _clock(self, now: float) -> None:
        """The formatted times, once a second (nginx caches them the same way)."""
        second = int(now)
        if second != self.second:
            self.second = second
            stamp = datetime.datetime.fromtimestamp(second).astimezone()
            self.local = stamp.strftime("%d/%b/%Y:%H:%M:%S %z")
            self.iso = stamp.isoformat()

    def write(self, record: dict) -> None:
        """One request's line, from ``Worker.log_exchange``: ``record`` has FIELDS but time."""
        now = time.time()
        self._clock(now)
        if self.template is None:
            record["time"] = f"{self.iso[:19]}.{int(now * 1000) % 1000:03d}{self.iso[19:]}"
            for name in BYTES_FIELDS:
                value = record[name]
                if value is not None:
                    record[name] = value.decode("utf-8", "backslashreplace")
            self.encoder.encode_into(record, self.buf, -1)
            self.buf += b"\n"
        else:
            self.buf += self._render(record, now).encode("ascii", "backslashreplace")
        if len(self.buf) >= BUFFER_SIZE:
            self.flush()

    def _render(self, record: dict, now: float) -> str:
        out = []
        for literal, name in self.template:
            out.append(literal)
            if name is None:
                continue
            field = VARIABLES[name]
            if field is not None:
                out.append(_text(record[field]))
            elif name == "request":
                out.append(_text(record["method"] + b" " + record["path"] + b" " + record["protocol"].encode()
                                 if record["method"] else None))
            elif name == "time_local":
                out.append(self.local)
            elif name == "time_iso8601":
                out.append(self.iso)
            elif name == "msec":
                out.append(f"{now:.3f}")
            else:
                out.append("-")   # $remote_user: no HTTP authentication here
        out.append("\n")
        return "".join(out)

    def flush(self) -> None:
        """One write of whole lines. A full disk or a failing file loses these lines (said
        once, until a write succeeds again) rather than holding the loop or memory."""
        if not self.buf or self.fd < 0:
            return
        data, self.buf = self.buf, bytearray()
        try:
            os.write(self.fd, data)
            self.failed = False
        except OSError as exc:
            if not self.failed:
                self.failed = True
                log.error("access log %s: %s: lines lost", self.path, exc.strerror)

    def close(self) -> None:
        self.flush()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
