"""A node's part of the archive, wired together: the pool, the reads its history falls through
to, and its writer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from ..logsafe import q
from ..settings import Settings
from .reads import ArchiveReads
from .store import DATABASE_ERRORS, ArchiveStore
from .webhook_outbox import WebhookOutbox
from .writer import ArchiveWriter

if TYPE_CHECKING:
    from ..hooks.webhooks import WebhookSender

log = logging.getLogger(__name__)


@dataclass
class NodeArchive:
    store: ArchiveStore
    reads: ArchiveReads
    writer: ArchiveWriter
    webhooks: WebhookSender | None = None  # WEBHOOK_URL

    @classmethod
    def build(cls, settings: Settings, client: redis.Redis, envelope_limit: int) -> NodeArchive:
        """Refuses (SchemaError) a schema this release does not know. A database that is away
        at start is only logged: sends do not need it, and the writer catches up."""
        assert settings.database_url
        store = ArchiveStore(settings.database_url, settings.archive_pool_size, webhooks=bool(settings.webhook_url))
        store.open()
        try:
            store.check_schema()
        except DATABASE_ERRORS as exc:
            log.warning("event=archive_unreachable_at_start error=%s", q(str(exc)))
        webhooks = None
        if settings.webhook_url:
            from ..hooks.webhooks import WebhookSender

            webhooks = WebhookSender(WebhookOutbox(store), settings)
        return cls(store, ArchiveReads(store, envelope_limit), ArchiveWriter(client, store, settings), webhooks)

    def start(self) -> None:
        self.writer.start()
        if self.webhooks is not None:
            self.webhooks.start()

    def stop(self) -> None:
        if self.webhooks is not None:
            self.webhooks.stop()
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
