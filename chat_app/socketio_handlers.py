"""Socket.IO handlers: thin. Validate (protocol), call ChatService, answer.

Every event is answered: with its ack when the client asked for one, else, for errors,
with an `error` event, so a client of the original protocol (no ack callbacks) still
learns why nothing happened.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import gevent
from flask_socketio import SocketIO
from socketio.exceptions import ConnectionRefusedError as Refused
from socketio.packet import ACK

from .auth import identify
from .protocol.errors import ChatError, ErrorCode
from .protocol.requests import (
    HistoryRequest,
    JoinRequest,
    LeaveRequest,
    ListDirectsRequest,
    OpenDirectRequest,
    SearchRequest,
    SendRequest,
    TypingRequest,
    parse,
)
from .service import ChatService, throttled
from .transport import Transport

log = logging.getLogger(__name__)


def _error(exc: Exception, event: str, sid: str) -> ChatError:
    """What a handler's failure answers: its ChatError, or `internal` (logged) for anything
    else. Called in the handler's `except`."""
    if isinstance(exc, ChatError):
        return exc
    log.exception("event=handler_failed handler=%s sid=%s", event, sid)
    return ChatError(ErrorCode.INTERNAL, "the server failed to handle this event")


def register_handlers(socketio: SocketIO, service: ChatService, transport: Transport) -> None:
    """Handlers go on python-socketio's server itself: Flask-SocketIO's wrapper would build a
    Flask request context and session for every event, and none of them reads either. Long
    only by count: one short closure per event, each validate -> call -> answer."""
    sio = socketio.server
    answers = transport.answers
    max_bytes = service.settings.max_message_bytes

    def answer(sid: str, event: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        try:
            return call()
        except Exception as exc:
            error = _error(exc, event, sid)
        if answers.wants_ack():
            return {"ok": False, "error": error.to_wire()}
        sio.emit("error", {**error.to_wire(), "event": event}, to=sid)
        return None

    @sio.on("connect")
    def on_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        try:
            s = service.settings
            identity = identify(auth, query.get("username", [None])[0], s.auth_secret, s.auth_issuer, s.auth_audience)
            if service.hooks is not None and service.hooks.on_connect:
                user = service.hooks.connect(identity.user, auth, environ)
                identity = dataclasses.replace(identity, user=user)
        except ChatError as exc:
            throttled.log(logging.INFO, "connect_refused", "event=connect_refused code=%s", exc.code)
            raise Refused(exc.message, exc.to_wire()) from None
        service.connect(sid, identity)
        return True

    @sio.on("disconnect")
    def on_disconnect(sid: str, reason: Any = None) -> None:
        service.disconnect(sid)

    # `*_`: arguments a client adds beyond the payload are ignored (python-socketio passes
    # them all, and a handler that cannot take them would fail without an answer).
    @sio.on("join_room")
    def on_join(sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        return answer(
            sid,
            "join_room",
            lambda: service.join_room(
                sid,
                parse(JoinRequest, payload),
                sender=payload.get("sender") if isinstance(payload, dict) else None,
                after_ack=answers.after_answer,
            ),
        )

    @sio.on("open_direct")
    def on_open_direct(sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        return answer(
            sid,
            "open_direct",
            lambda: service.open_direct(sid, parse(OpenDirectRequest, payload), answers.after_answer),
        )

    @sio.on("list_directs")
    def on_list_directs(sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        def run() -> dict[str, Any]:
            parse(ListDirectsRequest, payload)
            return service.list_directs(sid)

        return answer(sid, "list_directs", run)

    @sio.on("history")
    def on_history(sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        return answer(sid, "history", lambda: service.history(sid, parse(HistoryRequest, payload)))

    @sio.on("search")
    def on_search(sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        return answer(sid, "search", lambda: service.search(sid, parse(SearchRequest, payload)))

    @sio.on("leave_room")
    def on_leave(sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        return answer(sid, "leave_room", lambda: service.leave(sid, parse(LeaveRequest, payload).room))

    @sio.on("send_message")
    def on_send(sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        return answer(
            sid,
            "send_message",
            lambda: service.send(
                sid,
                parse(SendRequest, payload, max_message_bytes=max_bytes),
                # Asked only while shedding: it costs two lookups a send.
                shed=service.load.shedding() and transport.shed_already(sid),
            ),
        )

    if transport.guard is not None and transport.lean:
        transport.guard.direct_events["send_message"] = _send_without_waiting(sio, service, transport)

    @sio.on("typing")
    def on_typing(sid: str, payload: Any = None, *_: Any) -> None:
        """Never answered: a bad or refused typing event is dropped (it is a hint, not a request)."""
        try:
            room = parse(TypingRequest, payload).room
        except ChatError:
            return
        try:
            service.typing(sid, room)
        except Exception:
            log.exception("event=handler_failed handler=typing sid=%s", sid)


def _send_without_waiting(
    sio: Any, service: ChatService, transport: Transport
) -> Callable[[str, int | None, list[Any]], None]:
    """send_message without a greenlet per send (gevent, with the protocol guard). python-
    socketio runs each event in a greenlet of its own, which then waits for the publisher's
    batch: a greenlet made, started and ended, and two switches more, for every send.
    Here the send runs in a hub callback, queued where python-socketio would have started
    its greenlet (so after the events the connection sent before it, a join for one, ran up
    to their first wait, as before), and the publisher writes the answer when Redis has
    answered the batch: every ack of a batch goes out in one pass of the direct writer.
    Nothing on that path waits: the service's lock is never held across a wait. A node with
    a send hook (an HTTP call the send waits for) keeps python-socketio's path."""
    at_yield = gevent.get_hub().loop.run_callback
    manager = sio.manager
    writer = transport.writer
    max_bytes = service.settings.max_message_bytes

    def answer_send(sid: str, payload: Any, reply: Callable[[dict[str, Any]], None]) -> None:
        """on_send for a caller that must not block: `reply` gets the answer on_send returns."""
        try:
            service.send_then(
                sid,
                parse(SendRequest, payload, max_message_bytes=max_bytes),
                reply,
                shed=service.load.shedding() and transport.shed_already(sid),
            )
        except Exception as exc:
            reply({"ok": False, "error": _error(exc, "send_message", sid).to_wire()})

    def start(sid: str, eio_sid: str, ack_id: int | None, payload: Any) -> None:
        def reply(result: dict[str, Any]) -> None:
            if ack_id is not None and writer is not None:
                writer.send_ack(eio_sid, ack_id, result)
            elif ack_id is not None:
                sio._send_packet(eio_sid, sio.packet_class(ACK, namespace="/", id=ack_id, data=[result]))
            elif not result["ok"]:
                sio.emit("error", {**result["error"], "event": "send_message"}, to=sid)

        try:
            answer_send(sid, payload, reply)
        except Exception:  # in the hub: never let one send's failure out
            log.exception("event=handler_failed handler=send_message sid=%s", sid)

    def on_event(eio_sid: str, ack_id: int | None, data: list[Any]) -> None:
        if not service.sends_without_waiting:
            sio._handle_event(eio_sid, "/", ack_id, data)
            return
        sid = manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not manager.is_connected(sid, "/"):  # python-socketio's _handle_event drops it too
            return
        at_yield(start, sid, eio_sid, ack_id, data[1] if len(data) > 1 else None)

    return on_event
