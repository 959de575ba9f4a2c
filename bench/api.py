"""The server API's costs, beside a member's send_message in the same run:

    python -m bench.api              # ~2 minutes on 2 cores
    python -m bench.api --quick      # shorter phases, to try things out

1. Posts on one node, closed loop (each sender waits for its answer before the next), at
   concurrency 1 and 16, in interleaved rounds: a member's `send_message` over a websocket,
   `POST /api/rooms/<room>/messages` over keep-alive HTTP/1.1 connections, and
   `ChatEmitter.publish` from a plain Python process of its own (threads), as a Celery worker
   would run it. One more member of the room receives every message, in every phase.
2. A command on a user, timed to the last node's answer (the call returns then), with 2 and
   4 nodes each holding one connection of the user: a command that finds nobody (the control
   path's round trip alone), a join and a leave; over HTTP on the first node and from
   ChatEmitter.

Only 127.0.0.1; every process it starts is stopped at the end. Results go to
bench/results/api.json and api.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from . import procs
from .sioclient import SioClient, connect

API_KEY = "bench-api-key-0123456789abcdef0123456789"
ROOM = "bench"
TEXT = "a message of the bench"
# The per-connection send limit (20/s) would refuse the closed-loop members: raised here only.
NODE_ENV = {"API_KEY": API_KEY, "SEND_RATE": "100000", "SEND_BURST": "100000", "LOG_LEVEL": "WARNING"}
RESULTS = Path(__file__).resolve().parent / "results"


class Deployment:
    """One private redis-server and `count` nodes from the Procfile's web line."""

    def __init__(self, count: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="chat-bench-api-"))
        self.redis = procs.start_redis(self.root / "redis")
        self.url = f"redis://127.0.0.1:{self.redis.port}/0"
        spec = procs.NodeSpec("wsgi:app", NODE_ENV)
        self.nodes = [procs.start_node(spec, self.url, self.root, f"api-{i}") for i in range(count)]
        for node in self.nodes:
            procs.wait_healthy(node)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self.redis.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class Http:
    """One keep-alive HTTP/1.1 connection; requests one at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int) -> Http:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        status_line, *lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
        return int(status_line.split()[1]), orjson.loads(await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 2),
        "n": len(ordered),
    }


# -- posts ---------------------------------------------------------------------------------


class Meter:
    """Wall time and the node's and Redis's CPU across the measured part of a phase only."""

    def __init__(self, node: procs.Proc, redis: procs.Proc) -> None:
        self.node, self.redis = node, redis
        self.wall = self.node_cpu = self.redis_cpu = 0.0

    def start(self) -> None:
        self.wall, self.node_cpu, self.redis_cpu = time.monotonic(), self.node.cpu(), self.redis.cpu()

    def stop(self) -> None:
        self.wall = time.monotonic() - self.wall
        self.node_cpu = self.node.cpu() - self.node_cpu
        self.redis_cpu = self.redis.cpu() - self.redis_cpu


async def closed_loop(senders: int, duration: float, one: Any, meter: Meter) -> int:
    """`senders` loops calling `await one(i)` until `duration` is over; answers counted."""
    meter.start()
    end = time.monotonic() + duration
    counts = [0] * senders

    async def loop(i: int) -> None:
        while time.monotonic() < end:
            await one(i)
            counts[i] += 1

    await asyncio.gather(*(loop(i) for i in range(senders)))
    meter.stop()
    return sum(counts)


async def member_phase(port: int, senders: int, duration: float, meter: Meter) -> int:
    clients = [await connect(port, f"member-{i}") for i in range(senders)]
    for client in clients:
        assert (await client.call("join_room", {"room": ROOM}))["ok"]

    async def send(i: int) -> None:
        ack = await clients[i].call("send_message", {"room": ROOM, "message": TEXT})
        assert ack["ok"], ack

    try:
        return await closed_loop(senders, duration, send, meter)
    finally:
        for client in clients:
            client.close()


async def http_phase(port: int, senders: int, duration: float, meter: Meter) -> int:
    connections = [await Http.open(port) for _ in range(senders)]

    async def post(i: int) -> None:
        status, body = await connections[i].call("POST", f"/api/rooms/{ROOM}/messages", {"message": TEXT})
        assert status == 200 and body["ok"], body

    try:
        return await closed_loop(senders, duration, post, meter)
    finally:
        for connection in connections:
            connection.close()


EMITTER_WORKER = """
import json, sys, threading, time
from chat_app.emitter import ChatEmitter
assert "gevent" not in sys.modules
url, senders, duration, room, text = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
chat = ChatEmitter(url)
chat.publish(room, "warm-up")  # the connection, the script and the server's id, once
print("ready", flush=True)
sys.stdin.readline()  # the meter starts
counts = [0] * senders
end = time.monotonic() + duration
def loop(i):
    while time.monotonic() < end:
        chat.publish(room, text)
        counts[i] += 1
