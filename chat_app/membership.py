"""Membership: which of this node's connections are in which room, and the bookkeeping of a
join and a leave: the room limits, direct conversations' allowance of their own, the room's
first member here (the presence feed and the delivery engine start following it) and its
last (they stop, and the room's channel is dropped).

Its own lock, which also guards each Connection's `rooms`, `directs` and `typed`. Lock order:
membership -> presence feed -> delivery engine; ChatService calls in holding no lock of its
own, and `take` (a rate limit) takes only the counters' lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .auth import ALL_DIRECTS
from .backends.base import Joined
from .delivery import DeliveryEngine, Held, Stream
from .presence_feed import PresenceFeed
from .protocol import ChatError, ErrorCode, direct_members
from .ratelimit import TokenBucket
from .settings import Settings

TYPING_INTERVAL = 2.0  # seconds: at most one typing event per connection per room

# A room's members on this node: sid -> user, admitted or joining. The dict's identity is the
# room's stay here: a join that finds another dict under the room's name lost a race to a leave.
Members = dict[str, str]


@dataclass
class Connection:
    sid: str
    user: str | None  # fixed at connect (auth); None: each payload's sender is used
    send_bucket: TokenBucket
    join_bucket: TokenBucket
    leave_bucket: TokenBucket
    list_bucket: TokenBucket  # list_directs: each costs up to MAX_DIRECTS_PER_USER * 2 Redis reads
    allowed_rooms: frozenset[str] | None = None  # from the token's rooms claim
    expires: float | None = None  # the token's exp (wall clock): the connection is ended then
    rooms: set[str] = field(default_factory=set)
    # The direct conversations among `rooms`, with their last activity here (monotonic):
    # they have an allowance of their own, MAX_ROOMS_PER_CONNECTION, where the least active
    # one makes way for a new one, so messages from strangers never take a room slot.
    directs: dict[str, float] = field(default_factory=dict)
    search_bucket: TokenBucket | None = None  # made at the first search: most connections never search
    typed: dict[str, float] = field(default_factory=dict)  # room -> monotonic time of the last typing sent

    def allows(self, room: str) -> bool:
        """The token's rooms claim: a room it names, or any direct conversation of the user
        with `@*` (that the user is one of the two is checked where the room is joined)."""
        allowed = self.allowed_rooms
        return allowed is None or room in allowed or (ALL_DIRECTS in allowed and direct_members(room) is not None)

    def touch(self, room: str) -> None:
        """A direct conversation's activity here: the least active one makes way first."""
        if room in self.directs:
            self.directs[room] = time.monotonic()


class Subscriptions(Protocol):
    def unsubscribe(self, room: str) -> None: ...


