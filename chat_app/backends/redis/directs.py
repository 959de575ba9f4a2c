"""Each user's list of direct conversations in Redis: a zset per user (room -> its last
message, ms), bounded to the newest few, living as long as a room's keys would.

Written off the sender's ack, one pipeline for both users: send.lua cannot touch the lists
(on a Cluster each user's key is on a slot of its own, never the room's), and the list may
lag the ack by a round trip without anyone being able to tell. No script: ZADD GT keeps the
newest time whichever write lands last, and the trim and expiry are idempotent."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..base import Direct, Position
from .connection import unavailable_when_unreachable
from .keys import RoomKeys, user_directs
from .scripts import AnyRedis


class DirectLists:
    def __init__(self, client: AnyRedis, prefix: str, ttl_ms: int) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl_ms = ttl_ms

    def record(self, room: str, users: Sequence[str], at: int, keep: int) -> None:
        with unavailable_when_unreachable(), self._redis.pipeline(transaction=False) as pipe:
            for user in users:
                key = user_directs(self._prefix, user)
                pipe.zadd(key, {room: at}, gt=True)
                pipe.zremrangebyrank(key, 0, -keep - 1)
                pipe.pexpire(key, self._ttl_ms)
            pipe.execute()

    def refresh(self, users: Iterable[str]) -> None:
        """Keep the lists of users whose conversations are live as long as their rooms (the
        heartbeat's part of the rooms' TTL rule)."""
        keys = sorted({user_directs(self._prefix, user) for user in users})
        if not keys:
            return
        with unavailable_when_unreachable(), self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pexpire(key, self._ttl_ms)
            pipe.execute()

    def read(self, user: str, limit: int) -> list[Direct]:
        """Two round trips: the list, then every room's epoch and seq (cross-slot on a
        Cluster, so a pipeline, not a script)."""
        with unavailable_when_unreachable():
            entries = self._redis.zrevrange(user_directs(self._prefix, user), 0, limit - 1, withscores=True)
            if not entries:
                return []
            rooms = [raw.decode() for raw, _ in entries]
            with self._redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    keys = RoomKeys.of(self._prefix, room)
                    pipe.get(keys.epoch)
                    pipe.get(keys.seq)
                stored = pipe.execute()
        out = []
        for i, (room, (_raw, at)) in enumerate(zip(rooms, entries, strict=True)):
            epoch, seq = stored[2 * i], stored[2 * i + 1]
            position = Position(epoch.decode(), int(seq or 0)) if epoch else None
            out.append(Direct(room, int(at), position))
        return out
