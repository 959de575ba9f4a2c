"""The fan-out's own websocket framing, checked against gevent-websocket's."""

from __future__ import annotations

import pytest
from geventwebsocket.websocket import Header

from chat_app.fanout import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_matches_gevent_websocket(size: int) -> None:
    payload = b"x" * size
    assert text_frame(payload) == bytes(Header.encode_header(True, 0x1, b"", size, 0)) + payload