class Membership:
    def __init__(
        self,
        settings: Settings,
        broker: Subscriptions,
        delivery: DeliveryEngine,
        feed: PresenceFeed,
        take: Callable[[TokenBucket, str], None],
    ) -> None:
        """`take(bucket, message)`: a rate limit, raising `rate_limited` past it."""
        self._settings = settings
        self._broker = broker
        self._delivery = delivery
        self._feed = feed
        self._take = take
        self._lock = threading.RLock()
        self._rooms: dict[str, Members] = {}

    def start_joining(
        self, conn: Connection, room: str, user: str, limited: bool
    ) -> tuple[Members, Stream, Held, bool, str | None]:
        """Check the limits and make `conn` a member that receives nothing live yet; True
        when the room is hosted here already (it has a cursor). Direct conversations have an
        allowance of their own: a new one when it is full makes the least active one (last
        joined, reached by a message or sent to here) leave, returned last, whose presence
        the caller then removes and which it tells `room_left` {reason: "idle"}: the
        conversation stays in list_directs and comes back with its next message."""
        evicted = None
        limit = self._settings.max_rooms_per_connection
        with self._lock:
            if not conn.allows(room):
                raise ChatError(ErrorCode.FORBIDDEN_ROOM, f"your token does not allow {room!r}")
            direct = direct_members(room) is not None
            if room not in conn.rooms:
                if not direct and len(conn.rooms) - len(conn.directs) >= limit:
                    raise ChatError(ErrorCode.TOO_MANY_ROOMS, f"a connection may be in at most {limit} rooms")
                if limited:
                    self._take(conn.join_bucket, "too many joins: slow down")
                if direct and len(conn.directs) >= limit:
                    evicted = min(conn.directs, key=conn.directs.__getitem__)
                    self.leave_locally(conn, evicted)
            members = self._rooms.get(room)
            if members is None:
                members = self._rooms[room] = {}
                self._feed.track(room)
            members[conn.sid] = user
            conn.rooms.add(room)
            if direct:
                conn.directs[room] = time.monotonic()
            stream, held, hosted = self._delivery.hold(room, conn.sid)
            return members, stream, held, hosted, evicted

    def place(
        self, members: Members, stream: Stream, room: str, sid: str, joined: Joined
    ) -> Literal["new", "hosted", "moved", "gone"]:
        """The room's cursor and users count from the join's read; "gone" when the member
        left meanwhile (see DeliveryEngine.place for the rest)."""
        with self._lock:
            if self._rooms.get(room) is not members or sid not in members:
                return "gone"
            self._feed.note_count(room, joined.members_count)
            return self._delivery.place(room, stream, joined.position)

    def unsubscribe_if_left(self, room: str) -> None:
        """A join that lost its race to a leave keeps no subscription of a room left empty."""
        with self._lock:
            if room not in self._rooms:
                self._broker.unsubscribe(room)

    def leave_locally(self, conn: Connection, room: str) -> bool:
        """Drop the membership on this node; True when it was the room's last local member."""
        with self._lock:
            conn.rooms.discard(room)
            conn.directs.pop(room, None)
            members = self._rooms.get(room)
            if members is not None:
                members.pop(conn.sid, None)
            last = members is not None and not members
            self._delivery.release(room, conn.sid, last)
            if not last:
                return False
            del self._rooms[room]
            self._feed.forget(room)
            # Under the lock: a join arriving now must not have its subscription dropped.
            self._broker.unsubscribe(room)
        return True

    def typist(self, conn: Connection, room: str) -> str | None:
        """Who is typing, when this connection's typing in the room is told at all: an
        admitted member, not in a big room, not within TYPING_INTERVAL of its last one."""
        now = time.monotonic()
        with self._lock:
            members = self._rooms.get(room)
            if room not in conn.rooms or members is None or self._delivery.joining(room, conn.sid):
                return None
            if self._feed.is_big(room):
                return None
            if now - conn.typed.get(room, -TYPING_INTERVAL) < TYPING_INTERVAL:
                return None
            conn.typed[room] = now
            return members.get(conn.sid) or "anonymous"

    def user_of(self, room: str, sid: str) -> str:
        members = self._rooms.get(room)
        return (members.get(sid) if members else None) or "anonymous"

    def members_of(self, room: str) -> Members | None:
        """For the presence feed: the room's members here (a copy), None when not hosted."""
        with self._lock:
            members = self._rooms.get(room)
            return dict(members) if members is not None else None

    def local_rooms(self) -> dict[str, int]:
        with self._lock:
            return {room: len(members) for room, members in self._rooms.items()}

    def clear(self) -> list[str]:
        """The node stops: every room left at once; the rooms it had."""
        with self._lock:
            rooms = list(self._rooms)
            self._rooms.clear()
            self._delivery.clear()
            return rooms

    # -- what the presence heartbeat reads (LocalRooms) --------------------------------

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {room: len(members) for room, members in self._rooms.items() if self._delivery.hosted(room)}

    def snapshot(self, rooms: Collection[str]) -> dict[str, dict[str, str]]:
        with self._lock:
            found = ((room, self._rooms.get(room)) for room in rooms)
            joined = ((room, m) for room, m in found if m is not None and self._delivery.hosted(room))
            return {room: dict(members) for room, members in joined}
