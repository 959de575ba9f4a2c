"""The interfaces ChatService talks to: the Broker, and the presence side split into small
ports (RoomPresence, Bans, DirectLists, RoomListing; Presence is the four together, as one
backend object implements them). Backends implement them; the service imports nothing else
from here, so it never learns whether Redis is behind them."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..protocol import Command, DeletedEvent, Envelope, RoomEvent, TypingEvent

RECENT_HISTORY = 50  # envelopes in a join ack without `since`
T = TypeVar("T")


class BackendUnavailable(Exception):
    """The shared store could not be reached within the deadline; nothing was changed."""


class Overloaded(BackendUnavailable):
    """More sends are waiting than the node serves promptly: this one was refused at once
    and not stored."""


def within(seconds: float, call: Callable[[], T], what: str) -> T:
    """`call()`, given up on after `seconds` (BackendUnavailable): a store that stopped
    answering holds a read for its socket timeout, times its client's retries, and the
    server API promises an answer within SEND_DEADLINE. The call runs in a thread of its
    own (a greenlet under gevent) and, given up on, ends by itself at its socket timeout."""
    done = threading.Event()
    outcome: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=what, daemon=True).start()
    if not done.wait(seconds):
        raise BackendUnavailable(f"{what}: no answer within {seconds:g} s")
    ok, value = outcome[0]
    if not ok:
        raise value  # type: ignore[misc]
    return value  # type: ignore[return-value]


class Banned(Exception):
    """The user may not join this room until a ban set through the server API ends."""

    def __init__(self, seconds_left: float) -> None:
        super().__init__(f"banned for another {seconds_left:.0f} s")
        self.seconds_left = seconds_left


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
    meta: dict[str, Any] | None = None  # a decision hook's, stored and delivered with the message

    @classmethod
    def new(
        cls,
        room: str,
        sender: str,
        message: str,
        instance_id: str,
        key: str | None = None,
        clock: Callable[[], float] = time.time,
        token_hex: Callable[[int], str] = secrets.token_hex,
    ) -> Draft:
        """A message from a member or from outside the nodes: both get their id here."""
        return cls(token_hex(16), room, sender, message, int(clock() * 1000), instance_id[:64], key)

    @property
    def dedup_id(self) -> str:
        """What makes a retry the same message: the sender's own key, else the id. The
        sender's length goes first, so no (sender, key) pair spells another's: with a bare
        `k:{sender}:{key}`, sender `a:b` key `c` was sender `a` key `b:c`. `k2:` never
        equals the old `k:` form, which nodes of the previous release still write during
        a rolling deploy (a keyed retry that crosses the deploy may then be stored twice)."""
        return f"k2:{len(self.sender)}:{self.sender}:{self.key}" if self.key else f"i:{self.id}"


@dataclass(frozen=True, slots=True)
class Position:
    """Where a room's stream stands: `epoch` changes when the store lost the room's data."""

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class LocalRooms:
    """What the presence heartbeat reads of the node's own membership. Sizes alone for
    every beat: copying every room's members each HEARTBEAT_INTERVAL was O(connections)."""

    sizes: Callable[[], dict[str, int]]  # joined room -> its connections on this node
    members: Callable[[Collection[str]], dict[str, dict[str, str]]]  # of those rooms: sid -> user


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
class Direct:
    """One of a user's direct conversations, as their list holds it."""

    room: str
    at: int  # ms: its last message
    position: Position | None  # the room's stream now; None: the store no longer has it


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What the nodes answered to a command within its deadline."""

    connections: int  # summed over the answers
    nodes: int  # nodes that answered
    expected: int  # nodes the command reached (a node that died meanwhile never answers)


@dataclass(frozen=True, slots=True)
class RoomCount:
    room: str
    members: int  # distinct users
    connections: int


@dataclass(frozen=True, slots=True)
class RoomsPage:
    rooms: list[RoomCount]
    cursor: str | None  # None: this was the last page


def _no_control(command: Command) -> int:
    return 0


@dataclass(frozen=True, slots=True)
class BrokerHooks:
    """Called from the broker's listener, the only place envelopes are delivered from."""

    on_envelope: Callable[[Envelope], None]
    on_presence: Callable[[RoomEvent], None]  # the room's other events: presence, typing, deletions
    on_subscribed: Callable[[str], None]  # room's channel is live: catch up from history
    on_reconnected: Callable[[], None]
    # A command for every node: act on this node's connections of the user, answer how many.
    # Run off the listener (it may join rooms, which waits for the listener), by the broker.
    on_control: Callable[[Command], int] = field(default=_no_control)


