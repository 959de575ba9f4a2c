"""Socket.IO sends written straight to the clients' websockets.

python-socketio hands each packet to the socket's engine.io queue, and a writer greenlet
per socket frames it and sends it: per delivery a queue hand-off, a greenlet switch,
gevent-websocket's frame building and two syscalls. That was a third of a node's CPU under
fan-out load. Here a room message is framed once for all its members, and every send of
the node (room messages, acks) waits only until the running greenlet yields; then each
socket gets all of its frames in one non-blocking send(). Presence events may wait longer,
up to PRESENCE_LINGER, while their socket is told of a storm of them (DirectWriter._lingers).

Order is kept with what engine.io still queues itself (pings, close): a direct write
happens only while that socket's queue is empty and its writer is not half-way through a
frame. Otherwise, and for whatever the kernel did not take at once, the (rest of the)
frames join the queue as one pre-framed packet, so a slow reader still backs up there,
where the slow-client watch sees it. Sockets that are not plain websockets (long-polling,
TLS terminated by the worker itself, the test client) get python-socketio's own path.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.socket
import gevent.ssl
import orjson
from engineio import packet as eio_packet
from engineio.async_drivers import gevent as eio_gevent
from geventwebsocket.websocket import Header
from socketio import packet as sio_packet
from wsaccel.xormask import XorMaskerSimple

from .. import json_codec

log = logging.getLogger(__name__)

NAMESPACE = "/"


def tcp_socket(environ: dict[str, Any] | None) -> Any:
    """A gevent-websocket client's TCP socket, or None (long-polling, or gone)."""
    ws = environ.get("wsgi.websocket") if environ else None
    return getattr(getattr(ws, "handler", None), "socket", None)


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final websocket text frame (RFC 6455 5.2), as a server sends them."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x81, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class Framed(bytes):
    """Bytes that are already websocket frame data: written as they are."""


class FramedPacket(eio_packet.Packet):
    """A MESSAGE whose websocket frame (or the unsent rest of one) is already built."""

    def __init__(self, frame: bytes) -> None:
        super().__init__(eio_packet.MESSAGE, "<framed>")
        self.frame = Framed(frame)

    def encode(self, b64: bool = False) -> Framed:  # type: ignore[override]
        return self.frame


class FramedWebSocket(eio_gevent.WebSocketWSGI):
    """engine.io's gevent-websocket wrapper, which also tells the fan-out when it may write
    to the socket itself (`busy`) and passes pre-framed packets through unframed."""

    busy = False
    raw: Any = None  # the plain gevent socket; None when the worker terminates TLS itself

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        sock = tcp_socket(environ)
        if isinstance(sock, gevent.socket.socket) and not isinstance(sock, gevent.ssl.SSLSocket):
            self.raw = sock
        self.app.__self__.chat_ws = self  # app is the engine.io socket's bound handler
        # WebSocketWSGI.__call__ (python-engineio 4.15.1, gevent-websocket), inlined: the
        # connection's receive loop runs under this call, one frame less under it.
        if "wsgi.websocket" not in environ:
            raise RuntimeError("The gevent-websocket server is not configured appropriately.")
        self._sock = ws = environ["wsgi.websocket"]
        self.environ = environ
        self.version = ws.version
        self.path = ws.path
        self.origin = ws.origin
        self.protocol = ws.protocol
        return self.app(self)

    def send(self, message: Any) -> Any:
        self.busy = True
        try:
            if isinstance(message, Framed):
                ws = self._sock
                if ws.closed:
                    raise ConnectionError("websocket closed")
                return ws.raw_write(message)
            return super().send(message)
        finally:
            self.busy = False

    def write_now(self, frame: bytes) -> int:
        """Bytes of `frame` the kernel took without waiting; -1 if the socket is gone."""
        if self.raw is None:
            return 0
        try:
            return self.raw._sock.send(frame)  # gevent's own send would wait for room
        except (BlockingIOError, AttributeError):  # AttributeError: not the gevent socket we know
            return 0
        except OSError:
            return -1


@dataclass
class WriteCounters:
    direct: int = 0  # frames written straight to the socket
    queued: int = 0  # frames (or their rest) that waited in engine.io's queue
    writes: int = 0  # send calls made for the direct frames (frames / writes: frames per send)


