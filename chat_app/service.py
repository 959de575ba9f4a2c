"""ChatService: the domain's front door. It keeps this node's connections and runs what a
connection asks: join (the one join path, with its hand-over), leave, send, typing, direct
conversations; and the node's lifecycle. It talks to the world only through a Broker, a
Presence and an Emitter.

What it hands on, each with its own state and lock:
- membership.py: which connections are in which room, a join's and a leave's bookkeeping;
- delivery.py: the delivery engine (cursors, catch-up, epochs, what is held for a join);
- presence_feed.py: presence and typing events, big rooms' counts, the departure sweep;
- server_commands.py: the server API's posts and commands (policy: commands.py, shared
  with ChatEmitter); room_reads.py: reads for acks and HTTP; expiry.py: token expiry.
Lock order: membership -> presence feed -> delivery engine. The service's own lock (the
connection registry, its counters) is never held while calling any of them.

About 470 lines, past the house's ~400: the one join path (join and its undo steps) reads
best whole, beside the connection registry it checks, and both stay here by design."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import commands
from .auth import Identity
from .backends.base import (
    Archive,
    BackendUnavailable,
    Banned,
    Broker,
    BrokerHooks,
    Draft,
    Joined,
    LocalRooms,
    Overloaded,
    Presence,
)
from .delivery import DeliveryCounters, DeliveryEngine
from .erasure import Erasure
from .expiry import TokenExpiry
from .load import LoadGauge
from .local_sockets import Emitter
from .logsafe import LogThrottle, q
from .membership import Connection, Membership
from .presence_feed import PresenceFeed
from .protocol import (
    ChatError,
    Envelope,
    ErrorCode,
    HistoryRequest,
    JoinRequest,
    OpenDirectRequest,
    SearchRequest,
    SendRequest,
    TypingEvent,
    clean_sender,
    direct_members,
    direct_room,
)
from .random_ids import RandomIds
from .ratelimit import TokenBucket
from .room_reads import RoomReads
from .server_commands import CommandCounters, ServerCommands
from .settings import Settings

if TYPE_CHECKING:
    from .hooks.decisions import DecisionHooks

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


# What a send refused by the load gauge is told, here and where the transport refuses it.
BEHIND = "message not sent, the node is running behind: send it again shortly"


@dataclass
class Counters(DeliveryCounters, CommandCounters):
    """The node's counter sheet (/metrics). The delivery engine and ServerCommands write
    their parts (the inherited fields) under their own locks; the fields below are written
    under the service's."""

    published: int = 0
    recoveries_ok: int = 0
    recoveries_failed: int = 0
    rate_limited: int = 0
    queue_full: int = 0  # sends refused `overloaded` because the publish queue was full


