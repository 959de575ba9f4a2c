"""Everything chat_app changes under python-socketio, python-engineio and gevent-websocket.

- answers: run a join's hand-over after its ack; know whether an event wants an ack (any mode);
- fanout: room emits framed once, written straight to the member websockets (gevent-websocket);
- lean_websockets: fewer greenlets and smaller buffers per idle connection (gevent);
- idle_reader: no greenlet at all per idle websocket, a read watcher instead (with
  lean_websockets, under gunicorn's pool);
- slow_clients: cut a client whose queue grows because it stopped reading (engine.io queues);
- shedding: refuse sends in the receive loop while the node sheds load (with lean_websockets);
- handshake: a websocket's 101 response sent with its first frame (with lean_websockets);
- request_headers: pywsgi's request headers parsed without `email` when that changes nothing
  (gevent, Python 3.11);
- frames: websocket messages refused off their frame header past the size limit, and binary
  frames (with lean_websockets);
- conformance: the protocol's answers to malformed requests and packets, binary packets
  refused, CONNECT_TIMEOUT (any mode);
- socketio_out: SocketIOOut, what ChatService sends to this node's sockets (the outbound
  half of Socket.IO; chat_app/socketio_handlers.py is the inbound one).

Each part asks chat_app.versions first: on versions other than the pinned ones it steps
aside and python-socketio's public path runs, slower and never wrong.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .. import versions
from . import conformance, fanout, lean_websockets, request_headers
from .answers import Answers
from .conformance import ProtocolGuard
from .fanout import DirectWriter, RoomFanout
from .lean_websockets import LeanWebsockets
from .shedding import SendShedding
from .slow_clients import watch_slow_clients

log = logging.getLogger(__name__)

ENGINE = ("python-socketio", "python-engineio", "gevent", "gevent-websocket")


@dataclass
class Transport:
    server: Any  # python-socketio's server
    answers: Answers
    fanout: RoomFanout
    writer: DirectWriter | None  # None: python-socketio's own sends
    lean_websockets: LeanWebsockets | None
    guard: ProtocolGuard | None = None  # None: python-socketio's own answers, no CONNECT_TIMEOUT
    pinned: bool = False  # the installed versions are the pinned ones: private reaches allowed

    @property
    def lean(self) -> bool:
        return self.lean_websockets is not None

    def shed_sends(self, shedding: SendShedding) -> None:
        """Refuse sends in the receive loop; elsewhere ChatService refuses them itself."""
        if self.lean_websockets is not None:
            self.lean_websockets.shed = shedding.answer

    def shed_already(self, sid: str) -> bool:
        """Whether `sid`'s sends took their draw in the receive loop (a websocket): drawn
        again in ChatService, a share p would refuse 1-(1-p)^2 of them."""
        if self.lean_websockets is None or self.lean_websockets.shed is None:
            return False
        sock = self.server.eio.sockets.get(self.server.manager.eio_sid_from_sid(sid, "/"))
        return sock is not None and sock.upgraded


def install_transport(
    sio: Any, max_client_queue: int, connect_timeout: float = 10.0, presence_linger: float = 0.0
) -> Transport:
    """Apply every part that fits this server's mode and the installed versions."""
    gevent_mode = sio.eio.async_mode == "gevent"
    pinned = versions.matches("transport", *ENGINE)
    writer = fanout.install(sio, presence_linger) if gevent_mode and pinned else None
    ping = (lambda sock, pkt: writer.send_packet(sock.sid, pkt)) if writer is not None else None
    installed = lean_websockets.install(sio, send=ping) if gevent_mode and pinned else None
    # Detached websockets count against gunicorn's pool and its graceful stop (idle_reader).
    idle = installed is not None and versions.matches("idle_reader", "gunicorn")
    if idle:
        installed.read_idle()
    plain_headers = gevent_mode and pinned and request_headers.install()
    if pinned:
        watch_slow_clients(sio, max_client_queue, longest=installed.longest_queue if installed else None)
    guard = conformance.install(sio, connect_timeout) if pinned else None
    if installed is not None:
        # python-socketio's handle_request (5.18.1) only hands the request to engine.io's:
        # the middleware calls engine.io's (the guard's) at once, a frame less under every
        # websocket's receive loop (lean_websockets: the deepest dispatch stays in the first
        # data-stack page).
        sio.handle_request = sio.eio.handle_request
    transport = Transport(sio, Answers(sio, writer), RoomFanout(sio, writer), writer, installed, guard, pinned)
    log.info(
        "event=transport direct_writes=%s lean_websockets=%s answers_tracked=%s slow_client_watch=%s "
        "protocol_guard=%s bounded_frames=%s idle_reader=%s plain_headers=%s",
        writer is not None,
        transport.lean,
        transport.answers.tracked,
        pinned,
        guard is not None,
        transport.lean,
        idle,
        plain_headers,
    )
    return transport


__all__ = ["SendShedding", "Transport", "install_transport"]
