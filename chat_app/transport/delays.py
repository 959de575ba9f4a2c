"""Many timers of one length, served by one task: what a timer per connection would cost in
greenlets and hub callbacks, at thousands of connections, is one deque entry each."""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class DelayQueue(Generic[T]):
    """`handle(item, due)` runs for each item `delay` seconds after it was added (`due`:
    time.monotonic() it fell due), in order, on one background task of `server` (an engine.io
    server, or anything with its `start_background_task` and `sleep`). The delay is the same
    for every item, so appending keeps the FIFO in due order. `tick`: the task sleeps at least
    this long, so items due within it are handled in one wake."""

    def __init__(
        self,
        server: Any,
        handle: Callable[[T, float], None],
        event: Callable[[], Any],
        what: str,
        tick: float = 0.0,
    ) -> None:
        self._server = server
        self._handle = handle
        self._what = what
        self._tick = tick
        self._due: collections.deque[tuple[float, T]] = collections.deque()
        self._wake = event()
        self._task: Any = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, item: T, delay: float) -> None:
        self._due.append((time.monotonic() + delay, item))
        if self._task is None:
            self._task = self._server.start_background_task(self._run)
        self._wake.set()

    def _run(self) -> None:
        while True:
            if not self._due:
                self._wake.clear()
                self._wake.wait()
                continue
            now = time.monotonic()
            delay = self._due[0][0] - now
            if delay > 0:
                self._server.sleep(max(delay, self._tick))
                continue
            while self._due and self._due[0][0] <= now:
                due, item = self._due.popleft()
                try:
                    self._handle(item, due)
                except Exception:
                    log.exception("event=%s_failed item=%r", self._what, getattr(item, "sid", item))
