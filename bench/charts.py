"""Charts of one run: W2's latency and node CPU per delivery against the send rate, one line per
server, and W3's memory and connect time per server; so the gap and where each server falls
over show at a glance.

    python -m bench.charts bench/results/latest.json [--out DIR]   # redraw from a saved run

The bench draws them itself after each run (w2-<generator>.svg, w3-<generator>.svg beside
latest.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .report import NAMES, SUSTAINED_P99_MS, servers_of, sustained

COLOURS = {"chat_app": "#1f77b4", "peer": "#2ca02c", "baseline": "#d62728"}
# Reproducible SVGs: no date, fixed ids, so a redraw of the same data changes no byte.
matplotlib.rcParams.update({"svg.hashsalt": "chat_app-bench", "svg.fonttype": "none", "font.size": 9})
METADATA = {"Date": None, "Creator": None}


def _title(results: dict[str, Any], what: str) -> str:
    return f"{what} — generator: {results.get('generator', 'lean')}, run {results['started']}"


def draw_w2(results: dict[str, Any], path: Path) -> Path | None:
    labels = [x for x in servers_of(results) if results[x].get("w2")]
    if not labels:
        return None
    panels = (
        ("p50_ms", "p50 latency (ms, log)", True),
        ("p99_ms", "p99 latency (ms, log)", True),
        ("node_cpu_us_per_delivery", "node CPU per delivery (µs, log)", True),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 4.2), layout="constrained")
    for ax, (key, name, log) in zip(axes, panels, strict=True):
        for label in labels:
            steps = sorted(results[label]["w2"], key=lambda s: s["rate"])
            rates = [s["rate"] for s in steps]
            values = [s[key] for s in steps]
            ax.plot(rates, values, color=COLOURS[label], label=NAMES[label], marker="o", markersize=4)
            missed = [(r, v) for r, v, s in zip(rates, values, steps, strict=True) if not sustained(s)]
            if missed:  # hollow markers: loss, refusals, unacked sends or p99 over the limit
                ax.scatter(*zip(*missed, strict=True), s=60, facecolors="white", edgecolors=COLOURS[label], zorder=3)
        if key == "p99_ms":
            ax.axhline(SUSTAINED_P99_MS, color="grey", linestyle="--", linewidth=0.8)
            ax.annotate(
                f"{SUSTAINED_P99_MS:.0f} ms: the sustained limit",
                (1.0, SUSTAINED_P99_MS),
                xycoords=("axes fraction", "data"),
                xytext=(-4, 3),
                textcoords="offset points",
                ha="right",
                color="grey",
                fontsize=8,
            )
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("W2 send rate (msg/s; each delivered to 10 members)")
        ax.set_title(name)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(title="hollow: not sustained", fontsize=8, title_fontsize=8)
    fig.suptitle(_title(results, "W2 fan-out, 2 nodes, 20 rooms x 10 members"))
    fig.savefig(path, metadata=METADATA)
    plt.close(fig)
    return path


def draw_w3(results: dict[str, Any], path: Path) -> Path | None:
    labels = [x for x in servers_of(results) if results[x].get("w3")]
    if not labels:
        return None
    panels = (
        ("rss_kib_per_connection", "RSS per idle joined connection (KiB)", "{:.1f}"),
        ("connect_and_join_total_s", "all connects + joins (s)", "{:.2f}"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(9, 3.6), layout="constrained")
    for ax, (key, name, fmt) in zip(axes, panels, strict=True):
        values = [results[x]["w3"][key] for x in labels]
        bars = ax.bar([NAMES[x].replace(" (", "\n(") for x in labels], values, color=[COLOURS[x] for x in labels])
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=8)
        ax.set_title(name)
        ax.margins(y=0.15)
    connections = results[labels[0]]["w3"]["connections"]
    fig.suptitle(_title(results, f"W3, {connections:,} idle connections over 2 nodes"))
    fig.savefig(path, metadata=METADATA)
    plt.close(fig)
    return path


def draw(results: dict[str, Any], out: Path) -> list[Path]:
    generator = results.get("generator", "lean")
    drawn = [draw_w2(results, out / f"w2-{generator}.svg"), draw_w3(results, out / f"w3-{generator}.svg")]
    return [p for p in drawn if p is not None]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.charts", description=__doc__)
    parser.add_argument("results", type=Path, help="a latest.json written by python -m bench")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: beside the JSON)")
    args = parser.parse_args()
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    for path in draw(json.loads(args.results.read_text()), out):
        print(path)


if __name__ == "__main__":
    main()
