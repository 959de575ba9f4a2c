"""The wire format in one place: client payloads, the Redis envelope, error codes.

Everything a client or Redis sends passes through here before the service sees it, so a
malformed value becomes a `ChatError` with a stable code instead of an exception elsewhere.
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import unquote

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

ROOM_MAX_CHARS = 64
SENDER_MAX_CHARS = 64
KEY_MAX_CHARS = 64
REASON_MAX_CHARS = 200
PAGE_MAX = 100  # history messages or rooms in one page of the server API
BAN_MAX_SECONDS = 366 * 24 * 3600
ROOM_PUNCTUATION = frozenset("_-.:#@")
WIRE_VERSION = 1


class ErrorCode(StrEnum):
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_ROOM = "invalid_room"
    MESSAGE_TOO_LARGE = "message_too_large"
    NOT_IN_ROOM = "not_in_room"
    TOO_MANY_ROOMS = "too_many_rooms"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ROOM = "forbidden_room"
    BANNED = "banned"
    TOKEN_EXPIRED = "token_expired"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    INTERNAL = "internal_error"
    # The server API's own (HTTP and ChatEmitter); clients of the socket never see them.
    INVALID_USER = "invalid_user"
    NOT_FOUND = "not_found"


class ChatError(Exception):
    """A refusal the client is told about; nothing was changed."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code.value, "message": self.message}


def _room_char_ok(c: str) -> bool:
    return c in ROOM_PUNCTUATION or c == " " or unicodedata.category(c)[0] == "L" or unicodedata.category(c) == "Nd"


@functools.lru_cache(maxsize=4096)  # every send names its room: check each name once
def check_room(value: str) -> str:
    """Apply DESIGN.md's room rule to an NFC-normalised name (one spelling, one room)."""
    room = unicodedata.normalize("NFC", value)
    if "+" in room:  # only a direct conversation's name, which only the server derives
        if direct_members(room) is None:
            raise PydanticCustomError("invalid_room", "a room name with '+' is a direct conversation's, @<a>+<b>")
        return room
    if not 1 <= len(room) <= ROOM_MAX_CHARS:
        raise PydanticCustomError("invalid_room", f"a room name has 1 to {ROOM_MAX_CHARS} characters")
    if room[0] == " " or room[-1] == " " or not all(map(_room_char_ok, room)):
        raise PydanticCustomError(
            "invalid_room",
            "a room name holds letters, digits, inner spaces and _ - . : # @ only",
        )
    return room


def clean_sender(value: Any) -> str | None:
    """A display name made safe to show: no control characters, one-line, bounded."""
    if not isinstance(value, str):
        return None
    kept = "".join(c if c.isprintable() else " " for c in unicodedata.normalize("NFC", value))
    name = " ".join(kept.split())[:SENDER_MAX_CHARS]
    return name or None


Room = Annotated[str, AfterValidator(check_room)]


