"""chat_app.transport.idle_reader on gevent in this process: a detached connection over a
socket pair, with pywsgi's handler, a gevent pool and a receive turn of the test's own. On
real nodes (gunicorn, engine.io, gevent-websocket): system/test_idle_reader_nodes.py."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import gevent
import gevent.pool
import gevent.socket
import pytest
from gevent.pywsgi import WSGIHandler

from chat_app.transport.idle_reader import _CLOSED, IdleReader
from chat_app.transport.lean_websockets import SocketReader


def until(predicate: Any, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.01)


class Connection:
    """A server-side socket as pywsgi's handler holds it, its client end, and what the
    reader did with it: each byte is a message; b"!" makes the receive turn raise."""

    def __init__(self, pool: gevent.pool.Pool | None) -> None:
        self.server_end, self.client = gevent.socket.socketpair()
        self.handler = WSGIHandler(self.server_end, ("127.0.0.1", 1), SimpleNamespace(pool=pool))
        self.handler.environ = self.environ = {"wsgi.websocket": "the websocket"}
        self.handler.websocket = "the websocket"
        self.websocket = SimpleNamespace(handler=self.handler, stream=SimpleNamespace(handler=self.handler))
        self.ws = SimpleNamespace(_sock=self.websocket, raw=self.server_end)
        self.reader = SocketReader(self.server_end)
        self.writer = SimpleNamespace(on_finished=None)
        self.session = SimpleNamespace(sid="the session")
        self.messages: list[bytes] = []
        self.closed: list[Any] = []
        self.idle = IdleReader(self.receive_one, lambda sock, writer: self.closed.append(sock.sid))

    def receive_one(self, sock: Any, ws: Any) -> bool:
        data = self.reader.read(1)
        if data == b"!":
            raise RuntimeError("a dispatch that fails")
        if not data:
            return False
        self.messages.append(data)
        return True

    def detach(self) -> bool:
        return self.idle.detach(self.session, self.ws, self.writer, self.reader)

    def client_sees_end(self) -> bool:
        self.client.settimeout(5)
        return self.client.recv(16) == b""


def test_a_detached_connection_reads_what_comes_and_waits_again() -> None:
    conn = Connection(None)
    assert conn.detach()
    # What pywsgi and gevent-websocket do next finds nothing to close.
    assert conn.handler.socket is None and conn.handler.websocket is _CLOSED
    assert conn.handler.environ == {} and conn.environ == {"wsgi.websocket": "the websocket"}
    assert conn.websocket.handler is conn.websocket.stream.handler
    assert conn.websocket.handler.socket is conn.server_end
    conn.server_end.close()  # the server's do_close: the descriptor stays open (rfile)
    conn.client.sendall(b"abc")  # one segment, three messages: all read in one wake
    until(lambda: conn.messages == [b"a", b"b", b"c"], what="three messages")
    conn.client.sendall(b"d")  # read again: the watcher was armed again
    until(lambda: conn.messages[-1:] == [b"d"], what="a fourth")
    assert len(conn.idle) == 1 and not conn.closed
    conn.client.close()  # the client goes: the session closes, and the socket
    until(lambda: conn.closed == ["the session"], what="the close")
    assert len(conn.idle) == 0 and conn.server_end._sock.fileno() == -1


def test_a_failing_dispatch_ends_the_connection_not_the_reader() -> None:
    pool = gevent.pool.Pool(2)
    failing, other = Connection(pool), Connection(pool)
    assert failing.detach() and other.detach()
    assert pool.free_count() == 0
    failing.client.sendall(b"x!y")
    until(lambda: failing.closed, what="the failing connection closed")
    assert failing.messages == [b"x"] and failing.client_sees_end()
    assert pool.free_count() == 1  # its slot is back
    other.client.sendall(b"z")  # the others are still read
    until(lambda: other.messages == [b"z"], what="the other connection read")


def test_a_full_pool_leaves_the_connection_in_its_greenlet() -> None:
    pool = gevent.pool.Pool(1)
    first, second = Connection(pool), Connection(pool)
    assert first.detach()
    assert not second.detach()  # nothing changed: its greenlet reads on
    assert second.handler.socket is second.server_end and second.handler.websocket == "the websocket"
    assert second.websocket.handler is second.handler and len(second.idle) == 0
    first.client.close()
    until(lambda: pool.free_count() == 1, what="the slot freed")


def test_the_pools_kill_frees_the_slot_and_ends_the_connection() -> None:
    pool = gevent.pool.Pool(3)
    conns = [Connection(pool) for _ in range(2)]
    assert all(c.detach() for c in conns)
    pool.kill(block=True, timeout=1)  # gunicorn's forced stop
    assert pool.free_count() == 3
    for c in conns:
        until(lambda c=c: c.closed, what="the connection closed")
        assert c.client_sees_end()


def test_the_servers_close_ends_it_after_close_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_app.transport import idle_reader

    monkeypatch.setattr(idle_reader, "CLOSE_WAIT", 0.05)
    conn = Connection(None)
    assert conn.detach()
    conn.writer.on_finished()  # the writer closed the websocket; the client says nothing
    until(lambda: conn.closed, what="the close")
    assert conn.client_sees_end()
