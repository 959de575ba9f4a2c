"""The server API's reads over HTTP: history pages and the room listing. Nodes started as the
Procfile starts them, one real Redis, real HTTP calls."""

from __future__ import annotations

from typing import Any

from api_client import KEY, ApiClient, api
from test_cluster import cluster  # noqa: F401 (fixture)

from chat_app.backends.redis.keys import RoomKeys


def test_history_pages_are_exact_oldest_first_and_of_one_epoch(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY, HISTORY_LENGTH="20")
    keeper = ApiClient(a.url, "keeper")
    keeper.call("join_room", "lobby")
    for i in range(1, 26):
        assert api("POST", a.url, "/api/rooms/lobby/messages", json={"message": f"m{i}"}).json()["seq"] == i

    def page(query: str) -> dict[str, Any]:
        response = api("GET", a.url, f"/api/rooms/lobby/history{query}")
        assert response.status_code == 200, response.text
        return response.json()

    def seqs(query: str) -> list[int]:
        return [m["seq"] for m in page(query)["messages"]]

    body = page("?before=21&limit=5")
    assert set(body) == {"ok", "room", "epoch", "messages"} and body["room"] == "lobby"
    assert [m["message"] for m in body["messages"]] == ["m16", "m17", "m18", "m19", "m20"]
    assert seqs("?limit=3") == [23, 24, 25], "the newest without `before`"
    assert seqs("") == list(range(6, 26)), "default 50, within what the room keeps (HISTORY_LENGTH 20)"
    assert seqs("?before=9&limit=100") == [6, 7, 8]
    assert seqs("?before=6") == [] and seqs("?before=1") == []
    assert seqs("?before=1000&limit=2") == [24, 25]

    # The room is last written through "another server" (as after a failover): the next
    # post starts a new epoch and keeps the stream; history answers from the new one only.
    redis_server.client().set(RoomKeys.of("chat", "lobby").srv, "promoted-replica")
    fresh = api("POST", a.url, "/api/rooms/lobby/messages", json={"message": "new epoch"}).json()
    assert fresh["epoch"] != body["epoch"]
    after = page("?limit=100")
    assert after["epoch"] == fresh["epoch"]
    assert [(m["seq"], m["message"], m["epoch"]) for m in after["messages"]] == [
        (fresh["seq"], "new epoch", fresh["epoch"])
    ]
    assert seqs(f"?before={fresh['seq']}") == []
    empty = api("GET", a.url, "/api/rooms/nobody-here/history").json()
    assert empty == {"ok": True, "room": "nobody-here", "epoch": None, "messages": []}


def test_rooms_are_listed_page_by_page_with_member_counts(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY)
    b = nodes.start(redis_server.url, API_KEY=KEY)
    names = [f"room-{i}" for i in range(7)] + ["café crème", "a:b#c@d"]
    x, y = ApiClient(a.url, "x"), ApiClient(b.url, "y")
    for name in names:
        x.call("join_room", name)
    y.call("join_room", names[0])
    ApiClient(b.url, "x").call("join_room", names[0])  # x again: two connections, one member
    api("POST", a.url, "/api/rooms/only-history/messages", json={"message": "nobody listens"})
    # Redis keys that merely look like a room's must not show up.
    redis_server.client().set("chat:{room:zz}:nodesx", "1")
    seen: dict[str, dict[str, Any]] = {}
    cursor, pages = None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = api("GET", b.url, "/api/rooms", params=params).json()
        pages += 1
        for room in page["rooms"]:
            seen[room.pop("room")] = room
        cursor = page["cursor"]
        if cursor is None:
            break
        assert pages < 50, "the cursor never ends"
    assert set(seen) == set(names), "every room with members once, the empty one not"
    assert seen[names[0]] == {"members": 2, "connections": 3}
    assert seen["café crème"] == {"members": 1, "connections": 1}
    assert pages > 1
