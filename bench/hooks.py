"""Decision hooks and webhooks under load (issue 26, item 5), beside the peer in one invocation.

    python -m bench.hooks                                  # receiver, W2 ladder, webhooks (~5 min)
    python -m bench.hooks --parts w2 --rates 1000,2000 --generator official
    python -m bench.hooks --parts w2,webhooks --rates 1000 --profile 8   # py-spy node A

- receiver: the hook receiver (bench/http_receiver.py) alone, driven by a closed-loop
  keep-alive client with the nodes' request: requests/s and its CPU per request, so the
  figures below are known not to be the receiver's.
- w2: W2 (20 rooms x 10 members over 2 nodes, open loop) at each rate on chat_app with the
  hooks off, chat_app with a `send` hook on (HOOK_EVENTS=send, signed with HOOK_SECRET, every
  other hook setting default) and the peer, interleaved per rate. A server leaves the ladder
  after two rates in a row not sustained (sustained: zero loss, every send acked ok, p99 <
  250 ms); its highest sustained rate is the highest it sustained.
- webhooks: W2's load at 1,000 msg/s for 15 s on chat_app with the archive (a PostgreSQL of
  the bench's own) and WEBHOOK_URL on a receiver of its own: message.created events/s at the
  receiver, lag (receipt - the generator's send), the backlog (Redis outbox, webhook_outbox)
  each second, and how long after the last send the last event came.

Results go to bench/results/hooks-<generator>.json and .md (git-ignored); the tables are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from . import nodejs, procs
from .__main__ import OURS, PEER, event_loop_runner, pick_generator
from .archive import fresh_archive, outbox_len
from .pg import BenchPostgres
from .pg import unavailable as pg_unavailable
from .profile import summarise
from .report import sustained
from .workloads import LEAN, Cluster, FanOut, Generator, Member, Server, cluster, fanout_result, percentile

ROOMS, PER_NODE, NODES = 20, 5, 2  # W2's load
LADDER = "500,750,1000,2000,3000,4000,5000"
SECRET = "whsec_" + "YmVuY2gtaG9va3Mtc2VjcmV0LWtleS0zMmJ5dGVzISE="  # 32 bytes; the bench's own
# The send and join limits (20/s and 5/s per connection) would refuse the load: raised.
LIMITS = {"SEND_RATE": "100000", "SEND_BURST": "100000", "JOIN_RATE": "100000", "JOIN_BURST": "100000"}
OFF = replace(OURS, spec=replace(OURS.spec, env={**OURS.spec.env, **LIMITS}))
WEBHOOK_RATE = 1000.0
WEBHOOK_DRAIN_CAP_S = 120.0  # the last event must be in by then after the sends end


def with_env(label: str, env: dict[str, str]) -> Server:
    return replace(OFF, label=label, spec=replace(OFF.spec, env={**OFF.spec.env, **env}))


def hooked(url: str) -> Server:
    return with_env("chat_app+hook", {"HOOK_URL": url, "HOOK_EVENTS": "send", "HOOK_SECRET": SECRET})


# -- the receiver process --------------------------------------------------------------------


@dataclass
class Receiver:
    """bench/http_receiver.py in its own process group on a free port."""

    port: int
    process: subprocess.Popen[bytes]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=10) as r:
            return orjson.loads(r.read())

    def cpu(self) -> float:
        return procs.cpu_seconds(self.process.pid)


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    port = procs.free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - read only when it fails to start
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.http_receiver", str(port)],
        cwd=procs.ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    rx = Receiver(port, process)

    def ready() -> bool:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"receiver exited with {process.returncode}: {log.read()[-2000:]!r}")
        try:
            rx.get("/stats")
            return True
        except OSError:
            return False

    try:
        procs.wait_until(ready, 10, f"receiver on {port}")
        yield rx
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        process.wait(timeout=10)
        log.close()


# -- the receiver alone -----------------------------------------------------------------------

# What a node sends per hooked send: urllib3's headers, the signature, a W2-sized body.
_BODY = orjson.dumps({"event": "send", "user": "u0-0-0", "room": "room0", "message": "0|123|4567.123456|" + "x" * 40})
_REQUEST = (
    b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Encoding: identity\r\nUser-Agent: python-urllib3/2.8.0\r\n"
    b"webhook-id: msg_0123456789abcdef01234567\r\nwebhook-timestamp: 1765000000\r\n"
    b"content-type: application/json\r\nwebhook-signature: v1,"
    + b"A" * 44
    + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
)


class _Client(asyncio.Protocol):
    """One keep-alive connection sending the next request as soon as an answer is in."""

    def __init__(self, answer_size: int, counter: list[int], stop: asyncio.Event) -> None:
        self.answer_size, self.counter, self.stop, self.pending = answer_size, counter, stop, 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.transport.write(_REQUEST)

    def data_received(self, data: bytes) -> None:
        self.pending += len(data)
        while self.pending >= self.answer_size:
            self.pending -= self.answer_size
            self.counter[0] += 1
            if not self.stop.is_set():
                self.transport.write(_REQUEST)


async def receiver_alone(seconds: float = 3.0, connections: int = 32) -> dict[str, Any]:
    with receiver() as rx:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        writer.write(_REQUEST)
        answer = await reader.readuntil(b"}")
        writer.close()
        counter, stop = [0], asyncio.Event()
        transports = []
        for _ in range(connections):
            t, _p = await loop.create_connection(lambda: _Client(len(answer), counter, stop), "127.0.0.1", rx.port)
            transports.append(t)
        await asyncio.sleep(0.5)  # warm
        n0, cpu0, t0 = counter[0], rx.cpu(), time.perf_counter()
        await asyncio.sleep(seconds)
        n1, cpu1, t1 = counter[0], rx.cpu(), time.perf_counter()
        stop.set()
        for t in transports:
            t.close()
    done = n1 - n0
    return {
        "connections": connections,
        "seconds": t1 - t0,
        "requests_per_s": done / (t1 - t0),
        "receiver_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
        "receiver_us_per_request": 1e6 * (cpu1 - cpu0) / max(done, 1),
    }


async def caller_alone(greenlets: int, raw: bool = False, seconds: float = 3.0) -> dict[str, Any]:
    """chat_app's DecisionHooks (or the raw-socket floor) in a gevent process of its own
    (bench/hook_caller.py)."""
    with receiver() as rx:
        cpu0 = rx.cpu()
        args = [sys.executable, "-m", "bench.hook_caller", rx.url("/hook"), str(seconds), str(greenlets), SECRET]
        args += ["raw"] if raw else []
        proc = await asyncio.create_subprocess_exec(*args, cwd=procs.ROOT, stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 30)
        result = json.loads(out)
        result["receiver_us_per_call"] = 1e6 * (rx.cpu() - cpu0) / max(result["calls_per_s"] * seconds, 1)
    return result


# -- W2 with the hook on and off --------------------------------------------------------------


def w2_members(c: Cluster, f: FanOut) -> list[Member]:
    members = []
    for r in range(ROOMS):
        for i, node in enumerate(c.nodes):
            for j in range(PER_NODE):
                remote = i != r % NODES
                members.append(Member(node.port, f"u{r}-{i}-{j}", r, True, remote, (i, j) == (r % NODES, 0)))
    return members


def scrape(c: Cluster, prefixes: tuple[str, ...]) -> dict[str, float]:
    """The named counters and gauges of every node, summed (a `_total` suffix dropped)."""
    out: dict[str, float] = {}
    for node in c.nodes:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name.startswith(prefixes) and not s.name.endswith("_created"):
                    name = s.name.removesuffix("_total")
                    out[name] = out.get(name, 0.0) + s.value
    return out


@dataclass
class Profile:
    """py-spy on node A's gunicorn worker for `seconds` of a step's sends (bench/profile.py's way)."""

    seconds: float
    out: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, c: Cluster) -> None:
        worker = c.nodes[0].worker_pids()[0]
        args = ["py-spy", "record", "--pid", str(worker), "--duration", str(int(self.seconds))]
        args += ["--rate", "250", "--format", "raw", "--output", str(self.out)]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def summary(self) -> str:
        if self.process is None:
            return ""
        self.process.wait(timeout=self.seconds + 30)
        return summarise(self.out, 30) if self.out.exists() else "py-spy wrote nothing"


