"""What the publisher and the listeners agree on about a Redis connection: which errors
mean it is gone, and how long to wait before trying again."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff

from ...settings import Settings

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def describe(exc: BaseException) -> str:
    """An error for a log line: redis-py 8's repr of its errors drops the message."""
    return f"{type(exc).__name__}({str(exc)!r})"


def reconnect_backoff(settings: Settings) -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=settings.reconnect_backoff_cap, base=settings.reconnect_backoff_base)
