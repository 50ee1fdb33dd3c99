"""``fastterm bench``: fastterm against nginx (and HAProxy, hitch) as TLS terminators, on this machine.

A user who runs nginx or HAProxy today runs ``fastterm bench`` and learns, on their hardware,
with their certificate and TLS policy (``-c fastterm.toml``; default: the demo's settings),
how fastterm compares. Everything runs on 127.0.0.1 in a temporary directory removed at the
end; only the processes started here are stopped.

Set-up
------
- **Backend**: one nginx process answering ``GET /1k`` with ``return 200`` (1 KiB), serving a
  1 MiB static file as ``/1m`` (sendfile) and ``POST /upload`` by reading the whole body,
  then answering 200 (see ``backend_conf``). Measured on loopback (wrk -c50, one core each), nginx's
  ``return 200`` did about 26,700 req/s where the built-in ``fastterm.backend`` (asyncio +
  httptools, Python per request) did about 12,600: the backend shares the client CPUs, so
  the faster one leaves more of them to the load generators and keeps the backend from
  being the bottleneck of the terminators' figures. Its ``stub_status`` counts the
  connections and requests it takes: how the h2 runs know nginx's and HAProxy's backend
  connects. ``fastterm.backend`` is used only when nginx is not installed; ``--backend
  HOST:PORT`` uses one that is already running (tests point it at a closed port to make
  every request fail).
- **Terminators**: fastterm (``python -m fastterm run``: master + ``--workers`` workers), and
  the peers found installed (``--peers nginx,haproxy,hitch``): nginx (master + workers), HAProxy
  (one process, ``nbthread`` = workers) and hitch (master + ``workers``; see below). Each gets,
  from the same fastterm configuration:
  the protocols, TLS 1.2 ciphers, TLS 1.3 suites, groups, server cipher order, the
  certificates, session cache on/off and its size and timeout, tickets on/off, HSTS,
  keep-alive and body-size limits and the upstream keep-alive pool; the client header
  timeout is ``--header-timeout`` (default 2 s, in place of the config's: see
  ``slowheaders``); ALPN h2 when the config offers it (nginx 1.22 has no ALPN list:
  ``listen ... ssl http2``; HAProxy ``alpn`` as the config's). Each listens on three
  ports: every certificate of the config (keep-alive, bulk, upload, latency, connections,
  resumption, slowheaders, h2), ECDSA only and RSA only (full handshakes per key type). All
  terminators are pinned with ``taskset`` to ``--cpus`` (default CPU 0); the load
  generators and the backend run on the other CPUs.
- **hitch** (Varnish's TLS proxy, 1.7 in Debian) decrypts and forwards bytes over plain TCP to
  the backend: one backend connection per client connection, so HTTP keep-alive goes through
  1:1 to the backend's, and nothing of HTTP is its own (no HSTS, header timeout or body
  limit, no access log: its handshake kinds are the clients' word, ``s_time -new`` never
  resumes, the resumed clients count what resumed). It gets the protocols, ciphers, TLS 1.3
  suites, groups, cipher order, ``workers`` and one PEM (chain + key) per frontend; one
  certificate per SNI name, so its main port serves ECDSA only (the config's first kind).
  Debian's build has no ``shared-cache``: session IDs resume in OpenSSL's cache of the
  worker that made them, tickets are OpenSSL's default (on, one key for all workers), and
  neither follows the config's switches. ALPN offers http/1.1 only. Not run for it (n/a in
  the table, "Not run" under it): ``h2`` (h2 would reach the HTTP/1.1 backend),
  ``keepalive-reencrypt`` (one plain backend), ``resumed-0rtt`` (no early data) and
  ``slowheaders`` (the attack would test the backend's header timeout); ``connections`` too when
  the hard fd limit is under two per idle connection (client + backend; HAProxy's the same).
- **Baseline** (``--baseline TREE``): fastterm from another checkout with its extension
  built (a ``git worktree`` of an earlier commit), run by this python with
  ``PYTHONPATH=TREE`` as peer ``fastterm-base``, right after fastterm in every round, from
  the same generated config (it writes no key newer than commit e35c2ac's schema; a tree
  that rejects one does not start, and the log shown says which). The report gives
  fastterm's per-round ratio to it, plain and per CPU-second: whether a change kept its
  figures within noise.
- **Access log** (``--access-log``): fastterm again as peer ``fastterm-log``, the same config with
  ``access_log`` on (JSON lines into the working directory), right after fastterm in every
  round: the two rows of a figure are the log's cost, measured in one run (nginx's and
  HAProxy's access logs stay off).

Scenarios (``--scenario``, comma-separated)
-------------------------------------------
- ``keepalive``: HTTPS requests/s, 1 KiB bodies, ``wrk`` with 50 keep-alive connections, and
  wrk's p50 and p99 of that run (``keepalive-p50``, ``-p99``): latency at saturation, each
  connection sending its next request as its answer comes;
- ``handshake``: full handshakes/s (a new connection per request), ECDSA and RSA, with
  parallel ``openssl s_time -new`` clients: wrk and h2load resume sessions on reconnect even
  with ``Connection: close``, s_time -new never does. The server's own record says what
  happened (fastterm: the admin counters of full/resumed handshakes; nginx and HAProxy: an
  access log of ``$ssl_session_reused`` / ``ssl_fc_is_resumed`` on the per-key ports): a
  "full handshake" run in which anything resumed is invalid;
- ``resumed``: resumed handshakes/s, one request per connection, Python ``ssl`` clients:
  ``resumed-id`` is TLS 1.2 with session IDs (the client refuses tickets: the server's
  session cache), ``resumed-ticket`` is TLS 1.3 with tickets; invalid when under 90 % of the
  server's handshakes resumed (the session cache or tickets are off in the config, say);
  ``resumed-0rtt`` is time to first response byte (median and p90, ms) of resumed TLS 1.3
  connections with the request in early data ("TTFB 0-RTT") and sent after the handshake
  ("TTFB 1-RTT resumed"), ``openssl s_client`` through a loopback relay adding
  ``--zerortt-delay`` ms each way, ``--zerortt-count`` of each, alternating, on a port of
  each peer with 0-RTT on (nginx ``ssl_early_data on``, HAProxy ``allow-0rtt``); invalid when
  under 90 % of the early data was accepted;
- ``reencrypt``: ``keepalive`` next to ``keepalive-reencrypt``, the same load to a backend that
  speaks TLS (a second nginx, its certificate from a CA made for the run): fastterm's
  ``https://`` upstream verifying it, nginx ``proxy_pass https://`` with ``keepalive``,
  ``proxy_ssl_verify on`` and ``proxy_ssl_session_reuse on``, HAProxy ``ssl verify required``
  (its server sessions reused by default);
- ``bulk``: 1 MiB downloads, MB/s (10^6 B/s), ``wrk`` with 4 connections;
- ``upload``: 1 MiB request bodies, MB/s, ``wrk`` with a Lua body, 4 connections;
- ``latency``: p50/p99/p99.9 in ms at a fixed offered rate (``--rate``, default 1,000 req/s,
  far below saturation) over 32 keep-alive connections. wrk2 is not packaged and wrk
  measures from the moment a request is *sent*, so a stall delays the following requests
  and hides itself (coordinated omission). The client here is open-loop: request i is
  issued at t0 + i/rate whatever happened before, and its latency counts from then, waiting
  for a free connection included, as wrk2 counts from the due time; the client's own
  lateness in issuing it (asyncio's millisecond timers fire up to 1 ms late, two thirds of
  the median) is left out. It is Python (asyncio + ``ssl``), so every figure includes the
  same client overhead for every terminator; it runs under SCHED_FIFO where allowed (root),
  once its connections are up, so that its wake-ups do not wait behind whatever else shares
  its CPU. All peers' clients run at once (one process each, request 0 due at the same
  instant, each connection's first request unmeasured), so that a busy moment of a shared
  machine falls on every peer alike; a run that could not keep the offered rate, or whose
  client issued 1 % of its requests over 10 ms late (its CPU busy), is invalid;
- ``connections``: 10,000 idle TLS connections (``--idle-connections``), each after one
  request, opened by a bounded client (non-blocking ``ssl`` sockets, 100 handshakes in
  flight); the figure is the growth of the RSS of all the terminator's processes per
  connection, in KiB, measured on a terminator restarted for the run (memory freed by an
  earlier run stays with the allocator and would hide the cost of the next);
- ``slowheaders``: what a slow-header flood (slowloris) costs everyone else. p50/p99 in ms
  of new-connection requests (a full handshake each, open-loop at ``--slow-rate``, default
  100/s, latency from the due time) alone, then while an attacker holds
  ``--slow-connections`` (default 100) TLS connections that send a request line and then
  one header byte every ``--slow-drip`` seconds (default 0.5) and reopen each one the
  server closes; and the p99 under attack over the p99 alone. The attacker opens its
  connections evenly over one header timeout before the measurement, so they time out and
  reopen during it as steadily as in a long attack; the 2 s ``--header-timeout`` keeps
  that ramp short (no other scenario leaves a header block unfinished). The run is invalid
  when the attacker held under 90 % of its connections on average;
- ``h2``: HTTP/2 requests/s, 1 KiB bodies, ``h2load`` with 50 connections and 10
  (``h2-m10``) or 100 (``h2-m100``) requests in flight on each: 500 or 5,000 streams that the
  terminator forwards as HTTP/1.1, one request per backend connection at a time. Next to each,
  the backend connections opened per request forwarded (``-backend-connects``): fastterm's
  admin counters, the backend's ``stub_status`` for the others (nginx keeps ``keepalive``
  idle connections per worker, fewer than the streams in flight, and opens the rest anew);
  unknown when the backend is not ours. A run that did not negotiate h2 is invalid. h2load
  runs a request count (``-n``), not ``-D``: h2load 1.52 (Debian 12) sometimes never exits
  once its duration is over. The count makes about ``--duration``: from a first unmeasured
  run through that peer (which also fills its backend pool, as a server under steady load
  has it), then from the previous round's rate;
- ``sweep``: ``keepalive`` at 10, 50, 200 and 1,000 client connections (``--connections``),
  runs ``keepalive-cN``, each with its backend connects per request as the h2 runs have
  them: what grows with concurrency (a pool that keeps fewer idle connections than the
  requests in flight opens new ones). The first connections of a run are counted too (at
  most one per client connection). Then ``keepalive-idle``: the 50-connection run again while
  ``--idle-connections`` (10,000) idle TLS connections, opened before the run's CPU and
  counters are read, stay open: what many quiet clients cost the busy ones. Not in the
  default run: five more runs per peer and round, and keepalive is its 50-connection one.

Rounds are interleaved (fastterm, nginx, haproxy, hitch, fastterm, nginx, ...); each figure is
reported as median, min and max over the valid rounds, as a ratio to nginx, and per second
of the terminator's own CPU time (utime+stime of all its processes from /proc): the fair
figure when the load generator, not the terminator, is the bottleneck, as it is for
handshakes on a small machine (the client's side of a handshake costs about twice the
server's). Runs with socket errors, non-2xx responses, the wrong handshake kind or a
terminator that died are flagged invalid and left out of the figures; the exit status is 1
when there is one.

Files: ``scenarios`` (runs, figures, units), ``system`` (tools, ports, CPUs, /proc),
``backends`` (the plain-HTTP backend, the TLS one), ``peers`` (the terminators' configs, start, stop, what
they recorded), ``loads`` (wrk, h2load, s_time and the Python clients, started pinned),
``clients`` (the Python load generators), ``run`` (rounds, measurement, validity),
``report`` (tables, markdown, JSON, plot); this file is the command's entry.
"""