def profile_for(args: argparse.Namespace, what: str) -> Profile | None:
    if not args.profile:
        return None
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return Profile(args.profile, Path(args.out) / f"profile-hooks-{what}.txt")


def refused_per_second(f: FanOut, rate: float, duration: float) -> list[int]:
    """Refused sends by the second they were due in (room r's n-th is the schedule's n*ROOMS+r-th):
    a blip at the start or a steady limit."""
    counts = [0] * (int(duration) + 1)
    for r in range(ROOMS):
        for n in range(f.capacity):
            if f.acks[r][n] == 2:
                counts[min(int((n * ROOMS + r) / rate), len(counts) - 1)] += 1
    return counts


async def w2_step(
    server: Server,
    rate: float,
    duration: float,
    generator: Generator,
    rx: Receiver | None,
    profile: Profile | None = None,
) -> dict[str, Any]:
    with cluster(server, NODES) as c:
        f = FanOut(ROOMS, int(rate * duration / ROOMS) + 2)
        async with generator.fanout(w2_members(c, f), f) as session:
            await asyncio.sleep(0.5)
            if profile:
                profile.start(c)
            (nodes0, redis0), rx0 = c.cpu(), rx.cpu() if rx else 0.0
            sent = await session.send(rate, duration)
            (nodes1, redis1), rx1 = c.cpu(), rx.cpu() if rx else 0.0
            hooks = scrape(c, ("chat_hook_",)) if rx else {}
        result = fanout_result(sent.fanout, sent.t0, sent.wall_s, sent.generator_cpu_s)
    result.pop("timeline", None)
    delivered = max(result["delivered"], 1)
    result.update(
        server=server.label,
        rate=rate,
        generator=generator.name,
        cut_off=not sent.settled,
        ack_p50_ms=1000 * percentile(f.ack_latencies, 50),
        node_cpu_s=sum(nodes1) - sum(nodes0),
        node_us_per_delivery=1e6 * (sum(nodes1) - sum(nodes0)) / delivered,
        redis_cpu_s=redis1 - redis0,
        receiver_cpu_s=rx1 - rx0,
        receiver_cpu_pct=100 * (rx1 - rx0) / max(sent.wall_s, 1e-9),
        hooks=hooks,
        sustained=sustained(result),
        refused_per_second=refused_per_second(f, rate, duration),
        profile=profile.summary() if profile else "",
    )
    return result


