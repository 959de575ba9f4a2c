"""The archive's costs (issue 25, item 10), chat_app beside the peer in one invocation.

    python -m bench.archive                              # all four parts, ~6 minutes
    python -m bench.archive --parts w2 --rates 1000      # a subset

- w2: W2's load (20 rooms x 10 members over 2 nodes, open loop) at each rate on chat_app
  with the archive off, chat_app with it on (DATABASE_URL, a fresh database per step) and
  the peer: archive lag p50/p99 (from the rows and from the nodes' histogram), node CPU per
  delivery, Redis CPU per message, PostgreSQL CPU per message, and whether every acked
  message is in the table once.
- history: 1,000,000 messages of one room COPY-fast into `messages`, then
  `ArchiveStore.page(room, before, 50)` at random `before`, p50/p99.
- outage: W2 at 1,000 msg/s on chat_app with the archive while PostgreSQL is stopped for
  60 s; time from its return until the outbox is empty, and the rows checked.

Results go to bench/results/archive.json and archive.md (git-ignored); the table is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from chat_app.archive.schema import migrate
from chat_app.archive.store import ArchiveStore
from chat_app.backends.redis.keys import archive_key
from chat_app.protocol.wire import decode_envelope

from . import nodejs, procs
from .__main__ import OURS, PEER, event_loop_runner
from .pg import BenchPostgres, unavailable
from .workloads import LEAN, Cluster, FanOut, Member, Server, cluster, fanout_result, percentile

ROOMS, PER_NODE, NODES = 20, 5, 2  # W2's load
OUTBOX = archive_key("chat") + ":outbox"  # the default KEY_PREFIX
DRAIN_CAP_S = 240.0  # the outbox must be empty by then after the sends end

# A bench-only column: when each row was written, so the lag is read per row (send -> row),
# not only from the histogram's buckets. The store names its columns, so a default fills it.
STORED_AT = "ALTER TABLE messages ADD COLUMN stored_at timestamptz NOT NULL DEFAULT clock_timestamp()"


def archive_server(url: str) -> Server:
    """chat_app as OURS runs it (send limit raised), with the archive on this database."""
    return replace(OURS, label="chat_app+archive", spec=replace(OURS.spec, env={**OURS.spec.env, "DATABASE_URL": url}))


def fresh_archive(pg: BenchPostgres) -> str:
    url = pg.new_database()
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(STORED_AT)  # type: ignore[arg-type] (a constant)
    return url


@dataclass
class Snapshot:
    nodes: float
    redis: float
    pg: float


def snapshot(c: Cluster, pg: BenchPostgres | None) -> Snapshot:
    nodes, redis = c.cpu()
    return Snapshot(sum(nodes), redis, pg.cpu() if pg else 0.0)


def outbox_len(c: Cluster) -> int:
    assert c.redis is not None
    return int(procs.redis_call(c.redis.port, "XLEN", OUTBOX))  # type: ignore[call-overload]


def scrape(c: Cluster) -> dict[str, Any]:
    """The archive's metrics of both nodes: the lag histogram summed, backlog, written, failures."""
    buckets: dict[float, float] = {}
    out: dict[str, Any] = {"backlog": [], "written": 0.0, "failures": 0.0}
    for node in c.nodes:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "chat_archive_lag_seconds_bucket":
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
                elif s.name == "chat_archive_backlog":
                    out["backlog"].append(s.value)
                elif s.name == "chat_archive_written_total":
                    out["written"] += s.value
                elif s.name == "chat_archive_failures_total":
                    out["failures"] += s.value
    out["lag_buckets"] = sorted(buckets.items())
    out["hist_p50_s"] = histogram_quantile(out["lag_buckets"], 0.5)
    out["hist_p99_s"] = histogram_quantile(out["lag_buckets"], 0.99)
    return out


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus's histogram_quantile: linear within the bucket the rank falls in."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank, lower, below = q * buckets[-1][1], 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = le, count
    return lower


