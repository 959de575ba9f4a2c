"""The listener on a Redis Cluster: one sharded pub/sub connection (SSUBSCRIBE) per shard
that holds a channel this node wants, all owned by the one listener greenlet.

A room's traffic stays on its shard (SPUBLISH), so a node opens connections only to the
shards of rooms it hosts. Each connection fails and is rebuilt on its own, with backoff;
its rooms catch up from history once re-subscribed. An idle connection is probed with
PING, which must come back as a pong within PROBE_TIMEOUT.

After a failover the SlotMaps (topology.py) rebuild the map and wake the listener, which
moves each room to the shard that now holds its slot: a failed shard's connection is
dropped, and a shard that lost a slot (a graceful failover demotes its master, which then
unsubscribes the slot's channels itself) keeps no subscription there.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import RedisCluster

from ...logsafe import q
from ...settings import Settings
from .connection import CONNECTION_ERRORS, describe
from .listener import POLL, Deaf, Listener, _socket, as_is
from .topology import SlotMaps

log = logging.getLogger(__name__)


@dataclass
class _Shard:
    name: str
    host: str
    port: int
    pubsub: redis.client.PubSub | None = None
    asked: set[bytes] = field(default_factory=set)
    confirmed: set[bytes] = field(default_factory=set)
    failures: int = 0
    retry_at: float = 0.0
    last_rx: float = field(default_factory=time.monotonic)
    ping_sent: float | None = None


class ShardedListener(Listener):
    def __init__(
        self, cluster: RedisCluster, connection_kwargs: dict[str, Any], settings: Settings, maps: SlotMaps | None
    ) -> None:
        # The base class uses the cluster client only to find each channel's shard; the
        # publish-echo probe is replaced by PING on every shard connection.
        super().__init__(cluster, lambda channel, data: None, settings)  # type: ignore[arg-type]
        self._cluster = cluster
        self._connection_kwargs = connection_kwargs
        self._shards: dict[str, _Shard] = {}
        self._maps = maps
        self._resync = False  # the map changed: members' presence is rewritten once all is heard again
        if maps is not None:
            maps.on_change(self._map_changed)

    def _map_changed(self) -> None:
        self._resync = True
        self._wake()

    def all_subscribed(self) -> bool:
        return self.connected and not self.unheard()

    def unheard(self) -> list[str]:
        """The shards (host:port) of wanted channels that have no live subscription."""
        with self._lock:
            wanted = [self._commands, *self._wanted]
            live = {c for s in self._shards.values() if s.pubsub is not None for c in s.confirmed}
            missing = [c for c in wanted if c not in live]
        return sorted({self._cluster.get_node_from_key(c).name for c in missing})

    def subscriptions(self) -> dict[str, int]:
        """Live subscriptions per shard, for /metrics."""
        with self._lock:
            return {s.name: len(s.confirmed) for s in self._shards.values() if s.pubsub is not None}

    def _run(self) -> None:
        self.connected = True
        while not self._stopping.is_set():
            self._reconcile_shards()
            got = False
            for shard in list(self._shards.values()):
                if shard.pubsub is None:
                    continue
                try:
                    while (message := shard.pubsub.get_message(timeout=0)) is not None:
                        got = True
                        self._handle(shard, message)
                    self._probe(shard)
                except (*CONNECTION_ERRORS, Deaf) as exc:
                    self._failed(shard, exc)
                except Exception as exc:  # an error reply (or a bug) costs this shard a reconnect, no more
                    log.exception("event=listener_error shard=%s", shard.name)
                    self._failed(shard, exc)
            if self._resync and self.all_subscribed():
                self._resync = False
                self._hook("on_reconnected")  # the promoted replica may have missed presence writes
            if not got:
                self._wait_any()
        for shard in self._shards.values():
            self._close(shard)
        log.info("event=listener_stopped")

    def _shard_for(self, channel: bytes) -> _Shard:
        node = self._cluster.get_node_from_key(channel)
        shard = self._shards.get(node.name)
        if shard is None:
            shard = self._shards[node.name] = _Shard(node.name, node.host, node.port)
        return shard

    def _reconcile_shards(self) -> None:
        wanted, catch_up = self._take_catch_up()
        by_shard: dict[str, set[bytes]] = {name: set() for name in self._shards}
        for channel in [self._commands, *wanted]:
            by_shard.setdefault(self._shard_for(channel).name, set()).add(channel)
        now = time.monotonic()
        for name, channels in by_shard.items():
            shard = self._shards[name]
            if shard.pubsub is None:
                if not channels:
                    del self._shards[name]  # failed, and none of our rooms lives there any more
                    continue
                if now < shard.retry_at:
                    continue
                try:
                    self._connect(shard)
                except CONNECTION_ERRORS as exc:
                    self._failed(shard, exc)
                    continue
            try:
                self._subscribe(shard, channels)
            except (*CONNECTION_ERRORS, redis.ResponseError) as exc:
                self._failed(shard, exc)
                continue
            if not channels and not shard.confirmed:
                self._close(shard)  # no room of ours lives there any more
                del self._shards[name]
        for channel in catch_up:
            self._hook("on_subscribed", wanted[channel])

    def _connect(self, shard: _Shard) -> None:
        # The first SSUBSCRIBE opens the connection (a dead shard fails there). No PING before
        # it: unsubscribed, Redis answers +PONG, which redis-py's pub/sub reader never returns.
        client = redis.Redis(host=shard.host, port=shard.port, **self._connection_kwargs)
        shard.pubsub = client.pubsub(push_handler_func=as_is)
        shard.ping_sent, shard.last_rx = None, time.monotonic()

    def _subscribe(self, shard: _Shard, channels: set[bytes]) -> None:
        assert shard.pubsub is not None
        # One command per channel: SSUBSCRIBE's channels must share a slot, and rooms rarely do.
        # The commands are written without waiting for their replies, so this is no slower.
        for channel in [c for c in channels if c not in shard.asked]:
            shard.pubsub.ssubscribe(channel)
            shard.asked.add(channel)
        for channel in [c for c in shard.asked if c not in channels]:
            if channel in shard.confirmed:  # one the shard dropped itself is not asked again
                shard.pubsub.sunsubscribe(channel)
            shard.asked.discard(channel)

    def _handle(self, shard: _Shard, message: dict[str, Any]) -> None:
        shard.last_rx = time.monotonic()
        kind, channel = message["type"], message["channel"]
        if kind == "pong":
            shard.ping_sent = None
            if shard.failures:
                shard.failures = 0
                self.reconnects += 1
                log.info("event=listener_up shard=%s reconnects=%d", shard.name, self.reconnects)
                self._hook("on_reconnected")
        elif kind == "smessage":
            if channel == self._commands:
                self._dispatch_command(message["data"])
            else:
                self._dispatch(message["data"])
        elif kind == "ssubscribe":
            with self._lock:  # all_subscribed reads it from other greenlets
                shard.confirmed.add(channel)
            if self._maps is not None:
                self._maps.up(shard.name)
            self._live(channel)
        elif kind == "sunsubscribe":
            with self._lock:
                shard.confirmed.discard(channel)
                elsewhere = any(channel in s.confirmed for s in self._shards.values())
            if not elsewhere:
                self._lost([channel])
            if channel in shard.asked and self._maps is not None:
                # Not asked for: the shard gave the channel's slot away (a graceful failover
                # demoted it). It stays asked here, so it is not asked again until the map moves it.
                log.info("event=shard_dropped_channel shard=%s", shard.name)
                self._maps.look_soon()

    def _probe(self, shard: _Shard) -> None:
        assert shard.pubsub is not None
        now = time.monotonic()
        if shard.ping_sent is None and now - shard.last_rx > self._idle_probe:
            shard.pubsub.ping()
            shard.ping_sent = now
        elif shard.ping_sent is not None and now - shard.ping_sent > self._probe_timeout:
            raise Deaf(f"shard {shard.name}: no pong after {self._probe_timeout}s")

    def _failed(self, shard: _Shard, exc: Exception) -> None:
        if shard.failures == 0:
            log.warning("event=listener_down shard=%s error=%s", q(shard.name), q(describe(exc)))
        shard.failures += 1
        shard.retry_at = time.monotonic() + self._backoff.compute(shard.failures)
        self._close(shard)
        self._lost(shard.confirmed)
        shard.asked, shard.confirmed = set(), set()
        if self._maps is not None and isinstance(exc, CONNECTION_ERRORS):
            self._maps.failed(shard.name, exc)  # a failover may follow: the map is watched closely

    @staticmethod
    def _close(shard: _Shard) -> None:
        if shard.pubsub is not None:
            with contextlib.suppress(Exception):
                shard.pubsub.close()
        shard.pubsub = None

    def _wait_any(self) -> None:
        sockets: list[Any] = []
        for shard in self._shards.values():
            conn = shard.pubsub.connection if shard.pubsub is not None else None
            if conn is not None and (sock := _socket(conn, self._known)) is not None:
                sockets.append(sock)
        timeout = min(self._idle_probe, self._probe_timeout) / 2
        if not self._known:
            timeout = min(timeout, POLL)
        retries = [s.retry_at for s in self._shards.values() if s.pubsub is None]
        if retries:
            timeout = max(0.0, min(timeout, min(retries) - time.monotonic()))
        self._select(sockets, timeout)
