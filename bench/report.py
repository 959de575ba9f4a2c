"""Markdown tables from one run's results: chat_app beside the baseline, with ratios."""

from __future__ import annotations

import math
from typing import Any

SUSTAINED_P99_MS = 250.0


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


def summary_rows(ours: dict[str, Any], base: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    rows: list[tuple[str, Any, Any, str]] = []
    if "w1" in ours and "w1" in base:
        for key, name in (("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")):
            rows.append((f"W1 cross-node latency {name} (ms) ↓", ours["w1"][key], base["w1"][key], ""))
    if ours.get("w2") and base.get("w2"):
        o, b = ours["w2"], base["w2"]
        rows.append(("W2 highest sustained rate (msg/s) ↑", best_rate(o), best_rate(b), ""))
        for rate in (1000, 3000, 5000, 10000):
            so, sb = at(o, rate), at(b, rate)
            if not so or not sb:
                continue
            rows.append((f"W2 @{rate}: p99 (ms) ↓", so["p99_ms"], sb["p99_ms"], ""))
            rows.append((f"W2 @{rate}: loss of accepted sends (%) ↓", so["loss_pct"], sb["loss_pct"], ""))
            acked = lambda s: 100.0 * s["accepted"] / s["sent"] if s["sent"] else 0.0  # noqa: E731
            rows.append((f"W2 @{rate}: sends acked ok by the end of the drain (%) ↑", acked(so), acked(sb), ""))
            rows.append((f"W2 @{rate}: deliveries/s ↑", so["deliveries_per_s"], sb["deliveries_per_s"], ""))
            rows.append(
                (
                    f"W2 @{rate}: node CPU µs per delivery ↓",
                    so["node_cpu_us_per_delivery"],
                    sb["node_cpu_us_per_delivery"],
                    "",
                )
            )
    if "w3" in ours and "w3" in base:
        rows.append(
            (
                "W3 RSS per idle joined connection (KiB) ↓",
                ours["w3"]["rss_kib_per_connection"],
                base["w3"]["rss_kib_per_connection"],
                "",
            )
        )
        rows.append(
            (
                "W3 connect+join of all (s) ↓",
                ours["w3"]["connect_and_join_total_s"],
                base["w3"]["connect_and_join_total_s"],
                "",
            )
        )
        rows.append(("W3 connect p99 (ms) ↓", ours["w3"]["connect_p99_ms"], base["w3"]["connect_p99_ms"], ""))
    if "routing" in ours and "routing" in base:
        ro, rb = ours["routing"], base["routing"]
        mean = lambda r: sum(r["share_per_node"]) / len(r["share_per_node"])  # noqa: E731
        rows.append(("Routing: mean share of messages each node takes from Redis ↓", mean(ro), mean(rb), ""))
    return rows


def ladder_table(results: dict[str, Any]) -> list[str]:
    head = (
        "| rate (msg/s) | server | deliveries/s | loss % | refused | p50 ms | p99 ms | max ms | ack p99 ms "
        "| node CPU s (A / B) | Redis CPU s | node µs/delivery | generator CPU % |"
    )
    lines = [head, "|" + "---|" * 13]
    for i, step in enumerate(results["chat_app"]["w2"]):
        for label in ("chat_app", "baseline"):
            s = results[label]["w2"][i] if i < len(results[label]["w2"]) else None
            if s is None:
                continue
            refused = ", ".join(f"{k} {v}" for k, v in s["refused"].items()) or "0"
            if s["unacked"]:
                refused += f"; unacked {s['unacked']}"
            cpu = " / ".join(f"{x:.1f}" for x in s["node_cpu_s"])
            cells = [
                f"{step['rate']:,}",
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
    ours, base = results["chat_app"], results["baseline"]
    lines = [
        f"Run {results['started']} on {results['machine']}; load average before {results['load_before']}, "
        f"after {results.get('load_after', '?')}.",
        "",
        "| metric (↓ lower is better, ↑ higher) | chat_app | baseline | chat_app / baseline |",
        "|---|---:|---:|---:|",
    ]
    for name, o, b, _ in summary_rows(ours, base):
        digits = 3 if name.startswith("Routing") else 1
        lines.append(f"| {name} | {_num(o, digits)} | {_num(b, digits)} | {_ratio(o, b)} |")
    for label, server in (("chat_app", ours), ("baseline", base)):
        steps = server.get("w2") or []
        if steps and best_rate(steps) == max(s["rate"] for s in steps):
            lines += ["", f"{label} sustained the ladder's top rate: its limit lies higher."]
    if ours.get("w2"):
        lines += ["", f"W2 ladder ({results['w2_duration_s']:.0f} s per rate, 20 rooms x 10 members, 5 per node):", ""]
        lines += ladder_table(results)
    if "routing" in ours and "routing" in base:
        lines += ["", "Interest routing (4 nodes, 40 rooms, each room's members on one node):", ""]
        lines += ["| server | published | received from Redis per node | room channels | subscribers per channel |"]
        lines += ["|---|---:|---|---:|---|"]
        for label in ("chat_app", "baseline"):
            r = results[label]["routing"]
            lines.append(
                f"| {label} | {r['published']:,} | {', '.join(f'{x:,}' for x in r['received_per_node'])} "
                f"| {r['channels']} | {r['subscribers_per_channel']} |"
            )
    return "\n".join(lines) + "\n"
