"""A join the server API asks for takes the one join path: `room_joined` (history up to a
bound B) reaches the client before any live message of the room, and live messages then
start right after B. Deterministic, over test_join_order's in-process nodes: the room's
traffic is let through exactly inside the join's round trips."""

from __future__ import annotations

from typing import Any

import pytest
from test_join_order import Node, hub_nodes  # noqa: F401 (fixture)

from chat_app.protocol import CommandAction


def during_history_read(node: Node, action: Any) -> None:
    """Run `action` once, while the join reads the room's history: after its bound was
    taken, before the client was told (the window a hand-over must close)."""
    broker = node.service._broker
    read = broker.history
    pending = [action]

    def history(*args: Any, **kwargs: Any) -> Any:
        found = read(*args, **kwargs)
        while pending and kwargs.get("upto") is not None:  # the join's read, not a catch-up
            pending.pop()()
        return found

    broker.history = history  # type: ignore[method-assign]


def joiner_wire(node: Node, eio_sid: str) -> list[tuple[str, Any]]:
    return [
        (kind, data)
        for kind, data in node.wire.packets.get(eio_sid, [])
        if kind == "room_joined" or (kind == "broadcast_message" and data["room"] == "lobby")
    ]


@pytest.mark.parametrize("hosted", [True, False], ids=["room-hosted-here", "room-new-to-node"])
def test_room_joined_comes_first_then_every_later_seq_once(hub_nodes, hosted) -> None:  # noqa: F811
    a, b = hub_nodes
    b.connect("sender", "bob")
    b.emit("sender", "join_room", {"room": "lobby"})
    for i in range(3):
        b.emit("sender", "send_message", {"room": "lobby", "message": f"before {i}"})
    if hosted:
        a.connect("watcher", "carol")
        a.emit("watcher", "join_room", {"room": "lobby"})
    a.connect("joiner", "alice")
    send = lambda text: lambda: b.emit("sender", "send_message", {"room": "lobby", "message": text})  # noqa: E731

    def during_join() -> None:
        send("during the presence round trip")()  # seq 4, at or before the bound
        during_history_read(a, send("after the bound"))  # seq 5, held until room_joined is out

    a.presence.during_join = during_join

    answer = b.service.server.command(CommandAction.JOIN, "alice", "lobby")  # asked on the other node
    a.presence.during_join = lambda: None
    b.emit("sender", "send_message", {"room": "lobby", "message": "after"})  # seq 6, live

    assert answer == {"ok": True, "connections": 1, "nodes": 2}
    seen = joiner_wire(a, "joiner")
    kinds = [kind for kind, _ in seen]
    assert kinds[0] == "room_joined" and kinds.count("room_joined") == 1, kinds
    joined = seen[0][1]
    assert set(joined) == {"room", "seq", "epoch", "history", "members"}
    history = [m["seq"] for m in joined["history"]]
    live = [data["seq"] for _, data in seen[1:]]
    assert joined["seq"] == 4 and live == [5, 6], (joined["seq"], live)
    assert history + live == [1, 2, 3, 4, 5, 6]
    assert sorted(set(joined["members"])) == (["alice", "bob", "carol"] if hosted else ["alice", "bob"])


def test_a_member_already_in_the_room_is_left_alone(hub_nodes) -> None:  # noqa: F811
    a, b = hub_nodes
    a.connect("joiner", "alice")
    a.emit("joiner", "join_room", {"room": "lobby"})
    a.connect("other", "alice")  # a second connection of hers, not in the room
    assert b.service.server.command(CommandAction.JOIN, "alice", "lobby")["connections"] == 1
    assert [k for k, _ in joiner_wire(a, "joiner")] == []
    assert [k for k, _ in joiner_wire(a, "other")] == ["room_joined"]
