"""The webhook sender (WEBHOOK_URL): one thread per node (a greenlet under gevent) that takes
events from the archive's webhook outbox and POSTs them, signed as Standard Webhooks says.

The events are written by the archive writer in the transaction that stores the messages
(one reader of the outbox stream for both: each message is read once per deployment, so
each event is written once), and by erasures; any node's sender may deliver them. Rooms are
delivered side by side, each room's events one after another in seq order. A non-2xx
answer or a timeout is retried with exponential backoff (WEBHOOK_BACKOFF doubling, jittered,
at most 10 minutes) up to WEBHOOK_MAX_ATTEMPTS tries, then the event is kept as failed:
/metrics counts them, and the server API lists and replays them."""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

from ..archive.store import DATABASE_ERRORS
from ..archive.webhook_outbox import WebhookEvent, WebhookOutbox
from ..deadlines import green_deadline
from ..logsafe import LogThrottle, q
from ..settings import Settings
from .poster import Poster, PostFailed
from .signing import Signer

log = logging.getLogger(__name__)
throttled = LogThrottle(log, rate=0.2, burst=5)

ROOMS_PER_CLAIM = 32
EVENTS_PER_ROOM = 20
IDLE_POLL = 0.2  # seconds between looks at an empty outbox
COUNT_EVERY = 5.0  # seconds between counts of pending and failed events (metrics)
BACKOFF_CAP = 600.0


@dataclass
class WebhookStats:
    delivered: int = 0
    failed_tries: int = 0  # non-2xx answers, timeouts, refused connections
    given_up: int = 0  # events this node moved to failed
    pending: int = 0  # the deployment's, counted every COUNT_EVERY seconds
    failed: int = 0


class WebhookSender:
    def __init__(self, outbox: WebhookOutbox, settings: Settings) -> None:
        assert settings.webhook_url
        self.outbox = outbox
        self._url = settings.webhook_url
        self._timeout = settings.webhook_timeout
        self._max_attempts = settings.webhook_max_attempts
        self._backoff = settings.webhook_backoff
        self._signer = Signer(settings.webhook_secret)
        # One post's bound. A claim's lease covers two, and is renewed while the room's events
        # go out, so a sender that dies holds its rooms that long at most (was 20 posts' worth).
        self._post_bound = self._timeout * 2 + 0.5
        self._lease = self._post_bound * 2 + 1
        self._poster = Poster(self._url, self._timeout, ROOMS_PER_CLAIM)
        self.stats = WebhookStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        counted = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - counted >= COUNT_EVERY:
                    counts = self.outbox.counts()
                    self.stats.pending, self.stats.failed = counts["pending"], counts["failed"]
                    counted = time.monotonic()
                events = self.outbox.claim(ROOMS_PER_CLAIM, EVENTS_PER_ROOM, self._lease)
                if not events:
                    self._stop.wait(IDLE_POLL)
                    continue
                self._deliver_rooms(events)
            except DATABASE_ERRORS as exc:
                throttled.log(logging.WARNING, "database", "event=webhook_database_error error=%s", q(str(exc)))
                self._stop.wait(1.0)
            except Exception:  # a sender that stops would let events pile up unseen
                log.exception("event=webhook_sender_error")
                self._stop.wait(1.0)

    def _deliver_rooms(self, events: list[WebhookEvent]) -> None:
        """Rooms side by side (a thread each: greenlets under gevent), each in order."""
        by_room: dict[str, list[WebhookEvent]] = {}
        for event in events:
            by_room.setdefault(event.room, []).append(event)
        threads = [threading.Thread(target=self._deliver_room, args=(room_events,)) for room_events in by_room.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _deliver_room(self, events: list[WebhookEvent]) -> None:
        leased_until = time.monotonic() + self._lease
        try:
            for i, event in enumerate(events):
                if time.monotonic() + self._post_bound + 1 > leased_until:
                    if not self.outbox.renew([e.id for e in events[i:]], self._lease):
                        return  # the lease ran out and another sender has the room: it goes on
                    leased_until = time.monotonic() + self._lease
                error = self._post(event)
                if error is None:
                    self.outbox.delivered(event.id)
                    self.stats.delivered += 1
                    continue
                self._failed(event, error, [e.id for e in events[i + 1 :]])
                return
        except DATABASE_ERRORS as exc:  # the leases run out: another round takes them again
            throttled.log(logging.WARNING, "database", "event=webhook_database_error error=%s", q(str(exc)))
        except Exception:
            log.exception("event=webhook_sender_error room=%s", q(events[0].room))

    def _failed(self, event: WebhookEvent, error: str, rest: list[int]) -> None:
        self.stats.failed_tries += 1
        tries = event.attempts + 1
        give_up = tries >= self._max_attempts
        wait = min(self._backoff * 2 ** (tries - 1), BACKOFF_CAP) * random.uniform(0.8, 1.2)
        self.outbox.retry(event, error, wait, give_up, rest)
        if give_up:
            self.stats.given_up += 1
        throttled.log(
            logging.WARNING,
            "failed",
            "event=webhook_failed id=%s type=%s tries=%d gave_up=%s error=%s",
            event.webhook_id,
            event.type,
            tries,
            give_up,
            q(error),
        )

    def _post(self, event: WebhookEvent) -> str | None:
        """None when the receiver took it (2xx), else what went wrong."""
        body = event.body.encode()
        bound = self._post_bound
        try:
            with green_deadline(bound, TimeoutError(f"no answer within {bound:g} s")):
                status, _answer = self._poster.post(body, self._signer.headers(body, event.webhook_id))
        except PostFailed as exc:
            return str(exc)
        except TimeoutError as exc:
            return f"TimeoutError: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"
