"""What a connect costs a node beyond the protocol: one WSGI environ per websocket (not
Flask-SocketIO's copy beside pywsgi's), start-up's objects out of the cyclic collector's
walks, no stack walk per log record, the 101 sent with the OPEN packet and no writer
greenlet, request headers parsed without `email` when that changes nothing (bench/README.md,
"Connect + join")."""

from __future__ import annotations

import gc
import logging
import runpy
from pathlib import Path
from typing import Any

import flask
import flask_socketio
import pytest

from chat_app import create_app, versions
from chat_app.backends.base import History, Joined, Position
from chat_app.protocol import ChatError, Envelope, ErrorCode, JoinRequest
from chat_app.room_reads import RoomReads
from chat_app.settings import Settings
from chat_app.transport.environ import one_environ

ROOT = Path(__file__).resolve().parents[2]


def _engineio_sees(app: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the environ the server was called with, the one engine.io's handler got)."""
    seen: list[dict[str, Any]] = []
    sio = app.extensions["chat_socketio"].server
    monkeypatch.setattr(sio, "handle_request", lambda environ, start_response: seen.append(environ) or [b""])
    environ = {"PATH_INFO": "/socket.io/", "QUERY_STRING": "EIO=4&transport=websocket", "REQUEST_METHOD": "GET"}
    app.wsgi_app(environ, lambda *a: None)
    assert len(seen) == 1
    return environ, seen[0]


def test_engineio_gets_the_request_environ_itself_with_the_flask_app(monkeypatch) -> None:
    app = create_app(Settings.from_env({}, instance_id="t"), async_mode="threading")
    given, got = _engineio_sees(app, monkeypatch)
    assert got is given  # one dict per connection, kept by pywsgi and python-socketio alike
    assert got["flask.app"] is app


@pytest.mark.parametrize("pinned", [True, False])
def test_one_environ_steps_aside_on_another_flask_socketio(monkeypatch, pinned: bool) -> None:
    app = flask.Flask("t")
    socketio = flask_socketio.SocketIO(app, async_mode="threading")
    if not pinned:
        monkeypatch.setitem(versions.PINNED, "Flask-SocketIO", "0.0")
    app.wsgi_app = one_environ(app.wsgi_app)  # type: ignore[method-assign]
    app.extensions["chat_socketio"] = socketio
    given, got = _engineio_sees(app, monkeypatch)
    assert got["flask.app"] is app
    assert (got is given) == pinned  # upstream's copy on other versions; the original untouched
    assert ("flask.app" in given) == pinned


def test_the_worker_freezes_what_start_up_made() -> None:
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    gc.unfreeze()
    try:
        conf["post_worker_init"](object())
        assert gc.get_freeze_count() > 1000
    finally:
        gc.unfreeze()


def test_log_records_skip_the_callers_stack() -> None:
    create_app(Settings.from_env({}, instance_id="t"), async_mode="threading")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("chat_app")
    logger.addHandler(handler)
    try:
        logger.warning("event=probe")
    finally:
        logger.removeHandler(handler)
    assert records and records[0].funcName == "(unknown function)"


class _CountingBroker:
    """A broker whose history reads are counted; each answers `stored` in epoch "e"."""

    def __init__(self, stored: list[Envelope]) -> None:
        self.stored, self.reads = stored, 0

    def history(self, room: str, after: int | None, upto: int | None = None, limit: int = 50) -> History:
        self.reads += 1
        wanted = [e for e in self.stored if (after is None or e.seq > after) and (upto is None or e.seq <= upto)]
        return History(Position("e", len(self.stored)), wanted, True)


def _envelope(seq: int) -> Envelope:
    return Envelope(
        id=f"m{seq}", room="r", sender="a", message=f"hi {seq}", timestamp=1, seq=seq, epoch="e", instance_id="n"
    )


def _ack(broker: _CountingBroker, cursor: Position, req: JoinRequest) -> dict[str, Any]:
    reads = RoomReads(broker, None, 1.0, lambda what, exc: ChatError(ErrorCode.UNAVAILABLE, what))  # type: ignore[arg-type]
    return reads.join_ack("r", req, cursor, Joined(cursor, 1, ["a"]))


@pytest.mark.parametrize(
    ("seq", "req", "reads", "history", "recovered"),
    [
        (0, JoinRequest(room="r"), 0, [], None),  # a room without messages: the presence write alone
        (2, JoinRequest(room="r"), 1, [1, 2], None),
        (2, JoinRequest(room="r", since=1, epoch="e"), 1, [2], True),
        (2, JoinRequest(room="r", since=0, epoch="old"), 0, [], False),  # another epoch: no recovery, no read
        (2, JoinRequest(room="r", since=5, epoch="e"), 0, [], False),  # ahead of the room: the same
    ],
)
def test_a_join_reads_history_only_when_its_ack_can_carry_some(
    seq: int, req: JoinRequest, reads: int, history: list[int], recovered: bool | None
) -> None:
    broker = _CountingBroker([_envelope(s) for s in range(1, seq + 1)])
    ack = _ack(broker, Position("e", seq), req)
    assert broker.reads == reads
    assert [m["seq"] for m in ack["history"]] == history
    assert ack.get("recovered") == recovered
    assert (ack["seq"], ack["epoch"], ack["members"]) == (seq, "e", ["a"])


class _ServerSends:
    """Every sendall of the server's accepted sockets (gevent's socket class, patched for
    the test): (the client's port, the bytes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, port: int) -> None:
        import gevent._socket3

        self.sent: list[tuple[int, bytes]] = []
        sendall = gevent._socket3.socket.sendall

        def recorded(sock: Any, data: Any, flags: int = 0) -> Any:
            if sock.getsockname()[1] == port:
                self.sent.append((sock.getpeername()[1], bytes(data)))
            return sendall(sock, data, flags)

        monkeypatch.setattr(gevent._socket3.socket, "sendall", recorded)


def _ws_frame(text: str) -> bytes:
    """A masked client text frame (mask 0: the payload as it is)."""
    payload = text.encode()
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


@pytest.fixture
def gevent_node(monkeypatch):
    """The app in gevent mode behind pywsgi and gevent-websocket's handler, in this
    process: (its port, the server's sends, the writers started)."""
    import gevent.pywsgi
    from geventwebsocket.handler import WebSocketHandler

    from chat_app.transport import handshake, lean_websockets, request_headers

    app = create_app(Settings.from_env({}, instance_id="t"), async_mode="gevent")
    server = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), app, handler_class=WebSocketHandler, log=None)
    server.start()
    writers: list[str] = []
    wake = lean_websockets._Writer.wake

    def counted(self: Any) -> None:
        if self.task is None and not self.finished:
            writers.append(self.sock.sid)
        wake(self)

    monkeypatch.setattr(lean_websockets._Writer, "wake", counted)
    try:
        yield server.server_port, _ServerSends(monkeypatch, server.server_port), writers
    finally:
        server.stop()
        app.extensions["chat_service"].stop()  # its load gauge's thread too, which else logs past the session's end
        handshake.uninstall()
        request_headers.uninstall()
        import engineio.socket

        monkeypatch.setattr(engineio.socket.Socket, "_websocket_handler", lean_websockets._original_websocket_handler)
        monkeypatch.setattr(engineio.socket.Socket, "schedule_ping", lean_websockets._original_schedule_ping)


