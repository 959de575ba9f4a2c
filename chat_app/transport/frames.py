"""Websocket messages read within a bound, refused before their bytes are read.

gevent-websocket 0.10.1 (`WebSocket.read_message`) reads each frame's payload at the
length its header declares and joins continuation frames without limit: one 64 MiB frame
took a node from 65 to 128 MiB before engine.io's size check (which runs on the whole
message) saw it, and 32 fragments of 1 MiB from 65 to 93 MiB, all before any token was
checked. `receive` is that method with three checks made on each header, before the
payload is read:

- a data frame whose declared length would bring the message past `limit` (the node's
  MAX_PAYLOAD_BYTES, engine.io's `max_http_buffer_size`, announced to clients as
  `maxPayload`): the running total of a fragmented message counts, so the most one
  connection holds of a message in flight is `limit` bytes;
- a binary frame: nothing in chat_app's protocol is binary (Engine.IO sends binary
  packets as binary frames, and Socket.IO attachments only follow a binary packet);
- a control frame (ping, pong, close) longer than the 125 bytes RFC 6455 allows.

Each refusal closes the websocket with its RFC 6455 code (1009 too big, 1003 binary, 1002
protocol error) and returns None, which engine.io's receive loop takes as "the client is
gone". The close code goes out in the close frame's first two bytes, which gevent-websocket's
own `close` leaves out.

Only the lean receive loop (chat_app.transport.lean_websockets) calls this, on the pinned
versions (chat_app.versions); elsewhere engine.io's check after the read is all there is.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from typing import Any

from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.websocket import MSG_CLOSED, Header, WebSocket

log = logging.getLogger(__name__)

CONTROL_MAX = 125  # RFC 6455 5.5: control frames carry at most 125 bytes
TOO_BIG = 1009
UNSUPPORTED = 1003
PROTOCOL_ERROR = 1002
INVALID_TEXT = 1007


class Refused(Exception):
    """A frame refused off its header: `code` goes in the close frame."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _close(ws: WebSocket, code: int, reason: str) -> None:
    """Send a close frame that carries `code`, then mark the websocket closed (later sends
    fail as after gevent-websocket's own close; the connection handler closes the socket)."""
    if ws.closed:
        return
    with contextlib.suppress(OSError, WebSocketError):
        ws.send_frame(struct.pack("!H", code) + reason.encode()[: CONTROL_MAX - 2], WebSocket.OPCODE_CLOSE)
    ws.closed = True


def _read_message(ws: WebSocket, limit: int) -> str | None:  # noqa: PLR0912 (upstream's shape)
    """WebSocket.read_message of gevent-websocket 0.10.1, checking each header first."""
    opcode = None
    message = bytearray()
    while True:
        header = Header.decode_header(ws.stream)
        if header.flags:
            raise ProtocolError("reserved bits set")
        f_opcode = header.opcode
        if f_opcode == WebSocket.OPCODE_BINARY:
            raise Refused(UNSUPPORTED, "binary frames are not accepted")
        control = f_opcode in (WebSocket.OPCODE_PING, WebSocket.OPCODE_PONG, WebSocket.OPCODE_CLOSE)
        if control:
            if header.length > CONTROL_MAX or not header.fin:
                raise Refused(PROTOCOL_ERROR, "control frame too long or fragmented")
        elif len(message) + header.length > limit:
            raise Refused(TOO_BIG, f"message over {limit} bytes")
        payload = ws.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("Unexpected EOF reading frame payload")
        if header.mask:
            payload = header.unmask_payload(payload)

        if f_opcode == WebSocket.OPCODE_TEXT:
            if opcode:
                raise ProtocolError("text frame inside a fragmented message")
            ws.utf8validator.reset()
            ws.utf8validate_last = (True, True, 0, 0)
            opcode = f_opcode
        elif f_opcode == WebSocket.OPCODE_CONTINUATION:
            if not opcode:
                raise ProtocolError("continuation frame without a message")
        elif f_opcode == WebSocket.OPCODE_PING:
            ws.handle_ping(header, payload)
            continue
        elif f_opcode == WebSocket.OPCODE_PONG:
            continue
        elif f_opcode == WebSocket.OPCODE_CLOSE:
            ws.handle_close(header, payload)
            return None
        else:
            raise ProtocolError(f"unexpected opcode {f_opcode}")

        ws.validate_utf8(payload)
        message += payload
        if header.fin:
            break
    ws.validate_utf8(message)
    return ws._decode_bytes(message)


def receive(wsgi_ws: Any, limit: int, sid: str) -> str | None:
    """The next text message of engine.io's websocket wrapper `wsgi_ws` (its gevent-websocket
    WebSocket is `_sock`), or None when the connection is over or a frame was refused.
    WebSocket.receive of gevent-websocket 0.10.1 with `_read_message` inside."""
    ws: WebSocket = wsgi_ws._sock
    if ws.closed:
        raise WebSocketError("Connection is already closed")
    try:
        return _read_message(ws, limit)
    except Refused as refused:
        log.info("event=frame_refused sid=%s code=%d reason=%r", sid, refused.code, refused.reason)
        _close(ws, refused.code, refused.reason)
    except UnicodeError:
        _close(ws, INVALID_TEXT, "invalid UTF-8")
    except ProtocolError:
        _close(ws, PROTOCOL_ERROR, "protocol error")
    except OSError:
        ws.close()
        ws.current_app.on_close(MSG_CLOSED)
    return None
