"""GET /healthz on a real node while its Redis is paused, then killed: 503 naming the
failing part, 200 again once Redis is back."""

from __future__ import annotations

import time

import requests
from helpers import wait_until


def healthz(url: str) -> tuple[int, dict]:
    response = requests.get(f"{url}/healthz", timeout=30)
    return response.status_code, response.json()


def test_healthz_is_503_naming_the_part_while_redis_is_paused_or_killed(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url)
    status, body = healthz(node.url)
    assert status == 200
    assert body["status"] == "ok" and body["instance_id"] == node.instance_id
    assert body["publisher"] is True and body["listener"] is True

    redis_server.pause()
    started = time.monotonic()
    status, body = wait_until(lambda: (h := healthz(node.url))[0] == 503 and h, timeout=20, what="503 while paused")
    print(f"paused: 503 after {time.monotonic() - started:.1f}s: {body}")
    assert body["status"] == "failing" and body["instance_id"] == node.instance_id
    assert "publisher" in body["failing"] or "listener" in body["failing"]
    assert all(body[part] is False for part in body["failing"])
    redis_server.resume()
    wait_until(lambda: healthz(node.url)[0] == 200, timeout=20, what="200 after resume")

    redis_server.kill()
    status, body = healthz(node.url)  # a dead port is refused at once: no waiting needed
    assert status == 503, body
    assert body["publisher"] is False and "publisher" in body["failing"]
    wait_until(lambda: "listener" in healthz(node.url)[1].get("failing", []), timeout=20, what="listener down")
    redis_server.restart()
    status, body = wait_until(lambda: (h := healthz(node.url))[0] == 200 and h, timeout=20, what="200 after restart")
    assert body == {
        "status": "ok",
        "instance_id": node.instance_id,
        "publisher": True,
        "listener": True,
        "backend": "redis",
    }
