"""A websocket's 101 response goes out with the server's first frame, in one send.

gevent-websocket (0.10.1) writes the handshake's 101 response as soon as it accepts the
upgrade; engine.io's OPEN packet follows a moment later from the connection's greenlet: two
sends per connect, and two wake-ups of the client, which can do nothing with the 101 alone
(a Socket.IO client waits for the OPEN). Here `WebSocketHandler.run_application` holds the
101 instead, and the websocket's first write sends it with that write's data (pywsgi builds
the response head as before; only its send is held). Every write of the websocket goes
through `WebSocket.raw_write` (frames, the close frame), so nothing can overtake the head.

A connection whose server waits for the client before writing anything needs the 101 first:
engine.io's polling -> websocket upgrade waits for the client's probe. chat_app's websocket
handler (lean_websockets) calls `send_now` before any read, which sends a held head alone.
Installed with lean_websockets, whose handler runs every engine.io websocket of the process;
behind the version guard (gevent, gevent-websocket pinned), upstream's method elsewhere.
"""

from __future__ import annotations

from typing import Any

from geventwebsocket.handler import WebSocketHandler

_original_run_application = WebSocketHandler.run_application


class _Capture:
    __slots__ = ("sendall",)

    def __init__(self, sendall: Any) -> None:
        self.sendall = sendall


class HeadFirst:
    """A websocket's `raw_write` while its 101 response is held: the first write sends the
    head and the data in one `sendall`, then the socket's own `sendall` takes over."""

    __slots__ = ("handler",)

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def __call__(self, data: bytes) -> None:
        handler = self.handler
        ws = handler.websocket
        sock = handler.socket
        sendall = sock.sendall
        if ws is not None:
            ws.raw_write = ws.stream.write = sendall
        if handler.headers_sent:
            sendall(data)
            return
        # pywsgi's own head, built and counted as upstream, into a list instead of the
        # socket (swapping an attribute the handler has: no new key in its __dict__, which
        # could grow the dict of every connection's handler)
        heads: list[bytes] = []
        handler.socket = _Capture(heads.append)
        try:
            handler._write_with_headers(b"")
        finally:
            handler.socket = sock
        sendall(b"".join([*heads, data]))


def held_write(ws: Any) -> HeadFirst | None:
    """`ws`'s write of frame data while it holds its 101 response (gevent-websocket's
    WebSocket), else None."""
    raw_write = getattr(ws, "raw_write", None)
    return raw_write if isinstance(raw_write, HeadFirst) else None


def send_now(ws: Any) -> None:
    """Send `ws`'s held 101 response alone, before the server waits for the client."""
    held = held_write(ws)
    if held is not None:
        held(b"")


def _run_application(self: Any) -> None:
    """WebSocketHandler.run_application of gevent-websocket 0.10.1, with the 101 held."""
    if getattr(self.server, "pre_start_hook", None):
        self.logger.debug("Calling pre-start hook")
        if self.server.pre_start_hook(self):
            return super(WebSocketHandler, self).run_application()  # type: ignore[no-any-return]
    self.logger.debug("Initializing WebSocket")
    self.result = self.upgrade_websocket()
    if hasattr(self, "websocket"):
        if self.status and not self.headers_sent:
            # The difference from upstream (`self.write('')`): held for the first frame.
            self.websocket.raw_write = self.websocket.stream.write = HeadFirst(self)
        self.run_websocket()
    else:
        if self.status:
            if not self.result:
                self.result = []
            self.process_result()
            return None
        return super(WebSocketHandler, self).run_application()  # type: ignore[no-any-return]
    return None


def install() -> None:
    """Hold every gevent-websocket 101 response of this process for its first frame
    (chat_app.transport checks the versions first)."""
    WebSocketHandler.run_application = _run_application  # type: ignore[method-assign]


def uninstall() -> None:
    WebSocketHandler.run_application = _original_run_application  # type: ignore[method-assign]