async def ladder(args: argparse.Namespace, generator: Generator, peer: bool) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = []
    out: set[str] = set() if peer else {"peer"}  # servers that left the ladder
    misses: dict[str, int] = {}  # in a row
    with receiver() as rx:
        for rate in (float(r) for r in args.rates.split(",")):
            for kind in ("chat_app", "chat_app+hook", "peer"):
                if kind in out:
                    continue
                server = {"chat_app": OFF, "chat_app+hook": hooked(rx.url("/hook")), "peer": PEER}[kind]
                on = kind == "chat_app+hook"
                profile = profile_for(args, f"send-{rate:g}") if on else None
                step = await w2_step(server, rate, args.duration, generator, rx if on else None, profile)
                steps.append(step)
                say(step)
                misses[kind] = 0 if step["sustained"] else misses.get(kind, 0) + 1
                if misses[kind] >= 2 and not args.keep_going:
                    out.add(kind)
            if len(out) == 3:
                break
    return steps


# -- webhooks at 1,000 msg/s -----------------------------------------------------------------


def webhook_pending(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM webhook_outbox WHERE state = 'pending'").fetchone()
    return int(row[0]) if row else -1


async def watch_backlog(c: Cluster, url: str, samples: list[tuple[float, int, int]]) -> None:
    """Every 0.5 s: (perf_counter, the archive's Redis outbox, pending webhook rows)."""
    while True:
        pending = await asyncio.to_thread(webhook_pending, url)
        samples.append((time.perf_counter(), outbox_len(c), pending))
        await asyncio.sleep(0.5)


def row_lag(url: str) -> dict[str, float]:
    """The archive's part of the lag: a row's `stored_at - sent_at` (bench/archive.py's column)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - sent_at))"
            " FROM messages"
        ).fetchone()
    lag = row[0] if row and row[0] else [float("nan"), float("nan")]
    return {"row_lag_p50_ms": 1000 * float(lag[0]), "row_lag_p99_ms": 1000 * float(lag[1])}


async def webhook_step(
    pg: BenchPostgres, rate: float, duration: float, profile: Profile | None = None
) -> dict[str, Any]:
    url = fresh_archive(pg)
    with receiver() as rx:
        env = {"DATABASE_URL": url, "WEBHOOK_URL": rx.url("/webhook"), "WEBHOOK_SECRET": SECRET}
        server = with_env("chat_app+webhooks", env)
        with cluster(server, NODES) as c:
            f = FanOut(ROOMS, int(rate * duration / ROOMS) + 2)
            async with LEAN.fanout(w2_members(c, f), f) as session:
                await asyncio.sleep(1.0)  # member.joined and room.occupied go out first
                before = rx.get("/stats")
                samples: list[tuple[float, int, int]] = []
                watcher = asyncio.ensure_future(watch_backlog(c, url, samples))
                if profile:
                    profile.start(c)
                (nodes0, redis0), pg0, rx0 = c.cpu(), pg.cpu(), rx.cpu()
                sent = await session.send(rate, duration)
                deadline = time.perf_counter() + WEBHOOK_DRAIN_CAP_S
                while rx.get("/stats")["created"] < f.acked_ok and time.perf_counter() < deadline:
                    await asyncio.sleep(0.2)
                (nodes1, redis1), pg1, rx1 = c.cpu(), pg.cpu(), rx.cpu()
                await asyncio.sleep(0.6)
                watcher.cancel()
                stats, records = rx.get("/stats"), rx.get("/records")
                metrics = scrape(c, ("chat_webhooks_",))
        result = fanout_result(sent.fanout, sent.t0, sent.wall_s, sent.generator_cpu_s)
    result.pop("timeline", None)
    t0, end = sent.t0, sent.t0 + duration  # the schedule's first and last send
    arrivals, lags = records["arrivals"], [x for x in records["lags"] if not math.isnan(x)]
    per_second = [0] * (int(max(arrivals, default=t0) - t0) + 1)
    for a in arrivals:
        per_second[max(int(a - t0), 0)] += 1
    window = [a for a in arrivals if t0 + 2 <= a < end]  # past the first 2 s, while sending
    result.update(
        server=server.label,
        rate=rate,
        duration=duration,
        cut_off=not sent.settled,
        node_us_per_delivery=1e6 * (sum(nodes1) - sum(nodes0)) / max(result["delivered"], 1),
        redis_cpu_s=redis1 - redis0,
        pg_cpu_s=pg1 - pg0,
        receiver_cpu_s=rx1 - rx0,
        created=len(arrivals),
        events_before_sends=before["by_type"],
        events_by_type=stats["by_type"],
        duplicates=stats["duplicates"],
        out_of_order=stats["out_of_order"],
        out_of_order_seen=stats["out_of_order_seen"],
        missing=f.acked_ok - len(arrivals),
        events_per_s_while_sending=len(window) / max(duration - 2, 1e-9),
        events_per_s_overall=len(arrivals) / max((arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0, 1e-9),
        events_per_second=per_second,
        lag_p50_ms=1000 * percentile(lags, 50),
        lag_p99_ms=1000 * percentile(lags, 99),
        lag_max_ms=1000 * max(lags, default=float("nan")),
        last_event_after_last_send_s=(arrivals[-1] - end) if arrivals else float("nan"),
        backlog=[(round(t - t0, 1), o, p) for t, o, p in samples],
        backlog_max_pending=max((p for _, _, p in samples), default=-1),
        backlog_at_last_send=next((p for t, _, p in samples if t >= end), -1),
        metrics=metrics,
        profile=profile.summary() if profile else "",
        **row_lag(url),
    )
    return result


# -- the run ---------------------------------------------------------------------------------


async def run(args: argparse.Namespace, generator: Generator) -> dict[str, Any]:
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "generator": generator.name,
        "generator_detail": generator.describe(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "duration_s": args.duration,
    }
    peer = not nodejs.unavailable()
    if not peer:
        results["skipped_peer"] = nodejs.unavailable()
    if "receiver" in parts:
        results["receiver"] = await receiver_alone()
        print(f"[{time.strftime('%H:%M:%S')}] receiver alone {results['receiver']}", flush=True)
        results["caller"] = [await caller_alone(g, raw) for raw in (False, True) for g in (1, 16)]
        print(f"[{time.strftime('%H:%M:%S')}] caller alone {results['caller']}", flush=True)
    if "w2" in parts:
        results["w2"] = await ladder(args, generator, peer)
    if "webhooks" in parts:
        if reason := pg_unavailable():
            results["skipped_webhooks"] = f"needs PostgreSQL: {reason}"
        else:
            pg = BenchPostgres().start()
            try:
                results["webhooks"] = await webhook_step(
                    pg, WEBHOOK_RATE, args.webhook_seconds, profile_for(args, "webhooks")
                )
            finally:
                pg.stop()
            say(results["webhooks"])
    results["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return results


def say(r: dict[str, Any]) -> None:
    keys = ("server", "rate", "sustained", "loss_pct", "refused", "p50_ms", "p99_ms", "ack_p50_ms")
    keys += ("node_us_per_delivery", "receiver_cpu_pct", "hooks", "created", "missing", "lag_p50_ms", "lag_p99_ms")
    keys += ("events_per_s_while_sending", "last_event_after_last_send_s", "backlog_max_pending")
    brief = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k in keys}
    print(f"[{time.strftime('%H:%M:%S')}] {brief}", flush=True)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "-"


def _highest(steps: list[dict[str, Any]], label: str) -> float:
    return max((s["rate"] for s in steps if s["server"] == label and s["sustained"]), default=float("nan"))


def _fmt(v: float, spec: str = "{:.1f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else spec.format(v)


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Run {results['started']}, generator {results['generator_detail']}; load before "
        f"{results['load_before']}, after {results['load_after']}.",
        "",
    ]
    if r := results.get("receiver"):
        lines += [
            "| hook receiver alone (closed loop, keep-alive) | value |",
            "|---|---:|",
            f"| requests/s, {r['connections']} connections, sharing the 2 cores with its client | "
            f"{r['requests_per_s']:,.0f} |",
            f"| receiver CPU per request (µs) / % of a core | {r['receiver_us_per_request']:.1f} / "
            f"{r['receiver_cpu_pct']:.0f} |",
        ]
        for c in results.get("caller", []):
            lines.append(
                f"| {c['client']} alone under gevent, {c['greenlets']} greenlet(s) in a loop: calls/s, "
                f"p50 / p99 (ms), caller µs per call | {c['calls_per_s']:,.0f}, {c['p50_ms']:.2f} / "
                f"{c['p99_ms']:.2f}, {c['caller_us_per_call']:.0f} |"
            )
        lines.append("")
    if steps := results.get("w2"):
        labels = ("chat_app", "chat_app+hook", "peer")
        best = [_highest(steps, label) for label in labels]
        lines += [
            "| W2 highest sustained rate (msg/s) | hook off | hook on | peer | on / off | on / peer |",
            "|---|---:|---:|---:|---:|---:|",
            f"| zero loss, all acked ok, p99 < 250 ms | {_fmt(best[0], '{:,.0f}')} | {_fmt(best[1], '{:,.0f}')} "
            f"| {_fmt(best[2], '{:,.0f}')} | {_ratio(best[1], best[0])} | {_ratio(best[1], best[2])} |",
            "",
            "| W2 rate | off p50 / p99 (ms) | on p50 / p99 (ms) | peer p50 / p99 (ms) | **added by the hook "
            "p50 / p99 (ms)** | ack p50 off / on (ms) | node µs/delivery off / on / peer | on / off | on / peer "
            "| receiver % of a core | hook calls / failures / saturated |",
            "|---:|---|---|---|---|---|---|---:|---:|---:|---|",
        ]
        by = {(s["server"], s["rate"]): s for s in steps}
        for rate in sorted({s["rate"] for s in steps}):
            off, on, peer = (by.get((label, rate), {}) for label in labels)

            def lat(s: dict[str, Any]) -> str:
                if not s:
                    return "-"
                mark = "" if s["sustained"] else " ✗"
                return f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}{mark}"

            added = f"{on['p50_ms'] - off['p50_ms']:+.1f} / {on['p99_ms'] - off['p99_ms']:+.1f}" if on and off else "-"
            acks = f"{_fmt(off.get('ack_p50_ms', math.nan))} / {_fmt(on.get('ack_p50_ms', math.nan))}"
            cpu = [d.get("node_us_per_delivery", math.nan) for d in (off, on, peer)]
            hooks = on.get("hooks", {})
            calls = (
                f"{hooks.get('chat_hook_calls', 0):,.0f} / {hooks.get('chat_hook_failures', 0):,.0f} / "
                f"{hooks.get('chat_hook_saturated', 0):,.0f}"
                if on
                else "-"
            )
            lines.append(
                f"| {rate:,.0f} | {lat(off)} | {lat(on)} | {lat(peer)} | {added} | {acks} "
                f"| {' / '.join(_fmt(v) for v in cpu)} | {_ratio(cpu[1], cpu[0])} | {_ratio(cpu[1], cpu[2])} "
                f"| {_fmt(on.get('receiver_cpu_pct', math.nan), '{:.0f}')} | {calls} |"
            )
        misses = [s for s in steps if not s["sustained"]]
        for s in misses:
            lines.append(
                f"\n✗ {s['server']} @{s['rate']:,.0f}: loss {s['lost']}, refused {s['refused']}, "
                f"unacked {s['unacked']}, p99 {s['p99_ms']:.0f} ms"
                + (f", refused per second of the schedule {s['refused_per_second']}" if s["refused"] else "")
            )
        lines.append("")
    if w := results.get("webhooks"):
        off = next((s for s in results.get("w2", []) if s["server"] == "chat_app" and s["rate"] == w["rate"]), {})
        peer = next((s for s in results.get("w2", []) if s["server"] == "peer" and s["rate"] == w["rate"]), {})
        lines += [
            f"| webhooks, W2's load at {w['rate']:,.0f} msg/s for {w['duration']:.0f} s (lean) | value |",
            "|---|---:|",
            f"| message.created received / acked ok sends / missing / twice / out of seq order | "
            f"{w['created']:,} / {w['accepted']:,} / {w['missing']} / {w['duplicates']} / {w['out_of_order']} |",
            f"| events/s at the receiver while sending (past the first 2 s) / overall | "
            f"{w['events_per_s_while_sending']:,.0f} / {w['events_per_s_overall']:,.0f} |",
            f"| lag, receipt - send: p50 / p99 / max (ms) | {w['lag_p50_ms']:.0f} / {w['lag_p99_ms']:.0f} / "
            f"{w['lag_max_ms']:.0f} |",
            f"| of which the archive (row stored - sent) p50 / p99 (ms) | {w['row_lag_p50_ms']:.0f} / "
            f"{w['row_lag_p99_ms']:.0f} |",
            f"| pending webhook rows: most / at the last send | {w['backlog_max_pending']:,} / "
            f"{w['backlog_at_last_send']:,} |",
            f"| last event after the last send (backlog drained) | {w['last_event_after_last_send_s']:.1f} s |",
            f"| delivery p99 (ms): webhooks on / hooks off / peer, same rate | {w['p99_ms']:.1f} / "
            f"{_fmt(off.get('p99_ms', math.nan))} / {_fmt(peer.get('p99_ms', math.nan))} |",
            f"| node µs/delivery: webhooks on / off / peer (on / off, on / peer) | {w['node_us_per_delivery']:.1f} / "
            f"{_fmt(off.get('node_us_per_delivery', math.nan))} / {_fmt(peer.get('node_us_per_delivery', math.nan))}"
            f" ({_ratio(w['node_us_per_delivery'], off.get('node_us_per_delivery', math.nan))}, "
            f"{_ratio(w['node_us_per_delivery'], peer.get('node_us_per_delivery', math.nan))}) |",
            f"| events/s each second from the first send | {' '.join(str(n) for n in w['events_per_second'])} |",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hooks", description=__doc__)
    parser.add_argument("--parts", default="receiver,w2,webhooks", help="comma-separated subset of those")
    parser.add_argument("--rates", default=LADDER, help="W2 rates (msg/s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sends per W2 step")
    parser.add_argument("--webhook-seconds", type=float, default=15.0, help="seconds of sends at 1,000 msg/s")
    parser.add_argument(
        "--profile", type=float, default=0, help="py-spy node A for this many seconds of each hooked step"
    )
    parser.add_argument("--keep-going", action="store_true", help="run every rate even past a miss")
    parser.add_argument("--generator", choices=("lean", "official"), default="lean")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="where to write results")
    args = parser.parse_args()
    generator = pick_generator(args.generator)
    results = event_loop_runner()(run(args, generator))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"hooks-{generator.name}.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / f"hooks-{generator.name}.md").write_text(table)
    print(table)
    for step in [*results.get("w2", []), results.get("webhooks", {})]:
        if step.get("profile"):
            print(f"\nnode A under py-spy, {step['server']} @{step['rate']:,.0f} msg/s\n{step['profile']}")


if __name__ == "__main__":
    main()
