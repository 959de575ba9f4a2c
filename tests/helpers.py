"""Bounded waiting and recording doubles shared by the tests."""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")


def require_program(path: str, install: str) -> None:
    """A system program a test drives: missing on CI is a failure, never a silent skip;
    elsewhere the test is skipped with the reason printed."""
    if Path(path).exists():
        return
    reason = f"{path} is missing ({install}; .ci/run does it)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    print(f"SKIP: {reason}")
    pytest.skip(reason)


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll until `predicate()` is truthy; fail with `what` once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class RecordingEmitter:
    """An Emitter that remembers what each local socket would have received."""

    def __init__(self) -> None:
        self.rooms: dict[str, set[str]] = defaultdict(set)
        self.received: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        self.lock = threading.Lock()

    def emit_room(self, event: str, data: dict[str, Any], room: str) -> None:
        with self.lock:
            for sid in self.rooms[room]:
                self.received[sid].append((event, data))

    def emit_to(self, sid: str, event: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.received[sid].append((event, data))

    def enter_room(self, sid: str, room: str) -> None:
        with self.lock:
            self.rooms[room].add(sid)

    def leave_room(self, sid: str, room: str) -> None:
        with self.lock:
            self.rooms[room].discard(sid)

    def messages(self, sid: str, event: str = "broadcast_message") -> list[dict[str, Any]]:
        with self.lock:
            return [data for name, data in self.received[sid] if name == event]


class ChatClient:
    """A real python-socketio client over websocket that records what it receives."""

    def __init__(self, url: str, username: str | None = None, connect_auth: Any = None, **connect: Any) -> None:
        import socketio

        self.sio = socketio.Client(reconnection=False)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self._lock = threading.Lock()
        for name in ("broadcast_message", "error", "presence"):
            self.sio.on(name, self._recorder(name))
        auth = connect_auth if connect_auth is not None else ({"username": username} if username else None)
        self.sio.connect(url, transports=["websocket"], auth=auth, wait_timeout=10, **connect)

    def _recorder(self, name: str) -> Callable[[Any], None]:
        def record(data: Any) -> None:
            with self._lock:
                self.events[name].append(data)

        return record

    def call(self, event: str, data: Any, timeout: float = 10) -> Any:
        return self.sio.call(event, data, timeout=timeout)

    def received(self, event: str = "broadcast_message") -> list[Any]:
        with self._lock:
            return list(self.events[event])

    def wait_for(self, count: int, event: str = "broadcast_message", timeout: float = 10) -> list[Any]:
        wait_until(lambda: len(self.received(event)) >= count, timeout, what=f"{count} x {event}")
        return self.received(event)

    def close(self) -> None:
        self.sio.disconnect()


def scrape(url: str) -> dict[str, float]:
    """Samples by name plus labels other than instance_id, e.g. `chat_recoveries_total{result=ok}`."""
    response = requests.get(f"{url}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            extra = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k not in {"instance_id"})
            samples[f"{sample.name}{{{extra}}}" if extra else sample.name] = sample.value
    return samples
