"""The server API over HTTP: nodes started as the Procfile starts them, one real Redis (or
none, or a Cluster), real Socket.IO clients, real HTTP calls."""

from __future__ import annotations

import threading
import time
from typing import Any

import jwt
import pytest
import redis
import requests
from helpers import ChatClient, scrape, wait_until
from streams import SendStream
from test_cluster import cluster  # noqa: F401 (fixture)

from chat_app.backends.redis.control import ControlClient, answer
from chat_app.backends.redis.keys import RoomKeys, commands_channel
from chat_app.protocol import Command, CommandAction, CommandReply, decode_command

KEY = "test-api-key-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVER_EVENTS = ("room_joined", "room_left", "disconnected_by_server")


class ApiClient(ChatClient):
    """A ChatClient that also records the server API's events, and every event in the one
    order they arrived (room_joined must come before the room's live messages)."""

    RECORDED = ChatClient.RECORDED | set(SERVER_EVENTS)

    def __init__(self, url: str, username: str | None = None, **kw: Any) -> None:
        self.order: list[tuple[str, Any]] = []
        super().__init__(url, username, **kw)

    def _record(self, kind: str, data: Any) -> None:
        if kind in self.RECORDED:
            with self._lock:
                self.order.append((kind, data))
        super()._record(kind, data)


def api(method: str, url: str, path: str, timeout: float = 10, **kw: Any) -> requests.Response:
    kw.setdefault("headers", AUTH)
    return requests.request(method, f"{url}{path}", timeout=timeout, **kw)


def seq_of(url: str, room: str) -> int:
    return requests.get(f"{url}/api/rooms/{room}", timeout=5).json()["seq"]


def test_http_publish_reaches_members_on_every_node_and_needs_the_key(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY)
    b = nodes.start(redis_server.url, API_KEY=KEY)
    alice, bob = ApiClient(a.url, "alice"), ApiClient(b.url, "bob")
    alice.call("join_room", "lobby")
    bob.call("join_room", "lobby")

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"}):
        refused = api("POST", a.url, "/api/rooms/lobby/messages", headers=headers, json={"message": "no"})
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    for path in ("/api/rooms", "/api/rooms/lobby/history"):
        assert api("GET", a.url, path, headers={}).status_code == 401
    assert api("POST", a.url, "/api/users/alice/disconnect", headers={}).status_code == 401
    assert alice.sio.connected

    ok = api("POST", a.url, "/api/rooms/lobby/messages", json={"message": "Your order shipped", "sender": "shop"})
    assert ok.status_code == 200, ok.text
    ack = ok.json()
    assert ack["ok"] and ack["seq"] == 1 and set(ack) == {"ok", "id", "seq", "epoch", "timestamp"}
    for member in (alice, bob):
        (got,) = member.wait_for(1)
        assert (got["id"], got["seq"], got["sender"], got["message"]) == (ack["id"], 1, "shop", "Your order shipped")
        assert got["instance_id"] == f"api:{a.instance_id}" and got["timestamp"] == ack["timestamp"]
    assert seq_of(a.url, "lobby") == 1, "the refused posts stored nothing"

    # The same key twice stores one message: the retry is answered with the first one.
    first = api("POST", b.url, "/api/rooms/lobby/messages", json={"message": "once", "key": "k-1"}).json()
    again = api("POST", a.url, "/api/rooms/lobby/messages", json={"message": "once", "key": "k-1"}).json()
    assert (again["id"], again["seq"]) == (first["id"], first["seq"]) == (first["id"], 2)
    api("POST", a.url, "/api/rooms/lobby/messages", json={"message": "after"})  # a duplicate would come first
    assert [m["seq"] for m in bob.wait_for(3)] == [1, 2, 3]
    # The open room endpoint stays open.
    assert requests.get(f"{a.url}/api/rooms/lobby", timeout=5).json()["members"] == ["alice", "bob"]


