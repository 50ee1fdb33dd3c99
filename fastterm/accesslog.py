"""The access log's formats: JSON lines, nginx's ``combined``, or an nginx ``log_format``
template of the variables below, compiled here (policy) for ``ext/accesslog.pyx`` (the lines).

The worker's loop (``ext/loop.pyx``, ``Worker.log_exchange``) writes a request's line where its
exchange ends (only while a log is configured: off costs one test per request). Lines are
buffered per worker, as nginx's ``access_log ... buffer=64k flush=1s``: one ``write(2)`` per
flush, on an ``O_APPEND`` descriptor, of whole lines only, so the workers' lines never
interleave in the shared file. ``reopen`` (SIGUSR1, logrotate's ``postrotate``) flushes into
the old file, then opens the path again.

JSON fields, in order: ``time`` (ISO 8601, ms), ``client``, ``sni``, ``tls_version``, ``cipher``,
``session_reused``, ``alpn``, ``handshake_time`` (s), ``method``, ``path`` (the request target),
``protocol``, ``status`` (499: the client went away first), ``bytes_in`` (request head and body;
HTTP/2: its HEADERS and DATA frames), ``bytes_out`` (head and body sent; HTTP/2: its HEADERS and
DATA frames, as nginx's $bytes_sent), ``body_bytes_out`` (HTTP/2: the DATA payloads),
``upstream`` (the server last tried), ``upstream_time`` (first try to the response's end, s),
``request_time`` (s), ``early_data`` (the request came in TLS 1.3 0-RTT data), ``referer``, ``user_agent``. Values of the request's own bytes: JSON
strings (an invalid UTF-8 byte as \\xHH); in templates nginx's escaping.
"""

from __future__ import annotations

import re

# The fields of a JSON line, in this order.
FIELDS = ("time", "client", "sni", "tls_version", "cipher", "session_reused", "alpn", "handshake_time",
          "method", "path", "protocol", "status", "bytes_in", "bytes_out", "body_bytes_out", "upstream",
          "upstream_time", "request_time", "early_data", "referer", "user_agent")

COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
            '"$http_referer" "$http_user_agent"')

# The nginx variables a template may use -> the JSON field it matches (None: its own), in the
# order of ext/accesslog.pxd's LV_* enum.
VARIABLES = {
    "remote_addr": "client", "remote_user": None, "time_local": "time", "time_iso8601": "time", "msec": None,
    "request": None, "request_method": "method", "request_uri": "path", "server_protocol": "protocol",
    "status": "status", "body_bytes_sent": "body_bytes_out", "bytes_sent": "bytes_out",
    "request_length": "bytes_in", "request_time": "request_time", "http_referer": "referer",
    "http_user_agent": "user_agent", "ssl_protocol": "tls_version", "ssl_cipher": "cipher",
    "ssl_server_name": "sni", "ssl_session_reused": "session_reused", "ssl_alpn_protocol": "alpn",
    "upstream_addr": "upstream", "upstream_response_time": "upstream_time",
    "ssl_handshake_time": "handshake_time",   # fastterm's own (nginx has none)
    "ssl_early_data": "early_data",           # "1" for a request that came in 0-RTT data, else "-"
}
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


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


def pieces_of(spec: str) -> list[tuple[bytes, int]] | None:
    """``access_log_format`` -> what ext/accesslog.pyx's AccessLog takes: None for JSON lines,
    else [(literal, variable index in VARIABLES or len(VARIABLES) for none)]."""
    template = format_of(spec)
    if template is None:
        return None
    index = {name: i for i, name in enumerate(VARIABLES)}
    return [(literal.encode("ascii", "backslashreplace"), index[name] if name else len(VARIABLES))
            for literal, name in template]


def open_access_log(path: str, spec: str = "json"):
    """A worker's AccessLog on ``path`` (created 0644 if missing, appended to)."""
    from fastterm._core import AccessLog

    return AccessLog(path, pieces_of(spec))
