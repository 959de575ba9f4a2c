"""ChatService: the domain. It knows this node's connections and which rooms they are in,
and runs what a connection asks: join (the one join path, with its hand-over), leave, send,
typing, direct conversations, and the server API's commands on users. It talks to the world
only through a Broker, a Presence and an Emitter.

What it hands on, each with its own state and lock: the delivery engine (delivery.py:
cursors, catch-up, epochs, what is held for a join in flight), the presence feed
(presence_feed.py: presence and typing events, big rooms' counts, the departure sweep),
token expiry (expiry.py), reads of rooms (room_reads.py) and the command policy it shares
with ChatEmitter (commands.py). Lock order: ChatService -> presence feed -> delivery engine."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from . import commands
from .auth import ALL_DIRECTS, Identity
from .backends.base import (
    BackendUnavailable,
    Banned,
    Broker,
    BrokerHooks,
    CommandResult,
    Draft,
    Joined,
    LocalRooms,
    Overloaded,
    Position,
    Presence,
    within,
)
from .delivery import DeliveryCounters, DeliveryEngine, Held, Stream
from .expiry import TokenExpiry
from .load import LoadGauge
from .local_sockets import Emitter
from .logsafe import LogThrottle, q
from .presence_feed import PresenceFeed
from .protocol import (
    ChatError,
    Command,
    CommandAction,
    Envelope,
    ErrorCode,
    JoinRequest,
    OpenDirectRequest,
    PublishRequest,
    SendRequest,
    TypingEvent,
    clean_sender,
    direct_members,
    direct_room,
)
from .ratelimit import TokenBucket
from .room_reads import RoomReads
from .settings import Settings
from .tokens import Tokens

__all__ = ["BEHIND", "ChatService", "Emitter", "throttled", "unavailable"]

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

# A room's members on this node: sid -> user, admitted or joining. The dict's identity is the
# room's stay here: a join that finds another dict under the room's name lost a race to a leave.
Members = dict[str, str]


@dataclass
class Counters(DeliveryCounters):
    """The node's counter sheet (/metrics). The delivery engine writes its part (the
    inherited fields) under its lock; the fields below are written under the service's."""

    published: int = 0
    recoveries_ok: int = 0
    recoveries_failed: int = 0
    rate_limited: int = 0
    queue_full: int = 0  # sends refused `overloaded` because the publish queue was full
    commands: int = 0  # server API commands on users this node acted on


