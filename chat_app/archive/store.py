"""The archive's queries. Every call takes a pooled connection for one statement or one
transaction; psycopg 3 waits on gevent's patched sockets, so a slow query parks only the
greenlet that made it (tests/system/test_archive.py shows it), never the hub."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from ..deadlines import green_deadline
from ..protocol.names import direct_members
from ..protocol.wire import Envelope
from .schema import check

if TYPE_CHECKING:
    from .room_events import OccupancyEvent

log = logging.getLogger(__name__)

# Errors that mean "the database is away or refused this now", not "this row is wrong".
DATABASE_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, psycopg.errors.QueryCanceled, PoolTimeout)


@dataclass(frozen=True, slots=True)
class Archived:
    """A message from the outbox, as the writer stores it."""

    room: str
    epoch: str
    seq: int
    id: str
    sender: str
    body: str
    sent_at: datetime
    envelope: str  # the JSON clients receive

    def data(self) -> str:
        """The envelope as members receive it (without the wire's `v` and `kind`), as JSON."""
        value = orjson.loads(self.envelope)
        value.pop("v", None)
        value.pop("kind", None)
        return orjson.dumps(value).decode()

    @classmethod
    def of(cls, envelope: Envelope, raw: str) -> Archived:
        """PostgreSQL's text holds no NUL, which a message may: one such message failed its
        whole batch, again and again, and held up every message behind it. The envelope keeps
        it (JSON escapes it); the searched `body` and `sender` columns get a space instead."""
        sent = datetime.fromtimestamp(envelope.timestamp / 1000, UTC)
        sender, body = envelope.sender.replace("\x00", " "), envelope.message.replace("\x00", " ")
        return cls(envelope.room, envelope.epoch, envelope.seq, envelope.id, sender, body, sent, raw)


def webhook_id(message_id: str, what: str) -> str:
    """Stable per event: every node that might write it (a retried batch) writes this one."""
    return f"msg_{message_id}_{what}"


def event_body(kind: str, at: datetime, data: str) -> str:
    """A webhook's body as Standard Webhooks lays it out: type, timestamp (ISO 8601), data."""
    return f'{{"type":"{kind}","timestamp":"{at.isoformat().replace("+00:00", "Z")}","data":{data}}}'


@dataclass(frozen=True, slots=True)
class RoomPosition:
    room: str
    epoch: str
    seq: int


# One statement per batch, the rows as arrays: a statement per row cost the node more than
# the rest of the writer (bench/README.md, "Archive").
_INSERT = """
INSERT INTO messages (room, epoch, seq, id, sender, body, sent_at, envelope)
SELECT m.* FROM unnest(
    %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::text[]
) AS m(room, epoch, seq, id, sender, body, sent_at, envelope)
WHERE NOT EXISTS (SELECT 1 FROM erasures e WHERE e.sender = m.sender AND e.erased_at >= m.sent_at)
ON CONFLICT DO NOTHING
"""
# With webhooks on, a message's `message.created` event is written by the statement that
# archives it, and only when it does: a retried or taken-over batch adds no second event.
_INSERT_WITH_EVENT = f"""
WITH m AS ({_INSERT} RETURNING id, room, seq)
INSERT INTO webhook_outbox (webhook_id, room, seq, type, body)
SELECT e.webhook_id, m.room, m.seq, 'message.created', e.body
FROM m JOIN unnest(%s::text[], %s::text[], %s::text[]) AS e(id, webhook_id, body) USING (id)
ON CONFLICT (webhook_id) DO NOTHING
"""
_EVENT = """
INSERT INTO webhook_outbox (webhook_id, room, seq, type, body) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (webhook_id) DO NOTHING
"""
# Rooms' and members' events (archive/room_events.py): their ids are their outbox entries',
# so a retried or taken-over batch adds none twice.
_OCCUPANCY = """
INSERT INTO webhook_outbox (webhook_id, room, seq, pos, type, body)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::text[], %s::text[])
ON CONFLICT (webhook_id) DO NOTHING
"""
# A room's newest position wins; an older batch (a taken-over one) never moves it back. Rows
# in key order: two writers updating the same rooms lock them in the same order (no deadlock).
_ROOMS = """
INSERT INTO rooms (room, epoch, seq, last_at)
SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[]) ORDER BY 1
ON CONFLICT (room) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq, last_at = excluded.last_at
WHERE rooms.last_at < excluded.last_at OR (rooms.epoch = excluded.epoch AND rooms.seq < excluded.seq)
"""
_DIRECTS = """
INSERT INTO directs (username, room, last_at)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) ORDER BY 1, 2
ON CONFLICT (username, room) DO UPDATE SET last_at = greatest(directs.last_at, excluded.last_at)
"""


class ArchiveStore:
    def __init__(self, url: str, pool_size: int, timeout: float = 5.0, webhooks: bool = False) -> None:
        # statement_timeout: a read that a join or an HTTP call waits on is bounded.
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True, "options": f"-c statement_timeout={int(timeout * 1000)}"},
            name="archive",
        )
        self.timeout = timeout
        self.webhooks = webhooks  # WEBHOOK_URL: writes and erasures also write their events

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection whose statements must finish within the timeout. The server's
        statement_timeout bounds a slow query; a database that stops answering altogether (a
        partition: the socket stays open, nothing comes back) is bounded here, by gevent's
        Timeout, and the connection, left mid-protocol, is closed so the pool drops it."""
        with self._pool.connection() as conn:
            deadline = green_deadline(self.timeout + 1)
            try:
                with deadline:
                    yield conn
            except BaseException as exc:
                if exc is not deadline:
                    raise
                conn.close()
                raise psycopg.OperationalError(f"the database did not answer within {self.timeout + 1:g} s") from None

    def open(self) -> None:
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    def check_schema(self) -> None:
        with self._connection() as conn:
            check(conn)

    def write(self, batch: Sequence[Archived], events: Sequence[OccupancyEvent] = ()) -> int:
        """Store a batch once: a message already there (a retried or taken-over batch) or
        from a user erased since is skipped. With webhooks on, the rooms' and members'
        events read with it are written in the same transaction. Returns the messages written."""
        rooms: dict[str, Archived] = {}
        directs: dict[tuple[str, str], datetime] = {}
        for m in batch:
            newest = rooms.get(m.room)
            if newest is None or (m.sent_at, m.seq) > (newest.sent_at, newest.seq):
                rooms[m.room] = m
            users = direct_members(m.room) if m.room.startswith("@") else None
            for user in users or ():
                directs[(user, m.room)] = max(directs.get((user, m.room), m.sent_at), m.sent_at)
        fields = ("room", "epoch", "seq", "id", "sender", "body", "sent_at", "envelope")
        columns: list[list[object]] = [[getattr(m, f) for m in batch] for f in fields]
        newest = sorted(rooms.values(), key=lambda m: m.room)
        ordered = sorted(directs.items())
        with self._connection() as conn, conn.transaction():
            if self.webhooks and events:
                names = ("webhook_id", "room", "seq", "pos", "type", "body")
                conn.execute(_OCCUPANCY, [[getattr(e, f) for e in events] for f in names])  # type: ignore[arg-type]
            if not batch:
                return 0
            if self.webhooks:
                ids = [m.id for m in batch]
                hooks = [webhook_id(m.id, "created") for m in batch]
                bodies = [event_body("message.created", m.sent_at, m.data()) for m in batch]
                written = conn.execute(_INSERT_WITH_EVENT, [*columns, ids, hooks, bodies]).rowcount  # type: ignore[arg-type]
            else:
                written = conn.execute(_INSERT, columns).rowcount  # type: ignore[arg-type]
            conn.execute(_ROOMS, [[getattr(m, f) for m in newest] for f in ("room", "epoch", "seq", "sent_at")])
            if ordered:
                conn.execute(
                    _DIRECTS, [[u for (u, _), _ in ordered], [r for (_, r), _ in ordered], [at for _, at in ordered]]
                )
        return max(written, 0)

    def page(self, room: str, before: int | None, limit: int, after: int = 0, epoch: str | None = None) -> list[str]:
        """Envelopes (JSON) of the room with seq in (after, before), the newest `limit`,
        oldest first; of one epoch only when it is given."""
        sql = "SELECT envelope FROM messages WHERE room = %s AND seq < %s AND seq > %s"
        args: list[object] = [room, before if before is not None else 2**62, after]
        if epoch is not None:
            sql += " AND epoch = %s"
            args.append(epoch)
        with self._connection() as conn:
            rows = conn.execute(sql + " ORDER BY seq DESC LIMIT %s", (*args, limit)).fetchall()  # type: ignore[arg-type]
        return [row[0] for row in reversed(rows)]

    def search(self, room: str, query: str, limit: int) -> list[str]:
        """Newest first: the room's messages matching a web-search style query."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT envelope FROM messages WHERE room = %s AND search @@ websearch_to_tsquery('simple', %s)"
                " ORDER BY seq DESC LIMIT %s",
                (room, query, limit),
            ).fetchall()
        return [row[0] for row in rows]

    def directs(self, user: str, limit: int) -> list[tuple[str, int, RoomPosition | None]]:
        """The user's direct conversations, newest first: (room, last message ms, position)."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT d.room, d.last_at, r.epoch, r.seq FROM directs d LEFT JOIN rooms r ON r.room = d.room"
                " WHERE d.username = %s ORDER BY d.last_at DESC LIMIT %s",
                (user, limit),
            ).fetchall()
        return [
            (room, int(at.timestamp() * 1000), RoomPosition(room, epoch, int(seq)) if epoch else None)
            for room, at, epoch, seq in rows
        ]

    def positions(self) -> Iterable[RoomPosition]:
        """Every room's last known position, streamed (a Redis that lost them gets them back)."""
        with self._pool.connection() as conn, conn.cursor(name="positions") as cur, conn.transaction():
            cur.itersize = 5000
            cur.execute("SELECT room, epoch, seq FROM rooms")
            for room, epoch, seq in cur:
                yield RoomPosition(room, epoch, int(seq))

    def expire(self, days: float, batch: int = 5000) -> int:
        """Delete one batch of messages older than `days` (short transactions, no table lock)."""
        with self._connection() as conn:
            cur = conn.execute(
                "DELETE FROM messages WHERE ctid = ANY(ARRAY(SELECT ctid FROM messages"
                " WHERE sent_at < now() - make_interval(secs => %s) LIMIT %s))",
                (days * 86400, batch),
            )
            return max(cur.rowcount, 0)

    def erase(self, user: str) -> list[tuple[str, int, str]]:
        """Forget a user's messages: (room, seq, id) of each one deleted; messages of theirs
        still on the way to the archive are refused by the erasure record."""
        with self._connection() as conn, conn.transaction():
            conn.execute(
                "INSERT INTO erasures (sender, erased_at) VALUES (%s, now())"
                " ON CONFLICT (sender) DO UPDATE SET erased_at = now()",
                (user,),
            )
            rows = conn.execute("DELETE FROM messages WHERE sender = %s RETURNING room, seq, id", (user,)).fetchall()
            if self.webhooks and rows:
                now = datetime.now(UTC)
                with conn.cursor() as cur:
                    cur.executemany(
                        _EVENT,
                        [
                            (
                                webhook_id(mid, "deleted"),
                                room,
                                seq,
                                "message.deleted",
                                event_body("message.deleted", now, orjson.dumps({"room": room, "id": mid}).decode()),
                            )
                            for room, seq, mid in rows
                        ],
                    )
        return [(room, int(seq), mid) for room, seq, mid in rows]
