"""The summary of the runs: per figure and terminator the median, min and max, the ratios to
nginx (plain and per CPU-second) and fastterm's to a ``--baseline`` checkout; as a rich table,
markdown, JSON or a plot."""

from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import asdict

from fastterm.bench.scenarios import BASELINE, FIGURES, REFERENCE, RUN_FIGURES, Run


def fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    if 0 < abs(x) < 0.01:
        return f"{x:.2g}"   # backend connects per request near 0: 0.0004, not 0.00
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def round_ratios(runs: list[Run], run_of: str, fig: str, mine: list[Run], other: str) -> tuple[list, list]:
    """Each round's ratio of ``mine`` to ``other``'s run of that round, of the figure and per
    CPU-second: peers measured minutes apart on a noisy machine compare only within a round."""
    ref = {r.round: r for r in runs if r.run == run_of and r.peer == other}
    ratios, cpu_ratios = [], []
    for r in mine:
        o = ref.get(r.round)
        if o and fig in r.figures and o.figures.get(fig):
            ratios.append(r.figures[fig] / o.figures[fig])
        if o and fig in r.per_cpu and o.per_cpu.get(fig):
            cpu_ratios.append(r.per_cpu[fig] / o.per_cpu[fig])
    return ratios, cpu_ratios


def summarize(runs: list[Run], peers: list[str]) -> list[dict]:
    """One row per (figure, peer): median/min/max, ratio to nginx (median of per-round ratios);
    fastterm's row also its ratio to the baseline when ``--baseline`` ran one."""
    rows = []
    figures = [f for f in FIGURES if any(f in r.figures or f in RUN_FIGURES.get(r.run, []) for r in runs)]
    for fig in figures:
        unit, higher, cpu_unit = FIGURES[fig]
        run_of = next(r for r, figs in RUN_FIGURES.items() if fig in figs)
        for peer in peers:
            mine = [r for r in runs if r.run == run_of and r.peer == peer]
            values = [r.figures[fig] for r in mine if fig in r.figures]
            per_cpu = [r.per_cpu[fig] for r in mine if fig in r.per_cpu]
            ratios, cpu_ratios = round_ratios(runs, run_of, fig, mine, REFERENCE) if peer != REFERENCE else ([], [])
            base_ratios, base_cpu_ratios = (round_ratios(runs, run_of, fig, mine, BASELINE)
                                            if peer == "fastterm" and BASELINE in peers else ([], []))
            util = [100 * r.cpu_s / r.wall_s for r in mine if r.cpu_s is not None and r.wall_s and not r.invalid]
            rows.append({
                "figure": fig, "unit": unit, "higher_is_better": higher, "peer": peer,
                "median": median(values), "min": min(values) if values else None,
                "max": max(values) if values else None, "valid": len(values), "runs": len(mine),
                "ratio": median(ratios), "ratios": ratios,
                "per_cpu_unit": cpu_unit, "per_cpu": median(per_cpu), "per_cpu_ratio": median(cpu_ratios),
                "cpu_ratios": cpu_ratios, "server_cpu_pct": median(util),
                "base_ratio": median(base_ratios), "base_ratios": base_ratios,
                "base_per_cpu_ratio": median(base_cpu_ratios), "base_cpu_ratios": base_cpu_ratios,
            })
    return rows


COLUMNS = ("figure", "unit", "terminator", "median", "min–max", "×nginx", "per CPU-s", "×nginx per CPU-s",
           "srv CPU", "valid")
BASE_COLUMNS = ("×base", "×base per CPU-s")   # after "×nginx per CPU-s", when a baseline ran


def with_baseline(rows: list[dict]) -> bool:
    return any(r["peer"] == BASELINE for r in rows)


def columns(rows: list[dict]) -> tuple[str, ...]:
    return COLUMNS[:8] + BASE_COLUMNS + COLUMNS[8:] if with_baseline(rows) else COLUMNS


def row_cells(row: dict, base: bool = False) -> list[str]:
    better = "higher" if row["higher_is_better"] else "lower"
    cells = [
        row["figure"], f"{row['unit']} ({better} better)", row["peer"], fmt(row["median"]),
        f"{fmt(row['min'])}–{fmt(row['max'])}" if row["min"] is not None else "n/a",
        "" if row["peer"] == REFERENCE else fmt(row["ratio"]),
        fmt(row["per_cpu"]) if row["per_cpu_unit"] and row["per_cpu"] is not None else "",
        "" if row["peer"] == REFERENCE or row["per_cpu_ratio"] is None else fmt(row["per_cpu_ratio"]),
    ]
    if base:
        cells += [fmt(row["base_ratio"]) if row["peer"] == "fastterm" else "",
                  "" if row["base_per_cpu_ratio"] is None else fmt(row["base_per_cpu_ratio"])]
    return cells + [
        f"{fmt(row['server_cpu_pct'])} %" if row["server_cpu_pct"] is not None else "",
        f"{row['valid']}/{row['runs']}",
    ]