from __future__ import annotations

import argparse
import sys

from fastterm.bench.run import run_bench
from fastterm.bench.scenarios import DEFAULT_SCENARIOS, SCENARIOS, SWEEP_CONNECTIONS
from fastterm.bench.system import BenchError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE",
                   help="take TLS settings, certificates, limits and workers from this fastterm.toml "
                        "(default: the demo's settings with a fresh local CA)")
    p.add_argument("--peers", default=None,
                   help="comma-separated terminators to compare with: nginx,haproxy,hitch (default: "
                        "those installed); 'none' for fastterm alone. hitch is a TCP proxy: its h2, "
                        "resumed-0rtt, slowheaders and keepalive-reencrypt runs are n/a")
    p.add_argument("--scenario", "--scenarios", dest="scenario", default=",".join(DEFAULT_SCENARIOS),
                   help=f"comma-separated: {', '.join(SCENARIOS)} (default: all but sweep)")
    p.add_argument("--connections", default=None,
                   help="sweep: comma-separated client connection counts (default "
                        f"{','.join(map(str, SWEEP_CONNECTIONS))})")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (HAProxy: threads) of every terminator (default: one per --cpus CPU)")
    p.add_argument("--cpus", default=None,
                   help="CPUs for the terminators, taskset syntax (default: CPU 0; the load generators "
                        "and the backend get the others)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per load run (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--rate", type=int, default=1000, help="latency: offered requests/s (default 1000)")
    p.add_argument("--idle-connections", type=int, default=10000, help="connections: how many (default 10000)")
    p.add_argument("--connection-rounds", type=int, default=1,
                   help="rounds of the connections scenario (default 1: each restarts the terminators and "
                        "opens 10,000 TLS connections, ~30 s, and its figure moved under 2 %% between rounds; "
                        "this keeps the default run short)")
    p.add_argument("--header-timeout", type=float, default=2.0,
                   help="client header timeout of every terminator, in place of the config's (default 2 s: "
                        "the slowheaders attack then times out and reconnects within a short run)")
    p.add_argument("--slow-connections", type=int, default=100,
                   help="slowheaders: connections the attacker holds (default 100)")
    p.add_argument("--slow-drip", type=float, default=0.5,
                   help="slowheaders: seconds between two header bytes on each (default 0.5)")
    p.add_argument("--slow-rate", type=int, default=100,
                   help="slowheaders: measured new-connection requests/s (default 100)")
    p.add_argument("--zerortt-count", type=int, default=20,
                   help="resumed-0rtt: connections per mode, with and without early data (default 20)")
    p.add_argument("--zerortt-delay", type=float, default=10.0,
                   help="resumed-0rtt: milliseconds the relay adds each way (default 10)")
    p.add_argument("--hs-clients", type=int, default=8, help="parallel handshake client processes (default 8)")
    p.add_argument("--path", default=None, help="request path of the small requests (default /1k)")
    p.add_argument("--backend", metavar="HOST:PORT",
                   help="use this running plain-HTTP backend (it must answer GET /1k, GET /1m, POST /upload)")
    p.add_argument("--target", metavar="https://HOST:PORT",
                   help="load an already-running terminator instead of starting any")
    p.add_argument("--target-admin", metavar="HOST:PORT",
                   help="with --target: fastterm's admin address, to check the handshake kinds")
    p.add_argument("--baseline", metavar="TREE",
                   help="also run fastterm from TREE, another checkout with its extension built (e.g. a git "
                        "worktree of an earlier commit), as peer fastterm-base: fastterm's ratio to it is "
                        "reported next to the ratio to nginx")
    p.add_argument("--access-log", action="store_true",
                   help="also run fastterm with its JSON access log on, as peer fastterm-log, right after "
                        "fastterm in every round: the log's cost (the peers' access logs stay off)")
    p.add_argument("--json", metavar="FILE", help="write every raw figure here")
    p.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios to nginx per scenario")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown (to paste in an issue)")
    p.add_argument("--keep", action="store_true", help="keep the working directory (configs, logs)")


def main(args: argparse.Namespace) -> int:
    try:
        return run_bench(args)
    except BenchError as exc:
        print(f"fastterm bench: {exc}", file=sys.stderr)
        return 2

