"""The Lua scripts against a real redis-server: a flushed script cache or function library
costs a reload on both ways scripts run (pipelined, and on the publisher's held
connection), a server without functions runs them as scripts, and a room whose position
the store lost starts afresh, in a new epoch, whichever script meets it first."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import redis
from helpers import Recorded
from processes import RedisServer, free_port

from chat_app.backends.base import BackendUnavailable, Draft
from chat_app.backends.redis.clients import RedisClients
from chat_app.backends.redis.keys import RoomKeys, archive_key
from chat_app.backends.redis.presence import RedisPresence
from chat_app.backends.redis.scripts import HeldConnection, LuaScript, ScriptBatcher, run_scripts
from chat_app.backends.redis.send import Renewals, SendScript
from chat_app.settings import Settings

pytestmark = pytest.mark.timeout(30)


def inline(source: str, function: bool = False) -> LuaScript:
    return LuaScript.of("", source) if function else LuaScript(source, hashlib.sha1(source.encode()).hexdigest())


def calls_made(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("fcall", "evalsha")}


@pytest.mark.parametrize("way", ["pipelined", "held"])
@pytest.mark.parametrize("function", [False, True], ids=["script", "function"])
def test_a_flushed_script_cache_is_reloaded_and_every_call_runs_once(redis_server, way: str, function: bool) -> None:
    client = redis.Redis.from_url(redis_server.url)
    script = inline("return redis.call('INCR', KEYS[1])", function)
    held = HeldConnection(client, idle_recheck=60)

    def run(keys: list[str]) -> list[object]:
        calls = [(script, [key], []) for key in keys]
        return run_scripts(client, calls) if way == "pipelined" else held.run_scripts(calls)

    assert run(["a", "b"]) == [1, 1]
    client.function_flush() if function else client.script_flush()
    assert run(["a", "b", "a"]) == [2, 2, 3]  # each ran exactly once, after one reload
    if function:
        libraries = [dict(zip(lib[::2], lib[1::2], strict=True)) for lib in client.function_list()]
        assert [lib[b"library_name"].decode() for lib in libraries] == [script.function]
        assert calls_made(client)["evalsha"] == 0  # every call, first ones and reruns, was an FCALL
    else:
        assert client.script_exists(script.sha) == [True]
    held.release()


NO_FUNCTIONS = {
    "functions": [],
    "renamed": ["--rename-command", "FUNCTION", "", "--rename-command", "FCALL", ""],  # as before Redis 7.0
    "acl": ["--user", "default", "on", "nopass", "~*", "&*", "+@all", "-function", "-fcall"],
}


@pytest.mark.parametrize("server_kind", list(NO_FUNCTIONS))
def test_the_scripts_run_as_functions_and_as_scripts_on_a_server_without_them(tmp_path, server_kind: str) -> None:
    """A server without functions (before Redis 7.0, or an ACL that denies them) runs the
    scripts by EVALSHA, after a warning for each, and stores exactly what FCALL does."""
    server = RedisServer(tmp_path / "redis", free_port(), NO_FUNCTIONS[server_kind])
    logger = logging.getLogger("chat_app.backends.redis.scripts")
    warned = Recorded()
    logger.addHandler(warned)
    try:
        server.start()
        room = Room(server.url)
        held = HeldConnection(room.client)
        draft = Draft.new("lobby", "ann", "hello", "n1", "k1")
        call = room.script.call(draft, room.keys, "e1", "")
        assert [SendScript.envelope(draft, r).seq for r in held.run_scripts([call, call])] == [1, 1]
        assert room.send("again", "e1") == (2, "e1")  # pipelined
        assert room.presence.join("lobby", "sid1", "bob").position.seq == 2  # touch.lua
        assert [json.loads(e)["message"] for e in room.history()] == ["hello", "again"]  # history.lua
        made = calls_made(room.client)
        held.release()
    finally:
        logger.removeHandler(warned)
        server.stop()
    functions = server_kind == "functions"
    assert (made["fcall"] > 0, made["evalsha"] > 0) == (functions, not functions)
    assert len([line for line in warned.lines if "event=functions_off" in line]) == (
        0 if functions else 3
    )  # once a script


class Room:
    def __init__(self, url: str, **settings: object) -> None:
        self.settings = Settings.from_env({}, redis_url=url, instance_id="n1", **settings)
        self.client = redis.Redis.from_url(url)
        self.keys = RoomKeys.of(self.settings.key_prefix, "lobby")
        self.now = 0.0  # the sending process's clock, in seconds (Renewals)
        renewals = Renewals(self.settings.redis_room_ttl_ms, clock=lambda: self.now)
        self.script = SendScript(self.client, self.settings, renewals)
        self._history = LuaScript.load("history.lua", sharded=False, reads_only=True)  # as broker.py loads it
        self.presence = RedisPresence(RedisClients.from_settings(self.settings), self.settings)

    def send(self, text: str, epoch: str, key: str | None = None) -> tuple[int, str]:
        draft = Draft.new("lobby", "ann", text, "n1", key)
        [result] = run_scripts(self.client, [self.script.call(draft, self.keys, epoch, "")])
        envelope = SendScript.envelope(draft, result)
        return envelope.seq, envelope.epoch

    def send_keys(self) -> list[str]:
        k = self.keys
        return [k.seq, k.hist, k.epoch, k.dedup]

    def next_tenth(self) -> None:
        """The sending process's clock moves on by a tenth of the room TTL: its next send
        into a room asks for a renewal."""
        self.now += self.settings.redis_room_ttl_ms / 10_000

    def history(self, after: int | str = "", upto: int | str = "", newest: int = 1000) -> list[bytes]:
        """What joins, recoveries and history pages read (history.lua), oldest first."""
        keys = [self.keys.epoch, self.keys.seq, self.keys.hist]
        args = [after, upto, newest, self.settings.history_length]
        [(_epoch, _seq, *envelopes)] = run_scripts(self.client, [(self._history, keys, args)])
        return envelopes

    def seqs(self, after: int | str = "", upto: int | str = "", newest: int = 1000) -> list[int]:
        return [json.loads(e)["seq"] for e in self.history(after, upto, newest)]


@pytest.mark.parametrize("lost", ["epoch", "seq"])
def test_a_send_into_a_room_that_lost_its_position_starts_a_new_epoch_from_seq_1(redis_server, lost: str) -> None:
    room = Room(redis_server.url)
    assert [room.send(t, "e1") for t in ("a", "b")] == [(1, "e1"), (2, "e1")]
    room.client.delete(getattr(room.keys, lost))  # evicted, or a partial restore
    assert room.send("c", "e2") == (1, "e2")
    assert len(room.history()) == 1 and b'"message":"c"' in room.history()[0]
    assert room.send("d", "e3") == (2, "e2")


def test_a_join_into_a_room_that_lost_its_epoch_starts_it_afresh(redis_server) -> None:
    room = Room(redis_server.url)
    room.send("a", "e1")
    room.client.delete(room.keys.epoch)
    joined = room.presence.join("lobby", "sid1", "bob")
    assert joined.position.seq == 0 and joined.position.epoch != "e1"
    assert room.history() == [] and not room.client.exists(room.keys.seq, room.keys.dedup, room.keys.srv)
    assert room.send("b", "e9") == (1, joined.position.epoch)


def test_a_server_out_of_memory_still_answers_the_reads_and_refuses_the_writes(redis_server) -> None:
    """A full server refuses a function that may write before it runs; the reads are
    declared `no-writes` and still run there, as scripts did, and a read whose library the
    server lost then (it has no memory to load it) runs as a script."""
    room = Room(redis_server.url)
    room.presence.join("lobby", "sid1", "bob")
    assert room.send("a", "e1")[0] == 1

    def read() -> tuple[list[int], list[str]]:
        return room.seqs(), [m.user for m in room.presence.members("lobby")]

    assert read() == ([1], ["bob"])  # the reads' libraries are loaded
    room.client.config_set("maxmemory", 1)  # noeviction: every write is refused from now on
    try:
        before = calls_made(room.client)
        assert read() == ([1], ["bob"])
        with pytest.raises(BackendUnavailable, match="maxmemory"):
            room.send("b", "e1")
        assert calls_made(room.client)["evalsha"] == before["evalsha"]  # every call above an FCALL
        room.client.function_flush()
        assert read() == ([1], ["bob"])
        assert calls_made(room.client)["evalsha"] == before["evalsha"] + 2
        assert room.client.get(room.keys.seq) == b"1"
    finally:
        room.client.config_set("maxmemory", 0)


def test_a_send_renews_the_room_ttl_once_per_tenth_of_it_and_on_the_keys_it_creates(redis_server) -> None:
    """The sending process asks for a renewal with its room's first send in each tenth of
    the room TTL (Renewals); the script renews whenever it created a key, asked or not."""
    room = Room(redis_server.url)
    ttl = room.settings.redis_room_ttl_ms
    room.send("a", "e1")
    assert all(ttl - 1000 < room.client.pttl(k) <= ttl for k in room.send_keys())
    for k in room.send_keys():
        room.client.pexpire(k, ttl // 2)
    room.send("b", "e1")  # the same tenth: not asked again
    assert all(room.client.pttl(k) <= ttl // 2 for k in room.send_keys())
    room.next_tenth()
    room.send("c", "e1")
    assert all(room.client.pttl(k) > ttl - 1000 for k in room.send_keys())
    for k in room.send_keys():
        room.client.pexpire(k, ttl // 2)
    room.client.delete(room.keys.hist)  # evicted alone: the send recreates it, and renews
    room.send("d", "e1")
    assert all(room.client.pttl(k) > ttl - 1000 for k in room.send_keys())
    room.client.delete(room.keys.seq)  # lost while the stream exists: a new epoch, renewed
    room.client.pexpire(room.keys.dedup, ttl // 2)
    assert room.send("e", "e2") == (1, "e2")
    assert all(room.client.pttl(k) > ttl - 1000 for k in room.send_keys())


def test_renewals_ask_once_per_room_and_tenth() -> None:
    now = [0.0]
    renewals = Renewals(60_000, clock=lambda: now[0])  # a tenth: 6 s
    assert [renewals.due(r) for r in ("a", "b", "a", "b")] == [True, True, False, False]
    now[0] = 5.9
    assert not renewals.due("a")
    now[0] = 6.0
    assert [renewals.due(r) for r in ("a", "a", "b")] == [True, False, True]


def test_a_join_renews_the_room_ttl_once_a_tenth_ran_out_and_on_every_key_it_creates(redis_server) -> None:
    """touch.lua renews the room's keys as send.lua does (issue 27 item 5): every room key
    carries the room TTL after any join, but a join right after a renewal spends no
    PEXPIRE on the room's keys (only on this node's own entry)."""
    room = Room(redis_server.url)
    ttl = room.settings.redis_room_ttl_ms
    keys = room.keys.script_keys("n1")
    shared = [k for k in keys if k != room.keys.node_prefix + "n1"]

    def ttls() -> dict[str, int]:
        return {k: room.client.pttl(k) for k in keys if room.client.exists(k)}

    def join(sid: str, user: str) -> int:
        """The PEXPIREs of one join."""
        room.client.config_resetstat()
        room.presence.join("lobby", sid, user)
        return room.client.info("commandstats").get("cmdstat_pexpire", {}).get("calls", 0)

    assert join("s1", "ann") > 1  # a new room: every key it made gets the TTL
    room.send("a", room.client.get(room.keys.epoch).decode())
    assert all(ttl - 1000 < left <= ttl for left in ttls().values()), ttls()
    for k in shared:
        room.client.pexpire(k, ttl - ttl // 20)  # a twentieth ran out: not renewed yet
    assert join("s2", "bob") == 1  # this node's entry alone
    assert all(left > 0 for left in ttls().values()) and all(room.client.pttl(k) <= ttl - ttl // 20 for k in shared)
    for witness in (room.keys.nodes, room.keys.users, room.keys.names):
        for k in shared:
            room.client.pexpire(k, ttl - ttl // 20)
        room.client.pexpire(witness, ttl // 2)  # a tenth ran out on one of them: all renewed
        assert join("s3", "cy") > 1
        assert all(left > ttl - 1000 for left in ttls().values()), (witness, ttls())
    for i, created in enumerate((room.keys.users, room.keys.names)):  # lost alone: a join makes it again
        room.client.delete(created)
        join(f"s4{i}", f"dee{i}")
        assert ttl - 1000 < room.client.pttl(created) <= ttl, created


def test_dedup_ids_are_kept_for_the_history_window_and_trimmed_past_it(redis_server) -> None:
    room = Room(redis_server.url, history_length=4)
    assert room.send("first", "e1", key="k1") == (1, "e1")
    assert room.send("again", "e1", key="k1") == (1, "e1")  # a retry within the window
    for i in range(40):
        room.send(f"m{i}", "e1", key=f"m{i}")
    assert room.client.zcard(room.keys.dedup) < 4 + 16
    assert room.send("m39 again", "e1", key="m39") == (41, "e1")
    assert room.send("first again", "e1", key="k1") == (42, "e1")  # out of the window: a new message


def test_room_and_member_events_are_written_while_webhooks_are_on_only(redis_server) -> None:
    """prelude.lua appends rooms' and members' events to the archive's outbox only while the
    webhooks flag lives; then whatever the room's size (PRESENCE_EVENTS_MAX_MEMBERS silences
    `presence` above it, not these), in the order presence changed. A room whose nodes all
    died is settled by another node's orphan sweep, and one whose keys expired unswept is
    still told vacated."""
    import dataclasses
    import time

    room = Room(redis_server.url, presence_events_max_members=1, presence_grace=0.05)
    second = dataclasses.replace(room.settings, instance_id="n2")
    other = RedisPresence(RedisClients.from_settings(second), second)
    client, presence = room.client, room.presence
    client.set("chat:archive", room.settings.archive_marker)

    def told() -> list[tuple[str, str, str | None]]:
        entries = client.xrange("chat:archive:outbox")
        client.delete("chat:archive:outbox")
        return [(e["type"], e["room"], e.get("user")) for e in (json.loads(f[b"w"]) for _, f in entries if b"w" in f)]

    presence.join("lobby", "s1", "ann")
    presence.leave("lobby", "s1")
    assert told() == []  # webhooks off: nothing written

    client.set("chat:archive:webhooks", "1")
    presence.join("lobby", "s1", "ann")
    presence.join("lobby", "s2", "bob")
    presence.join("lobby", "s3", "bob")  # a second connection: no second arrival
    presence.leave("lobby", "s1")
    presence.leave("lobby", "s2")
    presence.leave("lobby", "s3", grace=True)
    assert told() == [
        ("room.occupied", "lobby", None),
        ("member.joined", "lobby", "ann"),
        ("member.joined", "lobby", "bob"),
        ("member.left", "lobby", "ann"),
    ]
    time.sleep(0.1)  # bob's grace runs out
    presence.sweep("lobby")
    assert told() == [("member.left", "lobby", "bob"), ("room.vacated", "lobby", None)]

    presence.join("lone", "s4", "cat")  # node n1 hosts it alone, then dies
    client.zadd(RoomKeys.of("chat", "lone").nodes, {"n1": 0})
    client.zadd("chat:archive:occupied", {"lone": 0})
    assert other.sweep_orphans() == 1
    assert told() == [
        ("room.occupied", "lone", None),
        ("member.joined", "lone", "cat"),
        ("member.left", "lone", "cat"),
        ("room.vacated", "lone", None),
    ]
    assert client.zcard("chat:archive:occupied") == 0

    presence.join("gone", "s5", "dan")  # every node down past its keys' TTL: they expired
    client.delete(*RoomKeys.of("chat", "gone").script_keys("n1"))
    client.zadd("chat:archive:occupied", {"gone": 0})
    client.delete("chat:archive:occupied:sweep")  # the next heartbeat's turn
    assert other.sweep_orphans() == 1
    assert told()[2:] == [("room.vacated", "gone", None)]


def test_the_dedup_set_is_kept_hashed_through_trims_and_recreation(redis_server) -> None:
    """A listpack of the window's ids costs Redis a scan per lookup and per insert: the set
    keeps a sentinel member (never trimmed) that makes Redis hold it hashed (issue 27)."""
    room = Room(redis_server.url, history_length=4)
    for i in range(40):
        room.send(f"m{i}", "e1")
    assert room.client.object("encoding", room.keys.dedup) == b"skiplist"
    room.client.delete(room.keys.dedup)  # evicted alone: the next renewal makes it hashed, with its TTL
    room.send("after", "e1")
    assert room.client.object("encoding", room.keys.dedup) == b"listpack" and room.client.pttl(room.keys.dedup) == -1
    room.next_tenth()
    room.send("later", "e1")
    assert room.client.object("encoding", room.keys.dedup) == b"skiplist"
    assert room.client.pttl(room.keys.dedup) > room.settings.redis_room_ttl_ms - 1000
    assert room.send("again", "e1", key="k") == room.send("again", "e1", key="k")


def test_with_the_archive_on_the_ttls_are_not_renewed_on_every_send(redis_server) -> None:
    """The archive keeps a room's seq without a TTL (position ttl 0): the renewal is due by
    the stream's TTL, not the seq's, or every send would renew five keys."""
    room = Room(redis_server.url)
    room.client.set(archive_key(room.settings.key_prefix), "0 1000")
    room.send("first", "e1")
    room.client.config_resetstat()
    for i in range(20):
        room.send(f"m{i}", "e1")
    stats = room.client.info("commandstats")
    assert stats.get("cmdstat_pexpire", {}).get("calls", 0) == 0
    outbox = archive_key(room.settings.key_prefix) + ":outbox"
    assert room.client.pttl(room.keys.seq) == -1 and room.client.xlen(outbox) == 21


def send_batch(room: Room, sends: list[tuple[str, str, str | None]], epoch: str = "e1") -> list[tuple[int, str]]:
    """One send_many.lua call for (room, text, key) sends; each answer as (seq, epoch)."""
    drafts = [Draft.new(name, "ann", text, "n1", key) for name, text, key in sends]
    sends = [(d, RoomKeys.of(room.settings.key_prefix, d.room)) for d in drafts]
    [result] = run_scripts(room.client, [room.script.batch(sends, epoch, "srv1")])
    answers = SendScript.answers(len(sends), result)
    return [(e.seq, e.epoch) for e in (SendScript.envelope(d, a) for d, a in zip(drafts, answers, strict=True))]


def test_a_batch_with_two_messages_of_one_room_gives_the_second_the_first_s_effects(redis_server) -> None:
    """send_many.lua reads a batch's keys once: a room's later messages follow its first's
    seq, the epoch it started and the dedup set it made, and a retry in the same batch is
    the first's duplicate."""
    room = Room(redis_server.url)
    sends = [("lobby", "a", "k1"), ("hall", "x", None), ("lobby", "b", None), ("lobby", "a again", "k1")]
    # Each room its own epoch: the batch's candidate, followed by the index of the message that started it.
    assert send_batch(room, sends) == [(1, "e1"), (1, "e11"), (2, "e1"), (1, "e1")]
    assert len(room.history()) == 2 and room.client.object("encoding", room.keys.dedup) == b"skiplist"
    room.client.delete(room.keys.seq)  # lost while the stream exists: a new epoch, once
    assert send_batch(room, [("lobby", "c", None), ("lobby", "d", "k1")], epoch="e2") == [(1, "e2"), (2, "e2")]
    assert send_batch(room, [("lobby", "e", None)], epoch="e3") == [(3, "e2")]
    assert all(room.client.pttl(k) > room.settings.redis_room_ttl_ms - 1000 for k in room.send_keys())


