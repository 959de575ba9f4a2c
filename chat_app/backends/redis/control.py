"""The control path's sending end, shared by a node's HTTP API and ChatEmitter: a command on
a user goes to every node on the commands channel, each node answers on the command's own
reply channel with how many of its connections it acted on, and the sender sums what
arrives within the deadline. PUBLISH says how many nodes heard the command, so the wait
ends with the last answer, not at the deadline.

Plain blocking redis-py: under gevent (a node) the monkey-patched sockets make it
cooperative; in a Celery worker or a script it simply blocks."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time

import redis
from redis.cluster import RedisCluster

from ...protocol import BadEnvelope, Command, decode_reply
from ..base import BackendUnavailable, CommandResult, within
from .connection import CONNECTION_ERRORS, describe
from .keys import RoomKeys, commands_channel, reply_channel
from .scripts import AnyRedis

log = logging.getLogger(__name__)

# The reply window closes this much before the caller's deadline, so that answers counted
# in time are returned before `within` gives up on the whole command.
WINDOW_MARGIN = 0.05


def shard_client(client: AnyRedis, channel: str) -> redis.Redis:
    """The client that serves `channel`: on a Cluster, the master of its slot."""
    if isinstance(client, RedisCluster):
        return client.get_redis_connection(client.get_node_from_key(channel))
    return client


def publish(client: AnyRedis, channel: str, data: bytes) -> int:
    """PUBLISH, or SPUBLISH on the channel's shard: how many subscribers got it."""
    if isinstance(client, RedisCluster):
        return int(shard_client(client, channel).execute_command("SPUBLISH", channel, data))
    return int(client.publish(channel, data))


def store_ban(client: AnyRedis, prefix: str, room: str, user: str, seconds: int) -> None:
    client.set(RoomKeys.of(prefix, room).ban(user), b"1", ex=seconds)


class ControlClient:
    def __init__(self, client: AnyRedis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._commands = commands_channel(prefix)
        self._sharded = isinstance(client, RedisCluster)

    def send(self, command: Command, deadline: float) -> CommandResult:
        """Give `command` an id and a reply channel, send it, sum the answers. Raises
        BackendUnavailable when Redis does not take it within `deadline` seconds."""
        return within(deadline, lambda: self._send(command, deadline - WINDOW_MARGIN), "command")

    def _send(self, command: Command, window: float) -> CommandResult:
        end = time.monotonic() + window
        token = secrets.token_hex(8)
        command = dataclasses.replace(command, id=token, reply_to=reply_channel(self._prefix, token))
        pubsub = shard_client(self._client, command.reply_to).pubsub()
        try:
            self._subscribe(pubsub, command.reply_to, end)
            expected = publish(self._client, self._commands, command.encode())
            answers = self._answers(pubsub, token, expected, end)
        except CONNECTION_ERRORS as exc:
            raise BackendUnavailable(f"redis unreachable: {exc}") from exc
        finally:
            try:
                pubsub.close()
            except Exception as exc:  # a dead connection may fail to close; it is dropped anyway
                log.debug("event=reply_close_failed error=%s", describe(exc))
        log.info(
            "event=command action=%s nodes=%d expected=%d connections=%d",
            command.action,
            len(answers),
            expected,
            sum(answers.values()),
        )
        return CommandResult(sum(answers.values()), len(answers), expected)

    def _subscribe(self, pubsub: redis.client.PubSub, channel: str, end: float) -> None:
        """Subscribed (and confirmed) before the command goes out: no answer can come first.
        Confirmed past `end`, the caller may have been told `unavailable` already (a Redis
        that stalled and came back): a command given up on is never sent late."""
        if self._sharded:
            pubsub.ssubscribe(channel)
        else:
            pubsub.subscribe(channel)
        while True:
            message = pubsub.get_message(timeout=max(end - time.monotonic(), 0.0))
            if time.monotonic() >= end:
                raise redis.TimeoutError("the reply channel's subscription was not confirmed in time")
            if message is not None and message["type"] in {"subscribe", "ssubscribe"}:
                return

    @staticmethod
    def _answers(pubsub: redis.client.PubSub, token: str, expected: int, end: float) -> dict[str, int]:
        """instance id -> connections, until every node that heard the command answered."""
        answers: dict[str, int] = {}
        while len(answers) < expected and (left := end - time.monotonic()) > 0:
            message = pubsub.get_message(timeout=left)
            if message is None or message["type"] not in {"message", "smessage"}:
                continue
            try:
                reply = decode_reply(message["data"])
            except BadEnvelope as exc:
                log.warning("event=bad_reply error=%s", exc)
                continue
            if reply.id == token:
                answers[reply.instance_id] = reply.connections
        return answers
