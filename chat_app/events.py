"""Socket.IO handlers: thin. Validate (protocol), call ChatService, answer.

Every event is answered: with its ack when the client asked for one, else, for errors,
with an `error` event, so a client of the original protocol (no ack callbacks) still
learns why nothing happened.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import parse_qs

from flask_socketio import SocketIO
from socketio.exceptions import ConnectionRefusedError as Refused

from .auth import identify
from .protocol import (
    ChatError,
    ErrorCode,
    JoinRequest,
    LeaveRequest,
    ListDirectsRequest,
    OpenDirectRequest,
    SendRequest,
    TypingRequest,
    parse,
)
from .service import ChatService, throttled
from .transport import Transport

log = logging.getLogger(__name__)

CLOSE_GRACE = 1.0  # seconds a client disconnected by the server has to close its transport


def _socketio_room(room: str) -> str:
    """Socket.IO's own room for a chat room; '/' cannot occur in a chat room or a sid."""
    return "r/" + room


class SocketIOEmitter:
    """ChatService's Emitter over python-socketio's rooms on this node, sent through the
    fan-out (framed once, written directly)."""

    def __init__(self, socketio: SocketIO, transport: Transport) -> None:
        self._socketio = socketio
        self._fanout = transport.fanout

    def emit_room(self, event: str, data: dict[str, Any], room: str, skip: Collection[str] = ()) -> None:
        self._fanout.emit(event, data, _socketio_room(room), skip)

    def emit_to(self, sid: str, event: str, data: dict[str, Any]) -> None:
        self._fanout.emit(event, data, sid)  # every sid is a Socket.IO room of its own

    def enter_room(self, sid: str, room: str) -> None:
        self._socketio.server.enter_room(sid, _socketio_room(room), namespace="/")

    def leave_room(self, sid: str, room: str) -> None:
        self._socketio.server.leave_room(sid, _socketio_room(room), namespace="/")

    def disconnect(self, sid: str) -> None:
        """Socket.IO's DISCONNECT goes out behind what was emitted to the socket, and a
        client closes the transport on it; one that does not is cut after CLOSE_GRACE."""
        server = self._socketio.server
        eio_sid = server.manager.eio_sid_from_sid(sid, "/")
        server.disconnect(sid, namespace="/")
        if eio_sid is not None:
            self._socketio.start_background_task(self._close_later, eio_sid)

    def _close_later(self, eio_sid: str) -> None:
        self._socketio.sleep(CLOSE_GRACE)
        eio = self._socketio.server.eio
        if eio_sid in eio.sockets:
            log.info("event=transport_closed_by_server eio_sid=%s", eio_sid)
            with contextlib.suppress(Exception):  # it may be going away by itself right now
                eio.disconnect(eio_sid)


def register_events(socketio: SocketIO, service: ChatService, transport: Transport) -> None:
    """Handlers go on python-socketio's server itself: Flask-SocketIO's wrapper would build a
    Flask request context and session for every event, and none of them reads either."""
    sio = socketio.server
    answers = transport.answers
    max_bytes = service.settings.max_message_bytes

    def answer(sid: str, event: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        try:
            return call()
        except ChatError as exc:
            error = exc
        except Exception:
            log.exception("event=handler_failed handler=%s sid=%s", event, sid)
            error = ChatError(ErrorCode.INTERNAL, "the server failed to handle this event")
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
