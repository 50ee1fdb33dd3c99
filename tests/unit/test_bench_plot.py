"""`fastterm bench --plot` draws every summary, also one where a lower-is-better figure was 0
for fastterm in some rounds (no backend connection opened): those rounds have no ratio bar of
their own, and the median then lies outside the other rounds' spread."""

import pytest

from fastterm.bench.report import plot

pytest.importorskip("matplotlib")


def _row(figure, peer, higher_is_better, ratio=None, ratios=(), per_cpu_ratio=None, cpu_ratios=()):
    return {"figure": figure, "peer": peer, "higher_is_better": higher_is_better, "ratio": ratio,
            "ratios": list(ratios), "per_cpu_ratio": per_cpu_ratio, "cpu_ratios": list(cpu_ratios)}


def test_plot_with_a_round_of_zero_backend_connects(tmp_path):
    # the figures of bench/results/2026-12-04-round2-default.json, whose plot had failed
    # with "'yerr' must not contain negative values"
    rows = [
        _row("keepalive", "fastterm", True, 1.42, (1.35, 1.49), 1.44, (1.38, 1.50)),
        _row("keepalive", "nginx", True),
        _row("h2-m10-backend-connects", "fastterm", False, 0.0026152847, (0.0, 0.0052305695)),
        _row("h2-m10-backend-connects", "nginx", False),
    ]
    out = tmp_path / "bench.png"
    plot(rows, str(out), "fastterm bench")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
