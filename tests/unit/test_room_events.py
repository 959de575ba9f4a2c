"""The archive writer's reading of the presence scripts' outbox entries (field `w`): a good one
is a webhook row whose id and place come from the entry; anything else is refused with a
clear error, never a crash (a Redis payload is not trusted)."""

from __future__ import annotations

import json

import pytest

from chat_app.archive.room_events import BadOccupancyEvent, OccupancyEvent


def entry(**fields: object) -> bytes:
    return json.dumps(
        {"type": "member.joined", "room": "r", "user": "alice", "at": 1796538155439, "seq": 7} | fields
    ).encode()


def test_a_member_event_becomes_a_row_with_the_entry_s_id_and_place() -> None:
    event = OccupancyEvent.parse(b"1796538155440-3", entry())
    assert (event.webhook_id, event.room, event.seq, event.pos, event.type) == (
        "evt_1796538155440-3",
        "r",
        7,
        1796538155440 * 1_000_000 + 3,
        "member.joined",
    )
    assert json.loads(event.body) == {
        "type": "member.joined",
        "timestamp": "2026-12-06T06:22:35.439000Z",
        "data": {"room": "r", "user": "alice"},
    }
    assert OccupancyEvent.parse(b"1796538155440-3", entry()) == event  # a retried batch: the same row


def test_a_room_event_has_the_room_only() -> None:
    event = OccupancyEvent.parse(b"5-0", entry(type="room.vacated", user=None))
    assert json.loads(event.body)["data"] == {"room": "r"}


@pytest.mark.parametrize(
    ("entry_id", "raw", "error"),
    [
        (b"5-0", b"not json", "not an event"),
        (b"5-0", b"[1, 2]", "not a JSON object"),
        (b"nonsense", entry(), "not an event"),
        (b"5-0", entry(type="message.created"), "unknown event type"),
        (b"5-0", entry(room="a/b"), "not a room name"),
        (b"5-0", entry(room=5), "not a room name"),
        (b"5-0", entry(user=None), "user is not a name"),
        (b"5-0", entry(user="x" * 300), "user is not a name"),
        (b"5-0", entry(type="room.occupied"), "a room event names a user"),
        (b"5-0", entry(seq=-1), "out of range"),
        (b"5-0", entry(at="soon"), "out of range"),
        (b"5-0", entry(seq=1.5), "out of range"),
        (b"5-1000000", entry(), "out of range"),
    ],
)
def test_anything_else_is_refused_clearly(entry_id: bytes, raw: bytes, error: str) -> None:
    with pytest.raises(BadOccupancyEvent, match=error):
        OccupancyEvent.parse(entry_id, raw)
