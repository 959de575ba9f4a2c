"""Less memory per idle websocket connection under gevent: 58 -> 30 KiB of RSS (W3), 13
with chat_app.transport.idle_reader.

Where an idle joined connection's ~59 KiB went (measured; bench/README.md, "Idle
connection memory"): engine.io keeps three greenlets per websocket connection - the WSGI
handler that reads frames, a writer that waits on the socket's packet queue, and a ping
task that sleeps `ping_interval`. On CPython 3.11 a blocked greenlet keeps its saved C
stack (6.3 KiB for the handler, 2.5 KiB each for the others) and its own 16 KiB frame
data-stack chunk, of which every page it ever touched stays resident (8 KiB for the
handler, 4 KiB each for the others), plus its Greenlet object with a captured spawning
stack. pywsgi keeps an 8 KiB read buffer and the parsed request headers per connection,
gevent's queue three deques per socket. Under gevent, `install` changes that:

- pings come from one scheduler per node instead of a sleeping greenlet per socket: a FIFO
  of (due, socket), due times being `now + ping_interval` in scheduling order, served by one
  greenlet that wakes at most every PING_TICK and sends every ping due by then (at 20,000
  connections 800 pings a second are due: a wake each, and a writer greenlet each, were a
  third of an idle node's busy time at 19,000; bench/README.md, W6).
  Same protocol as `Socket._send_ping`: after `ping_interval` (late by up to PING_TICK) the
  server sends PING and stamps `last_ping`; the client's PONG schedules the next one
  (`Socket.schedule_ping`). With chat_app.fanout's direct writer, PINGs are written to the
  socket without waking a writer greenlet for each. (chat_app.fanout's writes do not check
  `ping_timeout` on the way, so a close never runs on the greenlet that was sending.)
- engine.io's service task, which closes a socket whose PONG is more than `ping_timeout`
  late (`Socket.check_ping_timeout`), checks each socket once per `ping_timeout` as
  upstream, but a share of them every SERVICE_TICK instead of one socket per wake
  (`ping_timeout / sockets` apart: ~1,000 wakes a second at 20,000 connections).
- a socket's writer runs only while its queue has packets: a put starts it, and it ends
  after `WRITER_LINGER` seconds with nothing to send. One writer at a time per socket and a
  FIFO queue: packet order is kept. A client that stops reading still grows
  `sock.queue.qsize()` (read by `watch_slow_clients`). chat_app.fanout writes most frames
  without any writer; the queue gets what the kernel did not take at once, pings, closes.
- each socket gets a `PacketQueue`, which holds a deque only while packets are queued; the
  queues that held packets since the last look are known (`LeanWebsockets.longest_queue`),
  so chat_app.transport.slow_clients need not read all 20,000 queues every second.
- frames are read straight from the socket (`SocketReader`: no buffer kept between
  messages, no C-level call back into Python while blocked), and pywsgi forgets the parsed
  headers (the WSGI environ, which Socket.IO keeps, has them).
- what engine.io queued before the websocket was ready (a connect's OPEN packet) is sent
  from the connection's greenlet before its receive loop, with the handshake's 101
  response in the same send (chat_app.transport.handshake): no writer greenlet per connect.
- Socket.IO connects (the app's connect handler) run in a short-lived greenlet, events are
  spawned with `gevent.spawn` itself, and the receive loop calls `ws.wait()` inline: the
  handler greenlet's frames then stay within the first 4 KiB page of its data stack
  (measured: the deepest regular path, a frame read, ends ~160 bytes short of it). Each
  Python frame added under the receive loop costs 100-200 bytes of that; past the page an
  idle connection costs 4 KiB more again, nothing else. This matters only where the
  connection keeps its greenlet: under gunicorn's gevent-websocket worker, once the
  websocket is set up, chat_app.transport.idle_reader takes it from that greenlet (which
  ends) and reads it from a hub watcher, one turn of the receive loop (`_receive_one`) at
  a time: 25.9 -> 12.7 KiB per idle connection (bench/memprobe.py, 2,000 connections).
- gevent's greenlet-tree tracking (a captured spawning stack per Greenlet) and logging's
  thread lookup (`logging.logThreads`: a LogRecord made in a greenlet creates a
  threading._DummyThread that lives as long as the greenlet) are turned off; no chat_app or
  gunicorn log format prints the thread.

Other async modes (the tests' threading mode) are left alone, and so is everything on
versions other than the pinned ones (chat_app.versions) this copies from and was measured with:
`_websocket_handler` is `Socket._websocket_handler` of python-engineio 4.15.1 with the
writer changed.
"""

