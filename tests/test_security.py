"""Hostile input changes nothing: validation, key safety, membership, auth, rate limits."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import socketio
from helpers import ChatClient, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat_app import create_app
from chat_app.backends.redis_keys import RoomKeys, escape
from chat_app.protocol import ChatError, ErrorCode, SendRequest, check_room_name, parse
from chat_app.settings import Settings

CODES = {c.value for c in ErrorCode}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
payloads = json_values | st.fixed_dictionaries(
    {"room": st.one_of(st.text(max_size=70), json_values)},
    optional={
        "message": st.one_of(st.text(max_size=50), json_values),
        "since": json_values,
        "epoch": json_values,
        "key": json_values,
        "sender": json_values,
    },
)


@pytest.fixture(scope="module")
def app_and_client():
    settings_ = Settings.from_env({}, instance_id="t", send_rate=1e6, send_burst=10**6, join_rate=1e6, join_burst=10**6)
    app = create_app(settings_, async_mode="threading")
    sio = app.extensions["chat_socketio"]
    client = sio.test_client(app, auth={"username": "fuzzer"})
    assert client.is_connected()
    assert client.emit("join_room", "home", callback=True)["ok"]
    return app, client


def well_formed(ack: Any) -> bool:
    if not isinstance(ack, dict) or not isinstance(ack.get("ok"), bool):
        return False
    if ack["ok"]:
        return True
    error = ack.get("error")
    return isinstance(error, dict) and error.get("code") in CODES and isinstance(error.get("message"), str)


@pytest.mark.parametrize("event", ["join_room", "leave_room", "send_message"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=payloads)
def test_any_payload_is_answered_and_only_valid_sends_publish(app_and_client, event: str, payload: Any) -> None:
    app, client = app_and_client
    service = app.extensions["chat_service"]
    before = service.counters.published
    ack = client.emit(event, payload, callback=True)
    assert well_formed(ack), ack
    if event == "send_message":
        published = service.counters.published - before
        assert published == (1 if ack["ok"] else 0)
        if ack["ok"]:
            parse(SendRequest, payload)  # it was valid
    if event == "join_room" and ack["ok"]:
        client.emit("leave_room", ack["room"], callback=True)


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


def test_rooms_a_and_ab_and_escaped_names_do_not_leak(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    rooms = ["a", "ab", "a b", "a:b", "a#b", "a.b"]
    listeners = {room: ChatClient(b.url, f"l{i}") for i, room in enumerate(rooms)}
    for room, client in listeners.items():
        client.call("join_room", room)
    sender = ChatClient(a.url, "s")
    outsider = ChatClient(b.url, "outsider")
    for room in rooms:
        sender.call("join_room", room)
        assert sender.call("send_message", {"room": room, "message": f"for {room}"})["ok"]
    for client in listeners.values():
        wait_until(lambda client=client: client.received())
    time.sleep(0.3)  # a leaked message would arrive within this window
    for room, client in listeners.items():
        assert [(m["room"], m["message"]) for m in client.received()] == [(room, f"for {room}")]
    assert outsider.received() == []


def test_a_one_megabyte_message_is_refused_and_the_connection_stays(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url)
    client = ChatClient(node.url, "paster")
    client.call("join_room", "lobby")
    r = redis_server.client()
    seq_before = r.get("chat:{room:lobby}:seq")
    ack = client.call("send_message", {"room": "lobby", "message": "x" * 1_000_000})
    assert ack["ok"] is False and ack["error"]["code"] == "message_too_large"
    assert r.get("chat:{room:lobby}:seq") == seq_before
    assert client.sio.connected
    assert client.call("send_message", {"room": "lobby", "message": "small"})["ok"]


def test_garbage_on_a_room_channel_never_stops_valid_messages(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    sender, reader = ChatClient(a.url, "s"), ChatClient(b.url, "r")
    sender.call("join_room", "lobby")
    reader.call("join_room", "lobby")
    r = redis_server.client()
    channel = RoomKeys.of("chat", "lobby").channel
    garbage = [
        b"\x80\x81\xfe\xff",
        b"not json",
        b"[]",
        b"{}",
        b'{"v": 2, "kind": "message"}',
        b'{"v": 1, "kind": "message", "id": 1}',
        b'{"v":1,"kind":"presence","room":"lobby","action":"explode","user":"x","members_count":1,"instance_id":"i"}',
        b"\x80\x04\x95" + b"pickle" * 10,
        b'{"v":1,"kind":"message","message":"' + b"x" * 100_000 + b'"}',
    ]
    for payload in garbage:
        r.publish(channel, payload)
    assert sender.call("send_message", {"room": "lobby", "message": "still fine"})["ok"]
    assert [m["message"] for m in reader.wait_for(1)] == ["still fine"]
    assert b.health()["status"] == "ok"


SECRET = "test-secret-for-hs256-at-least-32-bytes"


def token(sub: str, exp_in: float = 60, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + exp_in), **claims}, secret, algorithm="HS256")


def refused(url: str, auth: Any) -> str:
    """Connect, expect a refusal, return what the server said (`connect_error` data)."""
    client = socketio.Client(reconnection=False)
    said: list[Any] = []
    client.on("connect_error", said.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(url, transports=["websocket"], auth=auth, wait_timeout=5)
    assert said and said[0]["data"]["code"] == "unauthorized", said
    return said[0]["message"]


def test_auth_secret_requires_a_valid_token(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, AUTH_SECRET=SECRET)
    b = nodes.start(redis_server.url, AUTH_SECRET=SECRET)
    assert "token is required" in refused(a.url, None)
    assert "token is required" in refused(a.url, {"username": "mallory"})
    assert "not valid" in refused(a.url, {"token": token("mallory", secret="another-secret-of-at-least-32-bytes")})
    assert "expired" in refused(a.url, {"token": token("mallory", exp_in=-10)})

    alice = ChatClient(a.url, connect_auth={"token": token("alice", rooms=["lobby"])})
    bob = ChatClient(b.url, connect_auth={"token": token("bob")})
    assert alice.call("join_room", "lobby")["ok"]
    forbidden = alice.call("join_room", "secret")
    assert forbidden["ok"] is False and forbidden["error"]["code"] == "forbidden_room"
    bob.call("join_room", "lobby")
    alice.call("send_message", {"room": "lobby", "message": "hi", "sender": "the CEO"})
    assert [m["sender"] for m in bob.wait_for(1)] == ["alice"]


def test_rate_limit_refuses_the_excess_and_serves_others(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, SEND_RATE="1", SEND_BURST="5")
    spammer, other = ChatClient(node.url, "spam"), ChatClient(node.url, "other")
    spammer.call("join_room", "lobby")
    other.call("join_room", "lobby")
    acks = [spammer.call("send_message", {"room": "lobby", "message": f"{i}"}) for i in range(12)]
    ok = [a for a in acks if a["ok"]]
    limited = [a for a in acks if not a["ok"]]
    assert 5 <= len(ok) <= 7 and limited and all(a["error"]["code"] == "rate_limited" for a in limited)
    assert other.call("send_message", {"room": "lobby", "message": "me too"})["ok"]
    wait_until(lambda: len(other.received()) == len(ok) + 1, what="only accepted sends delivered")
