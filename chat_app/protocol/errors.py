"""Error codes and ChatError: the one shape of a refusal, for every audience (socket acks,
`error` events, HTTP bodies, ChatEmitter's exceptions)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_PAYLOAD = "invalid_payload"
    INVALID_ROOM = "invalid_room"
    MESSAGE_TOO_LARGE = "message_too_large"
    NOT_IN_ROOM = "not_in_room"
    TOO_MANY_ROOMS = "too_many_rooms"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN_ROOM = "forbidden_room"
    FORBIDDEN = "forbidden"  # a decision hook refused the send (its reason in the message)
    BANNED = "banned"
    TOKEN_EXPIRED = "token_expired"
    UNAVAILABLE = "unavailable"
    OVERLOADED = "overloaded"
    INTERNAL = "internal_error"
    NO_ARCHIVE = "no_archive"  # search and erasure need the archive (DATABASE_URL)
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
