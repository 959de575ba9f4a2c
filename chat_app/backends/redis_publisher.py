"""The publisher: one greenlet owns the publishing connection and pipelines queued sends.

Serialising sends through one connection is what keeps a CPU-bound node from opening a
connection per concurrent send until redis-py's pool runs dry (the failure that makes
Flask-SocketIO's queue lose messages under load). Every send carries a dedup id, so a batch
retried after a connection error never stores a message twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoScriptError

from ..protocol import BadEnvelope, Envelope, decode_envelope, envelope_head
from .base import BackendUnavailable, Draft
from .redis_keys import RoomKeys

log = logging.getLogger(__name__)

SEND_SCRIPT = (Path(__file__).parent / "lua" / "send.lua").read_text()
SEND_SHA = hashlib.sha1(SEND_SCRIPT.encode()).hexdigest()
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
MAX_BATCH = 256
RECHECK_SECONDS = 1.0


@dataclass(slots=True)
class _Pending:
    draft: Draft
    keys: RoomKeys
    deadline: float
    future: Future[Envelope] = field(default_factory=Future)


class Publisher:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        history_length: int,
        room_ttl_ms: int,
        deadline: float,
        backoff: ExponentialWithJitterBackoff,
        max_queue: int = 10_000,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._history_length = history_length
        self._room_ttl_ms = room_ttl_ms
        self._deadline = deadline
        self._backoff = backoff
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._stopping = threading.Event()
        self.last_ok = 0.0
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout=self._deadline)

    def publish(self, draft: Draft) -> Envelope:
        pending = _Pending(draft, RoomKeys.of(self._prefix, draft.room), time.monotonic() + self._deadline)
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            raise BackendUnavailable("the publish queue is full") from None
        try:
            return pending.future.result(timeout=self._deadline + 1.0)
        except TimeoutError:
            raise BackendUnavailable("publish did not complete within the deadline") from None

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._queue.get(timeout=RECHECK_SECONDS if self.last_error else None)
            except queue.Empty:
                self._recheck()
                continue
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._stopping.set()
                    break
                batch.append(item)
            self._send_batch(batch)
        self._fail_queued()

    def _recheck(self) -> None:
        """Idle after a failure: PING to learn that Redis is back. Otherwise `last_error`
        (and /healthz) stays failing until the next send, which a load balancer that has
        taken the node out of rotation never brings."""
        try:
            self._client.ping()
        except CONNECTION_ERRORS:
            return
        log.info("event=publish_recovered")
        self.last_error = None

    def _send_batch(self, batch: list[_Pending]) -> None:
        failures = 0
        while batch:
            now = time.monotonic()
            for p in batch:
                if p.deadline <= now:
                    p.future.set_exception(BackendUnavailable(self.last_error or "publish deadline passed"))
            batch = [p for p in batch if p.deadline > now]
            if not batch:
                return
            try:
                results = self._execute(batch)
            except CONNECTION_ERRORS as exc:
                failures += 1
                if self.last_error is None:
                    log.warning("event=publish_failed error=%r", exc)
                self.last_error = f"redis unreachable: {exc}"
                wait = min(self._backoff.compute(failures), min(p.deadline for p in batch) - now)
                self._stopping.wait(max(wait, 0.0))
                if self._stopping.is_set():
                    break
                continue
            if self.last_error is not None:
                log.info("event=publish_recovered")
            self.last_error = None
            self.last_ok = time.monotonic()
            batch = self._settle(batch, results)
        for p in batch:
            p.future.set_exception(BackendUnavailable("the node is shutting down"))

    def _settle(self, batch: list[_Pending], results: list[object]) -> list[_Pending]:
        """Resolve each send from its reply; return those to run again after a script load."""
        retry: list[_Pending] = []
        for p, result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):
                retry.append(p)
            elif isinstance(result, Exception):
                log.error("event=publish_error room=%s error=%r", p.draft.room, result)
                p.future.set_exception(BackendUnavailable(f"redis refused the send: {result}"))
            else:
                self._resolve(p, result)
        if retry:
            self._client.script_load(SEND_SCRIPT)
        return retry

    def _execute(self, batch: list[_Pending]) -> list[object]:
        pipe = self._client.pipeline(transaction=False)
        for p in batch:
            d = p.draft
            head = envelope_head(d.id, d.room, d.sender, d.message, d.timestamp, d.instance_id)
            dedup_id = f"k:{d.sender}:{d.key}" if d.key else f"i:{d.id}"
            k = p.keys
            pipe.evalsha(
                SEND_SHA,
                4,
                k.seq,
                k.hist,
                k.epoch,
                k.dedup,
                head,
                dedup_id,
                secrets.token_hex(8),
                self._history_length,
                self._room_ttl_ms,
                k.channel,
            )
        return pipe.execute(raise_on_error=False)

    def _resolve(self, p: _Pending, result: object) -> None:
        seq, epoch, stored, duplicate = result  # type: ignore[misc]
        d = p.draft
        if duplicate:
            try:
                envelope = decode_envelope(stored, max_bytes=len(stored))
            except BadEnvelope as exc:
                p.future.set_exception(BackendUnavailable(f"stored message unreadable: {exc}"))
                return
        else:
            envelope = Envelope(d.id, d.room, d.sender, d.message, d.timestamp, int(seq), epoch.decode(), d.instance_id)
        p.future.set_result(envelope)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.future.set_exception(BackendUnavailable("the node is shutting down"))
