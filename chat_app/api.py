"""Every route under /api: a room's state and members (open), and the server API (keyed)
for backends that are not Python (ChatEmitter is the same from Python): post into rooms,
read a room's history, list rooms, act on users on every node; and the OpenAPI document
of every route (chat_app.openapi), open.

The server API is off unless API_KEY is set; every call must then carry `Authorization:
Bearer <API_KEY>`, compared in constant time, before anything else is looked at.

The two open room routes (`/api/rooms/<room>` and its `/members`) answer for ordinary rooms
of a deployment without AUTH_SECRET, where anyone may join any room under any name and so
learn the same. They need the API key for a direct conversation (who talks to whom) and,
with AUTH_SECRET, for every room: a token's `rooms` claim may fence a room, and no node can
tell which rooms some token fences. Either way they read O(page) from Redis, never every
member's entry.

JSON in and out; an error is `{ok: false, error: {code, message}}` with the socket
protocol's codes, and the status says its kind (400 bad input, 401 key, 404 off or no such
route, 503 Redis not answering within SEND_DEADLINE: ChatService bounds every Redis call).
Views are thin: validate (protocol.requests), call ChatService, answer."""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

from .logsafe import q
from .protocol.errors import ChatError, ErrorCode
from .protocol.names import check_room_name, direct_members
from .protocol.requests import (
    HistoryQuery,
    MemberPageQuery,
    PublishRequest,
    RoomsQuery,
    SearchQuery,
    UserDisconnectRequest,
    UserLeaveRequest,
    UserRequest,
    UserRoomRequest,
    parse,
)
from .protocol.wire import CommandAction
from .service import ChatService, throttled

log = logging.getLogger(__name__)

STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN_ROOM: 403,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.BANNED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.INTERNAL: 500,
    ErrorCode.NO_ARCHIVE: 501,
}  # every other code is bad input: 400

View = Callable[..., dict[str, Any]]
ROOM_INFO_MEMBERS = 100  # names in GET /api/rooms/<room>; the members route pages the rest


class AnyText(PathConverter):
    """A path part that may hold anything, slashes and control characters included, so that
    a bad room or user name reaches the view and is answered with a 400 and its code."""

    regex = r"[^/][\s\S]*?"


class OpenRoomPath(PathConverter):
    """The open room routes' room: any path but one that ends as the POST-only messages route
    does, so that `GET /api/rooms/<room>/messages` is a 405 (with Allow) rather than a read of
    the room named `<room>/messages` (a 400)."""

    regex = r"[^/].*?(?<!/messages)"


def _error(error: ChatError, status: int | None = None) -> tuple[Response, int]:
    return jsonify({"ok": False, "error": error.to_wire()}), status or STATUS.get(error.code, 400)


def _answer(call: Callable[[], dict[str, Any]]) -> Any:
    """The one error shape: a ChatError with its status, anything else a logged 500."""
    try:
        return jsonify(call())
    except ChatError as exc:
        return _error(exc)
    except Exception:
        log.exception("event=api_failed path=%s", q(request.path))
        return _error(ChatError(ErrorCode.INTERNAL, "the server failed to handle this call"))


def key_refusal(api_key: str | None) -> tuple[Response, int] | None:
    """None when the request carries `Authorization: Bearer <API_KEY>` (compared in
    constant time); else the answer: 404 while the API is off, 401 otherwise."""
    if api_key is None:
        return _error(ChatError(ErrorCode.NOT_FOUND, "the server API is off: set API_KEY to turn it on"))
    given = request.headers.get("Authorization", "").encode("latin-1")
    if hmac.compare_digest(given, f"Bearer {api_key}".encode()):
        return None
    throttled.log(logging.WARNING, "api_unauthorized", "event=api_unauthorized path=%s", q(request.path))
    response, status = _error(
        ChatError(ErrorCode.UNAUTHORIZED, "this call needs the header `Authorization: Bearer <API_KEY>`")
    )
    response.headers["WWW-Authenticate"] = "Bearer"
    return response, status


def _register_open_rooms(app: Flask, service: ChatService) -> None:
    """GET /api/rooms/<room> and its /members: open, but for private rooms (above)."""
    settings = service.settings
    app.url_map.converters["open_room"] = OpenRoomPath

    def open_room(view: Callable[[str], dict[str, Any]]) -> Callable[..., Any]:
        """The room's name first (a bad one is a 400 to anyone), then the key, for a room
        whose state only the key may read."""

        @functools.wraps(view)
        def guarded(room: str) -> Any:
            try:
                name = check_room_name(room)
            except ChatError as exc:
                return _error(exc)
            private = settings.auth_secret is not None or direct_members(name) is not None
            if private and (refused := key_refusal(settings.api_key)) is not None:
                return refused
            return _answer(lambda: view(name))

        return guarded

    @app.get("/api/rooms/<open_room:room>")
    @open_room
    def room_info(room: str) -> dict[str, Any]:
        return service.reads.room_info(room, ROOM_INFO_MEMBERS)

    @app.get("/api/rooms/<open_room:room>/members")
    @open_room
    def room_members(room: str) -> dict[str, Any]:
        """`?cursor=` (the last name of the previous page) and `?limit=` (1-1000)."""
        query = parse(MemberPageQuery, request.args.to_dict())
        return service.reads.member_page(room, query.cursor or None, query.limit)


