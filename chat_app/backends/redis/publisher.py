"""The publisher: one greenlet owns the publishing connection and pipelines queued sends.

Serialising sends through one connection is what keeps a CPU-bound node from opening a
connection per concurrent send until redis-py's pool runs dry (the failure that makes
Flask-SocketIO's queue lose messages under load). Every send carries a dedup id, so a batch
retried after a connection error never stores a message twice.

The per-send path is kept lean because it runs for every message a node accepts: the
greenlet holds its connection instead of checking one out per batch, sends hand over through
a deque, and a sender waits on an Event instead of a Future.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import redis
from redis.cluster import RedisCluster

from ...logsafe import q
from ...protocol.wire import Envelope
from ...random_ids import RandomIds
from ...settings import Settings
from ..base import BackendUnavailable, Banned, Draft, Overloaded
from .connection import CONNECTION_ERRORS, describe, reconnect_backoff
from .keys import RoomKeys, room_keys
from .scripts import AnyRedis, Call, HeldConnection, is_moved, run_scripts
from .send import SendScript, ServerIds

log = logging.getLogger(__name__)

Outcome = Envelope | BackendUnavailable | Banned  # a send's outcome: stored, or why not

MAX_BATCH = 256
RECHECK_SECONDS = 1.0
RATE_SMOOTHING = 0.25  # weight of the latest batch in the send-rate estimate
# The linger waits only when, at the recent rate, it gathers at least this many sends: a
# node that busy (1,600 sends/s with the default 5 ms) halves its round trips and Redis's
# work per message with it, where a lighter one, or one closed-loop sender, never waits.
LINGER_GATHERS = 8


class _Pending:
    """A queued send and the slot for its outcome, which the sender waits for on an Event,
    or which goes to `done` (the publisher calls it, and no sender waits). A Future builds a
    Condition and takes locks on every step; under gevent's patching an Event is one small C
    object (measured: cheaper than a bare lock there, too)."""

    __slots__ = ("_outcome", "_settled", "deadline", "done", "draft", "keys")

    def __init__(
        self, draft: Draft, keys: RoomKeys, deadline: float, done: Callable[[Outcome], None] | None = None
    ) -> None:
        self.draft = draft
        self.keys = keys
        self.deadline = deadline
        self.done = done
        self._outcome: Outcome | None = None
        self._settled = threading.Event() if done is None else None

    def settle(self, outcome: Outcome) -> None:
        """The first outcome wins; only the publisher's thread settles, so no race."""
        if self._outcome is not None:
            return
        self._outcome = outcome
        if self._settled is not None:
            self._settled.set()
            return
        assert self.done is not None
        try:
            self.done(outcome)
        except Exception:  # the sender's answer failing must not cost the batch's others theirs
            log.exception("event=send_done_failed room=%s", q(self.draft.room))

    def wait(self, timeout: float) -> Envelope:
        assert self._settled is not None
        if not self._settled.wait(timeout):
            raise BackendUnavailable("publish did not complete within the deadline")
        if isinstance(self._outcome, (BackendUnavailable, Banned)):
            raise self._outcome
        assert self._outcome is not None
        return self._outcome