threads = [threading.Thread(target=loop, args=(i,)) for i in range(senders)]
started = time.process_time()
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"sent": sum(counts), "cpu_s": time.process_time() - started}))
"""


async def emitter_phase(redis_url: str, senders: int, duration: float, meter: Meter) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        EMITTER_WORKER,
        redis_url,
        str(senders),
        str(duration),
        ROOM,
        TEXT,
        cwd=procs.ROOT,
        env={**os.environ, "PYTHONPATH": str(procs.ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
    meter.start()
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    out = await asyncio.wait_for(proc.stdout.read(), duration + 30)
    meter.stop()
    await proc.wait()
    assert proc.returncode == 0, "the emitter worker failed"
    result = json.loads(out.decode().strip().splitlines()[-1])
    meter.wall = duration  # its loop's own span; the process's start and exit are not counted
    return int(result["sent"])


async def posts(rounds: int, duration: float, concurrencies: list[int]) -> dict[str, Any]:
    deployment = Deployment(1)
    node = deployment.nodes[0]
    received = [0]

    def on_event(name: str, data: Any) -> None:
        if name == "broadcast_message":
            received[0] += 1

    receiver: SioClient = await connect(node.port, "receiver", on_event)
    assert (await receiver.call("join_room", {"room": ROOM}))["ok"]
    results: dict[str, Any] = {}
    try:
        for senders in concurrencies:
            rows: dict[str, list[dict[str, float]]] = {"member": [], "http": [], "emitter": []}
            for _ in range(rounds):  # interleaved, so drifting background load hits all three alike
                for kind, runs in rows.items():
                    before_rx, meter = received[0], Meter(node, deployment.redis)
                    if kind == "member":
                        sent = await member_phase(node.port, senders, duration, meter)
                    elif kind == "http":
                        sent = await http_phase(node.port, senders, duration, meter)
                    else:
                        sent = await emitter_phase(deployment.url, senders, duration, meter)
                    await wait_for(lambda b=before_rx, s=sent: received[0] - b >= s, 10)
                    row = {
                        "msgs_per_s": round(sent / meter.wall),
                        "node_cpu_ms_per_msg": round(meter.node_cpu * 1000 / max(sent, 1), 3),
                        "redis_cpu_ms_per_msg": round(meter.redis_cpu * 1000 / max(sent, 1), 3),
                    }
                    runs.append(row)
                    print(f"  posts c={senders} {kind:8s} {row}", flush=True)
            results[str(senders)] = {
                kind: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for kind, runs in rows.items()
            }
    finally:
        receiver.close()
        deployment.stop()
    return results


async def wait_for(predicate: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise RuntimeError("the receiver missed messages")
        await asyncio.sleep(0.02)


# -- commands --------------------------------------------------------------------------------


async def commands(node_counts: list[int], repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in node_counts:
        results[str(count)] = await command_costs(count, repeats)
        print(f"  commands, {count} nodes: {results[str(count)]}", flush=True)
    return results


async def command_costs(count: int, repeats: int) -> dict[str, Any]:
    """Each call returns with the last node's answer: its latency is the command's cost."""
    from chat_app.emitter import ChatEmitter

    deployment = Deployment(count)
    users = [await connect(node.port, "alice") for node in deployment.nodes]
    http = await Http.open(deployment.nodes[0].port)
    chat = ChatEmitter(deployment.url)
    timings: dict[str, list[float]] = {}

    async def over_http(name: str, method: str, path: str, connections: int) -> None:
        t = time.perf_counter()
        status, body = await http.call(method, path)
        timings.setdefault(f"http {name}", []).append(time.perf_counter() - t)
        assert status == 200 and body == {"ok": True, "connections": connections, "nodes": count}, body

    def from_emitter(name: str, action: str, user: str, room: str | None, connections: int) -> None:
        t = time.perf_counter()
        result = chat.command(action, user, room)
        timings.setdefault(f"emitter {name}", []).append(time.perf_counter() - t)
        assert (result.connections, result.nodes) == (connections, count), result

    try:
        for _ in range(repeats):
            await over_http("nobody", "POST", "/api/users/nobody/disconnect", 0)
            await over_http("join", "POST", f"/api/users/alice/rooms/{ROOM}", count)
            await over_http("leave", "DELETE", f"/api/users/alice/rooms/{ROOM}", count)
            await asyncio.to_thread(from_emitter, "nobody", "disconnect", "nobody", None, 0)
            await asyncio.to_thread(from_emitter, "join", "join", "alice", ROOM, count)
            await asyncio.to_thread(from_emitter, "leave", "leave", "alice", ROOM, count)
    finally:
        chat.close()
        http.close()
        for user in users:
            user.close()
        deployment.stop()
    return {name: summary(values) for name, values in timings.items()}


# -- report ----------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"# Server API bench ({results['started']})",
        "",
        f"{results['machine']}; load before {results['load']}",
        "",
    ]
    lines += [
        "## Posts, one node, closed loop (median of the rounds)",
        "",
        "| senders | path | msgs/s | x member | node CPU ms/msg | Redis CPU ms/msg |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for senders, kinds in results["posts"].items():
        base = kinds["member"]["msgs_per_s"]
        for kind, row in kinds.items():
            ratio = row["msgs_per_s"] / base if base else float("nan")
            lines.append(
                f"| {senders} | {kind} | {row['msgs_per_s']:.0f} | {ratio:.2f} | "
                f"{row['node_cpu_ms_per_msg']:.3f} | {row['redis_cpu_ms_per_msg']:.3f} |"
            )
    lines += [
        "",
        "## A command on a user, to the last node's answer",
        "",
        "| nodes | command | median ms | p95 ms | n |",
        "| --- | --- | --- | --- | --- |",
    ]
    for count, rows in results["commands"].items():
        for name, row in rows.items():
            lines.append(f"| {count} | {name} | {row['median_ms']} | {row['p95_ms']} | {row['n']} |")
    return "\n".join(lines) + "\n"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "publish_linger": NODE_ENV.get("PUBLISH_LINGER", "0.005 (default)"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    rounds, duration, repeats = (1, 2.0, 10) if args.quick else (3, 4.0, 40)
    print("posts", flush=True)
    results["posts"] = await posts(rounds, duration, [1, 16])
    print("commands", flush=True)
    results["commands"] = await commands([2, 4], repeats)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--publish-linger", help="PUBLISH_LINGER for the nodes (default: theirs, 0.005)")
    args = parser.parse_args()
    if args.publish_linger is not None:
        NODE_ENV["PUBLISH_LINGER"] = args.publish_linger
    results = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "api.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (RESULTS / "api.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
