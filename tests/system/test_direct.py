"""Direct conversations: private rooms of two users, reaching someone who never opened one
(real Redis, real nodes, real clients)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import requests
from helpers import ChatClient, wait_until

from chat_app.backends.redis.keys import user_directs
from chat_app.protocol import ChatError, ErrorCode, check_room_name, direct_members, direct_room

# Tests that poll list_directs until it shows something: the per-connection limit
# (LIST_DIRECTS_RATE, 1 a second) would refuse the polls.
POLLING = {"LIST_DIRECTS_RATE": "1000", "LIST_DIRECTS_BURST": "1000"}


class DirectClient(ChatClient):
    RECORDED = ChatClient.RECORDED | {"room_joined"}

    def seen(self, room: str) -> list[str]:
        """Every message of the room this connection got: from room_joined's history, then live."""
        joined = [m["message"] for j in self.received("room_joined") if j["room"] == room for m in j["history"]]
        return joined + [m["message"] for m in self.received() if m["room"] == room]


def test_the_name_is_one_per_pair_and_injective() -> None:
    assert direct_room("alice", "bob") == direct_room("bob", "alice") == "@alice+bob"
    pairs = [("a+b", "c"), ("a", "b+c"), ("a%2B", "b"), ("@x", "y"), ("x", "@y"), ("dana 🙂", "élodie"), ("a/b", "{c}")]
    names = {direct_room(a, b) for a, b in pairs}
    assert len(names) == len(pairs)
    for a, b in pairs:
        room = direct_room(a, b)
        assert check_room_name(room) == room
        assert direct_members(room) == tuple(sorted((a, b)))
        assert "/" not in room and "{" not in room
    for other in ("@bob+alice", "@alice+alice", "@a+b+c", "alice+bob", "@al%zzice+bob", "@+bob"):
        assert direct_members(other) is None
        with pytest.raises(ChatError, match="direct conversation") as refused:
            check_room_name(other)
        assert refused.value.code == ErrorCode.INVALID_ROOM
    assert direct_members("@alice") is None


def test_a_conversation_reaches_both_connections_of_who_never_opened_it(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    alice = DirectClient(a.url, "alice")
    bob_a = DirectClient(a.url, "bob")
    bob_b = DirectClient(b.url, "bob")
    carol = DirectClient(b.url, "carol")
    ack = alice.call("open_direct", {"with": "bob"})
    assert ack["ok"] and ack["room"] == "@alice+bob" and ack["with"] == "bob" and ack["history"] == []
    assert alice.call("send_message", {"room": "@alice+bob", "message": "hi bob"})["seq"] == 1
    for bob in (bob_a, bob_b):
        wait_until(lambda bob=bob: bob.seen("@alice+bob") == ["hi bob"], what="bob's connection gets the message")
    assert bob_b.call("send_message", {"room": "@alice+bob", "message": "hi alice"})["seq"] == 2
    for c, expected in (
        (alice, ["hi bob", "hi alice"]),
        (bob_a, ["hi bob", "hi alice"]),
        (bob_b, ["hi bob", "hi alice"]),
    ):
        wait_until(lambda c=c, e=expected: c.seen("@alice+bob") == e, what="both sides get the reply once")
    # Nobody enters by name, not even a member; the other person's name makes another room.
    for c in (carol, bob_a):
        assert c.call("join_room", "@alice+bob")["error"]["code"] == "forbidden_room"
    assert carol.call("open_direct", {"with": "alice"})["room"] == "@alice+carol"
    time.sleep(0.3)  # the quiet period being asserted: carol got nothing of alice+bob
    assert carol.seen("@alice+bob") == [] and carol.received("room_joined") == []
    for c in (alice, bob_a, bob_b, carol):
        c.close()


def test_with_auth_secret_a_token_for_carol_cannot_enter(redis_server, nodes) -> None:
    secret = "s" * 32
    node = nodes.start(redis_server.url, AUTH_SECRET=secret, **POLLING)

    def client(sub: str, **claims: Any) -> DirectClient:
        token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60, **claims}, secret, algorithm="HS256")
        return DirectClient(node.url, connect_auth={"token": token})

    alice = client("alice")
    carol = client("carol", rooms=["lobby", "@*"])
    assert alice.call("open_direct", {"with": "bob"})["ok"]
    assert carol.call("join_room", "@alice+bob")["error"]["code"] == "forbidden_room"
    # `@*` in her claim: any conversation of her own, never anyone else's.
    assert carol.call("open_direct", {"with": "alice"})["room"] == "@alice+carol"
    # Each list is its token's user's own.
    assert alice.call("send_message", {"room": "@alice+bob", "message": "for bob"})["ok"]
    assert carol.call("send_message", {"room": "@alice+carol", "message": "for alice"})["ok"]

    def rooms(client: DirectClient) -> list[str]:
        return [d["room"] for d in client.call("list_directs", {})["directs"]]

    wait_until(lambda: rooms(alice) == ["@alice+carol", "@alice+bob"], what="alice's two conversations")
    assert rooms(carol) == ["@alice+carol"]
    alice.close()
    carol.close()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"with": "alice"}, "invalid_payload"),
        ({"with": ""}, "invalid_user"),
        ({"with": " bob"}, "invalid_user"),
        ({"with": "b\x00ob"}, "invalid_user"),
        ({"with": "x" * 10_000}, "invalid_user"),
        ({"with": 42}, "invalid_payload"),
        ({}, "invalid_payload"),
        ("bob", "invalid_payload"),
        ({"with": "bob", "since": -1}, "invalid_payload"),
    ],
)
def test_bad_open_direct_gets_its_code_and_changes_nothing(redis_server, nodes, payload: Any, code: str) -> None:
    node = nodes.start(redis_server.url)
    alice = DirectClient(node.url, "alice")
    assert alice.call("open_direct", payload)["error"]["code"] == code
    assert alice.call("send_message", {"room": "@alice+bob", "message": "x"})["error"]["code"] == "not_in_room"
    alice.close()


