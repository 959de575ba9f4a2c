"""Decision hooks (HOOK_URL): before a hooked connect, join or send happens, one signed HTTP
POST asks the product's backend, which answers allow or refuse (and, for a connect, the
user's name; for a send, a new text and `meta`).

A call (hooks/poster.py) parks only its own greenlet and is bounded twice: the client's
connect/read timeouts, and a gevent.Timeout over the whole call. At most HOOK_CONCURRENCY
calls are in flight per node: past that the call is not made and the HOOK_FAILURE answer
applies at once, so a slow backend cannot pile up the node's greenlets.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic_core import PydanticCustomError

from ..deadlines import green_deadline
from ..logsafe import LogThrottle, q
from ..protocol.errors import ChatError, ErrorCode
from ..protocol.names import check_user
from ..protocol.wire import META_MAX_BYTES
from ..settings import Settings
from .poster import ANSWER_MAX_BYTES, Poster, PostFailed
from .signing import Signer

log = logging.getLogger(__name__)
throttled = LogThrottle(log)

REASON_MAX_CHARS = 200
UNAVAILABLE = "the service could not check this: try again shortly"


class HookFailed(Exception):
    """The hook gave no usable answer: timeout, network, non-2xx, or not the agreed JSON."""


@dataclass(frozen=True, slots=True)
class Decision:
    allow: bool
    reason: str | None = None
    user: str | None = None  # connect: the name to use
    message: str | None = None  # send: the text to store instead
    meta: dict[str, Any] | None = None  # send: stored and delivered with the message


ALLOW = Decision(True)


@dataclass
class HookStats:
    calls: int = 0
    refused: int = 0
    failures: int = 0  # timeouts, errors, bad answers
    saturated: int = 0  # not called: HOOK_CONCURRENCY calls were in flight


class DecisionHooks:
    def __init__(self, settings: Settings) -> None:
        assert settings.hook_url
        self._url = settings.hook_url
        self._timeout = settings.hook_timeout
        self._open = settings.hook_failure == "open"
        self._headers = [h for h in (settings.hook_headers or "").split(",") if h]
        self._max_message_bytes = settings.max_message_bytes
        self._signer = Signer(settings.hook_secret)
        self._slots = threading.BoundedSemaphore(settings.hook_concurrency)  # gevent's under a node
        self._poster = Poster(settings.hook_url, settings.hook_timeout, settings.hook_concurrency)
        # What the service checks (an attribute each, nothing else, while an event is not hooked).
        events = settings.hook_events.split(",")
        self.on_connect = "connect" in events
        self.on_join = "join" in events
        self.on_send = "send" in events
        self.stats = HookStats()

    # -- the three questions ----------------------------------------------------------

    def connect(self, user: str | None, auth: Any, environ: dict[str, Any]) -> str | None:
        """The user's name to use (the hook's, else `user`); ChatError when refused."""
        body: dict[str, Any] = {"event": "connect", "user": user, "auth": auth if isinstance(auth, dict) else None}
        headers = {}
        for name in self._headers:
            value = environ.get("HTTP_" + name.upper().replace("-", "_"))
            if value is not None:
                headers[name] = value
        body["headers"] = headers
        decision = self._decide(body, ErrorCode.UNAUTHORIZED)
        return decision.user if decision.user is not None else user

    def join(self, user: str, room: str) -> None:
        self._decide({"event": "join", "user": user, "room": room}, ErrorCode.FORBIDDEN_ROOM)

    def send(self, user: str, room: str, message: str) -> Decision:
        return self._decide({"event": "send", "user": user, "room": room, "message": message}, ErrorCode.FORBIDDEN)

    # -- one call ---------------------------------------------------------------------

    def _decide(self, body: dict[str, Any], refusal: ErrorCode) -> Decision:
        event = body["event"]
        try:
            decision = self._call(body)
        except HookFailed as exc:
            self.stats.failures += 1
            throttled.log(logging.WARNING, "hook_failed", "event=hook_failed hook=%s error=%s", event, q(str(exc)))
            if self._open:
                return ALLOW
            raise ChatError(ErrorCode.UNAVAILABLE, UNAVAILABLE) from None
        except Exception:  # a bug of ours: a clear answer, never a handler without one
            self.stats.failures += 1
            log.exception("event=hook_error hook=%s", event)
            raise ChatError(ErrorCode.INTERNAL, "the server failed to check this") from None
        if not decision.allow:
            self.stats.refused += 1
            raise ChatError(refusal, decision.reason or f"the {event} was refused")
        return decision

    def _call(self, body: dict[str, Any]) -> Decision:
        if not self._slots.acquire(blocking=False):
            self.stats.saturated += 1
            raise HookFailed("too many hook calls in flight")
        try:
            self.stats.calls += 1
            payload = orjson.dumps(body)
            with green_deadline(self._timeout + 0.05, HookFailed(f"no answer within {self._timeout + 0.05:g} s")):
                raw = self._post(payload)
        finally:
            self._slots.release()
        return self._parse(body["event"], raw)

    def _post(self, payload: bytes) -> bytes:
        try:
            status, raw = self._poster.post(payload, self._signer.headers(payload))
        except PostFailed as exc:
            raise HookFailed(str(exc)) from None
        if raw is None:
            raise HookFailed(f"an answer over {ANSWER_MAX_BYTES} bytes")
        if not 200 <= status < 300:
            raise HookFailed(f"answered HTTP {status}")
        return raw

    def _parse(self, event: str, raw: bytes) -> Decision:
        """The agreed JSON or HookFailed: a type that is off is the backend's bug, and a
        guess (a string "false" read as true) would be worse than the configured failure."""
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise HookFailed("the answer is not JSON") from None
        if not isinstance(answer, dict) or type(answer.get("allow")) is not bool:
            raise HookFailed("the answer has no boolean `allow`")
        reason = answer.get("reason")
        if reason is not None and (not isinstance(reason, str) or len(reason) > REASON_MAX_CHARS):
            raise HookFailed(f"`reason` must be a string of at most {REASON_MAX_CHARS} characters")
        user = answer.get("user") if event == "connect" else None
        if user is not None:
            try:
                if not isinstance(user, str) or check_user(user) != user:
                    raise ValueError
            except (ValueError, PydanticCustomError):
                raise HookFailed("`user` is not a valid user name as it stands") from None
        message = answer.get("message") if event == "send" else None
        if message is not None and (
            not isinstance(message, str) or not message.strip() or len(message.encode()) > self._max_message_bytes
        ):
            raise HookFailed(f"`message` must be a non-empty string of at most {self._max_message_bytes} bytes")
        meta = answer.get("meta") if event == "send" else None
        if meta is not None and (not isinstance(meta, dict) or len(orjson.dumps(meta)) > META_MAX_BYTES):
            raise HookFailed(f"`meta` must be a JSON object of at most {META_MAX_BYTES} bytes")
        return Decision(answer["allow"], reason, user, message, meta)
