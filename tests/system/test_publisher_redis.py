"""The publisher against a real redis-server: a full queue refuses at once, unstored (its linger
alone, on fakeredis, is in unit/test_publisher.py)."""

from __future__ import annotations

import threading

import pytest
from helpers import wait_until

from chat_app.backends.base import Draft, Overloaded
from chat_app.backends.redis.publisher import Publisher
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
