"""The listener: the one greenlet that owns the pub/sub connection.

Other greenlets only change the set of rooms it should hear and wake it through a socket
pair; it reconciles that set with its subscriptions between reads, so no two greenlets
ever touch the Redis socket. It waits on the socket with a timeout rather than in
`listen()`, so it keeps control while idle: a probe published on the node's own channel
must come back, or the connection is deemed deaf and rebuilt. Every reconnect
re-subscribes all wanted rooms; each confirmed subscription makes the service catch its
room up from history, so nothing published meanwhile is missed.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

import redis

from ... import versions
from ...logsafe import q
from ...protocol.wire import BadEnvelope, Envelope, decode_command, decode_wire, max_wire_bytes
from ...settings import Settings
from ..base import BrokerHooks
from .connection import CONNECTION_ERRORS, describe, reconnect_backoff
from .keys import RoomKeys, commands_channel, control_channel, reply_prefix

log = logging.getLogger(__name__)

SUBSCRIBE_BATCH = 500
# Seconds between looks at a connection whose socket cannot be selected: an in-process fake
# Redis (tests), or a redis-py whose private state this was not written for.
POLL = 0.05


def _socket(conn: Any, known: bool) -> socket.socket | None:
    """The connection's socket, where redis-py's private `_sock` is one we know."""
    sock = getattr(conn, "_sock", None) if known else None
    return sock if isinstance(sock, socket.socket) else None


def _buffered(conn: Any, known: bool) -> bool:
    """Replies received but not yet read: in hiredis's buffer, or decrypted by TLS, where
    select() cannot see them. Otherwise (redis-py's own parser, a fake, other versions) the
    public can_read answers, polling only when nothing is buffered."""
    sock = _socket(conn, known)
    reader = getattr(conn._parser, "_reader", None) if sock is not None else None
    if reader is None:
        return bool(conn.can_read(timeout=0))
    return bool(reader.has_data()) or (hasattr(sock, "pending") and sock.pending() > 0)


def as_is(response: Any) -> Any:
    """The pub/sub connections' handler of RESP3 push messages (redis-py 8 speaks RESP3 by
    default, where every room message is a push): the message as it came. redis-py's own
    handler does the same after building a debug line of it, `str(response)`, whether or
    not debug logging is on: ~13,000 instructions per message received, measured with
    callgrind (bench/README.md)."""
    return response


class Deaf(Exception):
    """The connection looks open but our own probe did not come back."""


class Listener:
    def __init__(self, client: redis.Redis, publish: Callable[[str, bytes], None], settings: Settings) -> None:
        self._client = client
        self._publish = publish
        self._prefix = settings.key_prefix
        self._control = control_channel(settings.key_prefix, settings.instance_id).encode()
        self._commands = commands_channel(settings.key_prefix).encode()  # the server API's, for every node
        self._reply_prefix = reply_prefix(settings.key_prefix)
        self._backoff = reconnect_backoff(settings)
        self._idle_probe = settings.listener_idle_probe
        self._probe_timeout = settings.probe_timeout
        self._max_envelope_bytes = max_wire_bytes(settings.max_message_bytes)
        self._known = versions.matches("listener", "redis", "hiredis")  # may read redis-py's private state
        self._lock = threading.Lock()
        self._wanted: dict[bytes, str] = {}  # channel -> room
        self._ready: dict[bytes, threading.Event] = {}  # set while the channel is live
        self._catch_up: set[bytes] = set()
        self._asked: set[bytes] = set()  # SUBSCRIBE sent on the current connection
        self._dirty = True  # wanted, catch-up or connection changed since the last reconcile
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)  # a full pipe means a wake-up is pending already
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self._hooks: BrokerHooks | None = None
        self.connected = False
        self._connected_once = False
        self.subscribed: set[bytes] = set()
        self.reconnects = 0
        self.received = 0  # room messages taken from Redis (the benchmark reads it at stop)
        self.bad_payloads = 0
        self._last_bad_log = 0.0

    def start(self, hooks: BrokerHooks) -> None:
        self._hooks = hooks
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        self._thread.join(timeout=5)

    def want(self, room: str) -> threading.Event:
        """Hear `room`; `on_subscribed(room)` follows once its channel is live (again).
        The returned event is set while it is live."""
        channel = RoomKeys.of(self._prefix, room).channel.encode()
        with self._lock:
            self._wanted[channel] = room
            self._catch_up.add(channel)
            self._dirty = True
            ready = self._ready.setdefault(channel, threading.Event())
        self._wake()
        return ready

    def unwant(self, room: str) -> None:
        channel = RoomKeys.of(self._prefix, room).channel.encode()
        with self._lock:
            self._wanted.pop(channel, None)
            self._ready.pop(channel, None)
            self._dirty = True
        self._wake()

    def all_subscribed(self) -> bool:
        with self._lock:
            return self.connected and self.subscribed >= {self._control, self._commands, *self._wanted}

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is already pending
            self._wake_w.send(b"!")

    def _run(self) -> None:
        failures = 0  # since the last time the connection was up: the backoff starts over
        while not self._stopping.is_set():
            pubsub = self._client.pubsub(push_handler_func=as_is)
            try:
                self._serve(pubsub)
            except (*CONNECTION_ERRORS, Deaf) as exc:
                if self.connected or failures == 0:
                    log.warning("event=listener_down error=%s", q(describe(exc)))
            except Exception:
                log.exception("event=listener_error")
            finally:
                failures = 1 if self.connected else failures + 1
                self._disconnected()
                with contextlib.suppress(Exception):  # a dead socket may fail to close
                    pubsub.close()
            if self._stopping.wait(self._backoff.compute(failures)):
                break
        log.info("event=listener_stopped received=%d", self.received)

    def _disconnected(self) -> None:
        self.connected = False
        with self._lock:
            self._asked = set()
        self._lost(self.subscribed)

    def _lost(self, channels: Collection[bytes]) -> None:
        """These subscriptions went with their connection: not live until confirmed again."""
        with self._lock:
            for channel in list(channels):
                self.subscribed.discard(channel)
                if (ready := self._ready.get(channel)) is not None:
                    ready.clear()
            self._dirty = True

    def _live(self, channel: bytes) -> None:
        """A subscription is confirmed: its room catches up on what it may have missed."""
        with self._lock:
            self.subscribed.add(channel)
            room = self._wanted.get(channel)
            self._catch_up.discard(channel)
            ready = self._ready.get(channel)
        if ready is not None:
            ready.set()
        if room is not None:
            self._hook("on_subscribed", room)

    def _take_catch_up(self) -> tuple[dict[bytes, str], set[bytes]]:
        """The wanted channels, and those wanted again while they stayed live: no new
        confirmation will come for them, so they catch up once this reconcile has run."""
        with self._lock:
            wanted = dict(self._wanted)
            catch_up = self._catch_up & self.subscribed & set(wanted)
            self._catch_up -= catch_up
            for channel in catch_up:
                self._ready[channel].set()
        return wanted, catch_up

    def _select(self, sockets: list[Any], timeout: float) -> list[Any]:
        """Sleep until one of `sockets` is readable, a greenlet wakes us, or `timeout` passes."""
        readable, _, _ = select.select([*sockets, self._wake_r], [], [], timeout)
        if self._wake_r in readable:
            self._drain_wake()
        return readable

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)

    def _serve(self, pubsub: redis.client.PubSub) -> None:
        pubsub.subscribe(self._control, self._commands)
        probe: bytes | None = None
        probe_sent = last_rx = time.monotonic()
        readable = False
        while not self._stopping.is_set():
            self._reconcile(pubsub)
            message = self._next_message(pubsub, readable)
            readable = False
            now = time.monotonic()
            if message is None:
                if probe is None and now - last_rx > self._idle_probe:
                    probe, probe_sent = secrets.token_hex(8).encode(), now
                    self._publish(self._control.decode(), probe)
                elif probe is not None and now - probe_sent > self._probe_timeout:
                    raise Deaf(f"probe not back after {self._probe_timeout}s")
                readable = self._wait(pubsub, self._probe_timeout if probe else self._idle_probe)
                continue
            kind, channel = message["type"], message["channel"]
            if kind == "message":
                last_rx = now
                if channel == self._control:
                    if message["data"] == probe:
                        probe = None
                elif channel == self._commands:
                    self._dispatch_command(message["data"])
                else:
                    self._dispatch(message["data"])
            elif kind == "subscribe":
                self._confirmed(channel)
            elif kind == "unsubscribe":
                with self._lock:
                    self.subscribed.discard(channel)

    def _next_message(self, pubsub: redis.client.PubSub, readable: bool) -> dict[str, Any] | None:
        """The next message Redis has sent, or None without waiting. `get_message(timeout=0)`
        would poll the socket (and peek it) each time its parser has nothing buffered: three
        polls per message when they come one at a time. Here `_wait`'s select says when the
        socket has data, and the parser's buffer says whether more replies came with it.
        `read_response`'s `disconnect_on_error`/`push_request` are redis-py 8's own keywords
        (what get_message passes): on other versions the public get_message reads instead."""
        conn = pubsub.connection
        if conn is None:
            raise redis.ConnectionError("the pub/sub connection is closed")
        while readable or _buffered(conn, self._known):
            readable = False
            if self._known:
                response = conn.read_response(disconnect_on_error=False, push_request=True, timeout=self._probe_timeout)
                if (
                    type(response) is not bytes
                    and response is not None
                    and len(response) == 3
                    and response[0] == b"message"
                    and pubsub.channels.get(response[1]) is None
                ):
                    # A room message, what handle_message returns for it (no handler is ever
                    # registered here) without its per-message work: the type decoded, a
                    # dict, redis-py's observability hook (no collector is configured).
                    return {"type": "message", "channel": response[1], "data": response[2]}
                message = pubsub.handle_message(response)
            else:
                message = pubsub.get_message(timeout=0)
            if message is not None:
                return message
        return None

    def _wait(self, pubsub: redis.client.PubSub, timeout: float) -> bool:
        """Sleep until Redis sends something (True), a greenlet wakes us, or `timeout` passes."""
        conn = pubsub.connection
        if conn is None:
            raise redis.ConnectionError("the pub/sub connection is closed")
        sock = _socket(conn, self._known)
        if sock is not None:
            return sock in self._select([sock], timeout)
        ready = bool(conn.can_read(timeout=min(timeout, POLL)))
        self._drain_wake()
        return ready

    def _confirmed(self, channel: bytes) -> None:
        self._live(channel)
        if channel == self._control:
            with self._lock:
                self.connected = True
                self._dirty = True
            if self._connected_once:
                self.reconnects += 1
                log.info("event=listener_up reconnects=%d rooms=%d", self.reconnects, len(self._wanted))
                self._hook("on_reconnected")
            self._connected_once = True

    def _reconcile(self, pubsub: redis.client.PubSub) -> None:
        """Subscribe what is wanted and not yet asked for, and the reverse, in batches.
        Only after a change: this runs before every read, and the sets span every room."""
        with self._lock:
            if not (self.connected and self._dirty):
                return
            self._dirty = False
        wanted, catch_up = self._take_catch_up()
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

    def _bad(self, exc: BadEnvelope, channel: str) -> None:
        """Counted, logged at most once per 10 s, dropped."""
        self.bad_payloads += 1
        now = time.monotonic()
        if now - self._last_bad_log > 10:
            self._last_bad_log = now
            log.warning("event=bad_payload channel=%s dropped=%d error=%s", q(channel), self.bad_payloads, q(exc))

    def _dispatch(self, data: bytes) -> None:
        try:
            decoded = decode_wire(data, self._max_envelope_bytes)
        except BadEnvelope as exc:
            self._bad(exc, "room")
            return
        self.received += 1
        if isinstance(decoded, Envelope):
            self._hook("on_envelope", decoded)
        else:
            self._hook("on_presence", decoded)

    def _dispatch_command(self, data: bytes) -> None:
        try:
            command = decode_command(data)
            if not command.reply_to.startswith(self._reply_prefix):
                raise BadEnvelope("a reply list outside this deployment's control namespace")
        except BadEnvelope as exc:
            self._bad(exc, "control")
            return
        self._hook("on_control", command)

    def _hook(self, name: str, *args: object) -> None:
        """A failing handler is logged; it must never take the listener down."""
        assert self._hooks is not None
        try:
            getattr(self._hooks, name)(*args)
        except Exception:
            log.exception("event=hook_failed hook=%s", name)
