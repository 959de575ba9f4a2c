"""Who a connection is. With AUTH_SECRET set, a signed token decides (JWT, HS256): its `sub`
is the sender name, taken exactly as signed or refused (never cleaned: a cleaned `sub` of
`"alice\\u200b"` would be alice), its `exp` ends the connection, an optional `rooms` claim
limits what it may join, and AUTH_ISSUER / AUTH_AUDIENCE, when set, must match `iss` / `aud`.
Without it, the original protocol's self-declared names are kept, cleaned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt
from pydantic_core import PydanticCustomError

from .protocol.errors import ChatError, ErrorCode
from .protocol.names import check_room_name, check_user, clean_sender

# In a `rooms` claim: every direct conversation of the token's user (`open_direct`, and the
# ones others start). Without it a claim allows only the direct rooms it names.
ALL_DIRECTS = "@*"


@dataclass(frozen=True, slots=True)
class Identity:
    user: str | None  # None: each payload's own `sender` is used (no auth configured)
    rooms: frozenset[str] | None = None  # None: any room; may hold ALL_DIRECTS
    expires: float | None = None  # the token's `exp` (seconds since 1970): the connection ends then


def identify(
    auth: Any,
    query_username: str | None,
    secret: str | None,
    issuer: str | None = None,
    audience: str | None = None,
) -> Identity:
    if secret is None:
        name = auth.get("username") if isinstance(auth, dict) else None
        return Identity(clean_sender(name or query_username))
    token = auth.get("token") if isinstance(auth, dict) else None
    if not isinstance(token, str) or not token:
        raise ChatError(ErrorCode.UNAUTHORIZED, "a signed token is required in auth.token")
    required = ["sub", "exp", *(["iss"] if issuer else []), *(["aud"] if audience else [])]
    try:
        # Without AUTH_AUDIENCE PyJWT refuses a token that carries `aud`: a token minted for a
        # named audience is not for a server that names none (RFC 7519, 4.1.3).
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], issuer=issuer, audience=audience, options={"require": required}
        )
    except jwt.ExpiredSignatureError:
        raise ChatError(ErrorCode.UNAUTHORIZED, "the token has expired") from None
    except jwt.InvalidAudienceError:
        wanted = "set AUTH_AUDIENCE to accept tokens with one" if audience is None else f"it must be {audience!r}"
        raise ChatError(ErrorCode.UNAUTHORIZED, f"the token's aud is not this server's: {wanted}") from None
    except jwt.InvalidTokenError as exc:
        raise ChatError(ErrorCode.UNAUTHORIZED, f"the token is not valid: {exc}") from None
    user = _exact_user(claims["sub"])
    expires = float(claims["exp"])
    rooms = claims.get("rooms")
    if rooms is None:
        return Identity(user, expires=expires)
    if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
        raise ChatError(ErrorCode.UNAUTHORIZED, "the token's rooms claim must be a list of room names")
    allowed = frozenset(r if r == ALL_DIRECTS else check_room_name(r) for r in rooms)
    return Identity(user, allowed, expires)


def _exact_user(sub: Any) -> str:
    """The signed name as it is: one that the user-name rule would change (NFC, spaces,
    invisible or control characters, over 64 characters) is refused, not rewritten."""
    try:
        if isinstance(sub, str) and check_user(sub) == sub:
            return sub
    except PydanticCustomError:
        pass
    raise ChatError(ErrorCode.UNAUTHORIZED, "the token's sub is not a valid user name as it stands")
