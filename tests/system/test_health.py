"""GET /healthz on a real node while its Redis is paused, then killed: 503 naming the
failing part, 200 again once Redis is back, even when nothing is sent after the outage
(a load balancer that drained the node sends it nothing to prove itself with)."""

from __future__ import annotations

import time

import requests
from helpers import ChatClient, wait_until


def healthz(url: str) -> tuple[int, dict]:
    response = requests.get(f"{url}/healthz", timeout=30)
    return response.status_code, response.json()


def assert_failing(body: dict, instance_id: str) -> None:
    assert body["status"] == "failing" and body["instance_id"] == instance_id
    assert body["failing"], body
    assert all(body[part] is False for part in body["failing"]), body
    assert set(body["failing"]) <= {"publisher", "listener", "presence"}


def test_healthz_is_503_naming_the_part_while_redis_is_paused_or_killed(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, SEND_DEADLINE="1")
    client = ChatClient(node.url, "alice")
    try:
        assert client.call("join_room", "lobby")["ok"]
        # Just after a join the room's subscription may still be on its way (503 "listener").
        status, body = wait_until(lambda: (h := healthz(node.url))[0] == 200 and h, what="200, room subscribed")
        assert body == {
            "status": "ok",
            "instance_id": node.instance_id,
            "publisher": True,
            "listener": True,
            "presence": True,
            "backend": "redis",
        }

        redis_server.pause()
        started = time.monotonic()
        status, body = wait_until(lambda: (h := healthz(node.url))[0] == 503 and h, timeout=20, what="503, paused")
        print(f"paused: 503 after {time.monotonic() - started:.1f}s: {body}")
        assert_failing(body, node.instance_id)
        redis_server.resume()
        wait_until(lambda: healthz(node.url)[0] == 200, timeout=20, what="200 after resume")

        redis_server.kill()
        refused = client.call("send_message", {"room": "lobby", "message": "into the void"}, timeout=15)
        assert refused["error"]["code"] == "unavailable"
        status, body = wait_until(
            lambda: (h := healthz(node.url))[1].get("failing") == ["publisher", "listener", "presence"] and h,
            timeout=20,
            what="every part named while Redis is down",
            detail=lambda: healthz(node.url),
        )
        assert status == 503
        assert_failing(body, node.instance_id)

        redis_server.restart()
        wait_until(lambda: healthz(node.url)[0] == 200, timeout=20, what="200 after restart, with no send")
        assert client.call("send_message", {"room": "lobby", "message": "back"})["ok"]
    finally:
        client.close()
