"""The in-process backend: one node, no Redis. A `MemoryHub` may be shared by several
services in one process (tests), standing where Redis would. Departures are announced at
once: with one node there is no other node a reconnecting client could land on."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..protocol.wire import Command, DeletedEvent, Envelope, PresenceEvent, TypingEvent
from .base import (
    RECENT_HISTORY,
    Banned,
    BrokerHooks,
    CommandResult,
    Direct,
    Draft,
    History,
    Joined,
    LocalRooms,
    Member,
    Position,
    RoomCount,
    RoomsPage,
)
from .stats import BrokerStats, PresenceStats


@dataclass
class _Room:
    epoch: str = field(default_factory=lambda: secrets.token_hex(8))
    seq: int = 0
    history: deque[Envelope] = field(default_factory=deque)
    dedup: dict[str, Envelope] = field(default_factory=dict)
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # instance -> sid -> user

    def users(self) -> Counter[str]:
        return Counter(user for sids in self.members.values() for user in sids.values())


class MemoryHub:
    def __init__(self, history_length: int = 100) -> None:
        self.history_length = history_length
        self.rooms: dict[str, _Room] = {}
        self.lock = threading.RLock()
        self.listeners: dict[str, tuple[set[str], BrokerHooks]] = {}
        self.bans: dict[tuple[str, str], float] = {}  # (room, user) -> end (monotonic)
        self.directs: dict[str, dict[str, int]] = {}  # user -> direct room -> its last message (ms)

    def hooks_for(self, room: str) -> list[BrokerHooks]:
        return [hooks for rooms, hooks in self.listeners.values() if room in rooms]


class MemoryBroker:
    def __init__(self, hub: MemoryHub, instance_id: str) -> None:
        self._hub = hub
        self._id = instance_id
        self._rooms: set[str] = set()

    def start(self, hooks: BrokerHooks) -> None:
        self._hub.listeners[self._id] = (self._rooms, hooks)

    def stop(self) -> None:
        self._hub.listeners.pop(self._id, None)

    def send(self, draft: Draft) -> Envelope:
        hub = self._hub
        dedup_id = draft.dedup_id
        with hub.lock:
            left = hub.bans.get((draft.room, draft.sender), 0.0) - time.monotonic()
            if left > 0:
                raise Banned(left)
            room = hub.rooms.setdefault(draft.room, _Room())
            if dedup_id in room.dedup:
                return room.dedup[dedup_id]
            room.seq += 1
            d = draft
            envelope = Envelope(
                d.id, d.room, d.sender, d.message, d.timestamp, room.seq, room.epoch, d.instance_id, d.meta
            )
            room.history.append(envelope)
            room.dedup[dedup_id] = envelope
            while room.history[0].seq <= room.seq - hub.history_length:  # the last seqs, as Redis keeps
                old = room.history.popleft()
                room.dedup = {k: v for k, v in room.dedup.items() if v is not old}
            for hooks in hub.hooks_for(draft.room):
                hooks.on_envelope(envelope)
        return envelope

    def subscribe(self, room: str) -> threading.Event:
        self._rooms.add(room)
        self._hub.listeners[self._id][1].on_subscribed(room)
        ready = threading.Event()
        ready.set()
        return ready

    def catch_up(self, room: str) -> None:
        if room in self._rooms:
            self._hub.listeners[self._id][1].on_subscribed(room)

    def unsubscribe(self, room: str) -> None:
        self._rooms.discard(room)

    def forget(self, room: str, seqs: Sequence[int]) -> None:
        gone = set(seqs)
        with self._hub.lock:
            if (state := self._hub.rooms.get(room)) is not None:
                state.history = deque(e for e in state.history if e.seq not in gone)

    def signal(self, event: TypingEvent | DeletedEvent) -> None:
        for hooks in self._hub.hooks_for(event.room):
            hooks.on_presence(event)

    def command(self, command: Command, deadline: float) -> CommandResult:
        """Every service on the hub is a node: each acts at once, in the caller's thread."""
        answers = [hooks.on_control(command) for _rooms, hooks in list(self._hub.listeners.values())]
        return CommandResult(sum(answers), len(answers), len(answers))

    def history(self, room: str, after: int | None, upto: int | None = None, limit: int = RECENT_HISTORY) -> History:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            if state is None:
                return History(Position("", 0), [], after is None or after == 0)
            last = state.seq if upto is None else min(upto, state.seq)
            kept = [e for e in state.history if e.seq <= last]
            if after is None:
                return History(Position(state.epoch, state.seq), kept[-limit:], True)
            wanted = [e for e in kept if e.seq > after]
            complete = len(wanted) == max(0, last - after)
            return History(Position(state.epoch, state.seq), wanted, complete)

    def healthy(self) -> dict[str, bool]:
        return {"publisher": True, "listener": True}

    def stats(self) -> BrokerStats:
        return BrokerStats()  # no Redis parts to count

    def unreached(self) -> list[str]:
        return []