class _NodePort:
    """The node's CommandPort (commands.py): its backends, errors as `unavailable`."""

    def __init__(self, broker: Broker, presence: Presence, settings: Settings) -> None:
        self._broker = broker
        self._presence = presence
        self._settings = settings

    def ban(self, room: str, user: str, seconds: int) -> None:
        try:
            within(self._settings.send_deadline, lambda: self._presence.ban(room, user, seconds), "ban")
        except BackendUnavailable as exc:
            raise unavailable("ban not stored", exc) from None

    def send(self, command: Command, deadline: float) -> CommandResult:
        try:
            return self._broker.command(command, deadline)
        except BackendUnavailable as exc:
            raise unavailable("command not sent", exc) from None

    def record_direct(self, room: str, users: tuple[str, str], at: int) -> None:
        self._presence.record_direct(room, users, at, self._settings.max_directs_per_user)


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
        self._tokens = Tokens()
        self._lock = threading.RLock()
        self._connections: dict[str, Connection] = {}
        self._rooms: dict[str, Members] = {}
        self._users: dict[str, set[str]] = {}  # user -> this node's sids of theirs (server API)
        self.counters = Counters()
        self._stopped = False
        self._stopping = threading.Event()
        self.delivery = DeliveryEngine(broker, emitter, self.counters)
        self.feed = PresenceFeed(settings, presence, self.delivery, emitter, self._members_of)
        self._expiry = TokenExpiry(emitter, clock, self._expires_of, self._expiring)
        self.reads = RoomReads(broker, presence, settings.send_deadline, unavailable)
        self._port = _NodePort(broker, presence, settings)
        self.load = LoadGauge(settings.overload_lag)
        self.observe_publish: Callable[[float], None] = lambda seconds: None  # metrics hook

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        d, feed = self.delivery, self.feed
        self._broker.start(BrokerHooks(d.on_envelope, feed.on_event, d.catch_up, feed.on_reconnected, self._on_control))
        self._presence.start(LocalRooms(self._sizes, self._snapshot))
        feed.start()
        self._expiry.start()

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
            self.feed.stop()
            self._expiry.stop()
            rooms = list(self._rooms)
            sids = list(self._connections)
            self.delivery.clear()
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
        if identity.expires is not None:  # off the lock: the expiry thread takes its lock, then ours
            self._expiry.note(identity.expires, sid, len(self._connections))
        log.info("event=connect sid=%s", sid)

    def _expires_of(self, sid: str) -> float | None:
        conn = self._connections.get(sid)
        return conn.expires if conn is not None else None

    def _expiring(self) -> list[tuple[float, str]]:
        with self._lock:
            return [(c.expires, c.sid) for c in self._connections.values() if c.expires is not None]

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
            self.feed.sweep_later(rooms)
        log.info("event=disconnect sid=%s rooms=%d", sid, len(rooms))

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

    def _members_of(self, room: str) -> Members | None:
        """For the presence feed: the room's members here (a copy), None when not hosted."""
        with self._lock:
            members = self._rooms.get(room)
            return dict(members) if members is not None else None

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
        emitter's room: everything delivered meanwhile is held for it (delivery.hold), and
        whatever of that the ack's history covers (seq <= B) is dropped, so history and live
        messages never overlap, never reorder and leave no gap, whatever the round trips let
        through.

        `limited=False`: a join the server API asked for, which the connection's join rate
        does not apply to (every other check does)."""
        conn = self._connection(sid)
        room = req.room
        user = conn.user or clean_sender(sender) or "anonymous"
        pair = direct_members(room)
        if pair is not None and conn.user not in pair:
            raise ChatError(ErrorCode.FORBIDDEN_ROOM, f"{room!r} is a direct conversation of others")
        members, stream, held, hosted, evicted = self._start_joining(conn, room, user, limited)
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
        joined = self._join_presence(conn, room, sid, user)
        placed = self._place(members, stream, room, sid, joined)
        if placed == "gone":  # left or disconnected meanwhile: undo, keep no subscription
            with self._lock:
                if room not in self._rooms:
                    self._broker.unsubscribe(room)
            self._undo_presence(room, sid)
            raise ChatError(ErrorCode.NOT_IN_ROOM, f"left {room!r} while joining it")
        if placed != "hosted":
            # New here: what the channel brought before the room had a cursor was dropped.
            # Moved (the store is in another epoch than the node): follow the new stream.
            self._broker.catch_up(room)
        bound = self.delivery.bound(stream)
        try:
            ack = self._join_ack(room, req, bound, joined)
        except ChatError:
            self._leave(conn, room)
            raise
        log.info("event=join room=%s sid=%s seq=%d", q(room), sid, bound.seq)
        admit = functools.partial(self.delivery.admit, sid, room, held, bound)
        if after_ack is None:
            admit()
        else:
            after_ack(admit)
        return ack

    def _join_presence(self, conn: Connection, room: str, sid: str, user: str) -> Joined:
        """The presence write of a join; refused or failed, the membership here is undone."""
        try:
            return self._presence.join(room, sid, user)
        except BackendUnavailable as exc:
            self._leave_locally(conn, room)
            raise unavailable("could not join", exc) from None
        except Banned as exc:
            self._leave_locally(conn, room)
            raise ChatError(ErrorCode.FORBIDDEN_ROOM, f"you may not join {room!r}: {exc}") from None

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
        found = self.reads.bounded(lambda: self._presence.directs(user, limit), "directs")
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
    ) -> tuple[Members, Stream, Held, bool, str | None]:
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
            members = self._rooms.get(room)
            if members is None:
                members = self._rooms[room] = {}
                self.feed.track(room)
            members[conn.sid] = user
            conn.rooms.add(room)
            if direct:
                conn.directs[room] = time.monotonic()
            stream, held, hosted = self.delivery.hold(room, conn.sid)
            return members, stream, held, hosted, evicted

    def _place(
        self, members: Members, stream: Stream, room: str, sid: str, joined: Joined
    ) -> Literal["new", "hosted", "moved", "gone"]:
        """The room's cursor and users count from the join's read; "gone" when the member
        left meanwhile (see delivery.place for the rest)."""
        with self._lock:
            if self._rooms.get(room) is not members or sid not in members:
                return "gone"
            self.feed.note_count(room, joined.members_count)
            return self.delivery.place(room, stream, joined.position)

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
            with self._lock:
                if recovered:
                    self.counters.recoveries_ok += 1
                else:
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
            members = self._rooms.get(room)
            if members is not None:
                members.pop(conn.sid, None)
            last = members is not None and not members
            self.delivery.release(room, conn.sid, last)
            if not last:
                return False
            del self._rooms[room]
            self.feed.forget(room)
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

    # -- send, typing ----------------------------------------------------------------

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
        return {"ok": True, **commands.ack(envelope)}

    def _publish(self, draft: Draft, shed: bool = False) -> Envelope:
        """Store and publish, with the protocol's answer when the node cannot. A node that runs
        behind refuses at once: accepting would only make this send, and every one already
        accepted, later."""
        if not shed and self.load.refuses():
            raise ChatError(ErrorCode.OVERLOADED, BEHIND)
        try:
            envelope = self._broker.publish(draft)
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
        """A message stored in a direct conversation reaches both users (commands.py), on a
        thread of its own: off the sender's ack, `room_joined`'s history carries the message."""
        if direct_members(envelope.room) is not None:
            args = (self._port, envelope, self.settings.send_deadline)
            threading.Thread(target=commands.reach_direct, args=args, name="direct", daemon=True).start()

    def typing(self, sid: str, room: str) -> None:
        """Tell the room's other members that this one is typing. Quiet by design: from a
        non-member, too soon after the last one, or in a big room it is dropped unanswered."""
        conn = self._connections.get(sid)
        now = time.monotonic()
        with self._lock:
            members = self._rooms.get(room)
            if conn is None or room not in conn.rooms or members is None or self.delivery.joining(room, sid):
                return
            if self.feed.is_big(room):
                return
            if now - conn.typed.get(room, -TYPING_INTERVAL) < TYPING_INTERVAL:
                return
            conn.typed[room] = now
            user = members.get(sid) or "anonymous"
        self._broker.signal(TypingEvent(room, user, self.instance_id))

    def _rooms_user(self, room: str, sid: str) -> str:
        members = self._rooms.get(room)
        return (members.get(sid) if members else None) or "anonymous"

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
        return {"ok": True, **commands.ack(envelope)}

    def command(
        self,
        action: CommandAction,
        user: str,
        room: str | None = None,
        reason: str | None = None,
        ban_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Act on every connection of `user` on every node; within SEND_DEADLINE in all
        (the policy, a leave's ban first: commands.run)."""
        deadline = self.settings.send_deadline
        result = commands.run(self._port, action, user, room, reason, ban_seconds, deadline=deadline)
        return commands.answer(result)

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
        self._emitter.emit_to(sid, "room_joined", commands.room_joined(ack))
        for call in admit:
            call()
        return True

    # -- reads (room_reads.py; the HTTP modules call them here) -----------------------

    def history_page(self, room: str, before: int | None, limit: int) -> dict[str, Any]:
        return self.reads.history_page(room, before, limit)

    def rooms_page(self, cursor: str | None, limit: int) -> dict[str, Any]:
        return self.reads.rooms_page(cursor, limit)

    def members(self, room: str) -> list[str]:
        return self.reads.members(room)

    def member_page(self, room: str, after: str | None, limit: int) -> dict[str, Any]:
        return self.reads.member_page(room, after, limit)

    def is_room_active(self, room: str) -> bool:
        return self.reads.is_room_active(room)

    def room_info(self, room: str, limit: int) -> dict[str, Any]:
        return self.reads.room_info(room, limit)

    def local_rooms(self) -> dict[str, int]:
        with self._lock:
            return {room: len(members) for room, members in self._rooms.items()}

    def connection_count(self) -> int:
        return len(self._connections)

    def health(self) -> dict[str, bool]:
        return {**self._broker.healthy(), **self._presence.healthy()}

    def unreached(self) -> list[str]:
        return sorted({*self._broker.unreached(), *self._presence.unreached()})

    # -- what the presence heartbeat reads (LocalRooms) -------------------------------

    def _sizes(self) -> dict[str, int]:
        with self._lock:
            return {room: len(members) for room, members in self._rooms.items() if self.delivery.hosted(room)}

    def _snapshot(self, rooms: Collection[str]) -> dict[str, dict[str, str]]:
        with self._lock:
            found = ((room, self._rooms.get(room)) for room in rooms)
            joined = ((room, m) for room, m in found if m is not None and self.delivery.hosted(room))
            return {room: dict(members) for room, members in joined}
