"""The Socket.IO v5 / Engine.IO v4 protocol as its specification says, where python-socketio
5.18.1 and python-engineio 4.15.1 answer otherwise, and what a session may hold before it
says who it is.

Each was seen with the official protocol suite (github.com/socketio/socket.io-protocol,
`test-suite/`) or a hostile client against a node:

- Engine.IO over HTTP: a POST longer than MAX_PAYLOAD_BYTES is refused 413 off its
  Content-Length and its session closed (engine.io's own refusal hung the POST). A request
  without `transport`, or with a method other than GET,
  POST (or OPTIONS, CORS's preflight), is answered 400 (engine.io took a missing one for
  polling and answered PUT 405). A long-polling request of a session whose pong is more than
  `ping_timeout` late closes the session and is answered 400 (engine.io answered it 200 with
  a PING until its service task came round). A close packet a client POSTs ends its pending
  GET with a NOOP `6` (engine.io answered it an empty 200), and so does the poll that comes
  just after it (engine.io: 400, so the suite's concurrent GET and close failed when the
  close came first). A polling GET that arrives while the session answers its websocket
  probe waits, a bounded UPGRADE_SETTLE, for the upgrade
  to finish, and is answered 400 once upgraded (engine.io answered it a NOOP, or 400,
  depending on which greenlet ran first).
- Socket.IO: every packet from a client is decoded once and checked against the packet
  format before it is dispatched (python-socketio's `_handle_eio_message`, less binary).
  What does not decode (`4abc`, `42abc[...]`), a type a client may not send (CONNECT_ERROR)
  or that chat_app does not speak (BINARY_EVENT, BINARY_ACK: nothing in its protocol is
  binary, and python-socketio kept collecting attachments up to a count the client
  announced: 97 MiB held, seen), a binary Engine.IO message, and payloads of the wrong shape
  (an EVENT that is not a list starting with its name, `42{}`; an ACK without id or list)
  close the connection: the suite expects it, and such a client is not one of ours. A
  CONNECT to a namespace the server does not have is refused `{"message": "Invalid
  namespace"}` (python-socketio said "Unable to connect").
- The handshake announces a fractional PING_INTERVAL as it is (engine.io cut it to whole
  seconds before turning it into milliseconds).
- A session that has not completed a CONNECT (to any namespace) within CONNECT_TIMEOUT of
  opening is closed (engine.io kept one open for as long as it answered pings).

Each refusal logs `event=protocol_violation` once (the connection ends with it). All of
it reaches below the libraries' public APIs, so chat_app.transport installs it only on the
pinned versions (chat_app.versions); elsewhere upstream's answers stand.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import engineio.socket
from engineio import packet as eio_packet
from engineio.socket import Socket
from socketio import packet as sio_packet

from .delays import DelayQueue

log = logging.getLogger(__name__)

ALLOWED_METHODS = frozenset({"GET", "POST", "OPTIONS"})
UPGRADE_SETTLE = 0.5  # seconds a polling GET waits for an upgrade already probed to finish
SETTLE_POLL = 0.01
INVALID_NAMESPACE = {"message": "Invalid namespace"}
PROBE_ANSWERED = "_chat_probe_answered"  # set on a Socket by lean_websockets' _upgrade

_original_handle_get_request = Socket.handle_get_request


def invalid(pkt: Any) -> str | None:  # noqa: PLR0911 (one answer per packet type)
    """Why a decoded Socket.IO packet from a client breaks the protocol, or None."""
    kind = pkt.packet_type
    if getattr(pkt, "attachment_count", 0):
        return "attachments"
    if kind == sio_packet.CONNECT:
        if pkt.id is not None or not (pkt.data is None or isinstance(pkt.data, dict)):
            return "connect payload is not an object"
    elif kind == sio_packet.DISCONNECT:
        if pkt.id is not None or pkt.data is not None:
            return "disconnect with a payload"
    elif kind == sio_packet.EVENT:
        data = pkt.data
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            return "event payload is not a list starting with its name"
    elif kind == sio_packet.ACK:
        if pkt.id is None or not isinstance(pkt.data, list):
            return "ack without id or list"
    elif kind in (sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK):
        return "binary packets are not accepted"
    else:
        return f"packet type {kind} is not sent by clients"
    return None


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def _is_upgrade(environ: dict[str, Any]) -> bool:
    return "upgrade" in _tokens(environ.get("HTTP_CONNECTION", ""))


def _handle_get_request(sock: Socket, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    """Socket.handle_get_request; a poll that the session's close ended answers NOOP.

    A websocket upgrade goes straight to `_upgrade_websocket` (upstream's first branch, 4.15.1):
    the connection's receive loop runs under this call for its lifetime, and each frame less
    under it keeps its deepest dispatch further inside the first data-stack page
    (chat_app.transport.lean_websockets)."""
    upgrade = _is_upgrade(environ) and environ.get("HTTP_UPGRADE", "").lower() == "websocket"
    if upgrade and "websocket" in sock.upgrade_protocols:
        sock.server.logger.info("%s: Received request to upgrade to %s", sock.sid, "websocket")
        return sock._upgrade_websocket(environ, start_response)
    packets = _original_handle_get_request(sock, environ, start_response)
    if packets == [] and sock.closed and not _is_upgrade(environ):
        return [eio_packet.Packet(eio_packet.NOOP)]
    return packets


class ProtocolGuard:
    """What `install` attaches to one python-socketio server."""

    def __init__(self, sio: Any, connect_timeout: float) -> None:
        self.sio = sio
        self.eio = sio.eio
        self.connect_timeout = connect_timeout
        self.violations = 0  # connections closed for breaking the protocol
        self.connect_timeouts = 0  # sessions closed for not connecting in time
        self._deadlines: DelayQueue[str] = DelayQueue(self.eio, self._expire, self.eio.create_event, "connect_timeout")
        self._handle_request = self.eio.handle_request
        self._handle_eio_connect = sio._handle_eio_connect
        # Events of the default namespace handled without python-socketio's dispatch (a
        # greenlet per event): name -> call(eio_sid, ack id or None, the event's list).
        self.direct_events: dict[str, Callable[[str, int | None, list[Any]], None]] = {}

    # -- Engine.IO over HTTP ----------------------------------------------------------------

    def handle_request(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """engine.io's handle_request, after the checks the protocol asks of a request."""
        method = environ.get("REQUEST_METHOD", "")
        if method not in ALLOWED_METHODS:
            return self._bad_request(start_response, "Invalid request method")
        if method == "OPTIONS":
            return self._handle_request(environ, start_response)
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
        if "transport" not in query:
            return self._bad_request(start_response, "Invalid transport")
        sid = query.get("sid", [None])[0]
        sock = self.eio.sockets.get(sid) if sid else None
        if method == "POST" and self._too_long(environ):
            if sock is not None:
                self._violation(sid, "polling body over max_http_buffer_size", abort=True)
            start_response("413 PAYLOAD TOO LARGE", [("Content-Type", "text/plain"), ("Connection", "close")])
            return [b"Payload too large"]
        if sock is not None and query["transport"][0] == "polling" and not _is_upgrade(environ):
            self._settle_upgrade(sock)
            # A session whose pong is late is closed here, and this request answered 400
            # ("Invalid session") by upstream. One the client closed keeps its entry: the
            # poll that follows its close packet is answered a NOOP, then upstream drops it.
            if sock.closed and method == "GET" and self.eio.sockets.get(sid) is sock:
                # The client's close packet came before this poll (engine.io answered it 400
                # "Session is disconnected", or NOOP had the poll come first): NOOP, once.
                del self.eio.sockets[sid]
                r = self.eio._ok([eio_packet.Packet(eio_packet.NOOP)])
                start_response(r["status"], r["headers"] + self.eio._cors_headers(environ))
                return [r["response"]]
            late = not sock.upgraded and not sock.closed and not sock.check_ping_timeout()
            if late and self.eio.sockets.get(sid) is sock:
                del self.eio.sockets[sid]
        return self._handle_request(environ, start_response)

    def _too_long(self, environ: dict[str, Any]) -> bool:
        """A POST that says it is longer than engine.io reads: refused before a byte of it
        is read (engine.io refused it too, but then waited, in `disconnect`, for a poll to
        take the session's CLOSE packet: the POST hung until the client gave up)."""
        try:
            return int(environ.get("CONTENT_LENGTH") or 0) > self.eio.max_http_buffer_size
        except ValueError:
            return True

    def _settle_upgrade(self, sock: Socket) -> None:
        """A poll that arrives after the websocket probe was answered waits (bounded) for
        the UPGRADE packet that a client sends next: then it is refused 400 as every HTTP
        request of an upgraded session. A client that pauses polling only after its poll
        returns gets it back after UPGRADE_SETTLE, as before."""
        if not sock.upgrading or not getattr(sock, PROBE_ANSWERED, False):
            return
        deadline = time.monotonic() + UPGRADE_SETTLE
        while sock.upgrading and time.monotonic() < deadline:
            self.eio.sleep(SETTLE_POLL)

    def _bad_request(self, start_response: Callable[..., Any], message: str) -> list[bytes]:
        r = self.eio._bad_request(message)
        start_response(r["status"], r["headers"])
        return [r["response"]]

    # -- Socket.IO packets ------------------------------------------------------------------

    def on_message(self, eio_sid: str, data: Any) -> None:
        """python-socketio's `_handle_eio_message` (5.18.1) for text packets that keep to
        the protocol; anything else closes the connection."""
        sio = self.sio
        if not isinstance(data, str):
            self._violation(eio_sid, "binary message")
            return
        try:
            pkt = sio.packet_class(encoded_packet=data)
        except Exception:  # ValueError and JSON errors: the text is not a packet
            self._violation(eio_sid, "undecodable packet")
            return
        reason = invalid(pkt)
        if reason is not None:
            self._violation(eio_sid, reason)
            return
        kind = pkt.packet_type
        if kind == sio_packet.CONNECT:
            namespace = pkt.namespace or "/"
            if not self._known(namespace):
                sio._send_packet(
                    eio_sid, sio.packet_class(sio_packet.CONNECT_ERROR, data=INVALID_NAMESPACE, namespace=namespace)
                )
                return
            sio._handle_connect(eio_sid, pkt.namespace, pkt.data)
        elif kind == sio_packet.DISCONNECT:
            sio._handle_disconnect(eio_sid, pkt.namespace, sio.reason.CLIENT_DISCONNECT)
        elif kind == sio_packet.EVENT:
            direct = self.direct_events.get(pkt.data[0]) if pkt.namespace in (None, "/") else None
            if direct is not None:
                direct(eio_sid, pkt.id, pkt.data)
            else:
                sio._handle_event(eio_sid, pkt.namespace, pkt.id, pkt.data)
        else:
            sio._handle_ack(eio_sid, pkt.namespace, pkt.id, pkt.data)

    def _known(self, namespace: str) -> bool:
        # python-socketio's own test in _handle_connect
        sio = self.sio
        return (
            namespace in sio.handlers
            or namespace in sio.namespace_handlers
            or sio.namespaces == "*"
            or namespace in sio.namespaces
        )

    def _violation(self, eio_sid: str, reason: str, abort: bool = False) -> None:
        self.violations += 1
        log.info("event=protocol_violation sid=%s reason=%r", eio_sid, reason)
        self._close(eio_sid, abort)

    def _close(self, eio_sid: str, abort: bool = False) -> None:
        """Close the session (with a CLOSE packet unless `abort`), without waiting for the
        client to read it."""
        sock = self.eio.sockets.get(eio_sid)
        if sock is not None and not sock.closed and not sock.closing:
            sock.close(wait=False, abort=abort, reason=self.eio.reason.SERVER_DISCONNECT)
        if abort and sock is not None and self.eio.sockets.get(eio_sid) is sock:
            del self.eio.sockets[eio_sid]

    # -- CONNECT_TIMEOUT ------------------------------------------------------------------

    def on_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        self._announce_ping_interval(eio_sid)
        result = self._handle_eio_connect(eio_sid, environ)
        if result is not False:
            self._deadlines.add(eio_sid, self.connect_timeout)
        return result

    def _announce_ping_interval(self, eio_sid: str) -> None:
        """engine.io 4.15.1 announces `int(ping_interval + grace) * 1000`: 0.3 s went out as
        0 ms. Its OPEN packet still waits in the socket's queue when the connect event runs
        (sent by the writer, or by the poll that follows): the value is corrected there."""
        sock = self.eio.sockets.get(eio_sid)
        if sock is None:
            return
        queue = sock.queue
        waiting = queue.peek() if hasattr(queue, "peek") else list(getattr(queue, "queue", ()))
        interval = round((self.eio.ping_interval + self.eio.ping_interval_grace_period) * 1000)
        for pkt in waiting:
            if pkt is not None and pkt.packet_type == eio_packet.OPEN and isinstance(pkt.data, dict):
                pkt.data["pingInterval"] = interval

    def _connected(self, eio_sid: str, namespaces: Iterable[str]) -> bool:
        return any(self.sio.manager.sid_from_eio_sid(eio_sid, n) is not None for n in namespaces)

    def _expire(self, eio_sid: str, _due: float) -> None:
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closed or self._connected(eio_sid, list(self.sio.manager.get_namespaces())):
            return
        self.connect_timeouts += 1
        log.info("event=connect_timeout sid=%s after=%s", eio_sid, self.connect_timeout)
        self._close(eio_sid)


def install(sio: Any, connect_timeout: float) -> ProtocolGuard:
    """Put the guard in front of `sio`'s Engine.IO requests, messages and connects."""
    guard = ProtocolGuard(sio, connect_timeout)
    eio = sio.eio
    eio.handle_request = guard.handle_request
    eio.on("connect", guard.on_eio_connect)
    eio.on("message", guard.on_message)
    engineio.socket.Socket.handle_get_request = _handle_get_request  # type: ignore[method-assign]
    return guard
