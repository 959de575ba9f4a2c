"""Who a connection is. With AUTH_SECRET set, a signed token decides (JWT, HS256): its `sub`
is the sender name, and an optional `rooms` claim limits what it may join. Without it, the
original protocol's self-declared names are kept, cleaned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from .protocol import ChatError, ErrorCode, check_room_name, clean_sender


@dataclass(frozen=True, slots=True)
class Identity:
    user: str | None  # None: each payload's own `sender` is used (no auth configured)
    rooms: frozenset[str] | None = None  # None: any room


def identify(auth: Any, query_username: str | None, secret: str | None) -> Identity:
    if secret is None:
        name = auth.get("username") if isinstance(auth, dict) else None
        return Identity(clean_sender(name or query_username))
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise ChatError(ErrorCode.UNAUTHORIZED, "a signed token is required in auth.token")
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise ChatError(ErrorCode.UNAUTHORIZED, "the token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise ChatError(ErrorCode.UNAUTHORIZED, f"the token is not valid: {exc}") from None
    user = clean_sender(claims["sub"])
    if user is None:
        raise ChatError(ErrorCode.UNAUTHORIZED, "the token's sub is not a usable name")
    rooms = claims.get("rooms")
    if rooms is None:
        return Identity(user)
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise ChatError(ErrorCode.UNAUTHORIZED, "the token's rooms claim must be a list of room names")
    return Identity(user, frozenset(check_room_name(r) for r in rooms))
