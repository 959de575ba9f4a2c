"""The archive (DATABASE_URL) on real nodes, a real Redis and a PostgreSQL of the suite's own:
what was said outlives its room, Redis and its users' absence."""

from __future__ import annotations

import psycopg
from archive_helpers import AUTH, FAST, KEY, archived
from helpers import ChatClient, wait_until


def test_history_outlives_the_room_and_its_seq_continues(redis_server, database_url, nodes) -> None:
    a = nodes.start(redis_server.url, DATABASE_URL=database_url, **FAST)
    b = nodes.start(redis_server.url, DATABASE_URL=database_url, **FAST)
    alice = ChatClient(a.url, "alice")
    joined = alice.call("join_room", "team")
    sent = alice.call("send_message", {"room": "team", "message": "meet at 5"})
    assert sent["ok"] and sent["seq"] == 1
    wait_until(lambda: archived(database_url, "team") == [(1, "meet at 5")], timeout=10, what="archived")
    assert alice.call("leave_room", "team")["ok"]  # the last member: Redis forgets the room
    alice.close()
    r = redis_server.client()
    wait_until(lambda: not r.exists("chat:{room:team}:hist"), timeout=5, what="room's history gone from Redis")

    bob = ChatClient(b.url, "bob")
    try:
        ack = bob.call("join_room", "team")
        assert [m["message"] for m in ack["history"]] == ["meet at 5"]
        assert (ack["epoch"], ack["seq"]) == (joined["epoch"], 1)
        again = bob.call("send_message", {"room": "team", "message": "on my way"})
        assert (again["seq"], again["epoch"]) == (2, joined["epoch"])
    finally:
        bob.close()


def test_redis_restarted_empty_keeps_seq_epoch_and_history(redis_server, database_url, nodes) -> None:
    a = nodes.start(redis_server.url, DATABASE_URL=database_url, **FAST)
    alice = ChatClient(a.url, "alice")
    joined = alice.call("join_room", "ops")
    for i in range(5):
        assert alice.call("send_message", {"room": "ops", "message": f"m{i}"})["ok"]
    wait_until(lambda: len(archived(database_url, "ops")) == 5, timeout=10, what="archived")
    alice.close()
    redis_server.kill()
    redis_server.restart()  # empty: nothing is saved to disk

    def rejoined() -> dict | None:
        try:
            client = ChatClient(a.url, "bob")
        except Exception:
            return None
        try:
            ack = client.call("join_room", "ops")
            return ack if ack.get("ok") else None
        finally:
            client.close()

    ack = wait_until(rejoined, timeout=30, interval=0.5, what="a join after Redis came back")
    assert (ack["epoch"], ack["seq"]) == (joined["epoch"], 5)
    assert [m["message"] for m in ack["history"]] == [f"m{i}" for i in range(5)]


def test_direct_message_to_an_offline_user_waits_for_them(redis_server, database_url, nodes) -> None:
    """bob is away; alice writes and leaves; every Redis TTL runs out (the keys are deleted
    here, as expiry would); bob connects on the other node and finds the conversation."""
    a = nodes.start(redis_server.url, DATABASE_URL=database_url, **FAST)
    b = nodes.start(redis_server.url, DATABASE_URL=database_url, **FAST)
    alice = ChatClient(a.url, "alice")
    opened = alice.call("open_direct", {"with": "bob"})
    assert opened["ok"], opened
    room = opened["room"]
    sent = alice.call("send_message", {"room": room, "message": "lunch tomorrow?"})
    assert sent["ok"], sent
    wait_until(lambda: archived(database_url, room) == [(1, "lunch tomorrow?")], timeout=10, what="archived")
    alice.close()
    r = redis_server.client()
    wait_until(lambda: not r.exists(f"chat:{{room:{room}}}:nodes"), timeout=10, what="the room emptied")
    for key in r.scan_iter(match="chat:{user:*}:directs"):
        r.delete(key)  # the lists' TTL, run out

    bob = ChatClient(b.url, "bob")
    try:
        listed = bob.call("list_directs", {})
        assert [(d["room"], d["with"], d["seq"]) for d in listed["directs"]] == [(room, "alice", 1)]
        ack = bob.call("open_direct", {"with": "alice"})
        assert [m["message"] for m in ack["history"]] == ["lunch tomorrow?"]
    finally:
        bob.close()


