"""Socket.IO handlers: thin. Validate (protocol), call ChatService, answer.

Every event is answered: with its ack when the client asked for one, else, for errors,
with an `error` event, so a client of the original protocol (no ack callbacks) still
learns why nothing happened.
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import logging
import struct
import termios
from collections.abc import Callable
from typing import Any

from flask import request
from flask_socketio import SocketIO
from socketio.exceptions import ConnectionRefusedError as Refused

from .auth import identify
from .protocol import ChatError, ErrorCode, JoinRequest, LeaveRequest, SendRequest, parse
from .service import ChatService

log = logging.getLogger(__name__)

_wants_ack: contextvars.ContextVar[bool] = contextvars.ContextVar("wants_ack", default=True)


def _socketio_room(room: str) -> str:
    """Socket.IO's own room for a chat room; '/' cannot occur in a chat room or a sid."""
    return "r/" + room


class SocketIOEmitter:
    """ChatService's Emitter over Flask-SocketIO's in-process manager (this node only)."""

    def __init__(self, socketio: SocketIO) -> None:
        self._socketio = socketio

    def emit_room(self, event: str, data: dict[str, Any], room: str) -> None:
        self._socketio.emit(event, data, to=_socketio_room(room))

    def enter_room(self, sid: str, room: str) -> None:
        self._socketio.server.enter_room(sid, _socketio_room(room), namespace="/")

    def leave_room(self, sid: str, room: str) -> None:
        self._socketio.server.leave_room(sid, _socketio_room(room), namespace="/")


def _track_ack_requests(socketio: SocketIO) -> None:
    """Record per event whether the client sent an ack id; python-socketio keeps it private."""
    server = socketio.server
    original = server._handle_event_internal

    def handle(srv: Any, sid: str, eio_sid: str, data: Any, namespace: str, id: int | None) -> Any:
        _wants_ack.set(id is not None)
        return original(srv, sid, eio_sid, data, namespace, id)

    server._handle_event_internal = handle


def register_events(socketio: SocketIO, service: ChatService) -> None:
    _track_ack_requests(socketio)
    max_bytes = service.settings.max_message_bytes

    def answer(event: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        try:
            return call()
        except ChatError as exc:
            error = exc
        except Exception:
            log.exception("event=handler_failed handler=%s sid=%s", event, request.sid)
            error = ChatError(ErrorCode.INTERNAL, "the server failed to handle this event")
        if _wants_ack.get():
            return {"ok": False, "error": error.to_wire()}
        socketio.emit("error", {**error.to_wire(), "event": event}, to=request.sid)
        return None

    @socketio.on("connect")
    def on_connect(auth: Any = None) -> bool:
        try:
            identity = identify(auth, request.args.get("username"), service.settings.auth_secret)
        except ChatError as exc:
            log.info("event=connect_refused code=%s", exc.code)
            raise Refused(exc.message, exc.to_wire()) from None
        service.connect(request.sid, identity)
        return True

    @socketio.on("disconnect")
    def on_disconnect(reason: Any = None) -> None:
        service.disconnect(request.sid)

    @socketio.on("join_room")
    def on_join(payload: Any = None) -> dict[str, Any] | None:
        return answer(
            "join_room",
            lambda: service.join(
                request.sid,
                parse(JoinRequest, payload),
                sender=payload.get("sender") if isinstance(payload, dict) else None,
            ),
        )

    @socketio.on("leave_room")
    def on_leave(payload: Any = None) -> dict[str, Any] | None:
        return answer("leave_room", lambda: service.leave(request.sid, parse(LeaveRequest, payload).room))

    @socketio.on("send_message")
    def on_send(payload: Any = None) -> dict[str, Any] | None:
        return answer(
            "send_message",
            lambda: service.send(request.sid, parse(SendRequest, payload, max_message_bytes=max_bytes)),
        )


STUCK_UNSENT_BYTES = 16 * 1024


def _unsent_bytes(environ: dict[str, Any] | None) -> int | None:
    """Bytes the kernel still holds for a websocket client: they pile up only when the
    client stops reading (its TCP window is closed). None when not on a websocket."""
    ws = environ.get("wsgi.websocket") if environ else None
    sock = getattr(getattr(getattr(ws, "stream", None), "handler", None), "socket", None)
    if sock is None:
        return None
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return None


def watch_slow_clients(socketio: SocketIO, limit: int, interval: float = 1.0) -> None:
    """Disconnect a client that stopped reading once its outgoing queue passed `limit`
    packets, so it cannot grow the node's memory; it reconnects and recovers with `since`.

    A long queue alone is not enough: when the node itself is behind (CPU-bound), every
    queue grows while every client reads. Cutting those would turn late messages into lost
    ones, so a client is cut only if, at two checks in a row, the kernel is also holding
    unsent bytes for it: it is the reader that is slow."""
    server = socketio.server
    eio = server.eio

    def watch() -> None:
        suspects: set[str] = set()
        while True:
            socketio.sleep(interval)
            stuck = set()
            for eio_sid, sock in list(eio.sockets.items()):
                if (
                    sock.queue.qsize() > limit
                    and (_unsent_bytes(server.environ.get(eio_sid)) or 0) > STUCK_UNSENT_BYTES
                ):
                    stuck.add(eio_sid)
            for eio_sid in stuck & suspects:
                log.warning("event=slow_client_disconnected eio_sid=%s", eio_sid)
                with contextlib.suppress(Exception):  # it may be closing already
                    eio.disconnect(eio_sid)
            suspects = stuck - suspects

    socketio.start_background_task(watch)
