"""The fan-out's own websocket framing and unmasking, checked against gevent-websocket's."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

import gevent.event
import pytest
from geventwebsocket.websocket import Header

from chat_app.transport.fanout import _unmask, text_frame

original_mask_payload = Header.mask_payload  # before an app installs the C one


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_gevent_websocket(size: int) -> None:
    payload = b"x" * size
    assert text_frame(payload) == bytes(Header.encode_header(True, 0x1, b"", size, 0)) + payload


@pytest.mark.parametrize("size", [0, 3, 64, 4001])
def test_unmask_matches_gevent_websocket(size: int) -> None:
    payload, mask = bytes(range(256)) * (size // 256 + 1), b"\x01\x80\xfe\x37"
    header = Header(True, 0x1, 0, size)
    header.mask = mask
    expected = bytes(original_mask_payload(header, payload[:size]))
    assert _unmask(header, payload[:size]) == expected


class FakeQueue(list):
    def put(self, item: object) -> None:
        self.append(item)

    def qsize(self) -> int:
        return len(self)


class FakeSocket:
    upgraded, upgrading, closed, closing = True, False, False, False

    def __init__(self) -> None:
        self.queue = FakeQueue()
        self.chat_ws = object()


def test_a_packet_taking_engineios_path_does_not_overtake_frames_waiting_for_the_flush() -> None:
    from engineio import packet as eio_packet

    from chat_app.transport.fanout import DirectWriter, FramedPacket

    sock = FakeSocket()

    class FakeEio:
        sockets: ClassVar = {"e1": sock}

        @staticmethod
        def send_packet(eio_sid: str, pkt: object) -> None:  # engine.io's own: into the queue
            sock.queue.put(pkt)

    writer = DirectWriter(FakeEio)
    writer.send_packet("e1", eio_packet.Packet(eio_packet.MESSAGE, "first"))  # waits for the flush
    binary = eio_packet.Packet(eio_packet.MESSAGE, b"\x00second")  # engine.io's own path
    writer.send_packet("e1", binary)

    assert [type(p) for p in sock.queue] == [FramedPacket, eio_packet.Packet]
    assert sock.queue[0].frame == text_frame(b"4first") and sock.queue[1] is binary
    writer.flush()  # nothing left to write twice
    assert len(sock.queue) == 2


# -- the presence linger (PRESENCE_LINGER) ------------------------------------------------


class RecordingWebSocket:
    """What DirectWriter._write reaches: every write_now is one send syscall, recorded."""

    busy = False

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.written = gevent.event.Event()

    def write_now(self, data: bytes) -> int:
        self.writes.append(data)
        self.written.set()
        return len(data)


class WritingSocket(FakeSocket):
    def __init__(self) -> None:
        super().__init__()
        self.chat_ws = RecordingWebSocket()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _writer(linger: float, clock: Callable[[], float] | None = None) -> tuple[Any, WritingSocket]:
    from chat_app.transport.fanout import DirectWriter

    sock = WritingSocket()

    class FakeEio:
        sockets: ClassVar = {"e1": sock}

    return DirectWriter(FakeEio, linger, **({"clock": clock} if clock else {})), sock


def _send(writer: Any, text: str, linger: bool = True) -> None:
    from engineio import packet as eio_packet

    writer.send_packet("e1", eio_packet.Packet(eio_packet.MESSAGE, text), linger=linger)


def _frames(*texts: str) -> bytes:
    return b"".join(text_frame(b"4" + t.encode()) for t in texts)


def _told_one_presence() -> tuple[Clock, Any, WritingSocket]:
    """A writer with a 0.1 s linger whose socket was just told one presence frame, `p1`:
    the first of a quiet spell, written at the loop turn's flush."""
    clock = Clock()
    writer, sock = _writer(0.1, clock)
    _send(writer, "p1")
    writer.flush()
    return clock, writer, sock


def test_a_storms_presence_frames_to_a_socket_go_out_in_one_write_after_the_first() -> None:
    clock, writer, sock = _told_one_presence()
    assert sock.chat_ws.writes == [_frames("p1")]
    clock.now += 0.03
    _send(writer, "p2")
    clock.now += 0.03
    _send(writer, "p3")
    writer.flush()  # the loop turn's flush leaves them lingering
    assert sock.chat_ws.writes == [_frames("p1")]
    writer.flush_lingering()  # the linger's timer
    assert sock.chat_ws.writes == [_frames("p1"), _frames("p2", "p3")]
    assert (writer.counters.direct, writer.counters.writes) == (3, 2)


