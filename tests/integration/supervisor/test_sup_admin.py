"""The admin side: /metrics (Prometheus text 0.0.4, parsed strictly here), and the
``fastterm status | stop | run`` commands against a running master."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from conftest import pid_alive, wait_until
from httpwire import Reader

# ---------------------------------------------------------------------------------------
# A strict parser for the Prometheus text exposition format 0.0.4
# (https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format).

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{((?:{_LABEL}={_LABEL_VALUE})(?:,{_LABEL}={_LABEL_VALUE})*,?)?\}})?"
                     r" (\S+)(?: (-?\d+))?$")
_LABEL_PAIR = re.compile(rf"({_LABEL})=({_LABEL_VALUE})")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _value(text: str) -> float:
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    assert re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text), f"bad sample value {text!r}"
    return float(text)


def parse_prometheus(text: str) -> dict[str, dict]:
    """-> {family: {"type", "help", "samples": {(name, frozenset(labels)): value}}}; asserts
    every rule of the format: one HELP/TYPE per family before its samples, a family's lines
    together, names and labels well formed, no duplicate series, a final newline."""
    assert text.endswith("\n"), "exposition must end with a newline"
    families: dict[str, dict] = {}
    current = None
    closed: set[str] = set()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {n}: {line!r}"
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(_NAME, name), where
                fam = families.setdefault(name, {"type": None, "help": None, "samples": {}})
                assert name not in closed, f"{where}: family {name} split in two groups"
                if current is not None and current != name:
                    closed.add(current)
                current = name
                if parts[1] == "TYPE":
                    assert fam["type"] is None, f"{where}: second TYPE"
                    assert not fam["samples"], f"{where}: TYPE after samples"
                    assert len(parts) == 4 and parts[3] in _TYPES, where
                    fam["type"] = parts[3]
                else:
                    assert fam["help"] is None, f"{where}: second HELP"
                    fam["help"] = parts[3] if len(parts) == 4 else ""
            continue
        m = _SAMPLE.match(line)
        assert m, f"{where}: not a sample line"
        name, labels_text, value = m.group(1), m.group(2), m.group(3)
        fam_name = name
        if name not in families:
            for suffix in ("_bucket", "_sum", "_count"):
                base = name[: -len(suffix)]
                if name.endswith(suffix) and families.get(base, {}).get("type") in ("histogram", "summary"):
                    fam_name = base
        if fam_name not in families:
            families[fam_name] = {"type": None, "help": None, "samples": {}}
        assert fam_name not in closed, f"{where}: family {fam_name} split in two groups"
        if current is not None and current != fam_name:
            closed.add(current)
        current = fam_name
        labels = []
        if labels_text:
            labels = _LABEL_PAIR.findall(labels_text)
            names = [k for k, _ in labels]
            assert len(names) == len(set(names)), f"{where}: repeated label"
        key = (name, frozenset((k, v[1:-1]) for k, v in labels))
        samples = families[fam_name]["samples"]
        assert key not in samples, f"{where}: duplicate series"
        samples[key] = _value(value)
    return families


def sample(families: dict, name: str, **labels) -> float:
    for fam in families.values():
        key = (name, frozenset(labels.items()))
        if key in fam["samples"]:
            return fam["samples"][key]
    raise KeyError(f"no sample {name}{labels}")


# ---------------------------------------------------------------------------------------


def test_metrics_count_exactly(supervised):
    sup = supervised()
    per_connection = [4, 3, 3]
    n, m = sum(per_connection), len(per_connection)
    ctx = sup.client_context()
    session = None
    for count in per_connection:
        with sup.connect(ctx, session=session) as sock:
            reader = Reader(sock)
            for _ in range(count):
                assert sup.get(sock, "/", reader).status == 200
            assert sock.session_reused == (session is not None)
            session = session or sock.session

    def settled():
        fams = parse_prometheus(sup.metrics())
        return fams if sample(fams, "fastterm_requests_total", protocol="http/1.1") >= n else None

    fams = wait_until(settled, 3, 0.05, f"fastterm_requests_total to reach {n}")
    time.sleep(0.3)
    fams = parse_prometheus(sup.metrics())
    expected = {
        ("fastterm_requests_total", (("protocol", "http/1.1"),)): n,
        ("fastterm_requests_total", (("protocol", "h2"),)): 0,
        ("fastterm_h2_connections_total", ()): 0,
        ("fastterm_connections_total", ()): m,
        ("fastterm_responses_total", (("code", "2xx"),)): n,
        ("fastterm_responses_total", (("code", "4xx"),)): 0,
        ("fastterm_responses_total", (("code", "5xx"),)): 0,
        ("fastterm_handshakes_total", (("kind", "full"),)): 1,
        ("fastterm_handshakes_total", (("kind", "resumed"),)): m - 1,
        ("fastterm_workers", ()): 2,
        ("fastterm_generation", ()): 1,
        ("fastterm_reloads_total", ()): 0,
        ("fastterm_worker_restarts_total", ()): 0,
        ("fastterm_backend_errors_total", ()): 0,
    }
    got = {key: sample(fams, key[0], **dict(key[1])) for key in expected}
    assert got == expected
    assert sum(v for (name, _), v in fams["fastterm_tls_version_total"]["samples"].items()) == m
    assert fams["fastterm_requests_total"]["type"] == "counter"
    assert fams["fastterm_connections_open"]["type"] == "gauge"
    for name, fam in fams.items():
        assert fam["type"] and fam["help"], f"{name}: TYPE and HELP"
        assert name.startswith("fastterm_"), name
    # /status says the same, per worker.
    st = sup.status()
    assert sum(w["counters"]["requests_total"] for w in st["workers"]) == n
    assert sum(w["counters"]["connections_total"] for w in st["workers"]) == m

    # Counters are monotonic across a reload (exited workers' counts are kept).
    os.kill(sup.read_pid_file(), signal.SIGHUP)
    sup.wait_serving(2)
    fams = parse_prometheus(sup.metrics())
    assert sample(fams, "fastterm_requests_total", protocol="http/1.1") == n
    assert sample(fams, "fastterm_connections_total") == m
    assert sample(fams, "fastterm_responses_total", code="2xx") == n
    assert sample(fams, "fastterm_connections_open") == 0
    assert sample(fams, "fastterm_reloads_total") == 1
    assert sample(fams, "fastterm_generation") == 2


def test_parser_is_strict():
    ok = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1"} 2\na_total{x="2"} 3\n'
    assert sample(parse_prometheus(ok), "a_total", x="2") == 3
    for bad in ('a_total 1',                                               # no final newline
                '# TYPE a counter\na 1\n# TYPE b gauge\nb 1\na 2\n',       # family split
                '# TYPE a counter\na 1\na 1\n',                            # duplicate series
                'a{x=1} 1\n', 'a one\n', '# TYPE a countr\na 1\n',
                '# TYPE a counter\n# TYPE a counter\na 1\n', '1a 1\n'):
        try:
            parse_prometheus(bad)
        except AssertionError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_cli_status_stop_and_port_in_use(supervised):
    sup = supervised()
    r = sup.cli("status", "-c", sup.config_path)
    assert r.returncode == 0, r
    st = json.loads(r.stdout)
    assert st["master_pid"] == sup.pid == sup.read_pid_file()
    assert len(st["workers"]) == 2
    assert {w["slot"] for w in st["workers"]} == {0, 1}
    worker_pids = [w["pid"] for w in st["workers"]]
    sup.seen_pids.update(worker_pids)
    assert all(pid_alive(p) for p in worker_pids)

    # The same config again: refused ("in use"), and the first instance is left alone.
    try:
        second = subprocess.run([sup.python, "-m", "fastterm", "run", "-c", sup.config_path],
                                capture_output=True, text=True, env=sup.env, cwd=sup.tmp_path, timeout=20,
                                check=False)
    except subprocess.TimeoutExpired:
        raise AssertionError("a second `fastterm run` on the same port kept running") from None
    assert second.returncode == 1, second
    assert "in use" in second.stderr, second.stderr
    assert f":{sup.https_port}" in second.stderr, second.stderr
    assert sup.read_pid_file() == sup.pid, "the failed second run replaced the pid file"
    assert sup.worker_pids() == sorted(worker_pids)
    assert sup.request("/").status == 200

    started = time.monotonic()
    r = sup.cli("stop", "-c", sup.config_path, "--wait", timeout=20)
    assert r.returncode == 0, r
    assert time.monotonic() - started < 10
    assert not pid_alive(sup.pid)
    assert sup.proc.wait(timeout=5) == 0
    wait_until(lambda: not any(pid_alive(p) for p in worker_pids), 3, 0.05, "workers to exit")
    assert not Path(sup.pid_file).exists()
    r = sup.cli("status", "-c", sup.config_path)
    assert r.returncode == 1
    r = sup.cli("stop", "-c", sup.config_path)
    assert r.returncode == 1 and "no running fastterm" in r.stderr, r
