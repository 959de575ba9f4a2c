"""Prometheus metrics for one node, read at scrape time.

ChatService and the Redis broker already count what matters in plain attributes; a custom
Collector turns them into metrics when /metrics is scraped, so the hot paths never touch
prometheus-client. The only metric observed as it happens is the publish latency. Each
app gets its own CollectorRegistry: two apps in one process (tests) never share series.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .service import ChatService
from .transport.fanout import WriteCounters

PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ChatCollector(Collector):
    """Reads the service's and the broker's counters at each scrape."""

    def __init__(self, service: ChatService, broker: Any, writes: WriteCounters | None, presence: Any = None) -> None:
        self._service = service
        self._broker = broker
        self._writes = writes
        self._presence = presence

    def _load(self) -> Iterator[Metric]:
        s = self._service
        overloaded = CounterMetricFamily(
            "chat_overloaded", "Sends refused `overloaded`, by reason.", labels=["instance_id", "reason"]
        )
        overloaded.add_metric([s.instance_id, "behind"], s.load.refused)
        overloaded.add_metric([s.instance_id, "queue_full"], s.counters.queue_full)
        yield overloaded
        for name, doc, value in (
            ("chat_load_lag_seconds", "How far behind the node runs, smoothed (OVERLOAD_LAG).", s.load.lag),
            ("chat_load_shed_share", "The share of new sends the node refuses now.", s.load.share),
        ):
            g = GaugeMetricFamily(name, doc, labels=["instance_id"])
            g.add_metric([s.instance_id], value)
            yield g

    def _health(self) -> Metric:
        """/healthz's parts as a gauge: alerts see what the load balancer sees, no prober."""
        s = self._service
        health = GaugeMetricFamily(
            "chat_health", "1 while this /healthz part is ok, 0 while it fails.", labels=["instance_id", "part"]
        )
        for part, ok in sorted(s.health().items()):
            health.add_metric([s.instance_id, part], float(ok))
        return health

    def _cluster(self) -> Iterator[Metric]:
        """Redis Cluster only: how the node follows the cluster's slot map."""
        maps = getattr(self._broker, "slot_maps", None)
        if maps is None:
            return
        instance = self._service.instance_id
        for kind, name, doc, value in (
            (
                CounterMetricFamily,
                "chat_cluster_slot_map_refreshes",
                "Cluster clients whose slot map was rebuilt because the cluster's had changed.",
                maps.refreshes,
            ),
            (
                CounterMetricFamily,
                "chat_cluster_failovers_followed",
                "Changes of the cluster's slot map (a promotion, a failback, a reshard) this node followed.",
                maps.failovers,
            ),
            (
                GaugeMetricFamily,
                "chat_cluster_shards_down",
                "Shards that failed a call and have not answered since.",
                len(maps.down()),
            ),
        ):
            metric = kind(name, doc, labels=["instance_id"])
            metric.add_metric([instance], value)
            yield metric
        shards = GaugeMetricFamily(
            "chat_cluster_subscriptions",
            "Live sharded subscriptions (SSUBSCRIBE) per shard.",
            labels=["instance_id", "shard"],
        )
        for shard, count in sorted(self._broker.listener.subscriptions().items()):
            shards.add_metric([instance, shard], count)
        yield shards

    def collect(self) -> Iterator[Metric]:
        s = self._service
        c = s.counters
        labels = {"instance_id": s.instance_id}

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=list(labels))
            g.add_metric(list(labels.values()), value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=list(labels))
            m.add_metric(list(labels.values()), value)
            return m

        yield gauge("chat_connected_clients", "Socket.IO connections on this node.", s.connection_count())
        yield self._health()
        yield gauge("chat_local_rooms", "Rooms with at least one member on this node.", len(s.local_rooms()))
        yield counter("chat_messages_published", "Messages this node stored and published.", c.published)
        yield counter("chat_messages_delivered", "Room messages this node emitted to its members.", c.delivered)
        yield counter("chat_duplicates_dropped", "Envelopes dropped because already delivered.", c.duplicates_dropped)
        yield counter("chat_gaps_filled", "Envelopes delivered from history to fill a gap.", c.gaps_filled)
        yield counter("chat_messages_lost", "Seqs that were gone from history when a gap was filled.", c.messages_lost)
        yield counter("chat_epoch_changes", "Rooms found to have lost their data in the store.", c.epoch_changes)
        recoveries = CounterMetricFamily(
            "chat_recoveries", "Client joins with `since`, by outcome.", labels=[*labels, "result"]
        )
        recoveries.add_metric([s.instance_id, "ok"], c.recoveries_ok)
        recoveries.add_metric([s.instance_id, "failed"], c.recoveries_failed)
        yield recoveries
        yield counter("chat_rate_limited", "Events refused by a per-connection rate limit.", c.rate_limited)
        yield from self._load()
        yield counter(
            "chat_control_commands",
            "Server API commands on users (join, leave, disconnect) this node acted on.",
            c.commands,
        )

        if self._writes is not None:  # gevent-websocket only
            frames = CounterMetricFamily(
                "chat_websocket_frames",
                "Frames sent to websocket clients: written at once, or queued behind a busy socket.",
                labels=[*labels, "path"],
            )
            frames.add_metric([s.instance_id, "direct"], self._writes.direct)
            frames.add_metric([s.instance_id, "queued"], self._writes.queued)
            yield frames

        publisher = getattr(self._broker, "publisher", None)
        if publisher is not None:
            yield counter(
                "chat_redis_publish_batches",
                "Round trips that stored and published sends; under load one carries several.",
                publisher.batches,
            )

        batcher = getattr(self._broker, "batcher", None)
        if batcher is not None:
            yield counter(
                "chat_redis_batched_calls",
                "Joins, leaves and history reads sent to Redis (the join path's scripts).",
                batcher.calls,
            )
            yield counter(
                "chat_redis_batched_round_trips",
                "Round trips that carried them; a burst of joins shares few.",
                batcher.round_trips,
            )

        heartbeat = getattr(self._presence, "heartbeat", None)
        if heartbeat is not None:  # the Redis presence only
            yield gauge(
                "chat_presence_heartbeat_seconds",
                "How long the last presence heartbeat round took (renewing every room's entries).",
                heartbeat.last_seconds,
            )
            yield counter("chat_presence_heartbeats", "Presence heartbeat rounds.", heartbeat.rounds)
            yield counter(
                "chat_presence_heartbeat_duration_seconds",
                "Time spent in presence heartbeat rounds (over chat_presence_heartbeats: the mean round).",
                heartbeat.total_seconds,
            )
            yield counter(
                "chat_presence_rooms_rewritten",
                "Rooms whose entries a heartbeat found lost from Redis and wrote again.",
                heartbeat.rooms_rewritten,
            )

        listener = getattr(self._broker, "listener", None)
        if listener is not None:  # the memory backend has no Redis connection to count
            yield counter("chat_redis_reconnects", "Times the pub/sub listener reconnected.", listener.reconnects)
            yield counter(
                "chat_redis_messages_received",
                "Room channel payloads taken from Redis (only rooms hosted here are subscribed).",
                listener.received,
            )
            yield counter(
                "chat_bad_payloads",
                "Payloads from Redis (room or control channel) that were not ours, dropped.",
                listener.bad_payloads,
            )
            yield gauge("chat_redis_listener_connected", "1 while listening.", float(listener.connected))
        yield from self._cluster()


def build_registry(
    service: ChatService, broker: Any, writes: WriteCounters | None = None, presence: Any = None
) -> CollectorRegistry:
    """A registry for one app: the collector above plus the publish-latency histogram."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ChatCollector(service, broker, writes, presence))
    latency = Histogram(
        "chat_publish_latency_seconds",
        "Time to store and publish one message (send -> broker ack).",
        labelnames=["instance_id"],
        registry=registry,
        buckets=PUBLISH_BUCKETS,
    )
    service.observe_publish = latency.labels(service.instance_id).observe
    return registry


def register_metrics(
    app: Flask, service: ChatService, broker: Any, writes: WriteCounters | None, presence: Any = None
) -> CollectorRegistry:
    """Serve GET /metrics from a registry of this app's own."""
    registry = build_registry(service, broker, writes, presence)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return registry
