"""The workloads of issue 5, each against a fresh Redis and fresh nodes of one server kind.

W1: cross-node latency. W2: open-loop fan-out rate ladder. W3: idle joined connections.
Routing: how many messages each of 4 nodes takes from Redis when each hosts a quarter of
the rooms. Senders are open loop: they never wait for acks, so a slow server cannot slow
them down. Latency runs from the moment a message is written to its socket (the
generator's ~1 ms timer would otherwise count as server latency); how far the generator
fell behind its schedule is reported as `generator_max_lag_ms`.

Every workload is driven by a generator: the lean asyncio one here (bench/sioclient.py) or
the official socket.io-client in Node (bench/official.py). A workload says who connects
where and what is sent; the generator does it and fills the same FanOut, from which one
function computes the figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import tempfile
import time
import urllib.request
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import orjson

from . import procs
from .sioclient import SioClient, connect

PAD = "x" * 40  # a chat-sized message: ~64 bytes with its header
CONNECT_CONCURRENCY = 50
DRAIN_QUIET_S = 3.0  # the drain ends when nothing moved for this long
DRAIN_CAP_S = 20.0  # ... or when this much passed


@dataclass(frozen=True)
class Server:
    label: str
    spec: procs.NodeSpec
    routing_counter: str  # "log" (chat_app, read at SIGTERM) or "http" (baseline /stats)


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: array | list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))]


@dataclass
class Cluster:
    """One Redis and N nodes in a temp dir; `stop()` kills every process it started."""

    server: Server
    count: int
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chat-bench-")))
    redis: procs.Proc | None = None
    nodes: list[procs.Proc] = field(default_factory=list)

    def start(self) -> Cluster:
        self.redis = procs.start_redis(self.root / "redis")
        url = f"redis://127.0.0.1:{self.redis.port}/0"
        for i in range(self.count):
            name = f"{self.server.label}-{chr(ord('a') + i)}"
            self.nodes.append(procs.start_node(self.server.spec, url, self.root, name))
        for node in self.nodes:
            procs.wait_healthy(node)
        return self

    def cpu(self) -> tuple[list[float], float]:
        assert self.redis is not None
        return [n.cpu() for n in self.nodes], self.redis.cpu()

    def reset_commandstats(self) -> None:
        assert self.redis is not None
        procs.redis_call(self.redis.port, "CONFIG", "RESETSTAT")

    def commandstats(self) -> dict[str, dict[str, float]]:
        """Redis's INFO commandstats since the last reset: calls, usec and usec_per_call per
        command (where a server's Redis time goes, beside its CPU from /proc)."""
        assert self.redis is not None
        raw = procs.redis_call(self.redis.port, "INFO", "commandstats")
        stats: dict[str, dict[str, float]] = {}
        for line in (raw or b"").decode().splitlines():  # type: ignore[union-attr]
            if not line.startswith("cmdstat_"):
                continue
            name, _, fields = line[len("cmdstat_") :].partition(":")
            values = dict(f.split("=", 1) for f in fields.split(","))
            stats[name] = {k: float(values[k]) for k in ("calls", "usec", "usec_per_call") if k in values}
        return stats

    def redis_user_cpu(self) -> float:
        """Redis's own user-space CPU seconds (INFO cpu): the share its commands and scripts
        cost, without the kernel's reads, writes and wake-ups that the /proc figure adds."""
        assert self.redis is not None
        raw = procs.redis_call(self.redis.port, "INFO", "cpu")
        for line in (raw or b"").decode().splitlines():  # type: ignore[union-attr]
            if line.startswith("used_cpu_user:"):
                return float(line.partition(":")[2])
        return 0.0

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.redis is not None:
            self.redis.stop()
        if not os.environ.get("BENCH_KEEP_LOGS"):  # set it to keep node and Redis logs
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster(server: Server, count: int) -> Iterator[Cluster]:
    c = Cluster(server, count)
    try:
        yield c.start()
    finally:
        c.stop()


async def connect_all(specs: list[tuple[int, str, Any]]) -> tuple[list[SioClient], list[float]]:
    """Connect (port, username, on_event) specs, CONNECT_CONCURRENCY at a time; per-connect seconds."""
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    times: list[float] = [0.0] * len(specs)

    async def one(i: int, port: int, user: str, handler: Any) -> SioClient:
        async with gate:
            t = time.perf_counter()
            client = await connect(port, user, handler)
            times[i] = time.perf_counter() - t
            return client

    clients = await asyncio.gather(*(one(i, *s) for i, s in enumerate(specs)))
    return list(clients), times


async def join_all(pairs: list[tuple[SioClient, str]]) -> list[float]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one(client: SioClient, room: str) -> float:
        async with gate:
            t = time.perf_counter()
            ack = await client.call("join_room", {"room": room}, timeout=30)
            if not ack or not ack.get("ok"):
                raise RuntimeError(f"join {room} failed: {ack}")
            return time.perf_counter() - t

    return list(await asyncio.gather(*(one(c, r) for c, r in pairs)))


def close_all(clients: list[SioClient]) -> None:
    for c in clients:
        c.close()


# -- fan-out: shared by W1, W2 and routing ---------------------------------------------


@dataclass
class FanOut:
    """Open-loop senders, one per room, and the bookkeeping of what every member received."""

    rooms: int
    capacity: int  # most messages any one room will be sent
    latencies: array = field(default_factory=lambda: array("d"))
    ack_latencies: array = field(default_factory=lambda: array("d"))
    remote_latencies: array = field(default_factory=lambda: array("d"))  # members on another node than the sender
    errors: Counter = field(default_factory=Counter)
    duplicates: int = 0
    delivered: int = 0
    last_delivery: float = 0.0
    max_lag: float = 0.0
    sent: int = 0
    acked_ok: int = 0
    timeline: list[tuple[float, int, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.acks = [bytearray(self.capacity) for _ in range(self.rooms)]  # 1 ok, 2 refused
        # members that got each message: 32-bit counters, a room may have more than 255 (W4)
        self.counts = [array("I", [0]) * self.capacity for _ in range(self.rooms)]
        self.members: list[int] = [0] * self.rooms
        self._seen: list[bytearray] = []

    def receiver(self, room: int, measure: bool = True, remote: bool = False) -> Any:
        """An on_event handler for one member of `room`."""
        seen = bytearray(self.capacity)
        self._seen.append(seen)
        self.members[room] += 1
        return partial(self._on_event, room, seen, measure, remote)

    def _on_event(self, room: int, seen: bytearray, measure: bool, remote: bool, name: str, data: Any) -> None:
        if name != "broadcast_message":
            return
        now = time.perf_counter()
        _, n, sent_at, _ = data["message"].split("|", 3)
        n = int(n)
        if seen[n]:
            self.duplicates += 1
            return
        seen[n] = 1
        self.counts[room][n] += 1
        self.delivered += 1
        self.last_delivery = now
        if measure:
            self.latencies.append(now - float(sent_at))
            if remote:
                self.remote_latencies.append(now - float(sent_at))

    def _on_ack(self, room: int, n: int, sent_at: float, reply: Any) -> None:
        now = time.perf_counter()
        if isinstance(reply, dict) and reply.get("ok"):
            self.acks[room][n] = 1
            self.acked_ok += 1
            self.ack_latencies.append(now - sent_at)
        else:
            self.acks[room][n] = 2
            code = reply.get("error", {}).get("code") if isinstance(reply, dict) else repr(reply)
            self.errors[code or "unknown"] += 1

    async def run(self, senders: list[SioClient], rate: float, duration: float) -> float:
        """Send `rate` msg/s in total, round-robin over rooms, for `duration` s; returns t0."""
        total = int(rate * duration)
        per_room = [0] * self.rooms
        t0 = time.perf_counter() + 0.02
        k = 0
        while k < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + 1)
            while k < due:
                room = k % self.rooms
                n = per_room[room]
                per_room[room] += 1
                now = time.perf_counter()
                self.max_lag = max(self.max_lag, now - (t0 + k / rate))
                message = f"{room}|{n}|{now:.6f}|{PAD}"
                payload = {"room": f"room{room}", "message": message}
                senders[room].emit("send_message", payload, partial(self._on_ack, room, n, now))
                k += 1
            self.sent = k
            await asyncio.sleep(0.001)
        return t0

    async def sample(self, every: float = 1.0) -> None:
        """Record (seconds, delivered, acked ok, refused) every `every` s: shows stalls."""
        start = time.perf_counter()
        while True:
            await asyncio.sleep(every)
            t = round(time.perf_counter() - start, 1)
            self.timeline.append((t, self.delivered, self.acked_ok, sum(self.errors.values())))

    def expected(self) -> int:
        return sum(self.members[r] * sum(1 for a in self.acks[r] if a == 1) for r in range(self.rooms))

    def lost(self) -> int:
        """Deliveries owed for accepted sends that never arrived."""
        missing = 0
        for r in range(self.rooms):
            acks, counts, members = self.acks[r], self.counts[r], self.members[r]
            missing += sum(members - counts[n] for n in range(self.capacity) if acks[n] == 1)
        return missing

    def delivered_after_refusal(self) -> int:
        """Deliveries of sends the server answered with an error: a client would retry them."""
        return sum(
            counts[n]
            for acks, counts in zip(self.acks, self.counts, strict=True)
            for n in range(self.capacity)
            if acks[n] == 2
        )

    def acks_pending(self) -> int:
        return self.sent - self.acked_ok - sum(self.errors.values())

    async def drain(self, quiet: float = DRAIN_QUIET_S, cap: float = DRAIN_CAP_S) -> bool:
        """Wait until every accepted send is delivered everywhere, or nothing moves for `quiet` s.

        False when `cap` cut the wait short while deliveries were still arriving: what is
        missing then is late, not necessarily lost."""
        start = last_move = time.perf_counter()
        seen = (-1, -1)
        while time.perf_counter() - start < cap:
            state = (self.delivered, self.sent - self.acks_pending())
            # The count alone is not enough: a server may deliver sends it answered as refused.
            if self.acks_pending() == 0 and self.delivered >= self.expected() and self.lost() == 0:
                return True
            if state != seen:
                seen, last_move = state, time.perf_counter()
            elif time.perf_counter() - last_move > quiet:
                return True
            await asyncio.sleep(0.05)
        return False


def fanout_result(f: FanOut, t0: float, wall: float, gen_cpu: float) -> dict[str, Any]:
    span = max(f.last_delivery - t0, 1e-9)
    expected = f.expected()
    return {
        "sent": f.sent,
        "accepted": f.acked_ok,
        "refused": dict(f.errors),
        "unacked": f.acks_pending(),
        "expected_deliveries": expected,
        "delivered": f.delivered,
        "lost": f.lost(),
        "loss_pct": 100.0 * f.lost() / expected if expected else 0.0,
        "duplicates": f.duplicates,
        "delivered_after_refusal": f.delivered_after_refusal(),
        "deliveries_per_s": f.delivered / span,
        "p50_ms": 1000 * percentile(f.latencies, 50),
        "p99_ms": 1000 * percentile(f.latencies, 99),
        "max_ms": 1000 * max(f.latencies, default=float("nan")),
        "ack_p99_ms": 1000 * percentile(f.ack_latencies, 99),
        "remote_p50_ms": 1000 * percentile(f.remote_latencies, 50),
        "remote_p99_ms": 1000 * percentile(f.remote_latencies, 99),
        "generator_max_lag_ms": 1000 * f.max_lag,
        "generator_cpu_pct": 100.0 * gen_cpu / wall,
        "timeline": f.timeline,
    }


# -- generators: who drives the clients --------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One client of a fan-out: where it connects, which room it joins, what it records."""

    port: int
    user: str
    room: int  # joins f"room{room}"
    measure: bool = True  # its latencies count
    remote: bool = False  # on another node than its room's sender
    sender: bool = False  # sends its room's messages (one per room)


@dataclass
class Sent:
    """What one send phase left: the filled FanOut and what the generator spent on it."""

    fanout: FanOut
    t0: float  # when the schedule started, on the clock of the FanOut's times
    settled: bool  # False when the drain's cap cut it short
    generator_cpu_s: float
    wall_s: float


class FanOutSession(Protocol):
    async def send(self, rate: float, duration: float) -> Sent: ...


@dataclass
class Joined:
    """Idle clients, connected and joined (W3)."""

    total_s: float
    connect_times: list[float]
    join_times: list[float]
    connect_s: float  # the connect phase; the joins start after it


Between = Callable[[], object]  # runs after the last connect, before the first join


class Generator(Protocol):
    name: str

    def fanout(self, members: list[Member], f: FanOut) -> contextlib.AbstractAsyncContextManager[FanOutSession]:
        """Connect and join every member; the session sends; leaving it closes every client."""
        ...

    def idle(
        self, members: list[Member], between: Between | None = None
    ) -> contextlib.AbstractAsyncContextManager[Joined]:
        """Connect every member, run `between`, join every member; hold them until the
        block ends."""
        ...

    def describe(self) -> str: ...


@dataclass
class _LeanSession:
    f: FanOut
    senders: list[SioClient]

    async def send(self, rate: float, duration: float) -> Sent:
        gen0, wall0 = self_cpu(), time.perf_counter()
        sampler = asyncio.ensure_future(self.f.sample())
        t0 = await self.f.run(self.senders, rate, duration)
        settled = await self.f.drain()
        sampler.cancel()
        return Sent(self.f, t0, settled, self_cpu() - gen0, time.perf_counter() - wall0)


class LeanGenerator:
    """The hand-rolled asyncio client (bench/sioclient.py), in the bench's own process."""

    name = "lean"

    def describe(self) -> str:
        return "lean: bench/sioclient.py, asyncio" + (" + uvloop" if _uvloop_running() else "") + ", one process"

    @contextlib.asynccontextmanager
    async def fanout(self, members: list[Member], f: FanOut) -> AsyncIterator[FanOutSession]:
        specs = [(m.port, m.user, f.receiver(m.room, m.measure, m.remote)) for m in members]
        clients, _ = await connect_all(specs)
        try:
            await join_all([(cl, f"room{m.room}") for cl, m in zip(clients, members, strict=True)])
            by_room = {m.room: cl for cl, m in zip(clients, members, strict=True) if m.sender}
            yield _LeanSession(f, [by_room[r] for r in range(f.rooms)])
        finally:
            close_all(clients)
            await asyncio.sleep(0.2)

    @contextlib.asynccontextmanager
    async def idle(self, members: list[Member], between: Between | None = None) -> AsyncIterator[Joined]:
        t = time.perf_counter()
        clients, connect_times = await connect_all([(m.port, m.user, None) for m in members])
        connect_s = time.perf_counter() - t
        try:
            if between is not None:
                between()
            join_times = await join_all([(cl, f"room{m.room}") for cl, m in zip(clients, members, strict=True)])
            yield Joined(time.perf_counter() - t, connect_times, join_times, connect_s)
        finally:
            close_all(clients)
            await asyncio.sleep(0.5)


def _uvloop_running() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith("uvloop")


LEAN = LeanGenerator()


# -- fan-out workloads: W1, W2 --------------------------------------------------------------

OnSending = Callable[[Cluster, float], Any]


async def _fanout(
    server: Server,
    generator: Generator,
    nodes: int,
    rooms: int,
    per_node: int,
    rate: float,
    duration: float,
    remote_only: bool = False,
    on_sending: OnSending | None = None,
) -> dict[str, Any]:
    """`rooms` rooms with `per_node` members on each of `nodes` nodes; room r's sender is on node r % nodes."""
    with cluster(server, nodes) as c:
        f = FanOut(rooms, int(rate * duration / rooms) + 2)
        members = []
        for r in range(rooms):
            for i, node in enumerate(c.nodes):
                for j in range(per_node):
                    remote = i != r % nodes
                    sender = (i, j) == (r % nodes, 0)
                    members.append(Member(node.port, f"u{r}-{i}-{j}", r, remote or not remote_only, remote, sender))
        async with generator.fanout(members, f) as session:
            await asyncio.sleep(0.5)
            nodes_cpu0, redis_cpu0 = c.cpu()
            redis_user0 = c.redis_user_cpu()
            c.reset_commandstats()
            watcher = on_sending(c, duration) if on_sending else None
            sent = await session.send(rate, duration)
            nodes_cpu1, redis_cpu1 = c.cpu()
            redis_user = c.redis_user_cpu() - redis_user0
            commandstats = c.commandstats()
            result = fanout_result(sent.fanout, sent.t0, sent.wall_s, sent.generator_cpu_s)
            result["cut_off"] = not sent.settled
            if watcher is not None:
                watcher.wait(timeout=60)
    node_cpu = [b - a for a, b in zip(nodes_cpu0, nodes_cpu1, strict=True)]
    result.update(
        rate=rate,
        generator=generator.name,
        node_cpu_s=node_cpu,
        redis_cpu_s=redis_cpu1 - redis_cpu0,
        node_cpu_us_per_delivery=1e6 * sum(node_cpu) / max(result["delivered"], 1),
        redis_cpu_us_per_message=1e6 * (redis_cpu1 - redis_cpu0) / max(result.get("sent", 0) or 1, 1),
        redis_user_cpu_us_per_message=1e6 * redis_user / max(result.get("sent", 0) or 1, 1),
        redis_commandstats=commandstats,
    )
    return result


async def w1(server: Server, rate: float = 100, duration: float = 10, generator: Generator = LEAN) -> dict[str, Any]:
    """One room, sender on node A, the measured receiver on node B."""
    return await _fanout(
        server, generator, nodes=2, rooms=1, per_node=1, rate=rate, duration=duration, remote_only=True
    )


async def w2(
    server: Server,
    rate: float,
    duration: float = 10,
    on_sending: OnSending | None = None,
    generator: Generator = LEAN,
) -> dict[str, Any]:
    """20 rooms x 10 members (5 per node), one sender per room, open loop."""
    return await _fanout(
        server, generator, nodes=2, rooms=20, per_node=5, rate=rate, duration=duration, on_sending=on_sending
    )


# -- W3: idle joined connections --------------------------------------------------------


W3_READINGS_S = (0.0, 0.5, 1.0, 2.0, 3.0)  # seconds after the last join's ack: RSS read at each
W3_PROJECT_AT_S = 3.0  # the project's figure: the tree 3 s after the last ack
W3_HARNESS_AT_S = 0.5  # the steering harness's: 0.5 s after the last ack


async def w3(
    server: Server,
    connections: int = 2000,
    rooms: int = 100,
    generator: Generator = LEAN,
    on_connecting: Callable[[Cluster], Any] | None = None,
) -> dict[str, Any]:
    """Idle joined connections. RSS of each node's process tree (gunicorn master + worker,
    or the Node process) read once just before the first client, then at each of
    W3_READINGS_S after the last join's ack: the per-connection figure depends on when it is
    read (a chat_app writer greenlet, started only for what a socket did not take at once,
    lingers 1 s; V8 collects in its own time), so the project's reading (3 s) and the
    harness's (0.5 s) are both reported, and the worker alone beside the tree.
    `on_connecting(cluster)` runs just before the first connect (bench/profile.py starts
    py-spy there); what it returns is waited for (`wait()`) after the readings. The nodes'
    CPU is also read between the connects and the joins: the two phases cost apart."""
    with cluster(server, 2) as c:
        await asyncio.sleep(1.0)
        rss0 = [n.rss() for n in c.nodes]
        own0 = [_own_rss(n) for n in c.nodes]
        members = [Member(c.nodes[i % 2].port, f"idle{i}", i % rooms) for i in range(connections)]
        nodes_cpu0, redis_cpu0 = c.cpu()
        watcher = on_connecting(c) if on_connecting else None
        connected: list[tuple[list[float], float]] = []
        async with generator.idle(members, lambda: connected.append(c.cpu())) as joined:
            acked = time.perf_counter()  # the generator yields once the last join is acked
            nodes_cpu1, redis_cpu1 = c.cpu()  # what the connects and joins cost
            readings: dict[float, list[int]] = {}
            own: dict[float, list[int]] = {}
            for at_s in W3_READINGS_S:
                await asyncio.sleep(max(0.0, acked + at_s - time.perf_counter()))
                readings[at_s] = [n.rss() for n in c.nodes]
                own[at_s] = [_own_rss(n) for n in c.nodes]
        if watcher is not None:
            watcher.wait()
    per_conn = {at_s: (sum(r) - sum(rss0)) / connections / 1024 for at_s, r in readings.items()}
    own_per_conn = {at_s: (sum(r) - sum(own0)) / connections / 1024 for at_s, r in own.items()}
    return {
        "generator": generator.name,
        "connections": connections,
        "rooms": rooms,
        "connect_and_join_total_s": joined.total_s,
        "connect_p50_ms": 1000 * percentile(joined.connect_times, 50),
        "connect_p99_ms": 1000 * percentile(joined.connect_times, 99),
        "join_p99_ms": 1000 * percentile(joined.join_times, 99),
        "rss_before_mib": [x / 2**20 for x in rss0],
        "rss_after_mib": [x / 2**20 for x in readings[W3_PROJECT_AT_S]],
        "rss_kib_per_connection": per_conn[W3_PROJECT_AT_S],
        "rss_kib_per_connection_harness": per_conn[W3_HARNESS_AT_S],
        # {seconds after the last ack: KiB per connection}, the tree and the largest process alone
        "rss_kib_per_connection_by_time": {f"{k:g}": v for k, v in per_conn.items()},
        "rss_kib_per_connection_worker_by_time": {f"{k:g}": v for k, v in own_per_conn.items()},
        "node_cpu_us_per_connect_join": 1e6 * (sum(nodes_cpu1) - sum(nodes_cpu0)) / connections,
        "redis_cpu_us_per_join": 1e6 * (redis_cpu1 - redis_cpu0) / connections,
        # the two phases apart (the join phase: the joins, and the presence events they cause)
        "connect_phase_s": joined.connect_s,
        "join_phase_s": joined.total_s - joined.connect_s,
        "node_cpu_us_per_connect": 1e6 * (sum(connected[0][0]) - sum(nodes_cpu0)) / connections,
        "node_cpu_us_per_join": 1e6 * (sum(nodes_cpu1) - sum(connected[0][0])) / connections,
    }


def _own_rss(node: procs.Proc) -> int:
    """RSS of the node's largest process: gunicorn's worker (the master is ~constant), or
    the Node process itself."""
    return max(procs.rss_bytes_one(p) for p in [node.pid, *node.worker_pids()])


# -- interest routing -------------------------------------------------------------------

_RECEIVED = re.compile(rb"event=listener_stopped received=(\d+)")


def _http_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return orjson.loads(r.read())


def _numsub(redis_port: int, channels: list[str]) -> list[int]:
    if not channels:
        return []
    reply = procs.redis_call(redis_port, "PUBSUB", "NUMSUB", *channels)
    assert isinstance(reply, list)
    return [int(x) for x in reply[1::2]]


def _control_channel(name: str) -> bool:
    """chat_app's per-node control channel, the redis-adapter's request/response channels."""
    return ":ctl" in name or name.startswith(("socket.io-request#", "socket.io-response#"))


async def routing(
    server: Server,
    nodes: int = 4,
    rooms: int = 40,
    rate: float = 400,
    duration: float = 5,
    generator: Generator = LEAN,
) -> dict[str, Any]:
    """Each room's members live on one node only (room r on node r % nodes)."""
    with cluster(server, nodes) as c:
        f = FanOut(rooms, int(rate * duration / rooms) + 2)
        members = [
            Member(c.nodes[r % nodes].port, f"u{r}-{j}", r, sender=j == 0) for r in range(rooms) for j in range(2)
        ]
        async with generator.fanout(members, f) as session:
            await asyncio.sleep(0.5)
            sent = await session.send(rate, duration)
            assert c.redis is not None
            channels = [ch.decode() for ch in procs.redis_call(c.redis.port, "PUBSUB", "CHANNELS")]  # type: ignore[union-attr]
            numsub = dict(zip(channels, _numsub(c.redis.port, channels), strict=True))
            patterns = int(procs.redis_call(c.redis.port, "PUBSUB", "NUMPAT"))  # type: ignore[arg-type]
            if server.routing_counter == "http":
                received = [_http_json(n.port, "/stats")["received"] for n in c.nodes]
        if server.routing_counter == "log":
            for n in c.nodes:
                n.stop(signal.SIGTERM)
            received = []
            for n in c.nodes:
                m = _RECEIVED.search(n.log_path.read_bytes())
                received.append(int(m.group(1)) if m else -1)
    published = sent.fanout.acked_ok
    room_channels = {ch: k for ch, k in numsub.items() if not _control_channel(ch)}
    return {
        "generator": generator.name,
        "nodes": nodes,
        "rooms": rooms,
        "published": published,
        "received_per_node": received,
        "share_per_node": [x / published if published else 0.0 for x in received],
        "channels": len(room_channels),
        "subscribers_per_channel": sorted(set(room_channels.values())),
        "pattern_subscriptions": patterns,  # the redis-adapter's nodes each take every room by pattern
        "lost": sent.fanout.lost(),
    }
