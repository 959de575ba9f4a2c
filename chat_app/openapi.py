"""The OpenAPI 3.1 document of every HTTP route, built from the pydantic models that validate
the requests (protocol.requests) and describe the answers (protocol.responses), so that it
is never edited by hand to match. Served at GET /api/openapi.json; kept in the repository as
docs/openapi.json, regenerated with `python -m chat_app.openapi > docs/openapi.json` (a test
fails when the two differ, or when a Flask route and the document disagree).

Each route is one `Operation` below: its path parameters, query model, body model (the
fields the path fills are left out of the body), answer model and the error codes it may
answer, whose statuses come from api.STATUS."""

from __future__ import annotations

import functools
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from . import api
from .protocol.errors import ErrorCode
from .protocol.names import Room, User
from .protocol.requests import (
    HistoryQuery,
    MemberPageQuery,
    PublishRequest,
    RoomsQuery,
    SearchQuery,
    UserDisconnectRequest,
    UserLeaveRequest,
    UserRoomRequest,
)
from .protocol.responses import (
    CommandDone,
    Erased,
    ErrorAnswer,
    Health,
    HistoryPage,
    MemberPage,
    Posted,
    Replayed,
    RoomInfo,
    RoomsPage,
    SearchPage,
    WebhooksFailed,
)

VERSION = "0.1.0"  # pyproject.toml's (a test checks)
REF = "#/components/schemas/{model}"
PATH_NAMES: dict[str, Any] = {"room": Room, "user": User}
Access = Literal["key", "room", "open"]  # the server API's key; the open room routes' rule; none

# What every call may meet whatever it asks: a bug, and Redis not answering in time.
ALWAYS = (ErrorCode.INTERNAL, ErrorCode.UNAVAILABLE)
KEYED = (ErrorCode.UNAUTHORIZED, ErrorCode.NOT_FOUND)  # 404: the API is off (API_KEY unset)

KEY_TEXT = (
    "Needs `Authorization: Bearer <API_KEY>` (401 without it; 404 while API_KEY is unset: the server API is off)."
)
ROOM_TEXT = (
    "Open for an ordinary room of a deployment without AUTH_SECRET. A direct conversation's "
    "name (`@a+b`), and every room when AUTH_SECRET is set, needs the API key (401 without it, "
    "404 while API_KEY is unset). A bad room name is a 400 to anyone."
)


