"""The Redis clients of one deployment: a single URL, Sentinel or Cluster, with redis-py's Retry."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode
from redis.retry import Retry
from redis.sentinel import Sentinel

from ...settings import Settings
from .scripts import AnyRedis
from .topology import ClusterClient, SlotMaps

log = logging.getLogger(__name__)


def connection_options(settings: Settings, socket_timeout: float | None = None) -> dict[str, Any]:
    """For every connection to a data server; with Sentinel and Cluster, their credentials
    and TLS too (a single Redis has them in REDIS_URL)."""
    timeout = settings.redis_socket_timeout if socket_timeout is None else socket_timeout
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "health_check_interval": max(1, int(settings.heartbeat_interval)),
        **_credentials(settings.redis_username, settings.redis_password),
        **tls_options(settings),
    }


def _credentials(username: str | None, password: str | None) -> dict[str, Any]:
    return {k: v for k, v in (("username", username), ("password", password)) if v is not None}


def tls_options(settings: Settings) -> dict[str, Any]:
    """REDIS_TLS: verified against REDIS_TLS_CA_FILE (or the system's CAs), as
    REDIS_SSL_CERT_REQS says (default: required)."""
    if not settings.redis_tls:
        return {}
    options: dict[str, Any] = {"ssl": True, "ssl_cert_reqs": settings.redis_ssl_cert_reqs or "required"}
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    return options


def redis_client(
    settings: Settings, retry: Retry, pool_size: int | None = None, socket_timeout: float | None = None
) -> AnyRedis:
    """One client of the deployment's topology: a Cluster (REDIS_CLUSTER_NODES), Sentinel
    (REDIS_SENTINELS: its managed connections find the new master by themselves after a
    failover), or one REDIS_URL. `pool_size`: a bounded pool whose waiters give up after
    SEND_DEADLINE (commands shared by many greenlets)."""
    common = connection_options(settings, socket_timeout)
    sized: dict[str, Any] = {"max_connections": pool_size} if pool_size else {}
    if settings.redis_cluster_nodes:
        startup = [ClusterNode(host, port) for host, port in _host_ports(settings.redis_cluster_nodes)]
        return ClusterClient(startup_nodes=startup, retry=retry, **sized, **common)
    if settings.redis_sentinels:
        sentinel = Sentinel(
            _host_ports(settings.redis_sentinels),
            sentinel_kwargs={
                "socket_timeout": settings.redis_socket_timeout,
                "socket_connect_timeout": settings.redis_socket_timeout,
                **_credentials(settings.redis_sentinel_username, settings.redis_sentinel_password),
                **tls_options(settings),
            },
            **common,
        )
        return sentinel.master_for(settings.redis_sentinel_master, retry=retry, **sized)
    url = effective_redis_url(settings)
    if pool_size:
        pool = redis.BlockingConnectionPool.from_url(
            url, timeout=settings.send_deadline, retry=retry, **sized, **common
        )
        return redis.Redis(connection_pool=pool)
    return redis.Redis.from_url(url, retry=retry, **common)


def no_retry() -> Retry:
    """For connections whose owner has a retry loop (and a deadline) of its own."""
    return Retry(ExponentialWithJitterBackoff(), 0)


@dataclass(frozen=True)
class RedisClients:
    """Three connections with one job each: commands, the publisher, the subscriber."""

    commands: AnyRedis
    publisher: AnyRedis
    subscriber: AnyRedis
    shard_kwargs: dict[str, Any] | None = None  # cluster: how to open one shard's pub/sub connection
    slot_maps: SlotMaps | None = None  # cluster: the three clients' maps, followed through failovers

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisClients:
        commands_retry = Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), retries=3)
        clients = cls(
            commands=redis_client(settings, commands_retry, pool_size=16),
            publisher=redis_client(settings, no_retry()),  # these two have loops of their own
            subscriber=redis_client(settings, no_retry()),
        )
        if not settings.redis_cluster_nodes:
            return clients
        maps = SlotMaps(
            [clients.commands, clients.publisher, clients.subscriber],  # type: ignore[list-item]
            settings.cluster_check_interval,
            settings.probe_timeout,
        )
        return dataclasses.replace(
            clients, shard_kwargs={**connection_options(settings), "retry": no_retry()}, slot_maps=maps
        )


def _host_ports(addresses: list[str]) -> list[tuple[str, int]]:
    """`host:port` settings (checked by Settings) as (host, port) pairs."""
    return [(host, int(port)) for host, _, port in (a.rpartition(":") for a in addresses)]


def effective_redis_url(settings: Settings) -> str:
    """REDIS_URL with REDIS_SSL_CERT_REQS added to a rediss:// URL that does not say its own."""
    assert settings.redis_url is not None
    parts = urlsplit(settings.redis_url)
    if parts.scheme != "rediss" or not settings.redis_ssl_cert_reqs or "ssl_cert_reqs" in parse_qs(parts.query):
        return settings.redis_url
    query = "&".join(q for q in (parts.query, urlencode({"ssl_cert_reqs": settings.redis_ssl_cert_reqs})) if q)
    return urlunsplit(parts._replace(query=query))