def test_api_is_off_without_api_key(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    member = ApiClient(a.url, "alice")
    member.call("join_room", "lobby")
    for method, path in (
        ("POST", "/api/rooms/lobby/messages"),
        ("GET", "/api/rooms"),
        ("POST", "/api/users/alice/disconnect"),
        ("DELETE", "/api/users/alice/rooms/lobby"),
    ):
        response = api(method, a.url, path, json={"message": "x"})
        assert response.status_code == 404, (path, response.text)
        assert response.json() == {
            "ok": False,
            "error": {"code": "not_found", "message": "the server API is off: set API_KEY to turn it on"},
        }
    assert seq_of(a.url, "lobby") == 0 and member.sio.connected and member.received() == []
    assert requests.get(f"{a.url}/api/rooms/lobby", timeout=5).status_code == 200


def test_a_short_api_key_stops_the_node(nodes) -> None:
    with pytest.raises(AssertionError, match="API_KEY must be at least 32 bytes"):
        nodes.start(None, API_KEY="short")


def test_disconnect_closes_every_connection_of_the_user_on_every_node(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY)
    b = nodes.start(redis_server.url, API_KEY=KEY)
    alice_a, alice_b = ApiClient(a.url, "alice"), ApiClient(b.url, "alice")
    bob = ApiClient(b.url, "bob")
    for client in (alice_a, alice_b, bob):
        client.call("join_room", "lobby")

    answer = api("POST", a.url, "/api/users/alice/disconnect", json={"reason": "account closed"})
    assert answer.json() == {"ok": True, "connections": 2, "nodes": 2}
    wait_until(lambda: not alice_a.sio.connected and not alice_b.sio.connected, timeout=5, what="both closed")
    for alice in (alice_a, alice_b):
        assert alice.received("disconnected_by_server") == [{"reason": "account closed"}]
    assert bob.sio.connected
    assert bob.call("send_message", {"room": "lobby", "message": "still here"})["ok"]
    wait_until(lambda: bob.received(), what="bob's own message")
    # Nobody of that name is left: the next command acts on nothing, and says so.
    again = api("POST", b.url, "/api/users/alice/disconnect").json()
    assert again == {"ok": True, "connections": 0, "nodes": 2}
    wait_until(lambda: requests.get(f"{a.url}/api/rooms/lobby", timeout=5).json()["members"] == ["bob"], timeout=5)


def test_join_and_leave_move_every_connection_with_presence_and_a_ban_holds(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY)
    b = nodes.start(redis_server.url, API_KEY=KEY)
    bob = ApiClient(a.url, "bob")
    bob.call("join_room", "lobby")
    assert bob.call("send_message", {"room": "lobby", "message": "before"})["ok"]
    alice_a, alice_b = ApiClient(a.url, "alice"), ApiClient(b.url, "alice")

    joined = api("POST", b.url, "/api/users/alice/rooms/lobby").json()
    assert joined == {"ok": True, "connections": 2, "nodes": 2}
    for alice in (alice_a, alice_b):
        (event,) = alice.wait_for(1, "room_joined")
        assert set(event) == {"room", "seq", "epoch", "history", "members"}
        assert (event["room"], event["seq"]) == ("lobby", 1)
        assert [m["message"] for m in event["history"]] == ["before"]
        assert sorted(set(event["members"])) == ["alice", "bob"]
    wait_until(lambda: [p["action"] for p in bob.received("presence") if p["user"] == "alice"] == ["join"])
    assert bob.call("send_message", {"room": "lobby", "message": "hello alice"})["ok"]
    for alice in (alice_a, alice_b):
        assert [m["message"] for m in alice.wait_for(1)] == ["hello alice"]
    # Joined as by join_room: each connection may send there.
    assert alice_b.call("send_message", {"room": "lobby", "message": "hi"})["ok"]
    # Already members: nothing to do, nothing sent twice.
    assert api("POST", a.url, "/api/users/alice/rooms/lobby").json()["connections"] == 0

    left = api("DELETE", a.url, "/api/users/alice/rooms/lobby").json()
    assert left == {"ok": True, "connections": 2, "nodes": 2}
    for alice in (alice_a, alice_b):
        assert alice.wait_for(1, "room_left") == [{"room": "lobby", "reason": "removed"}]
    wait_until(lambda: [p["action"] for p in bob.received("presence") if p["user"] == "alice"] == ["join", "leave"])
    assert alice_a.call("send_message", {"room": "lobby", "message": "x"})["error"]["code"] == "not_in_room"
    assert alice_a.call("join_room", "lobby")["ok"], "a leave without a ban lets them back"

    banned = api("DELETE", b.url, "/api/users/alice/rooms/lobby", json={"ban_seconds": 2}).json()
    assert banned == {"ok": True, "connections": 1, "nodes": 2}
    assert alice_a.wait_for(2, "room_left")[-1] == {"room": "lobby", "reason": "banned"}
    started = time.monotonic()
    for alice in (alice_a, alice_b):
        refused = alice.call("join_room", "lobby")
        assert refused["error"]["code"] == "forbidden_room", refused
    assert api("POST", a.url, "/api/users/alice/rooms/lobby").json()["connections"] == 0, "nor may the API"
    assert ApiClient(b.url, "alice").call("join_room", "lobby")["error"]["code"] == "forbidden_room"
    assert ApiClient(b.url, "carol").call("join_room", "lobby")["ok"], "the ban is alice's only"
    wait_until(lambda: alice_b.call("join_room", "lobby")["ok"], timeout=6, interval=0.2, what="the ban's end")
    assert time.monotonic() - started > 1.0, "the ban ended long before its 2 s"


def test_room_joined_comes_before_the_rooms_live_messages_and_nothing_overlaps(redis_server, nodes) -> None:
    env = {"API_KEY": KEY, "SEND_RATE": "1000", "SEND_BURST": "1000"}
    a = nodes.start(redis_server.url, **env)
    b = nodes.start(redis_server.url, **env)
    sender = ApiClient(a.url, "sender")
    sender.call("join_room", "lobby")
    joiners = [ApiClient(a.url, "alice"), ApiClient(b.url, "alice")]
    stream = SendStream(sender, "lobby", rate=100).start()
    wait_until(lambda: len(stream.acks) > 20, what="traffic in the room")
    assert api("POST", a.url, "/api/users/alice/rooms/lobby").json()["connections"] == 2
    wait_until(lambda: all(len(j.received()) > 20 for j in joiners), what="live messages after the join")
    stream.stop()
    last = max(ack["seq"] for ack in stream.acks.values() if ack.get("ok"))
    for joiner in joiners:
        wait_until(lambda j=joiner: j.received() and j.received()[-1]["seq"] == last, what="the last message")
        kinds = [kind for kind, data in joiner.order if kind != "presence"]
        assert kinds[0] == "room_joined" and kinds.count("room_joined") == 1, kinds[:5]
        joined = joiner.order[[k for k, _ in joiner.order].index("room_joined")][1]
        history = [m["seq"] for m in joined["history"]]
        live = [m["seq"] for m in joiner.received()]
        assert history == list(range(max(1, joined["seq"] - 49), joined["seq"] + 1))
        assert live == list(range(joined["seq"] + 1, last + 1)), "live messages start right after the bound"


def test_history_pages_are_exact_oldest_first_and_of_one_epoch(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY, HISTORY_LENGTH="20")
    keeper = ApiClient(a.url, "keeper")
    keeper.call("join_room", "lobby")
    for i in range(1, 26):
        assert api("POST", a.url, "/api/rooms/lobby/messages", json={"message": f"m{i}"}).json()["seq"] == i

    def page(query: str) -> dict[str, Any]:
        response = api("GET", a.url, f"/api/rooms/lobby/history{query}")
        assert response.status_code == 200, response.text
        return response.json()

    def seqs(query: str) -> list[int]:
        return [m["seq"] for m in page(query)["messages"]]

    body = page("?before=21&limit=5")
    assert set(body) == {"ok", "room", "epoch", "messages"} and body["room"] == "lobby"
    assert [m["message"] for m in body["messages"]] == ["m16", "m17", "m18", "m19", "m20"]
    assert seqs("?limit=3") == [23, 24, 25], "the newest without `before`"
    assert seqs("") == list(range(6, 26)), "default 50, within what the room keeps (HISTORY_LENGTH 20)"
    assert seqs("?before=9&limit=100") == [6, 7, 8]
    assert seqs("?before=6") == [] and seqs("?before=1") == []
    assert seqs("?before=1000&limit=2") == [24, 25]

    # The room is last written through "another server" (as after a failover): the next
    # post starts a new epoch and keeps the stream; history answers from the new one only.
    redis_server.client().set(RoomKeys.of("chat", "lobby").srv, "promoted-replica")
    fresh = api("POST", a.url, "/api/rooms/lobby/messages", json={"message": "new epoch"}).json()
    assert fresh["epoch"] != body["epoch"]
    after = page("?limit=100")
    assert after["epoch"] == fresh["epoch"]
    assert [(m["seq"], m["message"], m["epoch"]) for m in after["messages"]] == [
        (fresh["seq"], "new epoch", fresh["epoch"])
    ]
    assert seqs(f"?before={fresh['seq']}") == []
    empty = api("GET", a.url, "/api/rooms/nobody-here/history").json()
    assert empty == {"ok": True, "room": "nobody-here", "epoch": None, "messages": []}


def test_bad_input_gets_a_400_with_its_code_and_changes_nothing(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY, MAX_MESSAGE_BYTES="100")
    alice = ApiClient(a.url, "alice")
    alice.call("join_room", "lobby")
    post = "/api/rooms/lobby/messages"
    cases = [
        ("POST", "/api/rooms/bad*room/messages", {"json": {"message": "x"}}, "invalid_room"),
        ("POST", "/api/rooms/a%2Fb/messages", {"json": {"message": "x"}}, "invalid_room"),
        ("POST", f"/api/rooms/{'r' * 65}/messages", {"json": {"message": "x"}}, "invalid_room"),
        ("POST", "/api/rooms/%20lobby/messages", {"json": {"message": "x"}}, "invalid_room"),
        ("POST", post, {"json": {"message": "é" * 51}}, "message_too_large"),
        ("POST", post, {"data": b"x" * 20_000}, "message_too_large"),
        ("POST", post, {"data": "not json"}, "invalid_payload"),
        ("POST", post, {"data": "[1, 2]"}, "invalid_payload"),
        ("POST", post, {}, "invalid_payload"),
        ("POST", post, {"json": {"message": 5}}, "invalid_payload"),
        ("POST", post, {"json": {"message": "   "}}, "invalid_payload"),
        ("POST", post, {"json": {"message": "x", "sender": "sh\nop"}}, "invalid_user"),
        ("POST", post, {"json": {"message": "x", "sender": ""}}, "invalid_user"),
        ("POST", post, {"json": {"message": "x", "key": ""}}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?limit=-1", {}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?limit=1000000000", {}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?limit=0", {}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?before=0", {}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?before=ten", {}, "invalid_payload"),
        ("GET", "/api/rooms/bad%00room/history", {}, "invalid_room"),
        ("GET", "/api/rooms?limit=101", {}, "invalid_payload"),
        ("GET", "/api/rooms?cursor=not-a-cursor", {}, "invalid_payload"),
        ("POST", "/api/users/al%0Aice/rooms/lobby", {}, "invalid_user"),
        ("POST", "/api/users/al%1Bice/disconnect", {}, "invalid_user"),
        ("POST", "/api/users/%20alice/disconnect", {}, "invalid_user"),
        ("POST", f"/api/users/{'u' * 65}/disconnect", {}, "invalid_user"),
        ("POST", "/api/users/alice/rooms/bad*room", {}, "invalid_room"),
        ("DELETE", "/api/users/alice/rooms/lobby", {"json": {"ban_seconds": -1}}, "invalid_payload"),
        ("DELETE", "/api/users/alice/rooms/lobby", {"json": {"ban_seconds": "60"}}, "invalid_payload"),
        ("DELETE", "/api/users/alice/rooms/lobby", {"json": {"ban_seconds": 10**9}}, "invalid_payload"),
        ("DELETE", "/api/users/alice/rooms/lobby", {"data": "{"}, "invalid_payload"),
        ("POST", "/api/users/alice/disconnect", {"json": {"reason": "bye\n"}}, "invalid_payload"),
        ("POST", "/api/users/alice/disconnect", {"json": {"reason": 42}}, "invalid_payload"),
    ]
    for method, path, kw, code in cases:
        response = api(method, a.url, path, **kw)
        assert response.status_code == 400, (path, kw, response.status_code, response.text)
        error = response.json()
        assert error["ok"] is False and error["error"]["code"] == code, (path, kw, error)
        assert error["error"]["message"]
    assert api("GET", a.url, "/api/nowhere").json()["error"]["code"] == "not_found"
    assert api("PUT", a.url, post).status_code == 405
    # Nothing happened: no message stored or delivered, alice still in, still connected.
    assert seq_of(a.url, "lobby") == 0
    assert alice.sio.connected and alice.received() == [] and alice.received("room_left") == []
    assert alice.call("send_message", {"room": "lobby", "message": "still a member"})["seq"] == 1
    assert redis_server.client().keys("*:ban:*") == []


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


def test_rooms_are_listed_page_by_page_with_member_counts(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY)
    b = nodes.start(redis_server.url, API_KEY=KEY)
    names = [f"room-{i}" for i in range(7)] + ["café crème", "a:b#c@d"]
    x, y = ApiClient(a.url, "x"), ApiClient(b.url, "y")
    for name in names:
        x.call("join_room", name)
    y.call("join_room", names[0])
    ApiClient(b.url, "x").call("join_room", names[0])  # x again: two connections, one member
    api("POST", a.url, "/api/rooms/only-history/messages", json={"message": "nobody listens"})
    # Redis keys that merely look like a room's must not show up.
    redis_server.client().set("chat:{room:zz}:nodesx", "1")
    seen: dict[str, dict[str, Any]] = {}
    cursor, pages = None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api("GET", b.url, "/api/rooms", params=params).json()
        pages += 1
        for room in page["rooms"]:
            seen[room.pop("room")] = room
        cursor = page["cursor"]
        if cursor is None:
            break
        assert pages < 50, "the cursor never ends"
    assert set(seen) == set(names), "every room with members once, the empty one not"
    assert seen[names[0]] == {"members": 2, "connections": 3}
    assert seen["café crème"] == {"members": 1, "connections": 1}
    assert pages > 1


def test_bad_payloads_on_the_control_channel_are_counted_and_dropped(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY)
    alice = ApiClient(a.url, "alice")
    alice.call("join_room", "lobby")
    before = scrape(a.url).get("chat_bad_payloads_total", 0.0)
    r = redis_server.client()
    channel = commands_channel("chat")
    join = Command("c1", CommandAction.JOIN, "alice", "elsewhere", None, "chat:{control}:reply:x")
    bad = [
        b"not json",
        b'{"v": 1, "kind": "command"}',
        Command("c2", CommandAction.JOIN, "alice", None, None, "chat:{control}:reply:x").encode(),  # no room
        Command("c3", CommandAction.LEAVE, "alice", "lobby", None, "chat:{room:lobby}:ch").encode(),  # foreign reply
        join.encode().replace(b'"alice"', b'"al\\nice"'),
        b"x" * 10_000,
    ]
    for payload in bad:
        assert r.publish(channel, payload) == 1
    wait_until(lambda: scrape(a.url)["chat_bad_payloads_total"] - before == len(bad), what="every one counted")
    assert a.health()["status"] == "ok"
    assert alice.received("room_joined") == [] and alice.received("room_left") == []
    # The listener carries on: a good command still works, and so does the room.
    assert api("POST", a.url, "/api/users/alice/rooms/elsewhere").json()["connections"] == 1
    assert alice.wait_for(1, "room_joined")[0]["room"] == "elsewhere"
    assert scrape(a.url)["chat_control_commands_total"] >= 1


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


def test_many_commands_at_once_are_each_answered_in_full(redis_server, nodes) -> None:
    """Concurrent commands each get their own reply list: no answer is counted twice or for
    another command."""
    a = nodes.start(redis_server.url, API_KEY=KEY)
    b = nodes.start(redis_server.url, API_KEY=KEY)
    users = [f"user{i}" for i in range(6)]
    clients = [ApiClient(node.url, user) for user in users for node in (a, b)]
    answers: dict[str, Any] = {}

    def join(user: str) -> None:
        answers[user] = api("POST", a.url if user[-1] in "024" else b.url, f"/api/users/{user}/rooms/lobby").json()

    threads = [threading.Thread(target=join, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert answers == {u: {"ok": True, "connections": 2, "nodes": 2} for u in users}
    for client in clients:
        client.wait_for(1, "room_joined")
    assert requests.get(f"{a.url}/api/rooms/lobby", timeout=5).json()["members"] == users
    assert api("GET", a.url, "/api/rooms").json()["rooms"] == [{"room": "lobby", "members": 6, "connections": 12}]


def test_answers_are_all_counted_while_the_senders_connections_are_renewed(redis_server) -> None:
    """A Cluster client's topology refresh marks every connection it lent out for reconnect
    (redis-py 8), the sender's included. Answers that come meanwhile are all counted: CI once
    lost one to a reply channel that was re-subscribed a moment too late."""
    client = redis_server.client()
    nodes = [client.pubsub(ignore_subscribe_messages=True) for _ in range(2)]
    for node in nodes:
        node.subscribe(commands_channel("chat"))
    wait_until(lambda: client.pubsub_numsub(commands_channel("chat"))[0][1] == 2, what="both nodes listening")

    def act(index: int, node: redis.client.PubSub) -> None:
        message, deadline = None, time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = node.get_message(timeout=1)
        if message is None:
            return  # never heard the command: the sender's count below says so
        command = decode_command(message["data"])
        client.connection_pool.update_active_connections_for_reconnect()
        answer(client, command.reply_to, CommandReply(command.id, f"node{index}", index + 1).encode())

    threads = [threading.Thread(target=act, args=pair, daemon=True) for pair in enumerate(nodes)]
    for t in threads:
        t.start()
    result = ControlClient(client, "chat", socket_timeout=5).send(Command("", CommandAction.DISCONNECT, "alice"), 4)
    for t in threads:
        t.join(timeout=5)
    assert (result.nodes, result.connections, result.expected) == (2, 3, 2)


def test_users_are_found_by_their_token_or_their_connect_time_name(redis_server, nodes) -> None:
    secret = "s" * 32
    signed = nodes.start(redis_server.url, API_KEY=KEY, AUTH_SECRET=secret)
    named = nodes.start(redis_server.url, API_KEY=KEY, INSTANCE_ID="named")  # another deployment's way
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    # The token decides: the username it also sends is not her name.
    by_token = ApiClient(signed.url, connect_auth={"token": token, "username": "mallory"})
    by_query = ApiClient(f"{named.url}?username=alice")
    nameless = ApiClient(named.url)  # no name at connect: its payloads' senders are not names
    assert api("POST", signed.url, "/api/users/mallory/rooms/lobby").json()["connections"] == 0
    assert api("POST", signed.url, "/api/users/alice/rooms/lobby").json() == {
        "ok": True,
        "connections": 2,
        "nodes": 2,
    }
    for client in (by_token, by_query):
        assert client.wait_for(1, "room_joined")[0]["room"] == "lobby"
    assert nameless.received("room_joined") == []
