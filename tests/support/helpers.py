"""Bounded waiting and recording doubles shared by the tests."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Collection
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


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll until `predicate()` is truthy; fail with `what` (and `detail()`, what was seen
    instead) once `timeout` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f": {detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}{seen}")
        time.sleep(interval)


class Recorded(logging.Handler):
    """A logger's records in a list (caplog reads the root logger, which chat_app's own
    loggers stop propagating to once an app configured them)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class RecordingEmitter:
    """An Emitter that remembers what each local socket would have received."""

    def __init__(self) -> None:
        self.rooms: dict[str, set[str]] = defaultdict(set)
        self.received: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        self.lock = threading.Lock()

    def emit_room(self, event: str, data: dict[str, Any], room: str, skip: Collection[str] = ()) -> None:
        with self.lock:
            for sid in self.rooms[room] - set(skip):
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


def on_wire(sio: Any, record: Callable[[str, Any], None]) -> None:
    """Call `record(kind, data)` for each ack ("ack") and event (its name) a python-socketio
    client receives, in the order its transport read them. The client itself runs each
    message's handler in a thread of its own, so handlers may see two messages swapped."""
    from engineio import packet as eio_packet
    from socketio import packet as sio_packet

    receive = sio.eio._receive_packet

    def read(pkt: Any) -> None:
        if pkt.packet_type == eio_packet.MESSAGE and isinstance(pkt.data, str):
            decoded = sio_packet.Packet(encoded_packet=pkt.data)
            if decoded.packet_type == sio_packet.ACK:
                record("ack", decoded.data[0] if decoded.data else None)
            elif decoded.packet_type == sio_packet.EVENT:
                record(decoded.data[0], decoded.data[1] if len(decoded.data) > 1 else None)
        receive(pkt)

    sio.eio._receive_packet = read


class ChatClient:
    """A real python-socketio client over websocket that records what it receives, in wire
    order (see on_wire)."""

    RECORDED = frozenset({"broadcast_message", "error", "presence"})

    def __init__(
        self,
        url: str,
        username: str | None = None,
        connect_auth: Any = None,
        transports: tuple[str, ...] = ("websocket",),
        **connect: Any,
    ) -> None:
        import socketio

        self.sio = socketio.Client(reconnection=False)
        self.events: dict[str, list[Any]] = defaultdict(list)
        self._lock = threading.Lock()
        on_wire(self.sio, self._record)
        auth = connect_auth if connect_auth is not None else ({"username": username} if username else None)
        self.sio.connect(url, transports=list(transports), auth=auth, wait_timeout=10, **connect)

    def _record(self, kind: str, data: Any) -> None:
        if kind in self.RECORDED:
            with self._lock:
                self.events[kind].append(data)

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
