"""When an event's answer leaves: python-socketio keeps both facts this needs private.

A join hands its member the messages held back during its round trip only after the join
ack, so the member sees history, then the ack's position, then what follows, in that order.
python-socketio hands the ACK packet to engine.io before its private `_handle_event_internal`
returns, so what runs after that method is sent after the ack. Whether the client asked for
an ack at all (else errors go out as an `error` event) is that method's `id` argument.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

from .. import versions

log = logging.getLogger(__name__)

_wants_ack: contextvars.ContextVar[bool] = contextvars.ContextVar("wants_ack", default=True)
_after_answer: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "after_answer", default=None
)


class Answers:
    def __init__(self, sio: Any) -> None:
        self._spawn = sio.start_background_task
        self.tracked = versions.matches("answers", "python-socketio") and hasattr(sio, "_handle_event_internal")
        if self.tracked:
            _wrap(sio)

    def wants_ack(self) -> bool:
        """False only for an event sent without an ack id (untracked: assumed True)."""
        return _wants_ack.get()

    def after_answer(self, call: Callable[[], None]) -> None:
        """Run `call` once the current event's answer has been handed to the transport.
        Untracked, it runs in a background task: under gevent one starts only when the
        handler's greenlet yields, by which time the ack is queued; under real threads
        (tests only) the order is not guaranteed."""
        pending = _after_answer.get()
        if pending is not None:
            pending.append(call)
        else:
            self._spawn(call)


def _wrap(server: Any) -> None:
    original = server._handle_event_internal

    def handle(srv: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None) -> Any:
        after: list[Callable[[], None]] = []
        tokens = _wants_ack.set(id is not None), _after_answer.set(after)
        try:
            return original(srv, sid, eio_sid, data, namespace, id)
        finally:
            _wants_ack.reset(tokens[0])
            _after_answer.reset(tokens[1])
            for call in after:
                try:
                    call()
                except Exception:
                    log.exception("event=after_answer_failed sid=%s", sid)

    server._handle_event_internal = handle
