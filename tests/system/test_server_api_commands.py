"""The server API's commands over HTTP (disconnect, join, leave) move every connection of a
user on every node, in order, each answered in full; bad control-channel payloads are dropped.
Nodes started as the Procfile starts them, one real Redis, real Socket.IO clients."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
import requests
from api_client import KEY, ApiClient, api
from helpers import scrape, wait_until
from streams import SendStream
from test_cluster import cluster  # noqa: F401 (fixture)

from chat_app.backends.redis.control import ControlClient, answer
from chat_app.backends.redis.keys import commands_channel
from chat_app.protocol import Command, CommandAction, CommandReply, decode_command


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
