"""The generator on the official socket.io-client 4.8: one Node process (bench/node/generator.js).

A heavier, real client: each frame costs it what it costs an application on socket.io-client,
so the servers share the 2 cores with a load like the one users bring. The workload stays
in workloads.py: this side hands the Node process the members and the schedule, and pours
the raw bookkeeping it returns (acks, per-member arrivals, latencies) into the same FanOut,
so both generators' figures come out of one function. Its CPU is read from /proc, as the
nodes' is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
from array import array
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson

from . import nodejs, procs
from .workloads import (
    CONNECT_CONCURRENCY,
    DRAIN_CAP_S,
    DRAIN_QUIET_S,
    PAD,
    Between,
    FanOut,
    FanOutSession,
    Joined,
    Member,
    Sent,
)

SCRIPT = nodejs.NODE_DIR / "generator.js"
CONNECT_TIMEOUT_S = 10.0
SETUP_TIMEOUT_S = 120.0  # 2,000 connects and joins take a few seconds; a stuck one fails here
LINE_LIMIT = 1 << 28  # a result line carries every latency: ~1M of them at 10,000 msg/s


def _flags(m: Member) -> int:
    return int(m.measure) | int(m.remote) << 1 | int(m.sender) << 2


def _floats(encoded: str) -> array:
    values = array("d")
    values.frombytes(base64.b64decode(encoded))
    return values


@dataclass
class _Process:
    """The Node generator, spoken to in JSON lines; killed with its group when done."""

    process: asyncio.subprocess.Process

    @classmethod
    async def start(cls) -> _Process:
        process = await asyncio.create_subprocess_exec(
            "node",
            str(SCRIPT),
            cwd=nodejs.NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            start_new_session=True,
        )
        return cls(process)

    def tell(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(message) + b"\n")

    async def expect(self, event: str, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            code = await asyncio.wait_for(self.process.wait(), 10)
            raise RuntimeError(f"the Node generator exited ({code}) before {event!r}")
        reply = orjson.loads(line)
        if reply.get("event") == "error":
            raise RuntimeError(f"the Node generator failed: {reply.get('message')}")
        if reply.get("event") != event:
            raise RuntimeError(f"the Node generator said {reply.get('event')!r}, expected {event!r}")
        return reply

    def cpu(self) -> float:
        return procs.cpu_seconds(self.process.pid)

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                self.tell({"cmd": "close"})
                await self.expect("closed", 10)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()


@contextlib.asynccontextmanager
async def _generator(job: dict[str, Any], first: str = "ready") -> AsyncIterator[tuple[_Process, dict[str, Any]]]:
    """The generator given `job`, and its `first` event."""
    proc = await _Process.start()
    try:
        job.update(concurrency=CONNECT_CONCURRENCY, connect_timeout=CONNECT_TIMEOUT_S)
        proc.tell(job)
        yield proc, await proc.expect(first, SETUP_TIMEOUT_S)
    finally:
        await proc.close()


@dataclass
class _OfficialSession:
    proc: _Process
    f: FanOut

    async def send(self, rate: float, duration: float) -> Sent:
        cpu0, wall0 = self.proc.cpu(), time.perf_counter()
        self.proc.tell({"cmd": "go", "rate": rate, "duration": duration, "quiet": DRAIN_QUIET_S, "cap": DRAIN_CAP_S})
        r = await self.proc.expect("result", duration + DRAIN_CAP_S + 60)
        cpu, wall = self.proc.cpu() - cpu0, time.perf_counter() - wall0
        f = self.f
        acks, counts = base64.b64decode(r["acks"]), base64.b64decode(r["counts"])
        for room in range(f.rooms):
            part = slice(room * f.capacity, (room + 1) * f.capacity)
            f.acks[room], f.counts[room] = bytearray(acks[part]), bytearray(counts[part])
        f.members = list(r["members"])
        f.latencies, f.ack_latencies = _floats(r["latencies"]), _floats(r["ack_latencies"])
        f.remote_latencies = _floats(r["remote_latencies"])
        f.errors = Counter(r["errors"])
        f.duplicates, f.delivered, f.sent, f.acked_ok = r["duplicates"], r["delivered"], r["sent"], r["acked_ok"]
        f.last_delivery, f.max_lag = r["last_delivery"], r["max_lag"]  # last_delivery is relative to t0 = 0
        f.timeline = [tuple(row) for row in r["timeline"]]
        return Sent(f, 0.0, r["settled"], cpu, wall)


class OfficialGenerator:
    """socket.io-client 4.8 in one Node process, websocket transport only."""

    name = "official"

    def describe(self) -> str:
        v = nodejs.versions()
        return (
            f"official: socket.io-client {v['socket.io-client']} on Node {v.get('node', '?')}, websocket, one process"
        )

    @contextlib.asynccontextmanager
    async def fanout(self, members: list[Member], f: FanOut) -> AsyncIterator[FanOutSession]:
        job = {
            "kind": "fanout",
            "rooms": f.rooms,
            "capacity": f.capacity,
            "pad": PAD,
            "members": [[m.port, m.user, m.room, _flags(m)] for m in members],
        }
        async with _generator(job) as (proc, _):
            yield _OfficialSession(proc, f)

    @contextlib.asynccontextmanager
    async def idle(self, members: list[Member], between: Between | None = None) -> AsyncIterator[Joined]:
        job = {"kind": "idle", "members": [[m.port, m.user, m.room, 0] for m in members]}
        async with _generator(job, "connected") as (proc, connected):
            if between is not None:
                between()
            proc.tell({"cmd": "join"})  # generator.js waits for it between the two phases
            ready = await proc.expect("ready", SETUP_TIMEOUT_S)
            yield Joined(ready["total_s"], ready["connect_times"], ready["join_times"], connected["connect_s"])
