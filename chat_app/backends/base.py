"""The two interfaces ChatService talks to. Backends implement them; the service imports
nothing else from here, so it never learns whether Redis is behind them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..protocol import Envelope


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
class Member:
    instance_id: str
    sid: str
    user: str


@dataclass(frozen=True, slots=True)
class BrokerHooks:
    """Called from the broker's listener, the only place envelopes are delivered from."""

    on_envelope: Callable[[Envelope], None]
    on_subscribed: Callable[[str], None]  # room's channel is live: catch up from history
    on_reconnected: Callable[[], None]


class Broker(Protocol):
    def start(self, hooks: BrokerHooks) -> None: ...
    def publish(self, draft: Draft) -> Envelope:
        """Store in history and publish; the same `id` (or `key`) twice yields one message."""
        ...

    def subscribe(self, room: str) -> None: ...
    def unsubscribe(self, room: str) -> None: ...
    def history(self, room: str, after: int | None, upto: int | None = None) -> History: ...
    def healthy(self) -> dict[str, bool]: ...
    def stop(self) -> None: ...


Departed = Callable[[str, list[str]], None]
"""(room, users) of another node whose entries expired: told to exactly one live node."""


class Presence(Protocol):
    def start(self, snapshot: Callable[[], dict[str, dict[str, str]]], on_departed: Departed) -> None:
        """Begin the heartbeat; `snapshot` returns this node's rooms -> {sid: user}."""
        ...

    def beat(self) -> None:
        """Rewrite this node's entries now (also after a reconnect)."""
        ...

    def stop(self) -> None: ...
    def join(self, room: str, sid: str, user: str) -> Position: ...
    def leave(self, room: str, sid: str) -> bool:
        """Remove one member; True when the room had nobody left anywhere and was deleted."""
        ...

    def members(self, room: str) -> list[Member]: ...
    def is_active(self, room: str) -> bool: ...
    def position(self, room: str) -> Position | None: ...
    def remove_node(self, rooms: Sequence[str]) -> None:
        """Drop this node's entries at once (graceful shutdown)."""
        ...
