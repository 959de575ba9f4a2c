"""A join under traffic: the joiner's ack (history up to a bound B) comes first, then live
messages with seq > B only: none twice, none missing, in seq order.

The two windows of issue 12, made deterministic without Redis: a presence whose join lets
the room's traffic through before it returns, standing for the round trip. The events run
through the real handlers on python-socketio's server; what they send is read where
engine.io would write it, so each test sees the exact order of the joiner's wire."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask_socketio import SocketIO
from socketio import packet as sio_packet

from chat_app import json_codec
from chat_app.backends.base import Position
from chat_app.backends.memory import MemoryBroker, MemoryHub, MemoryPresence
from chat_app.service import ChatService
from chat_app.settings import Settings
from chat_app.socketio_handlers import register_handlers
from chat_app.transport import install_transport
from chat_app.transport.socketio_out import SocketIOOut


class RacingPresence(MemoryPresence):
    """A presence whose `join` lets whatever `during_join` does happen before it returns."""

    def __init__(self, hub: MemoryHub, instance_id: str) -> None:
        super().__init__(hub, instance_id)
        self.during_join: Callable[[], None] = lambda: None

    def join(self, room: str, sid: str, user: str) -> Position:
        position = super().join(room, sid, user)
        self.during_join()
        return position


@dataclass
class Wire:
    """What engine.io would have written to each client, in order: (kind, payload)."""

    packets: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)

    def send_packet(self, eio_sid: str, pkt: Any) -> None:
        decoded = sio_packet.Packet(encoded_packet=pkt.data)
        if decoded.packet_type == sio_packet.ACK:
            entry = ("ack", decoded.data[0])
        elif decoded.packet_type == sio_packet.EVENT:
            entry = (decoded.data[0], decoded.data[1])
        else:
            entry = ("control", decoded.packet_type)
        self.packets.setdefault(eio_sid, []).append(entry)


@dataclass
class Node:
    """One node's handlers and service over a shared in-process hub; clients without a transport."""

    service: ChatService
    server: Any
    presence: RacingPresence
    wire: Wire
    _ids: int = 0

    def connect(self, eio_sid: str, username: str) -> None:
        self.server._handle_eio_connect(eio_sid, {"QUERY_STRING": ""})
        self.server._handle_eio_message(eio_sid, "0" + json.dumps({"username": username}))

    def emit(self, eio_sid: str, event: str, payload: Any) -> None:
        """An event with an ack id, as a client calling with a callback sends it."""
        self._ids += 1
        self.server._handle_eio_message(eio_sid, f"2{self._ids}" + json.dumps([event, payload]))

    def seen(self, eio_sid: str, room: str = "lobby") -> list[tuple[str, Any]]:
        """The joiner's wire for `room`: join acks and room messages, in the order written."""
        out = []
        for kind, data in self.wire.packets.get(eio_sid, []):
            if kind == "ack" and data.get("room") == room and "history" in data:
                out.append(("ack", data))
            elif kind == "broadcast_message" and data["room"] == room:
                out.append(("live", data))
        return out


def make_node(hub: MemoryHub, instance_id: str) -> Node:
    settings = Settings.from_env({}, instance_id=instance_id, send_rate=1000.0, send_burst=1000, join_burst=100)
    socketio = SocketIO(Flask(__name__), async_mode="threading", json=json_codec, logger=False, engineio_logger=False)
    server = socketio.server
    server.async_handlers = False  # each event runs to its end inside _handle_eio_message
    wire = Wire()
    server.eio.send_packet = wire.send_packet
    presence = RacingPresence(hub, instance_id)
    transport = install_transport(server, settings.max_client_queue)
    service = ChatService(settings, MemoryBroker(hub, instance_id), presence, SocketIOOut(socketio, transport))
    register_handlers(socketio, service, transport)
    service.start()
    return Node(service, server, presence, wire)


@pytest.fixture
def hub_nodes() -> Iterator[tuple[Node, Node]]:
    hub = MemoryHub(history_length=100)
    a, b = make_node(hub, "A"), make_node(hub, "B")
    yield a, b
    a.service.stop()
    b.service.stop()


