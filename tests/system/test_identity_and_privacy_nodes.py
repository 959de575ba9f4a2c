"""On real nodes and a real redis-server (the token rules alone are in unit/test_identity_and_privacy.py).
Nobody passes as someone else, reads who talks to whom, or locks anyone out (issue 23):
a token's `sub` is taken as is, its `exp` ends a live connection, the open room routes keep
private rooms private and cost O(page), direct messages do not take a stranger's room
slots, dedup ids are one per (sender, key), and a ban bites at send too."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests
import socketio
from helpers import ChatClient, wait_until
from jwts import SECRET, token

from chat_app.backends.redis.keys import RoomKeys
from chat_app.emitter import ChatEmitter, EmitterInputError
from chat_app.protocol import ErrorCode

API_KEY = "k" * 40
KEYED = {"Authorization": f"Bearer {API_KEY}"}


class Client(ChatClient):
    RECORDED = ChatClient.RECORDED | {"room_joined", "room_left"}


def refused_connect(url: str, auth: Any) -> dict[str, Any]:
    client = socketio.Client(reconnection=False)
    said: list[Any] = []
    client.on("connect_error", said.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(url, transports=["websocket"], auth=auth, wait_timeout=5)
    return said[0]["data"]


def test_impostors_of_alice_cannot_connect_and_nothing_of_hers_is_read(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, AUTH_SECRET=SECRET, AUTH_ISSUER="https://auth.example")
    iss = "https://auth.example"
    alice = Client(node.url, connect_auth={"token": token("alice", iss=iss)})
    assert alice.call("open_direct", {"with": "bob"})["ok"]
    assert alice.call("send_message", {"room": "@alice+bob", "message": "for bob only"})["ok"]
    for sub in ["alice\u200b", " alice", "alice\xa0", "\u202ealice", "x" * 64 + "1234567"]:
        assert refused_connect(node.url, {"token": token(sub, iss=iss)})["code"] == "unauthorized", sub
    assert refused_connect(node.url, {"token": token("alice")})["code"] == "unauthorized"  # no iss
    alice.close()


def test_a_live_connection_ends_at_its_tokens_exp(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, AUTH_SECRET=SECRET, API_KEY=API_KEY)
    short = Client(node.url, connect_auth={"token": token("short", exp_in=3)})
    long = Client(node.url, connect_auth={"token": token("long", exp_in=600)})
    short.call("join_room", "lobby")
    long.call("join_room", "lobby")
    errors = short.wait_for(1, "error", timeout=8)
    assert errors[0]["code"] == "token_expired", errors
    wait_until(lambda: not short.sio.connected, timeout=5, what="the expired connection to be closed")
    assert "event=token_expired" in node.log()
    assert long.sio.connected and long.call("send_message", {"room": "lobby", "message": "still here"})["ok"]
    wait_until(lambda: "short" not in node_members(node.url), what="the expired connection to leave lobby")
    long.close()


def node_members(url: str) -> list[str]:
    return requests.get(f"{url}/api/rooms/lobby/members", headers=KEYED, timeout=5).json().get("members", [])


def test_one_senders_key_never_swallows_anothers_post(redis_server) -> None:
    with ChatEmitter(redis_server.url) as chat:
        first = chat.publish("lobby", "from a:b", sender="a:b", key="c")
        second = chat.publish("lobby", "from a", sender="a", key="b:c")
        again = chat.publish("lobby", "from a", sender="a", key="b:c")
    assert (first["seq"], second["seq"]) == (1, 2) and first["id"] != second["id"]
    assert (again["id"], again["seq"]) == (second["id"], 2)  # a real retry is still one message


def test_a_banned_sender_is_refused_at_send_whoever_carries_it(redis_server, nodes) -> None:
    """The node missed the leave command (here: the ban is written and no command is sent),
    so mallory is still a member: her sends are refused `banned` all the same."""
    node = nodes.start(redis_server.url, API_KEY=API_KEY)
    mallory, bob = Client(node.url, "mallory"), Client(node.url, "bob")
    mallory.call("join_room", "lobby")
    bob.call("join_room", "lobby")
    assert mallory.call("send_message", {"room": "lobby", "message": "before"})["seq"] == 1
    r = redis_server.client()
    r.set(RoomKeys.of("chat", "lobby").ban("mallory"), b"1", ex=60)

    ack = mallory.call("send_message", {"room": "lobby", "message": "after", "key": "m-1"})
    assert ack["ok"] is False and ack["error"]["code"] == "banned", ack
    assert r.get("chat:{room:lobby}:seq") == b"1"
    assert bob.call("send_message", {"room": "lobby", "message": "bob is fine"})["seq"] == 2
    # Posts from a backend: refused under the banned name only.
    posted = requests.post(
        f"{node.url}/api/rooms/lobby/messages", json={"message": "x", "sender": "mallory"}, headers=KEYED, timeout=5
    )
    assert posted.status_code == 403 and posted.json()["error"]["code"] == "banned"
    with ChatEmitter(redis_server.url) as chat:
        with pytest.raises(EmitterInputError) as refused:
            chat.publish("lobby", "x", sender="mallory")
        assert refused.value.code == ErrorCode.BANNED
        assert chat.publish("lobby", "shipped", sender="shop")["seq"] == 3
    wait_until(lambda: [m["message"] for m in bob.received()] == ["before", "bob is fine", "shipped"])
    # Elsewhere she is not banned.
    mallory.call("join_room", "side")
    assert mallory.call("send_message", {"room": "side", "message": "here I may"})["ok"]
    for c in (mallory, bob):
        c.close()


def test_strangers_direct_messages_never_take_the_victims_room_slots(redis_server, nodes) -> None:
    """MAX_ROOMS_PER_CONNECTION=2: three strangers' messages used to fill the victim's
    slots (its own join then failed too_many_rooms, a friend's message never arrived)."""
    node = nodes.start(redis_server.url, MAX_ROOMS_PER_CONNECTION="2")
    vic = Client(node.url, "vic")
    assert vic.call("join_room", "lobby")["ok"]
    strangers = []
    for i, name in enumerate(["s1", "s2", "s3"]):
        s = Client(node.url, name)
        strangers.append(s)
        assert s.call("open_direct", {"with": "vic"})["ok"]
        assert s.call("send_message", {"room": f"@{name}+vic", "message": "hi"})["ok"]
        wait_until(lambda i=i: len(vic.received("room_joined")) == i + 1, what=f"{name}'s conversation to reach vic")
    # The third made the least active one (s1's) make way; conversations never cost a room slot.
    assert [e["room"] for e in vic.received("room_joined")] == ["@s1+vic", "@s2+vic", "@s3+vic"]
    assert vic.received("room_left") == [{"room": "@s1+vic", "reason": "idle"}]
    assert vic.call("join_room", "work")["ok"]
    third = vic.call("join_room", "third")
    assert third["ok"] is False and third["error"]["code"] == "too_many_rooms"
    # vic answers s2: now s3's is the least active, and it makes way for the friend's.
    assert vic.call("send_message", {"room": "@s2+vic", "message": "yes?"})["ok"]
    friend = Client(node.url, "friend")
    assert friend.call("open_direct", {"with": "vic"})["ok"]
    assert friend.call("send_message", {"room": "@friend+vic", "message": "lunch?"})["ok"]
    wait_until(lambda: len(vic.received("room_joined")) == 4, what="the friend's message to reach vic")
    assert vic.received("room_joined")[-1]["history"][-1]["message"] == "lunch?"
    assert vic.received("room_left")[-1] == {"room": "@s3+vic", "reason": "idle"}
    # s1's conversation is still listed, and a new message brings it back.
    listed = {d["room"] for d in vic.call("list_directs", {})["directs"]}
    assert {"@s1+vic", "@s2+vic", "@s3+vic", "@friend+vic"} <= listed
    for c in (vic, friend, *strangers):
        c.close()


def test_a_rooms_claim_governs_direct_conversations_too(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, AUTH_SECRET=SECRET)

    def client(sub: str, **claims: Any) -> Client:
        return Client(node.url, connect_auth={"token": token(sub, **claims)})

    alice = client("alice")
    fenced = client("carol", rooms=["lobby"])
    any_direct = client("dave", rooms=["lobby", "@*"])
    one_direct = client("erin", rooms=["lobby", "@alice+erin"])
    assert fenced.call("open_direct", {"with": "alice"})["error"]["code"] == "forbidden_room"
    assert any_direct.call("open_direct", {"with": "alice"})["room"] == "@alice+dave"
    assert one_direct.call("open_direct", {"with": "alice"})["room"] == "@alice+erin"
    assert one_direct.call("open_direct", {"with": "bob"})["error"]["code"] == "forbidden_room"
    # alice may write to carol (the message is stored), but carol's fenced connection is not
    # joined to it and her list does not show it.
    for peer in ("carol", "dave", "erin"):
        assert alice.call("open_direct", {"with": peer})["ok"]
        assert alice.call("send_message", {"room": f"@alice+{peer}", "message": f"for {peer}"})["ok"]
    wait_until(lambda: any_direct.call("list_directs", {})["directs"], what="dave's list")
    assert fenced.call("list_directs", {})["directs"] == []
    assert [d["room"] for d in one_direct.call("list_directs", {})["directs"]] == ["@alice+erin"]
    assert fenced.received("room_joined") == []
    # A claim naming an invalid room (only `@*` is a pattern) is refused at connect.
    assert refused_connect(node.url, {"token": token("x", rooms=["@bad*"])})["code"] == "invalid_room"
    for c in (alice, fenced, any_direct, one_direct):
        c.close()


def test_direct_rooms_state_needs_the_key(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, API_KEY=API_KEY)
    alice, bob, bob2 = Client(node.url, "alice"), Client(node.url, "bob"), Client(node.url, "bob")
    alice.call("open_direct", {"with": "bob"})
    assert alice.call("send_message", {"room": "@alice+bob", "message": "psst"})["ok"]
    wait_until(lambda: len(bob2.received("room_joined")) == 1, what="bob's second device to be in")
    alice.call("join_room", "lobby")
    for path in ("/api/rooms/%40alice%2Bbob", "/api/rooms/%40alice%2Bbob/members"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = requests.get(node.url + path, headers=headers, timeout=5)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized", path
            assert "alice" not in response.text and "seq" not in response.text
    keyed = requests.get(f"{node.url}/api/rooms/%40alice%2Bbob", headers=KEYED, timeout=5).json()
    assert keyed == {"room": "@alice+bob", "active": True, "members": ["alice", "bob"], "members_count": 2, "seq": 1}
    # An ordinary room of a deployment without AUTH_SECRET stays open (no device counts).
    open_room = requests.get(f"{node.url}/api/rooms/lobby", timeout=5).json()
    assert open_room == {"room": "lobby", "active": True, "members": ["alice"], "members_count": 1, "seq": 0}
    for c in (alice, bob, bob2):
        c.close()


def test_with_auth_secret_every_rooms_state_needs_the_key(redis_server, nodes) -> None:
    """A room fenced by tokens' rooms claims looks like any other to a node."""
    node = nodes.start(redis_server.url, API_KEY=API_KEY, AUTH_SECRET=SECRET)
    ceo = Client(node.url, connect_auth={"token": token("ceo", rooms=["board"])})
    assert ceo.call("join_room", "board")["ok"]
    for path in ("/api/rooms/board", "/api/rooms/board/members"):
        response = requests.get(node.url + path, timeout=5)
        assert response.status_code == 401 and "ceo" not in response.text, path
        assert requests.get(node.url + path, headers=KEYED, timeout=5).json()["members"] == ["ceo"]
    ceo.close()
    off = nodes.start(redis_server.url, AUTH_SECRET=SECRET)  # no API_KEY: nobody reads it
    response = requests.get(f"{off.url}/api/rooms/board", timeout=5)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_the_open_room_route_reads_a_page_not_every_member(redis_server, nodes) -> None:
    """50,000 entries made members.lua block Redis for 43 ms per unauthenticated GET; the
    route now reads the count and a page of names, and never an entry per connection."""
    node = nodes.start(redis_server.url)
    r = redis_server.client()
    keys = RoomKeys.of("chat", "big")
    users = [f"user{i:05}" for i in range(5000)]
    r.zadd(keys.nodes, {"ghost": int((time.time() + 600) * 1000)})
    r.hset(keys.node_prefix + "ghost", mapping={f"sid{i}": u for i, u in enumerate(users * 2)})
    r.hset(keys.users, mapping=dict.fromkeys(users, 2))
    r.zadd(keys.names, dict.fromkeys(users, 0))
    r.set(keys.epoch, "e1")
    r.set(keys.seq, 7)
    r.config_resetstat()
    response = requests.get(f"{node.url}/api/rooms/big", timeout=5)
    calls = {name: stats["calls"] for name, stats in r.info("commandstats").items()}
    assert "cmdstat_hgetall" not in calls and "cmdstat_hvals" not in calls, calls
    assert len(response.content) < 4000
    info = response.json()
    assert (info["members_count"], info["seq"], info["members"]) == (5000, 7, users[:100])
