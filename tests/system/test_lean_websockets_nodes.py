"""chat_app.lean_websockets on real nodes (gunicorn's gevent-websocket worker): pings,
ordering and dead-client detection. Its parts alone, on gevent in this process, are in
unit/test_lean_websockets.py."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import requests
import websocket
from helpers import ChatClient, scrape, wait_until

from chat_app.transport import lean_websockets

FAST_PINGS = {"PING_INTERVAL": "1", "PING_TIMEOUT": "1"}


class RawClient:
    """Engine.IO/Socket.IO over a bare websocket, answering pings only when told to."""

    def __init__(self, port: int, username: str) -> None:
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=10)
        self.open = json.loads(self.ws.recv()[1:])
        self.ws.send("40" + json.dumps({"username": username}))
        assert self.ws.recv().startswith("40")
        self.pings = 0

    def read(self, seconds: float, answer_pings: bool) -> list[str]:
        """Frames until `seconds` pass or the server closes; '<closed>' marks the close."""
        frames: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.ws.settimeout(left)
            try:
                frame = self.ws.recv()
            except websocket.WebSocketTimeoutException:
                break
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                frames.append("<closed>")
                break
            if not frame:
                frames.append("<closed>")
                break
            frames.append(frame)
            if frame == "2":
                self.pings += 1
                if answer_pings:
                    self.ws.send("3")
        return frames


def test_pings_keep_a_live_client_and_cut_a_silent_one(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, **FAST_PINGS)
    assert "lean_websockets=True" in node.log()
    raw = RawClient(node.port, "ghost")
    assert (raw.open["pingInterval"], raw.open["pingTimeout"]) == (1000, 1000)
    raw.ws.send('42["join_room","lobby"]')
    friend = ChatClient(node.url, "friend")  # python-socketio answers pings itself
    try:
        assert friend.call("join_room", "lobby")["ok"]
        frames = raw.read(3.5, answer_pings=True)
        assert raw.pings >= 3 and "<closed>" not in frames, frames
        started = time.monotonic()
        frames = raw.read(6, answer_pings=False)
        # A ping ~1 s after the last pong, unanswered; the socket is closed ping_timeout
        # (1 s) later, give or take the service task's round (1 s): well within 4 s. (The
        # CLOSE packet engine.io means to send first is dropped by its own send().)
        assert frames[-1] == "<closed>" and frames.count("2") == 1, frames
        assert time.monotonic() - started < 4, frames
        wait_until(lambda: "ghost" not in members(node), timeout=10, what="ghost gone from lobby")
        assert friend.sio.connected and friend.call("send_message", {"room": "lobby", "message": "still"})["ok"]
        assert friend.wait_for(1)[0]["message"] == "still"
    finally:
        friend.close()
        raw.ws.close()


def members(node) -> list[str]:
    return requests.get(f"{node.url}/api/rooms/lobby", timeout=5).json()["members"]


class SlowReader:
    """A raw websocket client with a 4 KiB receive buffer that reads only when told to, so
    that what the node sends it backs up in its queue and takes its writer."""

    def __init__(self, port: int, username: str) -> None:
        small = [(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)]  # before connect: a small window
        url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(url, timeout=10, sockopt=small)
        self.sid = json.loads(self.ws.recv()[1:])["sid"]  # engine.io's: the writer's socket
        self.ws.send("40" + json.dumps({"username": username}))
        assert self.ws.recv().startswith("40")
        self.messages: list[dict[str, Any]] = []

    def read_messages(self, count: int) -> None:
        while len(self.messages) < count:
            frame = self.ws.recv()
            if frame == "2":
                self.ws.send("3")
            elif frame.startswith('42["broadcast_message"'):
                self.messages.append(json.loads(frame[2:])[1])


def test_bursts_with_idle_gaps_arrive_in_order(redis_server, nodes) -> None:
    """A receiver that reads each burst late: the frames it has not taken wait in its queue
    and its writer sends them; between the bursts the writer ends (idle > WRITER_LINGER) and
    the next burst starts a new one. Nothing is lost or reordered across that."""
    # 40 x 100 KB a burst: more than the kernel takes for a client that is not reading (the
    # node's send buffer grows to 4 MiB by itself), so part of each burst must be queued.
    node = nodes.start(redis_server.url, SEND_RATE="1000", SEND_BURST="1000", MAX_MESSAGE_BYTES="131072")
    sender = ChatClient(node.url, "sender")
    receiver = SlowReader(node.port, "receiver")
    text = "x" * 100_000

    def writer_starts() -> int:
        return node.log().count(f"event=writer_started sid={receiver.sid}")

    try:
        receiver.ws.send('420["join_room","lobby"]')
        assert sender.call("join_room", "lobby")["ok"]
        wait_until(lambda: "receiver" in members(node), what="the receiver in the room")
        queued = scrape(node.url)["chat_websocket_frames_total{path=queued}"]
        for burst in range(3):
            time.sleep(lean_websockets.WRITER_LINGER + 0.5)  # the idle gap under test
            starts = writer_starts()
            for i in range(40):
                sender.sio.emit("send_message", {"room": "lobby", "message": f"{burst}-{i} {text}"})
            sender.wait_for(40 * (burst + 1))  # the node has handed every frame on
            receiver.read_messages(40 * (burst + 1))
            # Part of the burst waited in the queue, and a new writer (the last one ended in
            # the gap) sent it.
            queued, before = scrape(node.url)["chat_websocket_frames_total{path=queued}"], queued
            assert queued > before, f"burst {burst} never queued"
            assert writer_starts() > starts, f"burst {burst} started no writer"
        got = receiver.messages
        assert [m["message"].split()[0] for m in got] == [f"{b}-{i}" for b in range(3) for i in range(40)]
        assert [m["seq"] for m in got] == list(range(1, 121))
    finally:
        sender.close()
        receiver.ws.close()


@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"]])
def test_long_polling_and_the_upgrade_to_websocket(redis_server, nodes, transports: list[str]) -> None:
    """Long-polling reads the same PacketQueue (Socket.poll); an upgrade goes through the
    copied handshake before the on-demand writer takes over."""
    import socketio

    node = nodes.start(redis_server.url, **FAST_PINGS)
    got: list[str] = []
    client = socketio.Client(reconnection=False)
    client.on("broadcast_message", lambda m: got.append(m["message"]))
    client.connect(node.url, transports=transports, auth={"username": "poller"}, wait_timeout=10)
    other = ChatClient(node.url, "other")
    try:
        assert client.call("join_room", "lobby", timeout=10)["ok"]
        assert other.call("join_room", "lobby")["ok"]
        wait_until(lambda: client.transport() == transports[-1], timeout=10, what=f"{transports[-1]} transport")
        # python-engineio's client refuses a poll response of more than 16 packets
        # (max_decode_packets), whatever the server: at most 12 at a time here.
        for i in range(12):
            other.sio.emit("send_message", {"room": "lobby", "message": f"m{i}"})
        time.sleep(2.5)  # past a ping cycle (1 s + 1 s) on either transport
        for i in range(12, 24):
            other.sio.emit("send_message", {"room": "lobby", "message": f"m{i}"})
        wait_until(lambda: len(got) == 24, timeout=10, what="24 messages")
        assert got == [f"m{i}" for i in range(24)]
        assert client.connected and client.call("send_message", {"room": "lobby", "message": "back"}, timeout=10)["ok"]
        wait_until(lambda: [m["message"] for m in other.received()][-1:] == ["back"], timeout=10, what="reply")
    finally:
        client.disconnect()
        other.close()
