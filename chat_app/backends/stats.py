"""What a backend tells /metrics about itself: plain snapshots, so metrics.py reads numbers
the backend chose to expose instead of reaching into its parts. A field is None where the
backend has no such part (the memory backend has no Redis connection to count)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ListenerStats:
    reconnects: int
    received: int  # room channel payloads taken from Redis
    bad_payloads: int  # payloads (room or control channel) that were not ours, dropped
    connected: bool


@dataclass(frozen=True, slots=True)
class ClusterStats:
    refreshes: int  # clients whose slot map was rebuilt
    failovers: int  # changes of the cluster's slot map followed
    shards_down: int
    subscriptions: dict[str, int] = field(default_factory=dict)  # live SSUBSCRIBEs per shard


@dataclass(frozen=True, slots=True)
class BrokerStats:
    publish_batches: int | None = None  # round trips that stored and published sends
    batched_calls: int | None = None  # join-path scripts sent through the batcher
    batched_round_trips: int | None = None
    listener: ListenerStats | None = None
    cluster: ClusterStats | None = None  # Redis Cluster only


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """The heartbeat's work (the Redis presence only)."""

    heartbeat_rounds: int
    heartbeat_last_seconds: float
    heartbeat_total_seconds: float
    rooms_rewritten: int


class BrokerStatsSource(Protocol):
    def stats(self) -> BrokerStats: ...


class PresenceStatsSource(Protocol):
    def stats(self) -> PresenceStats | None: ...
