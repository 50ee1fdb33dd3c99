"""One ``fastterm bench`` run: peers and tools checked, the backend and the terminators started,
interleaved rounds of every run against every peer, each run measured and judged valid or
not, then the report."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import msgspec

from fastterm.bench.backends import (
    PATHS,
    REENCRYPT_PATH,
    UPLOAD_SIZE,
    backend_counts,
    quiet_backend_counts,
    start_backend,
    start_tls_backend,
)
from fastterm.bench.loads import UPLOAD_LUA, client_argv, run_h2load, run_resume_clients, run_s_time, run_wrk
from fastterm.bench.peers import (
    PEERS,
    FasttermPeer,
    Peer,
    baseline_commit,
    baseline_env,
    check_responses,
    load_setup,
    make_peers,
    served_kind,
)
from fastterm.bench.report import fmt, write_report
from fastterm.bench.scenarios import (
    BASELINE,
    FIGURES,
    H2_CONNECTIONS,
    H2_STREAMS,
    IDLE_RUN,
    RUN_TOOLS,
    SWEEP,
    SWEEP_CONNECTIONS,
    Run,
    counts_backend,
    parse_connections,
    parse_scenarios,
)
from fastterm.bench.system import (
    BenchError,
    cpu_list,
    cpu_spec,
    missing_tools_message,
    pinned,
    raise_fd_limit,
    tail,
    which,
)
from fastterm.process import stop as stop_process

# latency: a client that issued 1 % of its requests later than this behind its schedule
# stalled, and read the answers as late (its quiet p99 is ~1 ms, a busy machine's ~5 ms).
LATENCY_CLIENT_LAG_MS = 10
# latency: the clients' common start, from their launch: Python's start-up and 32 handshakes
# each, on a busy CPU.
LATENCY_START_S = 2.0


class Bench:
    def __init__(self, args, peers: list[Peer], client_cpus: str, env: dict, backend: str | None = None):
        self.args = args
        self.peers = peers
        self.client_cpus = client_cpus
        self.env = env
        self.backend = backend     # HOST:PORT, to count its accepted connections (h2 runs)
        self.h2_requests: dict[tuple[str, str], int] = {}   # (peer, run) -> h2load -n
        self.latency_round = 0
        self.latency_runs: dict[str, dict] = {}   # peer -> its part of the round's latency run

    def measure(self, peer: Peer, name: str, rnd: int) -> Run:
        """One run through one peer; keepalive-idle's with the idle connections held around it,
        opened before its CPU and counters are read (their handshakes are not its cost)."""
        if name == IDLE_RUN and name not in peer.cannot and not self.capped(peer):
            with self.idle_held(peer) as held:
                if held.get("error"):
                    run = Run(name, peer.name, rnd, raw=held)
                    run.invalid.append(f"idle connections: {held['error']}")
                    return run
                run = self._measure(peer, name, rnd)
                run.raw["idle_held"] = held["open"]
                return run
        return self._measure(peer, name, rnd)

    def capped(self, peer: Peer) -> bool:
        """Whether the peer cannot hold --idle-connections here (its fd limit)."""
        return peer.max_conns is not None and peer.max_conns < self.args.idle_connections + 100

    def _measure(self, peer: Peer, name: str, rnd: int) -> Run:
        a = self.args
        run = Run(name, peer.name, rnd)
        host = peer.host
        base = f"https://{host}:{peer.ports['main']}"
        if name in peer.cannot:
            run.skipped = peer.cannot[name]
            return run
        if name in ("connections", IDLE_RUN) and self.capped(peer):
            run.skipped = (f"{peer.name} is capped at {peer.max_conns} connections here (fd limit "
                           f"{resource.getrlimit(resource.RLIMIT_NOFILE)[1]})")
            return run
        if name == "connections" and peer.proc is not None:
            # A fresh process: freed memory stays in the allocator, so after an earlier round
            # the connections would fit in what the last one left and cost "nothing".
            peer.stop()
            peer.start()
        h2_requests = self.h2_count(peer, name) if name in H2_STREAMS else 0
        counts0 = quiet_backend_counts(self.backend) if self.backend and counts_backend(name) else None
        mark = peer.mark()
        cpu0, t0 = peer.cpu(), time.monotonic()
        amount = None
        if name == "keepalive" or name in SWEEP:
            raw = run_wrk(self.client_cpus, base + a.path, SWEEP.get(name, 50), a.duration,
                          latency=name == "keepalive")
            amount = raw.get("requests")
        elif name == "keepalive-reencrypt":
            raw = run_wrk(self.client_cpus, base + REENCRYPT_PATH, 50, a.duration)
            amount = raw.get("requests")
        elif name == "bulk":
            raw = run_wrk(self.client_cpus, base + PATHS["bulk"], 4, a.duration)
            amount = raw["bytes"] / 1e6 if "bytes" in raw else None
        elif name == "upload":
            raw = run_wrk(self.client_cpus, base + PATHS["upload"], 4, a.duration, script=a.upload_lua)
            amount = raw["requests"] * UPLOAD_SIZE / 1e6 if "requests" in raw else None
        elif name.startswith("handshake-"):
            port = peer.ports.get(name.split("-", 1)[1])
            raw = run_s_time(self.client_cpus, host, port, a.hs_clients, a.duration, a.path)
            amount = raw.get("handshakes")
        elif name == "resumed-0rtt" and peer.name == BASELINE and "early" not in peer.ports:
            run.skipped = f"{BASELINE} is from before 0-RTT ([server.tls] early_data)"
            return run
        elif name == "resumed-0rtt":
            raw = self.zerortt(peer)
        elif name.startswith("resumed-"):
            mode = name.split("-", 1)[1]
            port = peer.ports.get("ecdsa", peer.ports["main"])
            raw = run_resume_clients(self.client_cpus, host, port, mode, a.hs_clients, a.duration, a.path,
                                     self.env)
            amount = raw.get("handshakes")
            if raw.get("handshakes") and raw["reused"] < 0.9 * raw["handshakes"]:
                run.invalid.append(f"the client resumed only {raw['reused']} of {raw['handshakes']} handshakes")
        elif name in H2_STREAMS:
            raw = run_h2load(self.client_cpus, base + a.path, H2_CONNECTIONS, H2_STREAMS[name], h2_requests,
                             10 * a.duration + 30)
            amount = raw.get("requests")
            if amount and raw.get("elapsed"):   # the next round's count, from this one's rate
                self.h2_requests[(peer.name, name)] = max(h2_requests // 4, int(amount / raw["elapsed"] * a.duration))
        elif name == "latency":
            raw = self.latency(peer, rnd)
        elif name == "slowheaders":
            raw = self.slowheaders(peer)
        elif name == "connections":
            raw = self.connections(peer)
        else:  # pragma: no cover
            raise AssertionError(name)
        run.wall_s = time.monotonic() - t0
        cpu1 = peer.cpu()
        run.cpu_s = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
        if name == "latency" and "wall_s" in raw:   # measured with the round's other peers
            run.wall_s, run.cpu_s = raw.pop("wall_s"), raw.pop("cpu_s")
        run.raw = raw
        run.server = peer.seen_since(mark)
        if counts0 is not None and (counts1 := backend_counts(self.backend)) is not None:
            # Less the second probe's own connection and request.
            raw["backend_accepts"], raw["backend_requests"] = (after - before - 1
                                                               for before, after in zip(counts0, counts1))
        self.validate(peer, run)
        if not run.invalid:
            if name == "latency":
                run.figures = {f"latency-{k}": raw[k] for k in ("p50", "p99", "p99.9")}
            elif name == "resumed-0rtt":
                run.figures = {f"TTFB {label} {q}": raw[f"{mode}_{q}"]
                               for mode, label in (("1rtt", "1-RTT resumed"), ("0rtt", "0-RTT"))
                               for q in ("p50", "p90") if f"{mode}_{q}" in raw}
            elif name == "connections":
                run.figures = {"connections": raw["kib_per_conn"]} if raw.get("kib_per_conn") is not None else {}
            elif name == "slowheaders":
                base, attack = raw["baseline"], raw["attack"]
                run.figures = {"slowheaders-p50": base["p50"], "slowheaders-p99": base["p99"],
                               "slowheaders-attack-p50": attack["p50"],
                               "slowheaders-attack-p99": attack["p99"],
                               "slowheaders-p99-ratio": attack["p99"] / base["p99"]}
            elif amount is not None:
                elapsed = raw.get("elapsed") or run.wall_s
                run.figures = {name: amount / elapsed}
                if name == "keepalive":
                    run.figures.update({f"keepalive-{q}": raw[q] for q in ("p50", "p99") if q in raw})
                if run.cpu_s:
                    run.per_cpu = {name: amount / run.cpu_s}
            if counts_backend(name) and (connects := self.backend_connects(run)) is not None:
                run.figures[f"{name}-backend-connects"] = connects
        return run

    def h2_count(self, peer: Peer, name: str) -> int:
        """How many requests make an h2 run of about ``--duration`` through this peer: from
        a first, unmeasured run of 4 per stream (which also warms its backend pool), then from
        the last round's rate."""
        key = (peer.name, name)
        if key not in self.h2_requests:
            streams = H2_CONNECTIONS * H2_STREAMS[name]
            url = f"https://{peer.host}:{peer.ports['main']}{self.args.path}"
            probe = run_h2load(self.client_cpus, url, H2_CONNECTIONS, H2_STREAMS[name], 4 * streams, 60)
            rate = probe["requests"] / probe["elapsed"] if probe.get("requests") and probe.get("elapsed") else 0
            self.h2_requests[key] = max(2 * streams, int(rate * self.args.duration))
        return self.h2_requests[key]

    def backend_connects(self, run: Run) -> float | None:
        """Backend connections opened per request forwarded: fastterm's own counters when it
        is the peer, else the connections and requests the backend counted during the run;
        None when neither can say."""
        srv, raw = run.server, run.raw
        if srv is not None and "backend_connects" in srv and srv["requests"]:
            return srv["backend_connects"] / srv["requests"]
        if raw.get("backend_requests"):
            return raw["backend_accepts"] / raw["backend_requests"]
        return None

    def validate(self, peer: Peer, run: Run) -> None:
        raw, name = run.raw, run.run
        for key, what in (("error", "client failure"), ("socket_errors", "socket errors"),
                          ("client_errors", "client errors"), ("errors", "errors"), ("non2xx", "non-2xx responses")):
            if raw.get(key):
                run.invalid.append(f"{what}: {raw[key]}")
        srv = run.server
        if srv is not None:
            # The slowheaders attack's 408s are the server's non-2xx; the measured requests are
            # counted by the client.
            if srv["non2xx"] and not raw.get("non2xx") and name != "slowheaders":
                run.invalid.append(f"the server answered {srv['non2xx']} non-2xx responses")
            if name.startswith("handshake-") and srv["resumed"]:
                run.invalid.append(f"wrong handshake kind: {srv['resumed']} of {srv['full'] + srv['resumed']} "
                                   "handshakes resumed in a full-handshake run")
            # resumed-0rtt: the client checks that it resumed; the server may answer and close
            # before the client's Finished (a 0-RTT GET with Connection: close), uncounted then
            if name.startswith("resumed-") and name != "resumed-0rtt" and \
                    srv["resumed"] < 0.9 * (srv["full"] + srv["resumed"]):
                run.invalid.append(f"wrong handshake kind: only {srv['resumed']} of {srv['full'] + srv['resumed']} "
                                   "handshakes resumed (session cache or tickets off?)")
            if name.startswith(("handshake-", "resumed-")) and srv["full"] + srv["resumed"] == 0:
                run.invalid.append("the server recorded no handshake")
        if not peer.alive():
            run.invalid.append(f"{peer.name} died (exit {peer.proc.returncode}): {tail(peer.log_path, 5)}")
        if name.startswith("handshake-") and raw.get("handshakes") == 0:
            run.invalid.append("no handshake completed")

    def latency(self, peer: Peer, rnd: int) -> dict:
        """Every peer's latency client runs at once, one process each, started together and
        measured over the same seconds: a busy moment of the shared machine (someone's build,
        a backend that waited for its CPU) then falls on every peer alike. One peer after
        another, each had moments of its own: an identical build's p99 read 0.5x to 4.9x its
        own round by round. The first peer of a round runs them all, the rest take their part."""
        if self.latency_round != rnd:
            self.latency_round, self.latency_runs = rnd, self.latency_all()
        return self.latency_runs.pop(peer.name, {"error": "not measured with the round's other peers"})

    def latency_all(self) -> dict[str, dict]:
        a = self.args
        peers = [p for p in self.peers if "latency" not in p.cannot and p.alive()]
        cpu0 = {p.name: p.cpu() for p in peers}
        t0 = time.monotonic()
        start = t0 + LATENCY_START_S   # request 0 of every client, once all have their connections
        procs = {p.name: subprocess.Popen(
            pinned(self.client_cpus, client_argv("latency", p.host, str(p.ports["main"]), str(a.rate),
                                                 str(a.duration), a.path, "32", repr(start))),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env) for p in peers}
        out = {name: self.latency_result(proc) for name, proc in procs.items()}
        wall = time.monotonic() - t0
        for p in peers:
            cpu1 = p.cpu()
            out[p.name]["cpu_s"] = cpu1 - cpu0[p.name] if cpu0[p.name] is not None and cpu1 is not None else None
            out[p.name]["wall_s"] = wall
        return out

    def latency_result(self, proc: subprocess.Popen) -> dict:
        a = self.args
        try:
            stdout, stderr = proc.communicate(timeout=a.duration + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        try:
            raw = json.loads(stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"latency client exit {proc.returncode}: {stderr.strip()[-300:]}"}
        if raw["done"] < 0.95 * raw["offered"]:
            raw["error"] = (f"offered {raw['offered']} requests at {a.rate}/s, {raw['done']} answered in time: "
                            "the rate is above saturation (lower --rate)")
        elif raw["lag_p99"] is not None and raw["lag_p99"] > LATENCY_CLIENT_LAG_MS:
            raw["error"] = (f"the client issued 1 % of its requests over {raw['lag_p99']:.1f} ms late "
                            f"(over {LATENCY_CLIENT_LAG_MS} ms: its CPU was busy)")
        return raw

    def zerortt(self, peer: Peer) -> dict:
        """resumed-0rtt: --zerortt-count resumed connections with the request in early data
        and as many without, on the peer's port with 0-RTT on (bounded to a minute and a half)."""
        a = self.args
        port = peer.ports.get("early", peer.ports["main"])
        budget = 90.0
        argv = pinned(self.client_cpus, client_argv("zerortt", peer.host, str(port), str(a.zerortt_count),
                                                    str(a.zerortt_delay / 1000), a.path, str(budget)))
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=budget + 30, env=self.env)
        try:
            return json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"0-RTT client exit {res.returncode}: {res.stderr.strip()[-300:]}"}

    def newconn(self, peer: Peer) -> dict:
        a = self.args
        argv = pinned(self.client_cpus, client_argv("newconn", peer.host, str(peer.ports["main"]),
                                                    str(a.slow_rate), str(a.duration), a.path))
        res = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=a.duration + 60,
                             env=self.env)
        try:
            raw = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": f"new-connection client exit {res.returncode}: {res.stderr.strip()[-300:]}"}
        if raw["done"] < 0.95 * raw["offered"]:
            raw["error"] = f"offered {raw['offered']} requests, {raw['done']} answered"
        return raw

    def slowheaders(self, peer: Peer) -> dict:
        """New-connection latency alone, then while the attacker holds its slow-header
        connections (opened over one header timeout, so that they expire and reopen as
        steadily as a long-running attack's)."""
        a = self.args
        raw: dict = {"baseline": self.newconn(peer)}
        argv = pinned(self.client_cpus, client_argv("slowheaders", peer.host, str(peer.ports["main"]),
                                                    str(a.slow_connections), str(a.slow_drip),
                                                    str(a.header_timeout), a.path))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)
        try:
            line = proc.stdout.readline()
            if not line.startswith("RAMPED"):
                raw["error"] = f"slow-header client: {proc.stderr.read()[-300:]}"
                return raw
            raw["attack"] = self.newconn(peer)
            proc.stdin.write("\n")
            proc.stdin.flush()
            attacker = json.loads(proc.stdout.readline())
        except (OSError, ValueError) as exc:
            raw["error"] = f"slow-header client: {exc}"
            return raw
        finally:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raw["attacker"] = attacker
        problems = [f"{k}: {raw[k]['error']}" for k in ("baseline", "attack") if raw[k].get("error")]
        if attacker["held_mean"] < 0.9 * a.slow_connections:
            problems.append(f"the attacker held {attacker['held_mean']:.0f} of {a.slow_connections} "
                            f"connections on average (at least {attacker['held_min']})")
        if problems:
            raw["error"] = "; ".join(problems)
        for key in ("errors", "non2xx"):
            raw[key] = raw["baseline"].get(key, 0) + raw["attack"].get(key, 0)
        return raw

    def connections(self, peer: Peer) -> dict:
        """KiB per idle connection: the peer's RSS before and while --idle-connections are held."""
        before = peer.rss_kib()
        with self.idle_held(peer) as raw:
            if raw.get("error"):
                return raw
            time.sleep(0.5)   # let the terminator settle (freed handshake state, lent buffers back)
            after = peer.rss_kib()
            raw.update(rss_before_kib=before, rss_after_kib=after)
            if before is not None and after is not None and raw["open"]:
                raw["kib_per_conn"] = (after - before) / raw["open"]
            return raw

    @contextlib.contextmanager
    def idle_held(self, peer: Peer):
        """--idle-connections TLS connections to the peer, each after one request, held open
        for the ``with`` body (the client then sleeps); the counts, or an error."""
        a = self.args
        argv = pinned(self.client_cpus, client_argv("connections", peer.host, str(peer.ports["main"]),
                                                    str(a.idle_connections), a.path))
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env)
        raw: dict = {}
        try:
            line = ""
            deadline = time.monotonic() + 120 + a.idle_connections / 200
            while time.monotonic() < deadline and proc.poll() is None:
                line = proc.stdout.readline()
                if line.startswith("READY"):
                    break
            if not line.startswith("READY"):
                raw["error"] = f"connections client: {proc.stderr.read()[-300:] if proc.poll() is not None else 'timed out'}"
            else:
                _, ok, errors, non2xx = line.split()
                raw.update(open=int(ok), errors=int(errors), non2xx=int(non2xx))
                if int(ok) < a.idle_connections:
                    raw["error"] = f"opened {ok} of {a.idle_connections} connections"
            yield raw
        finally:
            try:
                proc.stdin.write("\n")
                proc.stdin.flush()
            except OSError:
                pass
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _console():
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(stderr=True)


