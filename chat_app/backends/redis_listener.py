"""The listener: the one greenlet that owns the pub/sub connection.

Other greenlets only change the set of rooms it should hear; it reconciles that set with
its subscriptions between reads, so no two greenlets ever touch the socket. It reads with
`get_message(timeout=...)` rather than `listen()` so it keeps control while idle: a probe
published on the node's own channel must come back, or the connection is deemed deaf and
rebuilt. Every reconnect re-subscribes all wanted rooms; each confirmed subscription makes
the service catch its room up from history, so nothing published meanwhile is missed.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import ExponentialWithJitterBackoff

from ..protocol import BadEnvelope, decode_envelope
from .base import BrokerHooks
from .redis_keys import RoomKeys, control_channel

log = logging.getLogger(__name__)

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
SUBSCRIBE_BATCH = 500
POLL_SECONDS = 0.05


class Deaf(Exception):
    """The connection looks open but our own probe did not come back."""


class Listener:
    def __init__(
        self,
        client: redis.Redis,
        publish: Callable[[str, bytes], object],
        prefix: str,
        instance_id: str,
        backoff: ExponentialWithJitterBackoff,
        idle_probe: float,
        probe_timeout: float,
        max_envelope_bytes: int,
    ) -> None:
        self._client = client
        self._publish = publish
        self._prefix = prefix
        self._control = control_channel(prefix, instance_id).encode()
        self._backoff = backoff
        self._idle_probe = idle_probe
        self._probe_timeout = probe_timeout
        self._max_envelope_bytes = max_envelope_bytes
        self._wanted: dict[bytes, str] = {}
        self._catch_up: set[bytes] = set()
        self._asked: set[bytes] = set()
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self._hooks: BrokerHooks | None = None
        self.connected = False
        self.subscribed: set[bytes] = set()
        self.reconnects = 0
        self.bad_payloads = 0
        self.received = 0  # room messages taken from Redis (the benchmark reads it at stop)
        self._last_bad_log = 0.0

    def start(self, hooks: BrokerHooks) -> None:
        self._hooks = hooks
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def want(self, room: str) -> None:
        """Hear `room`; `on_subscribed(room)` follows once its channel is live (again)."""
        channel = RoomKeys.of(self._prefix, room).channel.encode()
        with self._lock:
            self._wanted[channel] = room
            self._catch_up.add(channel)
        self._changed.set()

    def unwant(self, room: str) -> None:
        with self._lock:
            self._wanted.pop(RoomKeys.of(self._prefix, room).channel.encode(), None)
        self._changed.set()

    def all_subscribed(self) -> bool:
        with self._lock:
            return self.connected and self._control in self.subscribed and self.subscribed >= set(self._wanted)

    def _run(self) -> None:
        failures = 0
        down_since: float | None = None
        while not self._stopping.is_set():
            pubsub = self._client.pubsub()
            try:
                self._serve(pubsub, reconnect=down_since is not None or failures > 0)
            except (*CONNECTION_ERRORS, Deaf) as exc:
                if self.connected or down_since is None:
                    log.warning("event=listener_down error=%r", exc)
                    down_since = time.monotonic()
                failures += 1
            except Exception:
                log.exception("event=listener_error")
                failures += 1
            finally:
                self.connected = False
                self.subscribed = set()
                self._asked = set()
                with contextlib.suppress(Exception):  # a dead socket may fail to close
                    pubsub.close()
            if self._stopping.wait(self._backoff.compute(failures)):
                break
        log.info("event=listener_stopped received=%d", self.received)

    def _serve(self, pubsub: redis.client.PubSub, reconnect: bool) -> None:
        pubsub.subscribe(self._control)
        probe: bytes | None = None
        probe_sent = 0.0
        last_rx = time.monotonic()
        while not self._stopping.is_set():
            if self._changed.is_set():
                self._changed.clear()
                self._reconcile(pubsub)
            message = pubsub.get_message(timeout=POLL_SECONDS)
            now = time.monotonic()
            if message is None:
                if probe is None and now - last_rx > self._idle_probe:
                    probe, probe_sent = secrets.token_hex(8).encode(), now
                    self._publish(self._control.decode(), probe)
                elif probe is not None and now - probe_sent > self._probe_timeout:
                    raise Deaf(f"probe not back after {self._probe_timeout}s")
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "message":
                last_rx = now
                if channel == self._control:
                    if message["data"] == probe:
                        probe = None
                    continue
                self.received += 1
                self._dispatch(message["data"])
            elif kind == "subscribe":
                self.subscribed.add(channel)
                if channel == self._control:
                    self._on_connected(reconnect)
                    continue
                with self._lock:
                    room = self._wanted.get(channel)
                    self._catch_up.discard(channel)
                if room is not None:
                    self._hook("on_subscribed", room)
            elif kind == "unsubscribe":
                self.subscribed.discard(channel)

    def _on_connected(self, reconnect: bool) -> None:
        self.connected = True
        if reconnect:
            self.reconnects += 1
            log.info("event=listener_up reconnects=%d rooms=%d", self.reconnects, len(self._wanted))
            self._hook("on_reconnected")
        self._changed.set()

    def _reconcile(self, pubsub: redis.client.PubSub) -> None:
        """Subscribe what is wanted and not yet asked for, and the reverse, in batches."""
        with self._lock:
            wanted = dict(self._wanted)
            catch_up = self._catch_up & self.subscribed & set(wanted)
            self._catch_up -= catch_up
        join = [c for c in wanted if c not in self._asked]
        drop = [c for c in self._asked if c not in wanted]
        for i in range(0, len(join), SUBSCRIBE_BATCH):
            pubsub.subscribe(*join[i : i + SUBSCRIBE_BATCH])
        self._asked.update(join)
        for i in range(0, len(drop), SUBSCRIBE_BATCH):
            pubsub.unsubscribe(*drop[i : i + SUBSCRIBE_BATCH])
        self._asked.difference_update(drop)
        for channel in catch_up:
            self._hook("on_subscribed", wanted[channel])

    def _dispatch(self, data: bytes) -> None:
        try:
            envelope = decode_envelope(data, self._max_envelope_bytes)
        except BadEnvelope as exc:
            self.bad_payloads += 1
            now = time.monotonic()
            if now - self._last_bad_log > 10:
                self._last_bad_log = now
                log.warning("event=bad_payload dropped=%d error=%s", self.bad_payloads, exc)
            return
        self._hook("on_envelope", envelope)

    def _hook(self, name: str, *args: object) -> None:
        """A failing handler is logged; it must never take the listener down."""
        assert self._hooks is not None
        try:
            getattr(self._hooks, name)(*args)
        except Exception:
            log.exception("event=hook_failed hook=%s", name)