class ChatService:
    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        presence: Presence,
        emitter: Emitter,
        clock: Callable[[], float] = time.time,
        archive: Archive | None = None,
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
        self._users: dict[str, set[str]] = {}  # user -> this node's sids of theirs (server API)
        self.counters = Counters()
        self._stopped = False
        self._stopping = threading.Event()
        self.delivery = DeliveryEngine(broker, emitter, self.counters)
        self.feed = PresenceFeed(settings, presence, self.delivery, emitter, self._members_of)
        self.membership = Membership(settings, broker, self.delivery, self.feed, self._take)
        self._expiry = TokenExpiry(emitter, clock, self._expires_of, self._expiring)
        self.reads = RoomReads(broker, presence, settings.send_deadline, unavailable, archive)
        self.erasure = Erasure(archive, broker, self.instance_id, self.reads.bounded)
        deadline, keep = settings.send_deadline, settings.max_directs_per_user
        port = commands.NodePort(broker, presence, deadline, keep, unavailable)
        self.server = ServerCommands(self, port, emitter, self.instance_id, deadline, self.counters)
        self.load = LoadGauge(settings.overload_lag)
        self.observe_publish: Callable[[float], None] = lambda seconds: None  # metrics hook
        # HOOK_URL: the product's backend decides connects (the handler asks), joins and sends.
        self.hooks: DecisionHooks | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        d, feed = self.delivery, self.feed
        self._broker.start(
            BrokerHooks(d.on_envelope, feed.on_event, d.catch_up, feed.on_reconnected, self.server.on_control)
        )
        self._presence.start(LocalRooms(self.membership.sizes, self.membership.snapshot))
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
            sids = list(self._connections)
            self._connections.clear()
            self._users.clear()
        self.feed.stop()
        self._expiry.stop()
        rooms = self.membership.clear()
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

    def _members_of(self, room: str) -> dict[str, str] | None:
        return self.membership.members_of(room)

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
        members, stream, held, hosted, evicted = self.membership.start_joining(conn, room, user, limited)
        if evicted is not None:
            self._made_way(sid, evicted, room)
        # The channel is live before the presence write, so every presence event after the
        # names that write reads reaches this member (held until its ack). A room hosted here
        # is subscribed already: asking again would make the listener read its history to
        # catch up, once per join, on the one greenlet that delivers (a reconnect storm's
        # rejoins then delay every member's messages).
        if not hosted and not self._broker.subscribe(room).wait(self.settings.send_deadline):
            log.warning("event=subscribe_slow room=%s", q(room))
        joined = self._join_presence(conn, room, sid, user)
        placed = self.membership.place(members, stream, room, sid, joined)
        if placed == "gone":  # left or disconnected meanwhile: undo, keep no subscription
            self.membership.unsubscribe_if_left(room)
            self._undo_presence(room, sid)
            raise ChatError(ErrorCode.NOT_IN_ROOM, f"left {room!r} while joining it")
        if placed != "hosted":
            # New here: what the channel brought before the room had a cursor was dropped.
            # Moved (the store is in another epoch than the node): follow the new stream.
            self._broker.catch_up(room)
        bound = self.delivery.bound(stream)
        try:
            ack = self.reads.join_ack(room, req, bound, joined)
        except ChatError:
            self._leave(conn, room)
            raise
        self._count_recovery(ack)
        log.info("event=join room=%s sid=%s seq=%d", q(room), sid, bound.seq)
        admit = functools.partial(self.delivery.admit, sid, room, held, bound)
        if after_ack is None:
            admit()
        else:
            after_ack(admit)
        return ack

    def _made_way(self, sid: str, evicted: str, room: str) -> None:
        """A direct conversation left to make way for `room` (Membership.start_joining)."""
        self._record_leave(sid, evicted)
        self._emitter.emit_to(sid, "room_left", {"room": evicted, "reason": "idle"})
        log.info("event=direct_made_way room=%s sid=%s for_room=%s", evicted, sid, room)

    def _count_recovery(self, ack: dict[str, Any]) -> None:
        if "recovered" in ack:  # the client asked with `since`
            with self._lock:
                if ack["recovered"]:
                    self.counters.recoveries_ok += 1
                else:
                    self.counters.recoveries_failed += 1

    def _join_presence(self, conn: Connection, room: str, sid: str, user: str) -> Joined:
        """The presence write of a join; refused or failed, the membership here is undone."""
        try:
            return self._presence.join(room, sid, user)
        except BackendUnavailable as exc:
            self.membership.leave_locally(conn, room)
            raise unavailable("could not join", exc) from None
        except Banned as exc:
            self.membership.leave_locally(conn, room)
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
        hooked = self.hooks is not None and self._ask_join(sid, req.room, sender)
        return self.join(sid, req, sender, after_ack, limited=not hooked)

    def _ask_join(self, sid: str, room: str, sender: Any) -> bool:
        """The join hook, for a client's join of a room it is not in yet: its join rate is
        taken first (a flood of joins must not become a flood of calls). True when it
        allowed the join (whose rate is then taken)."""
        hooks, conn = self.hooks, self._connection(sid)
        if hooks is None or not hooks.on_join or room in conn.rooms:
            return False
        self._take(conn.join_bucket, "too many joins: slow down")
        hooks.join(conn.user or clean_sender(sender) or "anonymous", room)
        return True

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
        hooked = self.hooks is not None and self._ask_join(sid, room, None)
        join = JoinRequest(room=room, since=req.since, epoch=req.epoch)
        ack = self.join(sid, join, after_ack=after_ack, limited=not hooked)
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
        directs = self.reads.directs(user, self.settings.max_directs_per_user, conn.allows)
        return {"ok": True, "directs": directs}

    def history(self, sid: str, req: HistoryRequest) -> dict[str, Any]:
        """A member's page of older messages: Redis's window, then the archive, back to the
        room's first message. Costs like a search: a read beyond the window is a query."""
        self._member_read(sid, req.room)
        return self.reads.history_page(req.room, req.before, req.limit)

    def search(self, sid: str, req: SearchRequest) -> dict[str, Any]:
        """A member's search of a room it is in: a direct conversation only by its two users
        (the only ones who can join it), a fenced room only within the token's claim."""
        self._member_read(sid, req.room)
        return self.reads.search(req.room, req.q, req.limit)

    def _member_read(self, sid: str, room: str) -> None:
        """Reads of a room's past (pages, search) are its members' only, within SEARCH_RATE."""
        conn = self._connection(sid)
        if room not in conn.rooms:
            raise ChatError(ErrorCode.NOT_IN_ROOM, "join the room to read its past")
        if conn.search_bucket is None:
            conn.search_bucket = TokenBucket(self.settings.search_rate, self.settings.search_burst)
        self._take(conn.search_bucket, "too many history pages and searches: slow down")

    def _undo_presence(self, room: str, sid: str) -> None:
        try:
            self._presence.leave(room, sid)
        except BackendUnavailable as exc:
            log.warning("event=leave_unrecorded room=%s sid=%s error=%s", q(room), sid, q(exc))

    def leave(self, sid: str, room: str) -> dict[str, Any]:
        conn = self._connection(sid)
        if room not in conn.rooms:
            raise ChatError(ErrorCode.NOT_IN_ROOM, f"not a member of {room!r}")
        self._take(conn.leave_bucket, "too many leaves: slow down")
        self._leave(conn, room)
        return {"ok": True, "room": room}

    def _take(self, bucket: TokenBucket, message: str) -> None:
        """One of the connection's per-event rate limits: `rate_limited`, nothing done, past it.
        No lock but for the counter (sends are the hot path): `take` does no I/O, so under
        gevent nothing interleaves with it."""
        if bucket.take():
            return
        with self._lock:
            self.counters.rate_limited += 1
        raise ChatError(ErrorCode.RATE_LIMITED, message)

    def _leave(self, conn: Connection, room: str, grace: bool = False) -> None:
        self.membership.leave_locally(conn, room)
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
        sender = self._sender(sid, req)
        message, meta = req.message, None
        if self.hooks is not None and self.hooks.on_send:
            decision = self.hooks.send(sender, req.room, message)  # ChatError when refused
            message, meta = decision.message or message, decision.meta
        draft = self.draft(req.room, sender, message, self.instance_id, req.key, meta)
        started = time.perf_counter()
        try:
            envelope = self.store(draft, shed)
        finally:
            self.observe_publish(time.perf_counter() - started)
        return self._sent(sid, envelope)

    def _sender(self, sid: str, req: SendRequest) -> str:
        """Who sends `req`, once the connection may send to its room now (a member, within
        its rate)."""
        conn = self._connection(sid)
        if req.room not in conn.rooms:
            raise ChatError(ErrorCode.NOT_IN_ROOM, f"join {req.room!r} before sending to it")
        self._take(conn.send_bucket, "too many messages: slow down")
        conn.touch(req.room)
        return conn.user or clean_sender(req.sender) or self.membership.user_of(req.room, sid)

    def _refuse_if_behind(self, shed: bool) -> None:
        """A node that runs behind refuses a new send at once: accepting would only make it,
        and every one already accepted, later. `shed`: the transport drew it already."""
        if not shed and self.load.refuses():
            raise ChatError(ErrorCode.OVERLOADED, BEHIND)

    def _sent(self, sid: str, envelope: Envelope) -> dict[str, Any]:
        if log.isEnabledFor(logging.DEBUG):  # q() reads every character: not for a line never written
            log.debug("event=send room=%s sid=%s seq=%d id=%s", q(envelope.room), sid, envelope.seq, q(envelope.id))
        self.server.reach_direct(envelope)
        return {"ok": True, **commands.ack(envelope)}

    @property
    def sends_without_waiting(self) -> bool:
        """Whether `send_then` may be used: the broker publishes without a waiting sender,
        and no send hook (an HTTP call a send waits for) is configured."""
        return hasattr(self._broker, "send_then") and not (self.hooks is not None and self.hooks.on_send)

    def send_then(self, sid: str, req: SendRequest, done: Callable[[dict[str, Any]], None], shed: bool = False) -> None:
        """`send` for a caller that must not block (gevent's hub): what `send` refuses before
        the publish raises here, and the answer `send` would return (or the error it would
        raise, as ChatError) goes to `done`, called by the publisher once Redis answered.
        Only when `sends_without_waiting`."""
        draft = self.draft(req.room, self._sender(sid, req), req.message, self.instance_id, req.key, None)
        started = time.perf_counter()
        try:
            self._refuse_if_behind(shed)
        except ChatError:  # observed as `send` observes its refusals
            self.observe_publish(time.perf_counter() - started)
            raise

        def stored(outcome: Envelope | Exception) -> None:
            self.observe_publish(time.perf_counter() - started)
            try:
                envelope = self._stored(draft, outcome)
            except ChatError as exc:
                done({"ok": False, "error": exc.to_wire()})
                return
            done(self._sent(sid, envelope))

        try:
            self._broker.send_then(draft, stored)  # type: ignore[attr-defined]
        except Overloaded as exc:
            self.observe_publish(time.perf_counter() - started)
            self._stored(draft, exc)

    def store(self, draft: Draft, shed: bool = False) -> Envelope:
        """Store and publish, with the protocol's answer when the node cannot."""
        self._refuse_if_behind(shed)
        try:
            outcome: Envelope | Exception = self._broker.send(draft)
        except (Banned, Overloaded, BackendUnavailable) as exc:
            outcome = exc
        return self._stored(draft, outcome)

    def _stored(self, draft: Draft, outcome: Envelope | Exception) -> Envelope:
        """A publish's outcome as `store` answers it: the envelope, or the protocol's error."""
        if isinstance(outcome, Banned):
            raise ChatError(ErrorCode.BANNED, f"{draft.sender!r} may not send to {draft.room!r}: {outcome}") from None
        if isinstance(outcome, Overloaded):
            with self._lock:
                self.counters.queue_full += 1
            raise ChatError(ErrorCode.OVERLOADED, f"message not sent, the node is overloaded: {outcome}") from None
        if isinstance(outcome, BackendUnavailable):
            raise unavailable("message not sent", outcome) from None
        if isinstance(outcome, Exception):
            raise outcome
        with self._lock:
            self.counters.published += 1
        return outcome

    def typing(self, sid: str, room: str) -> None:
        """Tell the room's other members that this one is typing. Quiet by design: from a
        non-member, too soon after the last one, or in a big room it is dropped unanswered."""
        conn = self._connections.get(sid)
        user = self.membership.typist(conn, room) if conn is not None else None
        if user is not None:
            self._broker.signal(TypingEvent(room, user, self.instance_id))

    # What ServerCommands needs of the node (server_commands.Node).

    def connection_of(self, sid: str) -> Connection | None:
        return self._connections.get(sid)

    def sids_of(self, user: str) -> list[str]:
        with self._lock:
            return sorted(self._users.get(user, ()))

    def remove(self, conn: Connection, room: str) -> None:
        """Out of the room here and in presence, as a leave (the server API's)."""
        self._leave(conn, room)

    def draft(
        self,
        room: str,
        sender: str,
        message: str,
        instance_id: str,
        key: str | None,
        meta: dict[str, Any] | None = None,
    ) -> Draft:
        draft = Draft.new(room, sender, message, instance_id, key, self._clock, self._tokens.hex)
        return draft if meta is None else dataclasses.replace(draft, meta=meta)

    # -- reads of the node's own state ----------------------------------------------

    def local_rooms(self) -> dict[str, int]:
        return self.membership.local_rooms()

    def connection_count(self) -> int:
        return len(self._connections)

    def health(self) -> dict[str, bool]:
        return {**self._broker.healthy(), **self._presence.healthy()}

    def unreached(self) -> list[str]:
        return sorted({*self._broker.unreached(), *self._presence.unreached()})
