"""Decision hooks (HOOK_URL) on real nodes, a real Redis and a real HTTP backend of the test's
own (tests/support/hook_receiver.py, its own process and port): the backend refuses joins, rewrites
and tags sends, names users from a cookie, and is slow or wrong on purpose."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
import socketio
from helpers import ChatClient
from receivers import Receiver
from standardwebhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = "k" * 40
FAST = {"SEND_RATE": "1000", "SEND_BURST": "1000", "JOIN_RATE": "100", "JOIN_BURST": "100"}


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(tmp_path / "receiver", sleep=3.0)
    yield r
    r.stop()


def hooked(receiver: Receiver, **env: str) -> dict[str, str]:
    return {"HOOK_URL": f"{receiver.url}/hook", "HOOK_SECRET": SECRET, "API_KEY": KEY, **FAST, **env}


def test_a_refused_join_is_forbidden_room_on_every_node(redis_server, nodes, receiver) -> None:
    a = nodes.start(redis_server.url, **hooked(receiver))
    b = nodes.start(redis_server.url, **hooked(receiver))
    for node in (a, b):
        client = ChatClient(node.url, "alice")
        try:
            refused = client.call("join_room", "secret-plans")
            assert refused == {"ok": False, "error": {"code": "forbidden_room", "message": "members only"}}
            assert client.call("join_room", "lobby")["ok"]
        finally:
            client.close()
    calls = [json.loads(r["body"]) for r in receiver.requests("/hook")]
    joins = [c for c in calls if c["event"] == "join"]
    assert joins == [{"event": "join", "user": "alice", "room": r} for r in ["secret-plans", "lobby"] * 2]
    verifier = Webhook(SECRET)
    for r in receiver.requests("/hook"):  # every call signed as Standard Webhooks says
        assert verifier.verify(r["body"], r["headers"]) == json.loads(r["body"])


def test_a_rewritten_message_reaches_both_nodes_and_history_with_its_meta(redis_server, nodes, receiver) -> None:
    a = nodes.start(redis_server.url, **hooked(receiver))
    b = nodes.start(redis_server.url, **hooked(receiver))
    alice, bob = ChatClient(a.url, "alice"), ChatClient(b.url, "bob")
    try:
        assert alice.call("join_room", "team")["ok"] and bob.call("join_room", "team")["ok"]
        sent = alice.call("send_message", {"room": "team", "message": "darn it"})
        assert sent["ok"]
        meta = {"moderated": True, "by": "filter"}
        for client in (alice, bob):
            [got] = client.wait_for(1)
            assert (got["message"], got["meta"], got["seq"]) == ("d**n it", meta, sent["seq"])
        refused = alice.call("send_message", {"room": "team", "message": "buy spam now"})
        assert refused == {"ok": False, "error": {"code": "forbidden", "message": "looks like spam"}}
        plain = alice.call("send_message", {"room": "team", "message": "hello"})
        assert plain["ok"]
        [_, hello] = bob.wait_for(2)
        assert "meta" not in hello  # no meta: the envelope as it always was
        carol = ChatClient(b.url, "carol")
        try:
            history = carol.call("join_room", "team")["history"]
            assert [(m["message"], m.get("meta")) for m in history] == [("d**n it", meta), ("hello", None)]
        finally:
            carol.close()
        # The server API's posts skip the hooks: the backend asked for them itself.
        before = len(receiver.requests("/hook"))
        posted = requests.post(
            f"{a.url}/api/rooms/team/messages",
            headers={"Authorization": f"Bearer {KEY}"},
            json={"message": "darn spam", "sender": "shop"},
            timeout=10,
        )
        assert posted.status_code == 200, posted.text
        assert bob.wait_for(3)[2]["message"] == "darn spam"
        assert len(receiver.requests("/hook")) == before
    finally:
        alice.close()
        bob.close()


def test_a_hook_slower_than_its_timeout_is_answered_per_hook_failure(redis_server, nodes, receiver) -> None:
    closed = nodes.start(redis_server.url, **hooked(receiver, HOOK_TIMEOUT="0.5"))
    opened = nodes.start(redis_server.url, **hooked(receiver, HOOK_TIMEOUT="0.5", HOOK_FAILURE="open"))
    alice, bob = ChatClient(closed.url, "alice"), ChatClient(opened.url, "bob")
    try:
        started = time.monotonic()
        refused = alice.call("join_room", "slow-room")
        assert refused["error"]["code"] == "unavailable" and time.monotonic() - started < 2
        assert bob.call("join_room", "slow-room")["ok"]  # open: allowed as if the hook said yes
        assert alice.call("join_room", "room")["ok"]

        # A slow call parks its own greenlet only: the node answers others meanwhile.
        slow: dict = {}
        thread = threading.Thread(
            target=lambda: slow.update(alice.call("send_message", {"room": "room", "message": "slow one"}))
        )
        thread.start()
        time.sleep(0.1)
        other = ChatClient(closed.url, "carol")
        try:
            started = time.monotonic()
            assert other.call("join_room", "room")["ok"]
            assert other.call("send_message", {"room": "room", "message": "quick"})["ok"]
            assert time.monotonic() - started < 0.4
        finally:
            other.close()
        thread.join(timeout=5)
        assert slow["error"]["code"] == "unavailable"  # closed: refused, never dropped unanswered
        sent = bob.call("send_message", {"room": "slow-room", "message": "slow but open"})
        assert sent["ok"] and bob.wait_for(1)[0]["message"] == "slow but open"
        assert "event=hook_failed" in closed.log()
    finally:
        alice.close()
        bob.close()


def test_a_connect_hook_names_the_user_from_a_cookie(redis_server, nodes, receiver) -> None:
    node = nodes.start(redis_server.url, **hooked(receiver, HOOK_HEADERS="Cookie, X-Product"))
    carol = ChatClient(node.url, "whoever", headers={"Cookie": "session=s-carol; theme=dark", "X-Other": "no"})
    try:
        assert carol.call("join_room", "lobby")["ok"]
        assert carol.call("send_message", {"room": "lobby", "message": "hi"})["ok"]
        assert carol.wait_for(1)[0]["sender"] == "carol"
    finally:
        carol.close()
    [connect, *_] = [json.loads(r["body"]) for r in receiver.requests("/hook")]
    assert connect == {
        "event": "connect",
        "user": "whoever",
        "auth": {"username": "whoever"},
        "headers": {"cookie": "session=s-carol; theme=dark"},
    }
    client = socketio.Client(reconnection=False)
    said: list = []
    client.on("connect_error", said.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(node.url, transports=["websocket"], headers={"Cookie": "session=bad"}, wait_timeout=5)
    assert said[0]["data"] == {"code": "unauthorized", "message": "session expired"}


@pytest.mark.parametrize("what", ["notjson", "types", "huge", "error"])
def test_bad_hook_answers_get_the_configured_failure_never_a_crash(redis_server, nodes, receiver, what) -> None:
    closed = nodes.start(redis_server.url, **hooked(receiver))
    opened = nodes.start(redis_server.url, **hooked(receiver, HOOK_FAILURE="open"))
    alice, bob = ChatClient(closed.url, "alice"), ChatClient(opened.url, "bob")
    try:
        refused = alice.call("join_room", f"{what}-room")
        assert refused["error"]["code"] == "unavailable", refused
        assert bob.call("join_room", f"{what}-room")["ok"]
        assert alice.call("join_room", "fine")["ok"]
        refused = alice.call("send_message", {"room": "fine", "message": f"{what} text"})
        assert refused["error"]["code"] == "unavailable", refused
        sent = bob.call("send_message", {"room": f"{what}-room", "message": f"{what} text"})
        assert sent["ok"] and "meta" not in bob.wait_for(1)[0]  # a bad meta is never passed on
        assert closed.health()["status"] == "ok" and opened.health()["status"] == "ok"
        assert "Traceback" not in closed.log() + opened.log()
        metrics = requests.get(f"{closed.url}/metrics", timeout=5).text
        failures = next(line for line in metrics.splitlines() if line.startswith("chat_hook_failures_total{"))
        assert float(failures.rsplit(" ", 1)[1]) >= 2
    finally:
        alice.close()
        bob.close()
