"""Webhook events that are not messages: a room occupied or vacated, a member joined or left.

Redis's presence scripts decide them where presence changes (backends/redis/lua/prelude.lua
`tell`), atomically, so each happens once for the whole deployment, and append each to the
archive's outbox (field `w`) while ARCHIVE_KEY:webhooks says a node runs webhooks. The
archive writer that reads the entry turns it into a webhook_outbox row here; its id derives
from the entry's, so a retried or taken-over batch writes the same row again, and is skipped."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from pydantic_core import PydanticCustomError

from ..protocol.names import check_room
from .store import event_body

ROOM_TYPES = frozenset({"room.occupied", "room.vacated"})
MEMBER_TYPES = frozenset({"member.joined", "member.left"})
USER_MAX_CHARS = 256  # the user-name rule allows 64; a bound on what a Redis entry may hold
POS_PER_MS = 1_000_000  # an entry id `<ms>-<n>` as one bigint: ms * 10^6 + n


class BadOccupancyEvent(ValueError):
    """An outbox entry that is not one of the presence scripts' events: dropped and counted."""


@dataclass(frozen=True, slots=True)
class OccupancyEvent:
    webhook_id: str  # `evt_<outbox entry id>`: stable whoever writes it, however often
    room: str
    seq: int  # the room's last seq when it happened: orders it among the room's messages
    pos: int  # the entry's place in the outbox stream: orders it among its seq's events
    type: str
    body: str  # the webhook's JSON: {"type", "timestamp", "data": {"room", "user"?}}

    @classmethod
    def parse(cls, entry_id: bytes, raw: bytes) -> OccupancyEvent:
        try:
            value = orjson.loads(raw)
            ms, n = (int(part) for part in entry_id.decode().split("-"))
        except (orjson.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise BadOccupancyEvent(f"not an event: {exc}") from None
        if not isinstance(value, dict):
            raise BadOccupancyEvent("not an event: not a JSON object")
        kind, room, user, at, seq = (value.get(k) for k in ("type", "room", "user", "at", "seq"))
        if kind not in ROOM_TYPES | MEMBER_TYPES:
            raise BadOccupancyEvent(f"unknown event type {kind!r}")
        if not isinstance(room, str) or not _is_room(room):
            raise BadOccupancyEvent("an event's room is not a room name")
        if kind in MEMBER_TYPES:
            if not isinstance(user, str) or not 0 < len(user) <= USER_MAX_CHARS:
                raise BadOccupancyEvent("a member event's user is not a name")
            data: dict[str, str] = {"room": room, "user": user}
        elif user is not None:
            raise BadOccupancyEvent("a room event names a user")
        else:
            data = {"room": room}
        if type(at) is not int or type(seq) is not int or at < 0 or seq < 0 or not 0 <= n < POS_PER_MS:
            raise BadOccupancyEvent("an event's time, seq or entry id is out of range")
        when = datetime.fromtimestamp(at / 1000, UTC)
        body = event_body(kind, when, orjson.dumps(data).decode())
        return cls(f"evt_{ms}-{n}", room, seq, ms * POS_PER_MS + n, kind, body)


def _is_room(room: str) -> bool:
    try:
        return check_room(room) == room
    except PydanticCustomError:
        return False