class MemoryPresence:
    def __init__(self, hub: MemoryHub, instance_id: str, events_max_members: int = 100) -> None:
        self._hub = hub
        self._id = instance_id
        self._events_max = events_max_members

    def start(self, local: LocalRooms) -> None:
        pass

    def beat(self, rewrite: bool = False) -> None:
        pass

    def healthy(self) -> dict[str, bool]:
        return {}

    def stats(self) -> PresenceStats | None:
        return None  # no heartbeat

    def unreached(self) -> list[str]:
        return []

    def stop(self) -> None:
        pass

    def _change(self, room: str, state: _Room, edit: Callable[[], None]) -> None:
        """Apply `edit` to the room's members; announce users who arrived or left."""
        before = state.users()
        edit()
        after = state.users()
        events = [("join", u) for u in after if u not in before] + [("leave", u) for u in before if u not in after]
        if len(after) > self._events_max:
            return  # a big room: its members are told counts instead
        for action, user in events:
            event = PresenceEvent(room, action, user, len(after), self._id)
            for hooks in self._hub.hooks_for(room):
                hooks.on_presence(event)

    def join(self, room: str, sid: str, user: str) -> Joined:
        with self._hub.lock:
            left = self._hub.bans.get((room, user), 0.0) - time.monotonic()
            if left > 0:
                raise Banned(left)
            self._hub.bans.pop((room, user), None)
            state = self._hub.rooms.setdefault(room, _Room())
            self._change(room, state, lambda: state.members.setdefault(self._id, {}).__setitem__(sid, user))
            users = state.users()
            return Joined(Position(state.epoch, state.seq), len(users), sorted(users)[: self._events_max])

    def _remove(self, room: str, sids: Sequence[str] | None) -> bool:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            if state is None:
                return False

            def edit() -> None:
                mine = state.members.get(self._id, {})
                for sid in list(mine) if sids is None else sids:
                    mine.pop(sid, None)
                if not mine:
                    state.members.pop(self._id, None)

            self._change(room, state, edit)
            if state.members:
                return False
            del self._hub.rooms[room]
            return True

    def leave(self, room: str, sid: str, grace: bool = False) -> bool:
        return self._remove(room, [sid])

    def sweep(self, room: str) -> bool:
        return False

    def members(self, room: str) -> list[Member]:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            if state is None:
                return []
            return [Member(node, sid, user) for node, sids in state.members.items() for sid, user in sids.items()]

    def names(self, room: str, after: str | None, limit: int) -> tuple[int, list[str]]:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            users = sorted(state.users()) if state else []
        return len(users), [u for u in users if after is None or u > after][:limit]

    def summary(self, room: str, limit: int, after: str | None = None) -> tuple[Position | None, int, list[str]]:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            position = Position(state.epoch, state.seq) if state else None
            count, names = self.names(room, after, limit)
            return position, count, names

    def counts(self, rooms: Sequence[str]) -> dict[str, int]:
        with self._hub.lock:
            return {room: len(state.users()) if (state := self._hub.rooms.get(room)) else 0 for room in rooms}

    def is_active(self, room: str) -> bool:
        return bool(self.members(room))

    def room_state(self, room: str) -> tuple[Position | None, list[Member]]:
        with self._hub.lock:
            state = self._hub.rooms.get(room)
            return (Position(state.epoch, state.seq) if state else None), self.members(room)

    def ban(self, room: str, user: str, seconds: int) -> None:
        now = time.monotonic()
        with self._hub.lock:
            self._hub.bans = {k: end for k, end in self._hub.bans.items() if end > now}  # ended ones go
            self._hub.bans[(room, user)] = now + seconds

    def rooms(self, cursor: str | None, limit: int) -> RoomsPage:
        """Sorted by name; the cursor is the last room of the previous page."""
        with self._hub.lock:
            names = sorted(r for r in self._hub.rooms if cursor is None or r > cursor)
            page = []
            for name in names:
                users = [u for sids in self._hub.rooms[name].members.values() for u in sids.values()]
                if users:
                    page.append(RoomCount(name, len(set(users)), len(users)))
                if len(page) == limit:
                    break
        last = page[-1].room if len(page) == limit else None
        return RoomsPage(page, last if last is not None and any(r > last for r in names) else None)

    def remove_node(self, rooms: Sequence[str], grace: bool = False) -> None:
        for room in rooms:
            self._remove(room, None)

    def record_direct(self, room: str, users: Sequence[str], at: int, keep: int) -> None:
        """Kept for the process's life, `keep` per user (one node: no TTLs to follow)."""
        with self._hub.lock:
            for user in users:
                mine = self._hub.directs.setdefault(user, {})
                mine[room] = max(at, mine.get(room, at))
                for old in sorted(mine, key=lambda r: (mine[r], r))[: max(0, len(mine) - keep)]:
                    del mine[old]

    def directs(self, user: str, limit: int) -> list[Direct]:
        with self._hub.lock:
            mine = self._hub.directs.get(user, {})
            out = []
            for room in sorted(mine, key=lambda r: (mine[r], r), reverse=True)[:limit]:
                state = self._hub.rooms.get(room)
                out.append(Direct(room, mine[room], Position(state.epoch, state.seq) if state else None))
            return out
