"""A room keeps its last HISTORY_LENGTH seqs, on both backends (Redis: history.lua over a
stream trimmed by whole nodes, tests/system/test_scripts.py): an erased message leaves a hole
in that window, not room for an older message to come back."""

from __future__ import annotations

from chat_app.backends.base import Draft
from chat_app.backends.memory import MemoryBroker, MemoryHub


def test_the_memory_backend_keeps_the_last_seqs_and_an_erasure_leaves_a_hole() -> None:
    broker = MemoryBroker(MemoryHub(history_length=3), "A")
    for i in range(5):
        broker.send(Draft.new("lobby", "ann", f"m{i}", "A"))
    assert [e.seq for e in broker.history("lobby", after=None).envelopes] == [3, 4, 5]
    broker.forget("lobby", [4])
    broker.send(Draft.new("lobby", "ann", "m5", "A"))
    assert [e.seq for e in broker.history("lobby", after=None).envelopes] == [5, 6]
    recovery = broker.history("lobby", after=3)
    assert [e.seq for e in recovery.envelopes] == [5, 6] and not recovery.complete