@dataclass(frozen=True)
class Operation:
    """One route and method, as the document tells it."""

    method: str
    path: str  # OpenAPI's spelling: {room}
    operation_id: str
    summary: str
    tag: str
    answer: type[BaseModel]
    errors: tuple[ErrorCode, ...] = ()
    access: Access = "key"
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    body_required: bool = False
    body_example: dict[str, Any] | None = None
    description: str = ""
    answer_status: int = 200
    extra_responses: dict[str, Any] = field(default_factory=dict)
    # OpenAPI links from the answer: name -> (operationId, parameters as runtime expressions);
    # clients and schemathesis's stateful phase follow them.
    links: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        "/api/rooms/{room}/messages",
        "postMessage",
        "Post into a room, on every node",
        "server API",
        Posted,
        (
            ErrorCode.INVALID_PAYLOAD,
            ErrorCode.INVALID_ROOM,
            ErrorCode.INVALID_USER,
            ErrorCode.MESSAGE_TOO_LARGE,
            ErrorCode.BANNED,
            ErrorCode.OVERLOADED,
        ),
        body=PublishRequest,
        body_required=True,
        body_example={"message": "Your order shipped", "sender": "shop", "key": "o-42"},
        links={
            "HistoryBefore": ("roomHistory", {"room": "$request.path.room", "before": "$response.body#/seq"}),
            "RoomInfo": ("roomInfo", {"room": "$request.path.room"}),
        },
        description="Stored and delivered exactly as a member's `send_message`; a retry with the same `key` "
        "(and sender) stores once and answers the same `id` and `seq`. A `sender` banned from the room is "
        "refused `banned` (403).",
    ),
    Operation(
        "get",
        "/api/rooms/{room}/history",
        "roomHistory",
        "A page of a room's history, oldest first",
        "server API",
        HistoryPage,
        (ErrorCode.INVALID_PAYLOAD, ErrorCode.INVALID_ROOM),
        query=HistoryQuery,
        description="The newest `limit` messages, or those with seq < `before`; with the archive, paging "
        "reaches the room's first message.",
    ),
    Operation(
        "get",
        "/api/rooms/{room}/search",
        "searchRoom",
        "Full-text search of a room's archive, newest first",
        "archive",
        SearchPage,
        (ErrorCode.INVALID_PAYLOAD, ErrorCode.INVALID_ROOM, ErrorCode.NO_ARCHIVE),
        query=SearchQuery,
        description='`q` in web-search syntax: words, "a phrase", -word, or. 501 `no_archive` without DATABASE_URL.',
    ),
    Operation(
        "delete",
        "/api/users/{user}/messages",
        "eraseUser",
        "Forget a user: their messages leave the archive and Redis",
        "archive",
        Erased,
        (ErrorCode.INVALID_USER, ErrorCode.NO_ARCHIVE),
        description="Every member on every node gets `message_deleted {room, id}` for each. 501 `no_archive` "
        "without DATABASE_URL.",
    ),
    Operation(
        "get",
        "/api/webhooks/failed",
        "failedWebhooks",
        "Webhook events kept as failed after every try",
        "webhooks",
        WebhooksFailed,
        description="404 `not_found` while WEBHOOK_URL is unset.",
    ),
    Operation(
        "post",
        "/api/webhooks/failed/replay",
        "replayWebhooks",
        "Send every failed webhook event again, with the same webhook-id",
        "webhooks",
        Replayed,
        description="404 `not_found` while WEBHOOK_URL is unset.",
    ),
    Operation(
        "get",
        "/api/rooms",
        "listRooms",
        "Rooms with members, page by page",
        "server API",
        RoomsPage,
        (ErrorCode.INVALID_PAYLOAD,),
        query=RoomsQuery,
        description="Scans (never KEYS): a page holds about `limit` rooms; a room may show twice while Redis "
        "resizes its table. Pass `cursor` back until it is null.",
    ),
    Operation(
        "post",
        "/api/users/{user}/rooms/{room}",
        "joinUser",
        "Every connection of a user joins a room, on every node",
        "server API",
        CommandDone,
        (ErrorCode.INVALID_PAYLOAD, ErrorCode.INVALID_ROOM, ErrorCode.INVALID_USER),
        body=UserRoomRequest,
        description="Each connection gets `room_joined`; one already in the room is left alone (not counted).",
        links={
            "Leave": ("leaveUser", {"user": "$request.path.user", "room": "$request.path.room"}),
            "Members": ("roomMembers", {"room": "$request.path.room"}),
        },
    ),
    Operation(
        "delete",
        "/api/users/{user}/rooms/{room}",
        "leaveUser",
        "Every connection of a user leaves a room, on every node; optionally banned",
        "server API",
        CommandDone,
        (ErrorCode.INVALID_PAYLOAD, ErrorCode.INVALID_ROOM, ErrorCode.INVALID_USER),
        body=UserLeaveRequest,
        body_example={"ban_seconds": 3600},
        description="Each connection gets `room_left`. While a ban lasts, the user's joins are refused "
        "`forbidden_room` and sends under that name `banned`.",
    ),
    Operation(
        "post",
        "/api/users/{user}/disconnect",
        "disconnectUser",
        "Every connection of a user is told why and closed, on every node",
        "server API",
        CommandDone,
        (ErrorCode.INVALID_PAYLOAD, ErrorCode.INVALID_USER),
        body=UserDisconnectRequest,
        body_example={"reason": "account closed"},
    ),
    Operation(
        "get",
        "/api/rooms/{room}",
        "roomInfo",
        "A room's seq, how many users it has and the first 100 of their names",
        "rooms",
        RoomInfo,
        (ErrorCode.INVALID_ROOM,),
        access="room",
        description=ROOM_TEXT,
    ),
    Operation(
        "get",
        "/api/rooms/{room}/members",
        "roomMembers",
        "A page of a room's member names, in name order",
        "rooms",
        MemberPage,
        (ErrorCode.INVALID_PAYLOAD, ErrorCode.INVALID_ROOM),
        access="room",
        query=MemberPageQuery,
        description=ROOM_TEXT,
    ),
    Operation(
        "get",
        "/healthz",
        "health",
        "Whether the node can serve: each part, 503 when one fails",
        "operations",
        Health,
        access="open",
        description="For load balancers and probes. Says nothing of rooms or users.",
        extra_responses={
            "503": {
                "description": "A part fails (`failing` names it): take the node out of rotation",
                "content": {"application/json": {"schema": {"$ref": REF.format(model="Health")}}},
            }
        },
    ),
)

