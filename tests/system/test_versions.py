"""Nodes on library versions other than the pinned ones (chat_app.versions): every reach
below a library's public API steps aside, and the node still serves, over both transports,
across nodes, with its joins in order. The other version is what importlib.metadata reports:
a distribution's metadata placed first on the node's path, as an upgraded install would."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ChatClient, wait_until

pytestmark = pytest.mark.timeout(90)


def other_version(tmp_path: Path, distribution: str) -> dict[str, str]:
    info = tmp_path / "other" / f"{distribution.replace('-', '_')}-99.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 99.0\n")
    return {"PYTHONPATH": str(tmp_path / "other"), "SEND_RATE": "1000", "SEND_BURST": "1000", "JOIN_RATE": "100"}


@pytest.mark.parametrize(
    ("distribution", "skipped", "transport_line"),
    [
        ("python-engineio", ["transport"], "direct_writes=False lean_websockets=False answers_tracked=True"),
        (
            "python-socketio",
            ["transport", "answers"],
            "direct_writes=False lean_websockets=False answers_tracked=False",
        ),
        ("redis", ["listener", "held_connection"], "direct_writes=True lean_websockets=True answers_tracked=True"),
    ],
)
def test_a_node_on_other_versions_steps_aside_and_still_serves(
    redis_server, nodes, tmp_path: Path, distribution: str, skipped: list[str], transport_line: str
) -> None:
    env = other_version(tmp_path, distribution)
    a = nodes.start(redis_server.url, **env)
    b = nodes.start(redis_server.url, **env)
    for part in skipped:
        assert f"event=private_api_skipped part={part} " in a.log()
    assert transport_line in a.log()
    # The frame limits and the protocol guard reach below engine.io and python-socketio too.
    pinned_engine = distribution == "redis"
    assert f"protocol_guard={pinned_engine} bounded_frames={pinned_engine}" in a.log()

    alice = ChatClient(a.url, "alice")
    bob = ChatClient(b.url, "bob", transports=("polling",))
    assert alice.call("join_room", "lobby")["ok"]
    sent = [alice.call("send_message", {"room": "lobby", "message": f"m{i}"}) for i in range(5)]
    assert all(ack["ok"] for ack in sent)
    # A join while messages flow: its history and what follows, each message once, in order.
    joined = bob.call("join_room", "lobby")
    more = [alice.call("send_message", {"room": "lobby", "message": f"n{i}"}) for i in range(5)]
    seen = [m["seq"] for m in joined["history"]]
    wait_until(lambda: len(bob.received()) >= 5, what="bob gets what followed his join")
    seen += [m["seq"] for m in bob.received()]
    assert seen == list(range(1, 11)), seen
    assert [m["message"] for m in alice.wait_for(10)] == [f"m{i}" for i in range(5)] + [f"n{i}" for i in range(5)]
    assert more[-1]["seq"] == 10
    alice.close()
    bob.close()