def _read_until(sock: Any, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


def test_a_connect_sends_the_101_with_the_open_packet_and_starts_no_writer(gevent_node) -> None:
    """One send for the handshake's 101 and engine.io's OPEN packet; the connect ack and the
    join's ack are written directly: no writer greenlet for any of them."""
    import gevent.socket

    port, sends, writers = gevent_node
    client = gevent.socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    _read_until(client, b'"sid"')
    client.sendall(_ws_frame('40{"username":"ann"}'))
    _read_until(client, b"40{")
    client.sendall(_ws_frame('420["join_room","home"]'))
    _read_until(client, b"430[")
    mine = [data for peer, data in sends.sent if peer == client.getsockname()[1]]
    assert mine[0].startswith(b"HTTP/1.1 101 ") and b"\r\n\r\n\x81" in mine[0] and b'0{"sid"' in mine[0]
    assert writers == []
    client.close()


# -- pywsgi's request headers (chat_app.transport.request_headers) ----------------------

HEADER_BLOCKS = [
    "\r\n",
    "Host: x\r\n\r\n",
    "Host: x  \r\nUpgrade:\twebsocket\t\r\nX:\r\nX:   \r\nX: dup\r\nx: dup\r\n\r\n",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: a=b; c=d:e\r\n\r\n",
    "Folded: a\r\n  b\r\n\tc\r\nNext: d\r\n\r\n",  # obsolete line folding
    "Host: x\r\nbad line\r\nAfter: y\r\n\r\n",  # a malformed line ends the headers
    ": no name\r\nHost: x\r\n\r\n",
    " leading: space\r\n\r\n",
    "From nobody Mon Jan  1 00:00:00 2000\r\nHost: x\r\n\r\n",  # a unix-from line
    "Host: x\nBare: lf\n\n",
    "Host: x\rY: z\r\n\r\n",
    "Host: a\x85b\r\n\r\n",  # a line break to str.splitlines
    "Host: a\x0bb\x0cc\x1cd\r\n\r\n",
    "Host: caf\xe9\r\n\r\n",
    "Content-Type: multipart/mixed; boundary=x\r\n\r\n",
    "content-type: message/rfc822\r\n\r\n",
    "Content-Type: text/plain\r\n\r\n",
    "Host: x\r\n",  # the connection ended before the empty line
    "Host: x\r\nDel: \x7f\r\n\r\n",
    "A(b)c!#$%&'*+-.^_`|~{}[]<>?=/\\\"@,;: v\r\n\r\n",
]


def _feedparser(text: str) -> Any:
    import email.parser

    from gevent import pywsgi

    return email.parser.Parser(_class=pywsgi.OldMessage).parsestr(text)


def _state(message: Any) -> Any:
    """A Message's every attribute, its defects by type, its sub-messages likewise."""
    state = {k: v for k, v in vars(message).items() if k not in ("defects", "_payload")}
    payload = message._payload
    state["_payload"] = [_state(m) for m in payload] if isinstance(payload, list) else payload
    return type(message), state, [type(d) for d in message.defects]


def _same(text: str) -> bool:
    """Whether `parse` took its own path; fails unless its Message equals FeedParser's."""
    from chat_app.transport import request_headers

    assert _state(request_headers.parse(text)) == _state(_feedparser(text)), repr(text)
    return request_headers._PLAIN.fullmatch(text) is not None


@pytest.mark.parametrize("text", HEADER_BLOCKS)
def test_plain_headers_parse_as_the_feedparser_does(text: str) -> None:
    _same(text)


def test_plain_headers_parse_as_the_feedparser_does_on_random_blocks() -> None:
    import random

    rng = random.Random(27)
    alphabet = ["a", "B", "-", ":", " ", "\t", "\r\n", "\r", "\n", "\x85", "\x0b", "\xe9", "(", "\x7f", "\x00"]
    plain = 0
    for _ in range(20_000):
        lines = []
        for _ in range(rng.randrange(0, 5)):
            if rng.random() < 0.8:  # mostly a header-like line, sometimes spoiled
                name = "".join(rng.choice("aB-x_.") for _ in range(rng.randrange(0, 4)))
                value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 6)))
                lines.append(f"{name}:{value}\r\n")
            else:
                lines.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 8))))
        plain += _same("".join(lines) + rng.choice(["\r\n", "\r\n", "\n", ""]))
    assert plain > 2_000  # both paths were compared, not only the FeedParser against itself


