"""ChatEmitter from a process of its own, as a Celery worker or a script would run it: plain
python, no gevent, no Flask; nodes started as the Procfile starts them, one real Redis (or a
Cluster), real Socket.IO clients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest
from api_client import ApiClient
from helpers import wait_until
from processes import ROOT
from streams import SendStream
from test_cluster import cluster  # noqa: F401 (fixture)
from test_direct import DirectClient
from test_sentinel import MASTER, PASSWORD, SENTINEL_PASSWORD, sentinel_setup  # noqa: F401 (fixture)

from chat_app.emitter import ChatEmitter, EmitterInputError, EmitterUnavailable
from chat_app.protocol import ErrorCode
from chat_app.settings import SettingsError

PRELUDE = """
import json, sys
from chat_app.emitter import ChatEmitter
heavy = [m for m in sys.modules if m.split(".")[0] in ("gevent", "flask")]
assert not heavy, heavy
chat = ChatEmitter.from_env()
"""
EPILOGUE = """
assert "gevent" not in sys.modules and "flask" not in sys.modules
print(json.dumps(out))
"""


def run_emitter(body: str, **env: str) -> Any:
    """Run `body` in a fresh plain python (the venv's, no monkey-patching) with `chat` ready;
    it leaves its answer in `out`."""
    script = PRELUDE + textwrap.dedent(body) + EPILOGUE
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    environment.update({"PYTHONPATH": str(ROOT), **env})
    done = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_posts_from_a_plain_process_are_delivered_in_seq_order_among_member_sends(redis_server, nodes) -> None:
    env = {"SEND_RATE": "1000", "SEND_BURST": "1000"}
    a = nodes.start(redis_server.url, **env)
    b = nodes.start(redis_server.url, **env)
    sender, near, far = ApiClient(a.url, "alice"), ApiClient(a.url, "near"), ApiClient(b.url, "far")
    for client in (sender, near, far):
        client.call("join_room", "lobby")
    stream = SendStream(sender, "lobby", rate=100).start()
    out = run_emitter(
        """
        posts = [chat.publish("lobby", f"e{i}", sender="shop") for i in range(40)]
        first = chat.publish("lobby", "Your order shipped", sender="shop", key="order-42")
        again = chat.publish("lobby", "Your order shipped", sender="shop", key="order-42")
        out = {"posts": posts, "first": first, "again": again}
        """,
        REDIS_URL=redis_server.url,
    )
    stream.stop()
    first, again = out["first"], out["again"]
    assert (again["id"], again["seq"], again["epoch"]) == (first["id"], first["seq"], first["epoch"])
    assert set(first) == {"id", "seq", "epoch", "timestamp"}
    members = [m for m in stream.acks.values() if m.get("ok")]
    total = len(members) + 41
    assert len(members) == stream.sent
    marker = chat_marker(redis_server.url)  # after everything: a duplicate would come before it
    for client in (sender, near, far):
        wait_until(lambda c=client: any(m["id"] == marker for m in c.received()), what="every message")
        got = client.received()[:-1]
        assert [m["seq"] for m in got] == list(range(1, total + 1)), "one seq order, none twice, none missing"
        posted = [m for m in got if m["sender"] == "shop"]
        assert [m["message"] for m in posted] == [f"e{i}" for i in range(40)] + ["Your order shipped"]
        assert {m["instance_id"] for m in posted} == {f"emitter:{socket.gethostname()}"}
        assert [m["id"] for m in got].count(first["id"]) == 1, "the retry was delivered once"
        assert {m["sender"] for m in got} == {"shop", "alice"}
    assert [(p["id"], p["seq"]) for p in out["posts"]] == [
        (m["id"], m["seq"]) for m in far.received() if m["sender"] == "shop"
    ][:40]


def chat_marker(redis_url: str) -> str:
    with ChatEmitter(redis_url) as chat:
        return chat.publish("lobby", "the end")["id"]


def test_commands_from_a_plain_process_act_on_every_node(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)  # no API_KEY: the emitter needs none
    b = nodes.start(redis_server.url)
    alice_a, alice_b, bob = ApiClient(a.url, "alice"), ApiClient(b.url, "alice"), ApiClient(b.url, "bob")
    bob.call("join_room", "lobby")
    out = run_emitter(
        """
        joined = chat.join_user("alice", "lobby")
        full = chat.command("join", "alice", "lobby")
        out = {"joined": joined, "again": [full.connections, full.nodes, full.expected]}
        """,
        REDIS_URL=redis_server.url,
    )
    assert out == {"joined": 2, "again": [0, 2, 2]}
    for alice in (alice_a, alice_b):
        assert alice.wait_for(1, "room_joined")[0]["room"] == "lobby"
    wait_until(lambda: [p["action"] for p in bob.received("presence") if p["user"] == "alice"] == ["join"])

    out = run_emitter(
        """
        out = {"left": chat.leave_user("alice", "lobby", ban_seconds=30)}
        """,
        REDIS_URL=redis_server.url,
    )
    assert out == {"left": 2}
    for alice in (alice_a, alice_b):
        assert alice.wait_for(1, "room_left") == [{"room": "lobby", "reason": "banned"}]
        assert alice.call("join_room", "lobby")["error"]["code"] == "forbidden_room"

    out = run_emitter('out = {"gone": chat.disconnect_user("alice", reason="spam")}', REDIS_URL=redis_server.url)
    assert out == {"gone": 2}
    wait_until(lambda: not alice_a.sio.connected and not alice_b.sio.connected, timeout=5, what="both closed")
    assert alice_a.received("disconnected_by_server") == [{"reason": "spam"}]
    assert bob.sio.connected


def test_emitter_errors_carry_the_protocols_codes(redis_server) -> None:
    chat = ChatEmitter(redis_server.url, max_message_bytes=100, send_deadline=1.0)
    cases = [
        (lambda: chat.publish("bad*room", "x"), ErrorCode.INVALID_ROOM),
        (lambda: chat.publish("lobby", "x" * 101), ErrorCode.MESSAGE_TOO_LARGE),
        (lambda: chat.publish("lobby", ""), ErrorCode.INVALID_PAYLOAD),
        (lambda: chat.publish("lobby", "x", sender="a\x00b"), ErrorCode.INVALID_USER),
        (lambda: chat.publish("lobby", 42), ErrorCode.INVALID_PAYLOAD),  # type: ignore[arg-type]
        (lambda: chat.join_user("al\nice", "lobby"), ErrorCode.INVALID_USER),
        (lambda: chat.leave_user("alice", "lobby", ban_seconds=0), ErrorCode.INVALID_PAYLOAD),
        (lambda: chat.disconnect_user("alice", reason="x" * 201), ErrorCode.INVALID_PAYLOAD),
    ]
    for call, code in cases:
        with pytest.raises(EmitterInputError) as caught:
            call()
        assert caught.value.code is code, caught.value
    assert redis_server.client().dbsize() == 0, "refused input wrote nothing"

    with pytest.raises(SettingsError, match="ChatEmitter needs Redis: set REDIS_URL"):
        ChatEmitter()
    with pytest.raises(SettingsError, match="needs Redis"):
        ChatEmitter.from_env({})

    redis_server.pause()
    try:
        for call in (
            lambda: chat.publish("lobby", "while away"),
            lambda: chat.join_user("alice", "lobby"),
            lambda: chat.leave_user("alice", "lobby", ban_seconds=5),
        ):
            started = time.monotonic()
            with pytest.raises(EmitterUnavailable) as caught:
                call()
            assert caught.value.code is ErrorCode.UNAVAILABLE
            assert time.monotonic() - started < 1.0 + 2.0, "the deadline (1 s), give or take a busy machine"
    finally:
        redis_server.resume()
    wait_until(lambda: _publishes(chat), timeout=10, what="posts again once Redis is back")
    assert chat.join_user("alice", "lobby") == 0, "no node: nobody acted"


def _publishes(chat: ChatEmitter) -> bool:
    try:
        return chat.publish("lobby", "back")["seq"] >= 1
    except EmitterUnavailable:
        return False


def test_emitter_on_a_redis_cluster(cluster, nodes) -> None:  # noqa: F811 (fixture)
    startup = f"127.0.0.1:{cluster[1].port}"
    a = nodes.start(None, REDIS_CLUSTER_NODES=startup)
    b = nodes.start(None, REDIS_CLUSTER_NODES=startup)
    alice, bob = ApiClient(a.url, "alice"), ApiClient(b.url, "bob")
    rooms = [f"room-{i}" for i in range(6)]  # spread over the shards
    for room in rooms:
        bob.call("join_room", room)
    out = run_emitter(
        """
        acks = [chat.publish(room, "to " + room) for room in ROOMS]
        out = {"acks": acks, "joined": [chat.join_user("alice", room) for room in ROOMS]}
        """.replace("ROOMS", repr(rooms)),
        REDIS_CLUSTER_NODES=startup,
    )
    assert out["joined"] == [1] * len(rooms)
    got = bob.wait_for(len(rooms))
    assert sorted((m["room"], m["seq"]) for m in got) == sorted((r, 1) for r in rooms)
    assert [e["room"] for e in alice.wait_for(len(rooms), "room_joined")] == rooms
    assert {ack["id"] for ack in out["acks"]} == {m["id"] for m in got}


def test_emitter_and_commands_through_sentinel(sentinel_setup, nodes) -> None:  # noqa: F811 (fixture)
    _master, _replica, sentinels = sentinel_setup
    env = {"REDIS_SENTINELS": sentinels.setting, "REDIS_SENTINEL_MASTER": MASTER}
    env |= {"REDIS_PASSWORD": PASSWORD, "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
    a = nodes.start(None, **env)
    b = nodes.start(None, **env)
    alice_a, alice_b, bob = ApiClient(a.url, "alice"), ApiClient(b.url, "alice"), ApiClient(b.url, "bob")
    bob.call("join_room", "lobby")
    out = run_emitter(
        """
        joined = chat.join_user("alice", "lobby")
        ack = chat.publish("lobby", "through the sentinels", sender="shop")
        out = {"joined": joined, "ack": ack}
        """,
        **env,
    )
    assert out["joined"] == 2
    for client in (alice_a, alice_b, bob):
        assert [(m["id"], m["sender"]) for m in client.wait_for(1)] == [(out["ack"]["id"], "shop")]


def test_a_post_into_a_direct_conversation_reaches_both_users_and_their_lists(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    alice, bob = DirectClient(a.url, "alice"), DirectClient(b.url, "bob")
    out = run_emitter(
        """out = chat.publish("@alice+bob", "your order shipped", sender="shop")""", REDIS_URL=redis_server.url
    )
    for person in (alice, bob):  # neither ever opened it
        wait_until(lambda p=person: p.seen("@alice+bob") == ["your order shipped"], what="the post reaches them")
        listed = person.call("list_directs", {})["directs"]
        assert [(d["room"], d["seq"]) for d in listed] == [("@alice+bob", out["seq"])]
    alice.close()
    bob.close()
