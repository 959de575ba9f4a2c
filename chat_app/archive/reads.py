"""Reads from the archive for the node: history older than Redis holds, search, a user's
direct conversations. A database that is away costs a reader what Redis alone has, never an
error of its own (sends and joins go on)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

from ..backends.base import BackendUnavailable, Direct, Position
from ..logsafe import LogThrottle, q
from ..protocol.wire import BadEnvelope, Envelope, decode_envelope
from .store import DATABASE_ERRORS, ArchiveStore

log = logging.getLogger(__name__)
throttled = LogThrottle(log, rate=0.2, burst=3)

MAX_FILL = 1000  # a catch-up gap the archive fills in one read; past it, the client pages instead


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    try:
        yield
    except DATABASE_ERRORS as exc:
        raise BackendUnavailable(f"the archive did not answer the {what}: {exc}") from exc


class ArchiveReads:
    def __init__(self, store: ArchiveStore, envelope_limit: int) -> None:
        self._store = store
        self._limit = envelope_limit

    def before(
        self, room: str, position: Position, held: Sequence[Envelope], last: int, after: int | None, limit: int
    ) -> list[Envelope]:
        first = held[0].seq if held else last + 1
        if after is None:
            want, since, epoch = limit - len(held), 0, None
        else:
            # A catch-up: only the client's own epoch, and only a gap the archive can close.
            want, since, epoch = first - 1 - after, after, position.epoch
            if want > MAX_FILL:
                return []
        if first <= 1 or want <= 0:
            return []
        try:
            rows = self._store.page(room, first, want, since, epoch)
        except DATABASE_ERRORS as exc:
            throttled.log(logging.WARNING, "read", "event=archive_read_failed room=%s error=%s", q(room), q(str(exc)))
            return []
        found = self._decode(rows)
        if after is not None and [e.seq for e in found] != list(range(after + 1, first)):
            return []  # a hole (a message trimmed from Redis before the writer took it): say incomplete
        return found

    def page(self, room: str, before: int | None, limit: int) -> list[Envelope]:
        """A history page straight from the archive (HTTP `before=`), oldest first."""
        return self._decode(self._store.page(room, before, limit, 0, None))

    def search(self, room: str, query: str, limit: int) -> list[Envelope]:
        with _unavailable("search"):
            return self._decode(self._store.search(room, query, limit))

    def erase(self, user: str) -> list[tuple[str, int, str]]:
        with _unavailable("erasure"):
            return self._store.erase(user)

    def directs(self, user: str, limit: int) -> list[Direct]:
        try:
            found = self._store.directs(user, limit)
        except DATABASE_ERRORS as exc:
            throttled.log(logging.WARNING, "read", "event=archive_read_failed error=%s", q(str(exc)))
            return []
        return [Direct(room, at, Position(p.epoch, p.seq) if p else None) for room, at, p in found]

    def _decode(self, rows: Sequence[str]) -> list[Envelope]:
        found = []
        for raw in rows:
            try:
                found.append(decode_envelope(raw, max(self._limit, len(raw))))
            except BadEnvelope as exc:
                throttled.log(logging.ERROR, "decode", "event=archive_bad_row error=%s", q(str(exc)))
        return found