def test_an_id_whose_message_left_the_stream_names_the_new_message(redis_server) -> None:
    """A dedup id outlives its message until the next trim (every 16th seq): sent again
    then, it is a new message, and a retry of that one is its duplicate."""
    room = Room(redis_server.url, history_length=4)
    assert room.send("first", "e1", key="k1") == (1, "e1")
    for i in range(5):
        room.send(f"m{i}", "e1")  # seq 1 leaves the stream at seq 5
    assert room.client.zscore(room.keys.dedup, room.client.zrange(room.keys.dedup, 0, 0)[0]) == 1
    assert room.send("first again", "e1", key="k1") == (7, "e1")
    assert room.send("first again", "e1", key="k1") == (7, "e1")
    assert len(room.history()) == 4


def test_reads_show_exactly_the_last_history_length_seqs_of_a_stream_trimmed_by_nodes(redis_server) -> None:
    """The stream is trimmed by whole nodes (`MAXLEN ~`), so it holds older entries than the
    room keeps; joins, recoveries and history pages never see them."""
    room = Room(redis_server.url, history_length=4)
    for i in range(64):
        room.send(f"m{i}", "e1")
    assert 4 < room.client.xlen(room.keys.hist) < 64, "trimmed, but not to the window (else this proves nothing)"
    assert room.seqs() == [61, 62, 63, 64]
    assert room.seqs(newest=2) == [63, 64]
    assert room.seqs(after=10) == [61, 62, 63, 64], "a recovery from further back gets the window only"
    assert room.seqs(after=61) == [62, 63, 64]
    assert room.seqs(upto=62) == [61, 62], "a page back ends at the window"
    assert room.seqs(after=50, upto=62) == [61, 62]