class Broker(Protocol):
    def start(self, hooks: BrokerHooks) -> None: ...
    def send(self, draft: Draft) -> Envelope:
        """Store in history and publish; the same `id` (or `key`) twice yields one message."""
        ...

    def subscribe(self, room: str) -> threading.Event:
        """Hear the room's channel; the event is set once it is live, and `on_subscribed`
        follows so the service can catch up from history."""
        ...

    def catch_up(self, room: str) -> None:
        """Have the listener run `on_subscribed` for a subscribed room again (the delivery
        engine then reads what it missed from history), in its turn with the room's live
        messages: a room new to the node, or whose store moved to another epoch."""
        ...

    def unsubscribe(self, room: str) -> None: ...
    def signal(self, event: TypingEvent | DeletedEvent) -> None:
        """Publish an ephemeral event on its room's channel: not stored, best effort (a
        store that cannot take it drops it)."""
        ...

    def forget(self, room: str, seqs: Sequence[int]) -> None:
        """Delete these messages from the room's history (an erasure)."""
        ...

    def history(self, room: str, after: int | None, upto: int | None = None, limit: int = RECENT_HISTORY) -> History:
        """Envelopes with after < seq <= upto; with `after` None, the newest `limit` of them."""
        ...

    def command(self, command: Command, deadline: float) -> CommandResult:
        """Send to every node (this one included) and sum the answers that arrive within
        `deadline` seconds; BackendUnavailable when the store does not take it in time."""
        ...

    def healthy(self) -> dict[str, bool]: ...
    def unreached(self) -> list[str]:
        """Servers (Cluster shards, host:port) that a failing part cannot reach: /healthz names them."""
        ...

    def stop(self) -> None: ...


class RoomPresence(Protocol):
    """Who is in which room, across nodes. Joins and last departures are announced on the
    room's channel by the backend itself (BrokerHooks.on_presence), each exactly once, in
    rooms of at most PRESENCE_EVENTS_MAX_MEMBERS users; bigger rooms are told counts."""

    def start(self, local: LocalRooms) -> None:
        """Begin the heartbeat over this node's rooms."""
        ...

    def beat(self, rewrite: bool = False) -> None:
        """Renew this node's entries now, writing again those the store lost; all of them
        with `rewrite` (after a reconnect)."""
        ...

    def healthy(self) -> dict[str, bool]:
        """`presence`: False while the heartbeat cannot write some room's entries."""
        ...

    def unreached(self) -> list[str]: ...
    def stop(self) -> None: ...
    def join(self, room: str, sid: str, user: str) -> Joined:
        """Raises Banned (and changes nothing) while the user is banned from the room."""
        ...

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

    def summary(self, room: str, limit: int, after: str | None = None) -> tuple[Position | None, int, list[str]]:
        """`names` and the room's position (None: unknown to the store), in one read of
        O(limit): what an unauthenticated caller may cost."""
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


class Bans(Protocol):
    """Server API bans: a banned user's joins (RoomPresence.join) and sends are refused."""

    def ban(self, room: str, user: str, seconds: int) -> None:
        """Refuse the user's joins of the room on every node for `seconds`."""
        ...


class DirectLists(Protocol):
    """Each user's list of direct conversations (list_directs)."""

    def record_direct(self, room: str, users: Sequence[str], at: int, keep: int) -> None:
        """Note a message of the direct conversation at `at` (ms) in each user's list, which
        keeps its `keep` newest conversations."""
        ...

    def directs(self, user: str, limit: int) -> list[Direct]:
        """The user's conversations, newest activity first, each with its room's position."""
        ...


class RoomListing(Protocol):
    """The server API's list of rooms."""

    def rooms(self, cursor: str | None, limit: int) -> RoomsPage:
        """Rooms with live members, about `limit` per page, resumed from `cursor`."""
        ...


class Presence(RoomPresence, Bans, DirectLists, RoomListing, Protocol):
    """The four ports as one backend object provides them (MemoryPresence, RedisPresence);
    each part of the node asks for the smallest one it uses."""


class ArchiveReader(Protocol):
    """What a backend's reads fall through to beyond what it still holds: the archive
    (chat_app/archive/reads.py)."""

    def before(
        self, room: str, position: Position, held: Sequence[Envelope], last: int, after: int | None, limit: int
    ) -> list[Envelope]:
        """The room's envelopes just older than `held` (what the backend returned for a read
        ending at `last`): after `after` up to `held`, or the newest to make `limit` in all
        when `after` is None. Oldest first; [] when the archive cannot tell."""
        ...

    def directs(self, user: str, limit: int) -> list[Direct]:
        """The user's direct conversations the archive knows, newest first."""
        ...


class Archive(ArchiveReader, Protocol):
    """The archive as the node's reads and the server API use it. BackendUnavailable when the
    database does not answer."""

    def search(self, room: str, query: str, limit: int) -> list[Envelope]:
        """The room's messages matching a web-search style query, newest first."""
        ...

    def erase(self, user: str) -> list[tuple[str, int, str]]:
        """Delete every archived message of the user: (room, seq, id) of each."""
        ...
