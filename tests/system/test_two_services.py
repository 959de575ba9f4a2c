"""Two ChatService instances over one Redis, as two nodes would share it: a fakeredis
FakeServer (the mocked Redis), and the same tests again on a real redis-server."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
import redis
from helpers import RecordingEmitter, wait_until
from processes import RedisServer, free_port

from chat_app.auth import Identity
from chat_app.backends.redis.broker import RedisBroker
from chat_app.backends.redis.clients import RedisClients
from chat_app.backends.redis.keys import RoomKeys
from chat_app.backends.redis.presence import RedisPresence
from chat_app.delivery import DeliveryEngine
from chat_app.protocol import ChatError, ErrorCode, JoinRequest, SendRequest
from chat_app.service import ChatService
from chat_app.settings import Settings

Backing = fakeredis.FakeServer | RedisServer


def members(service: ChatService, room: str) -> list[str]:
    """Every member's name across live nodes, read straight from presence (no route reads all)."""
    return sorted(m.user for m in service._presence.members(room))


def active(service: ChatService, room: str) -> bool:
    return service._presence.is_active(room)


def make_node(server: Backing, instance_id: str, **overrides: object) -> tuple[ChatService, RecordingEmitter]:
    fields = {"presence_ttl": 3.0, "heartbeat_interval": 1.0, "listener_idle_probe": 1.0, **overrides}
    settings = Settings.from_env({}, redis_url="redis://fake", instance_id=instance_id, **fields)
    if isinstance(server, RedisServer):
        clients = RedisClients.from_settings(dataclasses.replace(settings, redis_url=server.url))
    else:
        clients = RedisClients(*(fakeredis.FakeRedis(server=server) for _ in range(3)))
    emitter = RecordingEmitter()
    service = ChatService(settings, RedisBroker(clients, settings), RedisPresence(clients, settings), emitter)
    service.start()
    return service, emitter


