"""The in-process backend: one node, no Redis. A `MemoryHub` may be shared by several
services in one process (tests), standing where Redis would."""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..protocol import Envelope
from .base import BrokerHooks, Departed, Draft, History, Member, Position

RECENT_HISTORY = 50


@dataclass
class _Room:
    epoch: str = field(default_factory=lambda: secrets.token_hex(8))
    seq: int = 0
    history: deque[Envelope] = field(default_factory=deque)
    dedup: dict[str, Envelope] = field(default_factory=dict)
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # instance -> sid -> user


class MemoryHub:
    def __init__(self, history_length: int = 100) -> None:
        self.history_length = history_length
        self.rooms: dict[str, _Room] = {}
        self.lock = threading.RLock()
        self.listeners: dict[str, tuple[set[str], BrokerHooks]] = {}


class MemoryBroker:
    def __init__(self, hub: MemoryHub, instance_id: str) -> None:
        self._hub = hub
        self._id = instance_id
        self._rooms: set[str] = set()

    def start(self, hooks: BrokerHooks) -> None:
        self._hub.listeners[self._id] = (self._rooms, hooks)

    def stop(self) -> None:
        self._hub.listeners.pop(self._id, None)

    def publish(self, draft: Draft) -> Envelope:
        hub = self._hub
        dedup_id = f"k:{draft.sender}:{draft.key}" if draft.key else f"i:{draft.id}"
        with hub.lock:
            room = hub.rooms.setdefault(draft.room, _Room())
            if dedup_id in room.dedup:
                return room.dedup[dedup_id]
            room.seq += 1
            d = draft
            envelope = Envelope(d.id, d.room, d.sender, d.message, d.timestamp, room.seq, room.epoch, d.instance_id)
            room.history.append(envelope)
            room.dedup[dedup_id] = envelope
            while len(room.history) > hub.history_length:
                old = room.history.popleft()
                room.dedup = {k: v for k, v in room.dedup.items() if v is not old}
            targets = [hooks for rooms, hooks in hub.listeners.values() if draft.room in rooms]
            for hooks in targets:
                hooks.on_envelope(envelope)
        return envelope

    def subscribe(self, room: str) -> None:
        self._rooms.add(room)
        self._hub.listeners[self._id][1].on_subscribed(room)

    def unsubscribe(self, room: str) -> None:
        self._rooms.discard(room)

    def history(self, room: str, after: int | None, upto: int | None = None) -> History:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            if state is None:
                return History(Position("", 0), [], after is None or after == 0)
            last = state.seq if upto is None else min(upto, state.seq)
            kept = [e for e in state.history if e.seq <= last]
            if after is None:
                return History(Position(state.epoch, state.seq), kept[-RECENT_HISTORY:], True)
            wanted = [e for e in kept if e.seq > after]
            complete = len(wanted) == max(0, last - after)
            return History(Position(state.epoch, state.seq), wanted, complete)

    def healthy(self) -> dict[str, bool]:
        return {"publisher": True, "listener": True}


class MemoryPresence:
    def __init__(self, hub: MemoryHub, instance_id: str) -> None:
        self._hub = hub
        self._id = instance_id

    def start(self, snapshot: Callable[[], dict[str, dict[str, str]]], on_departed: Departed) -> None:
        pass

    def beat(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def join(self, room: str, sid: str, user: str) -> Position:
        with self._hub.lock:
            state = self._hub.rooms.setdefault(room, _Room())
            state.members.setdefault(self._id, {})[sid] = user
            return Position(state.epoch, state.seq)

    def leave(self, room: str, sid: str) -> bool:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            if state is None:
                return False
            mine = state.members.get(self._id, {})
            mine.pop(sid, None)
            if not mine:
                state.members.pop(self._id, None)
            if state.members:
                return False
            del self._hub.rooms[room]
            return True

    def members(self, room: str) -> list[Member]:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            if state is None:
                return []
            return [Member(node, sid, user) for node, sids in state.members.items() for sid, user in sids.items()]

    def is_active(self, room: str) -> bool:
        return bool(self.members(room))

    def position(self, room: str) -> Position | None:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            return Position(state.epoch, state.seq) if state else None

    def remove_node(self, rooms: Sequence[str]) -> None:
        with self._hub.lock:
            for room in rooms:
                state = self._hub.rooms.get(room)
                if state is not None:
                    state.members.pop(self._id, None)
                    if not state.members:
                        del self._hub.rooms[room]
