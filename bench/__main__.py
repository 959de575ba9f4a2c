"""Run every workload against chat_app, the Node peer and the baseline in one invocation; print Markdown.

    python -m bench                        # the full run (~12 minutes on 2 cores)
    python -m bench --quick                # a shorter ladder and runs, to try things out
    python -m bench --generator official   # driven by socket.io-client in Node instead

Results also go to bench/results/latest.json and latest.md, and charts of W2 and W3 beside
them (w2-<generator>.svg, w3-<generator>.svg).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from . import nodejs, procs, report
from .workloads import LEAN, Generator, Server, routing, w1, w2, w3

# The per-connection send limit (20/s, burst 40) would refuse the benchmark's senders,
# which send up to 500 msg/s each: raised for chat_app's nodes. The peer and the baseline
# have none.
OURS = Server(
    "chat_app",
    procs.NodeSpec("wsgi:app", {"SEND_RATE": "100000", "SEND_BURST": "100000"}),
    "log",
)
PEER = Server("peer", procs.NodeSpec("", command=("node", "peer_server.js"), cwd=nodejs.NODE_DIR), "http")
BASELINE = Server("baseline", procs.NodeSpec("bench.baseline_server:app"), "http")
SERVERS = (OURS, PEER, BASELINE)
T = TypeVar("T")
LADDER = (500, 1000, 2000, 3000, 4000, 5000, 7500, 10000, 15000, 20000)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def event_loop_runner() -> Callable[[Coroutine[Any, Any, T]], T]:
    """uvloop where installed: a lighter per-frame cost for the lean generator."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def with_peer_if_node(servers: list[Server]) -> list[Server]:
    """`servers` without the peer when Node is missing, saying why."""
    if PEER in servers and (reason := nodejs.unavailable()):
        print(f"skipping the peer (socket.io on Node): {reason}", flush=True)
        return [s for s in servers if s is not PEER]
    return servers


def pick_generator(name: str) -> Generator:
    if name == "lean":
        return LEAN
    reason = nodejs.unavailable()
    if reason:
        raise SystemExit(f"--generator official needs Node: {reason}")
    from .official import OfficialGenerator

    return OfficialGenerator()


def pick_servers(names: str, skipped: dict[str, str]) -> tuple[Server, ...]:
    wanted = set(names.split(",")) if names else {s.label for s in SERVERS}
    if unknown := wanted - {s.label for s in SERVERS}:
        raise SystemExit(f"unknown server(s) {sorted(unknown)}: choose from {[s.label for s in SERVERS]}")
    if PEER.label in wanted and (reason := nodejs.unavailable()):
        print(f"skipping the peer (socket.io on Node): {reason}", flush=True)
        skipped[PEER.label] = reason
        wanted.discard(PEER.label)
    return tuple(s for s in SERVERS if s.label in wanted)


async def run(args: argparse.Namespace, generator: Generator, servers: tuple[Server, ...]) -> dict[str, Any]:
    ladder = tuple(float(r) for r in args.rates.split(",")) if args.rates else (1000, 3000) if args.quick else LADDER
    duration = 3.0 if args.quick else 10.0
    results: dict[str, Any] = {
        "started": utc_now(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "generator": generator.name,
        "generator_detail": generator.describe(),
        "load_before": load(),
        "w2_duration_s": duration,
        **{s.label: {"w2": []} for s in servers},
    }
    if PEER in servers:
        v = nodejs.versions()
        results["peer_detail"] = (
            f"socket.io {v['socket.io']} + @socket.io/redis-adapter {v['@socket.io/redis-adapter']} "
            f"(node-redis {v['redis']}, separate pub and sub) on Node {v.get('node', '?')}"
        )
    parts = set(args.only.split(",")) if args.only else {"w1", "w2", "w3", "routing"}
    for s in servers:  # interleaved per workload, so drifting background load hits all alike
        if "w1" in parts:
            results[s.label]["w1"] = await w1(s, duration=duration, generator=generator)
            log(s.label, "w1", results[s.label]["w1"])
    if "w2" in parts:
        for rate in ladder:
            for s in servers:
                step = await w2(s, rate, duration, generator=generator)
                results[s.label]["w2"].append(step)
                log(s.label, f"w2@{rate:g}", step)
    for s in servers:
        if "w3" in parts:
            connections = args.w3_connections or (500 if args.quick else 2000)
            results[s.label]["w3"] = await w3(s, connections=connections, generator=generator)
            log(s.label, "w3", results[s.label]["w3"])
        if "routing" in parts:
            results[s.label]["routing"] = await routing(s, generator=generator)
            log(s.label, "routing", results[s.label]["routing"])
    results["load_after"] = load()
    return results


def log(label: str, what: str, data: dict[str, Any]) -> None:
    keys = ("deliveries_per_s", "loss_pct", "p50_ms", "p99_ms", "node_cpu_us_per_delivery", "rss_kib_per_connection")
    keys += ("share_per_node", "refused", "generator_cpu_pct", "connect_and_join_total_s")
    keys += ("node_cpu_us_per_connect_join", "node_cpu_us_per_join", "redis_cpu_us_per_join")
    keys += ("rss_kib_per_connection_harness", "rss_kib_per_connection_by_time")
    brief = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in data.items() if k in keys}
    print(f"[{time.strftime('%H:%M:%S')}] {label:8} {what:8} {brief}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short ladder and runs")
    parser.add_argument("--only", default="", help="comma-separated subset of w1,w2,w3,routing")
    parser.add_argument("--rates", default="", help="comma-separated W2 rates instead of the ladder")
    parser.add_argument(
        "--w3-connections",
        type=int,
        default=0,
        help="W3's idle connections over its 2 nodes (default 2,000; 500 with --quick); the lean "
        "generator holds them all in one process, under its open-files limit",
    )
    parser.add_argument("--servers", default="", help="comma-separated subset of chat_app,peer,baseline")
    parser.add_argument(
        "--generator",
        choices=("lean", "official"),
        default="lean",
        help="lean: the asyncio client in bench/sioclient.py; official: socket.io-client 4.8 in one Node process",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="where to write results")
    args = parser.parse_args()
    generator = pick_generator(args.generator)
    skipped: dict[str, str] = {}
    servers = pick_servers(args.servers, skipped)
    results = event_loop_runner()(run(args, generator, servers))
    if skipped:
        results["skipped"] = skipped
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=1))
    markdown = report.markdown(results)
    (out / "latest.md").write_text(markdown)
    print(markdown)
    try:
        from . import charts
    except ImportError as error:  # matplotlib is in bench/requirements.txt; the tables do not need it
        print(f"no charts: {error}")
    else:
        for path in charts.draw(results, out):
            print(f"chart: {path}")


if __name__ == "__main__":
    main()
