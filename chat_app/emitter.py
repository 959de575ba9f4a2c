"""ChatEmitter: post into rooms and act on users from any process (a Celery worker, a Flask
view, a cron script), without a node, Flask or gevent: plain blocking redis-py.

    from chat_app.emitter import ChatEmitter

    chat = ChatEmitter.from_env()           # REDIS_URL, KEY_PREFIX, ... as the nodes read them
    chat.publish("orders", "Your order shipped", sender="shop")
    chat.disconnect_user("mallory", reason="banned")

A post runs the nodes' own send script (backends/redis/send.py): it gets the room's next
seq, lands in history and reaches every member on every node, deduplicated by `key` like a
member's send. Commands on users go over the control path (backends/redis/control.py) and
return how many connections the nodes acted on within the deadline. Errors are
ChatEmitterError with the socket protocol's codes, never a bare redis error.

Thread-safe: redis-py's pool gives each thread its own connection."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import commands
from .backends.base import BackendUnavailable, Banned, CommandResult, Draft
from .backends.redis.standalone import StandaloneRedis
from .protocol import (
    ChatError,
    Command,
    CommandAction,
    ErrorCode,
    PublishRequest,
    UserDisconnectRequest,
    UserLeaveRequest,
    UserRoomRequest,
    parse,
)
from .settings import Settings, SettingsError

__all__ = ["ChatEmitter", "ChatEmitterError", "EmitterInputError", "EmitterUnavailable"]


class ChatEmitterError(ChatError):
    """`code` is one of the socket protocol's error codes (protocol.ErrorCode)."""


class EmitterInputError(ChatEmitterError):
    """Bad input (room or user name, message size, ...); nothing was sent."""


class EmitterUnavailable(ChatEmitterError):
    """Redis did not answer within the deadline. A post may still have been stored:
    publishing again with the same `key` delivers it once."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.UNAVAILABLE, message)


class _EmitterPort:
    """ChatEmitter's CommandPort (commands.py): the standalone Redis backend, its errors as
    EmitterUnavailable."""

    def __init__(self, store: StandaloneRedis) -> None:
        self._store = store

    def ban(self, room: str, user: str, seconds: int) -> None:
        with _unavailable("ban not stored"):
            self._store.ban(room, user, seconds)

    def send(self, command: Command, deadline: float) -> CommandResult:
        with _unavailable("command not sent"):
            return self._store.command(command, deadline)

    def record_direct(self, room: str, users: tuple[str, str], at: int) -> None:
        self._store.record_direct(room, users, at)


class ChatEmitter:
    def __init__(
        self,
        redis_url: str | None = None,
        *,
        settings: Settings | None = None,
        source: str | None = None,
        **overrides: Any,
    ) -> None:
        """`redis_url` (or `settings`, or `overrides` by setting name: key_prefix=...,
        send_deadline=...). `source` names this emitter in the envelopes' `instance_id`
        (default `emitter:<host>`)."""
        if settings is None:
            settings = Settings.from_env({}, **({"redis_url": redis_url} if redis_url else {}), **overrides)
        if not settings.uses_redis:
            raise SettingsError(
                "ChatEmitter needs Redis: set REDIS_URL (or REDIS_SENTINELS, or REDIS_CLUSTER_NODES) as on the "
                "nodes. A single node without Redis takes posts over HTTP: POST /api/rooms/<room>/messages"
            )
        self.settings = settings
        self.instance_id = (source or f"emitter:{socket.gethostname()}")[:64]
        self._deadline = settings.send_deadline
        self._store = StandaloneRedis(settings)
        self._port = _EmitterPort(self._store)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ChatEmitter:
        """The nodes' settings, from the environment (default os.environ)."""
        return cls(settings=Settings.from_env(env, **overrides))

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> ChatEmitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- posts -----------------------------------------------------------------------

    def publish(self, room: str, message: str, sender: str = "system", key: str | None = None) -> dict[str, Any]:
        """Store and deliver `message` in `room` as `sender`; `{id, seq, epoch, timestamp}`.
        A retry with the same `key` (and sender) stores once and answers the same id and seq."""
        req = _valid(
            PublishRequest,
            {"room": room, "message": message, "sender": sender, "key": key},
            max_message_bytes=self.settings.max_message_bytes,
        )
        draft = Draft.new(req.room, req.sender, req.message, self.instance_id, req.key)
        try:
            with _unavailable("message not sent"):
                envelope = self._store.send(draft)
        except Banned as exc:
            refused = f"{req.sender!r} may not send to {req.room!r}: {exc}"
            raise EmitterInputError(ErrorCode.BANNED, refused) from None
        # As a node does after a member's message to a direct conversation (waiting here for
        # the nodes' answers); a failure is logged: the message is stored already.
        commands.reach_direct(self._port, envelope, self._deadline)
        return commands.ack(envelope)

    # -- commands on users, on every node ---------------------------------------------

    def join_user(self, user: str, room: str) -> int:
        """Every connection of `user` joins `room` as if it had sent `join_room`; it is told
        with a `room_joined` event. Returns how many connections joined."""
        return self.command(CommandAction.JOIN, user, room).connections

    def leave_user(self, user: str, room: str, ban_seconds: int | None = None) -> int:
        """Every connection of `user` leaves `room` (`room_left`); with `ban_seconds`, their
        `join_room` to it is refused with `forbidden_room` until then."""
        return self.command(CommandAction.LEAVE, user, room, ban_seconds=ban_seconds).connections

    def disconnect_user(self, user: str, reason: str | None = None) -> int:
        """Every connection of `user` gets `disconnected_by_server` `{reason}` and is closed."""
        return self.command(CommandAction.DISCONNECT, user, reason=reason).connections

    def command(
        self,
        action: CommandAction | str,
        user: str,
        room: str | None = None,
        reason: str | None = None,
        ban_seconds: int | None = None,
    ) -> CommandResult:
        """As the three above, with the nodes' answers in full: connections acted on, nodes
        that answered, nodes the command reached (`join`, `leave` or `disconnect`)."""
        try:
            action = CommandAction(action)
        except ValueError:
            raise EmitterInputError(ErrorCode.INVALID_PAYLOAD, f"no such command: {action!r}") from None
        if action is CommandAction.DISCONNECT:
            req = _valid(UserDisconnectRequest, {"user": user, "reason": reason})
            return commands.run(self._port, action, req.user, None, req.reason, deadline=self._deadline)
        if action is CommandAction.JOIN:
            req = _valid(UserRoomRequest, {"user": user, "room": room})
            return commands.run(self._port, action, req.user, req.room, deadline=self._deadline)
        leave = _valid(UserLeaveRequest, {"user": user, "room": room, "ban_seconds": ban_seconds})
        return commands.run(
            self._port, action, leave.user, leave.room, None, leave.ban_seconds, deadline=self._deadline, least=0.1
        )


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """The store's BackendUnavailable as EmitterUnavailable, saying what was not done."""
    try:
        yield
    except BackendUnavailable as exc:
        raise EmitterUnavailable(f"{what}: {exc}") from None


def _valid(model: Any, payload: dict[str, Any], **context: Any) -> Any:
    try:
        return parse(model, payload, **context)
    except ChatError as exc:
        raise EmitterInputError(exc.code, exc.message) from None
