"""chat_app.transport.idle_reader on real nodes (gunicorn's gevent-websocket worker): an idle
websocket has no greenlet, and still reads split frames, ends when its client goes, is
closed by a ping timeout and by SIGTERM's drain, and counts against worker_connections."""

from __future__ import annotations

import json
import signal
import socket
import time

import pytest
import requests
import websocket
from helpers import wait_until

from chat_app.transport import idle_reader

FAST_PINGS = {"PING_INTERVAL": "1", "PING_TIMEOUT": "1"}


class Raw:
    """Engine.IO/Socket.IO over a bare websocket, joined to `room`; after that its bytes
    can be read raw (`read_raw`), so that nothing answers the server's close frame."""

    def __init__(self, port: int, username: str, room: str = "lobby") -> None:
        url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(url, timeout=10, sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.sid = json.loads(self.ws.recv()[1:])["sid"]
        self.ws.send("40" + json.dumps({"username": username}))
        assert self.ws.recv().startswith("40")
        self.ws.send(f'420["join_room","{room}"]')
        assert self.ack() == 0

    def ack(self) -> int:
        """The id of the next ack the client gets (pings answered, events skipped)."""
        while True:
            frame = self.ws.recv()
            if frame == "2":
                self.ws.send("3")
            elif frame.startswith("43"):
                return int(frame[2 : frame.index("[")])

    def frame(self, text: str) -> bytes:
        """`text` as the masked websocket frame a client sends."""
        return websocket.ABNF.create_frame(text, websocket.ABNF.OPCODE_TEXT).format()

    def read_raw(self, seconds: float, until: bytes | None = None) -> tuple[bytes, bool]:
        """The bytes the server sends within `seconds` (or until `until` came), and whether
        it closed the TCP connection (end of stream) in that time. Nothing is answered."""
        got = b""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not (until and until in got):
            self.ws.sock.settimeout(left)
            try:
                chunk = self.ws.sock.recv(65536)
            except TimeoutError:
                return got, False
            except ConnectionResetError:
                return got, True
            if not chunk:
                return got, True
            got += chunk
        return got, False


def detached(node, raw: Raw) -> bool:
    return f"event=websocket_detached sid={raw.sid}" in node.log()


def answers(node) -> bool:
    try:
        return requests.get(f"{node.url}/healthz", timeout=1).ok
    except requests.RequestException:
        return False


def members(node, room: str = "lobby") -> list[str]:
    return requests.get(f"{node.url}/api/rooms/{room}", timeout=5).json()["members"]


def test_frames_split_across_segments_and_several_in_one_are_read(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url)
    assert "idle_reader=True" in node.log()
    raw = Raw(node.port, "splitter")
    try:
        wait_until(lambda: detached(node, raw), what="the websocket detached from its greenlet")
        first = raw.frame('421["send_message",{"room":"lobby","message":"one"}]')
        second = raw.frame('422["send_message",{"room":"lobby","message":"two"}]')
        raw.ws.sock.sendall(first[:7])
        # Not a synchronisation: time for the first segment to wake the node's reader,
        # which must then wait for the rest of the frame without giving up on it.
        time.sleep(0.3)
        raw.ws.sock.sendall(first[7:] + second)  # the rest, and a whole frame behind it
        assert sorted([raw.ack(), raw.ack()]) == [1, 2]
        raw.ws.send('423["send_message",{"room":"lobby","message":"three"}]')  # read again later
        assert raw.ack() == 3
    finally:
        raw.ws.close()


def test_a_client_that_goes_while_detached_is_closed_and_left(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url)
    polite, rude = Raw(node.port, "polite"), Raw(node.port, "rude")
    try:
        wait_until(lambda: detached(node, polite) and detached(node, rude), what="both detached")
        assert sorted(members(node)) == ["polite", "rude"]
        # A close frame: the node answers with its own and closes the connection.
        polite.ws.sock.sendall(websocket.ABNF.create_frame(b"\x03\xe8", websocket.ABNF.OPCODE_CLOSE).format())
        got, closed = polite.read_raw(5)
        assert closed and got.endswith(b"\x88\x00"), got  # its close frame, last
        # No close frame, the TCP connection just goes: the session ends with it.
        rude.ws.sock.close()
        wait_until(lambda: members(node) == [], what="both left the room")
    finally:
        polite.ws.close()


def test_a_ping_timeout_closes_a_detached_websocket(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, **FAST_PINGS)
    raw = Raw(node.port, "ghost")
    try:
        wait_until(lambda: detached(node, raw), what="detached")
        started = time.monotonic()
        # Nothing is answered from here: no pong, and not the server's close frame either.
        got, closed = raw.read_raw(10)
        # A ping after 1 s, closed 1 s after it (give or take the service task's 1 s
        # round), the TCP connection CLOSE_WAIT after the close frame.
        assert closed, got
        assert time.monotonic() - started < 5 + idle_reader.CLOSE_WAIT, got
        assert b"\x81\x012" in got and b"\x88" in got, got  # the ping, the close frame
        assert members(node) == []
    finally:
        raw.ws.close()


@pytest.mark.timeout(60)
def test_sigterm_drains_detached_websockets(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url)
    clients = [Raw(node.port, f"idle{i}") for i in range(3)]
    try:
        wait_until(lambda: all(detached(node, c) for c in clients), what="all detached")
        started = time.monotonic()
        nodes.signal(node, signal.SIGTERM)
        for client in clients:
            got, closed = client.read_raw(5, until=b"\x81\x0241")  # Socket.IO's disconnect
            assert not closed and got.endswith(b"\x81\x0241"), got
        # Clients slow to close their end, as a socket.io client closes its websocket on
        # that disconnect: gunicorn's graceful stop waits for them, detached as they are,
        # and each close is answered before the node goes.
        time.sleep(2)
        for client in clients:
            client.ws.sock.sendall(websocket.ABNF.create_frame(b"\x03\xe8", websocket.ABNF.OPCODE_CLOSE).format())
        for client in clients:
            got, closed = client.read_raw(5)
            assert closed and got.endswith(b"\x88\x00"), got
        assert node.process.wait(timeout=15) == 0
        # Before the sessions' CONNECT_TIMEOUT (10 s) would have closed them from the node.
        assert time.monotonic() - started < 8
    finally:
        for client in clients:
            client.ws.close()


def test_worker_connections_bounds_detached_websockets(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, WORKER_CONNECTIONS="3")
    clients = [Raw(node.port, f"idle{i}") for i in range(3)]
    try:
        wait_until(lambda: sum(detached(node, c) for c in clients) >= 2, what="detached")
        # Every slot is taken by an idle websocket, though none has a greenlet: the node
        # does not take another connection...
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(f"{node.url}/healthz", timeout=1)
        # ...until one of them goes.
        clients[0].ws.close()
        wait_until(lambda: answers(node), timeout=5, what="a slot freed")
    finally:
        for client in clients:
            client.ws.close()
