"""W6: many idle joined connections on ONE node (issue 15), beside the Node peer.

    python -m bench.w6                        # 20,000 connections in 1,000 rooms
    python -m bench.w6 --connections 5000 --servers chat_app
    python -m bench.w6 --servers chat_app --profile 15   # py-spy on the idle node

Reports, per server: whether all connected, connect + join time, RSS per connection, the
node's CPU while the connections sit idle (% of one core over --idle seconds, which for
chat_app spans several heartbeats), chat_app's last heartbeat round (its /metrics), and a
W1-shaped probe (one sender and one receiver in a room of their own on the node, --probe-rate
msg/s) run on the empty node first and then beside the idle connections: the latency
"through that loaded node" next to the same node empty.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import nodejs
from .__main__ import OURS, PEER
from .profile import RESULTS, summarise
from .workloads import LEAN, FanOut, Member, Server, cluster, fanout_result, percentile


def _raise_open_files(wanted: int) -> None:
    """For the generator and, inherited, the nodes it starts: raising the hard limit needs
    root (CAP_SYS_RESOURCE); otherwise the soft one goes as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, wanted), hard), hard))


async def probe(port: int, rate: float, seconds: float) -> dict[str, float]:
    """W1's shape on one node: room0 (the idle members use room1...) with a sender and a
    measured receiver, open loop at `rate` msg/s for `seconds`."""
    f = FanOut(1, int(rate * seconds) + 2)
    members = [Member(port, "probe-sender", 0, measure=False, sender=True), Member(port, "probe-receiver", 0)]
    async with LEAN.fanout(members, f) as session:
        sent = await session.send(rate, seconds)
    result = fanout_result(sent.fanout, sent.t0, sent.wall_s, sent.generator_cpu_s)
    return {"p50_ms": round(result["p50_ms"], 2), "p99_ms": round(result["p99_ms"], 2), "lost": result["lost"]}


_HEARTBEAT = re.compile(rb"^(chat_presence_heartbeat\w*)\{[^}]*\} (\S+)$", re.M)


def heartbeats(port: int) -> dict[str, float]:
    """The node's heartbeat figures from /metrics (chat_app only): the last round, rounds
    and their total time."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return {name.decode(): float(value) for name, value in _HEARTBEAT.findall(r.read())}
    except OSError:
        return {}


def heartbeat_figures(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The last round, and the mean and count of the rounds between the two reads."""
    if "chat_presence_heartbeat_seconds" not in after:
        return {}
    rounds = after["chat_presence_heartbeats_total"] - before.get("chat_presence_heartbeats_total", 0)
    spent = after["chat_presence_heartbeat_duration_seconds_total"] - before.get(
        "chat_presence_heartbeat_duration_seconds_total", 0
    )
    figures = {"heartbeat_round_ms": round(1000 * after["chat_presence_heartbeat_seconds"], 1)}
    if rounds:
        figures.update(heartbeat_mean_ms=round(1000 * spent / rounds, 1), heartbeat_rounds=rounds)
    return figures


GC_PROBE = Path(__file__).parent / "gcprobe"
_GC = re.compile(r"^GCPROBE gen=(\d) ms=(\S+)$", re.M)


def gc_figures(log: str) -> dict[str, float]:
    """Full collections of the node's cyclic GC (bench/gcprobe): how many, the longest, all."""
    full = [float(ms) for gen, ms in _GC.findall(log) if gen == "2"]
    return {"gc_full": len(full), "gc_full_max_ms": max(full, default=0.0), "gc_full_total_ms": round(sum(full), 1)}