@pytest.fixture(params=["fakeredis", "redis-server"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backing]:
    if request.param == "fakeredis":
        yield fakeredis.FakeServer()
        return
    real = RedisServer(tmp_path / "redis", free_port())
    real.start()
    yield real
    real.stop()


def redis_of(server: Backing) -> redis.Redis:
    return server.client() if isinstance(server, RedisServer) else fakeredis.FakeRedis(server=server)


@pytest.fixture
def two_nodes(
    server: fakeredis.FakeServer,
) -> Iterator[tuple[ChatService, RecordingEmitter, ChatService, RecordingEmitter]]:
    a, ea = make_node(server, "A")
    b, eb = make_node(server, "B")
    yield a, ea, b, eb
    a.stop()
    b.stop()


def room_keys(server: Backing, room: str) -> list[bytes]:
    return [k for k in redis_of(server).keys("*") if room.encode() in k]


def test_message_sent_on_a_is_emitted_by_b_to_its_member_only(two_nodes) -> None:
    a, ea, b, eb = two_nodes
    a.connect("a1", Identity("alice"))
    b.connect("b1", Identity("bob"))
    b.connect("b2", Identity("carol"))  # on B but never joins
    a.join("a1", JoinRequest(room="lobby"))
    b.join("b1", JoinRequest(room="lobby"))
    wait_until(lambda: b._broker.listener.all_subscribed(), what="B subscribed")

    ack = a.send("a1", SendRequest(room="lobby", message="hello"))

    got = wait_until(lambda: eb.messages("b1"), what="B emits to its member")
    assert [(m["message"], m["sender"], m["seq"], m["instance_id"]) for m in got] == [("hello", "alice", 1, "A")]
    assert got[0]["id"] == ack["id"] and got[0]["epoch"] == ack["epoch"]
    assert eb.messages("b2") == []
    wait_until(lambda: ea.messages("a1"), what="the sender's own node echoes to the sender")


def test_node_hears_nothing_for_rooms_it_does_not_host(two_nodes) -> None:
    a, ea, b, _eb = two_nodes
    a.connect("a1", Identity("alice"))
    b.connect("b1", Identity("bob"))
    a.join("a1", JoinRequest(room="only-a"))
    b.join("b1", JoinRequest(room="only-b"))
    wait_until(lambda: b._broker.listener.all_subscribed(), what="B subscribed")
    a.send("a1", SendRequest(room="only-a", message="x"))
    wait_until(lambda: ea.messages("a1"))
    assert b.counters.delivered == 0
    channels = b._broker.listener.subscribed
    assert not any(b"only-a" in c for c in channels)


def test_presence_keys_carry_ttl_and_last_leave_everywhere_removes_all(server, two_nodes) -> None:
    a, _, b, _ = two_nodes
    a.connect("a1", Identity("alice"))
    b.connect("b1", Identity("bob"))
    a.join("a1", JoinRequest(room="lobby"))
    b.join("b1", JoinRequest(room="lobby"))
    a.send("a1", SendRequest(room="lobby", message="kept in history"))
    r = redis_of(server)
    keys = room_keys(server, "lobby")
    assert keys, "room state exists while it has members"
    assert all(r.pttl(k) > 0 for k in keys), {k: r.pttl(k) for k in keys}
    assert active(a, "lobby") and members(b, "lobby") == ["alice", "bob"]

    a.leave("a1", "lobby")
    assert active(b, "lobby") and members(a, "lobby") == ["bob"]
    assert room_keys(server, "lobby")

    b.leave("b1", "lobby")
    assert not active(a, "lobby")
    assert room_keys(server, "lobby") == []


def test_last_disconnect_keeps_room_for_the_grace_period_then_removes_all(server, two_nodes) -> None:
    a, _, _, _ = two_nodes
    a.connect("a1", Identity("alice"))
    a.join("a1", JoinRequest(room="lobby"))
    a.send("a1", SendRequest(room="lobby", message="m"))
    a.disconnect("a1")
    assert not active(a, "lobby")
    assert room_keys(server, "lobby"), "kept while a reconnect could still recover it"
    wait_until(lambda: room_keys(server, "lobby") == [], timeout=a.settings.presence_grace + 3, what="cleanup")


def test_stopped_heartbeat_lets_entries_expire(server) -> None:
    a, _ = make_node(server, "A")
    b, _ = make_node(server, "B")
    try:
        a.connect("a1", Identity("alice"))
        b.connect("b1", Identity("bob"))
        a.join("a1", JoinRequest(room="lobby"))
        b.join("b1", JoinRequest(room="lobby"))
        # B crashes: nothing rewrites its entry any more.
        b._presence.stop()
        b._broker.stop()
        assert members(a, "lobby") == ["alice", "bob"]
        wait_until(lambda: members(a, "lobby") == ["alice"], timeout=6, what="B's entry to expire")
        assert active(a, "lobby")
    finally:
        a.stop()


def test_heartbeat_rewrites_entries_lost_from_redis(server, two_nodes) -> None:
    a, _, _, _ = two_nodes
    a.connect("a1", Identity("alice"))
    a.join("a1", JoinRequest(room="lobby"))
    redis_of(server).flushall()
    assert not active(a, "lobby")
    wait_until(lambda: members(a, "lobby") == ["alice"], timeout=4, what="the heartbeat to rewrite")


def test_heartbeat_renews_entries_without_rewriting_them(server, two_nodes) -> None:
    """While Redis holds what the node wrote, a beat pushes deadlines and TTLs only."""
    a, _, _, _ = two_nodes
    a.connect("a1", Identity("alice"))
    a.connect("a2", Identity("ann"))
    a.join("a1", JoinRequest(room="lobby"))
    a.join("a2", JoinRequest(room="lobby"))
    presence = a._presence
    assert isinstance(presence, RedisPresence)
    keys = RoomKeys.of(a.settings.key_prefix, "lobby")
    r = redis_of(server)
    r.pexpire(keys.names, 1500)  # a beat (every 1 s) must renew the room's keys' TTLs
    rounds = presence.heartbeat.rounds
    wait_until(lambda: presence.heartbeat.rounds >= rounds + 2, timeout=4, what="two heartbeats")
    assert presence.heartbeat.rooms_rewritten == 0
    assert r.pttl(keys.names) > 1500
    assert sorted(members(a, "lobby")) == ["alice", "ann"]


def test_heartbeat_in_chunks_rewrites_every_lost_room(server, two_nodes, monkeypatch) -> None:
    """Rooms go BEAT_CHUNK per round trip; each result stays with its room."""
    monkeypatch.setattr("chat_app.backends.redis.presence.BEAT_CHUNK", 2)
    a, _, b, _ = two_nodes
    rooms = ["r1", "r2", "r3", "r4", "r5"]
    for i, room in enumerate(rooms):
        a.connect(f"a{i}", Identity(f"u{i}"))
        a.join(f"a{i}", JoinRequest(room=room))
    r = redis_of(server)
    r.delete(f"{RoomKeys.of(a.settings.key_prefix, 'r4').node_prefix}A")  # one room's entries lost
    # The count goes up after the round's writes: waiting on the members alone raced it.
    wait_until(lambda: a._presence.heartbeat.rooms_rewritten, timeout=4, what="r4 rewritten")
    assert a._presence.heartbeat.rooms_rewritten == 1
    assert [members(b, room) for room in rooms] == [[f"u{i}"] for i in range(5)]


def test_heartbeat_rewrites_a_room_whose_entry_redis_lost(server, two_nodes) -> None:
    """One entry gone from this node's hash (a failover's replica that missed a write) is
    enough: the count differs, the room's entries are written again."""
    a, _, b, _ = two_nodes
    a.connect("a1", Identity("alice"))
    a.connect("a2", Identity("ann"))
    a.join("a1", JoinRequest(room="lobby"))
    a.join("a2", JoinRequest(room="lobby"))
    keys = RoomKeys.of(a.settings.key_prefix, "lobby")
    r = redis_of(server)
    assert r.hdel(f"{keys.node_prefix}A", "a2") == 1
    r.hdel(keys.users, "ann")
    assert members(b, "lobby") == ["alice"]
    wait_until(lambda: a._presence.heartbeat.rooms_rewritten, timeout=4, what="the heartbeat to rewrite")
    assert sorted(members(b, "lobby")) == ["alice", "ann"]


def test_send_without_membership_is_refused_and_publishes_nothing(server, two_nodes) -> None:
    a, _, _, _ = two_nodes
    a.connect("a1", Identity("alice"))
    with pytest.raises(ChatError) as err:
        a.send("a1", SendRequest(room="lobby", message="x"))
    assert err.value.code is ErrorCode.NOT_IN_ROOM
    assert room_keys(server, "lobby") == []


def test_stop_twice_leaves_once(server) -> None:
    """gunicorn delivers SIGTERM to the worker twice: the second stop must do nothing."""
    a, _ = make_node(server, "A")
    a.connect("a1", Identity("alice"))
    a.join("a1", JoinRequest(room="lobby"))
    removals: list[list[str]] = []
    remove_node = a._presence.remove_node
    a._presence.remove_node = lambda rooms, grace=False: (removals.append(list(rooms)), remove_node(rooms, grace))
    assert a.stop() == ["a1"]
    assert a.stop() == []
    assert removals == [["lobby"]]


def test_a_stopping_node_answers_every_event_unavailable(server) -> None:
    a, _ = make_node(server, "A")
    a.connect("a1", Identity("alice"))
    a.stop()
    a.connect("a2", Identity("bob"))  # accepted by gunicorn after SIGTERM: not refused, never a member
    for sid in ("a1", "a2"):
        with pytest.raises(ChatError) as err:
            a.join(sid, JoinRequest(room="lobby"))
        assert err.value.code is ErrorCode.UNAVAILABLE
    assert room_keys(server, "lobby") == []


@pytest.mark.timeout(30)
def test_wake_ups_never_block_when_the_listener_is_busy() -> None:
    """Thousands of joins may ask the listener for rooms while it is busy: the wake-up pipe
    fills, and a full pipe means a wake-up is already pending, not an error."""
    settings = Settings.from_env({}, redis_url="redis://unused", instance_id="W")
    listener = RedisBroker(RedisClients(*(fakeredis.FakeRedis() for _ in range(3))), settings).listener
    for i in range(300_000):  # far more than a socket pair buffers; the listener never reads
        listener.want(f"room-{i % 50}")
    assert len(listener._wanted) == 50


@pytest.mark.parametrize("server", ["redis-server"], indirect=True)
def test_a_burst_read_in_one_go_is_handled_at_once(server) -> None:
    """Replies that arrive together sit in the parser's buffer after the first is read,
    where select() no longer sees them: the listener must take them all before it waits
    (its idle probe, 30 s here, would otherwise be what wakes it). A real socket only:
    over fakeredis the listener polls the fake instead and never meets that buffer."""
    node, _ = make_node(server, "A", listener_idle_probe=30.0)
    try:
        node.connect("a1", Identity("alice"))
        node.join("a1", JoinRequest(room="lobby"))
        listener = node._broker.listener
        wait_until(listener.all_subscribed, what="subscribed")
        with redis_of(server).pipeline(transaction=False) as pipe:  # one write: one burst back
            for i in range(50):
                pipe.publish(RoomKeys.of("chat", "lobby").channel, f"not an envelope {i}")
            pipe.execute()
        wait_until(lambda: listener.bad_payloads == 50, timeout=3, what="all 50 read")
    finally:
        node.stop()


def test_departures_are_swept_by_one_greenlet_that_ends_with_the_node(server) -> None:
    """Many disconnects start no timer or thread each (one sweeper per node settles expired
    grace periods), every departure is still announced, and the sweeper ends with stop()."""

    def sweepers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "departures"}

    others = sweepers()  # other tests' services may still run theirs
    a, _ = make_node(server, "A", presence_grace=0.3)
    b, eb = make_node(server, "B", presence_grace=0.3)
    ours = sweepers() - others
    assert len(ours) == 2
    b.connect("watcher", Identity("watcher"))
    b.join("watcher", JoinRequest(room="lobby"))
    # A node's Redis helpers (the script batcher, the presence calls) start with their first
    # use: a join on A starts them before the count (a join into a room without messages
    # reads no history, so B's watcher alone no longer starts them all).
    a.connect("warm", Identity("warm"))
    a.join("warm", JoinRequest(room="lobby"))
    threads_before = threading.active_count()
    for i in range(40):
        a.connect(f"s{i}", Identity(f"user{i}"))
        a.join(f"s{i}", JoinRequest(room="lobby"))
    for i in range(40):
        a.disconnect(f"s{i}")
    assert threading.active_count() <= threads_before + 2  # no thread or timer per disconnect

    def left() -> set[str]:
        return {e["user"] for e in eb.messages("watcher", "presence") if e["action"] == "leave"}

    wait_until(lambda: len(left()) == 40, timeout=5, what="every departure announced after its grace")
    a.stop()
    b.stop()
    wait_until(lambda: not any(t.is_alive() for t in ours), what="the two sweepers end")


def test_joins_into_a_hosted_room_cost_the_listener_no_catch_up(server, monkeypatch) -> None:
    """A room new to a node catches up once, after its cursor is set; every later join of
    it must not: the catch-up reads history on the one greenlet that delivers."""
    catch_ups: list[str] = []
    catch_up = DeliveryEngine.catch_up
    monkeypatch.setattr(DeliveryEngine, "catch_up", lambda self, room: (catch_ups.append(room), catch_up(self, room)))
    a, _ = make_node(server, "A")
    for i in range(10):
        a.connect(f"s{i}", Identity(f"u{i}"))
        a.join(f"s{i}", JoinRequest(room="lobby"))
    wait_until(lambda: catch_ups, what="the room's first catch-up")
    a.join("s0", JoinRequest(room="lobby", since=0))  # a rejoin too
    assert a.send("s1", SendRequest(room="lobby", message="x"))["seq"] == 1
    assert catch_ups.count("lobby") <= 2, catch_ups  # the first subscribe's confirmation, the new-room re-ask
    a.stop()
