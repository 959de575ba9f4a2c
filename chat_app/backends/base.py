"""The two interfaces ChatService talks to. Backends implement them; the service imports
nothing else from here, so it never learns whether Redis is behind them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..protocol import Envelope, PresenceEvent

RECENT_HISTORY = 50  # envelopes in a join ack without `since`


class BackendUnavailable(Exception):
    """The shared store could not be reached within the deadline; nothing was changed."""


@dataclass(frozen=True, slots=True)
class Draft:
    """A message before the broker has given it a place in its room's stream."""

    id: str
    room: str
    sender: str
    message: str
    timestamp: int
    instance_id: str
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a room's stream stands: `epoch` changes when the store lost the room's data."""

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class History:
    position: Position
    envelopes: Sequence[Envelope]
    complete: bool  # False when the requested range starts before what is still stored


@dataclass(frozen=True, slots=True)
class Joined:
    """What a presence join learns of the room in the same round trip."""

    position: Position
    members_count: int  # users across live nodes
    names: Sequence[str]  # the first of them in name order, at most a page


@dataclass(frozen=True, slots=True)
class Member:
    instance_id: str
    sid: str
    user: str


@dataclass(frozen=True, slots=True)
class BrokerHooks:
    """Called from the broker's listener, the only place envelopes are delivered from."""

    on_envelope: Callable[[Envelope], None]
    on_presence: Callable[[PresenceEvent], None]
    on_subscribed: Callable[[str], None]  # room's channel is live: catch up from history
    on_reconnected: Callable[[], None]


class Broker(Protocol):
    def start(self, hooks: BrokerHooks) -> None: ...
    def publish(self, draft: Draft) -> Envelope:
        """Store in history and publish; the same `id` (or `key`) twice yields one message."""
        ...

    def subscribe(self, room: str) -> threading.Event:
        """Hear the room's channel; the event is set once it is live, and `on_subscribed`
        follows so the service can catch up from history."""
        ...

    def unsubscribe(self, room: str) -> None: ...
    def history(self, room: str, after: int | None, upto: int | None = None) -> History: ...
    def healthy(self) -> dict[str, bool]: ...
    def stop(self) -> None: ...


class Presence(Protocol):
    """Who is in which room, across nodes. Joins and last departures are announced on the
    room's channel by the backend itself (BrokerHooks.on_presence), each exactly once, in
    rooms of at most PRESENCE_EVENTS_MAX_MEMBERS users; bigger rooms are told counts."""

    def start(self, snapshot: Callable[[], dict[str, dict[str, str]]]) -> None:
        """Begin the heartbeat; `snapshot` returns this node's rooms -> {sid: user}."""
        ...

    def beat(self) -> None:
        """Rewrite this node's entries now (also after a reconnect)."""
        ...

    def stop(self) -> None: ...
    def join(self, room: str, sid: str, user: str) -> Joined: ...
    def leave(self, room: str, sid: str, grace: bool = False) -> bool:
        """Remove one member; True when the room had nobody left anywhere and was deleted.
        With `grace`, the user's departure is announced only if they are not back in time."""
        ...

    def sweep(self, room: str) -> bool:
        """Settle departures whose grace ran out; True when that emptied the room."""
        ...

    def members(self, room: str) -> list[Member]: ...
    def names(self, room: str, after: str | None, limit: int) -> tuple[int, list[str]]:
        """(users in the room, up to `limit` of their names after `after`, in name order)."""
        ...

    def counts(self, rooms: Sequence[str]) -> dict[str, int]:
        """Users in each room, in one read."""
        ...

    def is_active(self, room: str) -> bool: ...
    def room_state(self, room: str) -> tuple[Position | None, list[Member]]:
        """The room's position (None: unknown to the store) and live members, in one read."""
        ...

    def remove_node(self, rooms: Sequence[str], grace: bool = False) -> None:
        """Drop this node's entries at once (graceful shutdown)."""
        ...
