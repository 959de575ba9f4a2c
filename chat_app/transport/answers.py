"""When an event's answer leaves: python-socketio keeps both facts this needs private.

A join hands its member the messages held back during its round trip only after the join
ack, so the member sees history, then the ack's position, then what follows, in that order.
python-socketio hands the ACK packet to engine.io before its private `_handle_event_internal`
returns, so what runs after that method is sent after the ack. Whether the client asked for
an ack at all (else errors go out as an `error` event) is that method's `id` argument.

With the direct writer, the wrapper runs that method's few lines itself and has the writer
frame a dict answer, as it frames the send's (DirectWriter.send_ack): the ack takes the same
place in the socket's order.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from socketio.packet import ACK

from .. import versions

if TYPE_CHECKING:
    from .fanout import DirectWriter

log = logging.getLogger(__name__)

_wants_ack: contextvars.ContextVar[bool] = contextvars.ContextVar("wants_ack", default=True)
_after_answer: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "after_answer", default=None
)


class Answers:
    def __init__(self, sio: Any, writer: DirectWriter | None = None) -> None:
        """`writer`: the direct writer, which then frames the answers (DirectWriter.send_ack)."""
        self._spawn = sio.start_background_task
        self.tracked = versions.matches("answers", "python-socketio") and hasattr(sio, "_handle_event_internal")
        if self.tracked:
            _wrap(sio, writer)

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


def _wrap(server: Any, writer: DirectWriter | None) -> None:
    original = server._handle_event_internal

    def handle(srv: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None) -> Any:
        after: list[Callable[[], None]] = []
        tokens = _wants_ack.set(id is not None), _after_answer.set(after)
        try:
            if writer is None or id is None or namespace != "/":
                return original(srv, sid, eio_sid, data, namespace, id)
            # _handle_event_internal (python-socketio 5.18.1), with a dict answer's ACK framed
            # by the direct writer (DirectWriter.send_ack says why).
            answer = srv._trigger_event(data[0], namespace, sid, *data[1:])
            if isinstance(answer, dict):
                writer.send_ack(eio_sid, id, answer)
            elif answer is not srv.not_handled:
                args = [] if answer is None else list(answer) if isinstance(answer, tuple) else [answer]
                srv._send_packet(eio_sid, srv.packet_class(ACK, namespace=namespace, id=id, data=args))
            return None
        finally:
            _wants_ack.reset(tokens[0])
            _after_answer.reset(tokens[1])
            for call in after:
                try:
                    call()
                except Exception:
                    log.exception("event=after_answer_failed sid=%s", sid)

    server._handle_event_internal = handle