def register_api(app: Flask, service: ChatService) -> None:
    """The keyed routes. Long only by count: one short view per route, sharing `keyed` and `body`."""
    _register_open_rooms(app, service)
    settings = service.settings
    body_limit = 8 * settings.max_message_bytes + 4096  # a full message, JSON-escaped, and the rest
    app.url_map.converters["text"] = AnyText

    def body() -> dict[str, Any]:
        """The JSON object sent, {} for none (an empty body: whitespace is not JSON); read only
        up to a bound."""
        if (request.content_length or 0) > body_limit:
            raise ChatError(ErrorCode.MESSAGE_TOO_LARGE, f"the body is over {body_limit} bytes")
        raw = request.stream.read(body_limit + 1)
        if len(raw) > body_limit:
            raise ChatError(ErrorCode.MESSAGE_TOO_LARGE, f"the body is over {body_limit} bytes")
        if not raw:
            return {}
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ChatError(ErrorCode.INVALID_PAYLOAD, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise ChatError(ErrorCode.INVALID_PAYLOAD, "the body must be a JSON object")
        return data

    def keyed(view: View) -> Callable[..., Any]:
        """The key first: a call without it learns nothing and changes nothing."""

        @functools.wraps(view)
        def guarded(**kwargs: Any) -> Any:
            if (refused := key_refusal(settings.api_key)) is not None:
                return refused
            return _answer(lambda: view(**kwargs))

        return guarded

    @app.post("/api/rooms/<text:room>/messages")
    @keyed
    def post_message(room: str) -> dict[str, Any]:
        req = parse(PublishRequest, {**body(), "room": room}, max_message_bytes=settings.max_message_bytes)
        return service.server.publish(req)

    @app.get("/api/rooms/<text:room>/history")
    @keyed
    def room_history(room: str) -> dict[str, Any]:
        name = check_room_name(room)
        query = parse(HistoryQuery, request.args.to_dict())
        return service.reads.history_page(name, query.before, query.limit)

    @app.get("/api/rooms/<text:room>/search")
    @keyed
    def room_search(room: str) -> dict[str, Any]:
        """`?q=` (web-search syntax: words, "a phrase", -not, or) and `?limit=` (1-100)."""
        name = check_room_name(room)
        query = parse(SearchQuery, request.args.to_dict())
        return service.reads.search(name, query.q, query.limit)

    @app.delete("/api/users/<text:user>/messages")
    @keyed
    def erase_user(user: str) -> dict[str, Any]:
        """Forget a user: their messages leave the archive and Redis; members are told."""
        return service.erasure.erase(parse(UserRequest, {"user": user}).user)

    @app.get("/api/rooms")
    @keyed
    def rooms() -> dict[str, Any]:
        query = parse(RoomsQuery, request.args.to_dict())
        return service.reads.rooms_page(query.cursor, query.limit)

    @app.post("/api/users/<text:user>/rooms/<text:room>")
    @keyed
    def join_user(user: str, room: str) -> dict[str, Any]:
        req = parse(UserRoomRequest, {**body(), "user": user, "room": room})
        return service.server.command(CommandAction.JOIN, req.user, req.room)

    @app.delete("/api/users/<text:user>/rooms/<text:room>")
    @keyed
    def leave_user(user: str, room: str) -> dict[str, Any]:
        req = parse(UserLeaveRequest, {**body(), "user": user, "room": room})
        return service.server.command(CommandAction.LEAVE, req.user, req.room, ban_seconds=req.ban_seconds)

    @app.post("/api/users/<text:user>/disconnect")
    @keyed
    def disconnect_user(user: str) -> dict[str, Any]:
        req = parse(UserDisconnectRequest, {**body(), "user": user})
        return service.server.command(CommandAction.DISCONNECT, req.user, reason=req.reason)

    _register_webhooks(app, keyed)
    _register_document_and_errors(app)


def _register_document_and_errors(app: Flask) -> None:
    """The OpenAPI document, and JSON for what Flask refuses before a view runs."""

    @app.get("/api/openapi.json")
    def openapi_document() -> Response:
        """This API's OpenAPI document, open: it says what the README says, nothing of a deployment."""
        from .openapi import render  # it reads STATUS from this module

        return Response(render(), mimetype="application/json")

    @app.errorhandler(HTTPException)
    def api_http_error(exc: HTTPException) -> Any:
        """No route, wrong method: JSON under /api/ too; elsewhere Flask's own answer."""
        if not request.path.startswith("/api/"):
            return exc
        code = ErrorCode.NOT_FOUND if exc.code in {404, 405} else ErrorCode.INVALID_PAYLOAD
        response, status = _error(ChatError(code, exc.description or exc.name), exc.code)
        for name, value in exc.get_headers():
            if name == "Allow":  # a 405 says which methods the route has (RFC 9110)
                response.headers[name] = value
        return response, status


def _register_webhooks(app: Flask, keyed: Callable[[View], Callable[..., Any]]) -> None:
    """The webhook outbox's failed events: listed and replayed (WEBHOOK_URL)."""

    def webhook_outbox() -> Any:
        archive = app.extensions.get("chat_archive")
        if archive is None or archive.webhooks is None:
            raise ChatError(ErrorCode.NOT_FOUND, "webhooks are off: set WEBHOOK_URL (with DATABASE_URL)")
        return archive.webhooks.outbox

    @app.get("/api/webhooks/failed")
    @keyed
    def webhooks_failed() -> dict[str, Any]:
        """Events every try of which failed (the first 100), kept for a replay."""
        outbox = webhook_outbox()
        return {"ok": True, **outbox.counts(), "events": outbox.failed()}

    @app.post("/api/webhooks/failed/replay")
    @keyed
    def webhooks_replay() -> dict[str, Any]:
        """Every failed event goes out again, same webhook-id, from its first try."""
        replayed = webhook_outbox().replay()
        log.info("event=webhooks_replayed count=%d", replayed)
        return {"ok": True, "replayed": replayed}
