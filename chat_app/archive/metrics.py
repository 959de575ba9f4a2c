"""The archive's metrics, read from its writer at scrape time, and the lag of each message
from its send to the database, observed as it is written."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..metrics import per_node
from .node import NodeArchive

LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class ArchiveCollector(Collector):
    def __init__(self, archive: NodeArchive, instance_id: str) -> None:
        self._archive = archive
        self._instance = instance_id

    def collect(self) -> Iterator[Metric]:
        s = self._archive.writer.stats
        for name, doc, value in (
            ("chat_archive_written", "Messages this node's writer stored in the archive.", s.written),
            ("chat_archive_skipped", "Messages already archived (a retried or taken-over batch) or erased.", s.skipped),
            ("chat_archive_rejected", "Outbox entries that were not a message or a room's event, dropped.", s.rejected),
            ("chat_archive_room_events", "Rooms' and members' webhook events this node's writer read.", s.events),
            ("chat_archive_failures", "Batches the database refused or did not answer in time.", s.failures),
            ("chat_archive_taken_over", "Outbox entries of a dead writer this node took over.", s.taken_over),
            ("chat_archive_expired", "Messages deleted by ARCHIVE_RETENTION_DAYS.", s.expired),
        ):
            yield per_node(CounterMetricFamily, name, doc, self._instance, value)
        for name, doc, value in (
            (
                "chat_archive_backlog",
                "Messages in the outbox, not yet in the database (whole deployment).",
                s.backlog.entries,
            ),
            ("chat_archive_backlog_age_seconds", "Age of the oldest message not yet archived.", s.backlog.oldest_age),
            ("chat_archive_database_up", "1 while the database takes this node's batches.", float(s.database_ok)),
        ):
            yield per_node(GaugeMetricFamily, name, doc, self._instance, value)
        if self._archive.webhooks is not None:
            yield from self._webhooks()

    def _webhooks(self) -> Iterator[Metric]:
        assert self._archive.webhooks is not None
        w = self._archive.webhooks.stats
        for name, doc, value in (
            ("chat_webhooks_delivered", "Webhook events this node delivered (2xx).", w.delivered),
            (
                "chat_webhooks_failed_tries",
                "Webhook tries that failed (non-2xx, timeout, no connection).",
                w.failed_tries,
            ),
            ("chat_webhooks_given_up", "Webhook events this node kept as failed after every try.", w.given_up),
        ):
            yield per_node(CounterMetricFamily, name, doc, self._instance, value)
        for name, doc, value in (
            ("chat_webhooks_pending", "Webhook events not yet delivered (whole deployment).", w.pending),
            ("chat_webhooks_failed", "Webhook events kept as failed, to replay (whole deployment).", w.failed),
        ):
            yield per_node(GaugeMetricFamily, name, doc, self._instance, value)


def register_archive_metrics(registry: CollectorRegistry, archive: NodeArchive, instance_id: str) -> None:
    registry.register(ArchiveCollector(archive, instance_id))
    lag = Histogram(
        "chat_archive_lag_seconds",
        "From a message's send to its row in the archive.",
        labelnames=["instance_id"],
        registry=registry,
        buckets=LAG_BUCKETS,
    )
    archive.writer.observe_lag = lag.labels(instance_id).observe
