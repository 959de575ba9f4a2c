"""W5: a reconnect storm (issue 15), beside the Node peer.

    python -m bench.w5                          # 3 nodes, 3,000 clients in 30 rooms, 300 msg/s
    python -m bench.w5 --clients 900 --servers chat_app

Every room has members on all three nodes (1,000 clients a node); one sender per room, on
node B or C, sends open loop, 300 msg/s over all rooms, for --seconds. At --kill-at s node A
is killed with SIGKILL (its whole process group); each of its clients, the moment its
socket closes, reconnects to B or C (alternating, no jitter, no backoff) and rejoins its
room with `since` (the last seq it got) and `epoch`. After the traffic, the drain waits until
every member has everything its room's sender got acked.

Checked per member, against what the senders were acked (each ack's seq names the message
sent): chat_app's members got every seq of their room exactly once, in order, from their
join to the room's last (a recovered member's ack history being exactly since+1..ack seq),
and each seq carried the message acked with it. The peer has no seq and no recovery: its
members are checked by message, and what its reconnected clients missed is reported as
such, not as loss. Survivors' latency is split by send time: before the kill, from the kill
until the last rejoin ack (at least 1 s), after.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from . import report
from .__main__ import PEER, event_loop_runner, load, utc_now, with_peer_if_node
from .sioclient import SioClient, connect
from .w4 import BIG, RESULTS, connect_many, delta, scrape
from .workloads import CONNECT_CONCURRENCY, PAD, Server, cluster, percentile, self_cpu

STORM_DEADLINE_S = 30.0  # a killed node's client gives up reconnecting after this
DRAIN_QUIET_S, DRAIN_CAP_S = 3.0, 20.0


@dataclass
class Track:
    """One client's view of its room: what arrived, in order, and (a victim's) its rejoin."""

    index: int
    user: str
    room: int
    node: int
    client: SioClient | None = None
    epoch: str = ""
    join_seq: int = 0
    last_seq: int = 0
    ns: array = field(default_factory=lambda: array("i"))  # message numbers, as received (history included)
    seqs: array = field(default_factory=lambda: array("i"))  # their seqs (chat_app)
    mismatched: int = 0  # a seq that carried another message than the one acked with it
    # a victim's storm
    lost_at: float = 0.0
    connected_at: float = 0.0
    rejoin_sent_at: float = 0.0
    rejoined_at: float = 0.0
    connect_failures: int = 0
    since: int = -1
    recovered: bool | None = None
    history_seqs: list[int] = field(default_factory=list)
    ack_seq: int = -1
    error: str = ""


class Storm:
    """The bookkeeping of one W5 run: senders' acks, every member's arrivals, the rejoins."""

    def __init__(self, rooms: int, capacity: int) -> None:
        self.rooms = rooms
        self.seq_of = [array("i", [-1]) * capacity for _ in range(rooms)]  # message n -> acked seq
        self.acked = [0] * rooms
        self.refused: Counter[str] = Counter()
        self.sent = 0
        self.answered = 0
        self.sent_at_of: list[list[float]] = [[] for _ in range(rooms)]
        self.lat_sent = array("d")  # survivors: send time of each delivery ...
        self.lat = array("d")  # ... and its latency
        self.delivered = 0
        self.last_move = time.perf_counter()
        self.stopping = False

    def on_event(self, t: Track, victim: bool, name: str, data: Any) -> None:
        if name != "broadcast_message":
            return
        now = time.perf_counter()
        _room, n, sent_at, _ = data["message"].split("|", 3)
        n = int(n)
        t.ns.append(n)
        self.delivered += 1
        self.last_move = now
        seq = data.get("seq")
        if isinstance(seq, int):
            t.seqs.append(seq)
            t.last_seq = seq
            if self.seq_of[t.room][n] not in (-1, seq):
                t.mismatched += 1
        if not victim:
            self.lat_sent.append(float(sent_at))
            self.lat.append(now - float(sent_at))

    def on_send_ack(self, room: int, n: int, reply: Any) -> None:
        self.answered += 1
        self.last_move = time.perf_counter()
        if isinstance(reply, dict) and reply.get("ok"):
            self.acked[room] += 1
            seq = reply.get("seq")
            self.seq_of[room][n] = seq if isinstance(seq, int) else 0
        else:
            code = reply.get("error", {}).get("code") if isinstance(reply, dict) else repr(reply)
            self.refused[code or "unknown"] += 1

    async def send(self, senders: list[SioClient], rate: float, duration: float) -> float:
        """`rate` msg/s round-robin over the rooms for `duration` s, open loop; returns t0."""
        total, per_room = int(rate * duration), [0] * self.rooms
        t0 = time.perf_counter() + 0.02
        k = 0
        while k < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            while k < due:
                room = k % self.rooms
                n = per_room[room]
                per_room[room] += 1
                now = time.perf_counter()
                self.sent_at_of[room].append(now)
                payload = {"room": f"room{room}", "message": f"{room}|{n}|{now:.6f}|{PAD}"}
                senders[room].emit("send_message", payload, lambda r, room=room, n=n: self.on_send_ack(room, n, r))
                k += 1
            self.sent = k
            await asyncio.sleep(0.001)
        return t0


async def _rejoin(storm: Storm, t: Track, port: int, kill_at: float, handler: Any, delay: float) -> None:
    """A killed node's client: reconnect at once (or after `delay`, a diagnostic), rejoin
    with since/epoch, take the history in the ack's own callback (before any live frame
    after it is parsed)."""
    t.lost_at = time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    client: SioClient | None = None
    while client is None:
        try:
            client = await connect(port, t.user, handler, timeout=10)
        except (OSError, ConnectionError, TimeoutError) as exc:
            t.connect_failures += 1
            if time.perf_counter() - kill_at > STORM_DEADLINE_S or storm.stopping:
                t.error = f"connect: {exc!r}"
                return
            await asyncio.sleep(0.01)
    t.client, t.connected_at = client, time.perf_counter()
    payload: dict[str, Any] = {"room": f"room{t.room}"}
    if t.epoch:
        payload.update(since=t.last_seq, epoch=t.epoch)
        t.since = t.last_seq
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ack(reply: Any) -> None:
        t.rejoined_at = time.perf_counter()
        storm.last_move = t.rejoined_at
        if not (isinstance(reply, dict) and reply.get("ok")):
            t.error = f"rejoin: {reply!r}"[:300]
        else:
            t.recovered = reply.get("recovered")
            t.ack_seq = int(reply.get("seq") or 0)
            for envelope in reply.get("history") or []:
                t.history_seqs.append(envelope["seq"])
                storm.on_event(t, True, "broadcast_message", envelope)
        if not done.done():
            done.set_result(None)

    t.rejoin_sent_at = time.perf_counter()
    client.emit("join_room", payload, on_ack)
    try:
        await asyncio.wait_for(done, STORM_DEADLINE_S)
    except TimeoutError:
        t.error = "rejoin: no ack"


def _check(storm: Storm, tracks: list[Track], seq_server: bool) -> dict[str, Any]:
    """Every member against what its room's sender was acked."""
    missing = duplicates = disorder = mismatched = 0
    victims_missing = victims_duplicates = bad_recoveries = 0
    finals = [max(storm.seq_of[r], default=0) for r in range(storm.rooms)]
    acked_ns = [sorted(n for n, s in enumerate(storm.seq_of[r]) if s >= 0) for r in range(storm.rooms)]
    for t in tracks:
        victim = t.lost_at > 0
        mismatched += t.mismatched
        if seq_server:
            want = list(range(t.join_seq + 1, finals[t.room] + 1))
            got = list(t.seqs)
        else:
            want, got = acked_ns[t.room], list(t.ns)
        have = set(got)
        gone = sum(1 for x in want if x not in have)
        dups = len(got) - len(have)
        disorder += sum(1 for a, b in itertools.pairwise(got) if b <= a)
        if victim:
            victims_missing += gone
            victims_duplicates += dups
            if seq_server and (
                t.recovered is not True or t.history_seqs != list(range(t.since + 1, t.ack_seq + 1)) or t.error
            ):
                bad_recoveries += 1
        else:
            missing += gone
            duplicates += dups
    return {
        "survivors_missing": missing,
        "survivors_duplicates": duplicates,
        "victims_missing": victims_missing,
        "victims_duplicates": victims_duplicates,
        "out_of_order": disorder,
        "seq_message_mismatches": mismatched,
        "bad_recoveries": bad_recoveries,
        "room_last_seq_max": max(finals),
        "acked_per_room_min": min(storm.acked),
    }


