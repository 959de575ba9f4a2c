"""On real nodes and a real redis-server (the fuzzing and room rules alone are in unit/test_security.py).
Hostile input changes nothing: validation, key safety, membership, auth, rate limits."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import socketio
from helpers import ChatClient, wait_until

from chat_app.backends.redis.keys import RoomKeys


def test_rooms_a_and_ab_and_escaped_names_do_not_leak(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    rooms = ["a", "ab", "a b", "a:b", "a#b", "a.b"]
    listeners = {room: ChatClient(b.url, f"l{i}") for i, room in enumerate(rooms)}
    for room, client in listeners.items():
        client.call("join_room", room)
    sender = ChatClient(a.url, "s")
    outsider = ChatClient(b.url, "outsider")  # in a room of its own only
    outsider.call("join_room", "elsewhere")
    for room in rooms:
        sender.call("join_room", room)
        assert sender.call("send_message", {"room": room, "message": f"for {room}"})["ok"]
    # Then one more message per room: B reads them all from one subscription in the order
    # they were published, so a leaked message would reach a listener before its last one.
    sender.call("join_room", "elsewhere")
    for room in [*rooms, "elsewhere"]:
        assert sender.call("send_message", {"room": room, "message": "last"})["ok"]
    for client in [*listeners.values(), outsider]:
        wait_until(lambda client=client: [m["message"] for m in client.received()][-1:] == ["last"])
    for room, client in listeners.items():
        assert [(m["room"], m["message"]) for m in client.received()] == [(room, f"for {room}"), (room, "last")]
    assert [(m["room"], m["message"]) for m in outsider.received()] == [("elsewhere", "last")]


def test_a_one_megabyte_message_is_refused_and_the_connection_stays(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url)
    client = ChatClient(node.url, "paster")
    client.call("join_room", "lobby")
    r = redis_server.client()
    seq_before = r.get("chat:{room:lobby}:seq")
    ack = client.call("send_message", {"room": "lobby", "message": "x" * 1_000_000})
    assert ack["ok"] is False and ack["error"]["code"] == "message_too_large"
    assert r.get("chat:{room:lobby}:seq") == seq_before
    assert client.sio.connected
    assert client.call("send_message", {"room": "lobby", "message": "small"})["ok"]


def test_garbage_on_a_room_channel_never_stops_valid_messages(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    sender, reader = ChatClient(a.url, "s"), ChatClient(b.url, "r")
    sender.call("join_room", "lobby")
    reader.call("join_room", "lobby")
    r = redis_server.client()
    channel = RoomKeys.of("chat", "lobby").channel
    garbage = [
        b"\x80\x81\xfe\xff",
        b"not json",
        b"[]",
        b"{}",
        b'{"v": 2, "kind": "message"}',
        b'{"v": 1, "kind": "message", "id": 1}',
        b'{"v":1,"kind":"presence","room":"lobby","action":"explode","user":"x","members_count":1,"instance_id":"i"}',
        b"\x80\x04\x95" + b"pickle" * 10,
        b'{"v":1,"kind":"message","message":"' + b"x" * 100_000 + b'"}',
    ]
    for payload in garbage:
        r.publish(channel, payload)
    assert sender.call("send_message", {"room": "lobby", "message": "still fine"})["ok"]
    assert [m["message"] for m in reader.wait_for(1)] == ["still fine"]
    assert b.health()["status"] == "ok"


SECRET = "test-secret-for-hs256-at-least-32-bytes"


def token(sub: str, exp_in: float = 60, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + exp_in), **claims}, secret, algorithm="HS256")


def refused(url: str, auth: Any) -> str:
    """Connect, expect a refusal, return what the server said (`connect_error` data)."""
    client = socketio.Client(reconnection=False)
    said: list[Any] = []
    client.on("connect_error", said.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(url, transports=["websocket"], auth=auth, wait_timeout=5)
    assert said and said[0]["data"]["code"] == "unauthorized", said
    return said[0]["message"]


def test_auth_secret_requires_a_valid_token(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, AUTH_SECRET=SECRET)
    b = nodes.start(redis_server.url, AUTH_SECRET=SECRET)
    assert "token is required" in refused(a.url, None)
    assert "token is required" in refused(a.url, {"username": "mallory"})
    assert "not valid" in refused(a.url, {"token": token("mallory", secret="another-secret-of-at-least-32-bytes")})
    assert "expired" in refused(a.url, {"token": token("mallory", exp_in=-10)})

    alice = ChatClient(a.url, connect_auth={"token": token("alice", rooms=["lobby"])})
    bob = ChatClient(b.url, connect_auth={"token": token("bob")})
    assert alice.call("join_room", "lobby")["ok"]
    forbidden = alice.call("join_room", "secret")
    assert forbidden["ok"] is False and forbidden["error"]["code"] == "forbidden_room"
    bob.call("join_room", "lobby")
    alice.call("send_message", {"room": "lobby", "message": "hi", "sender": "the CEO"})
    assert [m["sender"] for m in bob.wait_for(1)] == ["alice"]


def test_rate_limit_refuses_the_excess_and_serves_others(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, SEND_RATE="1", SEND_BURST="5")
    spammer, other = ChatClient(node.url, "spam"), ChatClient(node.url, "other")
    spammer.call("join_room", "lobby")
    other.call("join_room", "lobby")
    acks = [spammer.call("send_message", {"room": "lobby", "message": f"{i}"}) for i in range(12)]
    ok = [a for a in acks if a["ok"]]
    limited = [a for a in acks if not a["ok"]]
    assert 5 <= len(ok) <= 7 and limited and all(a["error"]["code"] == "rate_limited" for a in limited)
    assert other.call("send_message", {"room": "lobby", "message": "me too"})["ok"]
    wait_until(lambda: len(other.received()) == len(ok) + 1, what="only accepted sends delivered")
