"""RandomIds read OS randomness a page at a time: still distinct, and never repeated by a
forked child (which inherits the parent's unread page)."""

from __future__ import annotations

import os

import pytest

from chat_app.random_ids import PAGE_BYTES, RandomIds

pytestmark = pytest.mark.timeout(10)


def test_tokens_are_hex_of_the_asked_length_and_distinct_across_pages() -> None:
    tokens = RandomIds()
    seen = [tokens.hex(16) for _ in range(3 * PAGE_BYTES // 16)]
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in seen)
    assert len(set(seen)) == len(seen)
    assert len(tokens.hex(PAGE_BYTES + 8)) == 2 * (PAGE_BYTES + 8)  # more than a page at once


def test_a_forked_child_does_not_repeat_the_parents_tokens() -> None:
    tokens = RandomIds()
    tokens.hex(16)  # the parent now holds a page, the child inherits it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next token and leave without pytest's teardown
        os.write(write, tokens.hex(16).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    assert len(child) == 32 and child != tokens.hex(16)
