"""Real Socket.IO clients that see their packets in wire order, and senders that keep a
room busy: what exactly-once-in-order checks need.

They record every packet in wire order (helpers.on_wire), acks included."""

from __future__ import annotations

import threading
import time
from typing import Any

import socketio
from helpers import on_wire, wait_until


class WireClient:
    """Connects over websocket and records ("ack", data) and (event, data) in wire order."""

    def __init__(self, url: str, username: str) -> None:
        self.sio = socketio.Client(reconnection=False)
        self.username = username
        self._lock = threading.Lock()
        self.wire: list[tuple[str, Any]] = []
        on_wire(self.sio, self._append)
        self.sio.connect(url, transports=["websocket"], auth={"username": username}, wait_timeout=10)

    def _append(self, kind: str, data: Any) -> None:
        with self._lock:
            self.wire.append((kind, data))

    def join(self, payload: Any, timeout: float = 15) -> dict[str, Any]:
        """Join and wait for the ack (which is also on the wire, in its place)."""
        return self.sio.call("join_room", payload, timeout=timeout)

    def room_wire(self, room: str) -> list[tuple[str, dict[str, Any]]]:
        """This room's join acks and messages, in wire order."""
        with self._lock:
            packets = list(self.wire)
        out = []
        for kind, data in packets:
            if kind == "ack" and isinstance(data, dict) and data.get("room") == room and "history" in data:
                out.append(("ack", data))
            elif kind == "broadcast_message" and data.get("room") == room:
                out.append(("live", data))
        return out

    def seqs(self, room: str) -> list[int]:
        """Every seq this connection was handed for `room`: acks' history and live, in order."""
        out: list[int] = []
        for kind, data in self.room_wire(room):
            if kind == "ack":
                out.extend(m["seq"] for m in data["history"])
            else:
                out.append(data["seq"])
        return out

    def close(self) -> None:
        self.sio.disconnect()


def assert_once_in_order(client: WireClient, room: str, first: int, last: int) -> None:
    """Its ack before any live message; then history and live together are exactly
    first..last, rising, and live starts after the ack's bound."""
    seen = client.room_wire(room)
    kinds = [kind for kind, _ in seen]
    assert kinds and kinds[0] == "ack", f"{client.username}: a live message came before the ack: {kinds[:5]}"
    ack = seen[0][1]
    live = [data["seq"] for kind, data in seen[1:] if kind == "live"]
    assert all(seq > ack["seq"] for seq in live), f"{client.username}: live {live[:5]} within the ack's {ack['seq']}"
    history = [m["seq"] for m in ack["history"]]
    assert history + live == list(range(first, last + 1)), (
        f"{client.username}: history {history[:3]}..{history[-3:]} then live {live[:3]}..{live[-3:]}, "
        f"wanted {first}..{last}"
    )


class Sender:
    """A member that sends to its room at `rate` per second from a thread, for as long as it
    runs, and keeps the seq of every message acked ok."""

    def __init__(self, url: str, room: str, rate: float, name: str = "sender") -> None:
        self.client = WireClient(url, name)
        self.client.join({"room": room})
        self.room = room
        self.rate = rate
        self.acked: list[int] = []
        self.failed: list[str] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sender:
        self._thread.start()
        return self

    def _on_ack(self, ack: dict[str, Any]) -> None:
        with self._lock:
            if ack.get("ok"):
                self.acked.append(ack["seq"])
            else:
                self.failed.append(ack["error"]["code"])

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set() and self.sent < 100_000:
            payload = {"room": self.room, "message": f"m{self.sent}", "key": f"{self.client.username}-{self.sent}"}
            try:
                self.client.sio.emit("send_message", payload, callback=self._on_ack)
            except socketio.exceptions.SocketIOError:
                return  # this sender's own connection is gone: the test sees its sends unanswered
            with self._lock:
                self.sent += 1
            self._stop.wait(max(0.0, started + self.sent / self.rate - time.monotonic()))

    def stop(self, timeout: float = 30) -> int:
        """Stop sending and wait for every answer; the highest seq acked ok."""
        self._stop.set()
        self._thread.join(timeout=5)
        wait_until(lambda: self.answered() >= self.sent, timeout=timeout, what=f"{self.room}: every send answered")
        with self._lock:
            return max(self.acked, default=0)

    def answered(self) -> int:
        with self._lock:
            return len(self.acked) + len(self.failed)
