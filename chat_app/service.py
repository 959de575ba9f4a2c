"""ChatService: the domain. It knows this node's connections and rooms, and delivers every
room's envelopes to its local members in seq order, exactly once, filling gaps from
history. It talks to the world only through a Broker, a Presence and an Emitter."""

from __future__ import annotations

import functools
import heapq
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .auth import ALL_DIRECTS, Identity
from .backends.base import (
    BackendUnavailable,
    Banned,
    Broker,
    BrokerHooks,
    Draft,
    History,
    Joined,
    LocalRooms,
    Overloaded,
    Position,
    Presence,
    within,
)
from .load import LoadGauge
from .logsafe import LogThrottle, q
from .protocol import (
    ChatError,
    Command,
    CommandAction,
    Envelope,
    ErrorCode,
    JoinRequest,
    OpenDirectRequest,
    PresenceEvent,
    PublishRequest,
    SendRequest,
    TypingEvent,
    clean_sender,
    direct_members,
    direct_room,
)
from .random_ids import RandomIds
from .ratelimit import TokenBucket
from .settings import Settings

log = logging.getLogger(__name__)
# Lines a client (or a flood of direct messages) can cause at will: bounded per kind.
throttled = LogThrottle(log)

# What a client is told when Redis does not answer: never the error itself, which names
# Redis's address; that goes to the log.
UNAVAILABLE = "the service is unavailable: try again shortly"


def unavailable(what: str, exc: BaseException) -> ChatError:
    """The `unavailable` error a client sees for `exc` (generic: `what` failed), with the
    detail logged (throttled: in an outage every request would say it)."""
    throttled.log(logging.WARNING, "unavailable", "event=unavailable what=%s error=%s", q(what), q(exc))
    return ChatError(ErrorCode.UNAVAILABLE, f"{what}: {UNAVAILABLE}")


class Emitter(Protocol):
    """Emits to this node's sockets only: a room's local members, or one socket."""

    def emit_room(self, event: str, data: dict[str, Any], room: str, skip: Collection[str] = ()) -> None: ...
    def emit_to(self, sid: str, event: str, data: dict[str, Any]) -> None: ...
    def enter_room(self, sid: str, room: str) -> None: ...
    def leave_room(self, sid: str, room: str) -> None: ...
    def disconnect(self, sid: str) -> None:
        """Close the socket after what was emitted to it so far."""
        ...


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
    typed: dict[str, float] = field(default_factory=dict)  # room -> monotonic time of the last typing sent


# What a send refused by the load gauge is told, here and where the transport refuses it.
BEHIND = "message not sent, the node is running behind: send it again shortly"

TYPING_INTERVAL = 2.0  # seconds: at most one typing event per connection per room


# What a room emitted while a member's join was in flight: (event, data, position of a message).
Held = list[tuple[str, dict[str, Any], Position | None]]


@dataclass
class LocalRoom:
    members: dict[str, str] = field(default_factory=dict)  # sid -> user, admitted or joining
    cursor: Position | None = None  # last envelope delivered here; None until the join read it
    members_count: int = 0  # users across nodes, as last learnt
    count_told: int = 0  # what the last periodic count said (big rooms)
    # Joining members receive nothing live until their ack is written: what the room emits
    # meanwhile is held for them, and handed over after the ack (less what it covered).
    joining: dict[str, Held] = field(default_factory=dict)


@dataclass
class Counters:
    """Updated under the service's lock: the listener updates them too (real threads in the
    tests' threading mode)."""

    published: int = 0
    delivered: int = 0
    duplicates_dropped: int = 0
    gaps_filled: int = 0
    messages_lost: int = 0
    epoch_changes: int = 0
    recoveries_ok: int = 0
    recoveries_failed: int = 0
    rate_limited: int = 0
    queue_full: int = 0  # sends refused `overloaded` because the publish queue was full
    commands: int = 0  # server API commands on users this node acted on