# Routes whose answer is not JSON of a model: the document itself and the Prometheus text.
OPENAPI_PATH = "/api/openapi.json"
PLAIN_PATHS: dict[str, dict[str, Any]] = {
    OPENAPI_PATH: {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["operations"],
            "security": [],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3.1 document",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (keep off the public network)",
            "tags": ["operations"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}


def _status(code: ErrorCode) -> int:
    return api.STATUS.get(code, 400)


def _errors(op: Operation) -> dict[str, Any]:
    """One response per status, its schema the error shape with the codes it may carry."""
    if not op.path.startswith("/api/"):
        return {}  # /healthz answers its own shape, 503 included
    codes = [*op.errors, *ALWAYS]
    if op.access in {"key", "room"}:
        codes += KEYED  # the open room routes: for the rooms that need the key
    else:
        codes.append(ErrorCode.NOT_FOUND)
    by_status: dict[int, list[ErrorCode]] = defaultdict(list)
    for code in dict.fromkeys(codes):
        by_status[_status(code)].append(code)
    responses = {}
    for status, group in sorted(by_status.items()):
        schema = {
            "allOf": [{"$ref": REF.format(model="ErrorAnswer")}],
            "properties": {"error": {"properties": {"code": {"enum": [c.value for c in group]}}}},
        }
        example = {"ok": False, "error": {"code": group[0].value, "message": "..."}}
        responses[str(status)] = {
            "description": "Refused, nothing changed: " + ", ".join(f"`{c.value}`" for c in group),
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    if op.access in {"key", "room"}:
        responses["401"]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}}
    return responses


def _model_schema(model: type[BaseModel], defs: dict[str, Any]) -> dict[str, Any]:
    """The model's JSON schema, its nested models moved into the components."""
    schema = model.model_json_schema(ref_template=REF)
    defs.update(schema.pop("$defs", {}))
    return schema


def _parameters(op: Operation, defs: dict[str, Any]) -> list[dict[str, Any]]:
    params = []
    for name in op.path_params:
        schema = TypeAdapter(PATH_NAMES[name]).json_schema(ref_template=REF)
        params.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": f"{schema.get('description', '')}; percent-encoded",
                "schema": {k: v for k, v in schema.items() if k not in {"description", "examples"}},
                "example": schema["examples"][0],
            }
        )
    if op.query is not None:
        schema = _model_schema(op.query, defs)
        required = set(schema.get("required", ()))
        for name, prop in schema["properties"].items():
            param = {"name": name, "in": "query", "required": name in required, "schema": _not_null(prop)}
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    return params


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is text or absent, never JSON null: `X | None` is just X there."""
    branches = [b for b in prop.get("anyOf", ()) if b.get("type") != "null"]
    if len(branches) != 1:
        return prop
    out = {k: v for k, v in prop.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**branches[0], **out}


def _body(op: Operation, defs: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON object the route reads: its model's fields but those the path gives."""
    if op.body is None:
        return None
    schema = _model_schema(op.body, defs)
    taken = set(op.path_params)
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k not in taken}
    if required := [k for k in schema.get("required", ()) if k not in taken]:
        schema["required"] = required
    else:
        schema.pop("required", None)
    name = f"{op.operation_id[0].upper()}{op.operation_id[1:]}Body"  # a generated client's class
    defs[name] = {**schema, "title": name}
    content: dict[str, Any] = {"schema": {"$ref": REF.format(model=name)}}
    if op.body_example is not None:
        content["example"] = op.body_example
    return {"required": op.body_required, "content": {"application/json": content}}


def _operation(op: Operation, defs: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": " ".join((op.answer.__doc__ or "Done").split("\n\n")[0].split()),
        "content": {"application/json": {"schema": {"$ref": REF.format(model=op.answer.__name__)}}},
    }
    if op.links:
        answer["links"] = {
            name: {"operationId": target, "parameters": params} for name, (target, params) in op.links.items()
        }
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    text = " ".join(t for t in (op.description, KEY_TEXT if op.access == "key" else "") if t)
    if text:
        out["description"] = text
    if op.access == "key":
        out["security"] = [{"bearerAuth": []}]
    elif op.access == "room":
        out["security"] = [{}, {"bearerAuth": []}]
    else:
        out["security"] = []
    if params := _parameters(op, defs):
        out["parameters"] = params
    if (body := _body(op, defs)) is not None:
        out["requestBody"] = body
    out["responses"] = {str(op.answer_status): answer, **op.extra_responses, **_errors(op)}
    return out


@functools.cache
def document() -> dict[str, Any]:
    """The whole document (built once per process: it depends on the code only)."""
    answers = {op.answer for op in OPERATIONS} | {ErrorAnswer}
    _, schemas = models_json_schema(
        [(m, "validation") for m in sorted(answers, key=lambda m: m.__name__)], ref_template=REF
    )
    defs: dict[str, Any] = dict(schemas.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = defaultdict(dict)
    for op in OPERATIONS:
        paths[op.path][op.method] = _operation(op, defs)
    for path, item in PLAIN_PATHS.items():
        paths[path].update(item)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chat_app HTTP API",
            "version": VERSION,
            "description": "A Socket.IO chat server's HTTP routes: the server API (API_KEY), the open room "
            "routes, the archive's search and erasure, and the operations routes. Every refusal under /api is "
            "`{ok: false, error: {code, message}}`; the status says its kind: 400 bad input, 401 the key, "
            "403 banned, 404 the API is off or no such route, 501 no archive, 503 Redis did not answer within "
            "SEND_DEADLINE or the node is overloaded. Room and user names go in the path percent-encoded.",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": "server API", "description": "For your backend: needs the API key"},
            {"name": "archive", "description": "Needs the API key and DATABASE_URL"},
            {"name": "rooms", "description": "Open, but for private rooms"},
            {"name": "operations", "description": "Probes, metrics, this document"},
        ],
        "paths": {path: paths[path] for path in sorted(paths)},
        "components": {
            "schemas": {name: defs[name] for name in sorted(defs)},
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "API_KEY, as `Authorization: Bearer <API_KEY>`, compared in constant time",
                }
            },
        },
    }


@functools.cache
def render() -> str:
    """The document as committed: sorted keys would scramble it; two-space indent, newline."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
