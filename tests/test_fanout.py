"""The fan-out's own websocket framing and unmasking, checked against gevent-websocket's."""

from __future__ import annotations

import pytest
from geventwebsocket.websocket import Header

from chat_app.fanout import _unmask, text_frame

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