class ChatService:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        presence: Presence,
        emitter: Emitter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.instance_id = settings.instance_id
        self._broker = broker
        self._presence = presence
        self._emitter = emitter
        self._clock = clock
        self._tokens = RandomIds()
        self._lock = threading.RLock()
        self._connections: dict[str, Connection] = {}
        self._rooms: dict[str, LocalRoom] = {}
        self._users: dict[str, set[str]] = {}  # user -> this node's sids of theirs (server API)
        self.counters = Counters()
        self._stopped = False
        self._stopping = threading.Event()
        self._sweeps: dict[str, float] = {}  # room -> when its departures' grace has run out
        self._sweep_wake = threading.Event()
        self._expiries: list[tuple[float, str]] = []  # heap of (token exp, sid); stale entries skipped
        self._expiry_wake = threading.Event()
        self.load = LoadGauge(settings.overload_lag)
        self.observe_publish: Callable[[float], None] = lambda seconds: None  # metrics hook

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._broker.start(
            BrokerHooks(self._on_envelope, self._on_presence, self._catch_up, self._on_reconnected, self._on_control)
        )
        self._presence.start(LocalRooms(self._sizes, self._snapshot))
        threading.Thread(target=self._count_rooms, name="room-counts", daemon=True).start()
        threading.Thread(target=self._sweep_departures, name="departures", daemon=True).start()
        threading.Thread(target=self._end_expired, name="token-expiry", daemon=True).start()

    def measure_load(self) -> None:
        """Tick the load gauge; without it nothing is ever shed. Under gevent only: its
        reading is the wait in gevent's run queue, and threads (the tests' threading mode)
        have none to read, only the interpreter lock's turns."""
        threading.Thread(target=self.load.run, args=(self._stopping,), name="load", daemon=True).start()

    def stop(self) -> list[str]:
        """Leave every room at once and close the backends; returns the sids to disconnect.
        Idempotent: gunicorn's master forwards the SIGTERM its worker already received."""
        with self._lock:
            if self._stopped:
                return []
            self._stopped = True
            self._stopping.set()
            self._sweep_wake.set()
            self._expiry_wake.set()
            rooms = list(self._rooms)
            sids = list(self._connections)
            self._rooms.clear()
            self._connections.clear()
            self._users.clear()
        try:
            self._presence.remove_node(rooms, grace=True)
        except Exception:
            log.exception("event=shutdown_presence_failed rooms=%d", len(rooms))
        self._presence.stop()
        self._broker.stop()
        log.info("event=stopped rooms=%d connections=%d", len(rooms), len(sids))
        return sids

    # -- connections -----------------------------------------------------------------

    def connect(self, sid: str, identity: Identity) -> None:
        s = self.settings
        with self._lock:
            self._connections[sid] = Connection(
                sid,
                identity.user,
                TokenBucket(s.send_rate, s.send_burst),
                TokenBucket(s.join_rate, s.join_burst),
                TokenBucket(s.leave_rate, s.leave_burst),
                TokenBucket(s.list_directs_rate, s.list_directs_burst),
                identity.rooms,
                identity.expires,
            )
            if identity.user is not None:
                self._users.setdefault(identity.user, set()).add(sid)
            if identity.expires is not None:
                self._note_expiry(identity.expires, sid)
        log.info("event=connect sid=%s", sid)

    def _note_expiry(self, expires: float, sid: str) -> None:
        """Under the lock. Entries of connections gone meanwhile stay until due; the heap is
        rebuilt from the live ones when they outnumber them, so year-long tokens on churning
        connections cannot grow it without bound."""
        if len(self._expiries) > 2 * len(self._connections) + 64:
            self._expiries = [(c.expires, c.sid) for c in self._connections.values() if c.expires is not None]
            heapq.heapify(self._expiries)
        else:
            heapq.heappush(self._expiries, (expires, sid))
        if self._expiries[0][1] == sid:
            self._expiry_wake.set()  # the nearest one now: the waiter wakes earlier

    def _end_expired(self) -> None:
        """A token's `exp` holds on a live connection too: at exp the connection is told
        `error` {code: token_expired} and closed; the client reconnects with a fresh token.
        One thread for all (no timer per connection)."""
        while not self._stopping.is_set():
            with self._lock:
                now = self._clock()
                due = []
                while self._expiries and self._expiries[0][0] <= now:
                    expires, sid = heapq.heappop(self._expiries)
                    conn = self._connections.get(sid)
                    if conn is not None and conn.expires == expires:
                        due.append(sid)
                nearest = self._expiries[0][0] if self._expiries else None
            for sid in due:
                log.info("event=token_expired sid=%s", sid)
                told = ChatError(ErrorCode.TOKEN_EXPIRED, "your token has expired: connect again with a fresh one")
                self._emitter.emit_to(sid, "error", {**told.to_wire(), "event": None})
                self._emitter.disconnect(sid)
            self._expiry_wake.wait(None if nearest is None else max(0.0, nearest - self._clock()))
            self._expiry_wake.clear()

    def disconnect(self, sid: str) -> None:
        """Leave every room, with grace: a client that reconnects at once causes no churn."""
        with self._lock:
            conn = self._connections.pop(sid, None)
            if conn is not None and conn.user is not None:
                sids = self._users.get(conn.user, set())
                sids.discard(sid)
                if not sids:
                    self._users.pop(conn.user, None)
        if conn is None:
            return
        rooms = list(conn.rooms)
        for room in rooms:
            self._leave(conn, room, grace=True)
        if rooms:
            due = time.monotonic() + self.settings.presence_grace + 0.05
            with self._lock:
                for room in rooms:
                    self._sweeps.setdefault(room, due)  # an earlier due one covers this one too
            self._sweep_wake.set()
        log.info("event=disconnect sid=%s rooms=%d", sid, len(rooms))

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

    def _connection(self, sid: str) -> Connection:
        """Once the node is stopping, every event is `unavailable`, a connection gunicorn
        accepted after SIGTERM included: its transport closes soon and the client reconnects
        elsewhere. (Refusing those connects would end the clients' reconnecting.)"""
        if self._stopped:
            raise ChatError(ErrorCode.UNAVAILABLE, "this node is stopping: connect again")
        conn = self._connections.get(sid)
        if conn is None:
            raise ChatError(ErrorCode.UNAUTHORIZED, "this connection is not registered")
        return conn

    # -- join / leave ----------------------------------------------------------------

    def join(
        self,
        sid: str,
        req: JoinRequest,
        sender: Any = None,
        after_ack: Callable[[Callable[[], None]], None] | None = None,
        limited: bool = True,
    ) -> dict[str, Any]:
        """Join `req.room` and answer with its history up to a bound B; live messages then
        start after B. `after_ack` runs the hand-over once the caller has written the ack
        (the socket handler: after python-socketio sent it); without it, before returning.

        Until then the member is joined (presence, subscription) but not yet in the
        emitter's room: everything delivered meanwhile is held for it, and whatever of
        that the ack's history covers (seq <= B) is dropped, so history and live messages
        never overlap, never reorder and leave no gap, whatever the round trips let through.

        `limited=False`: a join the server API asked for, which the connection's join rate
        does not apply to (every other check does)."""
        conn = self._connection(sid)
        room = req.room
        user = conn.user or clean_sender(sender) or "anonymous"
        pair = direct_members(room)
        if pair is not None and conn.user not in pair:
            raise ChatError(ErrorCode.FORBIDDEN_ROOM, f"{room!r} is a direct conversation of others")
        local, held, hosted, evicted = self._start_joining(conn, room, user, limited)
        if evicted is not None:
            self._record_leave(conn.sid, evicted)
            self._emitter.emit_to(sid, "room_left", {"room": evicted, "reason": "idle"})
            log.info("event=direct_made_way room=%s sid=%s for_room=%s", evicted, sid, room)
        # The channel is live before the presence write, so every presence event after the
        # names that write reads reaches this member (held until its ack). A room hosted here
        # is subscribed already: asking again would make the listener read its history to
        # catch up, once per join, on the one greenlet that delivers (a reconnect storm's
        # rejoins then delay every member's messages).
        if not hosted and not self._broker.subscribe(room).wait(self.settings.send_deadline):
            log.warning("event=subscribe_slow room=%s", q(room))
        try:
            joined = self._presence.join(room, sid, user)
        except BackendUnavailable as exc:
            self._leave_locally(conn, room)
            raise unavailable("could not join", exc) from None
        except Banned as exc:
            self._leave_locally(conn, room)
            raise ChatError(ErrorCode.FORBIDDEN_ROOM, f"you may not join {room!r}: {exc}") from None
        placed = self._place(local, room, sid, joined)
        if placed == "gone":  # left or disconnected meanwhile: undo, keep no subscription
            with self._lock:
                if room not in self._rooms:
                    self._broker.unsubscribe(room)
            self._undo_presence(room, sid)
            raise ChatError(ErrorCode.NOT_IN_ROOM, f"left {room!r} while joining it")
        if placed != "hosted":
            # New here: what the channel brought before the room had a cursor was dropped.
            # Moved (the store is in another epoch than the node): follow the new stream.
            # Asked again, the listener catches the room up from history.
            self._broker.subscribe(room)
        with self._lock:
            bound = local.cursor
        assert bound is not None
        try:
            ack = self._join_ack(room, req, bound, joined)
        except ChatError:
            self._leave(conn, room)
            raise
        log.info("event=join room=%s sid=%s seq=%d", q(room), sid, bound.seq)
        admit = functools.partial(self._admit, sid, room, held, bound)
        if after_ack is None:
            admit()
        else:
            after_ack(admit)
        return ack

    def join_room(
        self,
        sid: str,
        req: JoinRequest,
        sender: Any = None,
        after_ack: Callable[[Callable[[], None]], None] | None = None,
    ) -> dict[str, Any]:
        """A client's `join_room`: never of a direct conversation (its members use open_direct)."""
        if direct_members(req.room) is not None:
            raise ChatError(ErrorCode.FORBIDDEN_ROOM, "a direct conversation is entered with open_direct")
        return self.join(sid, req, sender, after_ack)

    def open_direct(
        self, sid: str, req: OpenDirectRequest, after_ack: Callable[[Callable[[], None]], None] | None = None
    ) -> dict[str, Any]:
        """Join the caller's conversation with `req.peer` through the one join path; its ack
        plus `with`. The peer learns of it with the first message (see `send`)."""
        conn = self._connection(sid)
        if conn.user is None:
            raise ChatError(ErrorCode.UNAUTHORIZED, "a direct conversation needs a name given at connect")
        if req.peer == conn.user:
            raise ChatError(ErrorCode.INVALID_PAYLOAD, "with: a direct conversation is with someone else")
        room = direct_room(conn.user, req.peer)
        ack = self.join(sid, JoinRequest(room=room, since=req.since, epoch=req.epoch), after_ack=after_ack)
        return {**ack, "with": req.peer}

    def list_directs(self, sid: str) -> dict[str, Any]:
        """The caller's conversations, newest message first, each with its room's last seq
        and epoch, so a fresh client can open each with `since` (seq 0 and epoch None: the
        room's stream is gone, its history with it), and `at`, its last message (ms)."""
        conn = self._connection(sid)
        user = conn.user
        if user is None:
            raise ChatError(ErrorCode.UNAUTHORIZED, "direct conversations need a name given at connect")
        self._take(conn.list_bucket, "too many list_directs: slow down")
        limit = self.settings.max_directs_per_user
        found = self._bounded(lambda: self._presence.directs(user, limit), "directs")
        directs = []
        for d in found:
            pair = direct_members(d.room)
            if pair is None or user not in pair or not self._allows(conn, d.room):
                continue  # not a name this server writes, or one the token's claim fences off
            directs.append(
                {
                    "room": d.room,
                    "with": pair[1] if pair[0] == user else pair[0],
                    "seq": d.position.seq if d.position else 0,
                    "epoch": d.position.epoch if d.position else None,
                    "at": d.at,
                }
            )
        return {"ok": True, "directs": directs}

    def _allows(self, conn: Connection, room: str) -> bool:
        """The token's rooms claim: a room it names, or any direct conversation of the user
        with `@*` (that the user is one of the two is checked where the room is joined)."""
        allowed = conn.allowed_rooms
        return allowed is None or room in allowed or (ALL_DIRECTS in allowed and direct_members(room) is not None)

    def _start_joining(
        self, conn: Connection, room: str, user: str, limited: bool
    ) -> tuple[LocalRoom, Held, bool, str | None]:
        """Check the limits and make `conn` a member that receives nothing live yet; True
        when the room is hosted here already (it has a cursor). Direct conversations have an
        allowance of their own: a new one when it is full makes the least active one (last
        joined, reached by a message or sent to here) leave, returned last, whose presence
        the caller then removes and which it tells `room_left` {reason: "idle"}: the
        conversation stays in list_directs and comes back with its next message."""
        evicted = None
        limit = self.settings.max_rooms_per_connection
        with self._lock:
            if not self._allows(conn, room):
                raise ChatError(ErrorCode.FORBIDDEN_ROOM, f"your token does not allow {room!r}")
            direct = direct_members(room) is not None
            if room not in conn.rooms:
                if not direct and len(conn.rooms) - len(conn.directs) >= limit:
                    raise ChatError(ErrorCode.TOO_MANY_ROOMS, f"a connection may be in at most {limit} rooms")
                if limited:
                    self._take(conn.join_bucket, "too many joins: slow down")
                if direct and len(conn.directs) >= limit:
                    evicted = min(conn.directs, key=conn.directs.__getitem__)
                    self._leave_locally(conn, evicted)
            local = self._rooms.setdefault(room, LocalRoom())
            local.members[conn.sid] = user
            conn.rooms.add(room)
            if direct:
                conn.directs[room] = time.monotonic()
            held: Held = []
            local.joining[conn.sid] = held
            self._emitter.leave_room(conn.sid, room)  # a member joining again waits for its new ack too
            return local, held, local.cursor is not None, evicted

    def _place(
        self, local: LocalRoom, room: str, sid: str, joined: Joined
    ) -> Literal["new", "hosted", "moved", "gone"]:
        """Start the node's cursor at the store's position if the room is new here; "moved"
        when the store's epoch is not the node's; "gone" when the member left meanwhile."""
        with self._lock:
            if self._rooms.get(room) is not local or sid not in local.members:
                return "gone"
            local.members_count = joined.members_count
            if local.cursor is None:
                local.cursor = joined.position
                return "new"
            if joined.position.epoch != local.cursor.epoch:
                log.info("event=epoch_seen_on_join room=%s", q(room))
                return "moved"
            return "hosted"

    def _admit(self, sid: str, room: str, held: Held, bound: Position) -> None:
        """The ack is written: hand over what was held past its bound, then go live. Under
        the lock, so the listener delivers nothing between the two."""
        with self._lock:
            local = self._rooms.get(room)
            if local is None or local.joining.get(sid) is not held:
                return  # left meanwhile, or a newer join of the same member took over
            del local.joining[sid]
            for event, data, position in held:
                if position is not None and position.epoch == bound.epoch and position.seq <= bound.seq:
                    continue  # in the ack's history
                self._emitter.emit_to(sid, event, data)
            self._emitter.enter_room(sid, room)

    def _undo_presence(self, room: str, sid: str) -> None:
        try:
            self._presence.leave(room, sid)
        except BackendUnavailable as exc:
            log.warning("event=leave_unrecorded room=%s sid=%s error=%s", q(room), sid, q(exc))

    def _join_ack(self, room: str, req: JoinRequest, cursor: Position, joined: Joined) -> dict[str, Any]:
        recovering = req.since is not None
        try:
            if recovering and (req.epoch is None or req.epoch == cursor.epoch) and req.since <= cursor.seq:
                history = self._broker.history(room, after=req.since, upto=cursor.seq)
                recovered = history.complete and history.position.epoch == cursor.epoch
            else:
                history = self._broker.history(room, after=None, upto=cursor.seq)
                recovered = False
        except BackendUnavailable as exc:
            raise unavailable("could not read the room", exc) from None
        ack: dict[str, Any] = {
            "ok": True,
            "room": room,
            "seq": cursor.seq,
            "epoch": cursor.epoch,
            "members": list(joined.names),
            "members_count": joined.members_count,
            "history": [e.to_client() for e in history.envelopes if e.epoch == cursor.epoch]
            if recovered or not recovering
            else [],
        }
        if recovering:
            ack["recovered"] = recovered
            if recovered:
                with self._lock:
                    self.counters.recoveries_ok += 1
            else:
                with self._lock:
                    self.counters.recoveries_failed += 1
        return ack

    def leave(self, sid: str, room: str) -> dict[str, Any]:
        conn = self._connection(sid)
        if room not in conn.rooms:
            raise ChatError(ErrorCode.NOT_IN_ROOM, f"not a member of {room!r}")
        self._take(conn.leave_bucket, "too many leaves: slow down")
        self._leave(conn, room)
        return {"ok": True, "room": room}

    @staticmethod
    def _touch_direct(conn: Connection, room: str) -> None:
        """A direct conversation's activity here: the least active one makes way first."""
        if room in conn.directs:
            conn.directs[room] = time.monotonic()

    def _take(self, bucket: TokenBucket, message: str) -> None:
        """One of the connection's per-event rate limits: `rate_limited`, nothing done, past it.
        No lock but for the counter (sends are the hot path): `take` does no I/O, so under
        gevent nothing interleaves with it."""
        if bucket.take():
            return
        with self._lock:
            self.counters.rate_limited += 1
        raise ChatError(ErrorCode.RATE_LIMITED, message)

    def _leave_locally(self, conn: Connection, room: str) -> bool:
        """Drop the membership on this node; True when it was the room's last local member."""
        with self._lock:
            conn.rooms.discard(room)
            conn.directs.pop(room, None)
            self._emitter.leave_room(conn.sid, room)
            local = self._rooms.get(room)
            if local is None:
                return False
            local.members.pop(conn.sid, None)
            local.joining.pop(conn.sid, None)
            if local.members:
                return False
            del self._rooms[room]
            # Under the lock: a join arriving now must not have its subscription dropped.
            self._broker.unsubscribe(room)
        return True

    def _leave(self, conn: Connection, room: str, grace: bool = False) -> None:
        self._leave_locally(conn, room)
        self._record_leave(conn.sid, room, grace)

    def _record_leave(self, sid: str, room: str, grace: bool = False) -> None:
        try:
            deleted = self._presence.leave(room, sid, grace=grace)
        except BackendUnavailable as exc:
            # The entry expires with PRESENCE_TTL; the heartbeat no longer rewrites it.
            log.warning("event=leave_unrecorded room=%s sid=%s error=%s", q(room), sid, q(exc))
            return
        log.info("event=leave room=%s sid=%s room_deleted=%s", q(room), sid, deleted)

    # -- send ------------------------------------------------------------------------

    def send(self, sid: str, req: SendRequest, shed: bool = False) -> dict[str, Any]:
        """`shed`: the transport already drew this send against the load gauge."""
        conn = self._connection(sid)
        if req.room not in conn.rooms:
            raise ChatError(ErrorCode.NOT_IN_ROOM, f"join {req.room!r} before sending to it")
        self._take(conn.send_bucket, "too many messages: slow down")
        self._touch_direct(conn, req.room)
        sender = conn.user or clean_sender(req.sender) or self._rooms_user(req.room, sid)
        draft = Draft.new(req.room, sender, req.message, self.instance_id, req.key, self._clock, self._tokens.hex)
        started = time.perf_counter()
        try:
            envelope = self._publish(draft, shed)
        finally:
            self.observe_publish(time.perf_counter() - started)
        log.debug("event=send room=%s sid=%s seq=%d id=%s", q(req.room), sid, envelope.seq, q(envelope.id))
        self._reach_direct(envelope)
        return {"ok": True, **_ack(envelope)}

    def _publish(self, draft: Draft, shed: bool = False) -> Envelope:
        """Store and publish, with the protocol's answer when the node cannot. A node that runs
        behind refuses at once: accepting would only make this send, and every one already
        accepted, later."""
        if not shed and self.load.refuses():
            raise ChatError(ErrorCode.OVERLOADED, BEHIND)
        try:
            envelope = self._broker.send(draft)
        except Banned as exc:
            raise ChatError(ErrorCode.BANNED, f"{draft.sender!r} may not send to {draft.room!r}: {exc}") from None
        except Overloaded as exc:
            with self._lock:
                self.counters.queue_full += 1
            raise ChatError(ErrorCode.OVERLOADED, f"message not sent, the node is overloaded: {exc}") from None
        except BackendUnavailable as exc:
            raise unavailable("message not sent", exc) from None
        with self._lock:
            self.counters.published += 1
        return envelope

    def _reach_direct(self, envelope: Envelope) -> None:
        """A message stored in a direct conversation, from a member or the server API,
        reaches both users whether or not they opened it."""
        pair = direct_members(envelope.room)
        if pair is not None:
            args = (envelope.room, pair, envelope.timestamp)
            threading.Thread(target=self._join_everywhere, args=args, name="direct", daemon=True).start()

    def _join_everywhere(self, room: str, users: tuple[str, str], at: int) -> None:
        """Note the message in both users' lists of conversations, then every connection of
        both, on every node, joins the conversation (the server API's join command; members
        already in it are skipped), so it reaches someone who never opened it. Off the
        sender's ack: `room_joined`'s history carries the message. The list goes first, so a
        client that reads it on `room_joined` finds the conversation there."""
        try:
            self._presence.record_direct(room, users, at, self.settings.max_directs_per_user)
        except BackendUnavailable as exc:
            log.warning("event=direct_list_failed room=%s error=%s", q(room), q(exc))
        except Exception:
            log.exception("event=direct_list_error room=%s", q(room))
        for user in users:
            try:
                self.command(CommandAction.JOIN, user, room)
            except ChatError as exc:
                throttled.log(
                    logging.WARNING,
                    "direct_join_failed",
                    "event=direct_join_failed room=%s user=%s code=%s",
                    q(room),
                    q(user),
                    exc.code,
                )

    def typing(self, sid: str, room: str) -> None:
        """Tell the room's other members that this one is typing. Quiet by design: from a
        non-member, too soon after the last one, or in a big room it is dropped unanswered."""
        conn = self._connections.get(sid)
        now = time.monotonic()
        with self._lock:
            local = self._rooms.get(room)
            if conn is None or room not in conn.rooms or local is None or sid in local.joining:
                return
            if local.members_count > self.settings.presence_events_max_members:
                return
            if now - conn.typed.get(room, -TYPING_INTERVAL) < TYPING_INTERVAL:
                return
            conn.typed[room] = now
            user = local.members.get(sid) or "anonymous"
        self._broker.signal(TypingEvent(room, user, self.instance_id))

    # -- server API: posts and commands from outside the rooms ---------------------------

    def publish(self, req: PublishRequest) -> dict[str, Any]:
        """A post from a backend (HTTP): stored and delivered exactly as a member's send,
        under the sender it names; `instance_id` says it came through this node's API."""
        draft = Draft.new(
            req.room, req.sender, req.message, f"api:{self.instance_id}", req.key, self._clock, self._tokens.hex
        )
        envelope = self._publish(draft)
        log.debug("event=api_publish room=%s seq=%d id=%s", q(req.room), envelope.seq, q(envelope.id))
        self._reach_direct(envelope)
        return {"ok": True, **_ack(envelope)}

    def history_page(self, room: str, before: int | None, limit: int) -> dict[str, Any]:
        """Up to `limit` messages with seq < `before` (the newest without it), oldest first,
        of the room's current epoch only: "load older messages", within what it keeps."""
        upto = None if before is None else before - 1
        history = self._bounded(lambda: self._broker.history(room, after=None, upto=upto, limit=limit), "history")
        epoch = history.position.epoch
        messages = [e.to_client() for e in history.envelopes if e.epoch == epoch]
        return {"ok": True, "room": room, "epoch": epoch or None, "messages": messages}

    def rooms_page(self, cursor: str | None, limit: int) -> dict[str, Any]:
        try:
            page = self._bounded(lambda: self._presence.rooms(cursor, limit), "rooms")
        except ValueError as exc:
            raise ChatError(ErrorCode.INVALID_PAYLOAD, f"cursor: {exc}") from None
        rooms = [{"room": r.room, "members": r.members, "connections": r.connections} for r in page.rooms]
        return {"ok": True, "rooms": rooms, "cursor": page.cursor}

    def command(
        self,
        action: CommandAction,
        user: str,
        room: str | None = None,
        reason: str | None = None,
        ban_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Act on every connection of `user` on every node; within SEND_DEADLINE in all.
        A ban is stored before the leave goes out, so no node lets the user straight back."""
        started = time.monotonic()
        if action is CommandAction.LEAVE:
            assert room is not None
            if ban_seconds is not None:
                self._bounded(lambda: self._presence.ban(room, user, ban_seconds), "ban")
            reason = "banned" if ban_seconds is not None else "removed"
        left = self.settings.send_deadline - (time.monotonic() - started)
        try:
            result = self._broker.command(Command("", action, user, room, reason), left)
        except BackendUnavailable as exc:
            raise unavailable("command not sent", exc) from None
        return {"ok": True, "connections": result.connections, "nodes": result.nodes}

    def _bounded(self, call: Callable[[], Any], what: str) -> Any:
        try:
            return within(self.settings.send_deadline, call, what)
        except BackendUnavailable as exc:
            raise unavailable(f"{what} not read", exc) from None

    def _on_control(self, command: Command) -> int:
        """A command on a user, from this node's API, another node's or a ChatEmitter's: act
        on this node's connections of that user, as if each had asked itself; the count is
        this node's answer."""
        with self._lock:
            sids = sorted(self._users.get(command.user, ()))
        acted = 0
        for sid in sids:
            try:
                acted += self._act(command, sid)
            except ChatError as exc:
                throttled.log(
                    logging.INFO,
                    "command_refused",
                    "event=command_refused action=%s sid=%s code=%s",
                    command.action,
                    sid,
                    exc.code,
                )
        with self._lock:
            self.counters.commands += 1
        log.info("event=command_done action=%s room=%s connections=%d", command.action, q(command.room), acted)
        return acted

    def _act(self, command: Command, sid: str) -> bool:
        conn = self._connections.get(sid)
        if conn is None:
            return False  # disconnected meanwhile
        if command.action is CommandAction.DISCONNECT:
            self._emitter.emit_to(sid, "disconnected_by_server", {"reason": command.reason})
            self._emitter.disconnect(sid)
            return True
        room = command.room
        assert room is not None
        if command.action is CommandAction.LEAVE:
            if room not in conn.rooms:
                return False
            self._leave(conn, room)
            self._emitter.emit_to(sid, "room_left", {"room": room, "reason": command.reason})
            return True
        if room in conn.rooms:
            self._touch_direct(conn, room)  # a message in the conversation: it is active here
            return False  # a member already (or joining): nothing to tell it
        # The one join path, with its hand-over run after `room_joined` instead of the ack:
        # the event comes first, then what the room sent past its bound, then live messages.
        admit: list[Callable[[], None]] = []
        ack = self.join(sid, JoinRequest(room=room), after_ack=admit.append, limited=False)
        self._emitter.emit_to(sid, "room_joined", {k: ack[k] for k in ("room", "seq", "epoch", "history", "members")})
        for call in admit:
            call()
        return True

    def _rooms_user(self, room: str, sid: str) -> str:
        local = self._rooms.get(room)
        return (local.members.get(sid) if local else None) or "anonymous"

    # -- reads -----------------------------------------------------------------------

    def members(self, room: str) -> list[str]:
        return sorted(m.user for m in self._presence.members(room))

    def member_page(self, room: str, after: str | None, limit: int) -> dict[str, Any]:
        """A page of the room's member names, in name order: the full list of a big room."""
        count, names = self._bounded(lambda: self._presence.names(room, after, limit), "members")
        return {
            "ok": True,
            "room": room,
            "members_count": count,
            "members": names,
            "next_cursor": names[-1] if len(names) == limit else None,
        }

    def is_room_active(self, room: str) -> bool:
        return self._presence.is_active(room)

    def room_info(self, room: str, limit: int) -> dict[str, Any]:
        """The room's seq, how many users it has and the first `limit` of their names: one
        read of O(limit), since the route is open (members.lua read every connection)."""
        position, count, names = self._bounded(lambda: self._presence.summary(room, limit), "room")
        return {
            "room": room,
            "active": count > 0,
            "members": names,
            "members_count": count,
            "seq": position.seq if position else 0,
        }

    def local_rooms(self) -> dict[str, int]:
        with self._lock:
            return {room: len(local.members) for room, local in self._rooms.items()}

    def connection_count(self) -> int:
        return len(self._connections)

    def health(self) -> dict[str, bool]:
        return {**self._broker.healthy(), **self._presence.healthy()}

    def unreached(self) -> list[str]:
        return sorted({*self._broker.unreached(), *self._presence.unreached()})

    # -- delivery (called from the broker's listener only) ------------------------------

    def _on_envelope(self, envelope: Envelope) -> None:
        with self._lock:
            local = self._rooms.get(envelope.room)
            cursor = local.cursor if local else None
            if cursor is None:
                return  # not hosted here (or not yet): a join's catch-up covers it
            if envelope.epoch == cursor.epoch:
                if envelope.seq <= cursor.seq:
                    self.counters.duplicates_dropped += 1
                    return
                if envelope.seq == cursor.seq + 1:
                    self._deliver(local, envelope)
                    return
        self._catch_up(envelope.room)

    def _catch_up(self, room: str) -> None:
        """Deliver everything after this node's cursor from history, in order."""
        with self._lock:
            local = self._rooms.get(room)
            cursor = local.cursor if local else None
        if local is None or cursor is None:
            return
        try:
            history = self._broker.history(room, after=cursor.seq)
            continued = history.position.epoch == cursor.epoch or self._stream_kept(room, cursor)
            if history.position.epoch and not continued:
                history = self._broker.history(room, after=0)  # the new epoch, from its start
        except BackendUnavailable as exc:
            log.warning("event=catch_up_failed room=%s error=%s", q(room), q(exc))
            return
        position = history.position
        if not position.epoch:
            return  # the store has no stream for the room (yet); the heartbeat recreates it
        with self._lock:
            if self._rooms.get(room) is not local or local.cursor is None:
                return
            if position.epoch != local.cursor.epoch:
                self._start_epoch(room, local, history, continued)
            for envelope in history.envelopes:
                if envelope.seq > local.cursor.seq and (continued or envelope.epoch == position.epoch):
                    self._note_missing(room, local.cursor.seq, envelope.seq)
                    self.counters.gaps_filled += 1
                    self._deliver(local, envelope)
            if local.cursor.epoch == position.epoch and local.cursor.seq < position.seq:
                self._note_missing(room, local.cursor.seq, position.seq + 1)
                local.cursor = Position(position.epoch, position.seq)

    def _stream_kept(self, room: str, cursor: Position) -> bool:
        """The room has a new epoch: whether over the stream this node followed (a failover
        keeps it and its seqs go on: the messages after the cursor come in seq order, in
        whichever epochs they were sent) or over a new one (the store lost the room)."""
        if cursor.seq == 0:
            return False
        around = self._broker.history(room, after=cursor.seq - 1, upto=cursor.seq)
        return any(e.seq == cursor.seq and e.epoch == cursor.epoch for e in around.envelopes)

    def _start_epoch(self, room: str, local: LocalRoom, history: History, continued: bool) -> None:
        """A new epoch: over the stream this node followed (`continued`), the cursor's seq
        stays; over a new stream (the store lost the room), it is followed from its first
        stored message instead of waiting for seqs that will never come."""
        assert local.cursor is not None
        if continued:
            start = local.cursor.seq
        else:
            fresh = [e.seq for e in history.envelopes if e.epoch == history.position.epoch]
            start = fresh[0] - 1 if fresh else history.position.seq
        log.warning(
            "event=epoch_changed room=%s old=%s new=%s from_seq=%d",
            q(room),
            local.cursor.epoch,
            history.position.epoch,
            start + 1,
        )
        self.counters.epoch_changes += 1
        local.cursor = Position(history.position.epoch, start)

    def _note_missing(self, room: str, delivered: int, arriving: int) -> None:
        """Seqs between the last delivered and the one arriving are gone from history too:
        reported, never waited for."""
        missing = arriving - delivered - 1
        if missing > 0:
            self.counters.messages_lost += missing
            log.error("event=messages_lost room=%s from_seq=%d count=%d", q(room), delivered + 1, missing)

    def _deliver(self, local: LocalRoom, envelope: Envelope) -> None:
        local.cursor = Position(envelope.epoch, envelope.seq)
        self.counters.delivered += 1
        self._emit(local, envelope.room, "broadcast_message", envelope.to_client(), local.cursor)

    def _emit(
        self,
        local: LocalRoom,
        room: str,
        event: str,
        data: dict[str, Any],
        position: Position | None,
        skip: Collection[str] = (),
    ) -> None:
        """To the room's admitted members now, and held for those whose join is in flight,
        except the sids in `skip`. Called under the lock."""
        self._emitter.emit_room(event, data, room, skip)
        for sid, held in local.joining.items():
            if sid not in skip:
                held.append((event, data, position))

    def _on_presence(self, event: PresenceEvent | TypingEvent) -> None:
        if isinstance(event, TypingEvent):
            self._on_typing(event)
            return
        with self._lock:
            local = self._rooms.get(event.room)
            if local is not None:
                local.members_count = event.members_count
                # A member is never told of its own arrival or departure: it knows.
                own = [sid for sid, user in local.members.items() if user == event.user]
                self._emit(local, event.room, "presence", event.to_client(), None, own)

    def _on_typing(self, event: TypingEvent) -> None:
        """To the room's admitted members here, less the typer's own connections; never
        held for a join in flight (it is not recovered either)."""
        with self._lock:
            local = self._rooms.get(event.room)
            if local is None:
                return
            own = [sid for sid, user in local.members.items() if user == event.user]
            self._emitter.emit_room("typing", event.to_client(), event.room, own)

    def _count_rooms(self) -> None:
        """Every PRESENCE_COUNT_INTERVAL, tell the members of big rooms how many they are, if
        that changed: above PRESENCE_EVENTS_MAX_MEMBERS joins and leaves are not announced
        one by one. Each node tells its own members, so each gets at most one per interval."""
        limit = self.settings.presence_events_max_members
        while not self._stopping.wait(self.settings.presence_count_interval):
            with self._lock:
                rooms = [room for room, local in self._rooms.items() if local.members_count >= limit]
            try:
                counts = self._presence.counts(rooms)
            except BackendUnavailable as exc:
                log.warning("event=count_failed rooms=%d error=%s", len(rooms), q(exc))
                continue
            except Exception:
                log.exception("event=count_error")
                continue
            with self._lock:
                for room, count in counts.items():
                    local = self._rooms.get(room)
                    if local is None or count == local.count_told or max(count, local.count_told) <= limit:
                        continue
                    local.members_count = local.count_told = count
                    told = {"room": room, "action": "count", "user": None, "members_count": count}
                    self._emit(local, room, "presence", told, None)

    def _on_reconnected(self) -> None:
        """Presence events sent while we were away are lost: rewrite ours, resend the list."""
        self._presence.beat(rewrite=True)
        for room in list(self._rooms):
            try:
                count, names = self._presence.names(room, None, self.settings.presence_events_max_members)
            except BackendUnavailable as exc:
                log.warning("event=presence_sync_failed room=%s error=%s", q(room), q(exc))
                continue
            sync = {"room": room, "action": "sync", "user": None, "members_count": count, "members": names}
            with self._lock:
                local = self._rooms.get(room)
                if local is not None:
                    self._emit(local, room, "presence", sync, None)

    def _sizes(self) -> dict[str, int]:
        with self._lock:
            return {room: len(local.members) for room, local in self._rooms.items() if local.cursor is not None}

    def _snapshot(self, rooms: Collection[str]) -> dict[str, dict[str, str]]:
        with self._lock:
            found = ((room, self._rooms.get(room)) for room in rooms)
            joined = ((room, local) for room, local in found if local is not None and local.cursor is not None)
            return {room: dict(local.members) for room, local in joined}


def _ack(envelope: Envelope) -> dict[str, Any]:
    """What a sender is told of its stored message."""
    return {"id": envelope.id, "seq": envelope.seq, "epoch": envelope.epoch, "timestamp": envelope.timestamp}