from __future__ import annotations

import collections
import io
import logging
import math
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import engineio.socket
import gevent
import gevent.event
import gevent.queue
from engineio import exceptions, packet
from engineio.socket import Socket
from geventwebsocket.websocket import WebSocket

from . import frames, handshake
from .conformance import PROBE_ANSWERED
from .delays import DelayQueue
from .fanout import text_frame
from .idle_reader import IdleReader

log = logging.getLogger(__name__)

WRITER_LINGER = 1.0  # seconds an idle writer waits for more before it ends
PING_TICK = 0.1  # seconds: pings due within one tick go out together
SERVICE_TICK = 1.0  # seconds between the ping-timeout checks of a share of the sockets
READ_BUFFER = 512  # bytes asked of recv at least; one recv still takes a chat message's whole frame

_ATTR = "_chat_lean_websockets"
_original_schedule_ping = Socket.schedule_ping
_original_websocket_handler = Socket._websocket_handler


class PacketQueue:
    """A socket's outgoing packets: what engine.io uses of gevent's JoinableQueue (put,
    get with block/timeout, task_done, join, qsize), plus `on_put`, called after each put.
    Greenlets only: nothing here is thread-safe."""

    __slots__ = ("__weakref__", "_all_done", "_backlog", "_getters", "_items", "_readable", "_unfinished", "on_put")

    def __init__(self, backlog: weakref.WeakSet[PacketQueue] | None = None) -> None:
        self._backlog = backlog  # told of this queue whenever it stops being empty
        self._items: collections.deque[Any] | None = None  # only while non-empty
        self._unfinished = 0
        self._getters = 0
        self._readable: gevent.event.Event | None = None  # from a wait until one times out
        self._all_done: gevent.event.Event | None = None  # only while join waits
        self.on_put: Callable[[], None] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items is not None else 0

    def empty(self) -> bool:
        return self._items is None

    def peek(self) -> list[Any]:
        """The packets waiting, oldest first, left in the queue."""
        return list(self._items) if self._items is not None else []

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if self._items is None:
            self._items = collections.deque()
            if self._backlog is not None:
                self._backlog.add(self)
        self._items.append(item)
        self._unfinished += 1
        if self._readable is not None:
            self._readable.set()
        if self.on_put is not None:
            self.on_put()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._items is None:
            if not block:
                raise gevent.queue.Empty
            self._wait_for_item(timeout)
        assert self._items is not None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item

    def _wait_for_item(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._readable is None:
            self._readable = gevent.event.Event()
        readable = self._readable
        self._getters += 1
        try:
            while self._items is None:
                readable.clear()  # another getter may have taken what woke us
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    if self._getters == 1:
                        self._readable = None  # idle: the next wait makes a new one
                    raise gevent.queue.Empty
                readable.wait(remaining)
        finally:
            self._getters -= 1

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if not self._unfinished and self._all_done is not None:
            self._all_done.set()
            self._all_done = None

    def join(self, timeout: float | None = None) -> bool:
        if not self._unfinished:
            return True
        if self._all_done is None:
            self._all_done = gevent.event.Event()
        return self._all_done.wait(timeout)


def _socket_send(sock: Socket, pkt: packet.Packet) -> None:
    sock.send(pkt)


class PingScheduler:
    """Sends every socket's PING `ping_interval` after it was scheduled (up to PING_TICK
    later), from one greenlet; through `send` (socket, packet) when given, else Socket.send."""

    def __init__(self, server: Any, send: Callable[[Socket, packet.Packet], None] | None = None) -> None:
        self._server = server
        self._send = send or _socket_send
        self._due: DelayQueue[Socket] = DelayQueue(server, self._ping_due, gevent.event.Event, "ping", PING_TICK)

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, sock: Socket) -> None:
        # Socket.schedule_ping's contract: only once the previous ping cycle completed.
        if not sock.last_ping:
            return
        sock.last_ping = None
        self._due.add(sock, self._server.ping_interval)

    def _ping_due(self, sock: Socket, due: float) -> None:
        self._ping(sock, time.time() - (time.monotonic() - due))

    def _ping(self, sock: Socket, due: float) -> None:
        # Socket._send_ping after its sleep. `last_ping` is when the ping was due, not when
        # the tick sent it: the pong is then late `ping_timeout` after `ping_interval`, as
        # the protocol says, not up to PING_TICK later (a polling request at that moment is
        # refused 400, as the official protocol suite expects).
        if not sock.closing and not sock.closed:
            sock.last_ping = due
            pkt = packet.Packet(packet.PING)
            self._send(sock, pkt)


