"""A user who asks to be forgotten (DELETE /api/users/<user>/messages): their messages leave
the archive and the rooms' Redis histories, and every member on every node is told each one
is gone (`message_deleted {room, id}`), so no page keeps showing it."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar

from .backends.base import Archive, Broker
from .logsafe import q
from .protocol import ChatError, DeletedEvent, ErrorCode

log = logging.getLogger(__name__)
T = TypeVar("T")


class Erasure:
    def __init__(
        self, archive: Archive | None, broker: Broker, instance_id: str, bounded: Callable[[Callable[[], T], str], T]
    ) -> None:
        self._archive = archive
        self._broker = broker
        self._instance_id = instance_id
        self._bounded = bounded

    def erase(self, user: str) -> dict[str, Any]:
        """The archive first: it also refuses the user's messages still on their way to it."""
        archive = self._archive
        if archive is None:
            raise ChatError(ErrorCode.NO_ARCHIVE, "erasure needs the archive: DATABASE_URL is not set")
        deleted = self._bounded(lambda: archive.erase(user), "erasure")
        by_room: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for room, seq, message_id in deleted:
            by_room[room].append((seq, message_id))
        for room, messages in by_room.items():
            self._bounded(
                lambda room=room, messages=messages: self._broker.forget(room, [s for s, _ in messages]), "erasure"
            )
            for _seq, message_id in messages:
                self._broker.signal(DeletedEvent(room, message_id, self._instance_id))
        log.info("event=user_erased user=%s messages=%d rooms=%d", q(user), len(deleted), len(by_room))
        return {"ok": True, "user": user, "deleted": len(deleted), "rooms": sorted(by_room)}
