"""Members see each other arrive and leave, on every node (real Redis, nodes, clients)."""

from __future__ import annotations

import signal
import time

from helpers import ChatClient, scrape, wait_until


def actions(client: ChatClient, room: str = "lobby") -> list[tuple[str, str | None, int]]:
    return [(p["action"], p["user"], p["members_count"]) for p in client.received("presence") if p["room"] == room]


def test_join_leave_and_disconnect_are_seen_across_nodes(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url, PRESENCE_GRACE="0.5")
    alice = ChatClient(a.url, "alice")
    alice.call("join_room", "lobby")
    bob = ChatClient(b.url, "bob")
    bob.call("join_room", "lobby")
    wait_until(lambda: ("join", "bob", 2) in actions(alice), what="alice sees bob join")
    carol = ChatClient(b.url, "carol")
    carol.call("join_room", "lobby")
    wait_until(lambda: ("join", "carol", 3) in actions(alice), what="alice sees carol join")
    bob.call("leave_room", "lobby")
    wait_until(lambda: ("leave", "bob", 2) in actions(alice), what="alice sees bob leave")
    carol.close()
    wait_until(lambda: ("leave", "carol", 1) in actions(alice), timeout=5, what="alice sees carol's disconnect")
    # alice learnt of herself from her join ack; after it, every change exactly once, in order.
    assert actions(alice) == [("join", "bob", 2), ("join", "carol", 3), ("leave", "bob", 2), ("leave", "carol", 1)]
    alice.close()
    bob.close()


def test_a_join_storm_is_told_to_every_member_whole_and_in_order_in_fewer_writes(redis_server, nodes) -> None:
    """PRESENCE_LINGER (its default): a member told of arrivals in quick succession gets
    them gathered into fewer writes, each one still once, in order, after its own ack."""
    node = nodes.start(redis_server.url)
    watcher = ChatClient(node.url, "watcher")
    joiners = [ChatClient(node.url, f"u{i}") for i in range(8)]
    try:
        watcher.call("join_room", "lobby")
        before = scrape(node.url)
        for client in joiners:
            assert client.call("join_room", "lobby")["ok"]
        wait_until(lambda: len(actions(watcher)) == 8, what="the watcher told of 8 arrivals")
        assert actions(watcher) == [("join", f"u{i}", i + 2) for i in range(8)]
        for i, client in enumerate(joiners):
            later = [("join", f"u{j}", j + 2) for j in range(i + 1, 8)]
            earlier = [("join", f"u{j}", j + 2) for j in range(i)]
            wait_until(
                lambda c=client, want=later: [a for a in actions(c) if a in want] == want,
                what=f"u{i} told of {len(later)} later arrivals",
            )
            # An arrival published before this member's join can reach the node after it
            # (presence travels through Redis): told late, then, but never its own.
            assert all(a in later or a in earlier for a in actions(client)), actions(client)
        after = scrape(node.url)
        frames = after["chat_websocket_frames_total{path=direct}"] - before["chat_websocket_frames_total{path=direct}"]
        writes = after["chat_websocket_writes_total"] - before["chat_websocket_writes_total"]
        assert frames >= 8 + 36  # the joins' acks, and 8 + 7 + ... + 1 arrivals told
        assert writes < frames
    finally:
        for client in [watcher, *joiners]:
            client.close()


def test_two_connections_of_one_user_join_once_and_leave_once(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, PRESENCE_GRACE="0.3")
    b = nodes.start(redis_server.url, PRESENCE_GRACE="0.3")
    watcher = ChatClient(a.url, "watcher")
    watcher.call("join_room", "lobby")
    phone = ChatClient(a.url, "dana")
    laptop = ChatClient(b.url, "dana")
    phone.call("join_room", "lobby")
    laptop.call("join_room", "lobby")
    wait_until(lambda: ("join", "dana", 2) in actions(watcher))
    phone.call("leave_room", "lobby")
    laptop.close()
    wait_until(lambda: ("leave", "dana", 1) in actions(watcher), timeout=5)
    time.sleep(0.5)  # no event may follow: this is the quiet period being asserted
    assert [x for x in actions(watcher) if x[1] == "dana"] == [("join", "dana", 2), ("leave", "dana", 1)]
    watcher.close()
    phone.close()


def test_reconnect_within_grace_is_quiet_and_after_it_is_leave_then_join(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, PRESENCE_GRACE="2")
    b = nodes.start(redis_server.url, PRESENCE_GRACE="2")
    watcher = ChatClient(a.url, "watcher")
    watcher.call("join_room", "lobby")
    erin = ChatClient(b.url, "erin")
    erin.call("join_room", "lobby")
    wait_until(lambda: ("join", "erin", 2) in actions(watcher))

    erin.close()  # a blip: back on the other node well within 2 s
    erin = ChatClient(a.url, "erin")
    erin.call("join_room", "lobby")
    time.sleep(2.5)  # the whole grace period must pass without an event
    assert [x for x in actions(watcher) if x[1] == "erin"] == [("join", "erin", 2)]

    erin.close()
    wait_until(lambda: ("leave", "erin", 1) in actions(watcher), timeout=6, what="leave after grace")
    erin = ChatClient(b.url, "erin")
    erin.call("join_room", "lobby")
    wait_until(lambda: actions(watcher).count(("join", "erin", 2)) == 2, what="join again")
    assert [x for x in actions(watcher) if x[1] == "erin"] == [
        ("join", "erin", 2),
        ("leave", "erin", 1),
        ("join", "erin", 2),
    ]
    watcher.close()
    erin.close()


def test_killed_nodes_users_are_announced_leaving_once_within_ttl(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    c = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)  # killed below
    watchers = [ChatClient(a.url, "w1"), ChatClient(c.url, "w2")]
    for w in watchers:
        w.call("join_room", "lobby")
    doomed = [ChatClient(b.url, "frank"), ChatClient(b.url, "gina")]
    for d in doomed:
        d.call("join_room", "lobby")
    for w in watchers:
        wait_until(lambda w=w: ("join", "gina", 4) in actions(w))
    killed_at = time.monotonic()
    nodes.signal(b, signal.SIGKILL)
    ttl_plus_beat = 3 + 1
    for w in watchers:
        wait_until(
            lambda w=w: {x[1] for x in actions(w) if x[0] == "leave"} == {"frank", "gina"},
            timeout=ttl_plus_beat + 2,
            what="both leaves",
        )
    elapsed = time.monotonic() - killed_at
    assert elapsed <= ttl_plus_beat + 0.5, elapsed
    time.sleep(1.5)  # a second announcement would arrive within a heartbeat or two
    for w in watchers:
        leaves = [x[1] for x in actions(w) if x[0] == "leave"]
        assert sorted(leaves) == ["frank", "gina"], leaves
        w.close()


def test_resubscribe_after_client_kill_sends_a_sync(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    alice = ChatClient(a.url, "alice")
    bob = ChatClient(b.url, "bob")
    alice.call("join_room", "lobby")
    bob.call("join_room", "lobby")
    redis_server.client().client_kill_filter(_type="pubsub")
    for client in (alice, bob):
        sync = wait_until(
            lambda client=client: [p for p in client.received("presence") if p["action"] == "sync"],
            what="sync after resubscribe",
        )
        assert sync[-1]["members"] == ["alice", "bob"] and sync[-1]["members_count"] == 2
    alice.close()
    bob.close()
