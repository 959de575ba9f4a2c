"""The server API from a test: the key nodes are started with, HTTP calls carrying it, and a
Socket.IO client that records the events the API's commands cause, in arrival order."""

from __future__ import annotations

from typing import Any

import requests
from helpers import ChatClient

KEY = "test-api-key-0123456789abcdef0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVER_EVENTS = ("room_joined", "room_left", "disconnected_by_server")


class ApiClient(ChatClient):
    """A ChatClient that also records the server API's events, and every event in the one
    order they arrived (room_joined must come before the room's live messages)."""

    RECORDED = ChatClient.RECORDED | set(SERVER_EVENTS)

    def __init__(self, url: str, username: str | None = None, **kw: Any) -> None:
        self.order: list[tuple[str, Any]] = []
        super().__init__(url, username, **kw)

    def _record(self, kind: str, data: Any) -> None:
        if kind in self.RECORDED:
            with self._lock:
                self.order.append((kind, data))
        super()._record(kind, data)


def api(method: str, url: str, path: str, timeout: float = 10, **kw: Any) -> requests.Response:
    kw.setdefault("headers", AUTH)
    return requests.request(method, f"{url}{path}", timeout=timeout, **kw)


def seq_of(url: str, room: str) -> int:
    return requests.get(f"{url}/api/rooms/{room}", timeout=5).json()["seq"]
