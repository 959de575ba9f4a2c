"""The outbox: a Redis Stream that send.lua appends every message to, in the same atomic step
that gives it its seq (field `e`), and the presence scripts, while webhooks are on, each
room's occupancy and each member's arrival and departure (field `w`,
archive/room_events.py). Every node's writer reads it through one consumer group, so each
entry goes to one writer; an entry is acknowledged (and deleted) only once the database has
it, and a writer that dies leaves its entries pending for another to take over."""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from ..backends.redis.keys import archive_key

GROUP = "archive"
WEBHOOKS_TTL_MS = 30_000  # of the webhooks flag (ARCHIVE_KEY:webhooks): writers renew it

Entry = tuple[bytes, dict[bytes, bytes]]  # (entry id, fields)


@dataclass(frozen=True, slots=True)
class Backlog:
    entries: int  # in the outbox: not yet in the database
    oldest_age: float  # seconds since the oldest of them was sent (0 when none)


class Outbox:
    def __init__(self, client: redis.Redis, prefix: str, consumer: str, marker: str) -> None:
        self._redis = client
        self.marker_key = archive_key(prefix)
        self.key = self.marker_key + ":outbox"
        self._consumer = consumer
        self._marker = marker

    def ensure_group(self) -> None:
        """From the start of the stream: whatever was added before any writer ran is archived."""
        try:
            self._redis.xgroup_create(self.key, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_ms: int, pending: bool) -> list[Entry]:
        """(entry id, fields) pairs: this writer's own unacknowledged entries when `pending`
        (a batch the database refused), else new ones."""
        try:
            reply = self._redis.xreadgroup(
                GROUP,
                self._consumer,
                {self.key: "0" if pending else ">"},
                count=count,
                block=None if pending else block_ms,
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # Redis lost the stream (a restart, a flush)
            return []
        return [(entry_id, fields or {}) for _key, entries in reply or () for entry_id, fields in entries]

    def take_over(self, idle_ms: int, count: int) -> list[Entry]:
        """Entries another writer read and never acknowledged for `idle_ms`: it died."""
        try:
            _next, entries, *_ = self._redis.xautoclaim(self.key, GROUP, self._consumer, idle_ms, "0-0", count=count)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return []
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    def done(self, ids: list[bytes]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xack(self.key, GROUP, *ids)
        pipe.xdel(self.key, *ids)
        pipe.execute()

    def backlog(self) -> Backlog:
        pipe = self._redis.pipeline(transaction=False)
        pipe.xlen(self.key)
        pipe.xrange(self.key, count=1)
        length, first = pipe.execute()
        if not first:
            return Backlog(int(length), 0.0)
        ms = int(first[0][0].split(b"-")[0])
        return Backlog(int(length), max(time.time() - ms / 1000, 0.0))

    def marked(self) -> bool:
        return bool(self._redis.exists(self.marker_key))

    def mark(self) -> None:
        self._redis.set(self.marker_key, self._marker)

    def keep_webhooks_on(self) -> None:
        """The presence scripts write rooms' and members' events while this key lives: a
        deployment without webhooks pays for none of them (prelude.lua `webhooks_on`)."""
        self._redis.set(self.marker_key + ":webhooks", b"1", px=WEBHOOKS_TTL_MS)
