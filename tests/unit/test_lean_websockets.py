"""chat_app.lean_websockets: its parts on gevent in this process, then pings, ordering and
dead-client detection on real nodes (gunicorn's gevent-websocket worker)."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import gevent
import gevent.event
import gevent.queue
import pytest
import requests
import websocket
from helpers import ChatClient, scrape, wait_until

from chat_app import create_app, versions
from chat_app.settings import Settings
from chat_app.transport import install_transport, lean_websockets
from chat_app.transport.lean_websockets import PacketQueue, PingScheduler, _service_task, _Writer

# -- PacketQueue ------------------------------------------------------------------------
# This process is not monkey-patched: waits in the parts' tests must be gevent's.


def until(predicate: Any, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.01)


def test_queue_is_fifo_and_counts() -> None:
    q = PacketQueue()
    assert q.qsize() == 0 and q.empty()
    for i in range(5):
        q.put(i)
    assert q.qsize() == 5
    assert [q.get(block=False) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert q.empty()
    with pytest.raises(gevent.queue.Empty):
        q.get(block=False)


def test_queue_get_waits_for_a_put_or_times_out() -> None:
    q = PacketQueue()
    started = time.monotonic()
    with pytest.raises(gevent.queue.Empty):
        q.get(timeout=0.05)
    assert time.monotonic() - started >= 0.05
    gevent.spawn_later(0.02, q.put, "x")
    assert q.get(timeout=5) == "x"


def test_queue_two_getters_each_take_one_item() -> None:
    q = PacketQueue()
    getters = [gevent.spawn(q.get, timeout=5) for _ in range(2)]
    gevent.sleep(0.01)
    q.put("a")
    gevent.sleep(0.01)
    q.put("b")
    assert sorted(g.get(timeout=5) for g in getters) == ["a", "b"]


def test_queue_join_waits_for_every_task_done() -> None:
    q = PacketQueue()
    assert q.join(timeout=0) is True
    q.put(1)
    q.put(2)
    assert q.join(timeout=0.01) is False
    q.get()
    q.task_done()
    joiner = gevent.spawn(q.join, timeout=5)
    gevent.sleep(0.01)
    assert not joiner.ready()
    q.get()
    q.task_done()
    assert joiner.get(timeout=5) is True
    with pytest.raises(ValueError):
        q.task_done()


def test_queue_calls_on_put_after_each_put() -> None:
    q = PacketQueue()
    seen: list[int] = []
    q.on_put = lambda: seen.append(q.qsize())
    q.put("a")
    q.put("b")
    assert seen == [1, 2]


# -- PingScheduler and the writer, with stand-ins for engine.io's objects -----------------


class FakeServer:
    ping_interval = 0.05

    def start_background_task(self, target: Any, *args: Any) -> gevent.Greenlet:
        return gevent.spawn(target, *args)

    def sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)


class FakeSocket:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.server = FakeServer()
        self.queue = PacketQueue()
        self.last_ping: float | None = time.time()
        self.closing = self.closed = False
        self.sent: list[tuple[float, Any]] = []

    def send(self, pkt: Any) -> None:
        self.sent.append((time.monotonic(), pkt.packet_type))


def test_scheduler_pings_each_socket_one_interval_after_scheduling() -> None:
    pings = PingScheduler(FakeServer())
    a, b, closed = FakeSocket("a"), FakeSocket("b"), FakeSocket("c")
    closed.closed = True
    started = time.monotonic()
    for sock in (a, b, closed):
        pings.schedule(sock)
    assert a.last_ping is None  # as engine.io's schedule_ping: a cycle is running
    pings.schedule(a)  # no second cycle while one runs (its PONG has not come)
    until(lambda: a.sent and b.sent, what="two pings")
    assert [p for _, p in a.sent] == [2] and [p for _, p in b.sent] == [2]  # packet.PING
    assert a.sent[0][0] - started >= FakeServer.ping_interval
    assert a.last_ping is not None  # stamped: check_ping_timeout now runs its clock
    assert closed.sent == []
    pings.schedule(a)  # the PONG came: next cycle
    until(lambda: len(a.sent) == 2, what="second ping")
    gevent.sleep(0.15)
    assert len(a.sent) == 2 and len(b.sent) == 1 and len(pings) == 0


class CountingServer(FakeServer):
    def __init__(self) -> None:
        self.sleeps = 0

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        gevent.sleep(seconds)


def test_scheduler_sends_the_pings_due_within_a_tick_together(monkeypatch) -> None:
    """40 sockets scheduled ~2.5 ms apart (as 400 connections a second would be): one wake
    per PING_TICK sends them all, none early, through the given `send`."""
    monkeypatch.setattr(lean_websockets, "PING_TICK", 0.05)
    server = CountingServer()
    sent: list[tuple[float, Any]] = []
    pings = PingScheduler(server, send=lambda sock, pkt: sent.append((time.monotonic(), sock)))
    socks = [FakeSocket(str(i)) for i in range(40)]
    scheduled = {}
    for sock in socks:
        pings.schedule(sock)
        scheduled[sock] = time.monotonic()
        gevent.sleep(0.0025)
    until(lambda: len(sent) == 40, what="40 pings")
    assert all(at - scheduled[sock] >= FakeServer.ping_interval for at, sock in sent)
    assert all(sock.sent == [] for sock in socks)  # not through Socket.send
    assert server.sleeps <= 6, server.sleeps  # ~0.1 s of due times: a wake per tick, not per ping


def test_backlog_knows_the_longest_queue_and_forgets_empty_ones() -> None:
    lean = lean_websockets.LeanWebsockets(FakeServer(), 1.0, None)
    short, long_, never = (PacketQueue(lean.backlog) for _ in range(3))
    short.put("a")
    for i in range(5):
        long_.put(i)
    assert lean.longest_queue() == 5 and len(lean.backlog) == 2
    for _ in range(5):
        long_.get()
    assert lean.longest_queue() == 1
    short.get()
    assert lean.longest_queue() == 0 and len(lean.backlog) == 0
    assert never.qsize() == 0


class ServiceSocket:
    def __init__(self, sid: str, closed: bool = False) -> None:
        self.sid, self.closed, self.closing = sid, closed, False
        self.checked = 0

    def check_ping_timeout(self) -> bool:
        self.checked += 1
        return True


def test_service_task_checks_every_socket_once_per_ping_timeout(monkeypatch) -> None:
    monkeypatch.setattr(lean_websockets, "SERVICE_TICK", 0.02)

    class Server:
        ping_timeout = 0.1  # 5 ticks: a fifth of the sockets each tick
        logger = None

        def __init__(self) -> None:
            self.sockets = {str(i): ServiceSocket(str(i)) for i in range(50)}
            self.sockets["gone"] = ServiceSocket("gone", closed=True)

        def create_event(self) -> gevent.event.Event:
            return gevent.event.Event()

    server = Server()
    live = [s for s in server.sockets.values() if not s.closed]
    started = time.monotonic()
    task = gevent.spawn(_service_task, server)
    until(lambda: all(s.checked for s in live), what="every live socket checked")
    elapsed = time.monotonic() - started
    # A share per tick, not all at once: the round ends with the fifth tick, ping_timeout in.
    assert 0.08 <= elapsed < server.ping_timeout + 0.05, elapsed
    assert "gone" not in server.sockets
    server.service_task_event.set()
    task.join(timeout=1)
    assert task.dead


class FakeWebsocket:
    def __init__(self, fail_after: int | None = None) -> None:
        self.frames: list[str] = []
        self.closed = False
        self.fail_after = fail_after

    def send(self, frame: str) -> None:
        if self.fail_after is not None and len(self.frames) >= self.fail_after:
            raise OSError("gone")
        self.frames.append(frame)
        gevent.sleep(0)  # a send may switch, as on a real socket

    def close(self) -> None:
        self.closed = True


class Pkt:
    def __init__(self, text: str) -> None:
        self.text = text

    def encode(self) -> str:
        return self.text


def start_writer(ws: FakeWebsocket, linger: float = 0.05) -> tuple[FakeSocket, _Writer]:
    sock = FakeSocket("w")
    writer = _Writer(sock, ws, linger)  # type: ignore[arg-type]
    sock.queue.on_put = writer.wake
    return sock, writer


def test_writer_keeps_order_ends_when_idle_and_starts_again() -> None:
    ws = FakeWebsocket()
    sock, writer = start_writer(ws)
    for i in range(50):
        sock.queue.put(Pkt(f"a{i}"))
    assert writer.task is not None
    until(lambda: writer.task is None, what="idle writer gone")
    for i in range(50):
        sock.queue.put(Pkt(f"b{i}"))
    until(lambda: len(ws.frames) == 100, what="all frames")
    assert ws.frames == [f"a{i}" for i in range(50)] + [f"b{i}" for i in range(50)]
    assert sock.queue.join(timeout=1) and not ws.closed


def test_writer_sends_what_is_queued_before_the_end_then_closes() -> None:
    ws = FakeWebsocket()
    sock, writer = start_writer(ws, linger=5)
    sock.queue.put(Pkt("last"))
    sock.queue.put(Pkt("1"))  # engine.io's CLOSE packet
    sock.queue.put(None)  # Socket.close: the end
    assert sock.queue.join(timeout=5)  # close(wait=True) returns
    writer.join()
    assert ws.frames == ["last", "1"] and ws.closed and writer.finished
    sock.queue.put(Pkt("after"))
    assert writer.task is None  # never starts again


def test_writer_stops_on_a_send_error() -> None:
    ws = FakeWebsocket(fail_after=1)
    sock, writer = start_writer(ws)
    sock.queue.put(Pkt("ok"))
    sock.queue.put(Pkt("fails"))
    until(lambda: writer.finished, what="writer finished")
    assert ws.frames == ["ok"] and ws.closed


def test_threading_mode_is_left_alone() -> None:
    app = create_app(Settings.from_env({}, instance_id="t"), async_mode="threading")
    server = app.extensions["chat_socketio"].server
    assert not lean_websockets.install(server)
    assert getattr(server.eio, lean_websockets._ATTR, None) is None
    client = app.extensions["chat_socketio"].test_client(app, auth={"username": "t"})
    assert client.emit("join_room", "home", callback=True)["ok"]
    client.disconnect()


@pytest.mark.parametrize("other", ["python-engineio", "python-socketio", "gevent-websocket"])
def test_other_versions_are_left_alone(monkeypatch, other: str) -> None:
    import socketio

    server = socketio.Server(async_mode="gevent")
    monkeypatch.setitem(versions.PINNED, other, "0.0")
    transport = install_transport(server, max_client_queue=10)
    assert transport.writer is None and not transport.lean
    assert getattr(server.eio, lean_websockets._ATTR, None) is None
    assert "_handle_connect" not in vars(server) and "send_packet" not in vars(server.eio)
    assert transport.answers.tracked == (other != "python-socketio")
    assert ("_handle_event_internal" in vars(server)) == transport.answers.tracked


# -- real nodes ----------------------------------------------------------------------------

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
