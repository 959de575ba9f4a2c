"""A paced send stream with asynchronous acks, and the exactly-once, in-order check."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from helpers import ChatClient


@dataclass
class SendStream:
    client: ChatClient
    room: str
    rate: float
    acks: dict[int, dict[str, Any]] = field(default_factory=dict)
    sent_at: dict[int, float] = field(default_factory=dict)  # time.monotonic() of each send
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SendStream:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            i = self.sent
            self.sent_at[i] = time.monotonic()
            try:
                self.client.sio.emit(
                    "send_message", {"room": self.room, "message": f"n{i}"}, callback=lambda ack, i=i: self._ack(i, ack)
                )
            except Exception as exc:  # the client lost its connection: recorded, not raised
                self._ack(i, {"ok": False, "error": {"code": "client_disconnected", "message": str(exc)}})
            self.sent += 1
            next_at += period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _ack(self, i: int, ack: dict[str, Any]) -> None:
        with self._lock:
            self.acks[i] = ack

    def stop(self, ack_timeout: float = 15.0) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=5)
        deadline = time.monotonic() + ack_timeout
        while len(self.acks) < self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.acks) == self.sent, f"{self.sent - len(self.acks)} sends never answered"

    def ok_ids(self) -> set[str]:
        return {a["id"] for a in self.acks.values() if a.get("ok")}

    def failed(self) -> list[dict[str, Any]]:
        return [a for a in self.acks.values() if not a.get("ok")]

    def acks_of_sends_after(self, moment: float) -> list[dict[str, Any]]:
        """The answers to the sends made after `moment` (time.monotonic()), in send order."""
        return [self.acks[i] for i, at in sorted(self.sent_at.items()) if at > moment]


def assert_exactly_once_in_order(
    stream: SendStream, receiver: ChatClient, settle: float = 10.0, refusals: tuple[str, ...] = ("unavailable",)
) -> dict[str, int]:
    """Every ok-acked message reaches `receiver` exactly once; seqs rise within an epoch;
    every other send was refused with one of `refusals`."""
    ok = stream.ok_ids()
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline and not ok <= {m["id"] for m in receiver.received()}:
        time.sleep(0.05)
    got = [m for m in receiver.received() if m["room"] == stream.room]
    ids = [m["id"] for m in got]
    assert len(ids) == len(set(ids)), f"duplicates: {len(ids) - len(set(ids))}"
    missing = ok - set(ids)
    assert not missing, f"{len(missing)} acked messages never arrived"
    for prev, cur in itertools.pairwise(got):
        if prev["epoch"] == cur["epoch"]:
            assert cur["seq"] > prev["seq"], (prev["seq"], cur["seq"])
    failed = stream.failed()
    assert all(a["error"]["code"] in refusals for a in failed), failed
    return {"acked_ok": len(ok), "received": len(ids), "refused": len(failed), "duplicates": 0, "lost": 0}
