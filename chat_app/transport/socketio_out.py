"""SocketIOOut: what ChatService sends to this node's own sockets, over python-socketio.

The outbound half of Socket.IO (the handlers in chat_app/socketio_handlers.py are the
inbound half): room emits go through the fan-out (framed once, written directly), room
membership through python-socketio's rooms, and a server-side disconnect is followed by a
transport cut after CLOSE_GRACE when the client does not close by itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask_socketio import SocketIO

    from . import Transport

log = logging.getLogger(__name__)

CLOSE_GRACE = 1.0  # seconds a client disconnected by the server has to close its transport
# Events whose frames may wait PRESENCE_LINGER for more frames to the same socket (the
# direct writer's linger): in a join storm a member is told of each arrival in its room,
# one send syscall each otherwise. Any other frame to the socket takes them along at once,
# so the socket's order is kept.
LINGERING = frozenset({"presence"})


def _socketio_room(room: str) -> str:
    """Socket.IO's own room for a chat room; '/' cannot occur in a chat room or a sid."""
    return "r/" + room


class SocketIOOut:
    """ChatService's port to local sockets (`service.Emitter`) over python-socketio."""

    def __init__(self, socketio: SocketIO, transport: Transport) -> None:
        self._socketio = socketio
        self._fanout = transport.fanout
        # The cut after CLOSE_GRACE reads engine.io's socket table: pinned versions only.
        self._cut_late = transport.pinned

    def emit_room(self, event: str, data: dict[str, Any], room: str, skip: Collection[str] = ()) -> None:
        self._fanout.emit(event, data, _socketio_room(room), skip, event in LINGERING)

    def emit_to(self, sid: str, event: str, data: dict[str, Any]) -> None:
        self._fanout.emit(event, data, sid, (), event in LINGERING)  # every sid is a Socket.IO room of its own

    def enter_room(self, sid: str, room: str) -> None:
        self._socketio.server.enter_room(sid, _socketio_room(room), namespace="/")

    def leave_room(self, sid: str, room: str) -> None:
        self._socketio.server.leave_room(sid, _socketio_room(room), namespace="/")

    def disconnect(self, sid: str) -> None:
        """Socket.IO's DISCONNECT goes out behind what was emitted to the socket, and a
        client closes the transport on it; one that does not is cut after CLOSE_GRACE
        (on other versions than the pinned ones, only by its ping timeout)."""
        server = self._socketio.server
        eio_sid = server.manager.eio_sid_from_sid(sid, "/") if self._cut_late else None
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
