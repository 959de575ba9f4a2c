"""TokenExpiry: a token's `exp` holds on a live connection too. At exp the connection is
told `error` {code: token_expired} and closed; the client reconnects with a fresh token.
One thread for all the node's connections (no timer per connection), its own heap and lock."""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable

from .local_sockets import Emitter
from .protocol import ChatError, ErrorCode

log = logging.getLogger(__name__)


class TokenExpiry:
    def __init__(
        self,
        emitter: Emitter,
        clock: Callable[[], float],
        expires_of: Callable[[str], float | None],
        live: Callable[[], list[tuple[float, str]]],
    ) -> None:
        """`expires_of(sid)`: the live connection's exp (None: gone); `live()`: (exp, sid)
        of every live connection whose token expires."""
        self._emitter = emitter
        self._clock = clock
        self._expires_of = expires_of
        self._live = live
        self._lock = threading.Lock()
        self._heap: list[tuple[float, str]] = []  # (token exp, sid); stale entries skipped
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._connections = 0

    def start(self) -> None:
        threading.Thread(target=self._run, name="token-expiry", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def note(self, expires: float, sid: str, connections: int) -> None:
        """Entries of connections gone meanwhile stay until due; the heap is rebuilt from the
        live ones when they outnumber them (`connections`: how many are live), so year-long
        tokens on churning connections cannot grow it without bound."""
        with self._lock:
            if len(self._heap) > 2 * connections + 64:
                self._heap = self._live()
                heapq.heapify(self._heap)
            else:
                heapq.heappush(self._heap, (expires, sid))
            nearest = self._heap[0][1] == sid
        if nearest:
            self._wake.set()  # the nearest one now: the waiter wakes earlier

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                now = self._clock()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    expires, sid = heapq.heappop(self._heap)
                    if self._expires_of(sid) == expires:
                        due.append(sid)
                nearest = self._heap[0][0] if self._heap else None
            for sid in due:
                log.info("event=token_expired sid=%s", sid)
                told = ChatError(ErrorCode.TOKEN_EXPIRED, "your token has expired: connect again with a fresh one")
                self._emitter.emit_to(sid, "error", {**told.to_wire(), "event": None})
                self._emitter.disconnect(sid)
            self._wake.wait(None if nearest is None else max(0.0, nearest - self._clock()))
            self._wake.clear()
