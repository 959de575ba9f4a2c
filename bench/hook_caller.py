"""The node's side of a decision hook alone: chat_app's DecisionHooks under gevent, as in a
node, calling a receiver in a loop, nothing else in the process:

    python -m bench.hook_caller URL SECONDS GREENLETS [SECRET] [raw]   # prints one JSON line

Each of GREENLETS greenlets asks `send` again as soon as it has its answer, for SECONDS.
What it prints, the process's CPU per call and the call's latency, is what one hooked send
costs a node before any of its own work; the bench reads it beside the receiver's CPU.
`raw` makes the same signed request on a kept-alive gevent socket with nothing between
(one sendall, reads until Content-Length is in, orjson): the floor under the HTTP client.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import orjson  # noqa: E402

from chat_app.hooks.decisions import DecisionHooks  # noqa: E402
from chat_app.hooks.signing import Signer  # noqa: E402
from chat_app.settings import Settings  # noqa: E402


def raw_caller(url: str, secret: str | None) -> Callable[[str, str, str], bool]:
    """One kept-alive socket per greenlet; the call answers `allow`."""
    parts = urlsplit(url)
    signer = Signer(secret)
    sockets: dict[object, socket.socket] = {}

    def call(user: str, room: str, message: str) -> bool:
        me = gevent.getcurrent()
        sock = sockets.get(me)
        if sock is None:
            sock = sockets[me] = socket.create_connection((parts.hostname, parts.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = orjson.dumps({"event": "send", "user": user, "room": room, "message": message})
        head = "".join(f"{k}: {v}\r\n" for k, v in signer.headers(body).items())
        request = f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
        sock.sendall(request.encode() + body)
        data = b""
        while True:
            data += sock.recv(65536)
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                at = data.lower().find(b"content-length:")
                length = int(data[at + 15 : data.find(b"\r\n", at)])
                if len(data) >= end + 4 + length:
                    return orjson.loads(data[end + 4 : end + 4 + length])["allow"] is True

    return call


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    url, seconds, greenlets = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    secret = sys.argv[4] if len(sys.argv) > 4 else None
    raw = len(sys.argv) > 5 and sys.argv[5] == "raw"
    hooks = DecisionHooks(Settings.from_env({}, hook_url=url, hook_events="send", hook_secret=secret))
    ask = raw_caller(url, secret) if raw else hooks.send
    latencies: list[float] = []
    text = "0|1|2.0|" + "x" * 40

    def loop(until: float) -> None:
        while time.perf_counter() < until:
            t = time.perf_counter()
            ask("u0-0-0", "room0", text)
            latencies.append(time.perf_counter() - t)

    gevent.joinall([gevent.spawn(loop, time.perf_counter() + 0.5) for _ in range(greenlets)])  # warm
    latencies.clear()
    cpu0, t0 = cpu(), time.perf_counter()
    gevent.joinall([gevent.spawn(loop, t0 + seconds) for _ in range(greenlets)])
    cpu1, t1 = cpu(), time.perf_counter()
    latencies.sort()
    n = len(latencies)
    if not n:
        raise SystemExit("no call completed")
    print(
        json.dumps(
            {
                "client": "raw socket" if raw else "DecisionHooks",
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
