"""Random ids (message ids, candidate epochs) from the OS, read a page at a time.

Not tokens in the JWT sense (auth.py has those): plain unpredictable hex strings.

Every send takes a fresh message id and every publisher batch its candidate epochs: at light
load that was two getrandom() syscalls per message, 3 % of a node's busy samples under W2.
Read 4 KiB at a time, the same bytes `secrets` would give cost one syscall per 256 ids.
"""

from __future__ import annotations

import os
import threading
import weakref

PAGE_BYTES = 4096


class RandomIds:
    """Hex ids of OS randomness; a forked child drops the page it inherited, so no two
    processes hand out the same id."""

    def __init__(self) -> None:
        self._page = b""
        self._at = 0
        self._lock = threading.Lock()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (ids := ref()) is not None and ids._drop())

    def _drop(self) -> None:
        self._page, self._at = b"", 0

    def hex(self, nbytes: int) -> str:
        """2 * nbytes hex digits, like `secrets.token_hex(nbytes)`."""
        with self._lock:
            if self._at + nbytes > len(self._page):
                self._page, self._at = os.urandom(max(PAGE_BYTES, nbytes)), 0
            start = self._at
            self._at += nbytes
            return self._page[start : self._at].hex()
