"""The server API's command policy, in one place for the two that send commands: a node
(ChatService, for its HTTP API and for direct messages) and ChatEmitter (any process). A
change to what a command means is made here once.

- leave: a ban is stored before the leave goes out, so no node lets the user straight
  back; the connections are then told `room_left` {reason: "banned"}, else "removed";
- a message stored in a direct conversation reaches both users: it is noted in both users'
  lists, then every connection of either, on every node, joins the conversation;
- a sender's ack of a stored message, and a joined connection's `room_joined` event.

Each side brings a CommandPort over its own store and maps that store's errors to its own
(the node: `unavailable`; ChatEmitter: EmitterUnavailable)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from .backends.base import BackendUnavailable, Bans, Broker, CommandResult, DirectLists, within
from .logsafe import LogThrottle, q
from .protocol import ChatError, Command, CommandAction, Envelope, direct_members

log = logging.getLogger(__name__)
throttled = LogThrottle(log)  # a flood of direct messages may cause these at will

ROOM_JOINED = ("room", "seq", "epoch", "history", "members")


class CommandPort(Protocol):
    """What a command needs of the store. `ban` and `send` raise ChatError (the caller's
    own kind) when the store does not take them; `record_direct` BackendUnavailable."""

    def ban(self, room: str, user: str, seconds: int) -> None: ...
    def send(self, command: Command, deadline: float) -> CommandResult: ...
    def record_direct(self, room: str, users: tuple[str, str], at: int) -> None: ...


class _Stores(Bans, DirectLists, Protocol):
    """The two presence ports a command uses."""


class NodePort:
    """A node's CommandPort: its backends, each error as the `unavailable` a client sees."""

    def __init__(
        self,
        broker: Broker,
        stores: _Stores,
        deadline: float,
        keep: int,
        unavailable: Callable[[str, BaseException], ChatError],
    ) -> None:
        """`keep`: MAX_DIRECTS_PER_USER."""
        self._broker = broker
        self._stores = stores
        self._deadline = deadline
        self._keep = keep
        self._unavailable = unavailable

    def ban(self, room: str, user: str, seconds: int) -> None:
        try:
            within(self._deadline, lambda: self._stores.ban(room, user, seconds), "ban")
        except BackendUnavailable as exc:
            raise self._unavailable("ban not stored", exc) from None

    def send(self, command: Command, deadline: float) -> CommandResult:
        try:
            return self._broker.command(command, deadline)
        except BackendUnavailable as exc:
            raise self._unavailable("command not sent", exc) from None

    def record_direct(self, room: str, users: tuple[str, str], at: int) -> None:
        self._stores.record_direct(room, users, at, self._keep)


def run(
    port: CommandPort,
    action: CommandAction,
    user: str,
    room: str | None = None,
    reason: str | None = None,
    ban_seconds: int | None = None,
    *,
    deadline: float,
    least: float = 0.0,
) -> CommandResult:
    """Act on every connection of `user` on every node, all within `deadline` seconds (a
    leave's ban included; `least`: what the command is given however long the ban took)."""
    if action is not CommandAction.LEAVE:
        return port.send(Command("", action, user, room, reason), deadline)
    assert room is not None
    started = time.monotonic()
    if ban_seconds is not None:
        port.ban(room, user, ban_seconds)  # stored first: no node lets the user straight back
    reason = "banned" if ban_seconds is not None else "removed"
    left = max(deadline - (time.monotonic() - started), least)
    return port.send(Command("", action, user, room, reason), left)


def reach_direct(port: CommandPort, envelope: Envelope, deadline: float) -> None:
    """A message stored in a direct conversation, from a member or the server API, reaches
    both users whether or not they opened it: noted in both users' lists, then every
    connection of both, on every node, joins (members already in it are skipped). The list
    goes first, so a client that reads it on `room_joined` finds the conversation there. The
    message is stored already: a failure is logged, not raised (it reaches them when they
    next open the conversation). No-op for any other room."""
    room = envelope.room
    users = direct_members(room)
    if users is None:
        return
    try:
        port.record_direct(room, users, envelope.timestamp)
    except BackendUnavailable as exc:
        log.warning("event=direct_list_failed room=%s error=%s", q(room), q(exc))
    except Exception:
        log.exception("event=direct_list_error room=%s", q(room))
    for user in users:
        try:
            run(port, CommandAction.JOIN, user, room, deadline=deadline)
        except ChatError as exc:
            throttled.log(
                logging.WARNING,
                "direct_join_failed",
                "event=direct_join_failed room=%s user=%s code=%s",
                q(room),
                q(user),
                exc.code,
            )


def ack(envelope: Envelope) -> dict[str, Any]:
    """What a sender is told of its stored message."""
    return {"id": envelope.id, "seq": envelope.seq, "epoch": envelope.epoch, "timestamp": envelope.timestamp}


def answer(result: CommandResult) -> dict[str, Any]:
    """The server API's answer to a command."""
    return {"ok": True, "connections": result.connections, "nodes": result.nodes}


def room_joined(join_ack: dict[str, Any]) -> dict[str, Any]:
    """A connection the server API joined is told this instead of a join ack."""
    return {k: join_ack[k] for k in ROOM_JOINED}
