"""Following a Redis Cluster's slot map through failovers, for every Cluster client of a process.

redis-py's Cluster client refreshes its slot map on a MOVED reply and in its own command
retries, but not for what chat_app sends through a shard's plain connection (per-shard script
pipelines, sharded pub/sub): after a master dies, those kept going to its address for ever.
Here a refused or reset connection to a shard marks it down (calls to it fail at once for a
moment instead of reconnecting on every one), and the map is looked at every MIN_LOOK_GAP
until the shard answers again or is replaced; otherwise every CLUSTER_CHECK_INTERVAL. A look
is one CLUSTER SLOTS on a server that is not down; only a client whose map differs from the
answer has its map rebuilt. A promotion is followed within MIN_LOOK_GAP of becoming visible,
and a steady cluster costs one command a second.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

from ... import versions
from ...logsafe import q
from .connection import CONNECTION_ERRORS, describe

log = logging.getLogger(__name__)

# A shard that refused or reset a connection is not tried again for this long: callers fail
# at once (and retry by their own loops) while the cluster decides on a replica.
DOWN_HOLD = 0.5
# While a shard is down the map is looked at this often (and never more often).
MIN_LOOK_GAP = 0.2
EAGER_LOOKS = 5.0  # seconds of close looks after a shard gave a slot away
# A shard no call has failed on for this long is no longer reported down: whatever still
# uses a dead shard fails on it again well within it (the listener retries every 2 s at most).
DOWN_FORGET = 10.0

Layout = tuple[tuple[int, int, str], ...]  # (first slot, last slot, master "host:port")


@functools.cache
def _pinned() -> bool:
    """redis-py's cluster internals below (`nodes_manager.initialize`, `slots_cache`,
    `connection_kwargs`) are reached as written only on the pinned redis-py."""
    return versions.matches("slot_maps", "redis")


def follow_moved(client: RedisCluster, keys: Sequence[str]) -> None:
    """After MOVED on a shard's own connection: the pinned redis-py rebuilds the whole map at
    once (`nodes_manager.initialize`, which also reconnects the connections it lent out);
    redis-py has no public call for that, so on other versions one public command per key
    (EXISTS) goes through the cluster client, which follows MOVED itself and learns each
    slot's new owner."""
    if _pinned():
        client.nodes_manager.initialize()
        return
    for key in dict.fromkeys(keys):
        with contextlib.suppress(*CONNECTION_ERRORS, redis.ResponseError):
            client.exists(key)


class ClusterClient(RedisCluster):
    """redis-py's Cluster client with the process's SlotMaps beside it, so every part that
    sends through one of its shards' connections reports a dead shard the same way."""

    slot_maps: SlotMaps | None = None


@contextlib.contextmanager
def shard(client: RedisCluster, node: ClusterNode) -> Iterator[redis.Redis]:
    """The connection to one shard of `client`, for a call made through it: refused at once
    while the shard is held down, and the call's outcome told to the client's SlotMaps (a
    connection error holds it down, success brings it back)."""
    maps = client.slot_maps if isinstance(client, ClusterClient) else None
    if maps is None:
        yield client.get_redis_connection(node)
        return
    if maps.is_down(node.name):
        raise redis.ConnectionError(f"shard {node.name} is down")
    try:
        yield client.get_redis_connection(node)
    except CONNECTION_ERRORS as exc:
        maps.failed(node.name, exc)
        raise
    maps.up(node.name)