def _py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    args = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250"]
    args += ["--format", "raw", "--output", str(out)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def w6(
    server: Server,
    connections: int,
    rooms: int,
    idle: float,
    rate: float,
    profile: float,
    profile_connect: float = 0.0,
    probe_seconds: float = 5.0,
) -> dict[str, Any]:
    with cluster(server, 1) as c:
        node = c.nodes[0]
        await asyncio.sleep(1.0)
        empty = await probe(node.port, rate, probe_seconds) if rate else None
        await asyncio.sleep(1.0)
        rss0 = node.rss()
        members = [Member(node.port, f"idle{i}", 1 + i % rooms) for i in range(connections)]
        if profile_connect:
            connecting = RESULTS / f"profile-w6-connect-{server.label}.txt"
            RESULTS.mkdir(parents=True, exist_ok=True)
            spy_connect = _py_spy(node.worker_pids()[0], profile_connect, connecting)
        async with LEAN.idle(members) as joined:
            await asyncio.sleep(2.0)
            rss1 = node.rss()
            beats0 = heartbeats(node.port) if server is OURS else {}
            cpu0, t0 = node.cpu(), time.monotonic()
            await asyncio.sleep(idle)
            idle_cpu = (node.cpu() - cpu0) / (time.monotonic() - t0)
            beat = heartbeat_figures(beats0, heartbeats(node.port)) if server is OURS else {}
            loaded = await probe(node.port, rate, probe_seconds) if rate else None
            gc = gc_figures(node.log()) if server is OURS and str(GC_PROBE) in os.environ.get("PYTHONPATH", "") else {}
            if profile:
                out = RESULTS / f"profile-w6-{server.label}.txt"
                RESULTS.mkdir(parents=True, exist_ok=True)
                spy = _py_spy(node.worker_pids()[0] if server is OURS else node.pid, profile, out)
                await asyncio.sleep(profile + 3)
                spy.wait(timeout=30)
    result: dict[str, Any] = {
        "connections": connections,
        "connect_and_join_s": round(joined.total_s, 2),
        "connect_p50_ms": round(1000 * percentile(joined.connect_times, 50), 1),
        "join_p50_ms": round(1000 * percentile(joined.join_times, 50), 1),
        "rss_kib_per_connection": round((rss1 - rss0) / connections / 1024, 1),
        "idle_cpu_percent_of_a_core": round(100 * idle_cpu, 2),
    }
    result.update(beat)
    result.update(gc)
    if empty is not None and loaded is not None:
        result["probe_empty"] = empty
        result["probe_loaded"] = loaded
    if profile and server is OURS:
        print(summarise(out))
    if profile_connect:
        spy_connect.wait(timeout=30)
        print("while connecting and joining:\n" + summarise(connecting))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--rooms", type=int, default=1_000)
    parser.add_argument("--idle", type=float, default=25.0, help="seconds of idle CPU measurement")
    parser.add_argument("--probe-rate", type=float, default=100.0, help="msg/s of the latency probe (0: none)")
    parser.add_argument("--probe-seconds", type=float, default=5.0, help="how long each probe sends")
    parser.add_argument("--profile", type=float, default=0.0, help="seconds of py-spy on the idle node (chat_app)")
    parser.add_argument("--profile-connect", type=float, default=0.0, help="seconds of py-spy from the first connect")
    parser.add_argument("--gc-probe", action="store_true", help="count chat_app's full GC collections (bench/gcprobe)")
    parser.add_argument("--servers", default="chat_app,peer")
    args = parser.parse_args()
    _raise_open_files(2 * args.connections + 4096)
    if args.gc_probe:  # the nodes inherit it (this process started without it)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(GC_PROBE), os.environ.get("PYTHONPATH")) if p)
    wanted = args.servers.split(",")
    servers = [s for s in (OURS, PEER) if s.label in wanted]
    if PEER in servers and (why := nodejs.unavailable()):
        print(f"peer skipped: {why}")
        servers.remove(PEER)
    for server in servers:
        profile, connect = (args.profile, args.profile_connect) if server is OURS else (0.0, 0.0)
        result = asyncio.run(
            w6(server, args.connections, args.rooms, args.idle, args.probe_rate, profile, connect, args.probe_seconds)
        )
        print(server.label, result, flush=True)


if __name__ == "__main__":
    main()