def _service_task(server: Any) -> None:
    """engine.io's Server._service_task (4.15.1), checking a share of the sockets each
    SERVICE_TICK: every socket is still checked once per `ping_timeout`."""
    server.service_task_event = server.create_event()
    pending: list[Socket] = []
    share = 1
    while not server.service_task_event.wait(timeout=SERVICE_TICK):
        if not pending:
            pending = list(server.sockets.values())
            share = max(1, math.ceil(len(pending) * SERVICE_TICK / server.ping_timeout))
        for _ in range(min(share, len(pending))):
            s = pending.pop()
            try:
                if s.closed:
                    if server.sockets.get(s.sid) is s:
                        del server.sockets[s.sid]
                elif not s.closing:
                    s.check_ping_timeout()
            except Exception:
                server.logger.exception("service task exception")


class _Writer:
    """Writes a socket's queued packets to its websocket, in order, from a greenlet that
    exists only while there is something to send: upstream's writer loop, whose queue wait
    ends the greenlet after `linger` seconds instead of closing the connection."""

    def __init__(self, sock: Socket, ws: Any, linger: float) -> None:
        self.sock = sock
        self.ws = ws
        self.linger = linger
        self.task: Any = None
        self.finished = False  # the websocket is closed: never start again
        self.on_finished: Callable[[], None] | None = None  # told once it closed the websocket

    def wake(self) -> None:
        if self.task is None and not self.finished:
            log.debug("event=writer_started sid=%s", self.sock.sid)
            self.task = self.sock.server.start_background_task(self._run)

    def join(self) -> None:
        if self.task is not None:
            self.task.join()

    def _run(self) -> None:
        try:
            while True:
                packets = self._take()
                if packets is None:  # idle: end; the next put starts a new writer
                    return
                if not packets:  # None was queued: the socket is closing
                    break
                try:
                    for pkt in packets:
                        self.ws.send(pkt.encode())
                except Exception:
                    break
            self.finished = True
            self.ws.close()
            if self.on_finished is not None:
                self.on_finished()
        finally:
            self.task = None  # no switch since the queue said idle: a put now starts anew

    def _take(self) -> list[Any] | None:
        """Socket.poll with a `linger` timeout: None when idle that long, [] at the end."""
        queue = self.sock.queue
        try:
            packets = [queue.get(timeout=self.linger)]
            queue.task_done()
        except gevent.queue.Empty:
            return None
        if packets == [None]:
            return []
        while True:
            try:
                pkt = queue.get(block=False)
                queue.task_done()
                if pkt is None:
                    queue.put(None)
                    break
                packets.append(pkt)
            except gevent.queue.Empty:
                break
        return packets


class SocketReader:
    """What gevent-websocket reads frames through (`Stream.read`), reading the socket itself
    instead of through pywsgi's io.BufferedReader: a read blocks in Python frames only (the
    buffered reader's C code calls back into Python for every refill, one more interpreter
    loop on the C stack that an idle connection's greenlet keeps saved, ~750 bytes), and no
    buffer is held between messages. Same contract as BufferedReader.read(n): `n` bytes, or
    fewer at end of stream; the socket's timeout and errors propagate."""

    __slots__ = ("_pending", "_recv")

    def __init__(self, sock: Any, pending: bytes = b"") -> None:
        self._recv = sock.recv
        self._pending = pending  # read from the socket, not yet asked for

    def read(self, n: int) -> bytes:
        data = self._pending
        if len(data) < n:
            parts = [data] if data else []
            have = len(data)
            while have < n:
                chunk = self._recv(max(n - have, READ_BUFFER))
                if not chunk:
                    break
                parts.append(chunk)
                have += len(chunk)
            data = b"".join(parts)
        self._pending = data[n:]
        return data[:n]

    def buffered(self) -> bool:
        """Whether bytes read from the socket wait to be asked for."""
        return bool(self._pending)


