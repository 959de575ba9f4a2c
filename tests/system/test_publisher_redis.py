"""The publisher against a real redis-server: a full queue refuses at once, unstored (its linger
alone, on fakeredis, is in unit/test_publisher.py)."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import wait_until

from chat_app.backends.base import BackendUnavailable, Banned, Draft, Overloaded
from chat_app.backends.redis.keys import RoomKeys, archive_key
from chat_app.backends.redis.publisher import Publisher, _Pending
from chat_app.settings import Settings


def test_a_full_queue_refuses_at_once_unstored_and_sends_are_accepted_again_after(redis_server) -> None:
    """While Redis is stalled sends wait; once the queue is full a new send is refused at
    once (Overloaded: nothing stored); the waiting sends still land when Redis resumes."""
    pub = Publisher(redis_server.client(), Settings.from_env({}, send_deadline=10.0), max_queue=1)
    pub.start()

    def send(text: str) -> int:
        return pub.send(Draft.new("lobby", "alice", text, "test", None)).seq

    try:
        assert send("warm-up") == 1
        redis_server.pause()
        landed: list[int] = []
        in_flight = threading.Thread(target=lambda: landed.append(send("in flight")))
        in_flight.start()
        wait_until(lambda: pub.batches >= 2 and not pub._queue, what="the first send in flight")
        queued = threading.Thread(target=lambda: landed.append(send("queued")))
        queued.start()
        wait_until(lambda: len(pub._queue) == 1, what="the second send queued")
        with pytest.raises(Overloaded):
            send("refused")
        redis_server.resume()
        for thread in (in_flight, queued):
            thread.join(timeout=10)
        assert sorted(landed) == [2, 3]  # the waiting sends landed; the refused one took no seq
        assert send("after") == 4
    finally:
        redis_server.resume()
        pub.stop()


def test_a_batch_in_one_call_gives_each_send_its_own_answer(redis_server) -> None:
    """send_many.lua: one call for a batch over several rooms (issue 27). Each send gets its
    room's next seq; a keyed resend within the same batch is the first one; a banned sender's
    send is refused alone; while the archive is restoring positions, a send that would start
    a room is refused alone and the others in the batch are stored (nothing half-way)."""
    client = redis_server.client()
    settings = Settings.from_env({}, redis_url=redis_server.url, database_url="postgresql://unused/db")
    pub = Publisher(client, settings)
    prefix = settings.key_prefix
    client.set(archive_key(prefix), "0 1000")  # seeded: rooms may start
    for room in ("a", "b"):
        pub._send_batch([_pending(pub, Draft.new(room, "ann", "first", "n1"))])
    client.delete(archive_key(prefix))  # restoring: a room with no epoch may not start
    client.set(RoomKeys.of(prefix, "b").ban("eve"), "1", px=60_000)
    drafts = [
        Draft.new("a", "ann", "one", "n1", key="k"),
        Draft.new("b", "ann", "two", "n1"),
        Draft.new("a", "ann", "one again", "n1", key="k"),
        Draft.new("b", "eve", "banned", "n1"),
        Draft.new("c", "ann", "a new room", "n1"),
        Draft.new("a", "bob", "three", "n1"),
    ]
    batch = [_pending(pub, d) for d in drafts]
    pub._send_batch(batch)
    outcomes: list[object] = []
    for p in batch:
        try:
            outcomes.append(p.wait(1).seq)
        except (Banned, BackendUnavailable) as exc:
            outcomes.append(type(exc).__name__)
    assert outcomes == [2, 2, 2, "Banned", "BackendUnavailable", 3]
    assert client.xlen(RoomKeys.of(prefix, "a").hist) == 3 and client.xlen(RoomKeys.of(prefix, "b").hist) == 2
    assert not client.exists(RoomKeys.of(prefix, "c").seq)


def _pending(pub: Publisher, draft: Draft) -> _Pending:
    return _Pending(draft, pub._room_keys(draft.room), time.monotonic() + 5)


def test_send_then_hands_each_outcome_to_its_callback_without_a_waiting_sender(redis_server) -> None:
    """send_then (the gevent transport's send_message, issue 27): no sender waits; the
    publisher calls each send's `done` with its envelope or why not, in the batch's order;
    a `done` that fails costs the others nothing; a full queue refuses at once."""
    client = redis_server.client()
    settings = Settings.from_env({}, redis_url=redis_server.url)
    client.set(RoomKeys.of(settings.key_prefix, "lobby").ban("eve"), "1", px=60_000)
    pub = Publisher(client, settings, max_queue=3)
    outcomes: list[object] = []

    def done(outcome: object) -> None:
        outcomes.append(outcome if isinstance(outcome, Exception) else outcome.seq)

    def fails(outcome: object) -> None:
        raise RuntimeError("a broken answer")

    pub.send_then(Draft.new("lobby", "ann", "one", "n1"), done)
    pub.send_then(Draft.new("lobby", "eve", "banned", "n1"), fails)
    pub.send_then(Draft.new("lobby", "bob", "two", "n1"), done)
    with pytest.raises(Overloaded):
        pub.send_then(Draft.new("lobby", "bob", "refused", "n1"), done)
    assert outcomes == []  # nothing sent before the publisher runs
    pub.start()
    try:
        wait_until(lambda: len(outcomes) == 2, what="both answers")
        assert outcomes == [1, 2]
        pub.send_then(Draft.new("lobby", "eve", "banned", "n1"), done)
        wait_until(lambda: len(outcomes) == 3, what="the refusal")
        assert isinstance(outcomes[2], Banned)
    finally:
        pub.stop()
