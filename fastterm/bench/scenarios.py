"""What is measured: each ``--scenario`` names runs, each run yields figures, each figure has
a unit and a direction; the client tool each run needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastterm.bench.system import BenchError

REFERENCE = "nginx"
BASELINE = "fastterm-base"   # --baseline TREE: fastterm from another checkout
ACCESS_LOG_PEER = "fastterm-log"   # --access-log: fastterm again, writing a JSON access log

# figure -> (unit, higher is better, per CPU-second unit or None)
FIGURES: dict[str, tuple[str, bool, str | None]] = {
    "keepalive": ("req/s", True, "req/CPU-s"),
    "keepalive-p50": ("ms", False, None),   # wrk's, at saturation (closed loop, 50 connections)
    "keepalive-p99": ("ms", False, None),
    "keepalive-reencrypt": ("req/s", True, "req/CPU-s"),   # keepalive, to a TLS backend
    "handshake-ecdsa": ("hs/s", True, "hs/CPU-s"),
    "handshake-rsa": ("hs/s", True, "hs/CPU-s"),
    "resumed-id": ("hs/s", True, "hs/CPU-s"),
    "resumed-ticket": ("hs/s", True, "hs/CPU-s"),
    # resumed-0rtt: time to first response byte through a relay adding --zerortt-delay each way
    "TTFB 1-RTT resumed p50": ("ms", False, None),
    "TTFB 1-RTT resumed p90": ("ms", False, None),
    "TTFB 0-RTT p50": ("ms", False, None),
    "TTFB 0-RTT p90": ("ms", False, None),
    "bulk": ("MB/s", True, "MB/CPU-s"),
    "upload": ("MB/s", True, "MB/CPU-s"),
    "latency-p50": ("ms", False, None),
    "latency-p99": ("ms", False, None),
    "latency-p99.9": ("ms", False, None),
    "connections": ("KiB/conn", False, None),
    "slowheaders-p50": ("ms", False, None),
    "slowheaders-p99": ("ms", False, None),
    "slowheaders-attack-p50": ("ms", False, None),
    "slowheaders-attack-p99": ("ms", False, None),
    "slowheaders-p99-ratio": ("×", False, None),
    "h2-m10": ("req/s", True, "req/CPU-s"),
    "h2-m10-backend-connects": ("conn/req", False, None),
    "h2-m100": ("req/s", True, "req/CPU-s"),
    "h2-m100-backend-connects": ("conn/req", False, None),
}
# --scenario name -> the runs it makes; a run -> the figures it yields
SCENARIOS = {
    "keepalive": ["keepalive"],
    "handshake": ["handshake-ecdsa", "handshake-rsa"],
    "resumed": ["resumed-id", "resumed-ticket", "resumed-0rtt"],
    "bulk": ["bulk"],
    "upload": ["upload"],
    "latency": ["latency"],
    "connections": ["connections"],
    "slowheaders": ["slowheaders"],
    "h2": ["h2-m10", "h2-m100"],
    "reencrypt": ["keepalive", "keepalive-reencrypt"],
}
RUN_FIGURES = {run: [run] for runs in SCENARIOS.values() for run in runs}
RUN_FIGURES["resumed-0rtt"] = ["TTFB 1-RTT resumed p50", "TTFB 1-RTT resumed p90", "TTFB 0-RTT p50",
                               "TTFB 0-RTT p90"]
RUN_FIGURES["keepalive"] = ["keepalive", "keepalive-p50", "keepalive-p99"]
RUN_FIGURES["latency"] = ["latency-p50", "latency-p99", "latency-p99.9"]
RUN_FIGURES["slowheaders"] = ["slowheaders-p50", "slowheaders-p99", "slowheaders-attack-p50",
                              "slowheaders-attack-p99", "slowheaders-p99-ratio"]
RUN_FIGURES.update({run: [run, f"{run}-backend-connects"] for run in SCENARIOS["h2"]})
# Which tool each run needs on the client side.
RUN_TOOLS = {"keepalive": "wrk", "keepalive-reencrypt": "wrk", "bulk": "wrk", "upload": "wrk", "handshake-ecdsa": "openssl",
             "handshake-rsa": "openssl", "resumed-0rtt": "openssl", "h2-m10": "h2load", "h2-m100": "h2load"}
# h2 runs: h2load's connections and the requests in flight on each (-c, -m).
H2_CONNECTIONS = 50
H2_STREAMS = {"h2-m10": 10, "h2-m100": 100}
# sweep: keepalive (wrk, 1 KiB) at each of these client connection counts (--connections)
SWEEP_CONNECTIONS = (10, 50, 200, 1000)
SWEEP: dict[str, int] = {}   # run -> wrk's connections


def sweep_runs(connections) -> list[str]:
    """The sweep's runs, ``keepalive-cN`` for each count N, registered with their figures: req/s
    and the backend connections opened per request forwarded, as the h2 runs have them."""
    runs = []
    for n in connections:
        run = f"keepalive-c{n}"
        FIGURES.setdefault(run, FIGURES["keepalive"])
        FIGURES.setdefault(f"{run}-backend-connects", ("conn/req", False, None))
        RUN_FIGURES[run] = [run, f"{run}-backend-connects"]
        RUN_TOOLS[run] = "wrk"
        SWEEP[run] = n
        runs.append(run)
    return runs


# keepalive-idle: the 50-connection keepalive run while --idle-connections (10,000) idle TLS
# connections stay open: what an edge's many quiet clients cost the busy ones
IDLE_RUN = "keepalive-idle"
FIGURES[IDLE_RUN] = FIGURES["keepalive"]
FIGURES[f"{IDLE_RUN}-backend-connects"] = ("conn/req", False, None)
RUN_FIGURES[IDLE_RUN] = [IDLE_RUN, f"{IDLE_RUN}-backend-connects"]
RUN_TOOLS[IDLE_RUN] = "wrk"
SWEEP[IDLE_RUN] = 50

SCENARIOS["sweep"] = sweep_runs(SWEEP_CONNECTIONS)
# The default --scenario: all but the sweep (4 runs more per peer and round; its 50-connection run
# is keepalive's), so that the default run stays near 5 minutes with the peers installed.
DEFAULT_SCENARIOS = [name for name in SCENARIOS if name != "sweep"]
ALL_RUNS = list(dict.fromkeys([*(r for runs in SCENARIOS.values() for r in runs), IDLE_RUN]))


def counts_backend(run: str) -> bool:
    """Whether the run reports backend connects per request (from the backend's own count for
    the peers that say nothing of theirs)."""
    return f"{run}-backend-connects" in RUN_FIGURES.get(run, ())


@dataclass
class Run:
    run: str          # "keepalive", "handshake-rsa", "latency", ...
    peer: str
    round: int
    figures: dict[str, float] = field(default_factory=dict)
    per_cpu: dict[str, float] = field(default_factory=dict)
    cpu_s: float | None = None
    wall_s: float = 0.0
    invalid: list[str] = field(default_factory=list)
    server: dict | None = None    # what the terminator recorded: full/resumed handshakes, non-2xx
    raw: dict = field(default_factory=dict)
    skipped: str | None = None    # not run here (a peer's fixed cap): neither a figure nor invalid


def parse_connections(spec: str) -> list[int]:
    try:
        counts = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise BenchError(f"--connections {spec!r}: client connection counts such as 10,50,200,1000")
    return list(dict.fromkeys(counts))


def parse_scenarios(spec: str, connections=SWEEP_CONNECTIONS) -> list[str]:
    runs: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part == "sweep":
            runs += [*sweep_runs(connections), IDLE_RUN]
        elif part in SCENARIOS:
            runs += SCENARIOS[part]
        elif part in ALL_RUNS:
            runs.append(part)
        else:
            raise BenchError(f"unknown scenario {part!r}: choose from {', '.join(SCENARIOS)} "
                             f"(or one of {', '.join(r for r in ALL_RUNS if r not in SCENARIOS)})")
    return list(dict.fromkeys(runs))

