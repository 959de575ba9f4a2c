"""On real nodes (the gauge, the shedding and the receive loop alone are in unit/test_overload.py).
A node past capacity refuses a share of sends `overloaded` at once, stores none of them,
delivers every one it accepted and takes sends again as soon as it caught up (issue 14)."""

from __future__ import annotations

import signal
import time

import requests
from helpers import ChatClient, scrape, wait_until
from streams import SendStream, assert_exactly_once_in_order

from chat_app.load import TICK


def test_a_node_that_fell_behind_refuses_then_recovers_and_loses_nothing(redis_server, nodes) -> None:
    """Frozen for 1.5 s (SIGSTOP) while its sender keeps sending, node A comes back 1.5 s
    behind: its receive loop refuses sends `overloaded` until it caught up, then takes them
    again. Every send is answered; every accepted one reaches node B's member once, in
    order; no refused one is stored."""
    env = {"SEND_RATE": "1000", "SEND_BURST": "1000"}  # 100 sends/s from one client
    a = nodes.start(redis_server.url, **env)
    b = nodes.start(redis_server.url, **env)
    sender, far = ChatClient(a.url, "sender"), ChatClient(b.url, "far")
    for c in (sender, far):
        assert c.call("join_room", "lobby")["ok"]
    stream = SendStream(sender, "lobby", rate=100).start()
    wait_until(lambda: len(stream.acks) >= 20, what="sends flowing")
    nodes.signal(a, signal.SIGSTOP)
    time.sleep(1.5)  # the freeze itself is what is measured
    nodes.signal(a, signal.SIGCONT)
    resumed = time.monotonic()
    refused = lambda: [x for x in stream.acks.values() if x.get("error", {}).get("code") == "overloaded"]  # noqa: E731
    wait_until(lambda: refused(), timeout=10, what="a send refused overloaded")

    def recovered() -> bool:
        answered = [stream.acks[i] for i in sorted(stream.acks) if stream.sent_at[i] > resumed]
        return len(answered) >= 30 and all(x["ok"] for x in answered[-30:])

    wait_until(recovered, timeout=20 * TICK + 5, what="sends accepted again")
    stream.stop()

    figures = assert_exactly_once_in_order(stream, far, refusals=("overloaded",))
    assert len([m for m in far.received() if m["room"] == "lobby"]) == len(stream.ok_ids())
    assert scrape(a.url)["chat_overloaded_total{reason=behind}"] == len(refused())
    assert "event=overloaded" in a.log() and "event=overload_cleared" in a.log()
    print(f"refused {len(refused())} of {stream.sent}; {figures}")
    assert requests.get(f"{a.url}/healthz", timeout=5).status_code == 200
