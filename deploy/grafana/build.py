"""Builds chat_app.json, the Grafana dashboard, from the panel list below.

Plain Python emitting JSON: the dashboard is a handful of timeseries and stat panels, which
a dashboards-as-code library would wrap without saving a line, and one less pinned
dependency keeps its output stable. `python deploy/grafana/build.py` rewrites the JSON;
tests/system/test_deploy_grafana.py fails when the committed file differs, and runs every query
below against a live Prometheus scraping two nodes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "chat_app.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    cluster_only: bool = False  # series exist only when the nodes use a Redis Cluster


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


ROWS: tuple[Row, ...] = (
    Row(
        "Is it up?",
        (
            Panel(
                "Nodes scraped",
                "Nodes Prometheus reaches (up == 1).",
                (('sum(up{job="chat_app"})', "nodes"),),
                kind="stat",
            ),
            Panel(
                "Health parts",
                "/healthz by part, per node: 1 ok, 0 failing (publisher, listener, presence).",
                (('min by (instance_id, part) (chat_health{job="chat_app"})', "{{instance_id}} {{part}}"),),
            ),
            Panel(
                "Connected clients per node",
                "Socket.IO connections (websocket and long-polling).",
                (('sum by (instance_id) (chat_connected_clients{job="chat_app"})', "{{instance_id}}"),),
            ),
            Panel(
                "Rooms per node",
                "Rooms with at least one member on the node.",
                (('sum by (instance_id) (chat_local_rooms{job="chat_app"})', "{{instance_id}}"),),
            ),
        ),
    ),
    Row(
        "Is it keeping up?",
        (
            Panel(
                "Sends and deliveries per second",
                "Messages stored and published (sends), and emitted to members (deliveries: one per member).",
                (
                    ('sum(rate(chat_messages_published_total{job="chat_app"}[1m]))', "sends/s"),
                    ('sum(rate(chat_messages_delivered_total{job="chat_app"}[1m]))', "deliveries/s"),
                ),
                unit="ops",
            ),
            Panel(
                "Publish latency p50 / p99",
                "Send to broker ack, over all nodes.",
                (
                    (
                        "histogram_quantile(0.5, sum by (le) "
                        '(rate(chat_publish_latency_seconds_bucket{job="chat_app"}[1m])))',
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) "
                        '(rate(chat_publish_latency_seconds_bucket{job="chat_app"}[1m])))',
                        "p99",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Load lag",
                "How far behind each node runs; shedding starts at OVERLOAD_LAG (0.04 s by default).",
                (('max by (instance_id) (chat_load_lag_seconds{job="chat_app"})', "{{instance_id}}"),),
                unit="s",
            ),
            Panel(
                "Shed share",
                "Share of new sends refused `overloaded` now; above 0 for long: add nodes.",
                (('max by (instance_id) (chat_load_shed_share{job="chat_app"})', "{{instance_id}}"),),
                unit="percentunit",
            ),
            Panel(
                "Presence heartbeat duration",
                "Last round per node; must stay well under HEARTBEAT_INTERVAL (10 s by default).",
                (('max by (instance_id) (chat_presence_heartbeat_seconds{job="chat_app"})', "{{instance_id}}"),),
                unit="s",
            ),
        ),
    ),
    Row(
        "Is it losing anything?",
        (
            Panel(
                "Lost messages",
                "Messages gone from history when a gap was filled: should stay 0.",
                (('sum by (instance_id) (increase(chat_messages_lost_total{job="chat_app"}[5m]))', "{{instance_id}}"),),
            ),
            Panel(
                "Gaps filled per second",
                "Messages delivered from history after a missed pub/sub message (reconnects, failovers).",
                (('sum by (instance_id) (rate(chat_gaps_filled_total{job="chat_app"}[1m]))', "{{instance_id}}"),),
                unit="ops",
            ),
            Panel(
                "Duplicates dropped per second",
                "Envelopes already delivered, dropped (normal around gap fills).",
                (
                    (
                        'sum by (instance_id) (rate(chat_duplicates_dropped_total{job="chat_app"}[1m]))',
                        "{{instance_id}}",
                    ),
                ),
                unit="ops",
            ),
            Panel(
                "Refused sends per second",
                "Sends refused `overloaded` (by reason) and `rate_limited`.",
                (
                    ('sum by (reason) (rate(chat_overloaded_total{job="chat_app"}[1m]))', "overloaded {{reason}}"),
                    ('sum(rate(chat_rate_limited_total{job="chat_app"}[1m]))', "rate_limited"),
                ),
                unit="ops",
            ),
        ),
    ),
    Row(
        "Is Redis healthy?",
        (
            Panel(
                "Listener connected",
                "1 while the node's pub/sub listener is connected.",
                (('min by (instance_id) (chat_redis_listener_connected{job="chat_app"})', "{{instance_id}}"),),
            ),
            Panel(
                "Redis reconnects",
                "Pub/sub listener reconnections in 5 minutes; a steady climb is a reconnect storm.",
                (
                    (
                        'sum by (instance_id) (increase(chat_redis_reconnects_total{job="chat_app"}[5m]))',
                        "{{instance_id}}",
                    ),
                ),
            ),
            Panel(
                "Cluster shards down",
                "Redis Cluster: shards that failed a call and have not answered since.",
                (('max by (instance_id) (chat_cluster_shards_down{job="chat_app"})', "{{instance_id}}"),),
                cluster_only=True,
            ),
            Panel(
                "Cluster subscriptions per shard",
                "Redis Cluster: live sharded subscriptions (SSUBSCRIBE) per shard.",
                (('sum by (shard) (chat_cluster_subscriptions{job="chat_app"})', "{{shard}}"),),
                cluster_only=True,
            ),
            Panel(
                "Cluster failovers followed",
                "Redis Cluster: slot-map changes (promotion, failback, reshard) followed in 15 minutes.",
                (
                    (
                        'sum by (instance_id) (increase(chat_cluster_failovers_followed_total{job="chat_app"}[15m]))',
                        "{{instance_id}}",
                    ),
                ),
                cluster_only=True,
            ),
        ),
    ),
    Row(
        "Is the archive keeping up?",
        (
            Panel(
                "Archive lag p50 / p99",
                "From a message's send to its row in PostgreSQL (DATABASE_URL).",
                (
                    (
                        "histogram_quantile(0.5, sum by (le) "
                        '(rate(chat_archive_lag_seconds_bucket{job="chat_app"}[1m])))',
                        "p50",
                    ),
                    (
                        "histogram_quantile(0.99, sum by (le) "
                        '(rate(chat_archive_lag_seconds_bucket{job="chat_app"}[1m])))',
                        "p99",
                    ),
                ),
                unit="s",
            ),
            Panel(
                "Messages waiting for the archive",
                "The outbox (the whole deployment's): grows while the database is away, drains after.",
                (('max(chat_archive_backlog{job="chat_app"})', "backlog"),),
            ),
            Panel(
                "Archive database up",
                "1 while the database takes the node's batches.",
                (('min by (instance_id) (chat_archive_database_up{job="chat_app"})', "{{instance_id}}"),),
            ),
            Panel(
                "Archived per second",
                "Messages written to the archive, all nodes.",
                (('sum(rate(chat_archive_written_total{job="chat_app"}[1m]))', "messages/s"),),
            ),
        ),
    ),
)

WIDTH = 6  # four panels per 24-column line
HEIGHT = 8


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
        for i, (expr, legend) in enumerate(panel.targets)
    ]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": HEIGHT, "w": WIDTH, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": targets,
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for row in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "panels": [],
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            }
        )
        next_id += 1
        y += 1
        for i, panel in enumerate(row.panels):
            if i and i % (24 // WIDTH) == 0:
                y += HEIGHT
            panels.append(panel_json(panel, next_id, (i % (24 // WIDTH)) * WIDTH, y))
            next_id += 1
        y += HEIGHT
    return {
        "uid": "chat-app",
        "title": "chat_app",
        "description": "One row per operator question; alert rules: deploy/prometheus/alerts.yml.",
        "tags": ["chat_app"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
