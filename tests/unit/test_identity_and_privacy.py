"""Nobody passes as someone else, reads who talks to whom, or locks anyone out (issue 23):
a token's `sub` is taken as is, its `exp` ends a live connection, the open room routes keep
private rooms private and cost O(page), direct messages do not take a stranger's room
slots, dedup ids are one per (sender, key), and a ban bites at send too. Here what needs no node;
on real nodes: system/test_identity_and_privacy_nodes.py."""

from __future__ import annotations

from typing import Any

import pytest
from jwts import SECRET, token

from chat_app.auth import identify
from chat_app.backends.base import Draft
from chat_app.protocol import ChatError, ErrorCode

IMPOSTORS = [
    "alice\u200b",
    " alice",
    "alice ",
    "alice\xa0",
    "\u202ealice",
    "al  ice",
    "e\u0301",
    "x" * 65,
    "",
    42,
    None,
]


@pytest.mark.parametrize("sub", IMPOSTORS)
def test_a_sub_that_is_not_a_user_name_as_it_stands_is_refused(sub: Any) -> None:
    with pytest.raises(ChatError) as refused:
        identify({"token": token(sub)}, None, SECRET)
    assert refused.value.code == ErrorCode.UNAUTHORIZED


@pytest.mark.parametrize("sub", ["alice", "dana 🙂", "\u00e9lodie", "x" * 64, "a:b"])
def test_a_valid_sub_is_taken_as_is(sub: str) -> None:
    assert identify({"token": token(sub)}, None, SECRET).user == sub


def test_issuer_and_audience() -> None:
    def who(issuer: str | None = None, audience: str | None = None, **claims: Any) -> str | None:
        try:
            return identify({"token": token("alice", **claims)}, None, SECRET, issuer, audience).user
        except ChatError as exc:
            assert exc.code == ErrorCode.UNAUTHORIZED
            return None

    # Unset: any iss is accepted; a token naming an audience is refused (it is for someone named).
    assert who(iss="anyone") == "alice" and who() == "alice"
    assert who(aud="chat") is None
    assert who(issuer="https://auth.example") is None  # no iss at all
    assert who(issuer="https://auth.example", iss="https://other.example") is None
    assert who(issuer="https://auth.example", iss="https://auth.example") == "alice"
    assert who(audience="chat") is None  # no aud at all
    assert who(audience="chat", aud="billing") is None
    assert who(audience="chat", aud=["billing", "chat"]) == "alice"
    both = {"issuer": "https://auth.example", "audience": "chat"}
    assert who(**both, iss="https://auth.example", aud="chat") == "alice"


def test_dedup_ids_name_one_sender_and_key_pair() -> None:
    pairs = [("a:b", "c"), ("a", "b:c"), ("a:b:c", "d"), ("a", "b:c:d"), ("1:a", "b"), ("1", "a:b")]
    ids = {Draft.new("r", sender, "m", "i", key).dedup_id for sender, key in pairs}
    assert len(ids) == len(pairs)
    # Never one of the previous release's `k:{sender}:{key}` ids (a rolling deploy has both).
    old = {f"k:{sender}:{key}" for sender, key in pairs}
    assert not ids & old


def test_memory_backend_refuses_a_banned_sender_too() -> None:
    from chat_app.backends.base import Banned
    from chat_app.backends.memory import MemoryBroker, MemoryHub, MemoryPresence

    hub = MemoryHub()
    broker, presence = MemoryBroker(hub, "n"), MemoryPresence(hub, "n")
    presence.ban("lobby", "mallory", 60)
    with pytest.raises(Banned):
        broker.send(Draft.new("lobby", "mallory", "x", "n"))
    assert broker.send(Draft.new("lobby", "bob", "x", "n")).seq == 1
