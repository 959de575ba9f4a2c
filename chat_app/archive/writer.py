"""The node's archive writer: one thread (a greenlet under gevent) that moves messages from
the outbox into PostgreSQL in batches, behind the sends, which never wait for it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg
import redis

from ..backends.redis.connection import CONNECTION_ERRORS, describe
from ..logsafe import LogThrottle, q
from ..protocol.wire import BadEnvelope, decode_envelope
from ..settings import Settings
from .outbox import WEBHOOKS_TTL_MS, Backlog, Entry, Outbox
from .positions import put_back
from .room_events import BadOccupancyEvent, OccupancyEvent
from .schema import SchemaError
from .store import DATABASE_ERRORS, Archived, ArchiveStore

log = logging.getLogger(__name__)
throttled = LogThrottle(log, rate=0.2, burst=3)

BACKLOG_EVERY = 1.0
RETENTION_EVERY = 60.0
MARKER_EVERY = 1.0  # how often a writer looks for the marker (a Redis that restarted empty)
# After a batch under half ARCHIVE_BATCH, wait this long before the next read: under load the
# batches grow instead of each message costing its own round trips (Redis CPU per message).
LINGER = 0.1
BACKOFF = (0.2, 5.0)  # seconds: first and longest wait after the database refused a batch


@dataclass
class WriterStats:
    written: int = 0  # messages stored
    skipped: int = 0  # already stored (a retried or taken-over batch) or erased
    rejected: int = 0  # outbox entries that were neither a message nor a room's event: dropped
    events: int = 0  # rooms' and members' events read (webhooks: written with their batch)
    failures: int = 0  # batches the database refused
    taken_over: int = 0  # entries of a dead writer
    expired: int = 0  # deleted by retention
    backlog: Backlog = field(default_factory=lambda: Backlog(0, 0.0))
    database_ok: bool = True


class ArchiveWriter:
    def __init__(
        self,
        client: redis.Redis,
        store: ArchiveStore,
        settings: Settings,
    ) -> None:
        self._redis = client
        self._store = store
        self._settings = settings
        self._outbox = Outbox(client, settings.key_prefix, settings.instance_id, settings.archive_marker)
        self.observe_lag: Callable[[float], None] = lambda _seconds: None  # metrics set it
        self.stats = WriterStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, wait: float = 10.0) -> None:
        """Put room positions back first when Redis has none (a first start, or a Redis that
        restarted empty), for up to `wait` seconds, so the node does not refuse its first joins
        `unavailable`; then write in the background. A database away at start: the writer
        goes on trying, and rooms Redis still holds go on meanwhile."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if self._outbox.marked():
                    break
                self._seed()
            except (*DATABASE_ERRORS, *CONNECTION_ERRORS, SchemaError) as exc:
                log.warning("event=archive_positions_pending error=%s", q(describe(exc)))
                break
            time.sleep(0.05)  # another node holds the seeding lock: its marker comes soon
        self._thread = threading.Thread(target=self._run, name="archive-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    def healthy(self) -> bool:
        return self.stats.database_ok

    def _run(self) -> None:
        pending = True  # first, whatever this writer's id left unacknowledged
        backoff = BACKOFF[0]
        due = {
            "take_over": 0.0,
            "backlog": 0.0,
            "marker": 0.0,
            "webhooks": 0.0,
            "retention": time.monotonic() + RETENTION_EVERY,
        }
        while not self._stop.is_set():
            try:
                self._chores(due)
                entries, pending = self._next(due, pending)
                if entries:
                    self._write(entries)
                self.stats.database_ok = True
                backoff = BACKOFF[0]
                if len(entries) < self._settings.archive_batch // 2:
                    self._stop.wait(LINGER)
            except DATABASE_ERRORS as exc:
                self._refused(exc)
                pending = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF[1])
            except SchemaError as exc:
                self.stats.database_ok = False
                throttled.log(logging.ERROR, "schema", "event=archive_schema error=%s", q(str(exc)))
                self._stop.wait(BACKOFF[1])
            except CONNECTION_ERRORS as exc:
                throttled.log(logging.WARNING, "redis", "event=archive_redis_error error=%s", q(describe(exc)))
                pending = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF[1])
            except Exception:  # a writer that stops would let the outbox grow unseen
                log.exception("event=archive_writer_error")
                pending = True
                self._stop.wait(BACKOFF[1])

    def _chores(self, due: dict[str, float]) -> None:
        """What a writer does now and then: the marker, the webhooks flag, the backlog's
        reading, retention."""
        now = time.monotonic()
        if now >= due["marker"]:
            if not self._outbox.marked():
                self._seed()
            due["marker"] = now + MARKER_EVERY
        if self._store.webhooks and now >= due["webhooks"]:
            self._outbox.keep_webhooks_on()
            due["webhooks"] = now + WEBHOOKS_TTL_MS / 6000
        if now >= due["backlog"]:
            self.stats.backlog = self._outbox.backlog()
            due["backlog"] = now + BACKLOG_EVERY
        if now >= due["retention"]:
            self._expire()
            due["retention"] = now + RETENTION_EVERY

    def _next(self, due: dict[str, float], pending: bool) -> tuple[list[Entry], bool]:
        """The next batch: now and then a dead writer's, else this writer's own unacknowledged
        one while `pending`, else new entries. Returns it and whether to read pending next."""
        now = time.monotonic()
        batch = self._settings.archive_batch
        if now >= due["take_over"]:
            due["take_over"] = now + self._settings.archive_take_over_after / 3
            entries = self._outbox.take_over(int(self._settings.archive_take_over_after * 1000), batch)
            self.stats.taken_over += len(entries)
            return entries, pending
        entries = self._outbox.read(batch, 1000, pending)
        return entries, pending and bool(entries)

    def _refused(self, exc: BaseException) -> None:
        self.stats.failures += 1
        self.stats.database_ok = False
        throttled.log(
            logging.WARNING,
            "database",
            "event=archive_database_error backlog=%d error=%s",
            self.stats.backlog.entries,
            q(describe(exc)),
        )

    def _write(self, entries: list[Entry]) -> None:
        batch: list[Archived] = []
        events: list[OccupancyEvent] = []
        for entry_id, fields in entries:
            try:
                if (event := fields.get(b"w")) is not None:
                    events.append(OccupancyEvent.parse(entry_id, event))
                    continue
                raw = fields.get(b"e", b"")
                envelope = decode_envelope(raw, max_bytes=len(raw) + 1)
            except (BadEnvelope, BadOccupancyEvent) as exc:
                self.stats.rejected += 1
                throttled.log(logging.ERROR, "rejected", "event=archive_rejected error=%s", q(str(exc)))
                continue
            batch.append(Archived.of(envelope, raw.decode()))
        written = self._store_each(batch, events) if batch or events else 0
        self.stats.events += len(events)
        self._outbox.done([entry_id for entry_id, _ in entries])
        self.stats.written += written
        self.stats.skipped += len(batch) - written
        now = time.time()
        for m in batch:
            self.observe_lag(max(now - m.sent_at.timestamp(), 0.0))

    def _store_each(self, batch: list[Archived], events: Sequence[OccupancyEvent] = ()) -> int:
        """The batch in one transaction; if the database refuses a row of it for what it holds
        (not for being away), the events, then each message alone, and the ones it still
        refuses are dropped and counted: one bad row must not hold everything behind it."""
        try:
            return self._store.write(batch, events)
        except DATABASE_ERRORS:
            raise
        except psycopg.DatabaseError:
            written = 0
            if events:
                try:
                    self._store.write([], events)
                except DATABASE_ERRORS:
                    raise
                except psycopg.DatabaseError as exc:
                    self.stats.rejected += len(events)
                    throttled.log(logging.ERROR, "rejected", "event=archive_rejected error=%s", q(describe(exc)))
            for m in batch:
                try:
                    written += self._store.write([m])
                except DATABASE_ERRORS:
                    raise
                except psycopg.DatabaseError as exc:
                    self.stats.rejected += 1
                    throttled.log(
                        logging.ERROR,
                        "rejected",
                        "event=archive_rejected room=%s seq=%d error=%s",
                        q(m.room),
                        m.seq,
                        q(describe(exc)),
                    )
            return written

    def _seed(self) -> None:
        self._store.check_schema()
        self._outbox.ensure_group()
        if self._store.webhooks:  # before the marker: no room reopens before the flag is back
            self._outbox.keep_webhooks_on()
        s = self._settings
        put_back(self._redis, self._store, self._outbox, s.key_prefix, s.archive_position_ttl_ms)

    def _expire(self) -> None:
        days = self._settings.archive_retention_days
        if days is None or not self._redis.set(self._outbox.marker_key + ":retention", "1", nx=True, px=50_000):
            return
        while not self._stop.is_set() and (deleted := self._store.expire(days)):
            self.stats.expired += deleted
            self._stop.wait(0.05)  # short transactions, with room between them for the writers