def run_bench(args: argparse.Namespace) -> int:
    connections = parse_connections(args.connections) if args.connections else SWEEP_CONNECTIONS
    runs_wanted = parse_scenarios(args.scenario, connections)
    if args.rounds < 1 or args.duration < 1:
        raise BenchError("--rounds and --duration must be at least 1")
    available = sorted(os.sched_getaffinity(0))
    try:
        server_cpus = cpu_list(args.cpus) if args.cpus else available[:1]
    except ValueError:
        raise BenchError(f"--cpus {args.cpus!r}: a taskset CPU list such as 0 or 0-1") from None
    if set(server_cpus) - set(available):
        raise BenchError(f"--cpus {args.cpus}: CPUs available here are {cpu_spec(available)}")
    client_cpus = [c for c in available if c not in server_cpus] or available
    console = _console()
    if console is None:
        print("fastterm bench: rich is not installed (pip install 'fastterm[bench]'): plain progress",
              file=sys.stderr)

    def say(msg: str) -> None:
        if console:
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {msg}", highlight=False)
        else:
            print(f"[bench] {msg}", file=sys.stderr, flush=True)

    target = None
    if args.target:
        m = re.fullmatch(r"https://(\[[^\]]+\]|[^:/]+)(?::(\d+))?/?", args.target)
        if not m:
            raise BenchError(f"--target {args.target!r}: want https://HOST:PORT")
        target = (m.group(1).strip("[]"), int(m.group(2) or 443))
        if args.baseline:
            raise BenchError("--baseline starts a second fastterm next to the first: not with --target")
        if args.access_log:
            raise BenchError("--access-log starts a second fastterm next to the first: not with --target")

    # Peers and tools.
    if target:
        peer_names = []
    elif args.peers is None:
        peer_names = [p for p in PEERS if which(p)]
    else:
        peer_names = [p for p in args.peers.split(",") if p and p != "none"]
        if bad := set(peer_names) - set(PEERS):
            raise BenchError(f"--peers: unknown {', '.join(sorted(bad))} ({', '.join(PEERS)})")
    missing: dict[str, str] = {}
    for p in peer_names:
        if not which(p):
            missing[p] = f"--peers {p}"
    for r in runs_wanted:
        tool = RUN_TOOLS.get(r)
        if tool and not which(tool):
            missing.setdefault(tool, f"the {r} scenario")
    if not which("taskset") and not target:
        missing["taskset"] = "pinning the terminators to --cpus"
    if missing:
        raise BenchError(missing_tools_message(missing))
    if not target and len(available) < 2:
        say("warning: one CPU: the load generators compete with the terminators")
    raise_fd_limit(max(65536, 4 * args.idle_connections + 1000))
    baseline = None
    if args.baseline:
        tree = os.path.realpath(args.baseline)
        baseline = (tree, baseline_env(tree, dict(os.environ)))

    workdir = tempfile.mkdtemp(prefix="fastterm-bench-")
    os.chmod(workdir, 0o755)   # nginx workers (user nobody when run as root) read below it
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    started: list[Peer] = []
    backend_proc: subprocess.Popen | None = None
    tls_backend = None
    runs: list[Run] = []
    problems: list[str] = []
    t_start = time.monotonic()
    args.upload_lua = os.path.join(workdir, "upload.lua")
    with open(args.upload_lua, "w") as f:
        f.write(UPLOAD_LUA)
    try:
        peers: list[Peer] = []
        if target:
            peer = FasttermPeer("target", {"main": target[1]}, host=target[0]) if args.target_admin \
                else Peer("target", {"main": target[1]}, host=target[0])
            if args.target_admin:
                peer.admin_port = int(args.target_admin.rsplit(":", 1)[1])
            kind = served_kind(target)
            peer.ports[kind] = target[1]
            runs_wanted = [r for r in runs_wanted if not (r.startswith("handshake-") and r != f"handshake-{kind}")
                           and r != "keepalive-reencrypt"]   # its route to a TLS backend is ours
            peers.append(peer)
            setup_desc = f"target {args.target} ({kind} certificate)"
        else:
            setup = load_setup(args.config, workdir, args.workers, server_cpus)
            setup.idle_connections = args.idle_connections
            setup.early_data = "resumed-0rtt" in runs_wanted and "TLSv1.3" in setup.tls.protocols
            if "resumed-0rtt" in runs_wanted and not setup.early_data:
                say("resumed-0rtt left out: the settings have no TLSv1.3 (0-RTT is TLS 1.3's)")
                runs_wanted.remove("resumed-0rtt")
            setup.limits = msgspec.structs.replace(setup.limits, client_header_timeout=args.header_timeout)
            setup_desc = (f"settings from {setup.source}; {setup.workers} worker(s) on CPU {cpu_spec(server_cpus)}, "
                          f"clients and backend on CPU {cpu_spec(client_cpus)}")
            if baseline:
                setup_desc += f"; {BASELINE}: {baseline_commit(baseline[0])}"
            runs_wanted = [r for r in runs_wanted
                           if not (r.startswith("handshake-") and r.split("-", 1)[1] not in setup.certs)]
            backend = args.backend
            if backend is None:
                backend, backend_proc = start_backend(workdir, cpu_spec(client_cpus), env)
            if "keepalive-reencrypt" in runs_wanted:
                tls_backend = start_tls_backend(workdir, cpu_spec(client_cpus), env)
                setup.tls_backend = tls_backend
                say(f"TLS backend https://{tls_backend.address} (verified with {tls_backend.ca_file})")
            say(f"working directory {workdir}; backend http://{backend}")
            peers = make_peers(setup, workdir, backend, peer_names, cpu_spec(server_cpus), env, repo_root,
                               baseline, args.access_log)
            for peer in peers:
                say(f"starting {peer.name} on ports {peer.ports}")
                peer.start()
                started.append(peer)
            for peer in peers:
                problems += [f"before: {p}" for p in check_responses(peer)]
        args.path = args.path or PATHS["small"]
        for p in problems:
            say(f"[red]problem[/red]: {p}" if console else f"problem: {p}")

        bench = Bench(args, peers, cpu_spec(client_cpus), env, None if target else backend)
        def wanted(name: str, rnd: int) -> bool:
            return name != "connections" or rnd <= args.connection_rounds

        total = sum(wanted(name, rnd) for rnd in range(1, args.rounds + 1) for name in runs_wanted) * len(peers)
        progress = None
        if console:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=console, transient=False)
            progress.start()
            task = progress.add_task("starting", total=total)
        try:
            for rnd in range(1, args.rounds + 1):
                for name in [n for n in runs_wanted if wanted(n, rnd)]:
                    for peer in peers:
                        desc = f"round {rnd}/{args.rounds} · {name} · {peer.name}"
                        if progress:
                            progress.update(task, description=desc)
                        if not peer.alive():
                            problems.append(f"{peer.name} died (exit {peer.proc.returncode}); restarted:\n"
                                            f"{tail(peer.log_path)}")
                            say(problems[-1])
                            peer.start()
                        r = bench.measure(peer, name, rnd)
                        runs.append(r)
                        if r.skipped:
                            say(f"{desc}: skipped: {r.skipped}")
                            if progress:
                                progress.advance(task)
                            continue
                        shown = ", ".join(f"{k} {fmt(v)} {FIGURES[k][0]}" for k, v in r.figures.items())
                        say(f"{desc}: {shown or '-'}" + (f"  [bold red]INVALID[/]: {'; '.join(r.invalid)}"
                                                         if r.invalid and console else
                                                         f"  INVALID: {'; '.join(r.invalid)}" if r.invalid else ""))
                        if progress:
                            progress.advance(task)
        finally:
            if progress:
                progress.stop()
        if not target:
            for peer in peers:
                if peer.alive():
                    problems += [f"after: {p}" for p in check_responses(peer)]
    finally:
        for peer in reversed(started):
            peer.stop()
        if backend_proc is not None:
            stop_process(backend_proc, timeout=10)
        if tls_backend is not None:
            stop_process(tls_backend.proc, timeout=10)
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    peer_order = [p.name for p in peers]
    header = (f"fastterm bench: {setup_desc}; {args.rounds} round(s) x {args.duration:g} s; "
              f"handshakes: openssl s_time -new x{args.hs_clients}; latency at {args.rate} req/s; "
              f"connections: {args.idle_connections}; {time.monotonic() - t_start:.0f} s in all")
    return write_report(args, runs, peer_order, header, problems, console is not None)
