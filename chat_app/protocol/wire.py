"""The node-to-node wire: what travels through Redis between nodes (and from ChatEmitter).

Each wire type is declared once, as a frozen dataclass whose field types carry their rules
(`Annotated[..., Field(...)]`, `Room`, `Literal`). Everything else is derived from that
declaration: the JSON it is encoded as (`{"v", "kind", fields...}` in field order), the
strict pydantic model that checks what arrives, and, for the envelope, the fast path that
takes send.lua's stored form with plain type tests (`_stored_form_decoder`). The encoder
and that fast path are generated from the declaration at import, like dataclasses' own
__init__, so they cost what the hand-written ones did.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

import annotated_types
import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    create_model,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from .names import SENDER_MAX_CHARS, Reason, Room, User

WIRE_VERSION = 1
COMMAND_MAX_BYTES = 4096

Id = Annotated[str, Field(min_length=1, max_length=64)]
Name = Annotated[str, Field(max_length=SENDER_MAX_CHARS)]  # a sender or user as stored: may be empty
# Metadata of a field the store fills in (send.lua appends seq and epoch to envelope_head).
BY_STORE = {"by_store": True}
# Metadata of an optional field that is left off the wire while None.
OMIT_NONE = {"omit_none": True}
META_MAX_BYTES = 1024  # a message's `meta` (a decision hook's), as compact JSON


def _bounded_meta(value: dict[str, Any]) -> dict[str, Any]:
    if len(orjson.dumps(value)) > META_MAX_BYTES:
        raise PydanticCustomError("meta_too_large", f"meta is over {META_MAX_BYTES} bytes of JSON")
    return value


# A small JSON object a decision hook attached to a message: members and history get it.
Meta = Annotated[dict[str, Any], AfterValidator(_bounded_meta)]


class Preencoded(dict[str, Any]):
    """A client payload that carries its own JSON text too: the fan-out frames that text for
    every member instead of encoding the dict again; anything else reads it as the dict."""

    __slots__ = ("json",)

    def __init__(self, value: dict[str, Any], json: str) -> None:
        super().__init__(value)
        self.json = json


class _Wire:
    """Base of the wire dataclasses: `KIND` names the type on the wire; `encode` writes
    `{"v", "kind", fields...}` in declaration order."""

    __slots__ = ()
    KIND: ClassVar[str]
    _FIELDS: ClassVar[tuple[str, ...]]  # set by _declared
    _OPTIONAL: ClassVar[tuple[str, ...]] = ()  # fields marked OMIT_NONE: written only when set

    def encode(self) -> bytes:
        """Fields marked OMIT_NONE are left out while None (as envelope_head does)."""
        values = {name: getattr(self, name) for name in self._FIELDS}
        for name in self._OPTIONAL:
            if values[name] is None:
                del values[name]
        return orjson.dumps({"v": WIRE_VERSION, "kind": self.KIND, **values})


@dataclass(frozen=True, slots=True)
class Envelope(_Wire):
    """One chat message as stored in history and fanned out through Redis."""

    KIND: ClassVar[str] = "message"
    id: Id
    room: Room
    sender: Name
    message: str
    timestamp: int
    seq: Annotated[int, Field(ge=1)] = field(metadata=BY_STORE)
    epoch: Id = field(metadata=BY_STORE)
    instance_id: Id
    # Optional: on the wire only when set (envelope_head leaves it out when None, so the
    # stored form of a message without it is byte for byte what it was before it existed).
    meta: Meta | None = field(default=None, metadata=OMIT_NONE)
    # The client payload's JSON when it came from Redis in send.lua's own form ('' if not).
    wire: str = field(default="", compare=False, repr=False, metadata={"local": True})

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
        if self.meta is not None:
            value["meta"] = self.meta
        return Preencoded(value, self.wire) if self.wire else value


@dataclass(frozen=True, slots=True)
class PresenceEvent(_Wire):
    """A member's first arrival in, or last departure from, a room (across all nodes)."""

    KIND: ClassVar[str] = "presence"
    room: Room
    action: Literal["join", "leave"]
    user: Name
    members_count: Annotated[int, Field(ge=0)]
    instance_id: Id

    def to_client(self) -> dict[str, Any]:
        return {"room": self.room, "action": self.action, "user": self.user, "members_count": self.members_count}


@dataclass(frozen=True, slots=True)
class TypingEvent(_Wire):
    """A member is typing in a room: ephemeral, never stored, no seq."""

    KIND: ClassVar[str] = "typing"
    room: Room
    user: Annotated[str, Field(min_length=1, max_length=SENDER_MAX_CHARS)]
    instance_id: Id

    def to_client(self) -> dict[str, Any]:
        return {"room": self.room, "user": self.user}


@dataclass(frozen=True, slots=True)
class DeletedEvent(_Wire):
    """A message erased (a user asked to be forgotten): members drop it from their view."""

    KIND: ClassVar[str] = "deleted"
    room: Room
    id: Id
    instance_id: Id

    def to_client(self) -> dict[str, Any]:
        return {"room": self.room, "id": self.id}


RoomEvent = PresenceEvent | TypingEvent | DeletedEvent  # a room's channel, besides its messages


