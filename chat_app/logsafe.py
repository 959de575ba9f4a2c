"""Log lines a client cannot forge or flood.

`q()` renders any value a client chose (a room, a user name, a URL path, an error text
that may quote them) so it stays one `key=value` token on one line: a newline, a quote or
a Unicode line separator in it can never start a line of its own or a key of its own.

`LogThrottle` bounds the lines a client can make a node write: per kind of line, the first
ones pass, then a steady trickle; what is held back is counted and said in one summary line
(`event=log_suppressed kind=... suppressed=N`) at most a window later."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .ratelimit import TokenBucket

_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:@#/+,%")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char == " " or char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def q(value: object) -> str:
    """`value` as one log token: bare when it is plain ASCII (`lobby`, `/api/rooms`), else in
    double quotes with quotes, backslashes and every non-printable character escaped
    (control characters, U+2028, bidi overrides...): `"x\\n2026-12-06 ..."`."""
    text = str(value)
    if text and all(c in _BARE for c in text):
        return text
    return '"' + "".join(_escape(c) for c in text) + '"'


@dataclass
class _Kind:
    bucket: TokenBucket
    suppressed: int = 0
    flushing: bool = False


@dataclass
class LogThrottle:
    """Per kind of line, a token bucket: `burst` lines at once, then `rate` a second. A line
    held back is counted; `window` seconds after the first one held back, one WARNING line
    says how many were (so an attack shows, and stops filling the disk)."""

    logger: logging.Logger
    rate: float = 1.0
    burst: int = 20
    window: float = 10.0
    clock: Callable[[], float] = time.monotonic
    _kinds: dict[str, _Kind] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log `msg % args` unless `kind` is over its rate; True when it was written."""
        if not self.logger.isEnabledFor(level):
            return False
        with self._lock:
            state = self._kinds.get(kind)
            if state is None:
                state = self._kinds[kind] = _Kind(TokenBucket(self.rate, self.burst, self.clock))
            passed = state.bucket.take()
            if not passed:
                state.suppressed += 1
                start = not state.flushing
                state.flushing = True
        if passed:
            self.logger.log(level, msg, *args)
        elif start:
            timer = threading.Timer(self.window, self.flush, args=(kind,))
            timer.daemon = True
            timer.start()
        return passed

    def flush(self, kind: str) -> None:
        """Say how many lines of `kind` were held back since the last summary."""
        with self._lock:
            state = self._kinds.get(kind)
            if state is None:
                return
            count, state.suppressed, state.flushing = state.suppressed, 0, False
        if count:
            self.logger.warning("event=log_suppressed kind=%s suppressed=%d", kind, count)