def _slim_handler(ws: Any) -> SocketReader | None:
    """pywsgi's per-connection handler, once the connection is a websocket: frames are read
    straight from the socket (SocketReader), pywsgi's read buffer shrinks to one byte, and
    the parsed request headers are forgotten.

    Whatever pywsgi's reader already holds (a client waits for the server's OPEN packet
    before it sends, so nothing, in practice) is handed to the SocketReader: a peek with the
    socket non-blocking tells without waiting. Re-running BufferedReader.__init__ on the
    same raw socket frees the old buffer and keeps every reference to the reader (pywsgi's
    Input) valid. pywsgi reads `headers` only while parsing the request; gevent-websocket
    not at all. Returns the SocketReader, or None when the handler is not pywsgi's."""
    handler = getattr(getattr(_websocket_of(ws), "stream", None), "handler", None)
    if handler is None:
        return None
    vars(handler).pop("headers", None)  # back to WSGIHandler's class-level empty headers
    rfile = getattr(handler, "rfile", None)
    sock = getattr(handler, "socket", None)
    if type(rfile) is not io.BufferedReader or sock is None:
        return None
    timeout = sock.gettimeout()
    try:
        sock.settimeout(0.0)
        pending = rfile.peek(1)
        pending = rfile.read(len(pending)) if pending else b""
    except Exception:
        return None
    finally:
        sock.settimeout(timeout)
    rfile.__init__(rfile.raw, 1)  # type: ignore[misc]
    reader = SocketReader(sock, pending)
    websocket = ws._sock
    websocket.stream.read = websocket.raw_read = reader.read
    return reader


def _websocket_of(ws: Any) -> Any:
    """gevent-websocket's WebSocket under engine.io's wrapper (None for other servers)."""
    return getattr(ws, "_sock", None)


def _send_queued(sock: Socket, ws: Any) -> None:
    """Send what engine.io queued before the websocket was ready (a connect's OPEN packet)
    from the connection's greenlet, before its receive loop: no writer greenlet is started
    for it (one per connect, lingering WRITER_LINGER, was 3-9 % of a connect's CPU), and the
    first frame carries the held 101 response (chat_app.transport.handshake), framed here
    and handed to the held write itself: the fewest frames on this greenlet's data stack,
    whose deepest page stays resident for the connection's lifetime. A packet leaves the
    queue once sent, so the direct writer queues behind it meanwhile. A close (None) and
    what follows it stay for the writer; so does the rest after a failed send, whose socket
    the receive loop then finds closed."""
    queue = sock.queue
    websocket = _websocket_of(ws)
    try:
        while (waiting := queue.peek()) and waiting[0] is not None:
            encoded = waiting[0].encode()
            held = handshake.held_write(websocket)
            if held is not None and isinstance(encoded, str):
                held(text_frame(encoded.encode()))
            else:
                ws.send(encoded)
            queue.get(block=False)
            queue.task_done()
        handshake.send_now(websocket)  # nothing was queued: the 101 alone
    except Exception as e:
        sock.server.logger.info('%s: Unexpected error "%s" while sending, closing connection', sock.sid, str(e))


def _schedule_ping(sock: Socket) -> None:
    lean: LeanWebsockets | None = getattr(sock.server, _ATTR, None)
    if lean is None:
        _original_schedule_ping(sock)
    else:
        lean.pings.schedule(sock)


def _receive(sock: Socket, ws: Any) -> Any:
    """The next message, refused off its frame header past `max_http_buffer_size`
    (chat_app.transport.frames) when the websocket is gevent-websocket's."""
    limit = sock.server.max_http_buffer_size
    if isinstance(_websocket_of(ws), WebSocket):
        return frames.receive(ws, limit, sock.sid)
    data = ws.wait()
    if data and len(data) > limit:
        raise ValueError("packet is too large")
    return data


