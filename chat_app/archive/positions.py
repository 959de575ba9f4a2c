"""Putting room positions back into a Redis that lost them (restarted empty, flushed, a new
instance). Until then a node that runs the archive starts no room (common.lua
refuse_unseeded): a room's next seq must follow the archived ones under the same epoch."""

from __future__ import annotations

import logging
from itertools import islice

import redis

from ..backends.redis.keys import RoomKeys
from .outbox import Outbox
from .store import ArchiveStore

log = logging.getLogger(__name__)

_CHUNK = 1000


def put_back(client: redis.Redis, store: ArchiveStore, outbox: Outbox, prefix: str, ttl_ms: int) -> int:
    """Every archived room's epoch and seq, where Redis has none (NX: a room a node started
    meanwhile keeps its own), then the marker. Returns the rooms written. One node at a
    time (a lock that expires if it dies); others find the marker when it is done."""
    lock = outbox.marker_key + ":seeding"
    if not client.set(lock, "1", nx=True, px=60_000):
        return 0
    written = 0
    try:
        rooms = iter(store.positions())
        while chunk := list(islice(rooms, _CHUNK)):
            pipe = client.pipeline(transaction=False)
            for position in chunk:
                keys = RoomKeys.of(prefix, position.room)
                pipe.set(keys.epoch, position.epoch, nx=True, px=ttl_ms or None)
                pipe.set(keys.seq, position.seq, nx=True, px=ttl_ms or None)
            written += sum(1 for ok in pipe.execute()[::2] if ok)
        outbox.mark()
    finally:
        client.delete(lock)
    log.info("event=archive_positions_restored rooms=%d", written)
    return written
