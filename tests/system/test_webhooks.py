"""Webhooks (WEBHOOK_URL) on two real nodes, a real Redis, the suite's PostgreSQL and a real
receiver (tests/support/hook_receiver.py, its own process and port): each event once for the whole
deployment, in seq order per room, signed as Standard Webhooks says; retried with the same
webhook-id; kept as failed, listed and replayed."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime

import psycopg
import pytest
import requests
from helpers import ChatClient, wait_until
from processes import ROOT
from receivers import Receiver
from standardwebhooks import Webhook

SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
KEY = "k" * 40
FAST = {"SEND_RATE": "1000", "SEND_BURST": "1000", "JOIN_RATE": "100", "JOIN_BURST": "100"}
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def receiver(tmp_path):
    r = Receiver(tmp_path / "receiver")
    yield r
    r.stop()


def env(receiver: Receiver, database_url: str, **more: str) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "WEBHOOK_URL": f"{receiver.url}/webhook",
        "WEBHOOK_SECRET": SECRET,
        "API_KEY": KEY,
        **FAST,
        **more,
    }


def deliveries(receiver: Receiver) -> list[tuple[str, dict]]:
    """(webhook-id, body) of every webhook request, in arrival order, each signature checked."""
    verifier = Webhook(SECRET)
    return [
        (r["headers"]["webhook-id"], verifier.verify(r["body"], r["headers"])) for r in receiver.requests("/webhook")
    ]


def messages(receiver: Receiver) -> list[tuple[str, dict]]:
    """The message.created and message.deleted deliveries (joins and leaves send their own)."""
    return [(i, body) for i, body in deliveries(receiver) if body["type"].startswith("message.")]


def test_webhooks_arrive_once_each_in_seq_order_per_room_signed(redis_server, nodes, database_url, receiver) -> None:
    hook = {"HOOK_URL": f"{receiver.url}/hook", "HOOK_EVENTS": "send"}
    a = nodes.start(redis_server.url, **env(receiver, database_url, **hook))
    b = nodes.start(redis_server.url, **env(receiver, database_url, **hook))
    alice, bob = ChatClient(a.url, "alice"), ChatClient(b.url, "bob")
    try:
        for client in (alice, bob):
            assert client.call("join_room", "one")["ok"] and client.call("join_room", "two")["ok"]
        for i in range(15):
            for room in ("one", "two"):
                sender = alice if i % 2 else bob
                assert sender.call("send_message", {"room": room, "message": f"{room} {i}"})["ok"]
        assert alice.call("send_message", {"room": "one", "message": "darn"})["ok"]
        wait_until(lambda: len(messages(receiver)) >= 31, timeout=20, what="31 webhooks")
        got = messages(receiver)
        assert all(n == 1 for n in Counter(i for i, _ in got).values()), "an event delivered twice"
        seqs = defaultdict(list)
        for _, body in got:
            assert body["type"] == "message.created" and body["timestamp"].endswith("Z")
            seqs[body["data"]["room"]].append(body["data"]["seq"])
        assert seqs == {"one": list(range(1, 17)), "two": list(range(1, 16))}
        [(_, last)] = [(i, body) for i, body in got if body["data"]["message"] == "d**n"]
        assert last["data"]["meta"] == {"moderated": True, "by": "filter"}
        assert set(last["data"]) == {
            "id",
            "room",
            "sender",
            "message",
            "timestamp",
            "seq",
            "epoch",
            "instance_id",
            "meta",
        }

        erased = requests.delete(f"{a.url}/api/users/alice/messages", headers=AUTH, timeout=10).json()
        assert erased["ok"] and erased["deleted"] == 15
        wait_until(lambda: len(messages(receiver)) >= 31 + 15, timeout=20, what="message.deleted webhooks")
        deleted = [body for _, body in messages(receiver)[31:]]
        assert {b["type"] for b in deleted} == {"message.deleted"} and all(
            set(b["data"]) == {"room", "id"} for b in deleted
        )
        metrics = requests.get(f"{a.url}/metrics", timeout=5).text + requests.get(f"{b.url}/metrics", timeout=5).text
        assert "chat_webhooks_delivered_total" in metrics
    finally:
        alice.close()
        bob.close()


def test_a_receiver_answering_500_twice_gets_the_third_try_with_the_same_id(
    redis_server, nodes, database_url, receiver
) -> None:
    more = {"WEBHOOK_BACKOFF": "0.2", "WEBHOOK_MAX_ATTEMPTS": "3"}
    a = nodes.start(redis_server.url, **env(receiver, database_url, **more))
    b = nodes.start(redis_server.url, **env(receiver, database_url, **more))
    alice = ChatClient(a.url, "alice")
    try:
        assert alice.call("join_room", "ops")["ok"] and alice.call("join_room", "dead")["ok"]
        assert alice.call("send_message", {"room": "ops", "message": "flaky deploy"})["ok"]
        assert alice.call("send_message", {"room": "ops", "message": "after it"})["ok"]
        assert alice.call("send_message", {"room": "dead", "message": "down for good"})["ok"]
        wait_until(lambda: len(messages(receiver)) >= 7, timeout=30, what="3 + 1 + 3 tries")
        got = messages(receiver)
        ops = [(i, body["data"]["message"]) for i, body in got if body["data"]["room"] == "ops"]
        flaky_id = ops[0][0]
        # Three tries of one id, then (not before: one room's events in order) the next one.
        assert ops == [(flaky_id, "flaky deploy")] * 3 + [(ops[3][0], "after it")]
        dead = [i for i, body in got if body["data"]["room"] == "dead"]
        assert len(dead) == 3 and len(set(dead)) == 1

        def failed() -> dict:
            return requests.get(f"{b.url}/api/webhooks/failed", headers=AUTH, timeout=5).json()

        wait_until(lambda: failed()["failed"] == 1, timeout=10, what="kept as failed")
        [event] = failed()["events"]
        assert (event["webhook_id"], event["type"], event["attempts"]) == (dead[0], "message.created", 3)
        assert event["last_error"] == "HTTP 500"

        def gauge() -> str:
            text = requests.get(f"{a.url}/metrics", timeout=5).text
            return next((line for line in text.splitlines() if line.startswith("chat_webhooks_failed{")), "")

        wait_until(lambda: gauge().endswith(" 1.0"), timeout=10, what="chat_webhooks_failed 1")
        replayed = requests.post(f"{b.url}/api/webhooks/failed/replay", headers=AUTH, timeout=5).json()
        assert replayed == {"ok": True, "replayed": 1}
        wait_until(
            lambda: [i for i, body in messages(receiver) if body["data"]["room"] == "dead"] == dead * 2,
            timeout=20,
            what="three more tries, same id",
        )
    finally:
        alice.close()


def test_webhooks_need_the_archive() -> None:
    from chat_app.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="WEBHOOK_URL needs the archive"):
        Settings.from_env({"REDIS_URL": "redis://x", "WEBHOOK_URL": "http://127.0.0.1:1/"})
    with pytest.raises(SettingsError, match="WEBHOOK_SECRET must be whsec_"):
        Settings.from_env({"WEBHOOK_SECRET": "plain-secret"})


def readme_example(marker: str) -> str:
    """The README's Python block that contains `marker`."""
    text = (ROOT / "README.md").read_text()
    [block] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    return block


