"""HS256 tokens as the tests' identity provider signs them (nodes get AUTH_SECRET=SECRET)."""

from __future__ import annotations

import time
from typing import Any

import jwt

SECRET = "test-secret-for-hs256-at-least-32-bytes"


def token(sub: Any, exp_in: float = 60, secret: str = SECRET, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + exp_in), **claims}, secret, algorithm="HS256")
