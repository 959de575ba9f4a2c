"""orjson behind the two stdlib `json` calls python-socketio and python-engineio make.

Every client event is decoded and every broadcast, ack and error is encoded through this
module (SocketIO(json=...)); orjson does both several times faster than the stdlib.
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps(obj: Any, **_options: Any) -> str:
    """Compact JSON text; the stdlib options the packet encoder passes (separators) are moot."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()


def loads(data: str | bytes, **_options: Any) -> Any:
    return orjson.loads(data)
