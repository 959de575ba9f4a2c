"""DeliveryEngine: every room hosted here gets its envelopes delivered to this node's members
in seq order, exactly once. A duplicate (a seq at or below the cursor) is dropped and
counted; a gap (a seq past the next) is filled from history first; a new epoch is followed
over the stream the node knew, or from the start of a new one.

It also holds what a room emits while a member's join is in flight, and hands it over after
the join's ack (the "held hand-over"): delivery and the hand-over run under the engine's one
lock, so nothing slips between a member's held messages and its going live.

Its own state (cursor and held lists per room) and lock, apart from ChatService's: the
listener delivers here without touching the connection registry. Lock order: ChatService may
call in while holding its lock; the engine never calls back out but to the emitter and, off
its lock, to the history read."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .backends.base import RECENT_HISTORY, BackendUnavailable, History, Position
from .local_sockets import Emitter
from .logsafe import q
from .protocol import Envelope

log = logging.getLogger(__name__)

# What a room emitted while a member's join was in flight: (event, data, position of a message).
Held = list[tuple[str, dict[str, Any], Position | None]]


class HistorySource(Protocol):
    """The one read the engine makes of the broker."""

    def history(
        self, room: str, after: int | None, upto: int | None = None, limit: int = RECENT_HISTORY
    ) -> History: ...


@dataclass
class DeliveryCounters:
    """Written under the engine's lock only (the listener's thread in the tests' threading
    mode). ChatService's Counters extends it, so /metrics reads one sheet."""

    delivered: int = 0
    duplicates_dropped: int = 0
    gaps_filled: int = 0
    messages_lost: int = 0
    epoch_changes: int = 0


@dataclass
class Stream:
    """A room as delivery follows it here."""

    cursor: Position | None = None  # last envelope delivered here; None until a join read it
    # Joining members receive nothing live until their ack is written: what the room emits
    # meanwhile is held for them, and handed over after the ack (less what it covered).
    joining: dict[str, Held] = field(default_factory=dict)


