"""Refusing sends where they arrive, while the node sheds load.

An overloaded node that refuses a send through python-socketio still pays for most of a
send: the packet decode, a greenlet, the payload's validation, the ack's encode. Measured
under W2 at twice the sustained rate, those refusals took the CPU that accepted sends
needed, and deliveries fell to a third of capacity. Read straight off the frame in the
receive loop (lean_websockets), a refusal costs a few string compares and one write. The
answer is the one ChatService gives (`overloaded`); payloads are not looked at, so a send
that would also be refused for another reason learns that reason on its retry.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import json_codec

SEND_EVENT = '["send_message"'


class SendShedding:
    """`answer(text)` is the Socket.IO packet that refuses `text` when it is a send of the
    default namespace and `refuses()` says to; else None (the packet goes its usual way)."""

    def __init__(self, shedding: Callable[[], bool], refuses: Callable[[], bool], error: dict[str, str]) -> None:
        self._shedding = shedding  # cheap: is any share of sends being refused?
        self._refuses = refuses  # this one?
        self._ack_tail = "[" + json_codec.dumps({"ok": False, "error": error}) + "]"
        # A send without an ack id is told by an `error` event, as the handlers do.
        self._event = "2" + json_codec.dumps(["error", {**error, "event": "send_message"}])

    def answer(self, text: object) -> str | None:
        if not self._shedding() or type(text) is not str or text[:1] != "2":
            return None
        end = 1
        while end < len(text) and text[end].isdigit():
            end += 1
        if not text.startswith(SEND_EVENT, end) or not self._refuses():
            return None
        return f"3{text[1:end]}{self._ack_tail}" if end > 1 else self._event
