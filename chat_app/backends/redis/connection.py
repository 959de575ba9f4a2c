"""What the publisher and the listeners agree on about a Redis connection: which errors
mean it is gone, and how long to wait before trying again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis
from redis.backoff import ExponentialWithJitterBackoff

from ...settings import Settings
from ..base import BackendUnavailable

CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def unreachable(exc: BaseException) -> BackendUnavailable:
    """What the service is told when Redis could not be reached: `unavailable`, whatever the
    connection error was (the detail is for the log)."""
    return BackendUnavailable(f"redis unreachable: {exc}")


@contextlib.contextmanager
def unavailable_when_unreachable() -> Iterator[None]:
    """A connection error inside becomes BackendUnavailable (`unreachable`)."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise unreachable(exc) from exc


def describe(exc: BaseException) -> str:
    """An error for a log line: redis-py 8's repr of its errors drops the message."""
    return f"{type(exc).__name__}({str(exc)!r})"


def reconnect_backoff(settings: Settings) -> ExponentialWithJitterBackoff:
    return ExponentialWithJitterBackoff(cap=settings.reconnect_backoff_cap, base=settings.reconnect_backoff_base)
