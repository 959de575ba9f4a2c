"""What the HTTP routes answer, as pydantic models: the OpenAPI document's response schemas
come from here (chat_app.openapi), as its request schemas come from `requests`.

The views build their answers as plain dicts (the service's own, no copy per call); these
models say what those dicts hold, and the schemathesis test holds every live answer to them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import ErrorCode
from .names import Room, User


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorDetail(_Answer):
    code: ErrorCode = Field(description="stable, for programs (README, Security, Error codes)")
    message: str = Field(description="for people; may change")


class ErrorAnswer(_Answer):
    """Every refusal, on every route under /api: nothing was changed."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ok": False, "error": {"code": "invalid_room", "message": "..."}}]}
    )
    ok: Literal[False]
    error: ErrorDetail


class Message(_Answer):
    """A message envelope, as members receive it in `broadcast_message`."""

    id: str
    room: Room
    sender: str = Field(max_length=64)
    message: str
    timestamp: int = Field(description="milliseconds since 1970")
    seq: Annotated[int, Field(ge=1)] = Field(description="the room's count, one up per message")
    epoch: str = Field(description="changes when Redis lost the room: seq starts again")
    instance_id: str = Field(description="the node (or `emitter:<host>`, `api:<node>`) that stored it")
    meta: dict[str, Any] | None = Field(default=None, description="a send hook's data for the message (HOOK_URL)")


class Posted(_Answer):
    """Stored: the message's id and its place in the room."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ok": True, "id": "3f2a9c", "seq": 7, "epoch": "k2x9", "timestamp": 1764233924209}]
        }
    )
    ok: Literal[True]
    id: str
    seq: Annotated[int, Field(ge=1)]
    epoch: str
    timestamp: int


class HistoryPage(_Answer):
    """Oldest first; pass the first message's `seq` back as `before` for the page before."""

    ok: Literal[True]
    room: Room
    epoch: str | None = Field(description="null for a room that never had a message")
    messages: list[Message]


class SearchPage(_Answer):
    """Newest first."""

    ok: Literal[True]
    room: Room
    messages: list[Message]


class RoomSummary(_Answer):
    room: Room
    members: Annotated[int, Field(ge=0)] = Field(description="users")
    connections: Annotated[int, Field(ge=0)]


class RoomsPage(_Answer):
    """A page of the rooms that have members."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"ok": True, "rooms": [{"room": "orders", "members": 2, "connections": 3}], "cursor": "0-17"}]
        }
    )
    ok: Literal[True]
    rooms: list[RoomSummary]
    cursor: str | None = Field(description="pass back for the next page; null on the last")


class CommandDone(_Answer):
    """What the nodes did (a node that died answers nothing; its connections are gone anyway)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"ok": True, "connections": 2, "nodes": 3}]})
    ok: Literal[True]
    connections: Annotated[int, Field(ge=0)] = Field(description="connections acted on, summed over the nodes")
    nodes: Annotated[int, Field(ge=0)] = Field(description="nodes that answered within SEND_DEADLINE")


class Erased(_Answer):
    """The user's messages erased, and the rooms they were in."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ok": True, "user": "alice", "deleted": 12, "rooms": ["lobby", "orders"]}]}
    )
    ok: Literal[True]
    user: User
    deleted: Annotated[int, Field(ge=0)] = Field(description="messages erased")
    rooms: list[Room]


class RoomInfo(_Answer):
    """The room's state (no `ok`: the route predates the server API's shape)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"room": "orders", "active": True, "members": ["alice", "bob"], "members_count": 2, "seq": 7}]
        }
    )
    room: Room
    active: bool
    members: list[str] = Field(description="the first 100 names, in name order")
    members_count: Annotated[int, Field(ge=0)]
    seq: Annotated[int, Field(ge=0)]


class MemberPage(_Answer):
    """A page of names after `cursor`, in name order."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"ok": True, "room": "orders", "members_count": 2, "members": ["alice", "bob"], "next_cursor": None}
            ]
        }
    )
    ok: Literal[True]
    room: Room
    members_count: Annotated[int, Field(ge=0)]
    members: list[str]
    next_cursor: str | None = Field(description="pass back as `cursor`; null on the last page")


class ArchiveStatus(_Answer):
    database_ok: bool
    backlog: Annotated[int, Field(ge=0)]
    lag_seconds: Annotated[float, Field(ge=0)]


class Health(BaseModel):
    """`status` and one boolean per part (publisher, listener, presence, ...); the parts a
    node has depend on its backend, hence the open object."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "status": "ok",
                    "instance_id": "web-1",
                    "publisher": True,
                    "listener": True,
                    "presence": True,
                    "backend": "redis",
                }
            ]
        },
    )
    status: Literal["ok", "failing"]
    instance_id: str
    backend: Literal["redis", "memory"]
    archive: ArchiveStatus | None = Field(default=None, description="with DATABASE_URL; informative only")
    failing: list[str] | None = Field(default=None, description="the parts that fail (503)")
    shards_failing: list[str] | None = Field(default=None, description="Redis Cluster shards not reached")


class WebhookFailure(_Answer):
    webhook_id: str = Field(description="the `webhook-id` every try carried")
    type: str = Field(
        description="message.created, message.deleted, room.occupied, room.vacated, member.joined or member.left"
    )
    room: str | None
    attempts: Annotated[int, Field(ge=0)]
    last_error: str | None
    created_at: str = Field(description="ISO 8601")


class WebhooksFailed(BaseModel):
    """Counts by state (pending, failed, ...) and the first 100 failed events."""

    model_config = ConfigDict(extra="allow", frozen=True)
    ok: Literal[True]
    pending: Annotated[int, Field(ge=0)]
    failed: Annotated[int, Field(ge=0)]
    events: list[WebhookFailure]


class Replayed(_Answer):
    ok: Literal[True]
    replayed: Annotated[int, Field(ge=0)] = Field(description="failed events pending again, from their first try")
