"""HTTP routes: the page, health, one room's state and its members.

The two room routes are open for ordinary rooms of a deployment without AUTH_SECRET, where
anyone may join any room under any name and so learn the same. They need the server API
key for a direct conversation (who talks to whom) and, with AUTH_SECRET, for every room: a
token's `rooms` claim may fence a room, and no node can tell which rooms some token fences.
Either way they read O(page) from Redis, never every member's entry."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, jsonify, render_template, request

from .api import key_refusal
from .backends.base import BackendUnavailable
from .protocol.errors import ChatError, ErrorCode
from .protocol.names import SENDER_MAX_CHARS, direct_members
from .protocol.requests import LeaveRequest, parse
from .service import ChatService, unavailable

# Every HTTP answer Flask makes (the page, its static files, the JSON routes): the page runs
# only its own two scripts (no inline script, style or eval: chat.js and the vendored
# socket.io client) and talks only to its own origin, by XHR or websocket; no other site
# may frame it (clickjacking); nothing is sniffed into another type; a link out does not
# carry the page's URL, whose #fragment names a room.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MEMBER_PAGE_DEFAULT = 100
MEMBER_PAGE_MAX = 1000
ROOM_INFO_MEMBERS = 100  # names in GET /api/rooms/<room>; the members route pages the rest


def _transport_not_here() -> tuple[str, int]:
    return "", 404


def register_routes(app: Flask, service: ChatService) -> None:
    settings = service.settings

    def private(room: str) -> tuple[Any, int] | None:
        """The refusal for a room whose state only the API key may read; None if open."""
        if settings.auth_secret is None and direct_members(room) is None:
            return None
        return key_refusal(settings.api_key)

    # The Socket.IO middleware answers /socket.io/ before Flask routes anything, but
    # Flask-SocketIO builds a request context for every event, and with no rule for that
    # path each one raised and caught a NotFound while matching the URL (~6 us per event).
    for websocket in (False, True):
        app.add_url_rule("/socket.io/", "socketio_transport", _transport_not_here, websocket=websocket)

    @app.after_request
    def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    @app.get("/healthz")
    def healthz() -> Any:
        parts = service.health()
        body = {"status": "ok" if all(parts.values()) else "failing", "instance_id": service.instance_id, **parts}
        body["backend"] = "redis" if service.settings.uses_redis else "memory"
        if not all(parts.values()):
            body["failing"] = [name for name, ok in parts.items() if not ok]
            if unreached := service.unreached():
                body["shards_failing"] = unreached
        return jsonify(body), 200 if all(parts.values()) else 503

    @app.get("/api/rooms/<path:room>")
    def room_info(room: str) -> Any:
        try:
            name = parse(LeaveRequest, room).room
        except ChatError as exc:
            return jsonify({"ok": False, "error": exc.to_wire()}), 400
        if (refused := private(name)) is not None:
            return refused
        try:
            return jsonify(service.room_info(name, ROOM_INFO_MEMBERS))
        except ChatError as exc:
            return jsonify({"ok": False, "error": exc.to_wire()}), 503

    @app.get("/api/rooms/<path:room>/members")
    def room_members(room: str) -> Any:
        """`?cursor=` (the last name of the previous page) and `?limit=` (1-1000)."""
        try:
            name = parse(LeaveRequest, room).room
            cursor = request.args.get("cursor") or None
            if cursor is not None and len(cursor) > SENDER_MAX_CHARS:
                raise ChatError(ErrorCode.INVALID_PAYLOAD, f"cursor is longer than {SENDER_MAX_CHARS} characters")
            limit = _whole(request.args.get("limit"), MEMBER_PAGE_DEFAULT, MEMBER_PAGE_MAX, "limit")
        except ChatError as exc:
            return jsonify({"ok": False, "error": exc.to_wire()}), 400
        if (refused := private(name)) is not None:
            return refused
        try:
            return jsonify(service.member_page(name, cursor, limit))
        except BackendUnavailable as exc:
            return jsonify({"ok": False, "error": unavailable("members not read", exc).to_wire()}), 503


def _whole(raw: str | None, default: int, most: int, name: str) -> int:
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise ChatError(ErrorCode.INVALID_PAYLOAD, f"{name} must be a whole number from 1 to {most}")
    return int(raw)
