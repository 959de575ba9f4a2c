"""StandaloneRedis: the Redis backend for a process that is not a node (ChatEmitter): posts,
bans, commands on users and direct lists over one plain blocking redis-py client, without
the node's listener, publisher or heartbeat. The one entry point ChatEmitter imports.

Errors: Banned; BackendUnavailable when Redis did not take a call within the deadline."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from ...protocol import Command, Envelope
from ...settings import Settings
from ..base import BackendUnavailable, CommandResult, Draft
from .clients import no_retry, redis_client
from .connection import reconnect_backoff
from .control import ControlClient
from .directs import DirectLists
from .keys import room_keys
from .presence import store_ban
from .scripts import is_moved, run_scripts
from .send import SendScript, ServerIds

REDIS_ERRORS = (redis.RedisError, OSError)


class StandaloneRedis:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._deadline = settings.send_deadline
        # No retries inside redis-py: one read waits at most the deadline, and the loop in
        # `publish` retries only failures that leave time.
        socket_timeout = min(settings.redis_socket_timeout, settings.send_deadline)
        self._client = redis_client(settings, no_retry(), socket_timeout=socket_timeout)
        self._send = SendScript(self._client, settings)
        self._server_ids = ServerIds(self._client)
        self._room_keys = room_keys(settings.key_prefix)
        self._control = ControlClient(self._client, settings.key_prefix, socket_timeout)
        self._directs = DirectLists(self._client, settings.key_prefix, settings.redis_room_ttl_ms)
        self._backoff = reconnect_backoff(settings)

    def close(self) -> None:
        self._client.close()

    def send(self, draft: Draft) -> Envelope:
        """The nodes' own send script, retried within the deadline (the same draft again: its
        id makes a second store impossible). BackendUnavailable: it may still have been stored."""
        keys = self._room_keys(draft.room)
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
                return SendScript.envelope(draft, result)
            except REDIS_ERRORS as exc:
                self._server_ids.forget()  # another server may answer next: read its id again
                failures += 1
                wait = self._backoff.compute(failures)
                timed_out = isinstance(exc, (redis.TimeoutError, TimeoutError))
                if timed_out or time.monotonic() + wait >= deadline:
                    raise BackendUnavailable(f"redis unreachable: {exc}") from None
                time.sleep(wait)

    def ban(self, room: str, user: str, seconds: int) -> None:
        with _reached():
            store_ban(self._client, self._settings.key_prefix, room, user, seconds)

    def command(self, command: Command, deadline: float) -> CommandResult:
        with _reached():
            return self._control.send(command, deadline)

    def record_direct(self, room: str, users: tuple[str, str], at: int) -> None:
        with _reached():
            self._directs.record(room, users, at, self._settings.max_directs_per_user)


@contextmanager
def _reached() -> Iterator[None]:
    """A redis error as BackendUnavailable: ChatEmitter never sees a bare one."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise BackendUnavailable(f"redis unreachable: {exc}") from None
