"""A minimal Socket.IO (v5) over Engine.IO (v4) websocket client on a bare asyncio Protocol.

Why hand-rolled: the generator shares 2 cores with the nodes and Redis, and must take in up to
~50,000 broadcast frames a second. python-socketio's AsyncClient costs a task, a queue hop and
several JSON/packet objects per frame; here one `data_received` call parses every frame in the
chunk and hands each event straight to a callback. Only what the benchmark needs is spoken:
websocket transport only, the default namespace, text packets, acks, Engine.IO ping/pong.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Callable
from typing import Any

import orjson

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

EventHandler = Callable[[str, Any], None]
AckHandler = Callable[[Any], None]


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the 4-byte key, done as one big-int operation instead of a byte loop."""
    n = len(payload)
    if n == 0:
        return payload
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def ws_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A single masked client frame (clients must mask, RFC 6455 5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class SioClient(asyncio.Protocol):
    """One Socket.IO connection. `on_event(name, data)` is called for every server event."""

    def __init__(self, host: str, port: int, auth: dict[str, Any] | None, on_event: EventHandler | None) -> None:
        self.host, self.port, self.auth = host, port, auth
        self.on_event = on_event
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buf = bytearray()
        self._upgraded = False
        self._key = base64.b64encode(os.urandom(16))
        self._acks: dict[int, AckHandler] = {}
        self._next_id = 0
        self._fragments: list[bytes] = []
        self.sid = ""
        self.last_ack_bytes = 0  # size of the last ack packet, read by its handler (W4's ack size)
        self.on_close: Callable[[], None] | None = None  # W5: a killed node's clients reconnect at once

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = (
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {self._key.decode()}\r\n\r\n"
        )
        self.transport.write(request.encode())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before the Socket.IO connect: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)
            if self.on_close is not None:
                self.on_close()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._upgraded and not self._handshake():
            return
        self._frames()

    # -- websocket -------------------------------------------------------------------

    def _handshake(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        accept = base64.b64encode(hashlib.sha1(self._key + WS_GUID).digest()).decode()
        if not head.startswith("HTTP/1.1 101") or accept not in head:
            self._fail(ConnectionError(f"websocket upgrade refused: {head.splitlines()[0]}"))
            return False
        self._upgraded = True
        return True

    def _frames(self) -> None:
        buf, pos, size = self._buf, 0, len(self._buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if size - pos < 4:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            self._frame(b0, payload)
        del buf[:pos]

    def _frame(self, b0: int, payload: bytes) -> None:
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            if not fin:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload = b"".join([*self._fragments, payload])
                self._fragments.clear()
            self._engineio(payload)
        elif opcode == OP_PING:
            self._write(ws_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self.close()

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    # -- Engine.IO / Socket.IO -------------------------------------------------------

    def _engineio(self, p: bytes) -> None:
        kind = p[:1]
        if kind == b"4":
            self._socketio(p)
        elif kind == b"2":
            self._write(ws_frame(b"3"))
        elif kind == b"0":
            self._write(ws_frame(b"40" + (orjson.dumps(self.auth) if self.auth else b"")))
        elif kind == b"1":
            self.close()

    def _socketio(self, p: bytes) -> None:
        kind = p[1:2]
        if kind == b"2":
            if self.on_event is not None:
                packet = orjson.loads(memoryview(p)[2:])
                self.on_event(packet[0], packet[1] if len(packet) > 1 else None)
        elif kind == b"3":
            self.last_ack_bytes = len(p)
            i = p.index(b"[", 2)
            handler = self._acks.pop(int(p[2:i]), None)
            if handler is not None:
                args = orjson.loads(memoryview(p)[i:])
                handler(args[0] if args else None)
        elif kind == b"0":
            if not self.ready.done():
                self.sid = orjson.loads(memoryview(p)[2:]).get("sid", "")
                self.ready.set_result(self.sid)
        elif kind == b"4":
            self._fail(ConnectionError(f"connect refused: {p[2:].decode(errors='replace')}"))
        elif kind == b"1":
            self.close()

    def _fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        self.close()

    # -- public ----------------------------------------------------------------------

    def emit(self, event: str, data: Any, on_ack: AckHandler | None = None) -> None:
        """Send an event; `on_ack(first_arg)` runs when the server answers it."""
        body = orjson.dumps([event, data])
        if on_ack is None:
            self._write(ws_frame(b"42" + body))
            return
        self._next_id += 1
        self._acks[self._next_id] = on_ack
        self._write(ws_frame(b"42%d" % self._next_id + body))

    async def call(self, event: str, data: Any, timeout: float = 10.0) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.emit(event, data, lambda reply: future.done() or future.set_result(reply))
        return await asyncio.wait_for(future, timeout)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ws_frame(b"", OP_CLOSE))
            self.transport.close()


async def connect(
    port: int,
    username: str,
    on_event: EventHandler | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> SioClient:
    """Open a websocket, finish the Socket.IO connect with `auth={"username": ...}`."""
    loop = asyncio.get_running_loop()
    _, client = await asyncio.wait_for(
        loop.create_connection(lambda: SioClient(host, port, {"username": username}, on_event), host, port),
        timeout,
    )
    await asyncio.wait_for(asyncio.shield(client.ready), timeout)
    return client