def markdown_table(rows: list[dict]) -> str:
    cols, base = columns(rows), with_baseline(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(row_cells(r, base)) + " |" for r in rows]
    return "\n".join(lines)


def print_table(rows: list[dict], console) -> None:
    if console is None:
        print(markdown_table(rows))
        return
    from rich.table import Table

    table = Table(title="fastterm bench", show_lines=False)
    base = with_baseline(rows)
    for c in columns(rows):
        # a figure's name is what a reader greps for: never wrapped or cut, the others shrink
        name_width = max((len(r["figure"]) for r in rows), default=0) if c == "figure" else None
        table.add_column(c, justify="left" if c in ("figure", "terminator") else "right",
                         no_wrap=c == "figure", min_width=name_width)
    last = None
    for r in rows:
        if last is not None and r["figure"] != last:
            table.add_section()
        last = r["figure"]
        table.add_row(*row_cells(r, base))
    console.print(table)


def plot(rows: list[dict], path: str, title: str) -> None:
    """Bars: each terminator's advantage over nginx per figure (>1: better than nginx), on a
    log scale from 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = [p for p in dict.fromkeys(r["peer"] for r in rows) if p != REFERENCE]
    figures = list(dict.fromkeys(r["figure"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(figures) * max(1, len(peers))), 5))
    width = 0.8 / max(1, 2 * len(peers))
    for i, peer in enumerate(peers):
        for j, (key, many, label) in enumerate((("ratio", "ratios", ""), ("per_cpu_ratio", "cpu_ratios", " per CPU-s"))):
            xs, ys, lo, hi = [], [], [], []
            for k, f in enumerate(figures):
                row = next((r for r in rows if r["figure"] == f and r["peer"] == peer), None)
                if row is None or not row[key]:   # 0: a lower-is-better figure nginx did not reach
                    continue                         # at all (fastterm 0 backend connects): no bar
                inv = (lambda v: v) if row["higher_is_better"] else (lambda v: 1 / v)
                vals = [inv(v) for v in row[many] if v]
                y = inv(row[key])
                xs.append(k + (2 * i + j - (2 * len(peers) - 1) / 2) * width)
                ys.append(y)
                # rounds whose ratio was 0 (fastterm opened no backend connection) have no
                # bar of their own, so the median can lie outside the rest: no negative whisker
                lo.append(max(0.0, y - min(vals)) if vals else 0)
                hi.append(max(0.0, max(vals) - y) if vals else 0)
            if xs:
                # from 1 (level with nginx), up when better, down when worse
                ax.bar(xs, [y - 1 for y in ys], width, bottom=1, yerr=[lo, hi], capsize=3,
                       label=f"{peer}{label}", hatch="//" if j else None, alpha=0.6 if j else 0.9)
    # log: 2x better and 2x worse are as far from 1, and a 700x fewer backend connects
    # does not flatten every other figure
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(figures)))
    ax.set_xticklabels(figures, rotation=30, ha="right")
    ax.set_ylabel("advantage over nginx (>1: better)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(args, runs: list[Run], peer_order: list[str], header: str, problems: list[str],
                 rich: bool) -> int:
    """Print the table (rich, or markdown with ``--markdown`` or without rich), the invalid
    runs and problems; write ``--json`` and ``--plot``. The exit status: 1 when a run was
    invalid or something went wrong, 2 when the plot needs matplotlib."""
    rows = summarize(runs, peer_order)
    invalid = [r for r in runs if r.invalid]
    skipped = sorted({f"{r.run} {r.peer}: {r.skipped}" for r in runs if r.skipped})
    if skipped:
        problems_note = "\nNot run: " + "; ".join(skipped)
    else:
        problems_note = ""
    if args.markdown:
        print(header + "\n")
        print(markdown_table(rows))
    else:
        if rich:
            from rich.console import Console
            out = Console()
            out.width = max(out.width, 150)
            out.print(header)
            print_table(rows, out)
        else:
            print(header)
            print(markdown_table(rows))
    if problems_note:
        print(problems_note)
    if invalid or problems:
        print("\nInvalid runs (left out of the figures):" if invalid else "\nProblems:")
        for r in invalid:
            print(f"- round {r.round} {r.run} {r.peer}: {'; '.join(r.invalid)}")
        if invalid and problems:
            print("\nProblems:")
        for p in problems:
            print(f"- {p}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": header, "argv": sys.argv[1:],
                       "args": {k: v for k, v in vars(args).items() if k not in ("func", "upload_lua")},
                       "peers": peer_order, "runs": [asdict(r) for r in runs], "summary": rows,
                       "problems": problems}, f, indent=1)
    if args.plot:
        try:
            plot(rows, args.plot, header[:160])
            print(f"\nplot: {os.path.abspath(args.plot)}")
        except ImportError:
            print("fastterm bench: --plot needs matplotlib (pip install 'fastterm[bench]')", file=sys.stderr)
            return 2
    return 1 if invalid or problems else 0

