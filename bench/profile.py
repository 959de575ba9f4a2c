"""Profile node A's gunicorn worker with py-spy while W2 runs (or W3's connects and joins),
and print the top costs.

    python -m bench.profile [--rate 1000] [--seconds 8] [--server chat_app|baseline] [--archive]
    python -m bench.profile --w3 [--connections 2000] [--seconds 3]

py-spy samples the worker from outside (no change to the node). It pauses the worker for
each sample: `--nonblocking` reads the stack while Python runs and loses samples then, which
makes syscalls look several times costlier than they are. Samples of a waiting hub or
thread are left out of the shares. Collapsed stacks go to
bench/results/profile-<server>-<rate>.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from .__main__ import BASELINE, OURS
from .workloads import Cluster, w2, w3

RESULTS = Path(__file__).parent / "results"


def start_py_spy(out: Path, seconds: float) -> Any:
    def on_sending(cluster: Cluster, duration: float) -> subprocess.Popen[bytes]:
        worker = cluster.nodes[0].worker_pids()[0]
        args = ["py-spy", "record", "--pid", str(worker), "--duration", str(int(min(seconds, duration)))]
        args += ["--rate", "250", "--format", "raw", "--output", str(out)]
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return on_sending


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (package/file.py)`, lines merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    tail = "/".join(parts[-2:]) if "site-packages" in path or "chat_app" in path else parts[-1]
    return f"{name} ({tail})"


def start_py_spy_now(out: Path, seconds: float) -> Any:
    """The same from W3's first connect, for `seconds`."""

    def on_connecting(cluster: Cluster) -> subprocess.Popen[bytes]:
        return start_py_spy(out, seconds)(cluster, seconds)

    return on_connecting


# gevent's loop waiting (its C work between callbacks, too), a pool thread waiting
IDLE = ("Hub.run ", "acquire_with_timeout ")


def summarise(collapsed: Path, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks, of the
    samples where the worker was busy."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if not frames or frames[-1].startswith(IDLE):
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n
    lines = [f"{total} busy samples", "", "| self % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in own.most_common(top)]
    lines += ["", "| inclusive % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | `{name}` |" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--server", choices=("chat_app", "baseline"), default="chat_app")
    parser.add_argument("--archive", action="store_true", help="chat_app with the archive on a PostgreSQL of its own")
    parser.add_argument("--w3", action="store_true", help="W3's connects and joins instead of W2")
    parser.add_argument("--connections", type=int, default=2000, help="W3's connections (with --w3)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.w3:
        out = RESULTS / f"profile-{args.server}-w3-{args.connections}.txt"
        server = OURS if args.server == "chat_app" else BASELINE
        got = asyncio.run(w3(server, args.connections, on_connecting=start_py_spy_now(out, args.seconds)))
        total, node, redis = (
            got[k] for k in ("connect_and_join_total_s", "node_cpu_us_per_connect_join", "redis_cpu_us_per_join")
        )
        print(
            f"W3 {args.connections} under py-spy: connect+join {total:.2f} s, "
            f"node µs per connect+join {node:.0f}, Redis µs per join {redis:.0f}"
        )
        print(summarise(out, top=40))
        return
    out = RESULTS / f"profile-{args.server}{'-archive' if args.archive else ''}-{int(args.rate)}.txt"
    server = OURS if args.server == "chat_app" else BASELINE
    with contextlib.ExitStack() as stack:
        if args.archive:  # the writer runs in every node: its share of node A shows here
            from .archive import archive_server, fresh_archive
            from .pg import BenchPostgres

            pg = BenchPostgres().start()
            stack.callback(pg.stop)
            server = archive_server(fresh_archive(pg))
        on_sending = start_py_spy(out, args.seconds)
        result = asyncio.run(w2(server, args.rate, duration=args.seconds + 1, on_sending=on_sending))
    print(
        f"W2 @{args.rate:.0f} under py-spy: p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"loss {result['loss_pct']:.2f} %, node µs/delivery {result['node_cpu_us_per_delivery']:.0f}"
    )
    print(summarise(out))


if __name__ == "__main__":
    main()
