"""The admin endpoint, served by the master off the public listeners.

``GET /status`` (JSON), ``GET /metrics`` (Prometheus text format 0.0.4, summed over every
worker from shared memory), ``POST /reload``, ``POST /ticket-keys/rotate``.
Requests are tiny and rare, so the master answers each one synchronously.
"""

from __future__ import annotations

import json

MAX_REQUEST = 8192

# counter name -> (metric name, type, help, labels)
_METRICS = {
    "connections_total": ("fastterm_connections_total", "counter", "Client connections accepted.", None),
    "connections_open": ("fastterm_connections_open", "gauge", "Client connections open now.", None),
    "handshakes_full": ("fastterm_handshakes_total", "counter", "TLS handshakes completed.",
                        'kind="full"'),
    "handshakes_resumed": ("fastterm_handshakes_total", "counter", "TLS handshakes completed.",
                           'kind="resumed"'),
    "requests_total": ("fastterm_requests_total", "counter", "HTTP requests received.", None),
    "backend_connects": ("fastterm_backend_connects_total", "counter", "Backend connections opened.", None),
    "backend_reused": ("fastterm_backend_reused_total", "counter",
                       "Requests sent on a pooled backend connection.", None),
    "backend_errors": ("fastterm_backend_errors_total", "counter",
                       "Backend connect failures, resets and early closes.", None),
    "bytes_in": ("fastterm_bytes_total", "counter", "Plaintext bytes.", 'direction="in"'),
    "bytes_out": ("fastterm_bytes_total", "counter", "Plaintext bytes.", 'direction="out"'),
}


def _prefixed(totals: dict, prefix: str):
    return {k[len(prefix):]: v for k, v in totals.items() if k.startswith(prefix)}


def metrics_text(master) -> str:
    totals = master.metrics_totals()
    families: dict[str, tuple[str, str, list[str]]] = {}

    def add(name, kind, help_text, labels, value):
        family = families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")

    for key, (name, kind, help_text, labels) in _METRICS.items():
        if key in totals:
            add(name, kind, help_text, labels, totals[key])
    for cls in ("1xx", "2xx", "3xx", "4xx", "5xx"):
        add("fastterm_responses_total", "counter", "Responses sent, by status class.",
            f'code="{cls}"', totals.get(f"responses_{cls}", 0))
    for reason, value in _prefixed(totals, "handshake_failed_").items():
        add("fastterm_handshakes_failed_total", "counter", "TLS handshakes that failed, by reason.",
            f'reason="{reason}"', value)
    for version, value in _prefixed(totals, "tls_version_").items():
        add("fastterm_tls_version_total", "counter", "Handshakes by negotiated TLS version.",
            f'version="{version}"', value)
    for cipher, value in _prefixed(totals, "cipher_").items():
        add("fastterm_tls_cipher_total", "counter", "Handshakes by negotiated cipher family.",
            f'cipher="{cipher}"', value)
    sessions = master.shared.session_stats()
    for key in ("stores", "hits", "misses", "evictions"):
        add("fastterm_session_cache_total", "counter", "Shared session cache operations.",
            f'op="{key}"', sessions[key])
    add("fastterm_session_cache_capacity", "gauge", "Sessions the shared cache can hold.", None,
        sessions["capacity"])
    add("fastterm_reloads_total", "counter", "Successful configuration reloads.", None, master.reloads)
    add("fastterm_reload_failures_total", "counter", "Reloads refused by validation.", None,
        master.reload_failures)
    add("fastterm_worker_restarts_total", "counter", "Workers replaced after dying.", None, master.restarts)
    add("fastterm_ticket_key_rotations_total", "counter", "Ticket-key rotations.", None, master.keys.rotations)
    add("fastterm_workers", "gauge", "Worker processes running.", None, len(master.procs))
    add("fastterm_generation", "gauge", "Current worker generation.", None, master.generation.number)
    lines = []
    for name, (kind, help_text, samples) in families.items():
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + "\n"


def _read_request(conn) -> tuple[str, str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("admin request too large")
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split()
    if len(parts) != 3:
        raise ValueError(f"bad admin request line {line!r}")
    return parts[0], parts[1].split("?", 1)[0]


def _send(conn, status: str, body: str, content_type: str) -> None:
    raw = body.encode()
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(raw)}\r\n"
                 f"Connection: close\r\n\r\n".encode() + raw)


def handle(conn, master) -> None:
    method, path = _read_request(conn)
    as_json = "application/json"
    if method == "GET" and path == "/status":
        _send(conn, "200 OK", json.dumps(master.status(), indent=1) + "\n", as_json)
    elif method == "GET" and path == "/metrics":
        _send(conn, "200 OK", metrics_text(master), "text/plain; version=0.0.4; charset=utf-8")
    elif method == "POST" and path == "/reload":
        if master.reload():
            _send(conn, "200 OK", json.dumps({"reloaded": True, "generation": master.generation.number}) + "\n",
                  as_json)
        else:
            _send(conn, "409 Conflict", json.dumps({"reloaded": False, "generation": master.generation.number,
                                                    "error": master.last_reload_error}) + "\n", as_json)
    elif method == "POST" and path == "/ticket-keys/rotate":
        master.keys.rotate()
        _send(conn, "200 OK", json.dumps({"rotations": master.keys.rotations}) + "\n", as_json)
    else:
        _send(conn, "404 Not Found", json.dumps({"error": f"no {method} {path}"}) + "\n", as_json)
