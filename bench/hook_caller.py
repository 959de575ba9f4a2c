"""The node's side of a decision hook alone: chat_app's DecisionHooks under gevent, as in a
node, calling a receiver in a loop, nothing else in the process:

    python -m bench.hook_caller URL SECONDS GREENLETS    # prints one JSON line

Each of GREENLETS greenlets asks `send` again as soon as it has its answer, for SECONDS.
What it prints, the process's CPU per call and the call's latency, is what one hooked send
costs a node before any of its own work; the bench reads it beside the receiver's CPU.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402

from chat_app.hooks.decisions import DecisionHooks  # noqa: E402
from chat_app.settings import Settings  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    url, seconds, greenlets = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    secret = sys.argv[4] if len(sys.argv) > 4 else None
    hooks = DecisionHooks(Settings.from_env({}, hook_url=url, hook_events="send", hook_secret=secret))
    latencies: list[float] = []
    text = "0|1|2.0|" + "x" * 40

    def loop(until: float) -> None:
        while time.perf_counter() < until:
            t = time.perf_counter()
            hooks.send("u0-0-0", "room0", text)
            latencies.append(time.perf_counter() - t)

    gevent.joinall([gevent.spawn(loop, time.perf_counter() + 0.5) for _ in range(greenlets)])  # warm
    latencies.clear()
    cpu0, t0 = cpu(), time.perf_counter()
    gevent.joinall([gevent.spawn(loop, t0 + seconds) for _ in range(greenlets)])
    cpu1, t1 = cpu(), time.perf_counter()
    latencies.sort()
    n = len(latencies)
    print(
        json.dumps(
            {
                "greenlets": greenlets,
                "calls_per_s": n / (t1 - t0),
                "caller_us_per_call": 1e6 * (cpu1 - cpu0) / max(n, 1),
                "caller_cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0),
                "p50_ms": 1000 * latencies[n // 2] if n else None,
                "p99_ms": 1000 * latencies[min(n - 1, int(n * 0.99))] if n else None,
                "failures": hooks.stats.failures,
            }
        )
    )


if __name__ == "__main__":
    main()
