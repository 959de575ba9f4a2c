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
import socket
import struct
import termios
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import parse_qs

from flask_socketio import SocketIO
from socketio.exceptions import ConnectionRefusedError as Refused

from .auth import identify
from .fanout import DirectWriter, RoomFanout, tcp_socket
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
from .service import ChatService

log = logging.getLogger(__name__)

_wants_ack: contextvars.ContextVar[bool] = contextvars.ContextVar("wants_ack", default=True)
# Work an event's handler leaves for after its answer is on its way (a join's hand-over).
_after_answer: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "after_answer", default=None
)


CLOSE_GRACE = 1.0  # seconds a client disconnected by the server has to close its transport


def _socketio_room(room: str) -> str:
    """Socket.IO's own room for a chat room; '/' cannot occur in a chat room or a sid."""
    return "r/" + room


class SocketIOEmitter:
    """ChatService's Emitter over python-socketio's rooms on this node, sent through the
    fan-out (framed once, written directly)."""

    def __init__(self, socketio: SocketIO, writer: DirectWriter | None) -> None:
        self._socketio = socketio
        self._fanout = RoomFanout(socketio.server, writer)

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


def _track_answers(server: Any) -> None:
    """Record per event whether the client sent an ack id (python-socketio keeps it
    private), and run what the handler left for after its answer: python-socketio hands
    the ACK packet to engine.io before `original` returns, so what runs then is sent after it."""
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


def after_answer(call: Callable[[], None]) -> None:
    """Run `call` once the current event's answer has been handed to the transport."""
    pending = _after_answer.get()
    if pending is None:  # not inside an event (never the case for registered handlers)
        call()
    else:
        pending.append(call)


def register_events(socketio: SocketIO, service: ChatService) -> None:
    """Handlers go on python-socketio's server itself: Flask-SocketIO's wrapper would build a
    Flask request context and session for every event, and none of them reads either."""
    sio = socketio.server
    _track_answers(sio)
    max_bytes = service.settings.max_message_bytes

    def answer(sid: str, event: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        try:
            return call()
        except ChatError as exc:
            error = exc
        except Exception:
            log.exception("event=handler_failed handler=%s sid=%s", event, sid)
            error = ChatError(ErrorCode.INTERNAL, "the server failed to handle this event")
        if _wants_ack.get():
            return {"ok": False, "error": error.to_wire()}
        sio.emit("error", {**error.to_wire(), "event": event}, to=sid)
        return None

    @sio.on("connect")
    def on_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        try:
            identity = identify(auth, query.get("username", [None])[0], service.settings.auth_secret)
        except ChatError as exc:
            log.info("event=connect_refused code=%s", exc.code)
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
                after_ack=after_answer,
            ),
        )

    @sio.on("open_direct")
    def on_open_direct(sid: str, payload: Any = None, *_: Any) -> dict[str, Any] | None:
        return answer(
            sid, "open_direct", lambda: service.open_direct(sid, parse(OpenDirectRequest, payload), after_answer)
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
            lambda: service.send(sid, parse(SendRequest, payload, max_message_bytes=max_bytes)),
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


STUCK_UNSENT_BYTES = 16 * 1024


def _unsent_bytes(sock: Any) -> int | None:
    """Bytes the kernel still holds for a client: they pile up only when the client stops
    reading (its TCP window is closed)."""
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
    unsent bytes for it: it is the reader that is slow.

    The cut shuts the TCP connection down rather than closing the engine.io socket, which
    would wait for the stuck queue to drain (forever, and this watch with it). The
    connection's own greenlets then see it end and clean up as for any disconnect."""
    server = socketio.server
    eio = server.eio

    def watch() -> None:
        suspects: set[str] = set()
        while True:
            socketio.sleep(interval)
            try:
                suspects = check(suspects)
            except Exception:  # a surprise in one round must not end the watch
                log.exception("event=slow_client_watch_failed")

    def check(suspects: set[str]) -> set[str]:
        stuck: dict[str, Any] = {}
        for eio_sid, sock in list(eio.sockets.items()):
            tcp = tcp_socket(server.environ.get(eio_sid)) if sock.queue.qsize() > limit else None
            if tcp is not None and (_unsent_bytes(tcp) or 0) > STUCK_UNSENT_BYTES:
                stuck[eio_sid] = tcp
        for eio_sid in suspects & stuck.keys():
            log.warning("event=slow_client_disconnected eio_sid=%s", eio_sid)
            with contextlib.suppress(OSError):  # it may be gone already
                stuck[eio_sid].shutdown(socket.SHUT_RDWR)
        return stuck.keys() - suspects

    socketio.start_background_task(watch)