def test_a_frame_that_may_not_wait_takes_the_lingering_ones_with_it_in_order() -> None:
    _, writer, sock = _told_one_presence()
    _send(writer, "p2")  # lingers
    _send(writer, "message", linger=False)  # a broadcast, an ack: due at this loop turn
    _send(writer, "p3")  # behind the message, in the same write
    writer.flush()
    writer.flush_lingering()
    assert sock.chat_ws.writes == [_frames("p1"), _frames("p2", "message", "p3")]


def test_a_frame_joining_a_linger_keeps_the_storm_going() -> None:
    """Seen counts every frame, the ones that joined a linger too: a socket told of an
    arrival every ~70 ms lingers throughout, rather than every other window going at once."""
    clock, writer, sock = _told_one_presence()
    for at, text in ((0.05, "p2"), (0.12, "p3")):  # lingering, and joining that linger
        clock.now = 100.0 + at
        _send(writer, text)
    writer.flush()
    clock.now = 100.15
    writer.flush_lingering()
    clock.now = 100.21  # the last frame was 0.09 s ago: still a storm, so it lingers
    _send(writer, "p4")
    writer.flush()
    assert sock.chat_ws.writes == [_frames("p1"), _frames("p2", "p3")]
    writer.flush_lingering()
    assert sock.chat_ws.writes == [_frames("p1"), _frames("p2", "p3"), _frames("p4")]


def test_after_a_quiet_spell_a_presence_frame_goes_at_once_again() -> None:
    clock, writer, sock = _told_one_presence()
    clock.now += 0.25  # more than two lingers without one
    _send(writer, "p2")
    writer.flush()
    assert sock.chat_ws.writes == [_frames("p1"), _frames("p2")]


def test_without_a_linger_every_frame_goes_at_its_loop_turns_flush() -> None:
    writer, sock = _writer(0.0)
    for text in ("p1", "p2"):
        _send(writer, text)
        writer.flush()
    assert sock.chat_ws.writes == [_frames("p1"), _frames("p2")]


def test_a_packet_taking_engineios_path_does_not_overtake_lingering_frames() -> None:
    from engineio import packet as eio_packet

    from chat_app.transport.fanout import FramedPacket

    _, writer, sock = _told_one_presence()
    _send(writer, "p2")  # lingers
    binary = eio_packet.Packet(eio_packet.MESSAGE, b"\x00second")
    writer.send_packet("e1", binary)
    assert [type(p) for p in sock.queue] == [FramedPacket, eio_packet.Packet]
    assert sock.queue[0].frame == _frames("p2") and sock.queue[1] is binary
    writer.flush_lingering()  # nothing left to write twice
    assert sock.chat_ws.writes == [_frames("p1")]


def test_the_lingering_frames_are_written_when_the_linger_runs_out() -> None:
    """gevent's own loop: the flush after the loop turn, then the linger's timer, for each
    linger (libev's timer, started again once it fired, would fire at once; its cached
    loop time may make it early by a few ms, hence half the linger as the bound)."""
    linger = 0.05
    writer, sock = _writer(linger)
    ws = sock.chat_ws
    _send(writer, "p1")
    assert ws.written.wait(timeout=2)
    for texts in (("p2", "p3"), ("p4",)):
        ws.written.clear()
        started = time.monotonic()
        for text in texts:
            _send(writer, text)
        assert ws.written.wait(timeout=2)
        assert time.monotonic() - started >= linger / 2
        assert ws.writes[-1] == _frames(*texts)
    assert len(ws.writes) == 3


def test_presence_events_are_the_ones_that_may_linger() -> None:
    from chat_app.transport.socketio_out import SocketIOOut

    class Fanout:
        def __init__(self) -> None:
            self.sent: list[tuple[str, str, bool]] = []

        def emit(self, event: str, data: Any, room: str, skip: Any = (), linger: bool = False) -> None:
            self.sent.append((event, room, linger))

    class Transport:
        fanout = Fanout()
        pinned = False

    out = SocketIOOut(object(), Transport())  # type: ignore[arg-type]
    out.emit_room("presence", {}, "lobby")
    out.emit_room("broadcast_message", {}, "lobby")
    out.emit_room("typing", {}, "lobby")
    out.emit_to("sid1", "presence", {})
    out.emit_to("sid1", "room_left", {})
    assert Transport.fanout.sent == [
        ("presence", "r/lobby", True),
        ("broadcast_message", "r/lobby", False),
        ("typing", "r/lobby", False),
        ("presence", "sid1", True),
        ("room_left", "sid1", False),
    ]
