"""Hostile input changes nothing: validation, key safety, membership, auth, rate limits.
Here what needs no node; on real nodes: system/test_security_nodes.py."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_app import create_app, json_codec
from chat_app.backends.redis.keys import RoomKeys, escape
from chat_app.protocol import ChatError, ErrorCode, SendRequest, check_room_name, parse
from chat_app.settings import Settings

CODES = {c.value for c in ErrorCode}
HOME = "home"  # the room the fuzzing client is in: without it no send could succeed
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
fuzzed_rooms = st.one_of(st.just(HOME), st.text(max_size=70), json_values)
extras = {"since": json_values, "epoch": json_values, "key": json_values, "sender": json_values}
payloads = json_values | st.fixed_dictionaries(
    {"room": fuzzed_rooms}, optional={"message": st.text(max_size=50) | json_values, **extras}
)
# Two sends in three are shaped like one, so that many are valid.
sends = st.integers(0, 2).flatmap(
    lambda shaped: (
        st.fixed_dictionaries(
            {"room": st.just(HOME) | fuzzed_rooms, "message": st.text(min_size=1, max_size=50)},
            optional=extras | {"key": st.text(max_size=70) | json_values},
        )
        if shaped
        else payloads
    )
)


@pytest.fixture(scope="module")
def app_and_client():
    unlimited = {"send_rate": 1e6, "send_burst": 10**6, "join_rate": 1e6, "join_burst": 10**6}
    unlimited |= {"leave_rate": 1e6, "leave_burst": 10**6}  # each fuzzed join is undone by a leave
    settings_ = Settings.from_env({}, instance_id="t", **unlimited)
    app = create_app(settings_, async_mode="threading")
    sio = app.extensions["chat_socketio"]
    client = sio.test_client(app, auth={"username": "fuzzer"})
    assert client.is_connected()
    assert client.emit("join_room", HOME, callback=True)["ok"]
    return app, client


def well_formed(ack: Any) -> bool:
    if not isinstance(ack, dict) or not isinstance(ack.get("ok"), bool):
        return False
    if ack["ok"]:
        return True
    error = ack.get("error")
    return isinstance(error, dict) and error.get("code") in CODES and isinstance(error.get("message"), str)


@pytest.mark.parametrize("event", ["join_room", "leave_room", "send_message"])
def test_any_payload_is_answered_and_only_valid_sends_publish(app_and_client, event: str) -> None:
    app, client = app_and_client
    service = app.extensions["chat_service"]
    answers: Counter[bool] = Counter()
    stored: dict[str, str | None] = {}  # message id -> its idempotency key

    @settings(max_examples=150, deadline=None)
    @given(payload=sends if event == "send_message" else payloads)
    def answered(payload: Any) -> None:
        client.get_received()
        before = service.counters.published
        ack = client.emit(event, payload, callback=True)
        assert well_formed(ack), ack
        answers[ack["ok"]] += 1
        if event == "send_message":
            published = service.counters.published - before
            delivered = [e["args"][0] for e in client.get_received() if e["name"] == "broadcast_message"]
            if not ack["ok"]:
                assert (published, delivered) == (0, []), ack
                return
            request = parse(SendRequest, json_codec.loads(json_codec.dumps(payload)))  # as the server read it
            assert published == 1
            if ack["id"] in stored:  # a resend of an earlier key: that message, not a new one
                assert request.key is not None and stored[ack["id"]] == request.key, (ack, payload)
                assert delivered == []
            else:
                assert [(m["id"], m["seq"], m["message"]) for m in delivered] == [
                    (ack["id"], ack["seq"], request.message)
                ]
                stored[ack["id"]] = request.key
        # Back to being in HOME only, for the next example.
        if event == "join_room" and ack["ok"] and ack["room"] != HOME:
            assert client.emit("leave_room", ack["room"], callback=True)["ok"]
        if event == "leave_room" and ack["ok"] and ack["room"] == HOME:
            assert client.emit("join_room", HOME, callback=True)["ok"]

    answered()
    # Both answers were really exercised (a server refusing every send would pass the rest).
    assert answers[True] and answers[False], answers
    if event == "send_message":
        assert len(stored) >= 10, stored


def test_errors_without_ack_arrive_as_error_events(app_and_client) -> None:
    _, client = app_and_client
    client.get_received()
    client.emit("send_message", {"room": "nowhere", "message": "x"})
    client.emit("join_room", 42)
    errors = [e["args"][0] for e in client.get_received() if e["name"] == "error"]
    assert [(e["code"], e["event"]) for e in errors] == [
        ("not_in_room", "send_message"),
        ("invalid_payload", "join_room"),
    ]


def test_extra_event_arguments_are_ignored_and_none_is_refused(app_and_client) -> None:
    _, client = app_and_client
    assert client.emit("join_room", "extras", "surplus", {"x": 1}, callback=True)["ok"]
    sent = client.emit("send_message", {"room": "extras", "message": "hi"}, "surplus", callback=True)
    assert sent["ok"] and sent["seq"] == 1
    assert client.emit("send_message", callback=True)["error"]["code"] == "invalid_payload"
    assert client.emit("leave_room", "extras", "surplus", callback=True)["ok"]


@pytest.mark.parametrize(
    ("room", "ok"),
    [
        ("lobby", True),
        ("Café über 東京 #1", True),
        ("a:b@c.d-e_f#g", True),
        ("", False),
        (" lead", False),
        ("trail ", False),
        ("a*b", False),
        ("a?b", False),
        ("[a]", False),
        ("a/b", False),
        ("a\\b", False),
        ("a\nb", False),
        ("a\x00b", False),
        ("{tag}", False),
        ("x" * 64, True),
        ("x" * 65, False),
    ],
)
def test_room_rule(room: str, ok: bool) -> None:
    if ok:
        assert check_room_name(room)
    else:
        with pytest.raises(ChatError, match="room") as refused:
            check_room_name(room)
        assert refused.value.code is ErrorCode.INVALID_ROOM


def test_rooms_that_differ_only_in_escaped_characters_never_share_keys() -> None:
    cyrillic_a = "\u0430"
    names = ["a b", "a:b", "a#b", "a.b", "a", "ab", "a%3Ab", "A b", "a_b", "a-b", "a@b", cyrillic_a + "b"]
    all_keys = [RoomKeys.of("chat", n) for n in names]
    flat = [k for keys in all_keys for k in (keys.seq, keys.hist, keys.epoch, keys.nodes, keys.channel, keys.users)]
    assert len(flat) == len(set(flat))
    for keys in all_keys:
        inner = keys.channel.removeprefix("chat:{room:").removesuffix("}:ch")
        assert set(inner) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-%")
    assert escape("a b") != escape("a%20b")
