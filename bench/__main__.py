"""Run every workload against chat_app and the baseline in one invocation; print Markdown.

    python -m bench              # the full run (~8 minutes on 2 cores)
    python -m bench --quick      # a shorter ladder and runs, to try things out

Results also go to bench/results/latest.json and latest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from . import procs, report
from .workloads import Server, routing, w1, w2, w3

# The per-connection send limit (20/s, burst 40) would refuse the benchmark's senders,
# which send up to 250 msg/s each: raised for chat_app's nodes. The baseline has none.
OURS = Server(
    "chat_app",
    procs.NodeSpec("wsgi:app", {"SEND_RATE": "100000", "SEND_BURST": "100000"}),
    "log",
)
BASELINE = Server("baseline", procs.NodeSpec("bench.baseline_server:app"), "http")
SERVERS = (OURS, BASELINE)
LADDER = (500, 1000, 2000, 3000, 4000, 5000, 7500, 10000)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ladder = tuple(float(r) for r in args.rates.split(",")) if args.rates else (1000, 3000) if args.quick else LADDER
    servers = tuple(s for s in SERVERS if not args.servers or s.label in args.servers.split(","))
    duration = 3.0 if args.quick else 10.0
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_before": load(),
        "w2_duration_s": duration,
        **{s.label: {"w2": []} for s in servers},
    }
    parts = set(args.only.split(",")) if args.only else {"w1", "w2", "w3", "routing"}
    for s in servers:  # interleaved per workload, so drifting background load hits both alike
        if "w1" in parts:
            results[s.label]["w1"] = await w1(s, duration=duration)
            log(s.label, "w1", results[s.label]["w1"])
    if "w2" in parts:
        for rate in ladder:
            for s in servers:
                step = await w2(s, rate, duration)
                results[s.label]["w2"].append(step)
                log(s.label, f"w2@{rate}", step)
    for s in servers:
        if "w3" in parts:
            results[s.label]["w3"] = await w3(s, connections=500 if args.quick else 2000)
            log(s.label, "w3", results[s.label]["w3"])
        if "routing" in parts:
            results[s.label]["routing"] = await routing(s)
            log(s.label, "routing", results[s.label]["routing"])
    results["load_after"] = load()
    return results


def log(label: str, what: str, data: dict[str, Any]) -> None:
    keys = ("deliveries_per_s", "loss_pct", "p50_ms", "p99_ms", "node_cpu_us_per_delivery", "rss_kib_per_connection")
    keys += ("share_per_node", "refused")
    brief = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in data.items() if k in keys}
    print(f"[{time.strftime('%H:%M:%S')}] {label:8} {what:8} {brief}", flush=True)


def servers_of(results: dict[str, Any]) -> list[str]:
    return [s.label for s in SERVERS if s.label in results]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short ladder and runs")
    parser.add_argument("--only", default="", help="comma-separated subset of w1,w2,w3,routing")
    parser.add_argument("--rates", default="", help="comma-separated W2 rates instead of the ladder")
    parser.add_argument("--servers", default="", help="comma-separated subset of chat_app,baseline")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="where to write results")
    args = parser.parse_args()
    try:
        import uvloop  # lighter per-frame cost for the generator

        results = uvloop.run(run(args))
    except ImportError:
        results = asyncio.run(run(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=1))
    markdown = report.markdown(results) if len(servers_of(results)) == 2 else json.dumps(results, indent=1)
    (out / "latest.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
