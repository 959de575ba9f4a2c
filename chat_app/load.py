"""How far behind its own work the node runs, so that past capacity it refuses a share of
new sends instead of delivering everything it accepted later and later.

The reading is how long an event waits for its turn: every tick goes to the back of
gevent's run queue, behind every event waiting. (A timer alone still fires on time past
capacity, measured: gevent polls between batches of waiting events.) A stalled or slow Redis
does not move it: the node idles while its sends wait. So `overloaded` (this node is behind)
and `unavailable` (Redis did not confirm) stay apart. The lateness of the node's own messages
reaching its listener was a second reading, and it was dropped: it grows just as much when
sends waited out a Redis stall or failover, and shed sends after every recovery.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

TICK = 0.05  # seconds between readings
# Weight of the latest reading in the smoothed lag. Past capacity the readings alternate
# (a late tick, then one on time: measured, a filter that took the smaller of two halved the
# signal and doubled the p99), so each one counts; one late tick (a garbage collection of
# 400 ms) sheds for ~150 ms after it, while its backlog drains. A refused send adds nothing
# to the backlog, so shedding drains it, and with it the readings and the share.
SMOOTHING = 0.3


@dataclass
class LoadGauge:
    """Refuses a share of new sends that grows from none at `limit` seconds of smoothed lag
    to all at twice that (0: never): a share, so the node keeps serving what it can while it
    sheds the rest; at random, so no one sender is always the one refused."""

    limit: float
    lag: float = 0.0  # seconds, smoothed
    share: float = 0.0  # of new sends to refuse
    refused: int = 0  # sends refused so far (a metric)

    def shedding(self) -> bool:
        return self.share > 0

    def refuses(self) -> bool:
        """Whether to refuse this send (and count it)."""
        if self.share > 0 and random.random() < self.share:
            self.refused += 1
            return True
        return False

    def observe(self, waited: float) -> None:
        """One tick, whose turn came `waited` seconds after it was due."""
        self.lag += SMOOTHING * (waited - self.lag)
        was = self.share
        self.share = min(1.0, max(0.0, self.lag / self.limit - 1)) if self.limit > 0 else 0.0
        if self.share and not was:
            log.warning("event=overloaded lag_ms=%.0f limit_ms=%.0f", self.lag * 1000, self.limit * 1000)
        elif was and not self.share:
            log.info("event=overload_cleared lag_ms=%.0f refused=%d", self.lag * 1000, self.refused)

    def run(self, stopping: threading.Event) -> None:
        """Tick until `stopping` is set (a greenlet under gevent)."""
        due = time.monotonic() + TICK
        while not stopping.wait(max(0.0, due - time.monotonic())):
            time.sleep(0)  # gevent: to the back of the run queue
            now = time.monotonic()
            self.observe(max(0.0, now - due))
            due = now + TICK