class DirectWriter:
    """engine.io's `send_packet` for plain websockets. A burst the listener takes from
    Redis costs each socket one syscall, not one per message."""

    def __init__(self, eio: Any, linger: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        """`linger`: seconds a frame sent with `linger=True` may wait for others due to
        the same socket (0: it waits for the flush like any other)."""
        self._eio = eio
        self._clock = clock
        self._loop = loop = gevent.get_hub().loop
        self._at_yield = loop.run_callback  # runs once the greenlet yields
        self._pending: dict[Any, list[bytes]] = {}  # engine.io socket -> frames, in order
        # Frames that may wait until the linger's timer; a socket is in one of the two dicts
        # at most (a frame that may not wait takes the socket's lingering ones with it).
        self._lingering: dict[Any, list[bytes]] = {}
        self._linger = linger
        self._timer: Any = None  # the linger's timer while frames linger
        # Sockets sent a lingering frame in this linger's window and in the one before.
        self._seen: set[Any] = set()
        self._seen_before: set[Any] = set()
        self._window_ends = 0.0
        self.counters = WriteCounters()

    def send_packet(self, eio_sid: str, pkt: eio_packet.Packet, frame: bytes = b"", linger: bool = False) -> None:
        """`frame`, when given, is `pkt` already framed (built once for a whole room).
        `linger`: the frame may wait up to the writer's linger for more frames to the same
        socket, and go out with them in one send, when such frames come that often
        (`_lingers`)."""
        sock = self._eio.sockets.get(eio_sid)
        if getattr(sock, "chat_ws", None) is None or not sock.upgraded or sock.upgrading or pkt.binary:
            if sock is None or sock.closed:
                return
            frames = self._pending.pop(sock, None) or self._lingering.pop(sock, None)
            if frames:  # frames waiting for the flush go first: this packet must not overtake them
                sock.queue.put(FramedPacket(b"".join(frames)))
            # Into the queue, not through Socket.send: its ping-timeout check may close the
            # socket, and so run the disconnect handler and its Redis calls, on the caller's
            # greenlet (the listener, under the service lock). engine.io's service task
            # checks ping timeouts for every socket anyway.
            sock.queue.put(pkt)
            return
        if sock.closed or sock.closing:
            return
        frame = frame or text_frame(pkt.encode().encode())
        frames = self._pending.get(sock)
        if frames is None:
            if linger and self._linger > 0 and self._lingers(sock):
                self._linger_frame(sock, frame)
                return
            if not self._pending:
                self._at_yield(self.flush)
            # What lingered for this socket goes first, in this flush's send.
            frames = self._pending[sock] = self._lingering.pop(sock, None) or []
        frames.append(frame)

    def send_ack(self, eio_sid: str, ack_id: int, answer: dict[str, Any]) -> None:
        """The ACK python-socketio would encode for `answer` on the default namespace
        (`43<id>[<answer>]`), framed here: its packet objects, the scan of the answer for
        binary data (an answer is JSON: it holds none) and the engine.io hop cost ~130,000
        of a join's ~700,000 instructions (callgrind)."""
        text = f"43{ack_id}[{json_codec.dumps(answer)}]"
        self.send_packet(eio_sid, eio_packet.Packet(eio_packet.MESSAGE, text[1:]), text_frame(text.encode()))

    def _lingers(self, sock: Any) -> bool:
        """A lingering frame waits when the socket was sent one within the last one to two
        lingers (a join storm in its room): the first of a quiet spell goes at once, so an
        occasional presence event is not delayed, and a storm's are gathered."""
        now = self._clock()
        if now >= self._window_ends:
            self._seen_before = self._seen if now < self._window_ends + self._linger else set()
            self._seen = set()
            self._window_ends = now + self._linger
        recent = sock in self._lingering or sock in self._seen or sock in self._seen_before
        self._seen.add(sock)  # a frame joining a linger counts too: the storm goes on
        return recent

    def _linger_frame(self, sock: Any, frame: bytes) -> None:
        frames = self._lingering.get(sock)
        if frames is None:
            if not self._lingering:
                # A fresh timer per linger: libev's, started again once it fired, fires at once.
                self._timer = self._loop.timer(self._linger)
                self._timer.start(self.flush_lingering)
            frames = self._lingering[sock] = []
        frames.append(frame)

    def flush(self) -> None:
        """Runs in gevent's hub, so it never blocks: a rest is queued, not waited for."""
        pending, self._pending = self._pending, {}
        self._write_all(pending)

    def flush_lingering(self) -> None:
        """The linger's timer (in the hub, as `flush`): every lingering frame goes now."""
        lingering, self._lingering = self._lingering, {}
        self._write_all(lingering)

    def _write_all(self, pending: dict[Any, list[bytes]]) -> None:
        for sock, frames in pending.items():
            try:
                self._write(sock, frames)
            except Exception:  # one socket's failure must not cost the others their frames
                log.exception("event=write_failed sid=%s", getattr(sock, "sid", None))

    def _write(self, sock: Any, frames: list[bytes]) -> None:
        if sock.closed or sock.closing:
            return
        ws: FramedWebSocket = sock.chat_ws
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if ws.busy or sock.queue.qsize():
            sent = 0
        else:
            sent = ws.write_now(data)
            self.counters.writes += 1
        if sent == len(data):
            self.counters.direct += len(frames)
        elif sent >= 0:
            self.counters.queued += len(frames)
            sock.queue.put(FramedPacket(data[sent:]))  # unbounded: never waits


def _unmask(header: Header, payload: bytes) -> bytes:
    """gevent-websocket unmasks every client frame byte by byte in Python (232 µs for 4 KB);
    wsaccel's C masker takes 2 µs. (Its C UTF-8 check gevent-websocket finds by itself.)"""
    return XorMaskerSimple(header.mask).process(payload)


def _framed_websocket(handler: Any, server: Any) -> Callable[[dict[str, Any], Any], Any]:
    """What engine.io's `_upgrade_websocket` makes and calls: a FramedWebSocket, handed back
    as its bound `__call__`. Calling an instance from Python goes through C (another
    interpreter loop on the C stack, ~750 bytes that an idle connection's greenlet keeps
    saved for its lifetime); calling a bound method does not."""
    return FramedWebSocket(handler, server).__call__


def install(socketio_server: Any, linger: float = 0.0) -> DirectWriter | None:
    """Route this server's engine.io sends through a DirectWriter (`linger`: its linger),
    and unmask what clients send in C (gevent-websocket only; chat_app.transport checks the
    versions first)."""
    eio = socketio_server.eio
    if eio.async_mode != "gevent" or eio._async["websocket"] is not eio_gevent.WebSocketWSGI:
        return None
    eio._async = {**eio._async, "websocket": _framed_websocket}
    Header.mask_payload = Header.unmask_payload = _unmask
    writer = DirectWriter(eio, linger)
    eio.send_packet = writer.send_packet
    return writer


class RoomFanout:
    """Emits one event to this node's members of a Socket.IO room, framed once."""

    def __init__(self, socketio_server: Any, writer: DirectWriter | None) -> None:
        self._server = socketio_server
        self._writer = writer

    def emit(self, event: str, data: Any, room: str, skip: Collection[str] = (), linger: bool = False) -> None:
        """`linger`: the frames may wait for the writer's linger (DirectWriter.send_packet)."""
        if self._writer is None:
            self._server.emit(event, data, to=room, skip_sid=list(skip) or None, namespace=NAMESPACE)
            return
        # A protocol.Preencoded payload is framed as it is. Any other is a JSON dict (never
        # binary data), encoded as python-socketio's packet would encode it, without the
        # packet object and its scan for binary data (1.5 % of a connect + join's count).
        encoded = getattr(data, "json", None)
        if encoded is None:
            encoded = json_codec.dumps(data)
        text = f"{sio_packet.EVENT}[{orjson.dumps(event).decode()},{encoded}]"
        pkt = eio_packet.Packet(eio_packet.MESSAGE, text)
        members = self._server.manager.get_participants(NAMESPACE, room)
        if skip:
            members = [(sid, eio_sid) for sid, eio_sid in members if sid not in skip]
        frame = text_frame(pkt.encode().encode())
        for _sid, eio_sid in members:
            self._writer.send_packet(eio_sid, pkt, frame, linger)
