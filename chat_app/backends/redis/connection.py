"""What the publisher and the listeners agree on about a Redis connection: which errors
mean it is gone, and how long to wait before trying again."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialWithJitterBackoff

from ...settings import Settings

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def reconnect_backoff(settings: Settings) -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=settings.reconnect_backoff_cap, base=settings.reconnect_backoff_base)