def _p99_windows(storm: Storm, t0: float, kill: float, storm_end: float) -> dict[str, float]:
    phases: dict[str, list[float]] = {"before": [], "during": [], "after": []}
    seconds: dict[int, list[float]] = {}
    tenths: dict[int, list[float]] = {}  # 100 ms windows from 0.5 s before the kill to 2.5 s after
    for sent_at, latency in zip(storm.lat_sent, storm.lat, strict=True):
        if -0.5 <= sent_at - kill < 2.5:
            tenths.setdefault(int((sent_at - kill) * 10 + 5) - 5, []).append(latency)
        phase = "before" if sent_at < kill else "during" if sent_at < storm_end else "after"
        phases[phase].append(latency)
        seconds.setdefault(int(sent_at - t0), []).append(latency)
    out = {f"survivors_p99_{k}_ms": 1000 * percentile(v, 99) for k, v in phases.items()}
    out |= {f"survivors_p50_{k}_ms": 1000 * percentile(v, 50) for k, v in phases.items()}
    per_second = {s: 1000 * percentile(v, 99) for s, v in sorted(seconds.items())}
    out["survivors_p99_worst_second_ms"] = max(per_second.values(), default=float("nan"))
    out["survivors_p99_per_second_ms"] = {s: round(v, 1) for s, v in per_second.items()}  # type: ignore[assignment]
    out["survivors_p99_per_100ms_from_kill_ms"] = {  # type: ignore[assignment]
        f"{k / 10:+.1f}": round(1000 * percentile(v, 99), 1) for k, v in sorted(tenths.items())
    }
    return out


