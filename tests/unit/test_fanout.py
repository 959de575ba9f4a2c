"""The fan-out's own websocket framing and unmasking, checked against gevent-websocket's."""

from __future__ import annotations

from typing import ClassVar

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