def test_database_blackholed_then_reset_costs_no_send_and_loses_nothing(redis_server, postgres_server, nodes) -> None:
    from tcpproxy import TcpProxy

    from chat_app.archive.schema import migrate

    url = postgres_server.new_database()
    migrate(url)
    proxy = TcpProxy(postgres_server.port)
    through_proxy = url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
    a = nodes.start(redis_server.url, DATABASE_URL=through_proxy, **FAST)
    b = nodes.start(redis_server.url, DATABASE_URL=through_proxy, **FAST)
    alice, bob = ChatClient(a.url, "alice"), ChatClient(b.url, "bob")
    try:
        alice.call("join_room", "stream")
        bob.call("join_room", "stream")
        acked: list[int] = []

        def send(count: int) -> None:
            for i in range(count):
                sender = alice if i % 2 else bob
                ack = sender.call("send_message", {"room": "stream", "message": f"m{len(acked)}"})
                assert ack["ok"], ack  # no send waits for, or fails with, the database
                acked.append(ack["seq"])

        send(50)
        proxy.go_silent()  # blackholed: connections stay open, nothing comes back
        send(100)
        wait_until(lambda: a.health()["archive"]["backlog"] > 0, timeout=10, what="a backlog in /healthz")
        assert a.health()["status"] == "ok"  # the archive's trouble does not take the node out
        proxy.go_dead()  # then reset: every connection refused
        send(50)
        proxy.come_back()
        send(50)
        wait_until(
            lambda: [seq for seq, _ in archived(url, "stream")] == sorted(acked),
            timeout=30,
            what="every acked message archived once",
            detail=lambda: len(archived(url, "stream")),
        )
        assert sorted(acked) == list(range(1, 251))
    finally:
        alice.close()
        bob.close()
        proxy.close()


def test_a_writer_killed_mid_batch_loses_nothing(redis_server, database_url, nodes) -> None:
    """Node a's writer reads a batch and dies before it is stored (SIGKILL while the database
    holds its insert behind a lock); node b's writer takes the batch over."""
    import signal

    a = nodes.start(redis_server.url, DATABASE_URL=database_url, ARCHIVE_TAKE_OVER_AFTER="2", **FAST)
    alice = ChatClient(a.url, "alice")
    alice.call("join_room", "kill")
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")  # held until this block ends
        acked = [alice.call("send_message", {"room": "kill", "message": f"m{i}"})["seq"] for i in range(20)]
        r = redis_server.client()
        wait_until(
            lambda: r.xpending("chat:archive:outbox", "archive")["pending"] > 0,
            timeout=10,
            what="node a's writer holding the batch",
        )
        nodes.signal(a, signal.SIGKILL)
        a.process.wait(timeout=10)
        blocker.rollback()
    b = nodes.start(redis_server.url, DATABASE_URL=database_url, ARCHIVE_TAKE_OVER_AFTER="2", **FAST)
    wait_until(lambda: [s for s, _ in archived(database_url, "kill")] == acked, timeout=30, what="taken over")
    wait_until(lambda: b.health()["archive"]["backlog"] == 0, timeout=5, what="the outbox drained")


def test_paging_back_through_500_messages_reaches_seq_1(redis_server, database_url, nodes) -> None:
    import requests

    a = nodes.start(redis_server.url, DATABASE_URL=database_url, API_KEY=KEY, **FAST)
    auth = AUTH
    alice = ChatClient(a.url, "alice")
    try:
        alice.call("join_room", "long")
        for i in range(500):
            assert alice.call("send_message", {"room": "long", "message": f"m{i + 1}"})["ok"]
        wait_until(lambda: len(archived(database_url, "long")) == 500, timeout=20, what="archived")
        seen: list[int] = []
        before = None
        while True:
            params = {"limit": 100, **({"before": before} if before else {})}
            page = requests.get(f"{a.url}/api/rooms/long/history", params=params, headers=auth, timeout=10).json()
            seqs = [m["seq"] for m in page["messages"]]
            if not seqs:
                break
            assert seqs == sorted(seqs)
            seen = seqs + seen
            before = seqs[0]
        assert seen == list(range(1, 501))  # Redis keeps 100 of them; the rest came from the archive
    finally:
        alice.close()


HUB_PROBE = r"""
from gevent import monkey; monkey.patch_all()
import sys, time, gevent
from chat_app.archive.store import ArchiveStore
store = ArchiveStore(sys.argv[1], 2)
store.open()
store.check_schema()
gaps, last = [], time.monotonic()
def tick():
    global last
    while True:
        gevent.sleep(0.01)
        now = time.monotonic(); gaps.append(now - last); last = now
ticker = gevent.spawn(tick)
started = time.monotonic()
with store._connection() as conn:
    conn.execute("SELECT pg_sleep(1)")
took = time.monotonic() - started
ticker.kill()
store.close()
print(f"{took:.3f} {max(gaps):.3f} {len(gaps)}")
"""