def test_the_readme_receiver_and_hook_endpoint_work(tmp_path, monkeypatch) -> None:
    """The examples as a user would paste them: signed requests in, their answers out."""
    signer = Webhook(SECRET)

    def signed(body: dict, msg_id: str = "msg_1") -> tuple[bytes, dict]:
        raw = json.dumps(body).encode()
        now = datetime.now(UTC)
        headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp()))}
        headers["webhook-signature"] = signer.sign(msg_id, now, raw.decode())
        return raw, headers

    receiver: dict = {"__name__": "__main__"}
    exec(readme_example("def chat_webhook").replace("whsec_...", SECRET), receiver)
    client = receiver["app"].test_client()
    event = {
        "type": "message.created",
        "timestamp": "2026-12-06T06:00:00Z",
        "data": {"room": "r", "seq": 1, "message": "hi"},
    }
    raw, headers = signed(event)
    assert client.post("/chat-webhook", data=raw, headers=headers).status_code == 204
    assert (
        client.post("/chat-webhook", data=raw, headers={**headers, "webhook-signature": "v1,AAAA"}).status_code == 401
    )

    monkeypatch.chdir(tmp_path)
    with sqlite3.connect("product.db") as db:
        db.execute("CREATE TABLE sessions (id text, username text)")
        db.execute("CREATE TABLE project_members (username text, project text)")
        db.execute("INSERT INTO sessions VALUES ('s1', 'alice')")
        db.execute("INSERT INTO project_members VALUES ('alice', 'project-42')")
    hook: dict = {"__name__": "__main__"}
    exec(readme_example("def chat_hook").replace("whsec_...", SECRET), hook)
    client = hook["app"].test_client()

    def ask(body: dict) -> dict:
        raw, headers = signed(body)
        return client.post("/chat-hook", data=raw, headers=headers).get_json()

    connect = {"event": "connect", "user": None, "auth": None, "headers": {"cookie": "theme=dark; session=s1"}}
    assert ask(connect)["allow"] is True and ask(connect)["user"] == "alice"
    assert ask({**connect, "headers": {}})["allow"] is False
    assert ask({"event": "join", "user": "alice", "room": "project-42"})["allow"] is True
    assert ask({"event": "join", "user": "alice", "room": "project-7"})["allow"] is False
    assert ask({"event": "send", "user": "alice", "room": "project-42", "message": "see http://x"})["allow"] is False
    assert ask({"event": "send", "user": "alice", "room": "project-42", "message": "hi"})["meta"] == {"plan": "pro"}