def test_plain_headers_read_with_upstreams_limits(monkeypatch) -> None:
    """The lines are read by http.client as upstream: a line too long, more than 100 headers."""
    import io
    from http import client

    from gevent import pywsgi

    from chat_app.transport import request_headers

    def both(raw: bytes) -> tuple[Any, Any]:
        results = []
        for factory in (
            lambda fp: request_headers._message_class(None, fp, 0),
            lambda fp: pywsgi.headers_factory(fp, 0),
        ):
            try:
                results.append(factory(io.BytesIO(raw)))
            except client.HTTPException as e:
                results.append((type(e), str(e)))
        return results[0], results[1]

    for raw in (
        b"Host: x\r\n" + b"A: " + b"b" * 70_000 + b"\r\n\r\n",
        b"".join(b"H%d: v\r\n" % i for i in range(101)) + b"\r\n",
        b"".join(b"H%d: v\r\n" % i for i in range(99)) + b"\r\nbody",
        b"Host: x\r\n\r\nnext request",
    ):
        fast, slow = both(raw)
        assert (fast if isinstance(fast, tuple) else _state(fast)) == (
            slow if isinstance(slow, tuple) else _state(slow)
        )


def test_plain_headers_step_aside_on_other_versions(monkeypatch) -> None:
    from gevent import pywsgi

    from chat_app.transport import request_headers

    monkeypatch.setattr(pywsgi.WSGIHandler, "MessageClass", request_headers._original_message_class)
    monkeypatch.setitem(versions.PINNED, "gevent", "0.0")
    assert not request_headers.install()
    assert pywsgi.WSGIHandler.MessageClass is request_headers._original_message_class
    monkeypatch.undo()
    monkeypatch.setattr(pywsgi.WSGIHandler, "MessageClass", request_headers._original_message_class)
    assert request_headers.install()
    assert pywsgi.WSGIHandler.MessageClass is request_headers._message_class
