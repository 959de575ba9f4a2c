"""orjson behind the two stdlib `json` calls python-socketio and python-engineio make.

Every client event is decoded and every broadcast, ack and error is encoded through this
module (SocketIO(json=...)); orjson does both several times faster than the stdlib.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any, **_options: Any) -> str:
    """Compact JSON text; the stdlib options the packet encoder passes (separators) are moot.
    What orjson refuses (an integer past 64 bits, say) goes through the stdlib instead."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(obj, separators=(",", ":"))


def loads(data: str | bytes, **_options: Any) -> Any:
    """What orjson refuses and the stdlib reads (NaN, Infinity) still reaches validation, so
    the client gets an error answer rather than a dropped connection."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