def test_a_slow_query_parks_only_its_greenlet(database_url) -> None:
    """psycopg 3 waits on gevent's sockets: a one-second query leaves the hub free (a ticker
    greenlet keeps its 10 ms beat), as a node's joins and sends need."""
    import subprocess
    import sys

    from processes import ROOT

    out = subprocess.run(
        [sys.executable, "-c", HUB_PROBE, database_url],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    took, worst_gap, ticks = (float(x) for x in out.stdout.split())
    assert took >= 1.0
    assert ticks > 50 and worst_gap < 0.25, (ticks, worst_gap)


def test_archive_metrics(redis_server, database_url, nodes) -> None:
    from helpers import scrape

    a = nodes.start(redis_server.url, DATABASE_URL=database_url, **FAST)
    alice = ChatClient(a.url, "alice")
    try:
        alice.call("join_room", "m")
        for i in range(3):
            alice.call("send_message", {"room": "m", "message": f"m{i}"})
        wait_until(lambda: len(archived(database_url, "m")) == 3, timeout=10, what="archived")
        metrics = wait_until(
            lambda: (m := scrape(a.url)).get("chat_archive_written_total") == 3 and m, timeout=5, what="counted"
        )
        assert metrics["chat_archive_lag_seconds_count"] == 3
        assert metrics["chat_archive_database_up"] == 1
    finally:
        alice.close()


def test_search_by_members_and_the_server_api(redis_server, database_url, nodes) -> None:
    import requests

    a = nodes.start(redis_server.url, DATABASE_URL=database_url, API_KEY=KEY, **FAST)
    alice, eve = ChatClient(a.url, "alice"), ChatClient(a.url, "eve")
    try:
        alice.call("join_room", "ops")
        for text in ("deploy at noon", "lunch?", "the deploy failed", "rollback done"):
            alice.call("send_message", {"room": "ops", "message": text})
        wait_until(lambda: len(archived(database_url, "ops")) == 4, timeout=10, what="archived")
        found = alice.call("search", {"room": "ops", "q": "deploy"})
        assert [m["message"] for m in found["messages"]] == ["the deploy failed", "deploy at noon"]
        assert found["messages"][0]["seq"] == 3
        assert eve.call("search", {"room": "ops", "q": "deploy"})["error"]["code"] == "not_in_room"
        assert alice.call("search", {"room": "ops", "q": ""})["error"]["code"] == "invalid_payload"
        url = f"{a.url}/api/rooms/ops/search"
        page = requests.get(url, params={"q": '"deploy failed" OR rollback'}, headers=AUTH, timeout=10).json()
        assert [m["message"] for m in page["messages"]] == ["rollback done", "the deploy failed"]
        assert requests.get(url, params={"q": "deploy"}, timeout=10).status_code == 401
        assert requests.get(url, params={"q": "x", "limit": 0}, headers=AUTH, timeout=10).status_code == 400
    finally:
        alice.close()
        eve.close()


def test_search_without_the_archive_says_so(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, **FAST)
    alice = ChatClient(a.url, "alice")
    try:
        alice.call("join_room", "ops")
        assert alice.call("search", {"room": "ops", "q": "deploy"})["error"]["code"] == "no_archive"
    finally:
        alice.close()


def test_erasure_removes_a_users_messages_everywhere_and_tells_members(redis_server, database_url, nodes) -> None:
    import requests

    a = nodes.start(redis_server.url, DATABASE_URL=database_url, API_KEY=KEY, **FAST)
    b = nodes.start(redis_server.url, DATABASE_URL=database_url, API_KEY=KEY, **FAST)
    eve, bob = ChatClient(a.url, "eve"), ChatClient(b.url, "bob")
    bob.RECORDED = frozenset({*ChatClient.RECORDED, "message_deleted"})
    try:
        eve.call("join_room", "r")
        bob.call("join_room", "r")
        mine = [eve.call("send_message", {"room": "r", "message": f"eve {i}"})["id"] for i in range(3)]
        bob.call("send_message", {"room": "r", "message": "bob stays"})
        wait_until(lambda: len(archived(database_url, "r")) == 4, timeout=10, what="archived")
        answer = requests.delete(f"{a.url}/api/users/eve/messages", headers=AUTH, timeout=10).json()
        assert answer == {"ok": True, "user": "eve", "deleted": 3, "rooms": ["r"]}
        deleted = bob.wait_for(3, event="message_deleted")
        assert sorted(d["id"] for d in deleted) == sorted(mine) and {d["room"] for d in deleted} == {"r"}
        assert archived(database_url, "r") == [(4, "bob stays")]
        history = requests.get(f"{b.url}/api/rooms/r/history", headers=AUTH, timeout=10).json()
        assert [m["message"] for m in history["messages"]] == ["bob stays"]
    finally:
        eve.close()
        bob.close()


def test_a_post_from_chat_emitter_is_archived_and_continues_the_room(redis_server, database_url, nodes) -> None:
    """ChatEmitter knows nothing of DATABASE_URL: the archive's marker in Redis tells its
    send.lua to add the post to the outbox, like a node's."""
    from chat_app.emitter import ChatEmitter

    a = nodes.start(redis_server.url, DATABASE_URL=database_url, **FAST)
    alice = ChatClient(a.url, "alice")
    try:
        alice.call("join_room", "orders")
        alice.call("send_message", {"room": "orders", "message": "where is my order?"})
        with ChatEmitter(redis_server.url) as chat:
            posted = chat.publish("orders", "Your order shipped", sender="shop")
        assert posted["seq"] == 2
        wait_until(
            lambda: archived(database_url, "orders") == [(1, "where is my order?"), (2, "Your order shipped")],
            timeout=10,
            what="the post archived",
        )
    finally:
        alice.close()
