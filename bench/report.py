"""Markdown tables from one run's results: every server side by side, with ratios against the
reference (the Node peer when it ran, else the baseline)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

SUSTAINED_P99_MS = 250.0
ORDER = ("chat_app", "peer", "baseline")
NAMES = {"chat_app": "chat_app", "peer": "peer (socket.io)", "baseline": "baseline (Flask-SocketIO)"}


def _num(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}"


def _ratio(ours: Any, base: Any) -> str:
    if not isinstance(ours, int | float) or not isinstance(base, int | float) or not base or math.isnan(base):
        return "-"
    if isinstance(ours, float) and math.isnan(ours):
        return "-"
    return f"{ours / base:.2f}x"


def servers_of(results: dict[str, Any]) -> list[str]:
    return [label for label in ORDER if label in results]


def reference_of(labels: list[str]) -> str:
    return "peer" if "peer" in labels else "baseline" if "baseline" in labels else labels[-1]


def sustained(step: dict[str, Any]) -> bool:
    """Every send accepted and acked, every delivery made, p99 under 250 ms."""
    return (
        step["lost"] == 0
        and not step["refused"]
        and step["unacked"] == 0
        and step["p99_ms"] < SUSTAINED_P99_MS
        and step["delivered"] == step["expected_deliveries"]
    )


def best_rate(steps: list[dict[str, Any]]) -> float | None:
    ok = [s["rate"] for s in steps if sustained(s)]
    return max(ok) if ok else None


def at(steps: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    return next((s for s in steps if s["rate"] == rate), {})


def _acked_pct(s: dict[str, Any]) -> float:
    return 100.0 * s["accepted"] / s["sent"] if s["sent"] else 0.0


def _mean_share(r: dict[str, Any]) -> float:
    return sum(r["share_per_node"]) / len(r["share_per_node"])


Row = tuple[str, list[Any]]


def summary_rows(servers: list[dict[str, Any]]) -> list[Row]:
    """(metric, one value per server) for what every server in `servers` ran."""
    rows: list[Row] = []

    def each(part: str, value: Callable[[Any], Any]) -> list[Any] | None:
        if not all(s.get(part) for s in servers):
            return None
        return [value(s[part]) for s in servers]

    for key, name in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
        if (values := each("w1", lambda w, key=key: w[key])) is not None:
            rows.append((f"W1 cross-node latency {name} (ms) ↓", values))
    if (values := each("w2", best_rate)) is not None:
        rows.append(("W2 highest sustained rate (msg/s) ↑", values))
        for rate in (1000, 3000, 5000, 10000):
            steps = [at(s["w2"], rate) for s in servers]
            if not all(steps):
                continue
            rows.append((f"W2 @{rate}: p50 (ms) ↓", [s["p50_ms"] for s in steps]))
            rows.append((f"W2 @{rate}: p99 (ms) ↓", [s["p99_ms"] for s in steps]))
            rows.append((f"W2 @{rate}: loss of accepted sends (%) ↓", [s["loss_pct"] for s in steps]))
            rows.append((f"W2 @{rate}: sends acked ok by the end of the drain (%) ↑", [_acked_pct(s) for s in steps]))
            rows.append((f"W2 @{rate}: deliveries/s ↑", [s["deliveries_per_s"] for s in steps]))
            rows.append((f"W2 @{rate}: node CPU µs per delivery ↓", [s["node_cpu_us_per_delivery"] for s in steps]))
            rows.append((f"W2 @{rate}: Redis CPU s ↓", [s["redis_cpu_s"] for s in steps]))
            rows.append((f"W2 @{rate}: Redis CPU µs per message ↓", [_redis_us(s) for s in steps]))
            rows.append(
                (
                    f"W2 @{rate}: of which Redis user space (INFO cpu) µs per message ↓",
                    [s.get("redis_user_cpu_us_per_message") for s in steps],
                )
            )
    if (values := each("w3", lambda w: w["rss_kib_per_connection"])) is not None:
        rows.append(("W3 RSS per idle joined connection (KiB), tree 3 s after the last ack ↓", values))
        rows.append(
            (
                "W3 the same, tree 0.5 s after the last ack (the harness's reading) ↓",
                each("w3", lambda w: w.get("rss_kib_per_connection_harness", float("nan"))) or [],
            )
        )
        rows.append(("W3 connect+join of all (s) ↓", each("w3", lambda w: w["connect_and_join_total_s"]) or []))
        for phase in ("connect", "join"):  # runs saved before the phases were read apart have neither
            rows.append(
                (f"W3 {phase} phase (s) ↓", each("w3", lambda w, p=phase: w.get(f"{p}_phase_s", float("nan"))) or [])
            )
            rows.append(
                (
                    f"W3 node CPU µs per {phase} (its phase) ↓",
                    each("w3", lambda w, p=phase: w.get(f"node_cpu_us_per_{p}", float("nan"))) or [],
                )
            )
        rows.append(("W3 connect p99 (ms) ↓", each("w3", lambda w: w["connect_p99_ms"]) or []))
        rows.append(("W3 join p99 (ms) ↓", each("w3", lambda w: w["join_p99_ms"]) or []))
    if (values := each("routing", _mean_share)) is not None:
        rows.append(("Routing: mean share of messages each node takes from Redis ↓", values))
    return rows


def ladder_table(results: dict[str, Any], labels: list[str]) -> list[str]:
    head = (
        "| rate (msg/s) | server | deliveries/s | loss % | refused | p50 ms | p99 ms | max ms | ack p99 ms "
        "| node CPU s (A / B) | Redis CPU s | node µs/delivery | generator CPU % |"
    )
    lines = [head, "|" + "---|" * 13]
    rates = sorted({s["rate"] for label in labels for s in results[label]["w2"]})
    for rate in rates:
        for label in labels:
            s = at(results[label]["w2"], rate)
            if not s:
                continue
            refused = ", ".join(f"{k} {v}" for k, v in s["refused"].items()) or "0"
            if s["unacked"]:
                refused += f"; unacked {s['unacked']}"
            if s.get("delivered_after_refusal"):
                refused += f" ({s['delivered_after_refusal']:,} deliveries of refused sends)"
            cpu = " / ".join(f"{x:.1f}" for x in s["node_cpu_s"])
            cells = [
                f"{rate:,.0f}",
                label,
                _num(s["deliveries_per_s"], 0),
                _num(s["loss_pct"], 2) + (" (cut off)" if s.get("cut_off") else ""),
                refused,
                _num(s["p50_ms"]),
                _num(s["p99_ms"]),
                _num(s["max_ms"]),
                _num(s["ack_p99_ms"]),
                cpu,
                _num(s["redis_cpu_s"]),
                _num(s["node_cpu_us_per_delivery"], 0),
                _num(s["generator_cpu_pct"], 0),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    labels = servers_of(results)
    ref = reference_of(labels) if labels else ""
    others = [label for label in labels if label != ref]
    lines = [
        f"Run {results['started']} on {results['machine']}; load average before {results['load_before']}, "
        f"after {results.get('load_after', '?')}.",
        "",
        f"Generator: {results.get('generator_detail', results.get('generator', 'lean'))}.",
    ]
    if "peer_detail" in results:
        lines += ["", f"Peer: {results['peer_detail']}."]
    for label, reason in results.get("skipped", {}).items():
        lines += ["", f"Skipped {label}: {reason}."]
    if not labels:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "| metric (↓ lower is better, ↑ higher) | "
        + " | ".join(NAMES[x] for x in labels)
        + "".join(f" | {x} / {ref}" for x in others)
        + " |",
        "|---|" + "---:|" * (len(labels) + len(others)),
    ]
    for name, values in summary_rows([results[x] for x in labels]):
        digits = 3 if name.startswith("Routing") else 1
        by = dict(zip(labels, values, strict=True))
        cells = [_num(v, digits) for v in values] + [_ratio(by[x], by[ref]) for x in others]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label in labels:
        steps = results[label].get("w2") or []
        if steps and best_rate(steps) == max(s["rate"] for s in steps):
            lines += ["", f"{label} sustained the ladder's top rate: its limit lies higher."]
    if any(results[x].get("w2") for x in labels):
        lines += ["", f"W2 ladder ({results['w2_duration_s']:.0f} s per rate, 20 rooms x 10 members, 5 per node):", ""]
        lines += ladder_table(results, labels)
    lines += commandstats_tables(results, labels)
    if all("rss_kib_per_connection_by_time" in (results[x].get("w3") or {}) for x in labels):
        lines += ["", *w3_timeline(results, labels)]
    if all("routing" in results[x] for x in labels):
        lines += ["", "Interest routing (4 nodes, 40 rooms, each room's members on one node):", ""]
        lines += ["| server | published | received from Redis per node | room channels | subscribers per channel |"]
        lines += ["|---|---:|---|---:|---|"]
        for label in labels:
            r = results[label]["routing"]
            channels = f"{r['channels']}" + (
                f" ({r['pattern_subscriptions']} pattern)" if r.get("pattern_subscriptions") else ""
            )
            lines.append(
                f"| {label} | {r['published']:,} | {', '.join(f'{x:,}' for x in r['received_per_node'])} "
                f"| {channels} | {r['subscribers_per_channel']} |"
            )
    return "\n".join(lines) + "\n"


def _redis_us(step: dict[str, Any]) -> float | None:
    """Redis CPU (from /proc, over the send window and the drain) per message sent."""
    if not step or not step.get("sent"):
        return None
    return 1e6 * step["redis_cpu_s"] / step["sent"]


def commandstats_tables(results: dict[str, Any], labels: list[str]) -> list[str]:
    """Where each server's Redis time went at each W2 rate (INFO commandstats over the step):
    calls and usec per message sent, usec per call. Redis's own accounting of its command
    time; the rest of its CPU (/proc) is the event loop, the sockets and pub/sub fan-out."""
    lines: list[str] = []
    for label in labels:
        for s in results[label].get("w2") or []:
            stats = s.get("redis_commandstats")
            if not stats or not s.get("sent"):
                continue
            sent = s["sent"]
            lines += [
                "",
                f"Redis commandstats, {label} at {s['rate']:,.0f} msg/s ({_redis_us(s):.1f} µs of CPU per message; "
                "a script's time includes the commands it ran, which are also counted on their own rows):",
                "",
                "| command | calls per message | µs per message | µs per call |",
                "|---|---:|---:|---:|",
            ]
            for name, v in sorted(stats.items(), key=lambda kv: -kv[1].get("usec", 0.0)):
                lines.append(
                    f"| {name} | {v.get('calls', 0) / sent:.3f} | {v.get('usec', 0) / sent:.2f} "
                    f"| {v.get('usec_per_call', 0):.2f} |"
                )
    return lines


def w3_timeline(results: dict[str, Any], labels: list[str]) -> list[str]:
    """W3's KiB per connection by when it is read: each node's process tree (and its largest
    process alone) against the tree just before the first client."""
    times = list(results[labels[0]]["w3"]["rss_kib_per_connection_by_time"])
    n = results[labels[0]]["w3"]["connections"]
    lines = [f"W3 RSS per idle joined connection (KiB, {n:,} over 2 nodes) by seconds after the last join's ack:", ""]
    lines += ["| server | what | " + " | ".join(f"{t} s" for t in times) + " |", "|---|---|" + "---:|" * len(times)]
    for label in labels:
        w = results[label]["w3"]
        for what, key in (
            ("process tree", "rss_kib_per_connection_by_time"),
            ("largest process", "rss_kib_per_connection_worker_by_time"),
        ):
            lines.append(f"| {label} | {what} | " + " | ".join(_num(w[key].get(t)) for t in times) + " |")
    return lines


def side_by_side(workload: str, rows: Sequence[tuple[str, str, int]], results: dict[str, dict[str, Any]]) -> str:
    """One workload's table, a column per server (W4, W5): a row's `a|b` keys show as
    "a / b", and when exactly chat_app and the peer ran, chat_app / peer of the first."""
    labels = list(results)
    pair = labels == ["chat_app", "peer"]
    lines = [f"| {workload} | " + " | ".join(labels) + (" | chat_app / peer |" if pair else " |")]
    lines.append("|---|" + "---:|" * (len(labels) + pair))
    for title, keys, digits in rows:
        cells, firsts = [], []
        for label in labels:
            values = [results[label].get(k) for k in keys.split("|")]
            cells.append(" / ".join(_cell(v, digits) for v in values))
            firsts.append(values[0])
        ratio = f" {_ratio(*firsts)} |" if pair else ""
        lines.append(f"| {title} | " + " | ".join(cells) + " |" + ratio)
    return "\n".join(lines)


def _cell(x: Any, digits: int) -> str:
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)
