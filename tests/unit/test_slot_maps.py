"""SlotMaps.look against clients whose map rebuild may read a server gossip has not reached
yet (redis-py's `nodes_manager.initialize` asks its first startup node): the look must not
call the change followed until every client agrees with the map it read."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from chat_app.backends.redis import topology
from chat_app.backends.redis.topology import Layout, SlotMaps

OLD: Layout = ((0, 16383, "127.0.0.1:7000"),)
NEW: Layout = ((0, 16383, "127.0.0.1:7003"),)


@dataclass
class Node:
    name: str


@dataclass
class NodesManager:
    """`initialize` takes the next map from `answers`: a stale server's, then the new one."""

    answers: list[Layout]
    slots_cache: dict[int, list[Node]] = field(default_factory=dict)

    def initialize(self) -> None:
        self.slots_cache = slots_of(self.answers.pop(0))


def slots_of(layout: Layout) -> dict[int, list[Node]]:
    return {slot: [Node(master)] for first, last, master in layout for slot in range(first, last + 1)}


class Client:
    def __init__(self, answers: list[Layout]) -> None:
        self.nodes_manager = NodesManager(answers, slots_of(OLD))

    def get_nodes(self) -> list[Any]:
        return []


@pytest.fixture
def maps(monkeypatch) -> SlotMaps:
    monkeypatch.setattr(topology, "_pinned", lambda: True)
    client = Client(answers=[OLD, NEW])  # the first rebuild reads a master not yet told
    maps = SlotMaps([client], check_interval=1.0, timeout=0.5)  # type: ignore[list-item]
    monkeypatch.setattr(maps, "_read", lambda: NEW)  # the probe already sees the promotion
    return maps


def test_a_rebuild_that_read_a_stale_server_is_looked_at_again_closely(maps: SlotMaps) -> None:
    changes: list[int] = []
    maps.on_change(lambda: changes.append(1))
    assert maps.look() is False  # rebuilt, but still the old map: not followed yet
    assert maps._eager_until > time.monotonic()  # the next look comes within MIN_LOOK_GAP
    assert (maps.failovers, changes) == (0, [])
    assert maps.look() is True  # this rebuild read the new map
    assert (maps.failovers, changes, maps.refreshes) == (1, [1], 2)
    assert maps.look() is False  # agreed: nothing more to do
