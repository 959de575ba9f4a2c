"""The delivery engine's promises, deterministically: one room hosted by one DeliveryEngine,
envelopes handed to it as the listener would, history served by a stub broker."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from helpers import RecordingEmitter

from chat_app.backends.base import History, Position
from chat_app.delivery import DeliveryEngine
from chat_app.protocol import Envelope

ROOM = "lobby"
SID = "sid-1"


def envelope(seq: int, epoch: str = "e1") -> Envelope:
    return Envelope(f"id-{epoch}-{seq}", ROOM, "alice", f"m{seq}", 1, seq, epoch, "other-node")


@dataclass
class StubHistory:
    """The room's stream as the store holds it: envelopes in seq order, and its position."""

    stored: list[Envelope] = field(default_factory=list)
    reads: list[int | None] = field(default_factory=list)

    def history(self, room: str, after: int | None, upto: int | None = None, limit: int = 100) -> History:
        self.reads.append(after)
        last = self.stored[-1] if self.stored else None
        position = Position(last.epoch, last.seq) if last else Position("", 0)
        kept = [e for e in self.stored if (after is None or e.seq > after) and (upto is None or e.seq <= upto)]
        return History(position, kept, True)


@pytest.fixture
def engine() -> tuple[DeliveryEngine, StubHistory, RecordingEmitter]:
    """The room hosted at (e1, 1) with one admitted member, as a join leaves it."""
    store = StubHistory()
    emitter = RecordingEmitter()
    service = DeliveryEngine(store, emitter)
    stream, held, _ = service.hold(ROOM, SID)
    service.place(ROOM, stream, Position("e1", 1))
    service.admit(SID, ROOM, held, Position("e1", 1))
    return service, store, emitter


def delivered(emitter: RecordingEmitter) -> list[tuple[str, int]]:
    return [(m["epoch"], m["seq"]) for m in emitter.messages(SID)]


def test_an_envelope_two_ahead_waits_for_the_missing_one_from_history(engine) -> None:
    service, store, emitter = engine
    store.stored = [envelope(1), envelope(2), envelope(3)]
    service.on_envelope(envelope(3))
    assert delivered(emitter) == [("e1", 2), ("e1", 3)]
    assert store.reads == [1]
    assert service.counters.gaps_filled == 2  # both came from history, in order


def test_a_replayed_or_older_seq_is_dropped_and_counted(engine) -> None:
    service, store, emitter = engine
    store.stored = [envelope(1), envelope(2)]
    service.on_envelope(envelope(2))
    service.on_envelope(envelope(2))
    service.on_envelope(envelope(1))
    assert delivered(emitter) == [("e1", 2)]
    assert service.counters.duplicates_dropped == 2
    assert service.counters.gaps_filled == 0
    assert store.reads == []


def test_a_failovers_new_epoch_comes_after_the_old_epochs_last_messages(engine) -> None:
    """A promoted replica starts a new epoch but keeps the stream: seqs 2 and 3, acked on the
    old master, are delivered before the new epoch's 4 and 5."""
    service, store, emitter = engine
    store.stored = [envelope(1), envelope(2), envelope(3), envelope(4, "e2"), envelope(5, "e2")]
    service.on_envelope(envelope(5, "e2"))
    assert delivered(emitter) == [("e1", 2), ("e1", 3), ("e2", 4), ("e2", 5)]
    assert service.counters.epoch_changes == 1


def test_epochs_that_changed_several_times_over_one_stream_lose_nothing_between(engine) -> None:
    """Senders that disagreed on the new master for a moment changed the epoch at each send:
    the stream still holds every message after the cursor, in seq order."""
    service, store, emitter = engine
    store.stored = [envelope(1), envelope(2, "e2"), envelope(3, "e3"), envelope(4, "e4")]
    service.on_envelope(envelope(4, "e4"))
    assert delivered(emitter) == [("e2", 2), ("e3", 3), ("e4", 4)]
    service.on_envelope(envelope(3, "e3"))
    service.on_envelope(envelope(5, "e4"))
    assert delivered(emitter) == [("e2", 2), ("e3", 3), ("e4", 4), ("e4", 5)]


def test_a_store_that_lost_the_room_resynchronises_on_the_new_epoch(engine) -> None:
    """Redis came back empty: the new epoch's seqs start over at 1."""
    service, store, emitter = engine
    store.stored = [envelope(1, "e2"), envelope(2, "e2")]
    service.on_envelope(envelope(2, "e2"))
    assert delivered(emitter) == [("e2", 1), ("e2", 2)]
    service.on_envelope(envelope(2, "e2"))
    assert delivered(emitter) == [("e2", 1), ("e2", 2)]
    assert service.counters.duplicates_dropped == 1