def _direct_part(name: str) -> str:
    """A user name as room characters: every UTF-8 byte of a character outside the room rule
    (so '+' and '%' too) becomes %XX, which keeps the two halves apart and is injective."""
    return "".join(c if _room_char_ok(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in name)


def direct_room(a: str, b: str) -> str:
    """The direct conversation of two user names, the same whoever asks: `@<a>+<b>`, the
    names in code point order. No `join_room` name has a '+', so none can be one."""
    first, second = sorted((a, b))
    return f"@{_direct_part(first)}+{_direct_part(second)}"


def direct_members(room: str) -> tuple[str, str] | None:
    """The two users of a direct conversation's name; None for any other name."""
    if not room.startswith("@") or room.count("+") != 1:
        return None
    try:
        first, second = (unquote(part, errors="strict") for part in room[1:].split("+"))
        check_user(first)
        check_user(second)
    except (UnicodeDecodeError, PydanticCustomError):
        return None
    if first >= second or direct_room(first, second) != room:
        return None  # only the canonical spelling names the conversation
    return first, second


def check_user(value: str) -> str:
    """A name a connection can have (what `clean_sender` makes of it is itself), so that a
    command names users exactly as the nodes know them: no control characters, no padding."""
    name = unicodedata.normalize("NFC", value)
    if not name or clean_sender(name) != name:
        raise PydanticCustomError(
            "invalid_user",
            f"a user name has 1 to {SENDER_MAX_CHARS} printable characters, single inner spaces",
        )
    return name


def check_reason(value: str) -> str:
    if not 1 <= len(value) <= REASON_MAX_CHARS or not value.isprintable():
        raise PydanticCustomError("invalid_payload", f"a reason has 1 to {REASON_MAX_CHARS} printable characters")
    return value


User = Annotated[str, AfterValidator(check_user)]
Reason = Annotated[str, AfterValidator(check_reason)]


def check_room_name(value: str) -> str:
    """`check_room` for callers outside validation: a bad name is a ChatError."""
    try:
        return check_room(value)
    except PydanticCustomError as exc:
        raise ChatError(ErrorCode.INVALID_ROOM, exc.message()) from None


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
    before: Annotated[int, Field(ge=1)] | None = None
    limit: Annotated[int, Field(ge=1, le=PAGE_MAX)] = 50


class RoomsQuery(_Query):
    cursor: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    limit: Annotated[int, Field(ge=1, le=PAGE_MAX)] = 50


class UserRoomRequest(_Payload):
    user: User
    room: Room


class UserLeaveRequest(UserRoomRequest):
    ban_seconds: Annotated[int, Field(ge=1, le=BAN_MAX_SECONDS)] | None = None


class UserDisconnectRequest(_Payload):
    user: User
    reason: Reason | None = None


_CODES = {c.value: c for c in ErrorCode}
P = TypeVar("P", bound=_Payload)


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


class Preencoded(dict[str, Any]):
    """A client payload that carries its own JSON text too: the fan-out frames that text for
    every member instead of encoding the dict again; anything else reads it as the dict."""

    __slots__ = ("json",)

    def __init__(self, value: dict[str, Any], json: str) -> None:
        super().__init__(value)
        self.json = json


@dataclass(frozen=True, slots=True)
class Envelope:
    """One chat message as stored in history and fanned out through Redis."""

    id: str
    room: str
    sender: str
    message: str
    timestamp: int
    seq: int
    epoch: str
    instance_id: str
    # The client payload's JSON when it came from Redis in send.lua's own form ('' if not).
    wire: str = field(default="", compare=False, repr=False)

    def to_client(self) -> dict[str, Any]:
        value = {
            "id": self.id,
            "room": self.room,
            "sender": self.sender,
            "message": self.message,
            "timestamp": self.timestamp,
            "seq": self.seq,
            "epoch": self.epoch,
            "instance_id": self.instance_id,
        }
        return Preencoded(value, self.wire) if self.wire else value


def envelope_head(id: str, room: str, sender: str, message: str, timestamp: int, instance_id: str) -> bytes:
    """The envelope's JSON without its closing brace: the publish script appends seq and epoch."""
    body = orjson.dumps(
        {
            "v": WIRE_VERSION,
            "kind": "message",
            "id": id,
            "room": room,
            "sender": sender,
            "message": message,
            "timestamp": timestamp,
            "instance_id": instance_id,
        }
    )
    return body[:-1]


class _EnvelopeWire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    v: Literal[1]
    kind: Literal["message"]
    id: Annotated[str, Field(min_length=1, max_length=64)]
    room: Room
    sender: Annotated[str, Field(max_length=SENDER_MAX_CHARS)]
    message: str
    timestamp: int
    seq: Annotated[int, Field(ge=1)]
    epoch: Annotated[str, Field(min_length=1, max_length=64)]
    instance_id: Annotated[str, Field(min_length=1, max_length=64)]


class _PresenceWire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    v: Literal[1]
    kind: Literal["presence"]
    room: Room
    action: Literal["join", "leave"]
    user: Annotated[str, Field(max_length=SENDER_MAX_CHARS)]
    members_count: Annotated[int, Field(ge=0)]
    instance_id: Annotated[str, Field(min_length=1, max_length=64)]


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A member's first arrival in, or last departure from, a room (across all nodes)."""

    room: str
    action: str
    user: str
    members_count: int
    instance_id: str

    def to_client(self) -> dict[str, Any]:
        return {"room": self.room, "action": self.action, "user": self.user, "members_count": self.members_count}


class _TypingWire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    v: Literal[1]
    kind: Literal["typing"]
    room: Room
    user: Annotated[str, Field(min_length=1, max_length=SENDER_MAX_CHARS)]
    instance_id: Annotated[str, Field(min_length=1, max_length=64)]


@dataclass(frozen=True, slots=True)
class TypingEvent:
    """A member is typing in a room: ephemeral, never stored, no seq."""

    room: str
    user: str
    instance_id: str

    def encode(self) -> bytes:
        return orjson.dumps(
            {"v": WIRE_VERSION, "kind": "typing", "room": self.room, "user": self.user, "instance_id": self.instance_id}
        )

    def to_client(self) -> dict[str, Any]:
        return {"room": self.room, "user": self.user}


_WIRE: TypeAdapter[_EnvelopeWire | _PresenceWire | _TypingWire] = TypeAdapter(
    Annotated[_EnvelopeWire | _PresenceWire | _TypingWire, Field(discriminator="kind")]
)


def max_wire_bytes(max_message_bytes: int) -> int:
    """The largest payload accepted from Redis: a full message, JSON-escaped, plus fields."""
    return 6 * max_message_bytes + 2048


class BadEnvelope(ValueError):
    """A payload from Redis that is not one of ours: dropped and counted."""


# How envelope_head begins every envelope it writes; what follows is the client payload's
# members, so `{` + the rest is that payload's JSON.
_MESSAGE_HEAD = b'{"v":1,"kind":"message",'
_MESSAGE_FIELDS = 10


def _id_like(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= 64


def _room_as_is(value: object) -> bool:
    """A valid room name, already in the one spelling check_room gives it."""
    try:
        return type(value) is str and check_room(value) == value
    except PydanticCustomError:
        return False


def _as_stored(raw: bytes) -> Envelope | None:
    """An envelope exactly as send.lua stores it (envelope_head's fields, nothing else),
    checked by plain type tests, with its client JSON kept to be framed as it is. None for
    anything else, which the full validation then decides on: each test here is one of its
    rules, so nothing passes here that it would refuse."""
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if len(d) != _MESSAGE_FIELDS:
        return None
    v, kind, room, sender = d.get("v"), d.get("kind"), d.get("room"), d.get("sender")
    timestamp, seq, message = d.get("timestamp"), d.get("seq"), d.get("message")
    id_, epoch, instance_id = d.get("id"), d.get("epoch"), d.get("instance_id")
    if not (
        type(v) is int
        and v == 1
        and kind == "message"
        and _id_like(id_)
        and _id_like(epoch)
        and _id_like(instance_id)
        and type(sender) is str
        and len(sender) <= SENDER_MAX_CHARS
        and type(message) is str
        and type(timestamp) is int
        and type(seq) is int
        and seq >= 1
        and _room_as_is(room)
    ):
        return None
    wire = "{" + raw[len(_MESSAGE_HEAD) :].decode()
    return Envelope(id_, room, sender, message, timestamp, seq, epoch, instance_id, wire)  # type: ignore[arg-type]


def decode_wire(raw: bytes | str, max_bytes: int) -> Envelope | PresenceEvent | TypingEvent:
    """Parse what arrived on a room channel; never evaluates or unpickles anything."""
    if len(raw) > max_bytes:
        raise BadEnvelope(f"payload of {len(raw)} bytes is over the {max_bytes} limit")
    if isinstance(raw, bytes) and raw.startswith(_MESSAGE_HEAD) and (stored := _as_stored(raw)) is not None:
        return stored
    try:
        w = _WIRE.validate_json(raw)
    except ValidationError as exc:
        raise BadEnvelope(str(exc.errors(include_url=False, include_input=False)[:1])) from None
    if isinstance(w, _PresenceWire):
        return PresenceEvent(w.room, w.action, w.user, w.members_count, w.instance_id)
    if isinstance(w, _TypingWire):
        return TypingEvent(w.room, w.user, w.instance_id)
    return Envelope(w.id, w.room, w.sender, w.message, w.timestamp, w.seq, w.epoch, w.instance_id)


def decode_envelope(raw: bytes | str, max_bytes: int) -> Envelope:
    decoded = decode_wire(raw, max_bytes)
    if not isinstance(decoded, Envelope):
        raise BadEnvelope("expected a message envelope")
    return decoded


class CommandAction(StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True)
class Command:
    """An act on every connection of one user, carried to every node by the control channel;
    each node answers on the `reply_to` list with how many of its connections it acted on."""

    id: str
    action: CommandAction
    user: str
    room: str | None = None
    reason: str | None = None  # disconnect: told to the client; leave: "removed" or "banned"
    reply_to: str = ""

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": WIRE_VERSION,
                "kind": "command",
                "id": self.id,
                "action": self.action.value,
                "user": self.user,
                "room": self.room,
                "reason": self.reason,
                "reply_to": self.reply_to,
            }
        )


