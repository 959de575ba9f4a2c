"""The protocol, by audience:

- errors: ErrorCode and ChatError, the one shape of a refusal;
- names: the rules for room and user names, direct conversations' names;
- requests: what clients ask (Socket.IO payloads, the HTTP API's bodies and queries), `parse`;
- wire: what nodes tell each other through Redis (envelopes, presence, typing, commands).

The names below are re-exported for callers that import from the package; new code names
the module of its audience.
"""

from __future__ import annotations

from .errors import ChatError, ErrorCode
from .names import (
    ROOM_MAX_CHARS,
    SENDER_MAX_CHARS,
    Reason,
    Room,
    User,
    check_room,
    check_room_name,
    check_user,
    clean_sender,
    direct_members,
    direct_room,
)
from .requests import (
    BAN_MAX_SECONDS,
    KEY_MAX_CHARS,
    PAGE_MAX,
    HistoryQuery,
    JoinRequest,
    LeaveRequest,
    ListDirectsRequest,
    MemberPageQuery,
    OpenDirectRequest,
    PublishRequest,
    RoomsQuery,
    SendRequest,
    TypingRequest,
    UserDisconnectRequest,
    UserLeaveRequest,
    UserRoomRequest,
    parse,
)
from .wire import (
    COMMAND_MAX_BYTES,
    WIRE_VERSION,
    BadEnvelope,
    Command,
    CommandAction,
    CommandReply,
    DeletedEvent,
    Envelope,
    Preencoded,
    PresenceEvent,
    RoomEvent,
    TypingEvent,
    decode_command,
    decode_envelope,
    decode_reply,
    decode_wire,
    envelope_head,
    max_wire_bytes,
)

__all__ = [
    "BAN_MAX_SECONDS",
    "COMMAND_MAX_BYTES",
    "KEY_MAX_CHARS",
    "PAGE_MAX",
    "ROOM_MAX_CHARS",
    "SENDER_MAX_CHARS",
    "WIRE_VERSION",
    "BadEnvelope",
    "ChatError",
    "Command",
    "CommandAction",
    "CommandReply",
    "DeletedEvent",
    "Envelope",
    "ErrorCode",
    "HistoryQuery",
    "JoinRequest",
    "LeaveRequest",
    "ListDirectsRequest",
    "MemberPageQuery",
    "OpenDirectRequest",
    "Preencoded",
    "PresenceEvent",
    "PublishRequest",
    "Reason",
    "Room",
    "RoomEvent",
    "RoomsQuery",
    "SendRequest",
    "TypingEvent",
    "TypingRequest",
    "User",
    "UserDisconnectRequest",
    "UserLeaveRequest",
    "UserRoomRequest",
    "check_room",
    "check_room_name",
    "check_user",
    "clean_sender",
    "decode_command",
    "decode_envelope",
    "decode_reply",
    "decode_wire",
    "direct_members",
    "direct_room",
    "envelope_head",
    "max_wire_bytes",
    "parse",
]
