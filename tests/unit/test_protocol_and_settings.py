"""Pure units: the wire envelope, settings from the environment."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_app.protocol import (
    SENDER_MAX_CHARS,
    BadEnvelope,
    ChatError,
    Envelope,
    PresenceEvent,
    check_room_name,
    decode_wire,
    envelope_head,
)
from chat_app.settings import Settings, SettingsError

room_chars = st.characters(categories=["L", "Nd"]) | st.sampled_from("_-.:#@")
rooms = st.text(room_chars, min_size=1, max_size=64).filter(
    lambda r: r == __import__("unicodedata").normalize("NFC", r)
)


@given(
    room=rooms,
    sender=st.text(max_size=64),
    message=st.text(min_size=1, max_size=200),
    timestamp=st.integers(min_value=0, max_value=2**53),
    seq=st.integers(min_value=1, max_value=10**12),
)
def test_envelope_round_trips_through_the_publish_script_format(
    room: str, sender: str, message: str, timestamp: int, seq: int
) -> None:
    head = envelope_head("id1", room, sender, message, timestamp, "node-1")
    wire = head + f',"seq":{seq},"epoch":"e1"}}'.encode()  # what send.lua appends
    assert decode_wire(wire, max_bytes=len(wire)) == Envelope(
        "id1", room, sender, message, timestamp, seq, "e1", "node-1"
    )


MAX_WIRE = 10_000
some_id = st.text(min_size=1, max_size=64)
LONG = "x" * 65
# Per field: a valid value, and values just outside its rule or of the wrong JSON type.
wire_fields: dict[str, tuple[st.SearchStrategy[Any], list[Any]]] = {
    "v": (st.just(1), [0, 2, "1", None]),
    "kind": (st.just("?"), ["Message", "", "presences", None]),  # the valid kind is chosen first
    "room": (rooms, ["", " lead", "a*b", "a/b", LONG, "a\nb", 7, None]),
    "instance_id": (some_id, ["", LONG, 7, None]),
    "id": (some_id, ["", LONG, 7, None]),
    "sender": (st.text(max_size=SENDER_MAX_CHARS), [LONG, 7, None]),
    "message": (st.text(max_size=50), [7, None, ["x"], {"x": 1}]),
    "timestamp": (st.integers(min_value=-(2**53), max_value=2**53), [1.5, "1", True, None]),
    "seq": (st.integers(min_value=1, max_value=10**12), [0, -1, 1.0, "1", True, None]),
    "epoch": (some_id, ["", LONG, 7, None]),
    "action": (st.sampled_from(["join", "leave"]), ["sync", "explode", "", "JOIN", 1]),
    "user": (st.text(max_size=SENDER_MAX_CHARS), [LONG, 7, None]),
    "members_count": (st.integers(min_value=0, max_value=10**6), [-1, 1.0, "1", True, None]),
}
KIND_FIELDS = {
    "message": ["v", "kind", "room", "instance_id", "id", "sender", "message", "timestamp", "seq", "epoch"],
    "presence": ["v", "kind", "room", "instance_id", "action", "user", "members_count"],
}
WHOLE = {
    "message": {"v": 1, "kind": "message", "room": "lobby", "instance_id": "n1", "id": "m1", "sender": "al"}
    | {"message": "hi", "timestamp": 1, "seq": 1, "epoch": "e1"},
    "presence": {"v": 1, "kind": "presence", "room": "lobby", "instance_id": "n1", "action": "join", "user": "al"}
    | {"members_count": 1},
}


@st.composite
def near_envelopes(draw: st.DrawFn) -> bytes:
    """A whole envelope or presence event, or one with a field missing or just off its
    rule: random bytes alone never reach the accepting side."""
    kind = draw(st.sampled_from(sorted(KIND_FIELDS)))
    names = KIND_FIELDS[kind]
    obj: dict[str, Any] = {name: draw(wire_fields[name][0]) for name in names} | {"kind": kind}
    spoilt = draw(st.sampled_from([None, *names]))
    if spoilt is not None and draw(st.integers(0, 3)) == 0:
        del obj[spoilt]
    elif spoilt is not None:
        obj[spoilt] = draw(st.sampled_from(wire_fields[spoilt][1]))
    if draw(st.booleans()):
        obj[draw(st.text(max_size=5))] = draw(st.integers() | st.text(max_size=5))  # unknown fields are ignored
    if kind == "message" and draw(st.booleans()):  # compact, v and kind first: send.lua's own form
        head = {name: obj.pop(name) for name in ("v", "kind") if name in obj}
        return json.dumps(head | obj, separators=(",", ":"), ensure_ascii=draw(st.booleans())).encode()
    return json.dumps(obj, ensure_ascii=draw(st.booleans())).encode()


def _str(value: Any, low: int, high: int) -> bool:
    return isinstance(value, str) and low <= len(value) <= high


def _int(value: Any, low: int | None = None) -> bool:
    return type(value) is int and (low is None or value >= low)


def _room(value: Any) -> str | None:
    try:
        return check_room_name(value) if isinstance(value, str) else None
    except ChatError:
        return None


def _wire_object(data: bytes) -> dict[str, Any] | None:
    if len(data) > MAX_WIRE:
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except ValueError:
        return None
    # `"v": true` and `"v": 1.0` pass too: pydantic's Literal[1] matches what equals 1, even
    # in strict mode. Harmless: the rest must still be a whole envelope.
    return obj if isinstance(obj, dict) and type(obj.get("v")) in (int, bool, float) and obj["v"] == 1 else None


def well_formed(data: bytes) -> Envelope | PresenceEvent | None:
    """The wire format written out independently of decode_wire: what it must decode to."""
    obj = _wire_object(data)
    if obj is None:
        return None
    o = obj.get
    room = _room(o("room"))
    if room is None or not _str(o("instance_id"), 1, 64):
        return None
    if o("kind") == "message":
        fields_ok = (
            _str(o("id"), 1, 64)
            and _str(o("sender"), 0, SENDER_MAX_CHARS)
            and isinstance(o("message"), str)
            and _int(o("timestamp"))
            and _int(o("seq"), 1)
            and _str(o("epoch"), 1, 64)
        )
        return (
            Envelope(o("id"), room, o("sender"), o("message"), o("timestamp"), o("seq"), o("epoch"), o("instance_id"))
            if fields_ok
            else None
        )
    if o("kind") == "presence":
        fields_ok = (
            o("action") in ("join", "leave") and _str(o("user"), 0, SENDER_MAX_CHARS) and _int(o("members_count"), 0)
        )
        return PresenceEvent(room, o("action"), o("user"), o("members_count"), o("instance_id")) if fields_ok else None
    return None


# The first draw of `rooms` builds hypothesis's Unicode tables (seconds, once per checkout).
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300) | near_envelopes())
def test_arbitrary_bytes_are_refused_cleanly(data: bytes) -> None:
    """Refused (BadEnvelope, nothing else) unless well-formed, and then decoded as written."""
    try:
        decoded: Envelope | PresenceEvent | None = decode_wire(data, max_bytes=MAX_WIRE)
    except BadEnvelope:
        decoded = None
    assert decoded == well_formed(data)
    if isinstance(decoded, Envelope) and decoded.wire:  # framed for clients as it is
        assert json.loads(decoded.wire) == decoded.to_client()


def test_an_envelope_as_send_lua_stores_it_is_framed_as_it_is_and_any_other_is_reencoded() -> None:
    head = envelope_head("id1", "lobby", "al", 'say "hi"', 5, "n1")
    stored = head + b',"seq":3,"epoch":"e1"}'
    envelope = decode_wire(stored, max_bytes=MAX_WIRE)
    assert envelope.wire == "{" + stored.decode()[len('{"v":1,"kind":"message",') :]
    assert getattr(envelope.to_client(), "json", None) == envelope.wire
    for other in (
        stored[:-1] + b',"extra":1}',  # a field send.lua does not write: validated, then dropped
        stored.replace(b'"lobby"', '"Ca\u0301fe"'.encode()),  # not NFC: validated, then normalised
        json.dumps(json.loads(stored)).encode(),  # not compact
    ):
        decoded = decode_wire(other, max_bytes=MAX_WIRE)
        assert isinstance(decoded, Envelope) and decoded.wire == ""
        assert not hasattr(decoded.to_client(), "json")
    for spoilt in (b',"kind":"presence"}', b',"v":2}', b',"seq":0}'):  # a later duplicate wins, as in JSON.parse
        with pytest.raises(BadEnvelope):
            decode_wire(stored[:-1] + spoilt, max_bytes=MAX_WIRE)


@pytest.mark.parametrize("kind", sorted(KIND_FIELDS))
def test_an_envelope_with_one_field_off_is_refused(kind: str) -> None:
    """Every rule of the wire format, one field at a time, on a whole envelope that passes."""
    whole = WHOLE[kind]
    assert decode_wire(json.dumps(whole).encode(), max_bytes=MAX_WIRE) == well_formed(json.dumps(whole).encode())
    for name in KIND_FIELDS[kind]:
        spoilt = [{k: v for k, v in whole.items() if k != name}] + [whole | {name: v} for v in wire_fields[name][1]]
        for obj in spoilt:
            compact = {k: obj[k] for k in ("v", "kind") if k in obj} | obj  # send.lua's own form
            for text in (json.dumps(obj), json.dumps(compact, separators=(",", ":"))):
                with pytest.raises(BadEnvelope):
                    decode_wire(text.encode(), max_bytes=MAX_WIRE)


def test_settings_read_the_environment() -> None:
    s = Settings.from_env(
        {"PRESENCE_TTL": "3", "HEARTBEAT_INTERVAL": "1", "CORS_ALLOWED_ORIGINS": "https://a, https://b"}
    )
    assert (s.presence_ttl, s.heartbeat_interval, s.cors_allowed_origins) == (3.0, 1.0, ["https://a", "https://b"])
    assert s.redis_url is None and s.key_prefix == "chat"
    assert Settings.from_env({"PUBLISH_LINGER": "0"}).publish_linger == 0.0
    assert Settings.from_env({}).presence_linger == 0.1
    assert Settings.from_env({"PRESENCE_LINGER": "0"}).presence_linger == 0.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PRESENCE_TTL": "soon"}, "PRESENCE_TTL must be a number"),
        ({"HISTORY_LENGTH": "-5"}, "HISTORY_LENGTH must be greater than 0"),
        ({"PRESENCE_TTL": "5", "HEARTBEAT_INTERVAL": "5"}, "must be shorter than"),
        ({"KEY_PREFIX": "chat*"}, "KEY_PREFIX must not contain"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be"),
        ({"AUTH_SECRET": "short"}, "AUTH_SECRET must be at least 32 bytes"),
        ({"PUBLISH_LINGER": "0.5"}, r"PUBLISH_LINGER must be 0 \(off\) to 0.1 seconds"),
        ({"PUBLISH_LINGER": "-0.001"}, r"PUBLISH_LINGER must be 0 \(off\) to 0.1 seconds"),
        ({"PRESENCE_LINGER": "0.2"}, r"PRESENCE_LINGER must be 0 \(off\) to 0.1 seconds"),
    ],
)
def test_bad_settings_are_named_clearly(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)
