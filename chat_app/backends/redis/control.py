"""The control path's sending end, shared by a node's HTTP API and ChatEmitter: a command on
a user goes to every node on the commands channel, each node pushes how many of its
connections it acted on onto the command's own reply list, and the sender sums what it pops
within the deadline. PUBLISH says how many nodes heard the command, so the wait ends with
the last answer, not at the deadline.

A list, not a reply channel: an answer waits in Redis until it is popped, so a subscriber
connection that redis-py reconnects meanwhile (a Cluster client's topology refresh marks
every borrowed connection of that node for reconnect) loses none.

Plain blocking redis-py: under gevent (a node) the monkey-patched sockets make it
cooperative; in a Celery worker or a script it simply blocks."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time

import redis
from redis.cluster import RedisCluster

from ...logsafe import q
from ...protocol.wire import BadEnvelope, Command, decode_reply
from ..base import CommandResult, within
from .connection import unavailable_when_unreachable
from .keys import commands_channel, reply_key
from .scripts import AnyRedis

log = logging.getLogger(__name__)

# The reply window closes this much before the caller's deadline, so that answers counted
# in time are returned before `within` gives up on the whole command.
WINDOW_MARGIN = 0.05
# An answer nobody pops (its sender gave up) is gone after this long.
REPLY_TTL_MS = 60_000


def to_channel(client: AnyRedis, channel: str, data: bytes) -> int:
    """PUBLISH, or SPUBLISH on the channel's shard: how many subscribers got it."""
    if isinstance(client, RedisCluster):
        shard = client.get_redis_connection(client.get_node_from_key(channel))
        return int(shard.execute_command("SPUBLISH", channel, data))
    return int(client.publish(channel, data))


def answer(client: AnyRedis, key: str, data: bytes) -> None:
    """A node's answer to a command: onto the command's reply list, which then expires."""
    pipe = client.pipeline(transaction=False)
    pipe.rpush(key, data)
    pipe.pexpire(key, REPLY_TTL_MS)
    pipe.execute()


class ControlClient:
    def __init__(self, client: AnyRedis, prefix: str, socket_timeout: float) -> None:
        self._client = client
        self._prefix = prefix
        self._commands = commands_channel(prefix)
        # A blocking pop must come back before the socket times out under it.
        self._pop_wait = socket_timeout / 2

    def send(self, command: Command, deadline: float) -> CommandResult:
        """Give `command` an id and a reply list, send it, sum the answers. Raises
        BackendUnavailable when Redis does not take it within `deadline` seconds."""
        return within(deadline, lambda: self._send(command, deadline - WINDOW_MARGIN), "command")

    def _send(self, command: Command, window: float) -> CommandResult:
        end = time.monotonic() + window
        token = secrets.token_hex(8)
        command = dataclasses.replace(command, id=token, reply_to=reply_key(self._prefix, token))
        with unavailable_when_unreachable():
            # A round trip on the reply list's shard first: back past the window (a Redis that
            # stalled and came back), the caller may have been told `unavailable` already,
            # and a command given up on is never sent late.
            self._client.exists(command.reply_to)
            if time.monotonic() >= end:
                raise redis.TimeoutError("redis answered past the command's deadline")
            expected = to_channel(self._client, self._commands, command.encode())
            answers = self._answers(command.reply_to, token, expected, end)
        log.info(
            "event=command action=%s nodes=%d expected=%d connections=%d",
            command.action,
            len(answers),
            expected,
            sum(answers.values()),
        )
        return CommandResult(sum(answers.values()), len(answers), expected)

    def _answers(self, key: str, token: str, expected: int, end: float) -> dict[str, int]:
        """instance id -> connections, until every node that heard the command answered."""
        answers: dict[str, int] = {}
        while len(answers) < expected and (left := end - time.monotonic()) > 0:
            popped = self._client.blmpop(min(left, self._pop_wait), 1, key, direction="LEFT", count=expected)
            for data in popped[1] if popped else ():
                try:
                    reply = decode_reply(data)
                except BadEnvelope as exc:
                    log.warning("event=bad_reply error=%s", q(exc))
                    continue
                if reply.id == token:
                    answers[reply.instance_id] = reply.connections
        return answers
