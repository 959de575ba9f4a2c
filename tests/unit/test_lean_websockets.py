"""chat_app.lean_websockets: its parts on gevent in this process (the queue, the ping
scheduler, the writer, the version guard). On real nodes: system/test_lean_websockets_nodes.py."""

from __future__ import annotations

import time
from typing import Any

import gevent
import gevent.event
import gevent.queue
import pytest

from chat_app import create_app, versions
from chat_app.settings import Settings
from chat_app.transport import install_transport, lean_websockets
from chat_app.transport.lean_websockets import PacketQueue, PingScheduler, _service_task, _Writer


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
        scheduled[sock] = time.monotonic()  # before: the queue's own clock reads later
        pings.schedule(sock)
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

    from chat_app.transport import handshake

    server = socketio.Server(async_mode="gevent")
    monkeypatch.setitem(versions.PINNED, other, "0.0")
    held: list[bool] = []
    monkeypatch.setattr(handshake, "install", lambda: held.append(True))
    transport = install_transport(server, max_client_queue=10)
    assert transport.writer is None and not transport.lean
    assert getattr(server.eio, lean_websockets._ATTR, None) is None
    assert "_handle_connect" not in vars(server) and "send_packet" not in vars(server.eio)
    assert held == []  # gevent-websocket's 101 goes out at once, as upstream's
    assert transport.answers.tracked == (other != "python-socketio")
    assert ("_handle_event_internal" in vars(server)) == transport.answers.tracked


class _Chunks:
    """A socket whose recv hands out these chunks, then end of stream."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks, self.asked = list(chunks), []

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        return self.chunks.pop(0)[:n] if self.chunks else b""


def test_socket_reader_reads_exactly_what_is_asked_across_chunks_and_short_at_the_end() -> None:
    sock = _Chunks(b"\x81\x05hel", b"lo\x81", b"\x02ok")
    reader = lean_websockets.SocketReader(sock, pending=b"")
    assert reader.read(2) == b"\x81\x05"  # a header out of the first chunk; the rest kept
    assert reader.read(5) == b"hello"  # 3 kept bytes and 2 of the next chunk
    assert reader.read(2) == b"\x81\x02"
    assert reader.read(2) == b"ok"
    assert reader.read(2) == b""  # end of stream: fewer than asked, as BufferedReader.read
    assert sock.asked[0] == lean_websockets.READ_BUFFER  # a small read still asks for a frame's worth


def test_socket_reader_serves_what_pywsgi_had_buffered_first() -> None:
    reader = lean_websockets.SocketReader(_Chunks(b"lo"), pending=b"hel")
    assert reader.read(5) == b"hello"