def test_without_a_name_there_is_no_conversation(nodes) -> None:
    node = nodes.start()
    nameless = DirectClient(node.url)
    assert nameless.call("open_direct", {"with": "bob"})["error"]["code"] == "unauthorized"
    nameless.close()


def test_memory_backend_reaches_the_peer(nodes) -> None:
    node = nodes.start()
    alice = DirectClient(node.url, "alice")
    bob = DirectClient(node.url, "bob")
    assert alice.call("open_direct", {"with": "bob"})["ok"]
    assert alice.call("send_message", {"room": "@alice+bob", "message": "hello"})["ok"]
    wait_until(lambda: bob.seen("@alice+bob") == ["hello"], what="bob gets it")
    alice.close()
    bob.close()


def test_not_even_the_server_api_puts_a_third_user_in(redis_server, nodes) -> None:
    key = "test-api-key-0123456789abcdef0123456789"
    node = nodes.start(redis_server.url, API_KEY=key)
    carol = DirectClient(node.url, "carol")
    bob = DirectClient(node.url, "bob")
    url = f"{node.url}/api/users/{{}}/rooms/%40alice%2Bbob"
    headers = {"Authorization": f"Bearer {key}"}
    assert requests.post(url.format("carol"), headers=headers, timeout=10).json()["connections"] == 0
    assert requests.post(url.format("bob"), headers=headers, timeout=10).json()["connections"] == 1
    assert carol.received("room_joined") == []
    carol.close()
    bob.close()


def test_a_server_api_post_into_a_conversation_reaches_both_users_and_their_lists(redis_server, nodes) -> None:
    key = "test-api-key-0123456789abcdef0123456789"
    a = nodes.start(redis_server.url, API_KEY=key)
    b = nodes.start(redis_server.url, API_KEY=key)
    alice = DirectClient(a.url, "alice")
    bob = DirectClient(b.url, "bob")
    headers = {"Authorization": f"Bearer {key}"}
    body = {"message": "your order shipped", "sender": "shop"}
    posted = requests.post(f"{a.url}/api/rooms/%40alice%2Bbob/messages", headers=headers, json=body, timeout=10)
    assert posted.json()["ok"], posted.text
    for person in (alice, bob):  # neither ever opened it
        wait_until(lambda p=person: p.seen("@alice+bob") == ["your order shipped"], what="the post reaches them")
        listed = person.call("list_directs", {})["directs"]
        assert [(d["room"], d["seq"]) for d in listed] == [("@alice+bob", 1)]
    alice.close()
    bob.close()