def last_ack(node: Node, eio_sid: str) -> dict[str, Any]:
    return next(data for kind, data in reversed(node.wire.packets[eio_sid]) if kind == "ack")


def check_once_in_order(seen: list[tuple[str, Any]], first: int, last: int) -> None:
    """The ack first; then, across its history and the live messages after it, every seq
    from `first` to `last` exactly once, rising."""
    assert seen, "nothing reached the joiner"
    kinds = [kind for kind, _ in seen]
    assert kinds[0] == "ack", f"a live message reached the joiner before its ack: {kinds}"
    assert kinds.count("ack") == 1
    ack = seen[0][1]
    assert ack["ok"], ack
    history = [m["seq"] for m in ack["history"]]
    live = [data["seq"] for kind, data in seen[1:]]
    assert all(seq > ack["seq"] for seq in live), f"live {live} overlaps the ack's bound {ack['seq']}"
    assert history + live == list(range(first, last + 1)), f"history {history}, then live {live}"


@pytest.mark.parametrize("hosted", [True, False], ids=["room-hosted-here", "room-new-to-node"])
@pytest.mark.parametrize("recovering", [False, True], ids=["join", "rejoin-with-since"])
def test_traffic_during_the_join_reaches_the_joiner_once_and_after_its_ack(hub_nodes, hosted, recovering) -> None:
    a, b = hub_nodes
    b.connect("sender", "bob")
    b.emit("sender", "join_room", {"room": "lobby"})
    for i in range(3):
        b.emit("sender", "send_message", {"room": "lobby", "message": f"before {i}"})
    if hosted:  # another member keeps the room live on node A
        a.connect("watcher", "carol")
        a.emit("watcher", "join_room", {"room": "lobby"})
    epoch = last_ack(b, "sender")["epoch"]

    # While the joiner's presence round trip is in flight, bob sends seq 4: a node hosting
    # the room delivers it live at once; a node new to it catches it up after subscribing.
    a.presence.during_join = lambda: b.emit("sender", "send_message", {"room": "lobby", "message": "during"})
    a.connect("joiner", "alice")
    a.emit("joiner", "join_room", {"room": "lobby", "since": 1, "epoch": epoch} if recovering else {"room": "lobby"})
    a.presence.during_join = lambda: None
    b.emit("sender", "send_message", {"room": "lobby", "message": "after"})  # seq 5, live

    seen = a.seen("joiner")
    assert seen[0][1].get("recovered", True) is True
    check_once_in_order(seen, first=2 if recovering else 1, last=5)
    assert seen[-1][1]["seq"] == 5 and seen[-1][0] == "live"


def test_a_member_joining_again_gets_a_fresh_ack_then_only_what_follows(hub_nodes) -> None:
    a, b = hub_nodes
    b.connect("sender", "bob")
    b.emit("sender", "join_room", {"room": "lobby"})
    a.connect("joiner", "alice")
    a.emit("joiner", "join_room", {"room": "lobby"})
    b.emit("sender", "send_message", {"room": "lobby", "message": "one"})
    epoch = last_ack(b, "sender")["epoch"]
    a.wire.packets["joiner"].clear()

    a.presence.during_join = lambda: b.emit("sender", "send_message", {"room": "lobby", "message": "two"})
    a.emit("joiner", "join_room", {"room": "lobby", "since": 1, "epoch": epoch})
    a.presence.during_join = lambda: None
    b.emit("sender", "send_message", {"room": "lobby", "message": "three"})

    check_once_in_order(a.seen("joiner"), first=2, last=3)


def test_presence_events_during_the_join_follow_the_ack(hub_nodes) -> None:
    a, b = hub_nodes
    a.connect("watcher", "carol")
    a.emit("watcher", "join_room", {"room": "lobby"})
    b.connect("other", "dave")
    a.presence.during_join = lambda: b.emit("other", "join_room", {"room": "lobby"})
    a.connect("joiner", "alice")
    a.emit("joiner", "join_room", {"room": "lobby"})

    seen = [(kind, data.get("user")) for kind, data in a.wire.packets["joiner"] if kind in {"ack", "presence"}]
    # Dave's arrival was announced during her round trip: held until her ack. Her own is
    # in the ack's member list, not repeated.
    assert seen == [("ack", None), ("presence", "dave")], seen
