"""One bound for a call that waits on a socket, whoever makes it (the archive's queries, the
decision hooks, webhooks)."""

from __future__ import annotations

import contextlib
import sys


def green_deadline(seconds: float, exception: BaseException | None = None) -> contextlib.AbstractContextManager[object]:
    """gevent.Timeout where gevent patched the sockets (a node): it raises `exception` (or
    itself) in the waiting greenlet after `seconds`. Outside a node (tools, unit tests) the
    caller's own timeouts alone."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):  # type: ignore[attr-defined]
        return contextlib.nullcontext()
    from gevent import Timeout

    return Timeout(seconds, exception)