class CommandAction(StrEnum):
    JOIN = "join"
    LEAVE = "leave"
    DISCONNECT = "disconnect"


@dataclass(frozen=True, slots=True)
class Command(_Wire):
    """An act on every connection of one user, carried to every node by the control channel;
    each node answers on the `reply_to` list with how many of its connections it acted on.
    On the wire every field is required but the ones whose default is None."""

    KIND: ClassVar[str] = "command"
    id: Id
    action: CommandAction
    user: User
    room: Room | None = None
    reason: Reason | None = None  # disconnect: told to the client; leave: "removed" or "banned"
    reply_to: Annotated[str, Field(min_length=1, max_length=256)] = ""


@dataclass(frozen=True, slots=True)
class CommandReply(_Wire):
    KIND: ClassVar[str] = "reply"
    id: Id
    instance_id: Id
    connections: Annotated[int, Field(ge=0)]


def _declared(cls: type[_Wire]) -> type[BaseModel]:
    """The strict pydantic model of a wire dataclass: `v`, `kind`, then its fields with their
    declared rules (a field is optional on the wire only when its default is None). Also
    records the fields `encode` writes."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("local")]
    cls._FIELDS = tuple(f.name for f in fields)
    cls._OPTIONAL = tuple(f.name for f in fields if f.metadata == OMIT_NONE)
    spec: dict[str, Any] = {"v": (Literal[1], ...), "kind": (Literal[cls.KIND], ...)}  # type: ignore[valid-type]
    for f in fields:
        spec[f.name] = (hints[f.name], None if f.default is None else ...)
    config = ConfigDict(strict=True, extra="ignore", frozen=True)
    return create_model(f"{cls.__name__}Wire", __config__=config, **spec)


_MODELS: dict[type[_Wire], type[BaseModel]] = {
    cls: _declared(cls) for cls in (Envelope, PresenceEvent, TypingEvent, DeletedEvent, Command, CommandReply)
}
_ROOM_CHANNEL = TypeAdapter(
    Annotated[
        _MODELS[Envelope] | _MODELS[PresenceEvent] | _MODELS[TypingEvent] | _MODELS[DeletedEvent],
        Field(discriminator="kind"),
    ]
)
_KINDS = {cls.KIND: cls for cls in _MODELS}


def _from_model(w: BaseModel) -> Any:
    cls = _KINDS[w.kind]  # type: ignore[attr-defined]
    return cls(*(getattr(w, name) for name in cls._FIELDS))


# The envelope's fields a sender writes, in declaration order; send.lua appends the rest.
# The optional ones (meta) come last in the head and only when set.
_HEAD_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Envelope)
    if f.name in Envelope._FIELDS and f.metadata != BY_STORE and f.name not in Envelope._OPTIONAL
)
# The fields of send.lua's plain stored form, which the fast path takes: all but the optional.
_STORED_FIELDS = tuple(name for name in Envelope._FIELDS if name not in Envelope._OPTIONAL)


def _compile(source: str, name: str, namespace: dict[str, Any]) -> Any:
    """A function generated from the declaration (as dataclasses writes __init__): the hot
    paths stay plain Python with constants inlined, one call and no loop over fields."""
    exec(compile(source, f"<protocol.wire {name}>", "exec"), namespace)
    return namespace[name]


def _head_encoder() -> Callable[..., bytes]:
    items = ", ".join(f"{name!r}: {name}" for name in _HEAD_FIELDS)
    optional = ", ".join(f"{name}=None" for name in Envelope._OPTIONAL)
    extra = "".join(f"    if {name} is not None:\n        d[{name!r}] = {name}\n" for name in Envelope._OPTIONAL)
    # The common case (no optional field set) is the one expression it always was.
    source = (
        f"def envelope_head({', '.join(_HEAD_FIELDS)}, {optional}):\n"
        f"    if {' and '.join(f'{name} is None' for name in Envelope._OPTIONAL)}:\n"
        f"        return dumps({{'v': {WIRE_VERSION}, 'kind': {Envelope.KIND!r}, {items}}})[:-1]\n"
        f"    d = {{'v': {WIRE_VERSION}, 'kind': {Envelope.KIND!r}, {items}}}\n"
        f"{extra}"
        f"    return dumps(d)[:-1]\n"
    )
    head: Callable[..., bytes] = _compile(source, "envelope_head", {"dumps": orjson.dumps})
    head.__doc__ = """The envelope's JSON without its closing brace: the send script appends the
    fields the store fills in (seq, epoch)."""
    return head


envelope_head = _head_encoder()


def max_wire_bytes(max_message_bytes: int) -> int:
    """The largest payload accepted from Redis: a full message, JSON-escaped, plus fields."""
    return 6 * max_message_bytes + 2048 + META_MAX_BYTES


class BadEnvelope(ValueError):
    """A payload from Redis that is not one of ours: dropped and counted."""


def _tests(annotation: Any, value: str, namespace: dict[str, Any]) -> list[str]:
    """One field's declared rules as plain tests (Python source) on what orjson gave, for the
    fast path. They accept a value only when the pydantic model would, unchanged: a rule with
    no test here fails at import, rather than let through what the model refuses."""
    base, extras = annotation, ()
    if typing.get_origin(annotation) is Annotated:
        base, *extras = typing.get_args(annotation)
    if base not in (str, int):
        raise TypeError(f"the envelope's fast path has no test for {annotation}")
    tests = [f"type({value}) is {base.__name__}"]
    for extra in extras:
        for meta in extra.metadata if isinstance(extra, FieldInfo) else [extra]:
            if isinstance(meta, annotated_types.MinLen):
                tests.append(f"len({value}) >= {meta.min_length}")
            elif isinstance(meta, annotated_types.MaxLen):
                tests.append(f"len({value}) <= {meta.max_length}")
            elif isinstance(meta, annotated_types.Ge):
                tests.append(f"{value} >= {meta.ge}")
            elif isinstance(meta, AfterValidator):
                check = f"_check{len(namespace)}"
                namespace[check] = functools.partial(_unchanged, meta.func)
                tests.append(f"{check}({value})")
            elif isinstance(meta, WithJsonSchema):
                continue  # what the OpenAPI document says of the field: no rule
            else:
                raise TypeError(f"the envelope's fast path has no test for {meta!r}")
    return tests


def _unchanged(check: Callable[[Any], Any], value: object) -> bool:
    """The validator keeps the value as it is (the fast path frames the stored bytes as they are)."""
    try:
        return check(value) == value
    except PydanticCustomError:
        return False


def _stored_form_decoder() -> Callable[[bytes], Envelope | None]:
    """An envelope exactly as send.lua stores it: the head envelope_head writes (`v` and
    `kind` first, so the rest is the client payload's JSON), then the declared fields and
    nothing else, each passing its declared rules. None for anything else, which the full
    validation then decides on."""
    hints = typing.get_type_hints(Envelope, include_extras=True)
    namespace: dict[str, Any] = {"loads": orjson.loads, "JSONDecodeError": orjson.JSONDecodeError}
    namespace |= {"Envelope": Envelope, "KEYS": frozenset({"v", "kind", *_STORED_FIELDS})}
    values = [f"f{i}" for i in range(len(_STORED_FIELDS))]
    tests = [t for name, v in zip(_STORED_FIELDS, values, strict=True) for t in _tests(hints[name], v, namespace)]
    head_len = len(_STORED_HEAD)
    source = f"""\
def decode_stored(raw):
    try:
        d = loads(raw)
    except JSONDecodeError:
        return None
    # A later duplicate of `v` or `kind` wins, as in JSON.parse: their values still count.
    if d.keys() != KEYS or type(d["v"]) is not int or d["v"] != {WIRE_VERSION} or d["kind"] != {Envelope.KIND!r}:
        return None
    {", ".join(values)} = {", ".join(f"d[{name!r}]" for name in _STORED_FIELDS)}
    if not ({" and ".join(tests)}):
        return None
    return Envelope({", ".join(values)}, wire="{{" + raw[{head_len}:].decode())
"""
    decoder: Callable[[bytes], Envelope | None] = _compile(source, "decode_stored", namespace)
    return decoder


_STORED_HEAD = orjson.dumps({"v": WIRE_VERSION, "kind": Envelope.KIND})[:-1] + b","
_decode_stored = _stored_form_decoder()


def decode_wire(raw: bytes | str, max_bytes: int) -> Envelope | RoomEvent:
    """Parse what arrived on a room channel; never evaluates or unpickles anything."""
    if len(raw) > max_bytes:
        raise BadEnvelope(f"payload of {len(raw)} bytes is over the {max_bytes} limit")
    if isinstance(raw, bytes) and raw.startswith(_STORED_HEAD) and (stored := _decode_stored(raw)) is not None:
        return stored
    try:
        return _from_model(_ROOM_CHANNEL.validate_json(raw))  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise BadEnvelope(str(exc.errors(include_url=False, include_input=False)[:1])) from None


def decode_envelope(raw: bytes | str, max_bytes: int) -> Envelope:
    decoded = decode_wire(raw, max_bytes)
    if not isinstance(decoded, Envelope):
        raise BadEnvelope("expected a message envelope")
    return decoded


def _decode_control(cls: type[_Wire], raw: bytes | str) -> Any:
    if len(raw) > COMMAND_MAX_BYTES:
        raise BadEnvelope(f"{cls.KIND} of {len(raw)} bytes is over the {COMMAND_MAX_BYTES} limit")
    try:
        return _from_model(_MODELS[cls].model_validate_json(raw))
    except ValidationError as exc:
        raise BadEnvelope(str(exc.errors(include_url=False, include_input=False)[:1])) from None


def decode_command(raw: bytes | str) -> Command:
    """Parse what arrived on the control channel; a command on a room needs its room."""
    command: Command = _decode_control(Command, raw)
    if (command.room is None) != (command.action is CommandAction.DISCONNECT):
        raise BadEnvelope(f"a {command.action} command {'needs' if command.room is None else 'takes no'} room")
    return command


def decode_reply(raw: bytes | str) -> CommandReply:
    reply: CommandReply = _decode_control(CommandReply, raw)
    return reply