@dataclass(frozen=True, slots=True)
class CommandReply:
    id: str
    instance_id: str
    connections: int

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": WIRE_VERSION,
                "kind": "reply",
                "id": self.id,
                "instance_id": self.instance_id,
                "connections": self.connections,
            }
        )


class _CommandWire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    v: Literal[1]
    kind: Literal["command"]
    id: Annotated[str, Field(min_length=1, max_length=64)]
    action: Literal["join", "leave", "disconnect"]
    user: User
    room: Room | None = None
    reason: Reason | None = None
    reply_to: Annotated[str, Field(min_length=1, max_length=256)]


class _ReplyWire(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    v: Literal[1]
    kind: Literal["reply"]
    id: Annotated[str, Field(min_length=1, max_length=64)]
    instance_id: Annotated[str, Field(min_length=1, max_length=64)]
    connections: Annotated[int, Field(ge=0)]


COMMAND_MAX_BYTES = 4096


def decode_command(raw: bytes | str) -> Command:
    """Parse what arrived on the control channel; a command on a room needs its room."""
    if len(raw) > COMMAND_MAX_BYTES:
        raise BadEnvelope(f"command of {len(raw)} bytes is over the {COMMAND_MAX_BYTES} limit")
    try:
        w = _CommandWire.model_validate_json(raw)
    except ValidationError as exc:
        raise BadEnvelope(str(exc.errors(include_url=False, include_input=False)[:1])) from None
    if (w.room is None) != (w.action == "disconnect"):
        raise BadEnvelope(f"a {w.action} command {'needs' if w.room is None else 'takes no'} room")
    return Command(w.id, CommandAction(w.action), w.user, w.room, w.reason, w.reply_to)


def decode_reply(raw: bytes | str) -> CommandReply:
    if len(raw) > COMMAND_MAX_BYTES:
        raise BadEnvelope(f"reply of {len(raw)} bytes is over the {COMMAND_MAX_BYTES} limit")
    try:
        w = _ReplyWire.model_validate_json(raw)
    except ValidationError as exc:
        raise BadEnvelope(str(exc.errors(include_url=False, include_input=False)[:1])) from None
    return CommandReply(w.id, w.instance_id, w.connections)
