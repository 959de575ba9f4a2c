"""What clients ask: Socket.IO event payloads and the HTTP API's bodies and queries.

Everything a client sends passes through `parse` before the service sees it, so a malformed
value becomes a ChatError with a stable code instead of an exception elsewhere.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from .errors import ChatError, ErrorCode
from .names import SENDER_MAX_CHARS, Reason, Room, User

KEY_MAX_CHARS = 64
PAGE_MAX = 100  # history messages or rooms in one page of the server API
SEARCH_MAX_CHARS = 256  # a search query (websearch_to_tsquery syntax)
MEMBER_PAGE_MAX = 1000  # names in one page of GET /api/rooms/<room>/members
BAN_MAX_SECONDS = 366 * 24 * 3600
# A room's seq is Redis's int64 counter, read by Lua as a double: past 2^53 a `before` names no
# message, and Redis (or PostgreSQL's bigint) would refuse it as a failure, not as bad input.
SEQ_MAX = 2**53


class _Payload(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class JoinRequest(_Payload):
    room: Room
    since: Annotated[int, Field(ge=0)] | None = None
    epoch: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class LeaveRequest(_Payload):
    room: Room


class OpenDirectRequest(_Payload):
    peer: User = Field(alias="with")
    since: Annotated[int, Field(ge=0)] | None = None
    epoch: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class ListDirectsRequest(_Payload):
    """`list_directs {}`: no fields yet, but an object, so one can be added later."""


class HistoryRequest(_Payload):
    """`history {room, before?, limit?}`: a member's page of older messages ("load older")."""

    room: Room
    before: Annotated[int, Field(ge=1, le=SEQ_MAX)] | None = None
    limit: Annotated[int, Field(ge=1, le=PAGE_MAX)] = 50


# PostgreSQL's text holds no NUL: a query with one was a database error (a 500), not bad input.
SearchText = Annotated[str, Field(min_length=1, max_length=SEARCH_MAX_CHARS, pattern=r"^[^\x00]*$")]


class SearchRequest(_Payload):
    """`search {room, q, limit?}`: a member's full-text search of the room's archive."""

    room: Room
    q: SearchText
    limit: Annotated[int, Field(ge=1, le=PAGE_MAX)] = 20


class TypingRequest(_Payload):
    room: Room


class SendRequest(_Payload):
    room: Room
    message: str
    sender: Any = None
    key: Annotated[str, Field(min_length=1, max_length=KEY_MAX_CHARS)] | None = None

    @field_validator("message")
    @classmethod
    def _bounded(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            raise PydanticCustomError("invalid_payload", "message must be a non-empty string")
        limit = (info.context or {}).get("max_message_bytes", 4096)
        if len(value) * 4 > limit and len(value.encode("utf-8", "surrogatepass")) > limit:
            raise PydanticCustomError("message_too_large", f"message is over {limit} bytes of UTF-8")
        return value


class PublishRequest(SendRequest):
    """A post from outside the nodes (HTTP API, ChatEmitter): a member's send, under a name
    the backend chooses."""

    sender: User = "system"


class _Query(BaseModel):
    """Query-string parameters arrive as text: numbers are read from it (lax mode)."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class HistoryQuery(_Query):
    before: Annotated[int, Field(ge=1, le=SEQ_MAX)] | None = None
    limit: Annotated[int, Field(ge=1, le=PAGE_MAX)] = 50


class SearchQuery(_Query):
    q: SearchText
    limit: Annotated[int, Field(ge=1, le=PAGE_MAX)] = 20


class RoomsQuery(_Query):
    cursor: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    limit: Annotated[int, Field(ge=1, le=PAGE_MAX)] = 50


class MemberPageQuery(_Query):
    """`?cursor=` (the last name of the previous page; empty is none) and `?limit=`."""

    cursor: Annotated[str, Field(max_length=SENDER_MAX_CHARS)] | None = None
    limit: Annotated[int, Field(ge=1, le=MEMBER_PAGE_MAX)] = 100


class UserRoomRequest(_Payload):
    user: User
    room: Room


class UserLeaveRequest(UserRoomRequest):
    ban_seconds: Annotated[int, Field(ge=1, le=BAN_MAX_SECONDS)] | None = None


class UserRequest(_Payload):
    user: User


class UserDisconnectRequest(_Payload):
    user: User
    reason: Reason | None = None


_CODES = {c.value: c for c in ErrorCode}
P = TypeVar("P", bound=BaseModel)


def parse(model: type[P], payload: Any, **context: Any) -> P:
    """Validate a client payload; a bare string stands for `{"room": ...}` (original protocol)."""
    if isinstance(payload, str) and "room" in model.model_fields and model is not SendRequest:
        payload = {"room": payload}
    if not isinstance(payload, dict):
        raise ChatError(ErrorCode.INVALID_PAYLOAD, f"{model.__name__} expects an object")
    try:
        return model.model_validate(payload, context=context)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        code = _CODES.get(first["type"], ErrorCode.INVALID_PAYLOAD)
        where = ".".join(str(p) for p in first["loc"])
        raise ChatError(code, f"{where}: {first['msg']}" if where else first["msg"]) from None
