"""Prometheus metrics for one node, read at scrape time.

ChatService counts what matters in plain attributes and each backend exposes its own
counts through `stats()` (backends/stats.py); a custom Collector turns them into metrics
when /metrics is scraped, so the hot paths never touch prometheus-client. The only metric
observed as it happens is the publish latency. Each app gets its own CollectorRegistry:
two apps in one process (tests) never share series.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .backends.stats import (
    BrokerStats,
    BrokerStatsSource,
    ClusterStats,
    ListenerStats,
    PresenceStats,
    PresenceStatsSource,
)
from .service import ChatService
from .transport.fanout import WriteCounters

PUBLISH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def per_node(
    kind: type[CounterMetricFamily | GaugeMetricFamily], name: str, doc: str, instance: str, value: float
) -> Metric:
    """One family with this node's one sample."""
    metric = kind(name, doc, labels=["instance_id"])
    metric.add_metric([instance], value)
    return metric


class ChatCollector(Collector):
    """Reads the service's counters and what the backends expose (`stats()`) at each scrape."""

    def __init__(
        self,
        service: ChatService,
        broker: BrokerStatsSource,
        writes: WriteCounters | None,
        presence: PresenceStatsSource | None = None,
    ) -> None:
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
            yield per_node(GaugeMetricFamily, name, doc, s.instance_id, value)

    def _health(self) -> Metric:
        """/healthz's parts as a gauge: alerts see what the load balancer sees, no prober."""
        s = self._service
        health = GaugeMetricFamily(
            "chat_health", "1 while this /healthz part is ok, 0 while it fails.", labels=["instance_id", "part"]
        )
        for part, ok in sorted(s.health().items()):
            health.add_metric([s.instance_id, part], float(ok))
        return health

    def _service_counters(self) -> Iterator[Metric]:
        s = self._service
        c = s.counters
        instance = s.instance_id
        yield per_node(
            GaugeMetricFamily,
            "chat_connected_clients",
            "Socket.IO connections on this node.",
            instance,
            s.connection_count(),
        )
        yield self._health()
        yield per_node(
            GaugeMetricFamily,
            "chat_local_rooms",
            "Rooms with at least one member on this node.",
            instance,
            len(s.local_rooms()),
        )
        for name, doc, value in (
            ("chat_messages_published", "Messages this node stored and published.", c.published),
            ("chat_messages_delivered", "Room messages this node emitted to its members.", c.delivered),
            ("chat_duplicates_dropped", "Envelopes dropped because already delivered.", c.duplicates_dropped),
            ("chat_gaps_filled", "Envelopes delivered from history to fill a gap.", c.gaps_filled),
            ("chat_messages_lost", "Seqs that were gone from history when a gap was filled.", c.messages_lost),
            ("chat_epoch_changes", "Rooms found to have lost their data in the store.", c.epoch_changes),
        ):
            yield per_node(CounterMetricFamily, name, doc, instance, value)
        recoveries = CounterMetricFamily(
            "chat_recoveries", "Client joins with `since`, by outcome.", labels=["instance_id", "result"]
        )
        recoveries.add_metric([instance, "ok"], c.recoveries_ok)
        recoveries.add_metric([instance, "failed"], c.recoveries_failed)
        yield recoveries
        yield per_node(
            CounterMetricFamily,
            "chat_rate_limited",
            "Events refused by a per-connection rate limit.",
            instance,
            c.rate_limited,
        )
        yield from self._load()
        yield per_node(
            CounterMetricFamily,
            "chat_control_commands",
            "Server API commands on users (join, leave, disconnect) this node acted on.",
            instance,
            c.commands,
        )
        if self._writes is not None:  # gevent-websocket only
            frames = CounterMetricFamily(
                "chat_websocket_frames",
                "Frames sent to websocket clients: written at once, or queued behind a busy socket.",
                labels=["instance_id", "path"],
            )
            frames.add_metric([instance, "direct"], self._writes.direct)
            frames.add_metric([instance, "queued"], self._writes.queued)
            yield frames
            yield per_node(
                CounterMetricFamily,
                "chat_websocket_writes",
                "Send calls that wrote frames to websocket clients at once (frames direct / this: frames per send).",
                instance,
                self._writes.writes,
            )

    def _broker_stats(self, b: BrokerStats) -> Iterator[Metric]:
        instance = self._service.instance_id
        if b.publish_batches is not None:
            yield per_node(
                CounterMetricFamily,
                "chat_redis_publish_batches",
                "Round trips that stored and published sends; under load one carries several.",
                instance,
                b.publish_batches,
            )
        if b.batched_calls is not None and b.batched_round_trips is not None:
            yield per_node(
                CounterMetricFamily,
                "chat_redis_batched_calls",
                "Joins, leaves and history reads sent to Redis (the join path's scripts).",
                instance,
                b.batched_calls,
            )
            yield per_node(
                CounterMetricFamily,
                "chat_redis_batched_round_trips",
                "Round trips that carried them; a burst of joins shares few.",
                instance,
                b.batched_round_trips,
            )

    def _presence_stats(self, p: PresenceStats) -> Iterator[Metric]:
        instance = self._service.instance_id
        yield per_node(
            GaugeMetricFamily,
            "chat_presence_heartbeat_seconds",
            "How long the last presence heartbeat round took (renewing every room's entries).",
            instance,
            p.heartbeat_last_seconds,
        )
        yield per_node(
            CounterMetricFamily, "chat_presence_heartbeats", "Presence heartbeat rounds.", instance, p.heartbeat_rounds
        )
        yield per_node(
            CounterMetricFamily,
            "chat_presence_heartbeat_duration_seconds",
            "Time spent in presence heartbeat rounds (over chat_presence_heartbeats: the mean round).",
            instance,
            p.heartbeat_total_seconds,
        )
        yield per_node(
            CounterMetricFamily,
            "chat_presence_rooms_rewritten",
            "Rooms whose entries a heartbeat found lost from Redis and wrote again.",
            instance,
            p.rooms_rewritten,
        )

    def _listener_stats(self, listener: ListenerStats) -> Iterator[Metric]:
        instance = self._service.instance_id
        yield per_node(
            CounterMetricFamily,
            "chat_redis_reconnects",
            "Times the pub/sub listener reconnected.",
            instance,
            listener.reconnects,
        )
        yield per_node(
            CounterMetricFamily,
            "chat_redis_messages_received",
            "Room channel payloads taken from Redis (only rooms hosted here are subscribed).",
            instance,
            listener.received,
        )
        yield per_node(
            CounterMetricFamily,
            "chat_bad_payloads",
            "Payloads from Redis (room or control channel) that were not ours, dropped.",
            instance,
            listener.bad_payloads,
        )
        yield per_node(
            GaugeMetricFamily,
            "chat_redis_listener_connected",
            "1 while listening.",
            instance,
            float(listener.connected),
        )

    def _cluster_stats(self, cluster: ClusterStats) -> Iterator[Metric]:
        """Redis Cluster only: how the node follows the cluster's slot map."""
        instance = self._service.instance_id
        yield per_node(
            CounterMetricFamily,
            "chat_cluster_slot_map_refreshes",
            "Cluster clients whose slot map was rebuilt because the cluster's had changed.",
            instance,
            cluster.refreshes,
        )
        yield per_node(
            CounterMetricFamily,
            "chat_cluster_failovers_followed",
            "Changes of the cluster's slot map (a promotion, a failback, a reshard) this node followed.",
            instance,
            cluster.failovers,
        )
        yield per_node(
            GaugeMetricFamily,
            "chat_cluster_shards_down",
            "Shards that failed a call and have not answered since.",
            instance,
            cluster.shards_down,
        )
        shards = GaugeMetricFamily(
            "chat_cluster_subscriptions",
            "Live sharded subscriptions (SSUBSCRIBE) per shard.",
            labels=["instance_id", "shard"],
        )
        for shard, count in sorted(cluster.subscriptions.items()):
            shards.add_metric([instance, shard], count)
        yield shards

    def collect(self) -> Iterator[Metric]:
        yield from self._service_counters()
        broker = self._broker.stats()
        yield from self._broker_stats(broker)
        presence = self._presence.stats() if self._presence is not None else None
        if presence is not None:  # the Redis presence only
            yield from self._presence_stats(presence)
        if broker.listener is not None:  # the memory backend has no Redis connection to count
            yield from self._listener_stats(broker.listener)
        if broker.cluster is not None:
            yield from self._cluster_stats(broker.cluster)
        if self._service.hooks is not None:
            yield from self._hook_stats()

    def _hook_stats(self) -> Iterator[Metric]:
        assert self._service.hooks is not None
        h, instance = self._service.hooks.stats, self._service.instance_id
        for name, doc, value in (
            ("chat_hook_calls", "Decision hook calls made (HOOK_URL).", h.calls),
            ("chat_hook_refused", "Events a decision hook refused.", h.refused),
            ("chat_hook_failures", "Hook calls answered per HOOK_FAILURE: timeout, error, bad answer.", h.failures),
            ("chat_hook_saturated", "Hook calls not made: HOOK_CONCURRENCY calls were in flight.", h.saturated),
        ):
            yield per_node(CounterMetricFamily, name, doc, instance, value)


def build_registry(
    service: ChatService,
    broker: BrokerStatsSource,
    writes: WriteCounters | None = None,
    presence: PresenceStatsSource | None = None,
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
    app: Flask,
    service: ChatService,
    broker: BrokerStatsSource,
    writes: WriteCounters | None,
    presence: PresenceStatsSource | None = None,
) -> CollectorRegistry:
    """Serve GET /metrics from a registry of this app's own."""
    registry = build_registry(service, broker, writes, presence)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return registry
