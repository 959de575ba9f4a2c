"""The webhook outbox's queries (table webhook_outbox, migration 0003): claim events in
order per room, then delete them once delivered, or put them back for a retry, or keep them
as failed for an operator's replay.

A claim holds a room's first events with a lease (next_at moved ahead), so no sender on any
node takes events of that room while it has them: a room's events go out one after another,
in (seq, pos, id) order: a message's events first among their seq's, then the room's and its
members' events in the outbox stream's order (migration 0004). A sender that dies lets its
lease run out and another node takes over from the room's first undelivered event (a
receiver may then see one event twice, with the same webhook-id).

Two nodes' archive writers commit their batches in whatever order they finish, so a room's
seq 16 can be in the table before its seq 15: an event is sent only once what comes before it
is archived (a message's previous seq; for a room's or member's event, the message of its
seq), or once it has waited GAP_WAIT for it: a message that never comes (a row PostgreSQL
refused, an outbox trimmed while the archive was down, an erased sender's) holds its room
back that long, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .store import ArchiveStore

# Seconds an event waits for what it follows (above): longer than two writers' batches can
# drift apart (linger 0.1 s, a commit), short enough that a message that never comes costs
# its room's webhooks only a pause.
GAP_WAIT = 5.0

# Rooms whose first pending event is due, then up to `per_room` events of each, in order;
# locked SKIP LOCKED, so two nodes claiming at once take different rooms. A row whose
# lease another sender set meanwhile fails the re-checked `next_at <= now()` and is skipped.
# A room's events in (seq, pos NULLS FIRST, id) order, as the pending index has them.
# `ready`: what the event follows is archived (or needs none: a deletion, a room's first
# message), or the event has waited GAP_WAIT for it.
_CANDIDATES = """
WITH heads AS (
    SELECT DISTINCT ON (room) room, next_at FROM webhook_outbox
    WHERE state = 'pending' ORDER BY room, seq, pos NULLS FIRST, id
), due AS (
    SELECT room FROM heads WHERE next_at <= now() LIMIT %(rooms)s
), ranked AS (
    SELECT w.id, row_number() OVER (PARTITION BY w.room ORDER BY w.seq, w.pos NULLS FIRST, w.id) AS n,
        (w.pos IS NULL AND w.type <> 'message.created')
        OR w.created_at <= now() - make_interval(secs => %(gap_wait)s)
        OR f.seq <= 0
        OR EXISTS (SELECT 1 FROM messages m WHERE m.room = w.room AND m.seq = f.seq) AS ready
    FROM webhook_outbox w JOIN due USING (room)
    -- the seq of the message it follows: a message's previous one, a room event's own seq's
    CROSS JOIN LATERAL (SELECT CASE WHEN w.pos IS NULL THEN w.seq - 1 ELSE w.seq END AS seq) f
    WHERE w.state = 'pending'
)
SELECT w.id, w.room, r.n, r.ready FROM webhook_outbox w JOIN ranked r USING (id)
WHERE r.n <= %(per_room)s AND w.state = 'pending' AND w.next_at <= now()
ORDER BY w.room, w.seq, w.pos NULLS FIRST, w.id
FOR UPDATE OF w SKIP LOCKED
"""


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    id: int
    webhook_id: str
    room: str
    type: str
    body: str
    attempts: int


class WebhookOutbox:
    def __init__(self, store: ArchiveStore) -> None:
        self._store = store

    def claim(self, rooms: int, per_room: int, lease: float) -> list[WebhookEvent]:
        """Up to `per_room` events of each of up to `rooms` rooms, each room's from its first
        undelivered one up to the first that is not ready (a room whose first one another
        sender holds is left out)."""
        with self._store._connection() as conn, conn.transaction():
            query = {"rooms": rooms, "per_room": per_room, "gap_wait": GAP_WAIT}
            found = conn.execute(_CANDIDATES, query).fetchall()
            taken: list[int] = []
            expected: dict[str, int] = {}
            for event_id, room, n, ready in found:  # a ready prefix of each room's order, or nothing
                if ready and n == expected.get(room, 1):
                    expected[room] = n + 1
                    taken.append(event_id)
            if not taken:
                return []
            rows = conn.execute(
                "UPDATE webhook_outbox SET next_at = now() + make_interval(secs => %s) WHERE id = ANY(%s)"
                " RETURNING id, webhook_id, room, seq, pos, type, body, attempts",
                (lease, taken),
            ).fetchall()
        rows.sort(key=lambda r: (r[2], r[3], r[4] is not None, r[4] or 0, r[0]))  # the claim's order
        return [WebhookEvent(i, w, room, kind, body, attempts) for i, w, room, _s, _p, kind, body, attempts in rows]

    def delivered(self, event_id: int) -> None:
        with self._store._connection() as conn:
            conn.execute("DELETE FROM webhook_outbox WHERE id = %s", (event_id,))

    def retry(self, event: WebhookEvent, error: str, wait: float, give_up: bool, rest: list[int]) -> None:
        """One more failed try: due again after `wait`, or kept as failed; the room's other
        claimed events are let go (due now: they follow once this one is out of the way)."""
        with self._store._connection() as conn, conn.transaction():
            conn.execute(
                "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = %s,"
                " state = %s, next_at = now() + make_interval(secs => %s) WHERE id = %s",
                (error[:500], "failed" if give_up else "pending", 0 if give_up else wait, event.id),
            )
            if rest:
                conn.execute("UPDATE webhook_outbox SET next_at = now() WHERE id = ANY(%s)", (rest,))

    def renew(self, ids: list[int], lease: float) -> bool:
        """The lease of claimed events still to send, moved ahead; False when one of them is
        gone (delivered by another sender, which took the room once the lease ran out)."""
        with self._store._connection() as conn:
            cur = conn.execute(
                "UPDATE webhook_outbox SET next_at = now() + make_interval(secs => %s)"
                " WHERE id = ANY(%s) AND state = 'pending'",
                (lease, ids),
            )
            return cur.rowcount == len(ids)

    def release(self, ids: list[int]) -> None:
        if ids:
            with self._store._connection() as conn:
                conn.execute("UPDATE webhook_outbox SET next_at = now() WHERE id = ANY(%s)", (ids,))

    def counts(self) -> dict[str, int]:
        with self._store._connection() as conn:
            rows = conn.execute("SELECT state, count(*) FROM webhook_outbox GROUP BY state").fetchall()
        return {"pending": 0, "failed": 0, **{state: int(n) for state, n in rows}}

    def failed(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._store._connection() as conn:
            rows = conn.execute(
                "SELECT webhook_id, type, room, attempts, last_error, created_at FROM webhook_outbox"
                " WHERE state = 'failed' ORDER BY id LIMIT %s",
                (limit,),
            ).fetchall()
        return [
            {"webhook_id": w, "type": t, "room": r, "attempts": a, "last_error": e, "created_at": c.isoformat()}
            for w, t, r, a, e, c in rows
        ]

    def replay(self) -> int:
        """Every failed event pending again, from its first try (same webhook-id)."""
        with self._store._connection() as conn:
            cur = conn.execute(
                "UPDATE webhook_outbox SET state = 'pending', attempts = 0, next_at = now(), last_error = NULL"
                " WHERE state = 'failed'"
            )
            return max(cur.rowcount, 0)