def test_a_batch_reads_its_keys_once_and_renews_when_asked(redis_server) -> None:
    """The common path's calls (issue 27 item 4): one MGET per batch, one INCRBY per room
    and batch, no TTL read, no renewal until the sending process asks for one."""
    room = Room(redis_server.url)
    send_batch(room, [("lobby", "a", None), ("hall", "b", None)])
    room.client.config_resetstat()
    sends: list[tuple[str, str, str | None]] = [(("lobby", "hall")[i % 2], f"m{i}", None) for i in range(10)]
    assert [seq for seq, _ in send_batch(room, sends)] == [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    stats = room.client.info("commandstats")
    calls = {name[len("cmdstat_") :]: s["calls"] for name, s in stats.items()}
    assert calls["mget"] == 1 and "pttl" not in calls and "pexpire" not in calls
    assert calls["zadd"] == calls["xadd"] == calls["publish"] == 10 and calls["incrby"] == 2
    ttl = room.settings.redis_room_ttl_ms
    room.client.pexpire(room.keys.dedup, ttl // 2)
    room.next_tenth()
    send_batch(room, [("lobby", "c", None), ("lobby", "d", None)])
    assert all(room.client.pttl(k) > ttl - 1000 for k in room.send_keys())


def test_a_batch_stopped_by_an_error_leaves_a_gap_never_a_seq_twice(redis_server) -> None:
    """send_many.lua writes each room's seq before storing anything under it: a batch an
    error stops half-way (here a stream key of the wrong type) is retried whole by the
    publisher, its stored messages come back as duplicates and the rest get new seqs."""
    room = Room(redis_server.url)
    assert send_batch(room, [("hall", "first", "h0")]) == [(1, "e1")]
    hall = RoomKeys.of(room.settings.key_prefix, "hall").hist
    room.client.delete(hall)
    room.client.set(hall, "not a stream")
    sends: list[tuple[str, str, str | None]] = [("lobby", "a", "k1"), ("hall", "b", "h1")]
    with pytest.raises(BackendUnavailable):
        send_batch(room, sends)
    room.client.delete(hall)
    assert send_batch(room, sends) == [(1, "e1"), (3, "e1")]  # a's duplicate; seq 2 skipped
    assert len(room.history()) == 1


def test_the_batcher_gets_past_a_restart_of_redis_that_broke_its_held_connection(redis_server) -> None:
    """A restart of Redis breaks the connection the batcher holds; the next round trip still
    runs its call, once, over the client's pipeline and its Retry."""
    commands = RedisClients.from_settings(Settings(redis_url=redis_server.url)).commands
    batcher = ScriptBatcher(commands, "test-batcher")
    script = LuaScript.of("", "return redis.call('INCR', KEYS[1])")
    try:
        for expected in (1, 2, 3):
            assert batcher.run((script, ["n"], []), timeout=10) == expected
        assert batcher.round_trips == 3
        redis_server.kill()
        redis_server.restart()
        assert batcher.run((script, ["n"], []), timeout=10) == 1  # a fresh server, the library loaded again
        assert redis_server.client().get("n") == b"1"  # run once
    finally:
        batcher.stop()
