"""A node's part of the archive, wired together: the pool, the reads its history falls through
to, and its writer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from ..logsafe import q
from ..settings import Settings
from .reads import ArchiveReads
from .store import DATABASE_ERRORS, ArchiveStore
from .writer import ArchiveWriter

log = logging.getLogger(__name__)


@dataclass
class NodeArchive:
    store: ArchiveStore
    reads: ArchiveReads
    writer: ArchiveWriter

    @classmethod
    def build(cls, settings: Settings, client: redis.Redis, envelope_limit: int) -> NodeArchive:
        """Refuses (SchemaError) a schema this release does not know. A database that is away
        at start is only logged: sends do not need it, and the writer catches up."""
        assert settings.database_url
        store = ArchiveStore(settings.database_url, settings.archive_pool_size)
        store.open()
        try:
            store.check_schema()
        except DATABASE_ERRORS as exc:
            log.warning("event=archive_unreachable_at_start error=%s", q(str(exc)))
        return cls(store, ArchiveReads(store, envelope_limit), ArchiveWriter(client, store, settings))

    def start(self) -> None:
        self.writer.start()

    def stop(self) -> None:
        self.writer.stop()
        self.store.close()

    def status(self) -> dict[str, Any]:
        """/healthz's `archive`: informative only. A database that is away fails no send, so
        it must not take the node out of its load balancer."""
        s = self.writer.stats
        return {
            "database_ok": s.database_ok,
            "backlog": s.backlog.entries,
            "lag_seconds": round(s.backlog.oldest_age, 3),
        }