def test_rooms_and_members_are_told_once_each_for_the_deployment(redis_server, nodes, database_url, receiver) -> None:
    """Alice on node a and bob on node b join the same room, alice says something, alice
    leaves it and bob disconnects: the room's occupancy and each arrival and departure come
    once each (decided by Redis's presence scripts, not by each node), by id, in the order
    they happened, around the message."""
    a = nodes.start(redis_server.url, **env(receiver, database_url, PRESENCE_GRACE="0.5"))
    b = nodes.start(redis_server.url, **env(receiver, database_url, PRESENCE_GRACE="0.5"))
    alice, bob = ChatClient(a.url, "alice"), ChatClient(b.url, "bob")
    try:
        assert alice.call("join_room", "r")["ok"] and bob.call("join_room", "r")["ok"]
        assert alice.call("send_message", {"room": "r", "message": "hello"})["ok"]
        assert alice.call("leave_room", "r")["ok"]
    finally:
        alice.close()
        bob.close()  # a disconnect: bob leaves once the grace has run out (node b's sweep)
    wait_until(lambda: len(deliveries(receiver)) >= 7, timeout=20, what="7 webhooks")
    got = deliveries(receiver)
    assert len(got) == 7 and len({i for i, _ in got}) == 7, got
    told = [(body["type"], body["data"].get("user") or body["data"].get("message")) for _, body in got]
    assert told == [
        ("room.occupied", None),
        ("member.joined", "alice"),
        ("member.joined", "bob"),
        ("message.created", "hello"),
        ("member.left", "alice"),
        ("member.left", "bob"),
        ("room.vacated", None),
    ]
    for webhook_id, body in got:
        assert body["data"]["room"] == "r" and body["timestamp"].endswith("Z")
        if not body["type"].startswith("message."):
            assert webhook_id.startswith("evt_") and set(body["data"]) <= {"room", "user"}


def told(got: list[tuple[str, dict]], room: str | None = None) -> list[tuple[str, str]]:
    """(type, user or message) of each delivery (of one room's), first arrivals only (a retry
    repeats an id)."""
    first = {}
    for webhook_id, body in got:
        if room is None or body["data"]["room"] == room:
            first.setdefault(webhook_id, (body["type"], body["data"].get("user") or body["data"].get("message")))
    return list(first.values())


