"""RedisBroker: the Broker over Redis (publisher, listener, history, control, typing)."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence

from redis.cluster import RedisCluster

from ...logsafe import q
from ...protocol.wire import (
    BadEnvelope,
    Command,
    CommandReply,
    DeletedEvent,
    Envelope,
    TypingEvent,
    decode_envelope,
    max_wire_bytes,
)
from ...settings import Settings
from ..base import (
    RECENT_HISTORY,
    ArchiveReader,
    BackendUnavailable,
    Banned,
    BrokerHooks,
    CommandResult,
    Draft,
    History,
    Position,
)
from ..stats import BrokerStats, ClusterStats, ListenerStats
from .clients import RedisClients
from .cluster_listener import ShardedListener
from .connection import CONNECTION_ERRORS, describe, unavailable_when_unreachable
from .control import ControlClient, answer, to_channel
from .keys import RoomKeys
from .listener import Listener
from .publisher import Publisher
from .scripts import LuaScript, ScriptBatcher

log = logging.getLogger(__name__)


class RedisBroker:
    def __init__(self, clients: RedisClients, settings: Settings, archive: ArchiveReader | None = None) -> None:
        self._commands = clients.commands
        self._archive = archive
        self._prefix = settings.key_prefix
        self._deadline = settings.send_deadline
        self._instance_id = settings.instance_id
        self._envelope_limit = max_wire_bytes(settings.max_message_bytes)
        self._history_length = settings.history_length
        self._history = LuaScript.load(
            "history.lua", sharded=isinstance(clients.commands, RedisCluster), reads_only=True
        )
        # Joins, leaves and history reads of many members share round trips (RedisPresence too).
        self.batcher = ScriptBatcher(clients.commands, "redis-batcher")
        self.publisher = Publisher(clients.publisher, settings)
        self.control = ControlClient(clients.commands, settings.key_prefix, settings.redis_socket_timeout)
        self.listener: Listener
        if isinstance(clients.subscriber, RedisCluster):
            self.listener = ShardedListener(clients.subscriber, clients.shard_kwargs or {}, settings, clients.slot_maps)
        else:
            self.listener = Listener(clients.subscriber, self._publish_probe, settings)
        self.slot_maps = clients.slot_maps
        if self.slot_maps is not None:
            self.slot_maps.on_change(self.publisher.retry_now)
        self._hooks: BrokerHooks | None = None

    def start(self, hooks: BrokerHooks) -> None:
        self._hooks = hooks
        if self.slot_maps is not None:
            self.slot_maps.start()
        self.publisher.start()
        # The listener hands each command over and goes back to reading at once.
        self.listener.start(dataclasses.replace(hooks, on_control=self._command_received))

    def command(self, command: Command, deadline: float) -> CommandResult:
        return self.control.send(command, deadline)

    def _command_received(self, command: Command) -> int:
        """Off the listener: acting may join rooms, and a join waits for the listener."""
        threading.Thread(target=self._act, args=(command,), name="command", daemon=True).start()
        return 0

    def _act(self, command: Command) -> None:
        assert self._hooks is not None
        try:
            count = self._hooks.on_control(command)
        except Exception:  # answer anyway: the caller then learns this node is alive
            log.exception("event=command_failed action=%s", command.action)
            count = 0
        try:
            answer(self._commands, command.reply_to, CommandReply(command.id, self._instance_id, count).encode())
        except CONNECTION_ERRORS as exc:
            log.warning("event=command_reply_failed action=%s error=%s", command.action, q(describe(exc)))

    def stop(self) -> None:
        if self.slot_maps is not None:
            self.slot_maps.stop()
        self.listener.stop()
        self.publisher.stop()
        self.batcher.stop()

    def send(self, draft: Draft) -> Envelope:
        return self.publisher.send(draft)

    def send_then(self, draft: Draft, done: Callable[[Envelope | BackendUnavailable | Banned], None]) -> None:
        self.publisher.send_then(draft, done)

    def stats(self) -> BrokerStats:
        listener = self.listener
        cluster = None
        if self.slot_maps is not None and isinstance(listener, ShardedListener):
            maps = self.slot_maps
            cluster = ClusterStats(maps.refreshes, maps.failovers, len(maps.down()), listener.subscriptions())
        return BrokerStats(
            publish_batches=self.publisher.batches,
            batched_calls=self.batcher.calls,
            batched_round_trips=self.batcher.round_trips,
            listener=ListenerStats(listener.reconnects, listener.received, listener.bad_payloads, listener.connected),
            cluster=cluster,
        )

    def subscribe(self, room: str) -> threading.Event:
        return self.listener.want(room)

    def catch_up(self, room: str) -> None:
        """Wanted again while live, the room is caught up by the listener, in its turn."""
        self.listener.want(room)

    def unsubscribe(self, room: str) -> None:
        self.listener.unwant(room)

    def forget(self, room: str, seqs: Sequence[int]) -> None:
        with unavailable_when_unreachable():
            self._commands.xdel(RoomKeys.of(self._prefix, room).hist, *(f"{seq}-0" for seq in seqs))

    def signal(self, event: TypingEvent | DeletedEvent) -> None:
        try:
            to_channel(self._commands, RoomKeys.of(self._prefix, event.room).channel, event.encode())
        except CONNECTION_ERRORS as exc:
            log.debug("event=signal_dropped room=%s error=%s", q(event.room), q(describe(exc)))

    def _publish_probe(self, channel: str, data: bytes) -> None:
        """Off the listener's greenlet: a stalled Redis must not stall the listener, whose
        probe timeout then decides."""

        def send() -> None:
            try:
                self._commands.publish(channel, data)
            except CONNECTION_ERRORS as exc:
                log.debug("event=probe_publish_failed error=%s", q(describe(exc)))

        threading.Thread(target=send, name="probe", daemon=True).start()

    def history(self, room: str, after: int | None, upto: int | None = None, limit: int = RECENT_HISTORY) -> History:
        keys = RoomKeys.of(self._prefix, room)
        args = ["" if after is None else after, "" if upto is None else upto, limit, self._history_length]
        with unavailable_when_unreachable():
            reply = self.batcher.run((self._history, [keys.epoch, keys.seq, keys.hist], args), self._deadline)
        if isinstance(reply, Exception):
            raise BackendUnavailable(f"redis refused a history read: {reply}")
        epoch, seq, *stored = reply  # type: ignore[misc]
        envelopes: list[Envelope] = []
        for raw in stored:
            try:
                envelopes.append(decode_envelope(raw, self._envelope_limit))
            except BadEnvelope:
                self.listener.bad_payloads += 1
        position = Position(epoch.decode() if epoch else "", int(seq or 0))
        last = position.seq if upto is None else min(upto, position.seq)
        if self._archive is not None and position.seq:
            envelopes = self._archive.before(room, position, envelopes, last, after, limit) + envelopes
        if after is None:
            complete = True
        else:
            complete = len(envelopes) == max(0, last - after) and all(
                e.seq == after + 1 + i for i, e in enumerate(envelopes)
            )
        return History(position, envelopes, complete)

    def healthy(self) -> dict[str, bool]:
        """From state, without a round trip: the listener's probe already proves every few
        seconds that a publish comes back through the subscription."""
        return {"publisher": self.publisher.last_error is None, "listener": self.listener.all_subscribed()}

    def unreached(self) -> list[str]:
        """Cluster shards (host:port) that a hosted room cannot be heard from or that failed
        a call and have not answered since."""
        if self.slot_maps is None or not isinstance(self.listener, ShardedListener):
            return []
        return sorted({*self.listener.unheard(), *self.publisher.unreached(), *self.slot_maps.down()})