def test_a_fresh_client_finds_its_conversations_and_recovers_what_it_missed(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, **POLLING)
    b = nodes.start(redis_server.url, **POLLING)
    alice = DirectClient(a.url, "alice")
    bob = DirectClient(b.url, "bob")
    assert alice.call("open_direct", {"with": "bob"})["ok"]
    assert alice.call("send_message", {"room": "@alice+bob", "message": "m1"})["ok"]
    joined = wait_until(lambda: bob.received("room_joined"), what="bob is joined by the first message")[0]
    last_seen, epoch = joined["seq"], joined["epoch"]
    assert last_seen == 1
    bob.close()
    for i in range(2, 7):
        assert alice.call("send_message", {"room": "@alice+bob", "message": f"m{i}"})["seq"] == i
    bob = DirectClient(b.url, "bob")
    expected = [{"room": "@alice+bob", "with": "alice", "seq": 6, "epoch": epoch}]

    def listed(client: DirectClient) -> list[dict[str, Any]]:
        return [{k: v for k, v in d.items() if k != "at"} for d in client.call("list_directs", {})["directs"]]

    wait_until(lambda: listed(bob) == expected, what="bob's list has the conversation")
    ack = bob.call("open_direct", {"with": "alice", "since": last_seen, "epoch": epoch})
    assert ack["recovered"] is True
    assert [m["message"] for m in ack["history"]] == ["m2", "m3", "m4", "m5", "m6"]
    assert listed(alice) == [{**expected[0], "with": "bob"}]
    last = alice.call("send_message", {"room": "@alice+bob", "message": "m7"})
    wait_until(
        lambda: bob.call("list_directs", {})["directs"][0]["at"] == last["timestamp"], what="at: the last message"
    )
    # The list's key lives as the room's keys do: a TTL, refreshed by the heartbeat while the
    # conversation is hosted (PRESENCE_TTL 3 in the tests: rooms' keys live 6 s).
    # Compared by when the key expires (PEXPIRETIME), not by its TTL: a TTL read a few ms
    # after a refresh is beaten only by a poll within those few ms of the next one.
    key = user_directs("chat", "bob")
    assert 0 < redis_server.client().pttl(key) <= 6000
    expires = redis_server.client().pexpiretime(key)
    wait_until(lambda: redis_server.client().pexpiretime(key) > expires, what="the heartbeat refreshes the list's TTL")
    alice.close()
    bob.close()


def test_the_list_keeps_the_newest_conversations_only(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, MAX_DIRECTS_PER_USER="3", **POLLING)
    alice = DirectClient(node.url, "alice")
    peers = [f"p{i}" for i in range(1, 5)]
    for peer in peers:
        room = alice.call("open_direct", {"with": peer})["room"]
        assert alice.call("send_message", {"room": room, "message": f"to {peer}"})["ok"]
    newest = [{"with": p, "seq": 1} for p in reversed(peers[1:])]
    wait_until(
        lambda: [{"with": d["with"], "seq": d["seq"]} for d in alice.call("list_directs", {})["directs"]] == newest,
        what="alice's list holds her 3 newest conversations, newest first",
    )
    assert redis_server.client().zcard(user_directs("chat", "alice")) == 3
    # p1's list is p1's own: it still has alice.
    p1 = DirectClient(node.url, "p1")
    assert [d["with"] for d in p1.call("list_directs", {})["directs"]] == ["alice"]
    alice.close()
    p1.close()


def test_memory_backend_lists_conversations_too(nodes) -> None:
    node = nodes.start()
    alice = DirectClient(node.url, "alice")
    bob = DirectClient(node.url, "bob")
    assert alice.call("open_direct", {"with": "bob"})["ok"]
    assert alice.call("send_message", {"room": "@alice+bob", "message": "m1"})["ok"]
    joined = wait_until(lambda: bob.received("room_joined"), what="bob is joined")[0]
    bob.close()
    for i in range(2, 7):
        assert alice.call("send_message", {"room": "@alice+bob", "message": f"m{i}"})["ok"]
    bob = DirectClient(node.url, "bob")
    listed = bob.call("list_directs", {})["directs"]
    assert listed == [
        {"room": "@alice+bob", "with": "alice", "seq": 6, "epoch": joined["epoch"], "at": listed[0]["at"]}
    ]
    ack = bob.call("open_direct", {"with": "alice", "since": 1, "epoch": joined["epoch"]})
    assert ack["recovered"] is True and [m["seq"] for m in ack["history"]] == [2, 3, 4, 5, 6]
    alice.close()
    bob.close()


@pytest.mark.parametrize("payload", ["x", 42, ["a"], None])
def test_list_directs_wants_an_object_and_a_name(nodes, payload: Any) -> None:
    node = nodes.start()
    alice = DirectClient(node.url, "alice")
    assert alice.call("list_directs", payload)["error"]["code"] == "invalid_payload"
    assert alice.call("list_directs", {}) == {"ok": True, "directs": []}
    nameless = DirectClient(node.url)
    assert nameless.call("list_directs", {})["error"]["code"] == "unauthorized"
    alice.close()
    nameless.close()
