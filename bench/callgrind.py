"""Instructions per delivery, counted by callgrind: a cost figure that does not move with a
noisy machine, kept in bench/README.md from run to run (issue 27).

    python -m bench.callgrind                      # chat_app and the peer, 10 members, 400 messages
    python -m bench.callgrind --servers chat_app   # chat_app alone (~1 minute)

Two nodes on a private Redis. Node A runs under `valgrind --tool=callgrind` with counting
off; `members` clients on it join one room. A sender on node B posts into the room, so node A
does only the hot loop the issue names: a message read off its subscriber socket, framed and
written to every member's socket. After a warm-up, counting is switched on
(`callgrind_control -i on`) for `messages` messages sent in fixed batches, each batch awaited
at every member, then switched off and dumped: instructions / (messages x members).
Whatever else node A does in that window (a presence heartbeat, engine.io pings) is counted
too, as it is part of what a delivery costs; the window is a few seconds.

    python -m bench.callgrind --count redis        # Redis's instructions per message instead
    python -m bench.callgrind --joins 400 --warmup 400 --rooms 40   # per connect + join (W3's work)

With `--count redis` the nodes run as they are and the Redis they share runs under
callgrind: Redis's work per message (issue 27 item 4) as a figure a noisy machine does not
move: the scripts and commands of each send, the PUBLISH to every subscribed node, and
whatever else the nodes ask of Redis meanwhile (presence heartbeats), less the kernel's
share (reads, writes, epoll), which at a low rate is most of Redis's CPU time.

With `--joins N`, W3's work instead of messages: after `--warmup` others, N clients connect
and join one at a time, on the two nodes in turn, into `--rooms` rooms in turn (W3 puts 20
in a room: 400 + 400 into 40 rooms ends there too). Node A connects and joins its half and
tells its members of every arrival (presence), as each node does in W3: its instructions per
connect + join of its own, or with `--count redis` Redis's per join. The lingering of
presence frames depends on timing, so the count moves by ~1 % from run to run.

Callgrind counts user space only: the kernel's share (each member's `send`) is not in it.
The peer's count includes V8 compiling as it goes (its threads are counted too): the warm-up
is long enough (1,000 messages) that its figure settles, but it stays the rougher of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import nodejs, procs
from .__main__ import OURS, PEER
from .sioclient import SioClient, connect
from .workloads import Server

BATCH = 20
JOIN_LIMITS = {"JOIN_RATE": "100000", "JOIN_BURST": "100000"}


@dataclass
class Count:
    server: str
    instructions: int
    deliveries: int
    messages: int = 0

    @property
    def per_message(self) -> float:
        return self.instructions / self.messages

    @property
    def per_delivery(self) -> float:
        return self.instructions / self.deliveries


def valgrind_command(out: Path) -> list[str]:
    """callgrind, counting off until told. JIT code (Node's) needs `--smc-check=all` to be
    seen as it is rewritten; forks and execs are followed, so gunicorn's worker is counted,
    each process in its own file (%p)."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        "--trace-children=yes",
        "--smc-check=all",
        f"--callgrind-out-file={out}/callgrind.out.%p",
        f"--vgdb-prefix={out}/vgdb",
    ]


def valgrind_spec(server: Server, out: Path) -> procs.NodeSpec:
    """The server's node command under callgrind (`valgrind_command`)."""
    valgrind = valgrind_command(out)
    inner = list(server.spec.command) or ["sh", "-c", f"exec {procs.procfile_web_command(server.spec.app)}"]
    if inner[0] == "sh":  # valgrind follows the exec: the shell's one command is counted, not the shell
        inner = ["sh", "-c", f"exec {' '.join(valgrind)} {inner[2].removeprefix('exec ')}"]
        return replace(server.spec, command=tuple(inner))
    return replace(server.spec, command=(*valgrind, *inner))


