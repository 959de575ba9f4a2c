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

from flask_socketio import SocketIO
from socketio.exceptions import ConnectionRefusedError as Refused

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