def check_rows(url: str, f: FanOut) -> dict[str, Any]:
    """Every message acked ok is in the table exactly once (the body carries room|n|...);
    rows of sends answered with an error are counted apart (`unavailable` may land)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT split_part(body, '|', 1)::int, split_part(body, '|', 2)::int, count(*) FROM messages GROUP BY 1, 2"
        ).fetchall()
        lag = conn.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - sent_at)),"
            " max(extract(epoch FROM stored_at - sent_at)), count(*) FROM messages"
        ).fetchone()
        by_second = conn.execute(
            "SELECT extract(epoch FROM date_trunc('second', sent_at) - min(date_trunc('second', sent_at)) OVER ()),"
            " count(*), max(extract(epoch FROM stored_at - sent_at)) FROM messages"
            " GROUP BY date_trunc('second', sent_at) ORDER BY 1"
        ).fetchall()
    stored = {(room, n): count for room, n, count in rows}
    acked = {(r, n) for r in range(f.rooms) for n in range(f.capacity) if f.acks[r][n] == 1}
    assert lag is not None
    return {
        "rows": int(lag[2]),
        "acked": len(acked),
        "acked_missing": len(acked - stored.keys()),
        "stored_twice": sum(1 for c in stored.values() if c > 1),
        "stored_not_acked_ok": len(stored.keys() - acked),
        "row_lag_p50_s": float(lag[0][0]) if lag[0] else float("nan"),
        "row_lag_p99_s": float(lag[0][1]) if lag[0] else float("nan"),
        "row_lag_max_s": float(lag[1]) if lag[1] is not None else float("nan"),
        "row_lag_max_by_second": [(int(t), n, round(float(m), 3)) for t, n, m in by_second],
    }


@dataclass
class Outage:
    """Stop PostgreSQL `at` s into the sends for `seconds` s."""

    at: float
    seconds: float
    stopped: float = 0.0  # perf_counter stamps
    resumed: float = 0.0
    backlog_at_resume: int = 0
    log: list[str] = field(default_factory=list)

    async def run(self, pg: BenchPostgres, c: Cluster) -> None:
        await asyncio.sleep(self.at)
        await asyncio.to_thread(pg.pause)
        self.stopped = time.perf_counter()
        await asyncio.sleep(max(self.seconds - (time.perf_counter() - self.stopped), 0))
        self.backlog_at_resume = outbox_len(c)
        await asyncio.to_thread(pg.resume)
        self.resumed = time.perf_counter()


async def step(
    server: Server,
    rate: float,
    duration: float,
    pg: BenchPostgres | None,
    url: str | None,
    outage: Outage | None = None,
) -> dict[str, Any]:
    """W2 at `rate`; the CPU window runs from the first send until the deliveries are in
    (`*_sent`, the harness's window) and on until the outbox is empty (the archive's writer
    is still at work then; for the archive off and the peer both windows are the same)."""
    archive = url is not None
    with cluster(server, NODES) as c:
        f = FanOut(ROOMS, int(rate * duration / ROOMS) + 2)
        members = []
        for r in range(ROOMS):
            for i, node in enumerate(c.nodes):
                for j in range(PER_NODE):
                    remote = i != r % NODES
                    members.append(Member(node.port, f"u{r}-{i}-{j}", r, True, remote, (i, j) == (r % NODES, 0)))
        async with LEAN.fanout(members, f) as session:
            await asyncio.sleep(0.5)
            cpu0 = snapshot(c, pg)
            task = asyncio.ensure_future(outage.run(pg, c)) if outage and pg else None
            sent = await session.send(rate, duration)
            cpu_sent, t_sent = snapshot(c, pg), time.perf_counter()
            if task is not None:
                await task
            drained_s = float("nan")
            if archive:
                while outbox_len(c) > 0 and time.perf_counter() - t_sent < DRAIN_CAP_S:
                    await asyncio.sleep(0.1)
                drained_s = time.perf_counter() - t_sent if outbox_len(c) == 0 else float("nan")
            cpu1, t_drained = snapshot(c, pg), time.perf_counter()
            if archive:
                await asyncio.sleep(1.2)  # the backlog gauge is read once a second
            metrics = scrape(c) if archive else {}
        result = fanout_result(sent.fanout, sent.t0, sent.wall_s, sent.generator_cpu_s)
    result.pop("timeline", None)
    delivered, accepted = max(result["delivered"], 1), max(result["accepted"], 1)
    result.update(
        server=server.label,
        rate=rate,
        cut_off=not sent.settled,
        node_cpu_s=cpu1.nodes - cpu0.nodes,
        redis_cpu_s=cpu1.redis - cpu0.redis,
        pg_cpu_s=cpu1.pg - cpu0.pg if archive else float("nan"),
        node_us_per_delivery=1e6 * (cpu1.nodes - cpu0.nodes) / delivered,
        redis_us_per_message=1e6 * (cpu1.redis - cpu0.redis) / accepted,
        pg_us_per_message=1e6 * (cpu1.pg - cpu0.pg) / accepted if archive else float("nan"),
        node_us_per_delivery_sent=1e6 * (cpu_sent.nodes - cpu0.nodes) / delivered,
        redis_us_per_message_sent=1e6 * (cpu_sent.redis - cpu0.redis) / accepted,
        outbox_drained_after_send_s=drained_s,
        window_s=t_drained - (t_sent - sent.wall_s),
    )
    if archive:
        assert url is not None
        metrics.pop("lag_buckets")
        result["metrics"] = metrics
        result.update(check_rows(url, f))
    if outage is not None:
        result["outage"] = {
            "stopped_s": outage.seconds,
            "backlog_at_resume": outage.backlog_at_resume,
            "drained_after_resume_s": t_drained - outage.resumed,
        }
    return result


# -- history pages from 1,000,000 archived messages ---------------------------------------

# send.lua's envelope (envelope_head + seq, epoch), built by the server: 1M rows in seconds.
LOAD = """
INSERT INTO messages (room, epoch, seq, id, sender, body, sent_at, envelope)
SELECT %(room)s, 'e1', g, id, sender, body, ts,
       '{"v":1,"kind":"message","id":' || to_json(id)::text || ',"room":' || to_json(%(room)s::text)::text
       || ',"sender":' || to_json(sender)::text || ',"message":' || to_json(body)::text
       || ',"timestamp":' || (extract(epoch FROM ts) * 1000)::bigint || ',"instance_id":"n1","seq":' || g
       || ',"epoch":"e1"}'