class Publisher:
    def __init__(self, client: AnyRedis, settings: Settings, max_queue: int = 10_000) -> None:
        self._client = client
        self._send = SendScript(client, settings)
        # A cluster spreads a batch over shards, and its MOVED/ASK handling lives in
        # run_scripts' per-shard pipelines; one server is served through one held connection.
        self._held = None if isinstance(client, RedisCluster) else HeldConnection(client)
        self._room_keys = room_keys(settings.key_prefix)
        self._deadline = settings.send_deadline
        self._linger = settings.publish_linger
        self._last_batch = 0.0
        self._last_size = 0
        self._send_rate = 0.0  # sends per second, smoothed over recent batches
        self.batches = 0  # round trips to Redis (a metric: sends per round trip)
        self._backoff = reconnect_backoff(settings)
        # A deque and a wake-up flag: appends and pops need no lock, and a sender sets the
        # flag only when the publisher may be asleep on it.
        self._queue: deque[_Pending] = deque()
        self._max_queue = max_queue
        self._wakeup = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._stopping = threading.Event()
        self.last_error: str | None = None
        self._unreached: list[_Pending] = []  # sends whose server was away, for another attempt
        self._retry_at = 0.0
        self._failures = 0  # attempts in a row that left some send unreached
        self._server_ids = ServerIds(client, self._held)
        self._ids = RandomIds()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        self._thread.join(timeout=self._deadline)

    def send(self, draft: Draft) -> Envelope:
        """Refused at once, unstored (`overloaded`), when the queue is full."""
        return self._enqueue(_Pending(draft, self._room_keys(draft.room), time.monotonic() + self._deadline)).wait(
            self._deadline + 1.0
        )

    def send_then(self, draft: Draft, done: Callable[[Outcome], None]) -> None:
        """`send` without waiting: the publisher's thread calls `done` with the outcome once
        the send's batch is answered (or its deadline passed), so a sender needs no thread
        or greenlet of its own to wait in. `done` must not block: the batch's other senders
        wait for it. Refused at once (`Overloaded`) when the queue is full."""
        self._enqueue(_Pending(draft, self._room_keys(draft.room), time.monotonic() + self._deadline, done))

    def _enqueue(self, pending: _Pending) -> _Pending:
        if len(self._queue) >= self._max_queue:
            raise Overloaded("the publish queue is full")
        self._queue.append(pending)
        if not self._wakeup.is_set():
            self._wakeup.set()
        return pending

    def _run(self) -> None:
        queued = self._queue
        try:
            while not self._stopping.is_set():
                if not queued and not self._retry_due():
                    # Cleared before the queue is looked at again: a send appended after the
                    # clear sets the flag anew, one appended before it is seen in the queue.
                    woken = self._wakeup.wait(self._idle_wait())
                    self._wakeup.clear()
                    if not woken and not self._unreached:
                        self._recheck()
                    continue
                self._linger_if_busy()
                batch = self._take_retries() + [queued.popleft() for _ in range(min(len(queued), MAX_BATCH))]
                self._last_size = len(batch)
                self.batches += 1
                try:
                    self._send_batch(batch)
                except Exception:  # a bug must cost this batch, never the publisher itself
                    log.exception("event=publisher_error batch=%d", len(batch))
                    for p in batch:
                        p.settle(BackendUnavailable("internal publisher error"))
        finally:
            self._fail_queued()
            if self._held is not None:
                self._held.release()

    def retry_now(self) -> None:
        """The cluster's map changed: sends waiting for a shard go to its new master now."""
        self._retry_at = 0.0
        self._wakeup.set()

    def unreached(self) -> list[str]:
        """The shards (host:port, by the current map) of sends waiting for another attempt."""
        if not isinstance(self._client, RedisCluster):
            return []
        return sorted({self._client.get_node_from_key(p.keys.seq).name for p in list(self._unreached)})

    def _retry_due(self) -> bool:
        return bool(self._unreached) and time.monotonic() >= self._retry_at

    def _idle_wait(self) -> float | None:
        if self._unreached:
            return max(0.0, self._retry_at - time.monotonic())
        return RECHECK_SECONDS if self.last_error else None

    def _take_retries(self) -> list[_Pending]:
        """The sends whose server was away, once their backoff has passed."""
        if not self._retry_due():
            return []
        retries, self._unreached = self._unreached, []
        return retries

    def _linger_if_busy(self) -> None:
        """Wait PUBLISH_LINGER for more sends before a round trip when, at the recent send
        rate, at least LINGER_GATHERS more are due in that time. A round trip costs Redis a
        script call whatever it carries (measured at W2 5,000 msg/s: batches of ~9 sends cost
        29 µs of Redis CPU a message, of ~20 sends 21 µs), and a faster node sends smaller
        batches. Slower traffic is sent at once: waiting would add latency for little."""
        now = time.monotonic()
        elapsed = max(now - self._last_batch, 1e-6)
        self._send_rate += RATE_SMOOTHING * (self._last_size / elapsed - self._send_rate)
        self._last_batch = now
        if self._send_rate * self._linger >= LINGER_GATHERS and len(self._queue) < MAX_BATCH:
            self._stopping.wait(self._linger)

    def _recheck(self) -> None:
        """Idle after a failure: PING to learn that Redis is back. Otherwise `last_error`
        (and /healthz) stays failing until the next send, which a load balancer that has
        taken the node out of rotation never brings."""
        try:
            if self._held is not None:
                self._held.execute("PING")
            else:
                self._client.ping()
        except CONNECTION_ERRORS:
            return
        log.info("event=publish_recovered")
        self.last_error = None

    def _send_batch(self, batch: list[_Pending]) -> None:
        """One attempt. Sends whose server (a Cluster shard, or the one Redis) could not be
        reached wait for their next attempt apart, with backoff, until their deadline: the
        publisher goes on with new sends meanwhile, so a shard that is away stalls only its
        own rooms."""
        now = time.monotonic()
        for p in batch:
            if p.deadline <= now:
                p.settle(BackendUnavailable(self.last_error or "publish deadline passed"))
        batch = [p for p in batch if p.deadline > now]
        if not batch:
            return
        try:
            results = self._execute(batch)
        except redis.ResponseError as exc:
            log.error("event=publish_error error=%s", q(describe(exc)))
            for p in batch:
                p.settle(BackendUnavailable(f"redis refused the send: {exc}"))
            return
        unreached = self._settle_reached(batch, results)
        if not unreached:
            if not self._unreached:
                if self.last_error is not None:
                    log.info("event=publish_recovered")
                self.last_error = None
                self._failures = 0
            return
        self._server_ids.forget()
        self._unreached += unreached
        errors = [r for r in results if isinstance(r, CONNECTION_ERRORS)]
        if not errors:  # only moved slots (a graceful failover, a reshard): again at once
            self._retry_at = now
            return
        exc = errors[0]
        self._failures += 1
        if self.last_error is None:
            log.warning("event=publish_failed error=%s", q(describe(exc)))
        self.last_error = f"redis unreachable: {exc}"
        wait = min(self._backoff.compute(self._failures), min(p.deadline for p in self._unreached) - now)
        self._retry_at = now + max(wait, 0.0)

    def _settle_reached(self, batch: list[_Pending], results: list[object]) -> list[_Pending]:
        """Settle the sends that reached Redis; the others (their shard, or the one server,
        is away) are returned to be tried again."""
        unreached: list[_Pending] = []
        for p, result in zip(batch, results, strict=True):
            if isinstance(result, CONNECTION_ERRORS) or is_moved(result):
                unreached.append(p)  # a moved slot: sent again with its new master's server id
            else:
                self._resolve(p, result)
        return unreached

    def _execute(self, batch: list[_Pending]) -> list[object]:
        """Each send's script answer, or the connection error that kept it from its server
        (on a Cluster, only the sends of a shard that is away fail)."""
        if self._held is not None:  # one server: all or nothing
            try:
                server_id = self._server_ids.of(batch[0].keys.seq)
                candidate = self._ids.hex(8)
                if len(batch) == 1:
                    [p] = batch
                    return self._held.run_scripts([self._send.call(p.draft, p.keys, candidate, server_id)])
                # One script call for the whole batch: its own cost in Redis is paid once.
                sends = [(p.draft, p.keys) for p in batch]
                [result] = self._held.run_scripts([self._send.batch(sends, candidate, server_id)])
                return SendScript.answers(len(sends), result)
            except CONNECTION_ERRORS as exc:
                return [exc] * len(batch)
        epochs = self._ids.hex(8 * len(batch))  # a candidate epoch per call
        results: list[object] = [None] * len(batch)
        sent: list[tuple[int, Call]] = []
        for i, p in enumerate(batch):
            try:
                server_id = self._server_ids.of(p.keys.seq)
            except CONNECTION_ERRORS as exc:
                results[i] = exc
                continue
            sent.append((i, self._send.call(p.draft, p.keys, epochs[16 * i : 16 * i + 16], server_id)))
        if sent:
            try:
                replies = run_scripts(self._client, [call for _, call in sent], rerun_moved=False)
            except CONNECTION_ERRORS as exc:
                replies = [exc] * len(sent)
            for (i, _), reply in zip(sent, replies, strict=True):
                results[i] = reply
        return results

    @staticmethod
    def _resolve(p: _Pending, result: object) -> None:
        try:
            p.settle(SendScript.envelope(p.draft, result))
        except (BackendUnavailable, Banned) as exc:
            p.settle(exc)

    def _fail_queued(self) -> None:
        for p in self._unreached:
            p.settle(BackendUnavailable("the node is shutting down"))
        while self._queue:
            self._queue.popleft().settle(BackendUnavailable("the node is shutting down"))
