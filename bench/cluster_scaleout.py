"""Scale-out evidence on Redis Cluster: each shard carries only its own rooms' traffic, and
adding nodes does not multiply what a node receives for rooms it does not host.

    python -m bench.cluster_scaleout          # ~1 minute: 2 nodes, then 4, over 3 shards

Each room has members on exactly two nodes. During the send phase (presence is quiet by
then) every node should receive each message of the rooms it hosts once and nothing else,
and each shard should SPUBLISH exactly its own rooms' messages.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from . import procs
from .sioclient import SioClient, connect

ROOMS = 24
MESSAGES_PER_ROOM = 25
SHARDS = 3


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free too."""
    while True:
        port = procs.free_port()
        if port + 10000 <= 65535:
            try:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port


def start_cluster(directory: Path) -> list[procs.Proc]:
    shards = []
    for i in range(SHARDS):
        d = directory / f"shard{i}"
        d.mkdir(parents=True)
        port = cluster_port()
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(d), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        shards.append(procs._spawn(f"shard{i}", args, d, port))
    procs.wait_until(lambda: all(_ping(s.port) for s in shards), 10, "shards up")
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in shards), "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    procs.wait_until(
        lambda: all(b"cluster_state:ok" in procs.redis_command(s.port, "CLUSTER", "INFO") for s in shards),
        20,
        "cluster state ok",
    )
    return shards


def _ping(port: int) -> bool:
    try:
        return procs.redis_command(port, "PING").startswith(b"+PONG")
    except OSError:
        return False


def shard_of(shards: list[procs.Proc], room: str) -> int:
    slot = int(procs.redis_call(shards[0].port, "CLUSTER", "KEYSLOT", f"chat:{{room:{room}}}:ch"))  # type: ignore[arg-type]
    for start, end, owner, *_ in procs.redis_call(shards[0].port, "CLUSTER", "SLOTS"):  # type: ignore[union-attr]
        if int(start) <= slot <= int(end):
            return next(i for i, s in enumerate(shards) if s.port == int(owner[1]))
    raise AssertionError(f"no shard holds slot {slot}")


def spublish_calls(port: int) -> int:
    stats = procs.redis_command(port, "INFO", "commandstats").decode()
    match = re.search(r"cmdstat_spublish:calls=(\d+)", stats)
    return int(match.group(1)) if match else 0


def received(node: procs.Proc) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    match = re.search(r"^chat_redis_messages_received_total\{[^}]*\} (\S+)$", text, re.M)
    assert match, "chat_redis_messages_received_total missing from /metrics"
    return float(match.group(1))


async def run(node_count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cluster-scaleout-") as tmp:
        directory = Path(tmp)
        shards = start_cluster(directory)
        nodes: list[procs.Proc] = []
        clients: list[SioClient] = []
        try:
            env = {"REDIS_CLUSTER_NODES": f"127.0.0.1:{shards[0].port}", "SEND_RATE": "100000", "SEND_BURST": "100000"}
            for i in range(node_count):
                nodes.append(procs.start_node(procs.NodeSpec("wsgi:app", env), "", directory / "nodes", f"n{i}"))
            for node in nodes:
                procs.wait_healthy(node)
            rooms = [f"room-{j}" for j in range(ROOMS)]
            hosts = {room: (j % node_count, (j + 1) % node_count) for j, room in enumerate(rooms)}
            got: dict[str, int] = {}

            def counter(name: str) -> Any:
                def on_event(event: str, data: Any) -> None:
                    if event == "broadcast_message":
                        got[name] = got.get(name, 0) + 1

                return on_event

            senders = []
            for room, (h1, h2) in hosts.items():
                for k, h in enumerate((h1, h2)):
                    client = await connect(nodes[h].port, f"{room}-{k}", counter(f"{room}-{k}"))
                    clients.append(client)
                    assert (await client.call("join_room", room))["ok"]
                    if k == 0:
                        senders.append((client, room))
            await asyncio.sleep(1.0)  # let the join announcements settle before counting
            before_nodes = [received(n) for n in nodes]
            before_shards = [spublish_calls(s.port) for s in shards]
            for _ in range(MESSAGES_PER_ROOM):
                await asyncio.gather(*(c.call("send_message", {"room": r, "message": "x"}) for c, r in senders))
            expected = MESSAGES_PER_ROOM * ROOMS * 2
            for _ in range(200):
                if sum(got.values()) >= expected:
                    break
                await asyncio.sleep(0.05)
            per_node = [received(n) - b for n, b in zip(nodes, before_nodes, strict=True)]
            hosted = [sum(1 for h in hosts.values() if i in h) for i in range(node_count)]
            per_shard = [spublish_calls(s.port) - b for s, b in zip(shards, before_shards, strict=True)]
            rooms_per_shard = [0] * SHARDS
            for room in rooms:
                rooms_per_shard[shard_of(shards, room)] += 1
            return {
                "nodes": node_count,
                "delivered": sum(got.values()),
                "expected_deliveries": expected,
                "received_per_node": per_node,
                "hosted_rooms_per_node": hosted,
                "rooms_per_shard": rooms_per_shard,
                "spublish_per_shard": per_shard,
            }
        finally:
            for c in clients:
                c.close()
            for p in [*nodes, *shards]:
                p.stop()


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{ROOMS} rooms over {SHARDS} shards, members of each room on 2 nodes, {MESSAGES_PER_ROOM} messages a room.",
        "",
        "| nodes | node | rooms hosted | messages received from Redis | expected (hosted x messages) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for i, (got, hosted) in enumerate(zip(r["received_per_node"], r["hosted_rooms_per_node"], strict=True)):
            lines.append(f"| {r['nodes']} | n{i} | {hosted} | {got:.0f} | {hosted * MESSAGES_PER_ROOM} |")
    lines += [
        "",
        "| nodes | shard | rooms on it | SPUBLISH calls | expected (rooms x messages) |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        for i, (calls, rooms) in enumerate(zip(r["spublish_per_shard"], r["rooms_per_shard"], strict=True)):
            lines.append(f"| {r['nodes']} | {i} | {rooms} | {calls} | {rooms * MESSAGES_PER_ROOM} |")
    lines += [
        "",
        "deliveries: " + ", ".join(f"{r['nodes']} nodes {r['delivered']}/{r['expected_deliveries']}" for r in results),
    ]
    return "\n".join(lines)


def main() -> None:
    results = [asyncio.run(run(n)) for n in (2, 4)]
    print(markdown(results))


if __name__ == "__main__":
    main()
