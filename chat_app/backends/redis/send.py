"""One send, whoever sends it: a node's publisher for its members, or ChatEmitter from any
process. Both run the same script with the same keys and arguments, build the same
envelope and read the script's answer the same way, so a message posted from outside the
nodes gets the room's next seq, lands in history and is deduplicated exactly like a
member's."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import redis
from redis.cluster import RedisCluster

from ...logsafe import q
from ...protocol.wire import BadEnvelope, Envelope, decode_envelope, envelope_head
from ...settings import Settings
from ..base import BackendUnavailable, Banned, Draft
from .connection import describe
from .keys import RoomKeys
from .scripts import AnyRedis, ArchiveLua, Call, HeldConnection, LuaScript
from .topology import shard

log = logging.getLogger(__name__)


class Renewals:
    """Which sends ask send.lua to renew their room's TTLs: a room's first in each tenth of
    the room TTL, by this process's clock. Finding out in Redis (a PTTL per room and batch)
    cost ~5 % of its work per message (issue 27 item 4). A send renews at least once per two
    tenths while its room is busy (three when a call that asked failed), so the keys keep
    most of the room TTL; a room sent into through several processes is renewed by each;
    and the keys a send creates the script renews itself, whatever this says."""

    def __init__(self, room_ttl_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._tenth = room_ttl_ms / 10_000  # seconds
        self._clock = clock
        self._window = -1
        self._renewed: set[str] = set()  # rooms renewed in this window: only the active ones

    def due(self, room_key: str) -> bool:
        window = int(self._clock() // self._tenth)
        if window != self._window:
            self._window, self._renewed = window, set()
        if room_key in self._renewed:
            return False
        self._renewed.add(room_key)
        return True


class SendScript:
    """send.lua (seq + history + PUBLISH) for one deployment's settings, and send_many.lua,
    the same for several messages in one call (one server: not on a Cluster)."""

    def __init__(self, client: AnyRedis, settings: Settings, renewals: Renewals | None = None) -> None:
        sharded = isinstance(client, RedisCluster)
        archive = ArchiveLua.of(settings, sharded)
        self.script = LuaScript.load("send_batch.lua", "send.lua", sharded=sharded, archive=archive)
        self.many = LuaScript.load("send_batch.lua", "send_many.lua", sharded=sharded, archive=archive)
        self._history_length = settings.history_length
        self._room_ttl_ms = settings.redis_room_ttl_ms
        self._renewals = renewals or Renewals(settings.redis_room_ttl_ms)

    def call(self, draft: Draft, keys: RoomKeys, candidate_epoch: str, server_id: str) -> Call:
        """send.lua for one draft: a batch of one (see `batch`)."""
        return (
            self.script,
            self._keys(draft, keys),
            [*self._shared(server_id, candidate_epoch), *self._own(draft, keys)],
        )

    def batch(self, sends: Sequence[tuple[Draft, RoomKeys]], candidate_epoch: str, server_id: str) -> Call:
        """One send_many.lua call for several (draft, keys) on one server (one server id):
        each message's KEYS and own ARGV in turn, after the ARGV every message shares
        (history length, room TTL, server id, a random candidate epoch: sent once, each
        argument costs Redis a little per message). Its answer is one send.lua answer per
        message (`answers`)."""
        keys: list[str] = []
        args: list[object] = self._shared(server_id, candidate_epoch)
        for draft, room_keys in sends:
            keys += self._keys(draft, room_keys)
            args += self._own(draft, room_keys)
        return (self.many, keys, args)

    @staticmethod
    def _keys(draft: Draft, keys: RoomKeys) -> list[str]:
        return [keys.seq, keys.hist, keys.epoch, keys.dedup, keys.srv, keys.ban(draft.sender)]

    def _shared(self, server_id: str, candidate_epoch: str) -> list[object]:
        return [self._history_length, self._room_ttl_ms, server_id, candidate_epoch]

    def _own(self, d: Draft, keys: RoomKeys) -> tuple[object, ...]:
        head = envelope_head(d.id, d.room, d.sender, d.message, d.timestamp, d.instance_id, d.meta)
        return (head, d.dedup_id, keys.channel, "1" if self._renewals.due(keys.seq) else "")

    @staticmethod
    def answers(count: int, result: object) -> list[object]:
        """Each message's answer (three entries) from a `batch` call's flat result; an error
        (the whole call was refused: nothing of it was stored) in each message's place."""
        if isinstance(result, Exception):
            return [result] * count
        if not isinstance(result, list) or len(result) != 3 * count:
            return [redis.ResponseError(f"send_many answered {count} messages with {result!r:.80}")] * count
        return [result[i : i + 3] for i in range(0, 3 * count, 3)]

    @staticmethod
    def envelope(draft: Draft, result: object) -> Envelope:
        """The stored message from the script's answer: the first one stored under the
        draft's dedup id when this was a retry. BackendUnavailable when Redis refused it;
        Banned when the sender is banned from the room (nothing stored)."""
        if isinstance(result, Exception):
            log.error("event=publish_error room=%s error=%s", q(draft.room), q(describe(result)))
            raise BackendUnavailable(f"redis refused the send: {result}")
        if result[0] == -1:  # type: ignore[index]
            raise Banned(int(result[1]) / 1000)  # type: ignore[index]
        if result[0] == -2:  # type: ignore[index]  # the archive is restoring positions
            reason = result[1].decode(errors="replace")  # type: ignore[index]
            log.error("event=publish_error room=%s error=%s", q(draft.room), q(reason))
            raise BackendUnavailable(f"redis refused the send: {reason}")
        seq, epoch, stored = result  # type: ignore[misc]
        if stored is not None:  # a duplicate: the envelope stored under its dedup id
            try:
                return decode_envelope(stored, max_bytes=len(stored))
            except BadEnvelope as exc:
                raise BackendUnavailable(f"stored message unreadable: {exc}") from None
        d = draft
        return Envelope(d.id, d.room, d.sender, d.message, d.timestamp, int(seq), epoch.decode(), d.instance_id, d.meta)


class ServerIds:
    """The replication id of the server holding a key, per server: it changes when a replica
    is promoted, which the send script turns into a new epoch. Forget them after a
    connection failure: the next server may be another one."""

    def __init__(self, client: AnyRedis, held: HeldConnection | None = None) -> None:
        self._client = client
        self._held = held  # through the held connection the id names the very server the scripts run on
        self._ids: dict[str, str] = {}

    def of(self, key: str) -> str:
        if not isinstance(self._client, RedisCluster):
            if "" not in self._ids:
                self._ids[""] = self._read(self._held or self._client)
            return self._ids[""]
        node = self._client.get_node_from_key(key)
        if node.name not in self._ids:
            with shard(self._client, node) as server:
                self._ids[node.name] = self._read(server)
        return self._ids[node.name]

    def forget(self) -> None:
        self._ids.clear()

    @staticmethod
    def _read(server: redis.Redis | HeldConnection) -> str:
        try:
            if isinstance(server, HeldConnection):
                info = server.execute("INFO", "replication")
            else:
                info = server.info("replication")
            return str(info.get("master_replid", ""))
        except redis.ResponseError as exc:  # INFO disabled (some managed Redis): no failover guard
            log.warning("event=no_server_id error=%s", q(describe(exc)))
            return ""
