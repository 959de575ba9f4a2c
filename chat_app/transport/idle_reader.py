"""No greenlet per idle websocket: a read watcher in gevent's hub instead (issue 27 item 3).

pywsgi runs each connection in a greenlet of gunicorn's pool, and engine.io's receive loop
kept that greenlet for the websocket's lifetime, blocked in `recv`: ~4 KiB of saved C stack
and a resident 4 KiB data-stack page per idle connection (bench/README.md, "Memory per
connection"). Once the websocket is set up, `IdleReader.detach` takes the connection from
that greenlet, which then ends: a libev read watcher on the socket's descriptor starts a
short-lived greenlet when the client sends, which reads and dispatches the frames buffered
(chat_app.transport.lean_websockets' `_receive_one`, the receive loop's body: same size
refusals, PONG shortcut, shedding, handlers), and arms the watcher again when nothing is
left; a frame split across TCP segments is waited for in that greenlet.

The handler greenlet ends without anyone closing the socket:

- pywsgi's `WSGIHandler.handle` closes `handler.socket` unless it is None: it is set so;
- gevent-websocket's `run_websocket` closes `handler.websocket` unless closed, and clears
  `wsgi.websocket` in `handler.environ` (Socket.IO's environ, chat_app.transport.environ):
  a closed stand-in and a throwaway dict take their places;
- gevent's `StreamServer.do_close` closes the socket object: a socket with a `makefile`
  object open is only marked closed until that object closes too (the documented contract
  of `socket.makefile`, which gevent's socket keeps), and pywsgi's read file (`rfile`)
  is one: the detached connection holds it and closes it last.

gevent-websocket's WebSocket (and its Stream) then point at the `Detached` record instead
of pywsgi's handler (`server`, `socket`, `logger` are all they read of it), so the handler
and its state go with the greenlet.

What the greenlet's pool slot did stays done: each detached connection is a member of the
pool it came from (`Pool.add`, non-blocking: when the pool is full at that moment the
connection stays in its greenlet, as before), so `worker_connections` still bounds the
node, gunicorn's graceful stop waits for detached connections like any other, and its
forced stop's `Pool.kill` shuts them down (`Detached.kill`). A connection ends (engine.io
close, socket closed, pool slot released) when the client closes or breaks the
protocol, on the reader's errors, and, after the server closed the websocket itself
(disconnect, ping timeout, SIGTERM's drain), when the client closes its end or
CLOSE_WAIT seconds later.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
import gevent.socket
import gevent.ssl
from gevent.pywsgi import WSGIHandler

log = logging.getLogger(__name__)

CLOSE_WAIT = 2.0  # seconds a client has to close its end after the server's close frame


class _Closed:
    """What gevent-websocket's `run_websocket` finds as the handler's websocket: closed."""

    closed = True


_CLOSED = _Closed()


class Detached:
    """One websocket without a greenlet: its watcher, session, socket and pool slot. Also
    what the websocket's gevent-websocket objects take as their handler."""

    __slots__ = (
        "__weakref__",
        "ended",
        "io",
        "owner",
        "pool",
        "reader",
        "server",
        "sock",
        "socket",
        "watcher",
        "writer",
        "ws",
    )

    def __init__(self, owner: IdleReader, sock: Any, ws: Any, writer: Any, reader: Any, handler: WSGIHandler) -> None:
        self.owner = owner
        self.sock = sock  # engine.io's Socket
        self.ws = ws  # engine.io's websocket wrapper (chat_app.transport.fanout.FramedWebSocket)
        self.writer = writer
        self.reader = reader  # lean_websockets.SocketReader
        self.server = handler.server
        self.socket = handler.socket
        self.io = handler.rfile  # keeps the descriptor open past the server's close
        self.pool: gevent.pool.Pool | None = None
        self.watcher = gevent.get_hub().loop.io(self.socket.fileno(), 1)
        self.ended = False

    @property
    def logger(self) -> Any:
        """gevent-websocket's WebSocket.logger reads its handler's."""
        return getattr(self.server, "logger", log)

    def arm(self) -> None:
        self.watcher.start(self._readable)

    def _readable(self) -> None:
        """In the hub: a greenlet reads what came."""
        self.watcher.stop()
        gevent.spawn(self._read)

    def _read(self) -> None:
        keep = False
        try:
            while self.owner.receive_one(self.sock, self.ws):
                if not self.reader.buffered():
                    keep = True
                    break
        except Exception:
            log.exception("event=idle_read_failed sid=%s", self.sock.sid)
        if keep and not self.ended:
            self.arm()
        else:
            self.end()

    def server_closed(self) -> None:
        """The writer closed the websocket (the server's close): the client's close ends
        the connection, or CLOSE_WAIT seconds do."""
        if not self.ended:
            gevent.spawn_later(CLOSE_WAIT, self.end)

    def end(self) -> None:
        """The receive loop's end (engine.io's close), then the socket's and the slot's."""
        if self.ended:
            return
        self.ended = True
        try:
            self.watcher.stop()
            self.watcher.close()
            self.owner.close(self.sock, self.writer)
        except Exception:
            log.exception("event=idle_close_failed sid=%s", self.sock.sid)
        finally:
            self._close_socket()
            self._release()
            self.owner.detached.discard(self)

    def _close_socket(self) -> None:
        tcp = self.socket
        with contextlib.suppress(OSError):
            tcp._sock.recv(16384)  # as pywsgi: what the client sent last, read, so no reset
        with contextlib.suppress(OSError):
            self.io.close()
            tcp.close()

    def _release(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.discard(self)

    def kill(self, exception: Any = None, block: bool = True, timeout: float | None = None) -> None:
        """Pool.kill (gunicorn's forced stop): the slot goes at once; the socket is shut
        down, and its reader ends the connection."""
        self._release()
        with contextlib.suppress(Exception):
            self.socket.shutdown(socket.SHUT_RDWR)


class IdleReader:
    """Detaches a node's websockets from their greenlets. `receive_one(sock, ws)` reads and
    dispatches one message (False: the connection is over); `close(sock, writer)` is the
    receive loop's end."""

    def __init__(self, receive_one: Callable[[Any, Any], bool], close: Callable[[Any, Any], None]) -> None:
        self.receive_one = receive_one
        self.close = close
        self.detached: set[Detached] = set()

    def detach(self, sock: Any, ws: Any, writer: Any, reader: Any) -> bool:
        """Take the websocket from the running (pywsgi handler) greenlet, which must then
        return at once. False, and nothing changed, when it cannot be taken."""
        websocket = getattr(ws, "_sock", None)
        handler = getattr(websocket, "handler", None)
        if reader is None or not isinstance(handler, WSGIHandler) or getattr(handler, "rfile", None) is None:
            return False
        tcp = getattr(handler, "socket", None)
        if type(tcp) is not gevent.socket.socket or getattr(ws, "raw", None) is not tcp:
            return False  # TLS terminated by the worker, or not the socket fan-out writes to
        conn = Detached(self, sock, ws, writer, reader, handler)
        pool = getattr(handler.server, "pool", None)
        if isinstance(pool, gevent.pool.Pool):
            try:
                pool.add(conn, blocking=False)
            except gevent.pool.PoolFull:
                conn.watcher.close()
                return False
            conn.pool = pool
        handler.socket = None
        handler.environ = {}
        handler.websocket = _CLOSED
        websocket.handler = websocket.stream.handler = conn
        writer.on_finished = conn.server_closed
        self.detached.add(conn)
        log.debug("event=websocket_detached sid=%s", sock.sid)
        if reader.buffered():
            gevent.spawn(conn._read)
        else:
            conn.arm()
        return True

    def __len__(self) -> int:
        return len(self.detached)
