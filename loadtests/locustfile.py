"""Realistic mixed traffic through fastterm, and a soak test of its memory.

Users (weights in brackets), all against ``--host https://HOST:PORT``:

- ``Browser`` (6): GET pages and assets over one keep-alive connection;
- ``ApiClient`` (3): JSON POSTs over keep-alive;
- ``Uploader`` (1): 256 KiB uploads;
- ``NewVisitor`` (2): a new TLS connection per page with no session: full handshakes;
- ``ReturningVisitor`` (2): a new TLS connection per page resuming the previous session
  (TLS 1.3 tickets), counted as failed when the server did not resume.

The paths are those of ``fastterm demo``'s backend (``python -m fastterm.backend``): every
path answers 200 with what it received, ``/bytes/N`` answers N bytes.

Certificates: ``FASTTERM_CA=/path/ca.crt`` verifies against that CA (``fastterm demo``
prints its path); without it verification is off, as for a load test of localhost.

Soak mode (``--soak``): every ``--rss-interval`` seconds the RSS of every fastterm process
(the master given by ``--fastterm-pid``, or the only fastterm master running, and its
workers) is sampled. At the end the run fails (exit status 1) when any request failed or
when the RSS grew by more than ``--rss-growth-mib`` (default 32 MiB) between the median of
the samples after warm-up (the first 20 % of the run: pools, caches and allocator arenas
fill) and the median of the last 20 %: a leak of even 1 KiB per request over 10 minutes at
a few hundred requests/s exceeds that, while the steady state stays well inside it.
``--rss-report FILE`` writes the samples as JSON.

    locust -f loadtests/locustfile.py --headless -u 50 -r 10 --run-time 10m \\
        --host https://127.0.0.1:8443 --soak --fastterm-pid $(pgrep -f 'fastterm: master')
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import statistics
import time

import gevent
from locust import FastHttpUser, User, between, events, task

PAGE_PATHS = ("/", "/index.html", "/products?page=2", "/bytes/2048", "/bytes/16384", "/static/app.css")
UPLOAD = b"u" * (256 * 1024)


# The server's session lifetime ([server.tls] session_timeout; 300 s by default).
SESSION_TIMEOUT = float(os.environ.get("FASTTERM_SESSION_TIMEOUT", "300"))


def client_context() -> ssl.SSLContext:
    ca = os.environ.get("FASTTERM_CA")
    if ca:
        ctx = ssl.create_default_context(cafile=ca)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Verified(FastHttpUser):
    abstract = True

    def __init__(self, environment):
        ca = os.environ.get("FASTTERM_CA")
        type(self).insecure = not ca
        if ca:
            type(self).ssl_context_factory = staticmethod(client_context)
        super().__init__(environment)


class Browser(_Verified):
    weight = 6
    wait_time = between(0.2, 1.0)

    @task(5)
    def page(self):
        path = PAGE_PATHS[int(time.monotonic() * 1000) % len(PAGE_PATHS)]
        self.client.get(path, name="browse GET")

    @task(1)
    def asset(self):
        self.client.get("/bytes/65536", name="browse GET 64 KiB")


class ApiClient(_Verified):
    weight = 3
    wait_time = between(0.1, 0.5)

    @task
    def post(self):
        with self.client.post("/api/orders", json={"item": "book", "quantity": 2, "ts": time.time()},
                              name="API POST json", catch_response=True) as resp:
            if resp.status_code != 200 or b'"method"' not in (resp.content or b""):
                resp.failure(f"status {resp.status_code}")


class Uploader(_Verified):
    weight = 1
    wait_time = between(0.5, 2.0)

    @task
    def upload(self):
        with self.client.post("/upload", data=UPLOAD, headers={"Content-Type": "application/octet-stream"},
                              name="upload 256 KiB", catch_response=True) as resp:
            if resp.status_code != 200 or f'"body_length": {len(UPLOAD)}'.encode() not in (resp.content or b""):
                resp.failure(f"status {resp.status_code}, body not echoed whole")


class _Visitor(User):
    """One new TLS connection per page; ``resume`` decides whether it offers the last session."""

    abstract = True
    resume = False

    def on_start(self):
        from urllib.parse import urlsplit

        url = urlsplit(self.host)
        self.addr = (url.hostname, url.port or 443)
        self.server_name = url.hostname
        self.ctx = client_context()
        self.session = None
        self.session_born = 0.0

    def visit(self, name: str, path: str = "/") -> None:
        start = time.perf_counter()
        length = 0
        exc = None
        try:
            with socket.create_connection(self.addr, timeout=10) as raw:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with self.ctx.wrap_socket(raw, server_hostname=self.server_name,
                                          session=self.session if self.resume else None) as s:
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {self.server_name}\r\nConnection: close\r\n\r\n"
                              .encode())
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
                    length = len(data)
                    status = int(data.split(None, 2)[1]) if data.startswith(b"HTTP/") else 0
                    if status != 200:
                        raise RuntimeError(f"status {status}")
                    offered, born = self.session, self.session_born
                    self.session = s.session   # a browser keeps the newest ticket, resumed or not
                    if not s.session_reused:
                        self.session_born = time.monotonic()
                    # A chain of resumptions ends session_timeout after its full handshake (as in
                    # nginx: OpenSSL keeps the first handshake's time); only an earlier miss fails.
                    if self.resume and offered is not None and not s.session_reused and \
                            time.monotonic() - born < SESSION_TIMEOUT - 5:
                        raise RuntimeError("session not resumed")
                    if not self.resume and s.session_reused:
                        raise RuntimeError("a new visitor resumed a session")
        except (OSError, RuntimeError, ValueError, IndexError) as e:
            exc = e
        self.environment.events.request.fire(
            request_type="TLS", name=name, response_time=(time.perf_counter() - start) * 1000,
            response_length=length, exception=exc, context={})


class NewVisitor(_Visitor):
    weight = 2
    wait_time = between(0.5, 1.5)

    @task
    def arrive(self):
        self.visit("new visitor (full handshake)")


class ReturningVisitor(_Visitor):
    weight = 2
    wait_time = between(0.5, 1.5)
    resume = True

    @task
    def come_back(self):
        self.visit("returning visitor (resumed)", "/index.html")


# --- soak: RSS of every fastterm process ---------------------------------------------------

@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--soak", action="store_true", default=False,
                        help="sample fastterm's RSS; fail on growth or on any failed request")
    parser.add_argument("--fastterm-pid", type=int, default=0, help="fastterm master PID (default: the only one)")
    parser.add_argument("--rss-interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--rss-growth-mib", type=float, default=32.0,
                        help="allowed RSS growth, warm-up to end, all fastterm processes together")
    parser.add_argument("--rss-report", default="", help="write the RSS samples here (JSON)")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def find_master() -> int:
    masters = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if cmd.startswith(b"fastterm: master process"):
                masters.append(int(entry))
    if len(masters) != 1:
        raise SystemExit(f"--soak: found {len(masters)} fastterm masters; name one with --fastterm-pid")
    return masters[0]


class Soak:
    def __init__(self, environment):
        self.env = environment
        opts = environment.parsed_options
        self.master = opts.fastterm_pid or find_master()
        self.interval = opts.rss_interval
        self.bound_kib = opts.rss_growth_mib * 1024
        self.report = opts.rss_report
        self.samples: list[dict] = []
        self.greenlet = gevent.spawn(self.sample_forever)

    def sample(self) -> None:
        pids = [self.master, *_children(self.master)]
        per = {pid: _rss_kib(pid) for pid in pids}
        self.samples.append({"t": time.time(), "rss_kib": per, "total_kib": sum(per.values())})

    def sample_forever(self) -> None:
        while True:
            self.sample()
            gevent.sleep(self.interval)

    def verdict(self) -> list[str]:
        self.greenlet.kill()
        self.sample()
        problems = []
        stats = self.env.stats.total
        if stats.num_failures:
            problems.append(f"{stats.num_failures} of {stats.num_requests} requests failed")
        totals = [s["total_kib"] for s in self.samples]
        n = len(totals)
        growth = None
        if n >= 5:
            k = max(1, n // 5)
            growth = statistics.median(totals[-k:]) - statistics.median(totals[k:2 * k])
            if growth > self.bound_kib:
                problems.append(f"fastterm RSS grew by {growth / 1024:.1f} MiB after warm-up "
                                f"(bound {self.bound_kib / 1024:.0f} MiB)")
        else:
            problems.append(f"only {n} RSS samples: run longer or lower --rss-interval")
        print(f"soak: {n} RSS samples of {len(self.samples[-1]['rss_kib'])} fastterm processes, "
              f"first {totals[0] / 1024:.1f} MiB, last {totals[-1] / 1024:.1f} MiB, growth after warm-up "
              f"{'n/a' if growth is None else f'{growth / 1024:.1f} MiB'}; "
              f"{stats.num_requests} requests, {stats.num_failures} failures", flush=True)
        if self.report:
            with open(self.report, "w") as f:
                json.dump({"samples": self.samples, "growth_kib": growth, "bound_kib": self.bound_kib,
                           "requests": stats.num_requests, "failures": stats.num_failures,
                           "problems": problems}, f, indent=1)
        return problems


_soak: Soak | None = None


@events.test_start.add_listener
def _start(environment, **_kw):
    global _soak
    if environment.parsed_options and environment.parsed_options.soak and _soak is None:
        _soak = Soak(environment)


@events.quitting.add_listener
def _quit(environment, **_kw):
    if _soak is None:
        return
    problems = _soak.verdict()
    for p in problems:
        print(f"soak FAILED: {p}", flush=True)
    if problems:
        environment.process_exit_code = 1
    else:
        print("soak passed", flush=True)
