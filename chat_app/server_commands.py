"""ServerCommands: the server API on this node. Posts from outside the rooms, commands on
users sent to every node (the policy is commands.py, shared with ChatEmitter), and this
node's part in each command: acting on its own connections of the user as if each had
asked itself. Apart from ChatService, which it reaches through the narrow `Node` below."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import commands
from .backends.base import Draft
from .local_sockets import Emitter
from .logsafe import LogThrottle, q
from .membership import Connection
from .protocol import ChatError, Command, CommandAction, Envelope, JoinRequest, PublishRequest, direct_members

log = logging.getLogger(__name__)
throttled = LogThrottle(log)


@dataclass
class CommandCounters:
    """Written under ServerCommands' lock; ChatService's Counters extends it (/metrics)."""

    commands: int = 0  # server API commands on users this node acted on


class Node(Protocol):
    """What a command needs of ChatService."""

    def connection_of(self, sid: str) -> Connection | None: ...
    def sids_of(self, user: str) -> list[str]: ...
    def join(
        self,
        sid: str,
        req: JoinRequest,
        sender: Any = None,
        after_ack: Callable[[Callable[[], None]], None] | None = None,
        limited: bool = True,
    ) -> dict[str, Any]: ...
    def remove(self, conn: Connection, room: str) -> None: ...
    def store(self, draft: Draft) -> Envelope: ...
    def draft(self, room: str, sender: str, message: str, instance_id: str, key: str | None) -> Draft: ...


class ServerCommands:
    def __init__(
        self,
        node: Node,
        port: commands.CommandPort,
        emitter: Emitter,
        instance_id: str,
        deadline: float,
        counters: CommandCounters,
    ) -> None:
        self._node = node
        self._port = port
        self._emitter = emitter
        self._instance_id = instance_id
        self._deadline = deadline
        self._lock = threading.Lock()
        self.counters = counters

    def publish(self, req: PublishRequest) -> dict[str, Any]:
        """A post from a backend (HTTP): stored and delivered exactly as a member's send,
        under the sender it names; `instance_id` says it came through this node's API."""
        draft = self._node.draft(req.room, req.sender, req.message, f"api:{self._instance_id}", req.key)
        envelope = self._node.store(draft)
        log.debug("event=api_publish room=%s seq=%d id=%s", q(req.room), envelope.seq, q(envelope.id))
        self.reach_direct(envelope)
        return {"ok": True, **commands.ack(envelope)}

    def reach_direct(self, envelope: Envelope) -> None:
        """A message stored in a direct conversation reaches both users (commands.py), on a
        thread of its own: off the sender's ack, `room_joined`'s history carries the message."""
        if direct_members(envelope.room) is not None:
            args = (self._port, envelope, self._deadline)
            threading.Thread(target=commands.reach_direct, args=args, name="direct", daemon=True).start()

    def command(
        self,
        action: CommandAction,
        user: str,
        room: str | None = None,
        reason: str | None = None,
        ban_seconds: int | None = None,
    ) -> dict[str, Any]:
        """Act on every connection of `user` on every node; within SEND_DEADLINE in all
        (the policy, a leave's ban first: commands.run)."""
        result = commands.run(self._port, action, user, room, reason, ban_seconds, deadline=self._deadline)
        return commands.answer(result)

    def on_control(self, command: Command) -> int:
        """A command on a user, from this node's API, another node's or a ChatEmitter's: act
        on this node's connections of that user, as if each had asked itself; the count is
        this node's answer."""
        acted = 0
        for sid in self._node.sids_of(command.user):
            try:
                acted += self._act(command, sid)
            except ChatError as exc:
                throttled.log(
                    logging.INFO,
                    "command_refused",
                    "event=command_refused action=%s sid=%s code=%s",
                    command.action,
                    sid,
                    exc.code,
                )
        with self._lock:
            self.counters.commands += 1
        log.info("event=command_done action=%s room=%s connections=%d", command.action, q(command.room), acted)
        return acted

    def _act(self, command: Command, sid: str) -> bool:
        conn = self._node.connection_of(sid)
        if conn is None:
            return False  # disconnected meanwhile
        if command.action is CommandAction.DISCONNECT:
            self._emitter.emit_to(sid, "disconnected_by_server", {"reason": command.reason})
            self._emitter.disconnect(sid)
            return True
        room = command.room
        assert room is not None
        if command.action is CommandAction.LEAVE:
            if room not in conn.rooms:
                return False
            self._node.remove(conn, room)
            self._emitter.emit_to(sid, "room_left", {"room": room, "reason": command.reason})
            return True
        if room in conn.rooms:
            conn.touch(room)  # a message in the conversation: it is active here
            return False  # a member already (or joining): nothing to tell it
        # The one join path, with its hand-over run after `room_joined` instead of the ack:
        # the event comes first, then what the room sent past its bound, then live messages.
        admit: list[Callable[[], None]] = []
        ack = self._node.join(sid, JoinRequest(room=room), after_ack=admit.append, limited=False)
        self._emitter.emit_to(sid, "room_joined", commands.room_joined(ack))
        for call in admit:
            call()
        return True
