"""Name rules: rooms, users, direct conversations' names, reasons.

One spelling per name (NFC), checked the same wherever a name arrives (socket payloads,
HTTP paths, tokens' claims, Redis), so a name is never two rooms or someone else's user.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Annotated, Any
from urllib.parse import unquote

from pydantic import AfterValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

from .errors import ChatError, ErrorCode

ROOM_MAX_CHARS = 64
SENDER_MAX_CHARS = 64
REASON_MAX_CHARS = 200
ROOM_PUNCTUATION = frozenset("_-.:#@")


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


def check_room_name(value: str) -> str:
    """`check_room` for callers outside validation: a bad name is a ChatError."""
    try:
        return check_room(value)
    except PydanticCustomError as exc:
        raise ChatError(ErrorCode.INVALID_ROOM, exc.message()) from None


def clean_sender(value: Any) -> str | None:
    """A display name made safe to show: no control characters, one-line, bounded."""
    if not isinstance(value, str):
        return None
    kept = "".join(c if c.isprintable() else " " for c in unicodedata.normalize("NFC", value))
    name = " ".join(kept.split())[:SENDER_MAX_CHARS]
    return name or None


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


# What the OpenAPI document says of each name: JSON Schema cannot state the Unicode rules
# (letters of any script, NFC), so the schema bounds the length and the text says the rest.
ROOM_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "description": f"1-{ROOM_MAX_CHARS} letters or digits of any script, inner spaces and _ - . : # @ "
    "(NFC); or a direct conversation's name, @<a>+<b>",
    "examples": ["orders"],
}
USER_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": SENDER_MAX_CHARS,
    "description": f"1-{SENDER_MAX_CHARS} printable characters, single inner spaces, no padding (NFC)",
    "examples": ["alice"],
}
REASON_SCHEMA = {"type": "string", "minLength": 1, "maxLength": REASON_MAX_CHARS, "description": "printable text"}

Room = Annotated[str, AfterValidator(check_room), WithJsonSchema(ROOM_SCHEMA)]
User = Annotated[str, AfterValidator(check_user), WithJsonSchema(USER_SCHEMA)]
Reason = Annotated[str, AfterValidator(check_reason), WithJsonSchema(REASON_SCHEMA)]
