"""Redis behind the two interfaces: RedisBroker (publisher, listener, history) and
RedisPresence (per-node entries with TTLs, heartbeat, atomic last-leave cleanup)."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from ..protocol import (
    BadEnvelope,
    Command,
    CommandReply,
    Envelope,
    TypingEvent,
    decode_envelope,
    direct_members,
    max_wire_bytes,
)
from ..settings import Settings
from .base import (
    RECENT_HISTORY,
    BackendUnavailable,
    Banned,
    BrokerHooks,
    CommandResult,
    Direct,
    Draft,
    History,
    Joined,
    Member,
    Position,
    RoomCount,
    RoomsPage,
)
from .redis_cluster_listener import ShardedListener
from .redis_connection import CONNECTION_ERRORS
from .redis_control import ControlClient, publish, store_ban
from .redis_directs import DirectLists
from .redis_keys import RoomKeys, escape, room_nodes_pattern, room_of_nodes_key
from .redis_listener import Listener
from .redis_publisher import Publisher
from .redis_scripts import AnyRedis, Call, LuaScript, ScriptBatcher, run_scripts

log = logging.getLogger(__name__)


def connection_options(settings: Settings, socket_timeout: float | None = None) -> dict[str, Any]:
    timeout = settings.redis_socket_timeout if socket_timeout is None else socket_timeout
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "socket_keepalive": True,
        "health_check_interval": max(1, int(settings.heartbeat_interval)),
    }


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
        return RedisCluster(startup_nodes=startup, retry=retry, **sized, **common)
    if settings.redis_sentinels:
        sentinel = Sentinel(
            _host_ports(settings.redis_sentinels),
            sentinel_kwargs={"socket_timeout": settings.redis_socket_timeout},
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
        return dataclasses.replace(clients, shard_kwargs={**connection_options(settings), "retry": no_retry()})


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


class RedisBroker:
    def __init__(self, clients: RedisClients, settings: Settings) -> None:
        self._commands = clients.commands
        self._prefix = settings.key_prefix
        self._deadline = settings.send_deadline
        self._instance_id = settings.instance_id
        self._envelope_limit = max_wire_bytes(settings.max_message_bytes)
        self._history = LuaScript.load("history.lua", sharded=isinstance(clients.commands, RedisCluster))
        # Joins, leaves and history reads of many members share round trips (RedisPresence too).
        self.batcher = ScriptBatcher(clients.commands, "redis-batcher")
        self.publisher = Publisher(clients.publisher, settings)
        self.control = ControlClient(clients.commands, settings.key_prefix)
        self.listener: Listener
        if isinstance(clients.subscriber, RedisCluster):
            self.listener = ShardedListener(clients.subscriber, clients.shard_kwargs or {}, settings)
        else:
            self.listener = Listener(clients.subscriber, self._publish_probe, settings)
        self._hooks: BrokerHooks | None = None

    def start(self, hooks: BrokerHooks) -> None:
        self._hooks = hooks
        self.publisher.start()
        # The listener hands each command over and goes back to reading at once.
        self.listener.start(dataclasses.replace(hooks, on_control=self._command_received))

    def command(self, command: Command, deadline: float) -> CommandResult:
        return self.control.send(command, deadline)

    def _command_received(self, command: Command) -> int:
        """Off the listener: acting may join rooms, and a join waits for the listener."""
        threading.Thread(target=self._act, args=(command,), name="command", daemon=True).start()
        return 0

    def _act(self, command: Command) -> None:
        assert self._hooks is not None
        try:
            count = self._hooks.on_control(command)
        except Exception:  # answer anyway: the caller then learns this node is alive
            log.exception("event=command_failed action=%s", command.action)
            count = 0
        try:
            publish(self._commands, command.reply_to, CommandReply(command.id, self._instance_id, count).encode())
        except CONNECTION_ERRORS as exc:
            log.warning("event=command_reply_failed action=%s error=%r", command.action, exc)

    def stop(self) -> None:
        self.listener.stop()
        self.publisher.stop()
        self.batcher.stop()

    def publish(self, draft: Draft) -> Envelope:
        return self.publisher.publish(draft)

    def subscribe(self, room: str) -> threading.Event:
        return self.listener.want(room)

    def unsubscribe(self, room: str) -> None:
        self.listener.unwant(room)

    def signal(self, event: TypingEvent) -> None:
        try:
            publish(self._commands, RoomKeys.of(self._prefix, event.room).channel, event.encode())
        except CONNECTION_ERRORS as exc:
            log.debug("event=signal_dropped room=%s error=%r", event.room, exc)

    def _publish_probe(self, channel: str, data: bytes) -> None:
        """Off the listener's greenlet: a stalled Redis must not stall the listener, whose
        probe timeout then decides."""

        def send() -> None:
            try:
                self._commands.publish(channel, data)
            except CONNECTION_ERRORS as exc:
                log.debug("event=probe_publish_failed error=%r", exc)

        threading.Thread(target=send, name="probe", daemon=True).start()

    def history(self, room: str, after: int | None, upto: int | None = None, limit: int = RECENT_HISTORY) -> History:
        keys = RoomKeys.of(self._prefix, room)
        args = ["" if after is None else after, "" if upto is None else upto, limit]
        try:
            reply = self.batcher.run((self._history, [keys.epoch, keys.seq, keys.hist], args), self._deadline)
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"redis unreachable: {exc}") from exc
        if isinstance(reply, Exception):
            raise BackendUnavailable(f"redis refused a history read: {reply}")
        epoch, seq, *stored = reply  # type: ignore[misc]
        envelopes: list[Envelope] = []
        for raw in stored:
            try:
                envelopes.append(decode_envelope(raw, self._envelope_limit))
            except BadEnvelope:
                self.listener.bad_payloads += 1
        position = Position(epoch.decode() if epoch else "", int(seq or 0))
        last = position.seq if upto is None else min(upto, position.seq)
        if after is None:
            complete = True
        else:
            complete = len(envelopes) == max(0, last - after) and all(
                e.seq == after + 1 + i for i, e in enumerate(envelopes)
            )
        return History(position, envelopes, complete)

    def healthy(self) -> dict[str, bool]:
        """From state, without a round trip: the listener's probe already proves every few
        seconds that a publish comes back through the subscription."""
        return {"publisher": self.publisher.last_error is None, "listener": self.listener.all_subscribed()}


class RedisPresence:
    def __init__(self, clients: RedisClients, settings: Settings, batcher: ScriptBatcher | None = None) -> None:
        self._redis = clients.commands
        self._settings = settings
        self._node = escape(settings.instance_id)
        sharded = isinstance(self._redis, RedisCluster)
        self._touch = LuaScript.load("prelude.lua", "touch.lua", sharded=sharded)
        self._leave = LuaScript.load("prelude.lua", "leave.lua", sharded=sharded)
        self._names = LuaScript.load("prelude.lua", "names.lua", sharded=sharded)
        self._members = LuaScript.load("members.lua", sharded=sharded)
        self._calls = batcher or ScriptBatcher(self._redis, "presence-calls")
        self._directs = DirectLists(self._redis, settings.key_prefix, settings.redis_room_ttl_ms)
        self._snapshot: Callable[[], dict[str, dict[str, str]]] = dict
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)

    def _keys(self, room: str) -> RoomKeys:
        return RoomKeys.of(self._settings.key_prefix, room)

    def _run(self, calls: list[Call]) -> list[Any]:
        try:
            results = run_scripts(self._redis, calls)
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"redis unreachable: {exc}") from exc
        for result in results:
            if isinstance(result, Exception):
                log.error("event=presence_script_error error=%r", result)
                raise BackendUnavailable(f"redis refused a presence update: {result}")
        return results

    def _run_one(self, call: Call) -> Any:
        """One call, batched with those of other members' joins and leaves."""
        try:
            result = self._calls.run(call, self._settings.send_deadline)
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"redis unreachable: {exc}") from exc
        if isinstance(result, Exception):
            log.error("event=presence_script_error error=%r", result)
            raise BackendUnavailable(f"redis refused a presence update: {result}")
        return result

    def _call(self, script: LuaScript, room: str, *extra: object) -> Call:
        """A presence script call with the KEYS and leading ARGV they all share (prelude.lua)."""
        s, keys = self._settings, self._keys(room)
        args = [
            self._node,
            keys.node_prefix,
            room,
            keys.channel,
            int(s.presence_ttl * 1000),
            s.redis_room_ttl_ms,
            int(s.presence_grace * 1000),
            secrets.token_hex(8),
            s.presence_events_max_members,
            *extra,
        ]
        return (script, keys.script_keys(self._node), args)

    def join(self, room: str, sid: str, user: str) -> Joined:
        names = self._settings.presence_events_max_members
        script, keys, args = self._call(self._touch, room, "0", names, sid, user)
        epoch, seq, *rest = self._run_one((script, [*keys, self._keys(room).ban(user)], args))
        if not epoch:
            raise Banned(int(seq) / 1000)
        count, *first = rest
        return Joined(Position(epoch.decode(), int(seq)), int(count), [n.decode() for n in first])

    def ban(self, room: str, user: str, seconds: int) -> None:
        try:
            store_ban(self._redis, self._settings.key_prefix, room, user, seconds)
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"redis unreachable: {exc}") from exc

    def rooms(self, cursor: str | None, limit: int) -> RoomsPage:
        """SCAN (never KEYS) for rooms' `nodes` keys, server by server on a Cluster; the
        cursor is `<server index>-<SCAN cursor>`. The live members are then read per room."""
        shard, position = _parse_cursor(cursor)
        servers = self._servers()
        prefix = self._settings.key_prefix
        found: list[str] = []
        try:
            while shard < len(servers) and len(found) < limit:
                position, keys = servers[shard].scan(position, match=room_nodes_pattern(prefix), count=limit)
                found += [r for k in keys if (r := room_of_nodes_key(prefix, k.decode())) is not None]
                if position == 0:
                    shard += 1
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"redis unreachable: {exc}") from exc
        found = list(dict.fromkeys(found))  # SCAN may return a key twice
        calls = [self._members_call(room) for room in found]
        rooms = []
        for room, (_epoch, _seq, *flat) in zip(found, self._run(calls) if calls else [], strict=True):
            users = [flat[i + 2] for i in range(0, len(flat), 3)]
            if users:
                rooms.append(RoomCount(room, len(set(users)), len(users)))
        return RoomsPage(rooms, f"{shard}-{position}" if shard < len(servers) else None)

    def _servers(self) -> list[redis.Redis]:
        if isinstance(self._redis, RedisCluster):
            return [
                self._redis.get_redis_connection(n) for n in sorted(self._redis.get_primaries(), key=lambda n: n.name)
            ]
        return [self._redis]

    def _members_call(self, room: str) -> Call:
        keys = self._keys(room)
        return (self._members, [keys.nodes, keys.epoch, keys.seq], [keys.node_prefix])

    def leave(self, room: str, sid: str, grace: bool = False) -> bool:
        return bool(self._run_one(self._call(self._leave, room, "sid", sid, "1" if grace else "0")))

    def sweep(self, room: str) -> bool:
        return bool(self._run_one(self._call(self._leave, room, "sweep", "", "0")))

    def names(self, room: str, after: str | None, limit: int) -> tuple[int, list[str]]:
        count, *page = self._run_one(self._call(self._names, room, after or "", limit))
        return int(count), [n.decode() for n in page]

    def counts(self, rooms: Sequence[str]) -> dict[str, int]:
        if not rooms:
            return {}
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hlen(self._keys(room).users)
                return dict(zip(rooms, pipe.execute(), strict=True))
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"redis unreachable: {exc}") from exc

    def room_state(self, room: str) -> tuple[Position | None, list[Member]]:
        epoch, seq, *flat = self._run([self._members_call(room)])[0]
        members = [Member(flat[i].decode(), flat[i + 1].decode(), flat[i + 2].decode()) for i in range(0, len(flat), 3)]
        return (Position(epoch.decode(), int(seq)) if epoch else None), members

    def members(self, room: str) -> list[Member]:
        return self.room_state(room)[1]

    def is_active(self, room: str) -> bool:
        return bool(self.members(room))

    def remove_node(self, rooms: Sequence[str], grace: bool = False) -> None:
        self._run([self._call(self._leave, room, "node", "", "1" if grace else "0") for room in rooms])

    def record_direct(self, room: str, users: Sequence[str], at: int, keep: int) -> None:
        self._directs.record(room, users, at, keep)

    def directs(self, user: str, limit: int) -> list[Direct]:
        return self._directs.read(user, limit)

    def start(self, snapshot: Callable[[], dict[str, dict[str, str]]]) -> None:
        self._snapshot = snapshot
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._calls.stop()  # the broker's, when shared: stopping twice is harmless

    def beat(self) -> None:
        """Rewrite every local entry (not merely re-EXPIRE): entries come back after Redis
        lost its data, and the sweep inside the script announces crashed nodes' users."""
        rooms = self._snapshot()
        if not rooms:
            return
        calls = [
            self._call(self._touch, room, "1", 0, *(x for sid, user in members.items() for x in (sid, user)))
            for room, members in rooms.items()
        ]
        try:
            self._run(calls)
            # Both users' lists live as long as a conversation hosted here does, as its keys do.
            self._directs.refresh(u for room in rooms for u in direct_members(room) or ())
        except BackendUnavailable as exc:
            log.warning("event=heartbeat_failed rooms=%d error=%r", len(rooms), exc)
        except Exception:
            log.exception("event=heartbeat_error")

    def _heartbeat(self) -> None:
        while not self._stopping.wait(self._settings.heartbeat_interval):
            self.beat()


def _parse_cursor(cursor: str | None) -> tuple[int, int]:
    """ValueError for a cursor this API did not give."""
    if cursor is None:
        return 0, 0
    shard, _, position = cursor.partition("-")
    if not (shard.isdigit() and position.isdigit()):
        raise ValueError(f"not a cursor of this API: {cursor!r}")
    return int(shard), int(position)
