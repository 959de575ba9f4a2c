"""Big rooms (issue 15): above PRESENCE_EVENTS_MAX_MEMBERS members get a periodic count, not
an event per join and leave; join acks name at most a page of members, and the full list is
paged over HTTP; a burst of joins shares Redis round trips. Real nodes, Redis and clients."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import requests
import websocket
from helpers import ChatClient, scrape, wait_until

SMALL = {"PRESENCE_EVENTS_MAX_MEMBERS": "5", "PRESENCE_COUNT_INTERVAL": "0.3", "PRESENCE_GRACE": "0.2"}


def presence(client: ChatClient) -> list[tuple[str, str | None, int]]:
    return [(p["action"], p["user"], p["members_count"]) for p in client.received("presence")]


def test_above_the_threshold_members_get_counts_instead_of_an_event_per_join(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, **SMALL)
    b = nodes.start(redis_server.url, **SMALL)
    watcher = ChatClient(a.url, "watcher")
    watcher.call("join_room", "hall")
    people = [ChatClient((a, b)[i % 2].url, f"p{i:02d}") for i in range(12)]
    for person in people[:4]:
        person.call("join_room", "hall")
    # Up to the threshold (5 users), every arrival is announced, as in any room.
    wait_until(lambda: len(presence(watcher)) == 4, what="four join events")
    assert presence(watcher) == [("join", f"p{i:02d}", i + 2) for i in range(4)]

    acks = [person.call("join_room", "hall") for person in people[4:]]
    # Above it, a count (within PRESENCE_COUNT_INTERVAL), not one event per arrival.
    wait_until(lambda: ("count", None, 13) in presence(watcher), what="a count of 13")
    later = presence(watcher)[4:]
    assert [e for e in later if e[0] != "count"] == [], later
    assert len(later) <= 3, later  # counts are periodic, and only when the number changed
    # Acks name at most the threshold's number of members, in name order, and say how many.
    assert acks[-1]["members_count"] == 13
    assert acks[-1]["members"] == ["p00", "p01", "p02", "p03", "p04"]

    for person in people[6:]:
        person.close()
    wait_until(lambda: presence(watcher)[-1] == ("count", None, 7), timeout=10, what="the count falls to 7")
    assert [e for e in presence(watcher)[4:] if e[0] != "count"] == []
    for person in [watcher, *people[:6]]:
        person.close()


def test_the_member_list_of_a_big_room_is_paged_in_name_order(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, **SMALL)
    b = nodes.start(redis_server.url, **SMALL)
    people = [ChatClient((a, b)[i % 2].url, f"user-{i:02d}") for i in range(11)]
    for person in people:
        person.call("join_room", "hall")
    people.append(ChatClient(b.url, "user-03"))  # a second connection is not a second member
    people[-1].call("join_room", "hall")

    names, cursor, pages = [], None, 0
    while True:
        params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{a.url}/api/rooms/hall/members", params=params, timeout=5).json()
        assert page["ok"] and page["members_count"] == 11
        names += page["members"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == [f"user-{i:02d}" for i in range(11)] and pages == 3
    for bad in ({"limit": "0"}, {"limit": "1001"}, {"limit": "-1"}, {"limit": "x"}, {"cursor": "c" * 65}):
        response = requests.get(f"{a.url}/api/rooms/hall/members", params=bad, timeout=5)
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_payload", bad
    assert requests.get(f"{a.url}/api/rooms/bad*room/members", timeout=5).json()["error"]["code"] == "invalid_room"
    for person in people:
        person.close()


def bare_connection(port: int, name: str) -> websocket.WebSocket:
    """A Socket.IO v5 connection over a bare websocket: cheap enough to open hundreds."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=20)
    assert ws.recv().startswith("0{")
    ws.send("40" + json.dumps({"username": name}))
    assert ws.recv().startswith("40{")
    return ws


def ack_of(ws: websocket.WebSocket, ack_id: int) -> dict:
    """Read frames until the ack with `ack_id` (events of the room may come first)."""
    prefix = f"43{ack_id}"
    while True:
        frame = ws.recv()
        if frame.startswith(prefix + "["):
            return json.loads(frame[len(prefix) :])[0]


def test_a_burst_of_500_joins_completes_in_fewer_round_trips_than_joins(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, SEND_RATE="1000", SEND_BURST="1000")
    rooms = [f"burst-{i}" for i in range(5)]
    senders = [ChatClient(node.url, f"sender-{i}") for i in range(len(rooms))]
    for sender, room in zip(senders, rooms, strict=True):
        sender.call("join_room", room)
        for n in range(3):
            assert sender.call("send_message", {"room": room, "message": f"m{n}"})["ok"]
    with ThreadPoolExecutor(8) as pool:
        sockets = list(pool.map(lambda i: bare_connection(node.port, f"j{i}"), range(500)))
    before = scrape(node.url)
    redis_calls = redis_server.client().info("commandstats").get("cmdstat_fcall", {}).get("calls", 0)

    for i, ws in enumerate(sockets):  # every join is sent before any ack is read
        ws.send("421" + json.dumps(["join_room", {"room": rooms[i % len(rooms)]}]))
    acks = [ack_of(ws, 1) for ws in sockets]

    after = scrape(node.url)
    for i, ack in enumerate(acks):
        assert ack["ok"] and ack["room"] == rooms[i % len(rooms)], ack
        assert ack["seq"] == 3 and [m["message"] for m in ack["history"]] == ["m0", "m1", "m2"], ack
        assert 2 <= ack["members_count"] <= 101
    assert sorted(ack["members_count"] for ack in acks)[-1] == 101  # the last in each room saw all
    calls = after["chat_redis_batched_calls_total"] - before["chat_redis_batched_calls_total"]
    trips = after["chat_redis_batched_round_trips_total"] - before["chat_redis_batched_round_trips_total"]
    assert calls >= 1000  # a presence write and a history read per join
    assert trips < 500, f"{trips:.0f} round trips for 500 joins"
    fcall = redis_server.client().info("commandstats")["cmdstat_fcall"]["calls"] - redis_calls
    assert fcall >= 1000  # Redis itself ran every join's scripts
    print(f"500 joins: {calls:.0f} calls in {trips:.0f} round trips")
    for ws in sockets:
        ws.close()
    for sender in senders:
        sender.close()