async def _watch_lag(lags: array) -> None:
    """How late a 1 ms sleep wakes up: a stalled generator reads frames late for everyone."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        lags.extend((now, now - t - 0.001))


def _lag_windows(lags: array, kill: float, storm_end: float) -> dict[str, float]:
    phases: dict[str, float] = {"before": 0.0, "during": 0.0, "after": 0.0}
    for i in range(0, len(lags), 2):
        when, lag = lags[i], lags[i + 1]
        phase = "before" if when < kill else "during" if when < storm_end else "after"
        phases[phase] = max(phases[phase], lag)
    return {f"generator_max_lag_{k}_ms": 1000 * v for k, v in phases.items()}


async def w5(
    server: Server, clients: int, rooms: int, rate: float, duration: float, kill_after: float, spread: float = 0.0
) -> dict[str, Any]:
    with cluster(server, 3) as c:
        storm = Storm(rooms, int(rate * duration / rooms) + 2)
        per_node = clients // 3
        tracks = [Track(n * per_node + j, f"w5-{n}-{j}", j % rooms, n) for n in range(3) for j in range(per_node)]
        handlers = {t.index: (lambda name, data, t=t: storm.on_event(t, t.node == 0, name, data)) for t in tracks}
        t_start = time.perf_counter()
        conns = await connect_many([(c.nodes[t.node].port, t.user, handlers[t.index]) for t in tracks])
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def join(t: Track, client: SioClient) -> None:
            async with gate:
                ack = await client.call("join_room", {"room": f"room{t.room}"}, timeout=30)
            if not ack or not ack.get("ok"):
                raise RuntimeError(f"join failed: {ack}")
            t.client, t.epoch = client, ack.get("epoch") or ""
            t.join_seq = t.last_seq = int(ack.get("seq") or 0)

        await asyncio.wait_for(asyncio.gather(*(join(t, cl) for t, cl in zip(tracks, conns, strict=True))), 120)
        setup_s = time.perf_counter() - t_start
        # room r's sender: its first member on node B (r even) or C (r odd), which survive
        senders = [next(t for t in tracks if t.room == r and t.node == 1 + r % 2).client for r in range(rooms)]
        survivors = [c.nodes[1], c.nodes[2]]
        victims = [t for t in tracks if t.node == 0]
        loop = asyncio.get_running_loop()
        rejoins: list[asyncio.Future[None]] = []
        kill = {"at": 0.0}

        def arm(t: Track) -> None:
            def on_close() -> None:
                if not storm.stopping:
                    port = survivors[t.index % 2].port
                    delay = spread * t.index / len(victims)
                    rejoin = _rejoin(storm, t, port, kill["at"], handlers[t.index], delay)
                    rejoins.append(asyncio.ensure_future(rejoin))

            assert t.client is not None
            t.client.on_close = on_close

        for t in victims:
            arm(t)
        await asyncio.sleep(0.5)
        cpu0 = [n.cpu() for n in survivors]
        gen0, wall0 = self_cpu(), time.perf_counter()

        lags = array("d")  # (when, how late) pairs: the generator's own stalls count as latency too
        watching = loop.create_task(_watch_lag(lags))
        sending = loop.create_task(storm.send(senders, rate, duration))  # type: ignore[arg-type]
        await asyncio.sleep(kill_after)
        metrics_kill = [scrape(n.port) for n in survivors]
        gen_kill = self_cpu()
        kill["at"] = time.perf_counter()
        os.killpg(c.nodes[0].pid, signal.SIGKILL)  # gunicorn's master and worker, no goodbye
        cpu_kill = [n.cpu() for n in survivors]
        assert c.redis is not None
        redis_kill = c.redis.cpu()
        # the storm: every victim reconnected and rejoined, or gave up
        deadline = kill["at"] + STORM_DEADLINE_S + 5
        while (len(rejoins) < len(victims) or not all(f.done() for f in rejoins)) and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        storm_over = time.perf_counter()
        storm_redis_calls = delta(metrics_kill, [scrape(n.port) for n in survivors])
        cpu_storm = [n.cpu() for n in survivors]
        redis_storm = c.redis.cpu() - redis_kill
        gen_storm = self_cpu() - gen_kill
        t0 = await sending
        # the drain: until every live member has all its room's acked sends, or nothing moves
        drain_start = time.perf_counter()
        while time.perf_counter() - drain_start < DRAIN_CAP_S:
            if storm.answered == storm.sent and time.perf_counter() - storm.last_move > 0.2:
                owed = sum(storm.acked[t.room] for t in tracks if t.lost_at == 0 or t.rejoined_at)
                if storm.delivered >= owed:
                    break
            if time.perf_counter() - storm.last_move > DRAIN_QUIET_S:
                break
            await asyncio.sleep(0.05)
        cut_off = time.perf_counter() - drain_start >= DRAIN_CAP_S
        cpu1 = [n.cpu() for n in survivors]
        gen_cpu, wall = self_cpu() - gen0, time.perf_counter() - wall0
        storm.stopping = True
        watching.cancel()
        for t in tracks:
            if t.client is not None:
                t.client.close()
        await asyncio.sleep(0.5)
    kill_at = kill["at"]
    rejoined = [t for t in victims if t.rejoined_at and not t.error]
    recovered = [t for t in rejoined if t.recovered is True]
    last_ack = max((t.rejoined_at for t in rejoined), default=float("nan"))
    first_join = min((t.rejoin_sent_at for t in victims if t.rejoin_sent_at), default=float("nan"))
    storm_end = max(last_ack, kill_at + 1.0)
    joins_window = last_ack - first_join
    result: dict[str, Any] = {
        "server": server.label,
        "clients": clients,
        "rooms": rooms,
        "rate": rate,
        "seconds": duration,
        "kill_after_s": kill_after,
        "reconnect_spread_s": spread,
        "setup_s": setup_s,
        "sent": storm.sent,
        "acked": sum(storm.acked),
        "refused": dict(storm.refused),
        "unacked": storm.sent - storm.answered,
        "delivered": storm.delivered,
        "cut_off": cut_off,
        "victims": len(victims),
        "victims_noticed_s": max((t.lost_at for t in victims), default=kill_at) - kill_at,
        "rejoined": len(rejoined),
        "recovered": len(recovered),
        "rejoin_errors": Counter(t.error.split(":")[0] for t in victims if t.error),
        "rejoin_error_sample": next((t.error for t in victims if t.error), ""),
        "connect_failures": sum(t.connect_failures for t in victims),
        "all_reconnected_s": max((t.connected_at for t in victims), default=float("nan")) - kill_at,
        "all_rejoined_s": last_ack - kill_at,
        "storm_joins_per_s": len(rejoined) / joins_window if joins_window > 0 else float("nan"),
        "rejoin_ack_p50_ms": 1000 * percentile([t.rejoined_at - t.rejoin_sent_at for t in rejoined], 50),
        "rejoin_ack_p99_ms": 1000 * percentile([t.rejoined_at - t.rejoin_sent_at for t in rejoined], 99),
        "missed_per_victim_avg": sum(t.ack_seq - t.since for t in rejoined if t.since >= 0) / max(len(rejoined), 1),
        "survivor_cpu_s_before": [b - a for a, b in zip(cpu0, cpu_kill, strict=True)],
        "survivor_cpu_s_storm": [b - a for a, b in zip(cpu_kill, cpu_storm, strict=True)],
        "survivor_cpu_s_after": [b - a for a, b in zip(cpu_storm, cpu1, strict=True)],
        "storm_wall_s": storm_over - kill_at,
        "redis_cpu_s_storm": redis_storm,
        "storm_redis_calls": storm_redis_calls,
        "generator_cpu_pct_storm": 100 * gen_storm / max(storm_over - kill_at, 1e-9),
        "generator_cpu_pct": 100 * gen_cpu / wall,
        "load_after": load(),
    }
    result["rejoin_errors"] = dict(result["rejoin_errors"])
    result |= _check(storm, tracks, seq_server=server.label == "chat_app")
    result |= _p99_windows(storm, t0, kill_at, storm_end)
    result |= _lag_windows(lags, kill_at, storm_end)
    return result


ROWS: list[tuple[str, str, int]] = [
    ("victims rejoined (the killed node's clients)", "rejoined", 0),
    ("victims recovered (`recovered: true`, checked)", "recovered_checked", 0),
    ("kill → all reconnected (s)", "all_reconnected_s", 2),
    ("kill → all rejoined (s)", "all_rejoined_s", 2),
    ("storm joins/s (first rejoin sent → last ack)", "storm_joins_per_s", 0),
    ("rejoin ack p50 / p99 (ms)", "rejoin_ack_p50_ms|rejoin_ack_p99_ms", 1),
    ("messages a victim missed, average (in its ack)", "missed_per_victim_avg", 1),
    ("victims: messages never received", "victims_missing", 0),
    ("survivors: messages lost / duplicated", "survivors_missing|survivors_duplicates", 0),
    (
        "survivors p99 before / during / after (ms)",
        "survivors_p99_before_ms|survivors_p99_during_ms|survivors_p99_after_ms",
        1,
    ),
    ("survivors p99, worst 1 s window (ms)", "survivors_p99_worst_second_ms", 1),
    ("sends acked / sent", "acked|sent", 0),
    ("survivor nodes' CPU in the storm (s, B + C)", "storm_cpu_sum", 2),
    ("generator CPU, whole run / in the storm (% of a core)", "generator_cpu_pct|generator_cpu_pct_storm", 0),
    (
        "generator's own longest stall before / during / after (ms)",
        "generator_max_lag_before_ms|generator_max_lag_during_ms|generator_max_lag_after_ms",
        1,
    ),
]


def markdown(results: dict[str, dict[str, Any]]) -> str:
    derived = {
        label: {
            **r,
            "storm_cpu_sum": sum(r["survivor_cpu_s_storm"]),
            "recovered_checked": r["recovered"] - r["bad_recoveries"] if label == "chat_app" else "n/a",
        }
        for label, r in results.items()
    }
    return report.side_by_side("W5", ROWS, derived)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=3000, help="over 3 nodes, a third each")
    parser.add_argument("--rooms", type=int, default=30)
    parser.add_argument("--rate", type=float, default=300.0, help="messages per second over all rooms")
    parser.add_argument("--seconds", type=float, default=25.0, help="of traffic")
    parser.add_argument("--kill-at", type=float, default=8.0, help="seconds into the traffic")
    parser.add_argument(
        "--reconnect-spread",
        type=float,
        default=0.0,
        help="a diagnostic, not W5: spread the reconnects evenly over this many seconds",
    )
    parser.add_argument("--servers", default="chat_app,peer")
    args = parser.parse_args()
    wanted = args.servers.split(",")
    servers = with_peer_if_node([s for s in (BIG, PEER) if s.label in wanted])
    runner = event_loop_runner()
    started, load_before = utc_now(), load()
    results: dict[str, dict[str, Any]] = {}
    for server in servers:
        r = runner(w5(server, args.clients, args.rooms, args.rate, args.seconds, args.kill_at, args.reconnect_spread))
        results[server.label] = r
        keys = ("rejoined", "recovered", "bad_recoveries", "all_rejoined_s", "survivors_p99_during_ms")
        print(server.label, {k: r[k] for k in keys}, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"started": started, "load_before": load_before, "args": vars(args), "results": results}
    (RESULTS / "w5.json").write_text(json.dumps(out, indent=1))
    print(f"started {started}, load before {load_before}")
    print(markdown(results))


if __name__ == "__main__":
    main()
