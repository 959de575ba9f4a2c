"""RedisPresence: per-node entries with TTLs, heartbeat, atomic last-leave cleanup, member pages."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from ...logsafe import q
from ...protocol.names import direct_members
from ...random_ids import RandomIds
from ...settings import Settings
from ..base import (
    ArchiveReader,
    BackendUnavailable,
    Banned,
    Direct,
    Joined,
    LocalRooms,
    Member,
    Position,
    RoomCount,
    RoomsPage,
)
from ..stats import PresenceStats
from .clients import RedisClients
from .connection import CONNECTION_ERRORS, describe, unavailable_when_unreachable, unreachable
from .directs import DirectLists
from .keys import RoomKeys, archive_key, escape, room_keys, room_nodes_pattern, room_of_nodes_key
from .scripts import AnyRedis, ArchiveLua, Call, HeldConnection, LuaScript, ScriptBatcher, run_scripts

log = logging.getLogger(__name__)


def store_ban(client: AnyRedis, prefix: str, room: str, user: str, seconds: int) -> None:
    """Refuse the user's joins of the room for `seconds`: touch.lua (a join) checks the key,
    and send.lua refuses the user's sends. Beside the join that reads it; ChatEmitter's
    StandaloneRedis writes it too."""
    client.set(RoomKeys.of(prefix, room).ban(user), b"1", ex=seconds)


BEAT_CHUNK = 100  # rooms per heartbeat round trip
ORPHANS_PER_ROUND = 500  # rooms the orphan sweep looks at per heartbeat, at most


@dataclass
class HeartbeatStats:
    """What the heartbeat did, for /metrics."""

    rounds: int = 0
    last_seconds: float = 0.0  # the last round's duration, both round trips and all
    total_seconds: float = 0.0  # of every round: a window's mean is its share of rounds
    rooms_rewritten: int = 0  # rooms whose entries a round found lost and wrote again


class RedisPresence:
    def __init__(
        self,
        clients: RedisClients,
        settings: Settings,
        batcher: ScriptBatcher | None = None,
        archive: ArchiveReader | None = None,
    ) -> None:
        self._archive = archive
        self._redis = clients.commands
        self._settings = settings
        self._node = escape(settings.instance_id)
        sharded = isinstance(self._redis, RedisCluster)
        archive = ArchiveLua.of(settings, sharded)
        self._touch = LuaScript.load("prelude.lua", "touch.lua", sharded=sharded, archive=archive)
        self._beat = LuaScript.load("prelude.lua", "beat.lua", sharded=sharded, archive=archive)
        self._leave = LuaScript.load("prelude.lua", "leave.lua", sharded=sharded, archive=archive)
        self._names = LuaScript.load("prelude.lua", "names.lua", sharded=sharded, archive=archive)
        self._members = LuaScript.load("members.lua", sharded=sharded, reads_only=True)
        self._calls = batcher or ScriptBatcher(self._redis, "presence-calls")
        self._ids = RandomIds()  # candidate epochs: a getrandom() per join was 3 % of a join storm's CPU
        self._directs = DirectLists(self._redis, settings.key_prefix, settings.redis_room_ttl_ms)
        self._local = LocalRooms(dict, lambda rooms: {})
        self._keys = room_keys(settings.key_prefix)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)
        self.heartbeat = HeartbeatStats()
        self._beat_calls: dict[str, Call] = {}  # room -> its beat.lua call less the count
        # The heartbeat's own connection (plain Redis): no pool checkout and redis-py
        # pipeline per call; beats run one at a time, as the connection needs.
        self._held = None if sharded else HeldConnection(self._redis)
        self._beating = threading.Lock()
        self._unreached: list[str] = []  # servers the last beat could not write to

    def _run(self, calls: list[Call], held: HeldConnection | None = None, partial: bool = False) -> list[Any]:
        """The calls' results. `partial`: a call whose server (a Cluster shard) could not be
        reached gets its connection error in place, and the others still count."""
        try:
            results = run_scripts(self._redis, calls) if held is None else held.run_scripts(calls)
        except CONNECTION_ERRORS as exc:
            if partial:
                return [exc] * len(calls)
            raise unreachable(exc) from exc
        for result in results:
            if isinstance(result, CONNECTION_ERRORS):
                if not partial:
                    raise unreachable(result)
            elif isinstance(result, Exception):
                log.error("event=presence_script_error error=%s", q(describe(result)))
                raise BackendUnavailable(f"redis refused a presence update: {result}")
        return results

    def _run_one(self, call: Call) -> Any:
        """One call, batched with those of other members' joins and leaves."""
        with unavailable_when_unreachable():
            result = self._calls.run(call, self._settings.send_deadline)
        if isinstance(result, Exception):
            log.error("event=presence_script_error error=%s", q(describe(result)))
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
            self._ids.hex(8),
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
        with unavailable_when_unreachable():
            store_ban(self._redis, self._settings.key_prefix, room, user, seconds)

    def rooms(self, cursor: str | None, limit: int) -> RoomsPage:
        """SCAN (never KEYS) for rooms' `nodes` keys, server by server on a Cluster; the
        cursor is `<server index>-<SCAN cursor>`. The live members are then read per room."""
        shard, position = _parse_cursor(cursor)
        servers = self._servers()
        prefix = self._settings.key_prefix
        found: list[str] = []
        with unavailable_when_unreachable():
            while shard < len(servers) and len(found) < limit:
                position, keys = servers[shard].scan(position, match=room_nodes_pattern(prefix), count=limit)
                found += [r for k in keys if (r := room_of_nodes_key(prefix, k.decode())) is not None]
                if position == 0:
                    shard += 1
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
        _position, count, names = self.summary(room, limit, after)
        return count, names

    def summary(self, room: str, limit: int, after: str | None = None) -> tuple[Position | None, int, list[str]]:
        count, epoch, seq, *page = self._run_one(self._call(self._names, room, after or "", limit))
        position = Position(epoch.decode(), int(seq)) if epoch else None
        return position, int(count), [n.decode() for n in page]

    def counts(self, rooms: Sequence[str]) -> dict[str, int]:
        if not rooms:
            return {}
        with unavailable_when_unreachable(), self._redis.pipeline(transaction=False) as pipe:
            for room in rooms:
                pipe.hlen(self._keys(room).users)
            return dict(zip(rooms, pipe.execute(), strict=True))

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
        """Redis's list, and with the archive on, the conversations Redis forgot (a list
        expires with its user's absence; the archive keeps them)."""
        held = self._directs.read(user, limit)
        if self._archive is None:
            return held
        found = {d.room: d for d in self._archive.directs(user, limit)}
        for d in held:
            kept = found.get(d.room)
            found[d.room] = Direct(d.room, max(d.at, kept.at if kept else 0), d.position or (kept and kept.position))
        return sorted(found.values(), key=lambda d: d.at, reverse=True)[:limit]

    def start(self, local: LocalRooms) -> None:
        self._local = local
        self._thread.start()

    def stats(self) -> PresenceStats:
        beat = self.heartbeat
        return PresenceStats(beat.rounds, beat.last_seconds, beat.total_seconds, beat.rooms_rewritten)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._calls.stop()  # the broker's, when shared: stopping twice is harmless

    def beat(self, rewrite: bool = False) -> None:
        """Push this node's deadline and the room keys' TTLs, one call per room in one round
        trip; rewrite a room's entries (a second round trip) only where Redis lost them
        (beat.lua), or every room's with `rewrite` (after a reconnect: a failover's replica
        may have missed writes the count cannot see). The sweep inside the scripts
        announces crashed nodes' users. Rewriting every entry on every beat cost O(members)
        of arguments and Redis work each HEARTBEAT_INTERVAL."""
        with self._beating:  # the heartbeat's and a reconnect's (the listener's)
            started = time.monotonic()
            rooms = self._local.sizes()
            if rooms:
                self._renew(rooms, rewrite)
            else:
                self._beat_calls = {}
            took = time.monotonic() - started
            self.heartbeat.rounds += 1
            self.heartbeat.last_seconds = took
            self.heartbeat.total_seconds += took

    def _renew(self, rooms: dict[str, int], rewrite: bool) -> None:
        """A room whose server cannot be reached is left for the next beat (and named by
        `unreached` until then); the others are renewed all the same."""
        unreached: set[str] = set()
        error = ""
        try:
            lost = list(rooms) if rewrite else self._reached(rooms, self._refresh(rooms), unreached)
            if lost:
                members = self._local.members(lost)
                calls = [self._rewrite_call(room, entries) for room, entries in members.items()]
                rewritten = self._reached(members, self._in_chunks(calls), unreached)
                self.heartbeat.rooms_rewritten += len(rewritten)
                log.info("event=heartbeat_rewrote rooms=%d of=%d", len(rewritten), len(rooms))
            # Both users' lists live as long as a conversation hosted here does, as its keys do.
            self._directs.refresh(u for room in rooms for u in direct_members(room) or ())
        except BackendUnavailable as exc:
            unreached.add("redis")
            error = describe(exc)
        except Exception:
            log.exception("event=heartbeat_error")
        if unreached and not self._unreached:  # logged when it starts and when it ends, not every beat
            servers = ",".join(sorted(unreached))
            log.warning("event=heartbeat_failed rooms=%d servers=%s error=%s", len(rooms), servers, q(error))
        elif self._unreached and not unreached:
            log.info("event=heartbeat_recovered rooms=%d", len(rooms))
        self._unreached = sorted(unreached)

    def _reached(self, rooms: Iterable[str], results: list[Any], unreached: set[str]) -> list[str]:
        """The rooms whose result is true; the servers of those whose call could not reach it
        go into `unreached`."""
        out = []
        for room, result in zip(rooms, results, strict=True):
            if isinstance(result, CONNECTION_ERRORS):
                unreached.add(self._server_of(room))
                log.debug("event=beat_unreached room=%s error=%s", q(room), q(describe(result)))
            elif result:
                out.append(room)
        return out

    def _server_of(self, room: str) -> str:
        if isinstance(self._redis, RedisCluster):
            return str(self._redis.get_node_from_key(self._keys(room).seq).name)
        return "redis"

    def healthy(self) -> dict[str, bool]:
        """False while the last beat could not write some room's presence."""
        return {"presence": not self._unreached}

    def unreached(self) -> list[str]:
        """The servers (host:port on a Cluster) the last beat could not write to."""
        return [s for s in self._unreached if s != "redis"]

    def _refresh(self, rooms: dict[str, int]) -> list[Any]:
        """Per room: whether Redis no longer holds its entries as this node wrote them (or
        the connection error that kept the beat from its server). The calls are kept from
        beat to beat (for the rooms still held): their keys and arguments change only with
        the count."""
        known, self._beat_calls = self._beat_calls, {}
        calls = []
        for room, held in rooms.items():
            script, keys, args = self._beat_calls[room] = known.get(room) or self._call(self._beat, room)
            calls.append((script, keys, [*args, held]))
        return self._in_chunks(calls)

    def _in_chunks(self, calls: list[Call]) -> list[Any]:
        """Pipelines of BEAT_CHUNK calls, yielding between them: building and reading one of
        1,000 rooms' calls holds the node's only thread (gevent) for tens of ms, which
        every delivery meanwhile waits out."""
        results: list[Any] = []
        for i in range(0, len(calls), BEAT_CHUNK):
            if i:
                time.sleep(0)  # under gevent: let the hub run what is ready
            results += self._run(calls[i : i + BEAT_CHUNK], self._held, partial=True)
        return results

    def _rewrite_call(self, room: str, members: dict[str, str]) -> Call:
        return self._call(self._touch, room, "1", 0, *(x for sid, user in members.items() for x in (sid, user)))

    def _heartbeat(self) -> None:
        while not self._stopping.wait(self._settings.heartbeat_interval):
            self.beat()
            if self._settings.webhook_url:
                try:
                    self.sweep_orphans()
                except (BackendUnavailable, *CONNECTION_ERRORS) as exc:
                    log.warning("event=orphan_sweep_failed error=%s", q(describe(exc)))
                except Exception:
                    log.exception("event=orphan_sweep_error")

    def sweep_orphans(self) -> int:
        """Webhooks: settle the rooms no live node looks after any more. A room's departures
        are told by the script that removes them, which a node hosting the room runs (its
        joins, leaves, heartbeats); in a room whose every node died, nobody would, and its
        members' member.left and its room.vacated would never be told (its keys expire).
        prelude.lua watches each room occupied while webhooks are on (ARCHIVE_KEY:occupied,
        room -> when to look); one node a heartbeat (a lock) sweeps those due with leave.lua,
        which prunes, tells, deletes the room once empty, or says when to look again.
        Returns the rooms swept."""
        watched = archive_key(self._settings.key_prefix) + ":occupied"
        turn = max(int(self._settings.heartbeat_interval * 900), 1)  # under one interval
        if not self._redis.set(watched + ":sweep", self._node, nx=True, px=turn):
            return 0
        due = self._redis.zrangebyscore(watched, "-inf", int(time.time() * 1000), start=0, num=ORPHANS_PER_ROUND)
        rooms = []
        for raw in due:
            try:
                rooms.append(raw.decode())
            except UnicodeDecodeError:  # not a name a script wrote: never a room to sweep
                self._redis.zrem(watched, raw)
        if rooms:
            with self._beating:  # the held connection: one user at a time
                self._in_chunks([self._call(self._leave, room, "sweep", "", "0") for room in rooms])
            log.debug("event=orphans_swept rooms=%d", len(rooms))
        return len(rooms)


def _parse_cursor(cursor: str | None) -> tuple[int, int]:
    """ValueError for a cursor this API did not give."""
    if cursor is None:
        return 0, 0
    shard, _, position = cursor.partition("-")
    if not (shard.isdigit() and position.isdigit()):
        raise ValueError(f"not a cursor of this API: {cursor!r}")
    return int(shard), int(position)
