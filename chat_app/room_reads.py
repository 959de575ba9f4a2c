"""RoomReads: what is read of rooms for an answer: a join's ack (its history), and for the
HTTP routes and the server API history pages, room lists, member pages, a room's summary.
No connection of this node is involved, so it stands apart from ChatService, which hands
these calls on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from .backends.base import (
    Archive,
    BackendUnavailable,
    Broker,
    DirectLists,
    Joined,
    Position,
    RoomListing,
    RoomPresence,
    within,
)
from .protocol import ChatError, Envelope, ErrorCode, JoinRequest, direct_members

T = TypeVar("T")


class _Reads(RoomPresence, RoomListing, DirectLists, Protocol):
    """The presence ports these reads use."""


class RoomReads:
    def __init__(
        self,
        broker: Broker,
        presence: _Reads,
        deadline: float,
        unavailable: Callable[[str, BaseException], ChatError],
        archive: Archive | None = None,
    ) -> None:
        self._archive = archive
        self._broker = broker
        self._presence = presence
        self._deadline = deadline
        self._unavailable = unavailable

    def bounded(self, call: Callable[[], T], what: str) -> T:
        """`call()` within SEND_DEADLINE, else `unavailable`: the server API promises an answer."""
        try:
            return within(self._deadline, call, what)
        except BackendUnavailable as exc:
            raise self._unavailable(f"{what} not read", exc) from None

    def join_ack(self, room: str, req: JoinRequest, cursor: Position, joined: Joined) -> dict[str, Any]:
        """A join's ack: history up to the join's bound `cursor`, after `req.since` when the
        client recovers (`recovered`: whether all of it was still there, in its epoch)."""
        recovering = req.since is not None
        envelopes: Sequence[Envelope] = ()
        recovered = False
        try:
            if recovering and (req.epoch is None or req.epoch == cursor.epoch) and req.since <= cursor.seq:
                history = self._broker.history(room, after=req.since, upto=cursor.seq)
                recovered = history.complete and history.position.epoch == cursor.epoch
                envelopes = history.envelopes if recovered else ()  # a failed recovery: none
            elif not recovering and cursor.seq > 0:
                envelopes = self._broker.history(room, after=None, upto=cursor.seq).envelopes
            # Else no read: up to seq 0 nothing is stored (seqs start at 1), and a recovery
            # that cannot be one answers no history. A join into a room without messages
            # costs one round trip (the presence write), not two.
        except BackendUnavailable as exc:
            raise self._unavailable("could not read the room", exc) from None
        ack: dict[str, Any] = {
            "ok": True,
            "room": room,
            "seq": cursor.seq,
            "epoch": cursor.epoch,
            "members": list(joined.names),
            "members_count": joined.members_count,
            "history": [e.to_client() for e in envelopes if e.epoch == cursor.epoch],
        }
        if recovering:
            ack["recovered"] = recovered
        return ack

    def directs(self, user: str, limit: int, allows: Callable[[str], bool]) -> list[dict[str, Any]]:
        """The user's direct conversations as list_directs answers them, newest first; those
        `allows` (the token's rooms claim) refuses are left out."""
        found = self.bounded(lambda: self._presence.directs(user, limit), "directs")
        directs = []
        for d in found:
            pair = direct_members(d.room)
            if pair is None or user not in pair or not allows(d.room):
                continue  # not a name this server writes, or one the token's claim fences off
            directs.append(
                {
                    "room": d.room,
                    "with": pair[1] if pair[0] == user else pair[0],
                    "seq": d.position.seq if d.position else 0,
                    "epoch": d.position.epoch if d.position else None,
                    "at": d.at,
                }
            )
        return directs

    def history_page(self, room: str, before: int | None, limit: int) -> dict[str, Any]:
        """Up to `limit` messages with seq < `before` (the newest without it), oldest first,
        of the room's current epoch only: "load older messages", within what it keeps."""
        upto = None if before is None else before - 1
        history = self.bounded(lambda: self._broker.history(room, after=None, upto=upto, limit=limit), "history")
        epoch = history.position.epoch
        messages = [e.to_client() for e in history.envelopes if e.epoch == epoch]
        return {"ok": True, "room": room, "epoch": epoch or None, "messages": messages}

    def search(self, room: str, query: str, limit: int) -> dict[str, Any]:
        """The room's archived messages that match, newest first (the archive's full-text
        search; the caller has checked who may read the room)."""
        archive = self._archive
        if archive is None:
            raise ChatError(ErrorCode.NO_ARCHIVE, "search needs the archive: DATABASE_URL is not set")
        found = self.bounded(lambda: archive.search(room, query, limit), "search")
        return {"ok": True, "room": room, "messages": [e.to_client() for e in found]}

    def rooms_page(self, cursor: str | None, limit: int) -> dict[str, Any]:
        try:
            page = self.bounded(lambda: self._presence.rooms(cursor, limit), "rooms")
        except ValueError as exc:
            raise ChatError(ErrorCode.INVALID_PAYLOAD, f"cursor: {exc}") from None
        rooms = [{"room": r.room, "members": r.members, "connections": r.connections} for r in page.rooms]
        return {"ok": True, "rooms": rooms, "cursor": page.cursor}

    def member_page(self, room: str, after: str | None, limit: int) -> dict[str, Any]:
        """A page of the room's member names, in name order: the full list of a big room."""
        count, names = self.bounded(lambda: self._presence.names(room, after, limit), "members")
        return {
            "ok": True,
            "room": room,
            "members_count": count,
            "members": names,
            "next_cursor": names[-1] if len(names) == limit else None,
        }

    def room_info(self, room: str, limit: int) -> dict[str, Any]:
        """The room's seq, how many users it has and the first `limit` of their names: one
        read of O(limit), since the route is open (members.lua read every connection)."""
        position, count, names = self.bounded(lambda: self._presence.summary(room, limit), "room")
        return {
            "room": room,
            "active": count > 0,
            "members": names,
            "members_count": count,
            "seq": position.seq if position else 0,
        }
