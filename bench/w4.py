"""W4: one big room (issue 15), beside the Node peer.

    python -m bench.w4                         # 2,000 members over 2 nodes, 20 msg/s for 10 s
    python -m bench.w4 --members 500 --servers chat_app

All members connect first; then every one of them asks to join the one room, the joins
spread evenly over --join-window seconds (open loop, no waiting for acks); when every join
is acked, one sender on node A sends --rate msg/s for --seconds, each delivered to every
member (2,000 x 20 = 40,000 deliveries/s). Reported per server: loss, message latency,
node CPU per delivery, the `presence` deliveries the members got per join (chat_app
announces joins one by one only up to PRESENCE_EVENTS_MAX_MEMBERS, then sends periodic
counts), the join ack's size, and how long the joins took. Lean generator only: it shares
the 2 cores with both nodes and Redis, and its CPU is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from . import procs, report
from .__main__ import OURS, PEER, event_loop_runner, load, utc_now, with_peer_if_node
from .sioclient import SioClient, connect
from .workloads import CONNECT_CONCURRENCY, FanOut, Server, cluster, fanout_result, percentile, self_cpu

# The bench's chat_app nodes with the join limit raised too (5/s, burst 20 by default): a
# storm's client joins once, but the rate is per connection and the bench says so anyway.
BIG = Server(
    "chat_app",
    procs.NodeSpec("wsgi:app", {**OURS.spec.env, "JOIN_RATE": "100000", "JOIN_BURST": "100000"}),
    "log",
)
RESULTS = Path(__file__).parent / "results"
JOIN_TIMEOUT_S = 30.0
THRESHOLD = 100  # chat_app's PRESENCE_EVENTS_MAX_MEMBERS, left at its default here
CONNECT_TIMEOUT_S = 120.0


JOIN_METRICS = ("chat_redis_batched_calls_total", "chat_redis_batched_round_trips_total")


def scrape(port: int, names: tuple[str, ...] = JOIN_METRICS) -> dict[str, float]:
    """Sums of some of a chat_app node's /metrics counters (blocking, a few ms: call it
    outside a measured window); nothing for a node without /metrics (the peer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def delta(before: list[dict[str, float]], after: list[dict[str, float]]) -> dict[str, float]:
    """What the counters grew by, summed over nodes."""
    out: dict[str, float] = {}
    for b, a in zip(before, after, strict=True):
        for k, v in a.items():
            out[k] = out.get(k, 0.0) + v - b.get(k, 0.0)
    return out


async def connect_many(specs: list[tuple[int, str, Any]]) -> list[SioClient]:
    """(port, user, on_event) specs, CONNECT_CONCURRENCY at a time, bounded in time."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(port: int, user: str, handler: Any) -> SioClient:
        async with gate:
            return await connect(port, user, handler)

    return list(await asyncio.wait_for(asyncio.gather(*(one(*s) for s in specs)), CONNECT_TIMEOUT_S))


class Joins:
    """Open-loop joins of many clients to one room, and what their acks said."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sent_at = [0.0] * count
        self.latency: list[float] = []
        self.ack_bytes: list[int] = []
        self.members_listed: list[int] = []
        self.members_count: list[int] = []
        self.failed: Counter[str] = Counter()
        self.done = asyncio.Event()
        self.first = self.last = 0.0
        self._answered = 0

    def _on_ack(self, i: int, client: SioClient, reply: Any) -> None:
        now = time.perf_counter()
        self.last = now
        self._answered += 1
        if isinstance(reply, dict) and reply.get("ok"):
            self.latency.append(now - self.sent_at[i])
            self.ack_bytes.append(client.last_ack_bytes)
            self.members_listed.append(len(reply.get("members") or []))
            self.members_count.append(int(reply.get("members_count") or 0))
        else:
            code = reply.get("error", {}).get("code") if isinstance(reply, dict) else repr(reply)
            self.failed[code or "unknown"] += 1
        if self._answered == self.count:
            self.done.set()

    async def run(self, clients: list[SioClient], room: str, window: float) -> bool:
        """Every client joins `room`, evenly over `window` s; False if some ack never came."""
        self.first = t0 = time.perf_counter()
        for i, client in enumerate(clients):
            due = t0 + window * i / len(clients)
            if (wait := due - time.perf_counter()) > 0.001:
                await asyncio.sleep(wait)
            self.sent_at[i] = time.perf_counter()
            client.emit("join_room", {"room": room}, lambda reply, i=i, c=client: self._on_ack(i, c, reply))
        try:
            await asyncio.wait_for(self.done.wait(), JOIN_TIMEOUT_S)
        except TimeoutError:
            return False
        return True

    def result(self) -> dict[str, Any]:
        return {
            "joins": self.count,
            "joined_ok": len(self.latency),
            "join_failed": dict(self.failed),
            "join_unanswered": self.count - self._answered,
            "join_all_s": self.last - self.first,
            "join_ack_p50_ms": 1000 * percentile(self.latency, 50),
            "join_ack_p99_ms": 1000 * percentile(self.latency, 99),
            "join_ack_bytes_max": max(self.ack_bytes, default=0),
            "join_ack_bytes_last": self.ack_bytes[-1] if self.ack_bytes else 0,
            "join_ack_members_listed_max": max(self.members_listed, default=0),
            "join_ack_members_count_max": max(self.members_count, default=0),
        }


async def w4(server: Server, members: int, rate: float, duration: float, window: float) -> dict[str, Any]:
    with cluster(server, 2) as c:
        f = FanOut(1, int(rate * duration) + 2)
        presence: Counter[str] = Counter()
        counts_told = [0] * members  # `presence` counts each member got: at most one per interval

        def handler(i: int, receive: Any) -> Any:
            def on_event(name: str, data: Any) -> None:
                if name == "presence":
                    action = data.get("action", "?") if isinstance(data, dict) else "?"
                    presence[action] += 1
                    counts_told[i] += action == "count"
                else:
                    receive(name, data)

            return on_event

        specs = [
            (c.nodes[i % 2].port, f"big{i}", handler(i, f.receiver(0, measure=True, remote=i % 2 == 1)))
            for i in range(members)
        ]
        t = time.perf_counter()
        clients = await connect_many(specs)
        connect_s = time.perf_counter() - t
        try:
            await asyncio.sleep(1.0)
            metrics0 = [scrape(n.port) for n in c.nodes]
            cpu0, redis0 = c.cpu()
            gen0 = self_cpu()
            joins = Joins(members)
            all_joined = await joins.run(clients, "room0", window)
            cpu1, redis1 = c.cpu()
            gen1 = self_cpu()
            metrics1 = [scrape(n.port) for n in c.nodes]
            wall1 = time.perf_counter()
            sampler = asyncio.ensure_future(f.sample())
            t0 = await f.run([clients[0]], rate, duration)  # clients[0] is on node A
            settled = await f.drain()
            sampler.cancel()
            cpu2, redis2 = c.cpu()
            ended = time.perf_counter()
            result = fanout_result(f, t0, time.perf_counter() - wall1, self_cpu() - gen1)
        finally:
            for client in clients:
                client.close()
            await asyncio.sleep(0.5)
    join_cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    send_cpu = [b - a for a, b in zip(cpu1, cpu2, strict=True)]
    presence_total = sum(presence.values())
    above = max(members - THRESHOLD, 1)
    result.update(
        joins.result(),
        server=server.label,
        members=members,
        rate=rate,
        seconds=duration,
        join_window_s=window,
        all_joined=all_joined,
        cut_off=not settled,
        connect_all_s=connect_s,
        join_node_cpu_s=join_cpu,
        join_redis_cpu_s=redis1 - redis0,
        join_generator_cpu_pct=100.0 * (gen1 - gen0) / max(wall1 - joins.first, 1e-9),
        node_cpu_s=send_cpu,
        redis_cpu_s=redis2 - redis1,
        node_cpu_us_per_delivery=1e6 * sum(send_cpu) / max(result["delivered"], 1),
        join_redis_calls=delta(metrics0, metrics1),
        presence_by_action=dict(presence),
        presence_deliveries=presence_total,
        presence_per_join=presence_total / members,
        presence_threshold=THRESHOLD,
        presence_counts_per_join_above=presence.get("count", 0) / above,
        presence_others_per_join_above=(presence_total - presence.get("count", 0)) / above,
        presence_counts_per_member_max=max(counts_told, default=0),
        presence_span_s=ended - joins.first,
        load_after=load(),
    )
    del result["timeline"]
    return result


ROWS: list[tuple[str, str, int]] = [
    ("all joined (acked ok)", "joined_ok", 0),
    ("join: first sent → last ack (s)", "join_all_s", 2),
    ("join ack p50 / p99 (ms)", "join_ack_p50_ms|join_ack_p99_ms", 1),
    ("join ack size, largest (bytes)", "join_ack_bytes_max", 0),
    ("names in the join ack, most", "join_ack_members_listed_max", 0),
    ("presence deliveries per join (all joins)", "presence_per_join", 2),
    ("presence counts per join above the threshold", "presence_counts_per_join_above", 2),
    ("presence counts a member got, most", "presence_counts_per_member_max", 0),
    ("node CPU during the joins (s, A + B)", "join_node_cpu_sum", 2),
    ("deliveries / expected", "delivered|expected_deliveries", 0),
    ("lost (deliveries)", "lost", 0),
    ("deliveries/s", "deliveries_per_s", 0),
    ("message p50 / p99 (ms)", "p50_ms|p99_ms", 1),
    ("message max (ms)", "max_ms", 1),
    ("node CPU per delivery (µs)", "node_cpu_us_per_delivery", 1),
    ("Redis CPU, send phase (s)", "redis_cpu_s", 2),
    ("generator CPU, send phase (% of a core)", "generator_cpu_pct", 0),
]


def markdown(results: dict[str, dict[str, Any]]) -> str:
    derived = {label: {**r, "join_node_cpu_sum": sum(r["join_node_cpu_s"])} for label, r in results.items()}
    return report.side_by_side("W4", ROWS, derived)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second into the room")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--join-window", type=float, default=2.0, help="the joins are spread over this")
    parser.add_argument("--servers", default="chat_app,peer")
    args = parser.parse_args()
    wanted = args.servers.split(",")
    servers = with_peer_if_node([s for s in (BIG, PEER) if s.label in wanted])
    runner = event_loop_runner()
    started, load_before = utc_now(), load()
    results: dict[str, dict[str, Any]] = {}
    for server in servers:
        results[server.label] = runner(w4(server, args.members, args.rate, args.seconds, args.join_window))
        keys = ("joined_ok", "join_all_s", "lost", "p99_ms", "presence_per_join")
        brief = {k: results[server.label][k] for k in keys}
        print(server.label, brief, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"started": started, "load_before": load_before, "args": vars(args), "results": results}
    (RESULTS / "w4.json").write_text(json.dumps(out, indent=1))
    print(f"started {started}, load before {load_before}")
    print(markdown(results))


if __name__ == "__main__":
    main()
