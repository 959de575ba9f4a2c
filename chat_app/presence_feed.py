"""PresenceFeed: what this node's sockets are told of who is in their rooms. Presence and
typing events from the room's channel go to the local members (never a member's own
arrival, departure or typing); above PRESENCE_EVENTS_MAX_MEMBERS a periodic count replaces
them; departures with grace are settled by one sweeper for the node.

Its own state (each hosted room's users count, what the last count said, the sweeps due)
and lock. Events go out through the delivery engine, so a member whose join is in flight
gets them after its ack. Lock order: ChatService -> feed -> delivery engine; the feed reads
the room's members from ChatService (`members`) before it takes its own lock."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .backends.base import BackendUnavailable
from .delivery import DeliveryEngine
from .local_sockets import Emitter
from .logsafe import q
from .protocol import DeletedEvent, RoomEvent, TypingEvent
from .settings import Settings

log = logging.getLogger(__name__)


class PresenceReads(Protocol):
    """What the feed asks of the Presence backend."""

    def beat(self, rewrite: bool = False) -> None: ...
    def sweep(self, room: str) -> bool: ...
    def names(self, room: str, after: str | None, limit: int) -> tuple[int, list[str]]: ...
    def counts(self, rooms: Sequence[str]) -> dict[str, int]: ...


@dataclass
class _Count:
    members_count: int = 0  # users across nodes, as last learnt
    count_told: int = 0  # what the last periodic count said (big rooms)


class PresenceFeed:
    def __init__(
        self,
        settings: Settings,
        presence: PresenceReads,
        delivery: DeliveryEngine,
        emitter: Emitter,
        members: Callable[[str], dict[str, str] | None],
    ) -> None:
        """`members(room)`: this node's sid -> user in the room (None: not hosted here)."""
        self._settings = settings
        self._presence = presence
        self._delivery = delivery
        self._emitter = emitter
        self._members = members
        self._lock = threading.Lock()
        self._counts: dict[str, _Count] = {}
        self._stopping = threading.Event()
        self._sweeps: dict[str, float] = {}  # room -> when its departures' grace has run out
        self._sweep_wake = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._count_rooms, name="room-counts", daemon=True).start()
        threading.Thread(target=self._sweep_departures, name="departures", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self._sweep_wake.set()
        with self._lock:
            self._counts.clear()

    # -- the rooms hosted here (ChatService, under its lock) ---------------------------

    def track(self, room: str) -> None:
        """The room is hosted here from now (its first local member is joining)."""
        with self._lock:
            self._counts.setdefault(room, _Count())

    def forget(self, room: str) -> None:
        with self._lock:
            self._counts.pop(room, None)

    def note_count(self, room: str, members_count: int) -> None:
        """What a join learnt of the room's users across nodes."""
        with self._lock:
            if (count := self._counts.get(room)) is not None:
                count.members_count = members_count

    def is_big(self, room: str) -> bool:
        """Above PRESENCE_EVENTS_MAX_MEMBERS: no arrival, departure or typing is told one by one."""
        with self._lock:
            count = self._counts.get(room)
            return count is not None and count.members_count > self._settings.presence_events_max_members

    # -- events from the room's channel (the broker's listener) ------------------------

    def on_event(self, event: RoomEvent) -> None:
        members = self._members(event.room)
        if members is None:
            return
        if isinstance(event, DeletedEvent):
            self._delivery.emit(event.room, "message_deleted", event.to_client())
            return
        # A member is never told of its own arrival, departure or typing: it knows.
        own = [sid for sid, user in members.items() if user == event.user]
        if isinstance(event, TypingEvent):
            # Never held for a join in flight (it is not recovered either).
            self._emitter.emit_room("typing", event.to_client(), event.room, own)
            return
        with self._lock:
            if (count := self._counts.get(event.room)) is not None:
                count.members_count = event.members_count
        self._delivery.emit(event.room, "presence", event.to_client(), None, own)

    def on_reconnected(self) -> None:
        """Presence events sent while we were away are lost: rewrite ours, resend the list."""
        self._presence.beat(rewrite=True)
        with self._lock:
            rooms = list(self._counts)
        for room in rooms:
            try:
                count, names = self._presence.names(room, None, self._settings.presence_events_max_members)
            except BackendUnavailable as exc:
                log.warning("event=presence_sync_failed room=%s error=%s", q(room), q(exc))
                continue
            sync = {"room": room, "action": "sync", "user": None, "members_count": count, "members": names}
            self._delivery.emit(room, "presence", sync)

    # -- big rooms' counts -------------------------------------------------------------

    def _count_rooms(self) -> None:
        """Every PRESENCE_COUNT_INTERVAL, tell the members of big rooms how many they are, if
        that changed: above PRESENCE_EVENTS_MAX_MEMBERS joins and leaves are not announced
        one by one. Each node tells its own members, so each gets at most one per interval."""
        limit = self._settings.presence_events_max_members
        while not self._stopping.wait(self._settings.presence_count_interval):
            with self._lock:
                rooms = [room for room, count in self._counts.items() if count.members_count >= limit]
            try:
                counts = self._presence.counts(rooms)
            except BackendUnavailable as exc:
                log.warning("event=count_failed rooms=%d error=%s", len(rooms), q(exc))
                continue
            except Exception:
                log.exception("event=count_error")
                continue
            with self._lock:
                for room, users in counts.items():
                    count = self._counts.get(room)
                    if count is None or users == count.count_told or max(users, count.count_told) <= limit:
                        continue
                    count.members_count = count.count_told = users
                    told = {"room": room, "action": "count", "user": None, "members_count": users}
                    self._delivery.emit(room, "presence", told)

    # -- departures with grace ---------------------------------------------------------

    def sweep_later(self, rooms: Iterable[str]) -> None:
        """A disconnect left these rooms with grace: settle them once it has run out."""
        due = time.monotonic() + self._settings.presence_grace + 0.05
        with self._lock:
            for room in rooms:
                self._sweeps.setdefault(room, due)  # an earlier due one covers this one too
        self._sweep_wake.set()

    def _sweep_departures(self) -> None:
        """One greenlet for every node's grace expiries (was a timer per disconnect): settle
        and announce the departures whose grace ran out, once per room however many left
        (another node's heartbeat would too, later)."""
        while not self._stopping.is_set():
            with self._lock:
                now = time.monotonic()
                due = [room for room, at in self._sweeps.items() if at <= now]
                for room in due:
                    del self._sweeps[room]
                nearest = min(self._sweeps.values(), default=None)
            for room in due:
                try:
                    self._presence.sweep(room)
                except BackendUnavailable as exc:
                    log.warning("event=sweep_failed room=%s error=%s", q(room), q(exc))
                except Exception:
                    log.exception("event=sweep_error room=%s", q(room))
            self._sweep_wake.wait(None if nearest is None else max(0.0, nearest - time.monotonic()))
            self._sweep_wake.clear()