class SlotMaps:
    def __init__(self, clients: Sequence[RedisCluster], check_interval: float, timeout: float) -> None:
        self._clients = list(clients)
        self._interval = check_interval
        self._timeout = timeout
        self._down: dict[str, float] = {}  # shard "host:port" -> time it failed
        self._last_look = 0.0
        self._eager_until = 0.0  # look_soon: look every MIN_LOOK_GAP until then
        self._probes: dict[str, redis.Redis] = {}
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._listeners: list[Callable[[], None]] = []
        self.refreshes = 0  # clients whose map was rebuilt
        self.failovers = 0  # changes of the map followed (a promotion, a failback, a reshard)
        for client in self._clients:
            if isinstance(client, ClusterClient):
                client.slot_maps = self

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        threading.Thread(target=self._run, name="slot-maps", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()

    def is_down(self, shard: str) -> bool:
        """Failed within DOWN_HOLD: calls to it fail at once."""
        failed = self._down.get(shard)
        return failed is not None and time.monotonic() - failed < DOWN_HOLD

    def down(self) -> list[str]:
        """Shards that failed and have not answered since, while the map still names them."""
        return sorted(list(self._down))

    def failed(self, shard: str, exc: BaseException | None = None) -> None:
        """A connection to `shard` was refused or reset: hold it down, and have the map
        looked at now and then every MIN_LOOK_GAP until it answers or is replaced. Never
        waits: the caller retries by its own loop, which then finds the new master."""
        if shard not in self._down:
            log.warning("event=shard_down shard=%s error=%s", shard, q(describe(exc)) if exc else "")
        self._down[shard] = time.monotonic()
        self._wakeup.set()

    def look_soon(self) -> None:
        """A shard gave a slot away (a graceful failover): look now, and closely for a while,
        since the server asked first may not know the new map yet."""
        self._eager_until = time.monotonic() + EAGER_LOOKS
        self._wakeup.set()

    def up(self, shard: str) -> None:
        if self._down.pop(shard, None) is not None:
            log.info("event=shard_up shard=%s", shard)

    def look(self) -> bool:
        """Read the map from a server that is not down; rebuild the clients whose map differs.
        True when one did. Pinned redis-py only: the map is read and rebuilt through its
        internals; on other versions the clients follow MOVED alone (`follow_moved`)."""
        if not _pinned():
            return False
        layout = self._read()
        if layout is None:
            return False
        changed = [c for c in self._clients if not _agrees(c, layout)]
        for client in changed:
            try:
                client.nodes_manager.initialize()
            except Exception as exc:  # it still disagrees: the next look tries again
                log.warning("event=slot_map_refresh_failed error=%s", q(describe(exc)))
                return False
            self.refreshes += 1
        if not changed:
            return False
        if not all(_agrees(c, layout) for c in changed):
            # redis-py rebuilt its map from a server that has not heard of the change yet
            # (gossip reaches the masters one by one): keep looking closely until it has.
            self._eager_until = time.monotonic() + EAGER_LOOKS
            log.info("event=slot_map_stale clients=%d", len(changed))
            return False
        self.failovers += 1
        self._eager_until = 0.0
        masters = sorted({master for _, _, master in layout})
        for shard in [s for s in list(self._down) if s not in masters]:
            del self._down[shard]  # replaced: nothing goes there any more
        log.info("event=slot_map_changed masters=%s clients=%d", ",".join(masters), len(changed))
        for listener in self._listeners:
            listener()
        return True

    def _read(self) -> Layout | None:
        """CLUSTER SLOTS from the first server that answers, servers that are down last."""
        known = {n.name: (n.host, n.port) for c in self._clients for n in c.get_nodes()}
        for name in sorted(known, key=lambda n: (self.is_down(n), n)):
            try:
                return _layout(self._probe(name, *known[name]).execute_command("CLUSTER SLOTS"))
            except (*CONNECTION_ERRORS, redis.ResponseError):
                with contextlib.suppress(Exception):
                    self._probes.pop(name).close()
        return None

    def _probe(self, name: str, host: str, port: int) -> redis.Redis:
        probe = self._probes.get(name)
        if probe is None:
            kwargs = self._clients[0].nodes_manager.connection_kwargs
            options = {k: v for k, v in kwargs.items() if k not in {"host", "port", "retry", "max_connections"}}
            options.update(socket_timeout=self._timeout, socket_connect_timeout=self._timeout)
            probe = self._probes[name] = redis.Redis(host=host, port=port, **options)
        return probe

    def _run(self) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            for shard in [s for s, failed in list(self._down.items()) if now - failed > DOWN_FORGET]:
                del self._down[shard]  # nothing has used it since: nothing to report
            eager = self._down or now < self._eager_until
            self._wakeup.wait(MIN_LOOK_GAP if eager else self._interval)
            self._wakeup.clear()
            if self._stopping.wait(max(0.0, self._last_look + MIN_LOOK_GAP - time.monotonic())):
                break
            self._last_look = time.monotonic()
            try:
                self.look()
            except Exception:
                log.exception("event=slot_map_look_failed")
        for probe in self._probes.values():
            with contextlib.suppress(Exception):
                probe.close()


def _layout(reply: Any) -> Layout:
    return tuple(sorted((int(s[0]), int(s[1]), f"{_text(s[2][0])}:{int(s[2][1])}") for s in reply))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _agrees(client: RedisCluster, layout: Layout) -> bool:
    """The client's map gives each range of the server's answer to its master, at both ends
    (a moved part of a range makes a range of its own in the answer, so its ends are looked at)."""
    slots = client.nodes_manager.slots_cache
    for first, last, master in layout:
        for slot in (first, last):
            owners = slots.get(slot)
            if not owners or owners[0].name != master:
                return False
    return len(slots) == sum(last - first + 1 for first, last, _ in layout)