def test_a_node_killed_with_events_in_flight_loses_none(redis_server, nodes, database_url, receiver) -> None:
    """Node a's sender is delivering a room's events (the receiver answers each after 0.3 s)
    and its writer holds the next batch (the database holds its insert behind a lock) when a
    is SIGKILLed. Node b's writer takes the batch over (ARCHIVE_TAKE_OVER_AFTER) and its
    sender the room once a's lease has run out (two posts' bound, WEBHOOK_TIMEOUT): every
    event arrives, in order; only the one a was posting may come twice, with its id. Bob was
    in a room only node a hosted: node b's orphan sweep tells he left and the room emptied."""
    more = {"ARCHIVE_TAKE_OVER_AFTER": "2", "WEBHOOK_TIMEOUT": "1"}
    a = nodes.start(redis_server.url, **env(receiver, database_url, **more))
    alice, bob = ChatClient(a.url, "alice"), ChatClient(a.url, "bob")
    try:
        assert bob.call("join_room", "lone")["ok"] and alice.call("join_room", "kill")["ok"]
        for i in range(20):
            assert alice.call("send_message", {"room": "kill", "message": f"tarry {i}"})["ok"]
        wait_until(lambda: len(messages(receiver)) >= 3, timeout=20, what="node a delivering the room")
        with psycopg.connect(database_url) as blocker:
            blocker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")  # held until the rollback
            for i in range(5):
                assert alice.call("send_message", {"room": "kill", "message": f"m{i}"})["ok"]
            assert alice.call("leave_room", "kill")["ok"]
            r = redis_server.client()
            wait_until(
                lambda: r.xpending("chat:archive:outbox", "archive")["pending"] > 0,
                timeout=10,
                what="node a's writer holding a batch",
            )
            nodes.signal(a, signal.SIGKILL)
            a.process.wait(timeout=10)
            blocker.rollback()
    finally:
        alice.close()
        bob.close()
    assert len(messages(receiver)) < 20, "node a was no longer delivering when it was killed"
    nodes.start(redis_server.url, **env(receiver, database_url, **more))
    expected = [
        ("room.occupied", None),
        ("member.joined", "alice"),
        *(("message.created", f"tarry {i}") for i in range(20)),
        *(("message.created", f"m{i}") for i in range(5)),
        ("member.left", "alice"),
        ("room.vacated", None),
    ]
    lone = [("room.occupied", None), ("member.joined", "bob"), ("member.left", "bob"), ("room.vacated", None)]
    wait_until(lambda: len(told(deliveries(receiver))) >= len(expected) + 4, timeout=30, what="every event")
    got = deliveries(receiver)
    assert told(got, "kill") == expected and told(got, "lone") == lone
    repeated = [i for i, n in Counter(i for i, _ in got).items() if n > 1]
    assert len(repeated) <= 1, f"more than the one event in flight came twice: {repeated}"


def test_a_receiver_down_for_30_s_gets_everything_after_in_order(redis_server, nodes, database_url, receiver) -> None:
    """The receiver refuses connections for 30 s while two rooms' messages go out on two
    nodes and a member comes and goes; once back, everything arrives, each room's messages
    in seq order. WEBHOOK_BACKOFF is 1.25 s (2 by default): the sixth try of a room's first
    event comes 31 to 47 s after the first, inside the default WEBHOOK_MAX_ATTEMPTS (8)."""
    more = {"WEBHOOK_BACKOFF": "1.25", "WEBHOOK_TIMEOUT": "1"}
    a = nodes.start(redis_server.url, **env(receiver, database_url, **more))
    b = nodes.start(redis_server.url, **env(receiver, database_url, **more))
    alice, bob = ChatClient(a.url, "alice"), ChatClient(b.url, "bob")
    try:
        for client in (alice, bob):
            assert client.call("join_room", "ops")["ok"] and client.call("join_room", "dev")["ok"]
        wait_until(lambda: len(deliveries(receiver)) >= 6, timeout=20, what="2 rooms occupied, 4 arrivals")
        receiver.stop()
        down = time.monotonic()
        for i in range(10):
            for room in ("ops", "dev"):
                assert (alice if i % 2 else bob).call("send_message", {"room": room, "message": f"{room} {i}"})["ok"]
        carol = ChatClient(b.url, "carol")
        assert carol.call("join_room", "ops")["ok"] and carol.call("leave_room", "ops")["ok"]
        carol.close()
        wait_until(lambda: "event=webhook_failed" in a.log() + b.log(), timeout=10, what="a failed try")
        time.sleep(max(0.0, 30 - (time.monotonic() - down)))  # the outage itself, not a wait for something
        failed = requests.get(f"{a.url}/api/webhooks/failed", headers=AUTH, timeout=5).json()
        assert failed["failed"] == 0 and failed["pending"] >= 22
        receiver.restart()
        wait_until(lambda: len(told(deliveries(receiver))) >= 6 + 22, timeout=30, what="everything after the outage")
    finally:
        alice.close()
        bob.close()
    got = told(deliveries(receiver))
    assert got[6:].count(("member.joined", "carol")) == 1 and got[6:].count(("member.left", "carol")) == 1
    for room in ("ops", "dev"):
        said = [text for kind, text in got if kind == "message.created" and text.startswith(room)]
        assert said == [f"{room} {i}" for i in range(10)]
    seqs = defaultdict(list)
    for _, body in deliveries(receiver):
        if body["type"] == "message.created":
            seqs[body["data"]["room"]].append(body["data"]["seq"])
    assert all(s == sorted(s) for s in seqs.values()), seqs
