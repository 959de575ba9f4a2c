"""The server API over other Redis setups: through a Redis outage, without Redis at all, on a
Redis Cluster. Nodes started as the Procfile starts them, real HTTP calls."""

from __future__ import annotations

from api_client import KEY, ApiClient, api
from helpers import wait_until
from test_cluster import cluster  # noqa: F401 (fixture)


def test_commands_during_a_redis_outage_answer_503_in_time_then_work_again(redis_server, nodes) -> None:
    deadline = 2.0
    a = nodes.start(redis_server.url, API_KEY=KEY, SEND_DEADLINE=str(deadline))
    alice = ApiClient(a.url, "alice")
    alice.call("join_room", "lobby")
    calls = [
        ("POST", "/api/rooms/lobby/messages", {"json": {"message": "during"}}),
        ("GET", "/api/rooms/lobby/history", {}),
        ("GET", "/api/rooms", {}),
        ("POST", "/api/users/alice/rooms/elsewhere", {}),
        ("DELETE", "/api/users/alice/rooms/lobby", {"json": {"ban_seconds": 60}}),
        ("POST", "/api/users/alice/disconnect", {}),
    ]
    redis_server.pause()
    try:
        for method, path, kw in calls:
            # A read timeout past the deadline (and a little for a busy machine) fails the test.
            response = api(method, a.url, path, timeout=deadline + 2.5, **kw)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["error"]["code"] == "unavailable"
    finally:
        redis_server.resume()
    wait_until(lambda: a.health()["status"] == "ok", timeout=15, what="the node back on Redis")
    # Commands answered 503 are never sent late: alice is still where she was, so each
    # command now acts on her one connection.
    for (method, path, kw), acted in zip(calls, [None, None, None, 1, 1, 1], strict=True):
        response = api(method, a.url, path, **kw)
        assert response.status_code == 200, (path, response.text)
        if acted is not None:
            assert response.json()["connections"] == acted, (path, response.json())
    wait_until(lambda: not alice.sio.connected, timeout=5, what="the disconnect, once Redis is back")
    assert alice.received("room_left") == [{"room": "lobby", "reason": "banned"}]


def test_single_node_without_redis_serves_the_api(nodes) -> None:
    node = nodes.start(None, API_KEY=KEY)
    alice, bob = ApiClient(node.url, "alice"), ApiClient(node.url, "bob")
    bob.call("join_room", "lobby")
    ack = api("POST", node.url, "/api/rooms/lobby/messages", json={"message": "solo", "sender": "shop"}).json()
    assert ack["ok"] and ack["seq"] == 1
    assert [(m["sender"], m["message"]) for m in bob.wait_for(1)] == [("shop", "solo")]
    assert api("POST", node.url, "/api/users/alice/rooms/lobby").json() == {"ok": True, "connections": 1, "nodes": 1}
    assert alice.wait_for(1, "room_joined")[0]["history"][0]["message"] == "solo"
    rooms = api("GET", node.url, "/api/rooms").json()
    assert rooms == {"ok": True, "rooms": [{"room": "lobby", "members": 2, "connections": 2}], "cursor": None}
    history = api("GET", node.url, "/api/rooms/lobby/history?limit=5").json()
    assert [m["message"] for m in history["messages"]] == ["solo"]
    banned = api("DELETE", node.url, "/api/users/alice/rooms/lobby", json={"ban_seconds": 30}).json()
    assert banned["connections"] == 1
    assert alice.wait_for(1, "room_left") == [{"room": "lobby", "reason": "banned"}]
    assert alice.call("join_room", "lobby")["error"]["code"] == "forbidden_room"
    assert api("POST", node.url, "/api/users/bob/disconnect").json()["connections"] == 1
    wait_until(lambda: not bob.sio.connected, timeout=5, what="bob disconnected")
    assert alice.sio.connected


def test_commands_and_posts_on_a_redis_cluster(cluster, nodes) -> None:  # noqa: F811 (fixture)
    env = {"REDIS_CLUSTER_NODES": f"127.0.0.1:{cluster[0].port}", "API_KEY": KEY}
    a = nodes.start(None, **env)
    b = nodes.start(None, **env)
    alice_a, alice_b, bob = ApiClient(a.url, "alice"), ApiClient(b.url, "alice"), ApiClient(b.url, "bob")
    bob.call("join_room", "lobby")
    assert api("POST", a.url, "/api/users/alice/rooms/lobby").json() == {"ok": True, "connections": 2, "nodes": 2}
    ack = api("POST", a.url, "/api/rooms/lobby/messages", json={"message": "sharded"}).json()
    for client in (alice_a, alice_b, bob):
        assert [m["id"] for m in client.wait_for(1)] == [ack["id"]]
    seen = {}
    cursor = None
    for _ in range(10):
        page = api("GET", b.url, "/api/rooms", params={"cursor": cursor} if cursor else {}).json()
        seen.update({r["room"]: r["members"] for r in page["rooms"]})
        if (cursor := page["cursor"]) is None:
            break
    assert seen == {"lobby": 2}
    assert api("POST", b.url, "/api/users/alice/disconnect").json() == {"ok": True, "connections": 2, "nodes": 2}
    wait_until(lambda: not alice_a.sio.connected and not alice_b.sio.connected, timeout=5, what="both closed")
    assert bob.sio.connected
