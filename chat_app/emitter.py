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

import logging
import secrets
import socket
import time
from collections.abc import Mapping
from functools import lru_cache, partial
from typing import Any

import redis

from .backends.base import BackendUnavailable, Banned, CommandResult, Draft
from .backends.redis.clients import no_retry, redis_client
from .backends.redis.connection import reconnect_backoff
from .backends.redis.control import ControlClient, store_ban
from .backends.redis.directs import DirectLists
from .backends.redis.keys import RoomKeys
from .backends.redis.scripts import is_moved, run_scripts
from .backends.redis.send import SendScript, ServerIds
from .logsafe import q
from .protocol import (
    ChatError,
    Command,
    CommandAction,
    ErrorCode,
    PublishRequest,
    UserDisconnectRequest,
    UserLeaveRequest,
    UserRoomRequest,
    direct_members,
    parse,
)
from .settings import Settings, SettingsError

log = logging.getLogger(__name__)

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


REDIS_ERRORS = (redis.RedisError, OSError)


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
        # No retries inside redis-py: one read waits at most the deadline, and the loop in
        # `publish` retries only failures that leave time.
        socket_timeout = min(settings.redis_socket_timeout, settings.send_deadline)
        self._client = redis_client(settings, no_retry(), socket_timeout=socket_timeout)
        self._send = SendScript(self._client, settings)
        self._server_ids = ServerIds(self._client)
        self._room_keys = lru_cache(maxsize=1024)(partial(RoomKeys.of, settings.key_prefix))
        self._control = ControlClient(self._client, settings.key_prefix, socket_timeout)
        self._directs = DirectLists(self._client, settings.key_prefix, settings.redis_room_ttl_ms)
        self._backoff = reconnect_backoff(settings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ChatEmitter:
        """The nodes' settings, from the environment (default os.environ)."""
        return cls(settings=Settings.from_env(env, **overrides))

    def close(self) -> None:
        self._client.close()

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
        keys = self._room_keys(req.room)
        deadline = time.monotonic() + self._deadline
        failures = 0
        moved = False
        while True:
            try:
                call = self._send.call(draft, keys, secrets.token_hex(8), self._server_ids.of(keys.seq))
                result = run_scripts(self._client, [call], rerun_moved=False)[0]
                if is_moved(result) and not moved:  # the slot has a new master: read its server id
                    moved = True
                    self._server_ids.forget()
                    continue
                envelope = SendScript.envelope(draft, result)
            except Banned as exc:
                refused = f"{req.sender!r} may not send to {req.room!r}: {exc}"
                raise EmitterInputError(ErrorCode.BANNED, refused) from None
            except BackendUnavailable as exc:
                raise EmitterUnavailable(f"message not sent: {exc}") from None
            except REDIS_ERRORS as exc:
                self._server_ids.forget()  # another server may answer next: read its id again
                failures += 1
                wait = self._backoff.compute(failures)
                timed_out = isinstance(exc, (redis.TimeoutError, TimeoutError))
                if timed_out or time.monotonic() + wait >= deadline:
                    raise EmitterUnavailable(f"message not sent: redis unreachable: {exc}") from None
                time.sleep(wait)  # the same draft again: its id makes a second store impossible
                continue
            if (pair := direct_members(req.room)) is not None:
                self._reach_direct(req.room, pair, envelope.timestamp)
            return {"id": envelope.id, "seq": envelope.seq, "epoch": envelope.epoch, "timestamp": envelope.timestamp}

    def _reach_direct(self, room: str, users: tuple[str, str], at: int) -> None:
        """As a node does after a member's message to a direct conversation: both users'
        lists, then every connection of both joins it. The message is stored already, so a
        failure here is logged, not raised: it reaches them when they next open it."""
        try:
            self._directs.record(room, users, at, self.settings.max_directs_per_user)
            for user in users:
                self._send_command(Command("", CommandAction.JOIN, user, room), self._deadline)
        except (ChatError, BackendUnavailable, *REDIS_ERRORS) as exc:
            log.warning("event=direct_reach_failed room=%s error=%s", q(room), q(exc))

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
            return self._send_command(Command("", action, req.user, None, req.reason), self._deadline)
        if action is CommandAction.JOIN:
            req = _valid(UserRoomRequest, {"user": user, "room": room})
            return self._send_command(Command("", action, req.user, req.room), self._deadline)
        leave = _valid(UserLeaveRequest, {"user": user, "room": room, "ban_seconds": ban_seconds})
        started = time.monotonic()
        if leave.ban_seconds is not None:  # stored first: no node lets the user straight back
            try:
                store_ban(self._client, self.settings.key_prefix, leave.room, leave.user, leave.ban_seconds)
            except REDIS_ERRORS as exc:
                raise EmitterUnavailable(f"ban not stored: {exc}") from None
        reason = "banned" if leave.ban_seconds is not None else "removed"
        left = max(self._deadline - (time.monotonic() - started), 0.1)
        return self._send_command(Command("", action, leave.user, leave.room, reason), left)

    def _send_command(self, command: Command, deadline: float) -> CommandResult:
        try:
            return self._control.send(command, deadline)
        except BackendUnavailable as exc:
            raise EmitterUnavailable(f"command not sent: {exc}") from None
        except REDIS_ERRORS as exc:
            raise EmitterUnavailable(f"command not sent: redis unreachable: {exc}") from None


def _valid(model: Any, payload: dict[str, Any], **context: Any) -> Any:
    try:
        return parse(model, payload, **context)
    except ChatError as exc:
        raise EmitterInputError(exc.code, exc.message) from None