def _upgrade(sock: Socket, ws: Any) -> bool:
    """The polling -> websocket upgrade of Socket._websocket_handler (4.15.1)."""
    server = sock.server
    sock.upgrading = True  # hold packet sends during the upgrade
    pkt = _receive(sock, ws)
    decoded_pkt = packet.Packet(encoded_packet=pkt)
    if decoded_pkt.packet_type != packet.PING or decoded_pkt.data != "probe":
        server.logger.info("%s: Failed websocket upgrade, no PING packet", sock.sid)
        sock.upgrading = False
        return False
    ws.send(packet.Packet(packet.PONG, data="probe").encode())
    sock.queue.put(packet.Packet(packet.NOOP))  # end poll
    setattr(sock, PROBE_ANSWERED, True)  # a poll from now on waits for the UPGRADE (conformance)
    pkt = _receive(sock, ws)
    decoded_pkt = packet.Packet(encoded_packet=pkt)
    if decoded_pkt.packet_type != packet.UPGRADE:
        sock.upgraded = False
        server.logger.info("%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead.", sock.sid, pkt)
        sock.upgrading = False
        return False
    sock.upgraded = True
    sock.upgrading = False
    return True


def _websocket_handler(sock: Socket, ws: Any) -> list[Any]:
    """Socket._websocket_handler of python-engineio 4.15.1 with an on-demand writer, whose
    receive loop runs without this greenlet once it can (chat_app.transport.idle_reader)."""
    lean: LeanWebsockets | None = getattr(sock.server, _ATTR, None)
    if lean is None:
        handshake.send_now(_websocket_of(ws))  # upstream's handler may wait for the client first
        return _original_websocket_handler(sock, ws)
    server = sock.server
    for attr in ["_sock", "socket"]:
        if hasattr(ws, attr) and hasattr(getattr(ws, attr), "settimeout"):
            getattr(ws, attr).settimeout(server.ping_interval + server.ping_timeout)
    if sock.connected:  # the socket was already connected, so this is an upgrade
        handshake.send_now(_websocket_of(ws))  # the client sends its probe once it has the 101
        if not _upgrade(sock, ws):
            return []
    else:
        sock.connected = True
        sock.upgraded = True

    # The differences from upstream: a slimmer pywsgi handler, no writer greenlet for the
    # connection's lifetime, what was queued before (the OPEN packet) sent from here, and
    # (idle_reader) no greenlet reading it while it is idle.
    reader = _slim_handler(ws)
    writer = _Writer(sock, ws, lean.writer_linger)
    _send_queued(sock, ws)
    sock.queue.on_put = writer.wake
    if sock.queue.qsize():
        writer.wake()
    server.logger.info("%s: Upgrade to websocket successful", sock.sid)
    if lean.idle is not None and lean.idle.detach(sock, ws, writer, reader):
        return []  # this greenlet ends; the socket stays open (idle_reader)
    while _receive_one(sock, ws, lean):
        pass
    _close_session(sock, writer)
    return []


def _receive_one(sock: Socket, ws: Any, lean: LeanWebsockets) -> bool:  # noqa: PLR0911, PLR0912 (upstream's shape)
    """One turn of Socket._websocket_handler's receive loop (4.15.1): read one message and
    dispatch it; False when the connection is over."""
    server = sock.server
    max_size = server.max_http_buffer_size
    try:
        # _receive, inlined; frames refused off their header (gevent-websocket's)
        p = frames.receive(ws, max_size, sock.sid) if isinstance(_websocket_of(ws), WebSocket) else ws.wait()
        if p and len(p) > max_size:
            raise ValueError("packet is too large")
    except Exception as e:
        if not sock.closed:
            server.logger.info('%s: Unexpected error "%s", closing connection', sock.sid, str(e))
        return False
    if p is None:
        return False  # connection closed by client
    if p == "3":  # PONG: Socket.receive's branch without the decode and its INFO log call
        lean.pings.schedule(sock)
        return True
    try:
        pkt = packet.Packet(encoded_packet=p)
        if pkt.packet_type == packet.MESSAGE:
            refusal = lean.shed(pkt.data) if lean.shed is not None else None
            if refusal is not None:  # chat_app.transport.shedding
                lean.send(sock, packet.Packet(packet.MESSAGE, data=refusal))
                return True
            # Socket.receive's branch (less its INFO log, off in chat_app), and
            # _trigger_event's run_handler inlined: two frames less under every event
            # dispatch (python-socketio runs engine.io's handlers inline, its events in
            # greenlets of their own).
            handler = server.handlers.get("message")
            if handler is None or server.async_handlers:
                server._trigger_event("message", sock.sid, pkt.data, run_async=server.async_handlers)
            else:
                try:
                    handler(sock.sid, pkt.data)
                except Exception:
                    server.logger.exception("message handler error")
        else:
            sock.receive(pkt)
    except exceptions.UnknownPacketError:
        pass
    except exceptions.SocketIsClosedError:
        server.logger.info("Receive error -- socket is closed")
        return False
    except Exception:
        server.logger.exception("Unknown receive error")
        return False
    return True


