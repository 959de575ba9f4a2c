"""The port to this node's own sockets. ChatService, the delivery engine and the presence
feed all emit through it, so it lives apart from each of them (no import cycle) and a test
can record what every socket would have received."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol


class Emitter(Protocol):
    """Emits to this node's sockets only: a room's local members, or one socket."""

    def emit_room(self, event: str, data: dict[str, Any], room: str, skip: Collection[str] = ()) -> None: ...
    def emit_to(self, sid: str, event: str, data: dict[str, Any]) -> None: ...
    def enter_room(self, sid: str, room: str) -> None: ...
    def leave_room(self, sid: str, room: str) -> None: ...
    def disconnect(self, sid: str) -> None:
        """Close the socket after what was emitted to it so far."""
        ...