FROM (SELECT g, 'm' || lpad(g::text, 10, '0') AS id, 'user' || (g %% 100) AS sender,
             'message ' || g || ' ' || md5(g::text) AS body,
             now() - interval '30 days' + g * interval '2 seconds' AS ts
      FROM generate_series(1, %(rows)s) AS g) AS s
"""


def history(pg: BenchPostgres, rows: int, reads: int) -> dict[str, Any]:
    url = pg.new_database()
    migrate(url)
    room = "big"
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute(LOAD, {"room": room, "rows": rows})  # type: ignore[arg-type] (a constant)
        load_s = time.perf_counter() - t
        conn.execute("VACUUM ANALYZE messages")  # what autovacuum would have done by then
        size = conn.execute("SELECT pg_size_pretty(pg_total_relation_size('messages'))").fetchone()
    store = ArchiveStore(url, 1)
    store.open()
    try:
        first = store.page(room, None, 50)
        decode_envelope(first[-1], max_bytes=4096)  # a valid envelope, as clients receive it
        assert len(first) == 50 and f'"seq":{rows},' in first[-1], first[-1]
        rng = random.Random(25)
        for _ in range(20):  # warm the pool's connection and the plan
            store.page(room, rng.randint(51, rows + 1), 50)
        times, newest = [], []
        for _ in range(reads):
            before = rng.randint(51, rows + 1)
            t = time.perf_counter()
            page = store.page(room, before, 50)
            times.append(time.perf_counter() - t)
            assert len(page) == 50 and f'"seq":{before - 1},' in page[-1]
        for _ in range(50):
            t = time.perf_counter()
            store.page(room, None, 50)
            newest.append(time.perf_counter() - t)
    finally:
        store.close()
    return {
        "rows": rows,
        "load_s": load_s,
        "table_size": size[0] if size else "?",
        "reads": reads,
        "p50_ms": 1000 * percentile(times, 50),
        "p99_ms": 1000 * percentile(times, 99),
        "max_ms": 1000 * max(times),
        "newest_page_p50_ms": 1000 * percentile(newest, 50),
    }


# -- the run -------------------------------------------------------------------------------


async def run(args: argparse.Namespace, pg: BenchPostgres) -> dict[str, Any]:
    parts = set(args.parts.split(","))
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "w2": []}
    results["load_before"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    peer = [] if nodejs.unavailable() else [PEER]
    if not peer:
        results["skipped_peer"] = nodejs.unavailable()
    if "w2" in parts:
        for rate in (float(r) for r in args.rates.split(",")):
            for kind in ("off", "on", *(["peer"] if peer else [])):
                if kind == "on":
                    url = fresh_archive(pg)
                    r = await step(archive_server(url), rate, args.duration, pg, url)
                else:
                    r = await step(OURS if kind == "off" else PEER, rate, args.duration, pg, None)
                results["w2"].append(r)
                say(r)
    if "history" in parts:
        results["history"] = await asyncio.to_thread(history, pg, args.rows, args.reads)
        print(f"[{time.strftime('%H:%M:%S')}] history {results['history']}", flush=True)
    if "outage" in parts:
        url = fresh_archive(pg)
        outage = Outage(at=5.0, seconds=args.outage)
        r = await step(archive_server(url), 1000, args.outage + 10, pg, url, outage)
        results["outage"] = r
        say(r)
    results["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return results


def say(r: dict[str, Any]) -> None:
    keys = ("server", "rate", "delivered", "loss_pct", "p99_ms", "node_us_per_delivery", "redis_us_per_message")
    keys += ("pg_us_per_message", "row_lag_p50_s", "row_lag_p99_s", "acked_missing", "stored_twice", "outage")
    brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k in keys}
    print(f"[{time.strftime('%H:%M:%S')}] {brief}", flush=True)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and not math.isnan(a) and not math.isnan(b) else "-"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Run {results['started']}; load before {results['load_before']}, after {results['load_after']}.", ""]
    if results["w2"]:
        lines += [
            "| W2 (20 rooms x 10 members, 2 nodes) | rate | off | on | peer | on / off | on / peer | off / peer |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        by = {(r["server"], r["rate"]): r for r in results["w2"]}
        for rate in sorted({r["rate"] for r in results["w2"]}):
            off, on = by.get(("chat_app", rate), {}), by.get(("chat_app+archive", rate), {})
            peer = by.get(("peer", rate), {})
            for label, key, fmt in (
                ("node CPU µs per delivery", "node_us_per_delivery", "{:.1f}"),
                ("Redis CPU µs per message", "redis_us_per_message", "{:.1f}"),
                ("deliveries/s", "deliveries_per_s", "{:,.0f}"),
                ("delivery p99 (ms)", "p99_ms", "{:.1f}"),
            ):
                vals = [d.get(key, float("nan")) for d in (off, on, peer)]
                cells = [fmt.format(v) if not math.isnan(v) else "-" for v in vals]
                lines.append(
                    f"| {label} | {rate:,.0f} | {' | '.join(cells)} | {_ratio(vals[1], vals[0])} "
                    f"| {_ratio(vals[1], vals[2])} | {_ratio(vals[0], vals[2])} |"
                )
            if on:
                lines.append(
                    f"| PostgreSQL CPU µs per message | {rate:,.0f} | | {on['pg_us_per_message']:.1f} | | | | |"
                )
                lag = (
                    f"{1000 * on['row_lag_p50_s']:.0f} / {1000 * on['row_lag_p99_s']:.0f} (rows); "
                    f"{1000 * on['metrics']['hist_p50_s']:.0f} / {1000 * on['metrics']['hist_p99_s']:.0f} (histogram)"
                )
                lines.append(f"| archive lag p50 / p99 (ms) | {rate:,.0f} | | {lag} | | | | |")
                check = (
                    f"{on['rows']:,} rows, {on['acked']:,} acked ok, missing {on['acked_missing']}, "
                    f"twice {on['stored_twice']}, refused sends stored {on['stored_not_acked_ok']}"
                )
                lines.append(f"| rows check | {rate:,.0f} | | {check} | | | | |")
        lines.append("")
    if h := results.get("history"):
        lines += [
            "| history page (50) from the archive | value |",
            "|---|---:|",
            f"| rows in one room / table size | {h['rows']:,} / {h['table_size']} |",
            f"| load (INSERT ... generate_series) | {h['load_s']:.1f} s |",
            f"| page at random `before`, p50 / p99 / max ({h['reads']} reads) | "
            f"{h['p50_ms']:.2f} / {h['p99_ms']:.2f} / {h['max_ms']:.2f} ms |",
            f"| newest page p50 | {h['newest_page_p50_ms']:.2f} ms |",
            "",
        ]
    if o := results.get("outage"):
        lines += [
            "| database outage at 1,000 msg/s | value |",
            "|---|---:|",
            f"| PostgreSQL stopped | {o['outage']['stopped_s']:.0f} s |",
            f"| outbox backlog when it came back | {o['outage']['backlog_at_resume']:,} |",
            f"| from its return until the outbox is empty | {o['outage']['drained_after_resume_s']:.1f} s |",
            f"| chat_archive_backlog afterwards (per node) | {o['metrics']['backlog']} |",
            f"| acked ok / rows / missing / twice | {o['acked']:,} / {o['rows']:,} / {o['acked_missing']} / "
            f"{o['stored_twice']} |",
            f"| deliveries lost / p99 (ms) during the outage run | {o['lost']} / {o['p99_ms']:.1f} |",
            f"| writer batches refused (failures) | {o['metrics']['failures']:.0f} |",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__)
    parser.add_argument("--parts", default="w2,history,outage", help="comma-separated subset of w2,history,outage")
    parser.add_argument("--rates", default="1000,5000", help="W2 rates (msg/s)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of sends per W2 step")
    parser.add_argument("--rows", type=int, default=1_000_000, help="messages in the history room")
    parser.add_argument("--reads", type=int, default=500, help="timed history pages")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds PostgreSQL is stopped")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="where to write results")
    args = parser.parse_args()
    if reason := unavailable():
        raise SystemExit(f"the archive bench needs PostgreSQL: {reason}")
    pg = BenchPostgres().start()
    try:
        results = event_loop_runner()(run(args, pg))
    finally:
        pg.stop()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "archive.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (out / "archive.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