def callgrind_control(out: Path, *args: str) -> str:
    command = ["callgrind_control", f"--vgdb-prefix={out}/vgdb", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    return done.stdout + done.stderr


def counted_pids(proc: procs.Proc, out: Path) -> list[int]:
    """The processes of `proc` that run under callgrind (gunicorn's master and worker)."""
    listing = callgrind_control(out)
    pids = {int(p) for p in re.findall(r"^PID (\d+):", listing, re.M)}
    tree = {proc.pid, *proc.worker_pids()}
    return sorted(pids & tree)


def totals(out: Path) -> int:
    """Instructions in every dump written since counting was switched on."""
    total = 0
    for path in out.glob("callgrind.out.*"):
        found = re.findall(r"^totals: (\d+)", path.read_text(errors="replace"), re.M)
        total += int(found[-1]) if found else 0
    return total


async def run_messages(
    sender: SioClient, members: list[SioClient], received: list[int], count: int, rooms: list[str]
) -> None:
    """`count` messages in batches of BATCH, each batch awaited at every member; the rooms
    take turns (every member is in each)."""
    sent = 0
    while sent < count:
        n = min(BATCH, count - sent)
        target = [r + n for r in received]
        for i in range(n):
            sender.emit("send_message", {"room": rooms[(sent + i) % len(rooms)], "message": f"m{sent + i}"})
        sent += n
        deadline = time.monotonic() + 120
        while any(r < t for r, t in zip(received, target, strict=True)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"deliveries stalled: {received} < {target}")
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def counted_cluster(
    server: Server, tmp: Path, count_redis: bool = False, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[list[procs.Proc], Callable[[], Awaitable[int]]]]:
    """Two nodes on a private Redis, node A (or, `count_redis`, Redis) under callgrind with
    counting off; `env`: more settings for chat_app's two nodes (the peer takes none).
    Yields the nodes and `count(work)`: zeroes the counts, switches counting on, awaits
    `work`, switches it off and returns the instructions counted."""
    if server.label == OURS.label:  # each member joins every room at once: past the default JOIN_RATE
        server = replace(server, spec=replace(server.spec, env={**server.spec.env, **JOIN_LIMITS, **(env or {})}))
    out = tmp / "callgrind"
    out.mkdir()
    redis = procs.start_redis(tmp / "redis", valgrind_command(out) if count_redis else (), timeout=60)
    url = f"redis://127.0.0.1:{redis.port}/0"
    nodes: list[procs.Proc] = []
    try:
        node_a = procs.start_node(server.spec if count_redis else valgrind_spec(server, out), url, tmp / "a", "A")
        nodes.append(node_a)
        nodes.append(procs.start_node(server.spec, url, tmp / "b", "B"))
        for node in nodes:
            procs.wait_healthy(node, timeout=300)

        async def count(work: Awaitable[object]) -> int:
            pids = counted_pids(redis if count_redis else node_a, out)
            if not pids:
                raise RuntimeError("callgrind_control sees no process to count")
            for pid in pids:
                callgrind_control(out, "--zero", str(pid))  # zero what start-up and the warm-up left
                callgrind_control(out, "--instr=on", str(pid))
            await work
            for pid in pids:
                callgrind_control(out, "--instr=off", str(pid))
            for path in out.glob("callgrind.out.*"):
                path.unlink()
            for pid in pids:
                callgrind_control(out, "--dump", str(pid))
            return totals(out)

        yield nodes, count
    finally:
        for node in nodes:
            node.stop()
        redis.stop()


async def measure(
    server: Server,
    members: int,
    messages: int,
    warmup: int,
    tmp: Path,
    local: bool = False,
    keep: Path | None = None,
    count_redis: bool = False,
    rooms: int = 1,
) -> Count:
    """`local`: the sender connects to node A too, so node A also ingests each send (the
    frame read, the handler, the publish round trip, the ack), as each node does for its
    own senders in W2; its deliveries then include the sender's own copy. `count_redis`:
    Redis runs under callgrind instead of node A. `rooms`: the messages take turns among that
    many rooms (W2 has 20: a batch then rarely holds two messages of one room)."""
    room_names = [f"cg{r}" for r in range(rooms)]
    # Under callgrind node A runs far behind: its load gauge would refuse its own sender's
    # sends (`overloaded`). The count is of the work, not of shedding. (Node B takes the
    # setting too; with the sender on node A it sheds nothing either way.)
    env = {"OVERLOAD_LAG": "0"} if local and not count_redis else None
    async with counted_cluster(server, tmp, count_redis, env) as (nodes, count):
        node_a = nodes[0]
        received = [0] * members

        def counter(i: int) -> Callable[[str, object], None]:
            def on_event(name: str, _data: object) -> None:
                if name == "broadcast_message":
                    received[i] += 1

            return on_event

        clients = [await connect(node_a.port, f"m{i}", counter(i), timeout=120) for i in range(members)]
        for c in clients:
            for room in room_names:
                await c.call("join_room", {"room": room}, timeout=120)
        sender = await connect((node_a if local else nodes[1]).port, "sender", timeout=60)
        for room in room_names:
            await sender.call("join_room", {"room": room}, timeout=60)
        await run_messages(sender, clients, received, warmup, room_names)
        instructions = await count(run_messages(sender, clients, received, messages, room_names))
        for c in [*clients, sender]:
            c.close()
        keep_dumps(keep, server, tmp)
        return Count(server.label, instructions, messages * (members + local), messages)


async def connect_and_join(ports: list[int], first: int, count: int, rooms: int) -> list[SioClient]:
    """Clients `first`.. `first + count - 1`, one at a time, each on the nodes in turn, into
    the rooms in turn (as W3 spreads them)."""
    clients = []
    for i in range(first, first + count):
        client = await connect(ports[i % len(ports)], f"j{i}", timeout=120)
        ack = await client.call("join_room", {"room": f"cgj{i % rooms}"}, timeout=120)
        if not ack or not ack.get("ok"):
            raise RuntimeError(f"join failed: {ack}")
        clients.append(client)
    return clients


async def measure_joins(
    server: Server, joins: int, warmup: int, rooms: int, tmp: Path, keep: Path | None = None, count_redis: bool = False
) -> Count:
    """W3's connects and joins: `joins` clients over the two nodes, into `rooms` rooms, after
    `warmup` others. Node A does its own clients' connects and joins and tells its members
    of node B's (presence), as each node does in W3; its count is per connect + join of its
    own (joins / 2). `count_redis`: Redis's instructions per join instead."""
    async with counted_cluster(server, tmp, count_redis) as (nodes, count):
        ports = [n.port for n in nodes]
        held = await connect_and_join(ports, 0, warmup, rooms)
        joined: list[SioClient] = []

        async def work() -> None:
            joined.extend(await connect_and_join(ports, warmup, joins, rooms))

        instructions = await count(work())
        for c in [*held, *joined]:
            c.close()
        keep_dumps(keep, server, tmp)
        per = joins if count_redis else joins // 2
        return Count(server.label, instructions, per, per)


def keep_dumps(keep: Path | None, server: Server, tmp: Path) -> None:
    """Copies callgrind's dumps to `keep` (for callgrind_annotate)."""
    if keep is None:
        return
    keep.mkdir(parents=True, exist_ok=True)
    for path in (tmp / "callgrind").glob("callgrind.out.*"):
        shutil.copy(path, keep / f"{server.label}-{path.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="chat_app,peer")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="copy the callgrind dumps here")
    parser.add_argument(
        "--sender", choices=("remote", "local"), default="remote", help="local: node A also ingests the sends"
    )
    parser.add_argument("--count", choices=("node", "redis"), default="node", help="what runs under callgrind")
    parser.add_argument("--rooms", type=int, default=1, help="rooms the messages (or joins) take turns among")
    parser.add_argument("--joins", type=int, default=0, help="count connects + joins instead of messages (W3's work)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (Debian's valgrind package)")
    wanted = args.servers.split(",")
    servers = [s for s in (OURS, PEER) if s.label in wanted]
    if PEER in servers and (reason := nodejs.unavailable()):
        raise SystemExit(f"the peer needs Node: {reason}")
    counts = []
    for server in servers:
        with tempfile.TemporaryDirectory(prefix=f"cg-{server.label}-") as tmp:
            count_redis = args.count == "redis"
            if args.joins:
                work = measure_joins(server, args.joins, args.warmup, args.rooms, Path(tmp), args.keep, count_redis)
            else:
                work = measure(
                    server,
                    args.members,
                    args.messages,
                    args.warmup,
                    Path(tmp),
                    args.sender == "local",
                    args.keep,
                    count_redis,
                    args.rooms,
                )
            counts.append(asyncio.run(work))
            c = counts[-1]
            what = "connect + join" if args.joins else "delivery"
            print(f"{server.label}: {c.per_delivery:,.0f} instructions per {what}", flush=True)
    peer = next((c for c in counts if c.server == PEER.label), None)
    counted = "Redis's" if count_redis else "node A's"
    if args.joins:
        print(f"\n| server | {counted} instructions per connect + join | vs peer |\n|---|---:|---:|")
    else:
        print(f"\n| server | {counted} instructions per delivery | per message | vs peer |\n|---|---:|---:|---:|")
    for c in counts:
        ratio = f"{c.per_message / peer.per_message:.2f}x" if peer and peer.per_message else "-"
        per_message = "" if args.joins else f" {c.per_message:,.0f} |"
        print(f"| {c.server} | {c.per_delivery:,.0f} |{per_message} {ratio} |")


if __name__ == "__main__":
    main()