def _close_session(sock: Socket, writer: _Writer) -> None:
    """The receive loop's end: what is queued goes out, the websocket and session close."""
    sock.queue.put(None)  # starts the writer if idle: it sends what is left, closes ws
    writer.join()
    sock.close(wait=False, abort=True, reason=sock.server.reason.TRANSPORT_CLOSE)


class LeanWebsockets:
    """What `install` attaches to one engine.io server."""

    def __init__(self, server: Any, writer_linger: float, send: Callable[[Socket, packet.Packet], None] | None) -> None:
        self.send: Callable[[Socket, packet.Packet], None] = send or _socket_send
        self.pings = PingScheduler(server, self.send)
        self.writer_linger = writer_linger
        # Given a Socket.IO packet's text, the packet that refuses it at once, or None.
        self.shed: Callable[[object], str | None] | None = None
        self.backlog: weakref.WeakSet[PacketQueue] = weakref.WeakSet()  # queues that held packets
        # Idle websockets without a greenlet (chat_app.transport.idle_reader); None: each
        # connection's greenlet reads it for its lifetime.
        self.idle: IdleReader | None = None

    def read_idle(self) -> IdleReader:
        """Read idle websockets from the hub (idle_reader) from now on."""
        if self.idle is None:
            self.idle = IdleReader(partial(_receive_one, lean=self), _close_session)
        return self.idle

    def longest_queue(self) -> int:
        """The most packets any socket's queue holds; forgets the queues found empty."""
        longest = 0
        for queue in list(self.backlog):
            size = queue.qsize()
            if size:
                longest = max(longest, size)
            else:
                self.backlog.discard(queue)
        return longest


def _connect_in_own_greenlet(sio: Any) -> None:
    """Run Socket.IO connects (the app's connect handler: a Flask request context, Redis)
    in a short-lived greenlet that the connection's greenlet waits for: same order and
    outcome, but their deep frames no longer touch the connection greenlet's data stack,
    whose pages stay resident for the connection's lifetime."""
    handle_connect = sio._handle_connect

    def in_own_greenlet(eio_sid: str, namespace: str | None, data: Any) -> Any:
        return gevent.spawn(handle_connect, eio_sid, namespace, data).get()

    sio._handle_connect = in_own_greenlet
    # What engine.io's start_background_task makes under gevent (a Greenlet), without its
    # two Python frames under every event the connection's greenlet dispatches.
    sio.start_background_task = gevent.spawn


def install(
    sio: Any, writer_linger: float = WRITER_LINGER, send: Callable[[Socket, packet.Packet], None] | None = None
) -> LeanWebsockets | None:
    """Apply all of the above to a python-socketio server and its engine.io server under
    gevent (chat_app.transport checks the versions first); `send` writes a PING (the
    direct writer). None when not installed."""
    eio = sio.eio
    if eio.async_mode != "gevent":
        return None
    installed: LeanWebsockets | None = getattr(eio, _ATTR, None)
    if installed is not None:
        return installed
    gevent.config.track_greenlet_tree = False
    logging.logThreads = False
    lean = LeanWebsockets(eio, writer_linger, send)
    eio.create_queue = partial(PacketQueue, lean.backlog)
    eio._service_task = partial(_service_task, eio)
    setattr(eio, _ATTR, lean)
    _connect_in_own_greenlet(sio)
    engineio.socket.Socket.schedule_ping = _schedule_ping  # type: ignore[method-assign]
    engineio.socket.Socket._websocket_handler = _websocket_handler  # type: ignore[method-assign]
    handshake.install()  # every engine.io websocket runs the handler above, which sends the 101
    return lean
