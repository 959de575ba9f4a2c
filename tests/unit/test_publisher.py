"""The publisher's linger: it waits for more sends only when enough are due (fakeredis).
A full queue against a real redis-server: system/test_publisher_redis.py."""

from __future__ import annotations

import fakeredis
import pytest

from chat_app.backends.redis import publisher as redis_publisher
from chat_app.backends.redis.publisher import Publisher
from chat_app.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def recording_waits(monkeypatch: pytest.MonkeyPatch, linger: float) -> tuple[Publisher, list[float]]:
    """A publisher (not started) whose lingers are recorded instead of waited."""
    pub = Publisher(fakeredis.FakeRedis(), Settings.from_env({}, publish_linger=linger))
    waits: list[float] = []
    monkeypatch.setattr(pub._stopping, "wait", lambda timeout=None: waits.append(timeout) or False)
    return pub, waits


@pytest.fixture
def publisher(monkeypatch: pytest.MonkeyPatch) -> tuple[Publisher, Clock, list[float]]:
    clock = Clock()
    monkeypatch.setattr(redis_publisher.time, "monotonic", clock.monotonic)
    pub, waits = recording_waits(monkeypatch, 0.005)
    return pub, clock, waits


def batches(pub: Publisher, clock: Clock, count: int, every: float, size: int) -> None:
    for _ in range(count):
        clock.now += every
        pub._linger_if_busy()
        pub._last_size = size


def test_slow_sends_go_at_once(publisher) -> None:
    pub, clock, waits = publisher
    batches(pub, clock, 50, every=0.010, size=1)  # 100 sends/s: 0.5 due within 5 ms
    batches(pub, clock, 50, every=0.005, size=7)  # 1,400 sends/s: 7 due, fewer than LINGER_GATHERS
    assert waits == []


def test_default_linger_is_on() -> None:
    assert Settings.from_env({}).publish_linger == 0.005


def test_fast_sends_wait_for_company_then_stop_waiting_when_traffic_slows(publisher) -> None:
    pub, clock, waits = publisher
    batches(pub, clock, 20, every=0.005, size=10)  # 2,000 sends/s: 10 due within 5 ms
    assert waits and set(waits) == {0.005}
    seen = len(waits)
    batches(pub, clock, 20, every=0.050, size=1)  # 20 sends/s
    assert len(waits) < seen + 5  # the smoothed rate falls below 1,600/s within a few batches
    settled = len(waits)
    batches(pub, clock, 20, every=0.050, size=1)
    assert len(waits) == settled


def test_linger_zero_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    pub, waits = recording_waits(monkeypatch, 0.0)
    for _ in range(20):
        pub._linger_if_busy()
        pub._last_size = 256
    assert waits == []