class DeliveryEngine:
    def __init__(self, history: HistorySource, emitter: Emitter, counters: DeliveryCounters | None = None) -> None:
        self._history = history
        self._emitter = emitter
        self.counters = counters if counters is not None else DeliveryCounters()
        self._lock = threading.RLock()
        self._streams: dict[str, Stream] = {}

    # -- a member's join: held, placed, admitted (ChatService.join) ---------------------

    def hold(self, room: str, sid: str) -> tuple[Stream, Held, bool]:
        """From now until `admit`, what the room emits is held for `sid`, which leaves the
        emitter's room (a member joining again waits for its new ack too). True when the room
        is hosted here already (it has a cursor)."""
        with self._lock:
            stream = self._streams.setdefault(room, Stream())
            held: Held = []
            stream.joining[sid] = held
            self._emitter.leave_room(sid, room)
            return stream, held, stream.cursor is not None

    def place(self, room: str, stream: Stream, position: Position) -> Literal["new", "hosted", "moved"]:
        """Start the cursor at the store's position if the room is new here; "moved" when the
        store's epoch is not the node's."""
        with self._lock:
            if stream.cursor is None:
                stream.cursor = position
                return "new"
            if position.epoch != stream.cursor.epoch:
                log.info("event=epoch_seen_on_join room=%s", q(room))
                return "moved"
            return "hosted"

    def bound(self, stream: Stream) -> Position:
        """The join's bound B: its ack holds history up to here, live messages start after."""
        with self._lock:
            assert stream.cursor is not None
            return stream.cursor

    def admit(self, sid: str, room: str, held: Held, bound: Position) -> None:
        """The ack is written: hand over what was held past its bound, then go live. Under
        the lock, so the listener delivers nothing between the two."""
        with self._lock:
            stream = self._streams.get(room)
            if stream is None or stream.joining.get(sid) is not held:
                return  # left meanwhile, or a newer join of the same member took over
            del stream.joining[sid]
            for event, data, position in held:
                if position is not None and position.epoch == bound.epoch and position.seq <= bound.seq:
                    continue  # in the ack's history
                self._emitter.emit_to(sid, event, data)
            self._emitter.enter_room(sid, room)

    def release(self, room: str, sid: str, last: bool) -> None:
        """`sid` left the room here: out of the emitter's room, its hold dropped; `last`: no
        member is left here, the room is no longer followed."""
        with self._lock:
            self._emitter.leave_room(sid, room)
            stream = self._streams.get(room)
            if stream is None:
                return
            stream.joining.pop(sid, None)
            if last:
                del self._streams[room]

    def clear(self) -> None:
        """The node stops: no room is followed any more."""
        with self._lock:
            self._streams.clear()

    # -- questions of ChatService -------------------------------------------------------

    def hosted(self, room: str) -> bool:
        """Whether the room has a cursor here (a join has read its position)."""
        with self._lock:
            stream = self._streams.get(room)
            return stream is not None and stream.cursor is not None

    def joining(self, room: str, sid: str) -> bool:
        with self._lock:
            stream = self._streams.get(room)
            return stream is not None and sid in stream.joining

    def emit(
        self, room: str, event: str, data: dict[str, Any], position: Position | None = None, skip: Collection[str] = ()
    ) -> bool:
        """To the room's admitted members now, and held for those whose join is in flight,
        except the sids in `skip`; False when the room is not followed here."""
        with self._lock:
            stream = self._streams.get(room)
            if stream is None:
                return False
            self._emit(stream, room, event, data, position, skip)
            return True

    # -- delivery (called from the broker's listener only) ------------------------------

    def on_envelope(self, envelope: Envelope) -> None:
        with self._lock:
            stream = self._streams.get(envelope.room)
            cursor = stream.cursor if stream else None
            if stream is None or cursor is None:
                return  # not hosted here (or not yet): a join's catch-up covers it
            if envelope.epoch == cursor.epoch:
                if envelope.seq <= cursor.seq:
                    self.counters.duplicates_dropped += 1
                    return
                if envelope.seq == cursor.seq + 1:
                    self._deliver(stream, envelope)
                    return
        self.catch_up(envelope.room)

    def catch_up(self, room: str) -> None:
        """Deliver everything after this node's cursor from history, in order."""
        with self._lock:
            stream = self._streams.get(room)
            cursor = stream.cursor if stream else None
        if stream is None or cursor is None:
            return
        try:
            history = self._history.history(room, after=cursor.seq)
            continued = history.position.epoch == cursor.epoch or self._stream_kept(room, cursor)
            if history.position.epoch and not continued:
                history = self._history.history(room, after=0)  # the new epoch, from its start
        except BackendUnavailable as exc:
            log.warning("event=catch_up_failed room=%s error=%s", q(room), q(exc))
            return
        position = history.position
        if not position.epoch:
            return  # the store has no stream for the room (yet); the heartbeat recreates it
        with self._lock:
            if self._streams.get(room) is not stream or stream.cursor is None:
                return
            if position.epoch != stream.cursor.epoch:
                self._start_epoch(room, stream, history, continued)
            for envelope in history.envelopes:
                if envelope.seq > stream.cursor.seq and (continued or envelope.epoch == position.epoch):
                    self._note_missing(room, stream.cursor.seq, envelope.seq)
                    self.counters.gaps_filled += 1
                    self._deliver(stream, envelope)
            if stream.cursor.epoch == position.epoch and stream.cursor.seq < position.seq:
                self._note_missing(room, stream.cursor.seq, position.seq + 1)
                stream.cursor = Position(position.epoch, position.seq)

    def _stream_kept(self, room: str, cursor: Position) -> bool:
        """The room has a new epoch: whether over the stream this node followed (a failover
        keeps it and its seqs go on: the messages after the cursor come in seq order, in
        whichever epochs they were sent) or over a new one (the store lost the room)."""
        if cursor.seq == 0:
            return False
        around = self._history.history(room, after=cursor.seq - 1, upto=cursor.seq)
        return any(e.seq == cursor.seq and e.epoch == cursor.epoch for e in around.envelopes)

    def _start_epoch(self, room: str, stream: Stream, history: History, continued: bool) -> None:
        """A new epoch: over the stream this node followed (`continued`), the cursor's seq
        stays; over a new stream (the store lost the room), it is followed from its first
        stored message instead of waiting for seqs that will never come."""
        assert stream.cursor is not None
        if continued:
            start = stream.cursor.seq
        else:
            fresh = [e.seq for e in history.envelopes if e.epoch == history.position.epoch]
            start = fresh[0] - 1 if fresh else history.position.seq
        log.warning(
            "event=epoch_changed room=%s old=%s new=%s from_seq=%d",
            q(room),
            stream.cursor.epoch,
            history.position.epoch,
            start + 1,
        )
        self.counters.epoch_changes += 1
        stream.cursor = Position(history.position.epoch, start)

    def _note_missing(self, room: str, delivered: int, arriving: int) -> None:
        """Seqs between the last delivered and the one arriving are gone from history too:
        reported, never waited for."""
        missing = arriving - delivered - 1
        if missing > 0:
            self.counters.messages_lost += missing
            log.error("event=messages_lost room=%s from_seq=%d count=%d", q(room), delivered + 1, missing)

    def _deliver(self, stream: Stream, envelope: Envelope) -> None:
        stream.cursor = Position(envelope.epoch, envelope.seq)
        self.counters.delivered += 1
        self._emit(stream, envelope.room, "broadcast_message", envelope.to_client(), stream.cursor)

    def _emit(
        self,
        stream: Stream,
        room: str,
        event: str,
        data: dict[str, Any],
        position: Position | None,
        skip: Collection[str] = (),
    ) -> None:
        """Under the lock."""
        self._emitter.emit_room(event, data, room, skip)
        for sid, held in stream.joining.items():
            if sid not in skip:
                held.append((event, data, position))
