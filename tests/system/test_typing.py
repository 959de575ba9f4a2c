"""`typing` reaches the room's other members on every node: ephemeral, rate-limited, quiet
when refused (real Redis, real nodes, real clients; and the memory backend's single node)."""

from __future__ import annotations

import time

from helpers import ChatClient, wait_until


class TypingClient(ChatClient):
    RECORDED = ChatClient.RECORDED | {"typing"}


def typings(client: ChatClient, room: str = "lobby") -> list[dict]:
    return [t for t in client.received("typing") if t["room"] == room]


def joined(url: str, user: str, room: str = "lobby") -> TypingClient:
    client = TypingClient(url, user)
    assert client.call("join_room", room)["ok"]
    return client


def test_typing_crosses_nodes_to_the_others_only_and_is_not_stored(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    alice = joined(a.url, "alice")
    alice_phone = joined(b.url, "alice")
    bob = joined(b.url, "bob")
    carol = joined(a.url, "carol")
    alice.sio.emit("typing", {"room": "lobby"})
    wait_until(lambda: typings(bob) and typings(carol), what="bob and carol see alice typing")
    assert typings(bob) == [{"room": "lobby", "user": "alice"}]
    assert typings(carol) == [{"room": "lobby", "user": "alice"}]
    # The marker: a message sent after it reached everyone; the typer's connections got nothing.
    ack = bob.call("send_message", {"room": "lobby", "message": "marker"})
    assert ack["seq"] == 1  # typing took no seq
    for c in (alice, alice_phone):
        c.wait_for(1)
        assert typings(c) == []
    late = joined(b.url, "dave")
    history = late.call("join_room", "lobby")["history"]
    assert [m["message"] for m in history] == ["marker"]
    assert typings(late) == []
    for c in (alice, alice_phone, bob, carol, late):
        c.close()


def test_typing_is_at_most_one_per_connection_per_room_every_two_seconds(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    alice = joined(a.url, "alice")
    bob = joined(b.url, "bob")
    started = time.monotonic()
    for _ in range(10):
        alice.sio.emit("typing", {"room": "lobby"})
    assert alice.call("send_message", {"room": "lobby", "message": "after ten"})["ok"]
    bob.wait_for(1)
    wait_until(lambda: typings(bob), what="the first typing")
    time.sleep(0.5)  # the quiet period being asserted: the other nine were dropped
    windows = 1 + int((time.monotonic() - started) / 2.0)  # 1 unless the machine stalled
    assert len(typings(bob)) <= windows < 10
    assert alice.received("error") == []  # dropped silently, not refused
    wait_until(lambda: time.monotonic() - started > 2.1, timeout=5, what="the interval to pass")
    alice.sio.emit("typing", {"room": "lobby"})
    wait_until(lambda: len(typings(bob)) == 2, what="a typing after the interval")
    alice.close()
    bob.close()


def test_typing_from_a_non_member_or_malformed_is_dropped_quietly(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    bob = joined(a.url, "bob")
    carol = TypingClient(a.url, "carol")
    carol.sio.emit("typing", {"room": "lobby"})
    assert carol.call("typing", {"room": "lobby"}) is None  # no answer, even when asked for one
    for bad in (None, 42, {"room": ""}, {"room": "x" * 10_000}, {"room": ["lobby"]}, "bad/room"):
        carol.sio.emit("typing", bad)
    assert carol.call("join_room", "other")["ok"]
    carol.sio.emit("typing", {"room": "other"})  # her own room: to nobody but her, so nobody
    marker = carol.call("join_room", "lobby")
    assert marker["ok"]
    carol.sio.emit("typing", {"room": "lobby"})
    wait_until(lambda: typings(bob), what="carol's typing once she is a member")
    assert typings(bob) == [{"room": "lobby", "user": "carol"}]
    assert carol.received("error") == []
    bob.close()
    carol.close()


def test_big_rooms_drop_typing(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, PRESENCE_EVENTS_MAX_MEMBERS="1")
    alice = joined(a.url, "alice")
    bob = joined(a.url, "bob")
    alice.sio.emit("typing", {"room": "lobby"})
    assert alice.call("send_message", {"room": "lobby", "message": "marker"})["ok"]
    bob.wait_for(1)
    time.sleep(0.5)  # the quiet period being asserted
    assert typings(bob) == []
    alice.close()
    bob.close()


def test_typing_on_the_memory_backend(nodes) -> None:
    node = nodes.start()
    alice = joined(node.url, "alice")
    bob = joined(node.url, "bob")
    alice.sio.emit("typing", {"room": "lobby"})
    wait_until(lambda: typings(bob), what="bob sees alice typing")
    assert typings(bob) == [{"room": "lobby", "user": "alice"}]
    assert typings(alice) == []
    alice.close()
    bob.close()


def test_a_typing_event_sent_with_an_ack_gets_an_empty_one(redis_server, nodes) -> None:
    """typing answers nothing, so a client that asks for an ack gets Socket.IO's empty one
    (`43<id>[]`), as from python-socketio itself: its handler returns no dict to frame."""
    node = nodes.start(redis_server.url)
    alice = joined(node.url, "alice")
    assert alice.sio.call("typing", {"room": "lobby"}, timeout=5) is None
    assert alice.call("send_message", {"room": "lobby", "message": "after"})["ok"]  # still connected
