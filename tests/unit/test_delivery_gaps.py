"""The delivery engine's two core promises, each on its own and deterministic (issue 24,
item 9): a gap is filled from history before anything past it is delivered, and a seq
already delivered is never delivered again; an epoch change resynchronises; the counters
/metrics reads move by exactly what happened. No listener, no Redis, no thread: envelopes
are handed to the engine as the listener would, history comes from a stub store."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import pytest

from chat_app.auth import Identity
from chat_app.backends.base import Draft, History, Position
from chat_app.backends.memory import MemoryBroker, MemoryHub, MemoryPresence
from chat_app.delivery import DeliveryEngine
from chat_app.metrics import build_registry
from chat_app.protocol import Envelope, JoinRequest, SendRequest
from chat_app.service import ChatService
from chat_app.settings import Settings

ROOM = "lobby"
SID = "sid-1"


def envelope(seq: int, epoch: str = "e1", room: str = ROOM) -> Envelope:
    return Envelope(f"id-{epoch}-{seq}", room, "alice", f"m{seq}", 1, seq, epoch, "other-node")


@dataclass
class Timeline:
    """One record of what happened, in order: history reads (the stub store) and what the
    member received (the emitter)."""

    events: list[tuple[str, Any]] = field(default_factory=list)

    def delivered(self) -> list[tuple[str, int]]:
        return [value for kind, value in self.events if kind == "delivered"]

    def reads(self) -> list[int | None]:
        return [value for kind, value in self.events if kind == "read"]


@dataclass
class Store:
    """The room's stream as the store holds it, and its position (the last stored)."""

    timeline: Timeline
    stored: list[Envelope] = field(default_factory=list)

    def history(self, room: str, after: int | None, upto: int | None = None, limit: int = 50) -> History:
        self.timeline.events.append(("read", after))
        last = self.stored[-1] if self.stored else None
        position = Position(last.epoch, last.seq) if last else Position("", 0)
        kept = [e for e in self.stored if (after is None or e.seq > after) and (upto is None or e.seq <= upto)]
        return History(position, kept, True)


@dataclass
class Sockets:
    """The member's socket: what reached it, on the timeline."""

    timeline: Timeline
    rooms: dict[str, set[str]] = field(default_factory=dict)

    def emit_room(self, event: str, data: dict[str, Any], room: str, skip: Collection[str] = ()) -> None:
        if event == "broadcast_message" and self.rooms.get(room, set()) - set(skip):
            self.timeline.events.append(("delivered", (data["epoch"], data["seq"])))

    def emit_to(self, sid: str, event: str, data: dict[str, Any]) -> None:
        if event == "broadcast_message":
            self.timeline.events.append(("delivered", (data["epoch"], data["seq"])))

    def enter_room(self, sid: str, room: str) -> None:
        self.rooms.setdefault(room, set()).add(sid)

    def leave_room(self, sid: str, room: str) -> None:
        self.rooms.get(room, set()).discard(sid)

    def disconnect(self, sid: str) -> None:
        pass


@pytest.fixture
def hosted() -> tuple[DeliveryEngine, Store, Timeline]:
    """The room hosted here at (e1, 1), one member admitted, as a join leaves it."""
    timeline = Timeline()
    store = Store(timeline, [envelope(1)])
    engine = DeliveryEngine(store, Sockets(timeline))
    stream, held, hosted_already = engine.hold(ROOM, SID)
    assert not hosted_already
    assert engine.place(ROOM, stream, Position("e1", 1)) == "new"
    engine.admit(SID, ROOM, held, Position("e1", 1))
    return engine, store, timeline


def counts(engine: DeliveryEngine) -> dict[str, int]:
    c = engine.counters
    return {
        "delivered": c.delivered,
        "gaps_filled": c.gaps_filled,
        "duplicates_dropped": c.duplicates_dropped,
        "epoch_changes": c.epoch_changes,
        "messages_lost": c.messages_lost,
    }


def test_an_envelope_two_seqs_ahead_waits_for_the_missing_ones_from_history(hosted) -> None:
    """Cursor at 1, seq 4 arrives first (2 and 3 are still on their way): 2 and 3 come from
    history, in order, before 4; what arrives next in order is delivered as it comes."""
    engine, store, timeline = hosted
    store.stored += [envelope(2), envelope(3), envelope(4)]
    engine.on_envelope(envelope(4))
    assert timeline.events == [
        ("read", 1),
        ("delivered", ("e1", 2)),
        ("delivered", ("e1", 3)),
        ("delivered", ("e1", 4)),
    ]
    store.stored.append(envelope(5))
    engine.on_envelope(envelope(5))
    assert timeline.delivered()[-1] == ("e1", 5)
    assert timeline.reads() == [1]  # the next seq in order needs no history read
    assert counts(engine) == {
        "delivered": 4,
        "gaps_filled": 3,  # 2, 3 and 4 were delivered from history, 5 live
        "duplicates_dropped": 0,
        "epoch_changes": 0,
        "messages_lost": 0,
    }


