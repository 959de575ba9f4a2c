"""The publisher: one greenlet owns the publishing connection and pipelines queued sends.

Serialising sends through one connection is what keeps a CPU-bound node from opening a
connection per concurrent send until redis-py's pool runs dry (the failure that makes
Flask-SocketIO's queue lose messages under load). Every send carries a dedup id, so a batch
retried after a connection error never stores a message twice.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster

from ..protocol import BadEnvelope, Envelope, decode_envelope, envelope_head
from ..settings import Settings
from .base import BackendUnavailable, Draft
from .redis_connection import CONNECTION_ERRORS, reconnect_backoff
from .redis_keys import RoomKeys
from .redis_scripts import AnyRedis, Call, LuaScript, run_scripts

log = logging.getLogger(__name__)

MAX_BATCH = 256
RECHECK_SECONDS = 1.0


@dataclass(slots=True)
class _Pending:
    draft: Draft
    keys: RoomKeys
    deadline: float
    future: Future[Envelope] = field(default_factory=Future)


class Publisher:
    def __init__(self, client: AnyRedis, settings: Settings, max_queue: int = 10_000) -> None:
        self._client = client
        self._script = LuaScript.load("send.lua", sharded=isinstance(client, RedisCluster))
        self._prefix = settings.key_prefix
        self._history_length = settings.history_length
        self._room_ttl_ms = settings.redis_room_ttl_ms
        self._deadline = settings.send_deadline
        self._backoff = reconnect_backoff(settings)
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._stopping = threading.Event()
        self.last_ok = 0.0
        self.last_error: str | None = None
        self._server_ids: dict[str, str] = {}  # per server; read again after a connection failure

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
            try:
                self._send_batch(batch)
            except Exception:  # a bug must cost this batch, never the publisher itself
                log.exception("event=publisher_error batch=%d", len(batch))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(BackendUnavailable("internal publisher error"))
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
            except redis.ResponseError as exc:
                log.error("event=publish_error error=%r", exc)
                for p in batch:
                    p.future.set_exception(BackendUnavailable(f"redis refused the send: {exc}"))
                return
            except CONNECTION_ERRORS as exc:
                failures += 1
                self._server_ids.clear()
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
            for p, result in zip(batch, results, strict=True):
                self._resolve(p, result)
            return
        for p in batch:
            p.future.set_exception(BackendUnavailable("the node is shutting down"))

    def _execute(self, batch: list[_Pending]) -> list[object]:
        calls: list[Call] = []
        for p in batch:
            d, k = p.draft, p.keys
            head = envelope_head(d.id, d.room, d.sender, d.message, d.timestamp, d.instance_id)
            dedup_id = f"k:{d.sender}:{d.key}" if d.key else f"i:{d.id}"
            args = [
                head,
                dedup_id,
                secrets.token_hex(8),
                self._history_length,
                self._room_ttl_ms,
                k.channel,
                self._server_id(k.seq),
            ]
            calls.append((self._script, [k.seq, k.hist, k.epoch, k.dedup, k.srv], args))
        return run_scripts(self._client, calls)

    def _server_id(self, key: str) -> str:
        """The replication id of the server holding `key`: it changes when a replica is
        promoted, which the send script turns into a new epoch."""
        if isinstance(self._client, RedisCluster):
            node = self._client.get_node_from_key(key)
            name, target = node.name, {"target_nodes": node}
        else:
            name, target = "", {}
        if name not in self._server_ids:
            self._server_ids[name] = self._read_server_id(**target)
        return self._server_ids[name]

    def _read_server_id(self, **target: object) -> str:
        try:
            return str(self._client.info("replication", **target).get("master_replid", ""))
        except redis.ResponseError as exc:  # INFO disabled (some managed Redis): no failover guard
            log.warning("event=no_server_id error=%r", exc)
            return ""

    def _resolve(self, p: _Pending, result: object) -> None:
        if isinstance(result, Exception):
            log.error("event=publish_error room=%s error=%r", p.draft.room, result)
            p.future.set_exception(BackendUnavailable(f"redis refused the send: {result}"))
            return
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