def test_a_gap_whose_seqs_left_history_is_reported_lost_not_waited_for(hosted) -> None:
    """History kept 4 but no longer 2 and 3: 4 is delivered, the two are counted lost."""
    engine, store, timeline = hosted
    store.stored = [envelope(4)]
    engine.on_envelope(envelope(4))
    assert timeline.delivered() == [("e1", 4)]
    assert counts(engine)["messages_lost"] == 2
    assert counts(engine)["gaps_filled"] == 1


def test_a_replayed_or_older_seq_is_dropped_and_counted(hosted) -> None:
    engine, store, timeline = hosted
    store.stored += [envelope(2), envelope(3)]
    engine.on_envelope(envelope(2))
    engine.on_envelope(envelope(2))  # replayed
    engine.on_envelope(envelope(1))  # older than the cursor
    engine.on_envelope(envelope(3))
    assert timeline.delivered() == [("e1", 2), ("e1", 3)]
    assert timeline.reads() == []  # a duplicate costs no history read
    assert counts(engine) == {
        "delivered": 2,
        "gaps_filled": 0,
        "duplicates_dropped": 2,
        "epoch_changes": 0,
        "messages_lost": 0,
    }


def test_the_live_copies_of_seqs_a_catch_up_delivered_are_dropped(hosted) -> None:
    """The channel still brings 2 and 3 after history delivered them: each is dropped once
    and counted, and a catch-up with nothing new delivers nothing again."""
    engine, store, timeline = hosted
    store.stored += [envelope(2), envelope(3)]
    engine.on_envelope(envelope(3))
    engine.on_envelope(envelope(2))
    engine.on_envelope(envelope(3))
    engine.catch_up(ROOM)  # asked again (a join of a hosted room, a reconnect)
    assert timeline.delivered() == [("e1", 2), ("e1", 3)]
    assert counts(engine)["duplicates_dropped"] == 2
    assert counts(engine)["gaps_filled"] == 2
    assert counts(engine)["delivered"] == 2


def test_an_epoch_change_resynchronises_on_the_new_stream(hosted) -> None:
    """The store lost the room: its new epoch starts over at seq 1. The node follows it from
    its first message, and the old epoch's envelopes still in flight are not delivered."""
    engine, store, timeline = hosted
    store.stored = [envelope(1, "e2"), envelope(2, "e2")]
    engine.on_envelope(envelope(2, "e2"))
    assert timeline.delivered() == [("e2", 1), ("e2", 2)]
    engine.on_envelope(envelope(2, "e1"))  # late, from the epoch that is gone
    store.stored.append(envelope(3, "e2"))
    engine.on_envelope(envelope(3, "e2"))
    engine.on_envelope(envelope(3, "e2"))
    assert timeline.delivered() == [("e2", 1), ("e2", 2), ("e2", 3)]
    assert counts(engine) == {
        "delivered": 3,
        "gaps_filled": 2,
        "duplicates_dropped": 1,
        "epoch_changes": 1,
        "messages_lost": 0,
    }


def test_the_metrics_move_by_exactly_what_happened() -> None:
    """Through a whole node on the memory backend and its /metrics registry: a member's
    room misses two messages (stored while the node did not hear the room), the third
    arrives, the two come from history first; then one replay."""
    hub = MemoryHub()
    broker = MemoryBroker(hub, "here")
    sockets = Sockets(Timeline())
    service = ChatService(Settings(instance_id="here"), broker, MemoryPresence(hub, "here"), sockets)
    service.start()
    try:
        registry = build_registry(service, broker)

        def metric(name: str) -> float:
            value = registry.get_sample_value(f"{name}_total", {"instance_id": "here"})
            assert value is not None, name
            return value

        service.connect(SID, Identity("bob"))
        service.join(SID, JoinRequest(room=ROOM))
        service.send(SID, SendRequest(room=ROOM, message="one"))
        before = {m: metric(m) for m in ("chat_gaps_filled", "chat_duplicates_dropped", "chat_messages_delivered")}
        assert before["chat_messages_delivered"] == 1
        writer = MemoryBroker(hub, "writer")  # a node that hears nothing: it only stores
        broker.unsubscribe(ROOM)
        missed = [writer.send(draft(i)) for i in (2, 3)]
        broker._rooms.add(ROOM)  # heard again, without a catch-up of its own
        writer.send(draft(4))
        service.delivery.on_envelope(missed[1])  # the channel's late copy of 3
        assert metric("chat_gaps_filled") - before["chat_gaps_filled"] == 3
        assert metric("chat_duplicates_dropped") - before["chat_duplicates_dropped"] == 1
        assert metric("chat_messages_delivered") - before["chat_messages_delivered"] == 3
        assert [seq for _, (_, seq) in sockets.timeline.events] == [1, 2, 3, 4]
    finally:
        service.stop()


def draft(n: int) -> Draft:
    return Draft.new(ROOM, "alice", f"m{n}", "writer")
