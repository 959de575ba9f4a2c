"""On real nodes (the parts that need none are in unit/test_surface.py).
What a hostile client can reach around the chat itself (issue 23, the smaller items): the
Origin check, the cost of list_directs and leave_room, the log, what an outage says about
Redis, and the headers the page is served with. Real nodes and a real redis-server."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests
import socketio
import websocket
from helpers import ChatClient, scrape, wait_until

EVIL = "https://evil.example"
KEY = "an-api-key-of-at-least-thirty-two-bytes!"
LOOSE = {"JOIN_RATE": "1000", "JOIN_BURST": "1000", "SEND_RATE": "1000", "SEND_BURST": "1000"}


def polling_handshake(url: str, origin: str) -> requests.Response:
    return requests.get(f"{url}/socket.io/?EIO=4&transport=polling", headers={"Origin": origin}, timeout=5)


def websocket_opens(url: str, origin: str) -> bool:
    ws_url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    try:
        ws = websocket.create_connection(ws_url, origin=origin, timeout=5)
    except websocket.WebSocketBadStatusException as exc:
        assert exc.status_code == 400
        return False
    try:
        return ws.recv().startswith("0{")  # Engine.IO's open packet
    finally:
        ws.close()


def test_with_an_empty_cors_setting_a_foreign_origin_is_refused_on_both_transports(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, CORS_ALLOWED_ORIGINS="")
    assert polling_handshake(node.url, EVIL).status_code == 400
    assert not websocket_opens(node.url, EVIL)
    # The page's own origin still connects, both ways.
    assert polling_handshake(node.url, node.url).status_code == 200
    assert websocket_opens(node.url, node.url)
    with pytest.raises(socketio.exceptions.ConnectionError):
        socketio.Client(reconnection=False).connect(
            node.url, transports=["polling"], headers={"Origin": EVIL}, auth={"username": "x"}, wait_timeout=5
        )


def test_list_directs_and_leave_room_are_rate_limited_per_connection(redis_server, nodes) -> None:
    limits = {"LIST_DIRECTS_RATE": "1", "LIST_DIRECTS_BURST": "3", "LEAVE_RATE": "1", "LEAVE_BURST": "3"}
    node = nodes.start(redis_server.url, **LOOSE, **limits)
    greedy, other = ChatClient(node.url, "greedy"), ChatClient(node.url, "other")
    started = time.monotonic()
    answers = [greedy.call("list_directs", {}) for _ in range(20)]
    allowed = 3 + int(time.monotonic() - started) + 1
    ok = [a for a in answers if a["ok"]]
    assert 3 <= len(ok) <= allowed, answers
    assert answers[:3] == [{"ok": True, "directs": []}] * 3
    refused = [a for a in answers if not a["ok"]]
    assert refused and all(a["error"]["code"] == "rate_limited" for a in refused), refused
    assert other.call("list_directs", {})["ok"]  # a limit of the connection, not the user or node

    rooms = [f"r{i}" for i in range(12)]
    for room in rooms:
        assert greedy.call("join_room", room)["ok"]
    started = time.monotonic()
    left = {room: greedy.call("leave_room", room) for room in rooms}
    allowed = 3 + int(time.monotonic() - started) + 1
    gone = [room for room, a in left.items() if a["ok"]]
    kept = [room for room, a in left.items() if not a["ok"]]
    assert 3 <= len(gone) <= allowed and kept, left
    assert all(left[room]["error"]["code"] == "rate_limited" for room in kept)
    # A refused leave changed nothing: still a member, and listed in the room.
    assert greedy.call("send_message", {"room": kept[0], "message": "still here"})["ok"]
    members = requests.get(f"{node.url}/api/rooms/{kept[0]}", timeout=5).json()["members"]
    assert members == ["greedy"]
    assert scrape(node.url)["chat_rate_limited_total"] >= len(refused) + len(kept)
    greedy.close()
    other.close()


FORGED = "2026-12-06 00:00:00,000 INFO instance=node1 chat_app.service event=forged/disconnect"


def test_a_path_cannot_forge_a_log_line_and_floods_are_throttled(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, API_KEY=KEY, AUTH_SECRET="s" * 32, LOG_LEVEL="INFO")
    started = time.monotonic()
    forged = requests.post(f"{node.url}/api/users/x%0A{FORGED}", timeout=5)
    assert forged.status_code == 401
    line = wait_until(lambda: [x for x in node.log().splitlines() if "event=api_unauthorized" in x], what="the line")
    assert line == [line[0]] and line[0].endswith(f' path="/api/users/x\\n{FORGED}"'), line
    assert not [x for x in node.log().splitlines() if x.startswith("2026-12-06 00:00:00,000")]

    # A flood of bad keys and of refused connects: the first lines, then a summary.
    with requests.Session() as http:
        for i in range(150):
            assert http.get(f"{node.url}/api/rooms?i={i}", headers={"Authorization": "Bearer no"}).status_code == 401
        for _ in range(60):
            sid = http.get(f"{node.url}/socket.io/?EIO=4&transport=polling").text.split('"sid":"')[1].split('"')[0]
            http.post(f"{node.url}/socket.io/?EIO=4&transport=polling&sid={sid}", data="40")
            assert '"unauthorized"' in http.get(f"{node.url}/socket.io/?EIO=4&transport=polling&sid={sid}").text
        elapsed = time.monotonic() - started

    def lines(kind: str) -> list[str]:
        return [x for x in node.log().splitlines() if f"event={kind} " in f"{x} "]

    for kind, made in (("api_unauthorized", 151), ("connect_refused", 60)):
        logged = lines(kind)
        assert 20 <= len(logged) <= 20 + elapsed + 1, (kind, len(logged))  # LogThrottle: burst 20, 1 a second
        summaries = wait_until(
            lambda k=kind: [x for x in lines("log_suppressed") if f"kind={k} " in f"{x} "], timeout=15, what=kind
        )
        held = sum(int(re.search(r"suppressed=(\d+)", x)[1]) for x in summaries)
        assert len(logged) + held == made, (kind, len(logged), held)


def test_with_redis_down_clients_are_told_unavailable_and_nothing_about_redis(redis_server, nodes) -> None:
    node = nodes.start(redis_server.url, API_KEY=KEY, SEND_DEADLINE="2", **LOOSE)
    alice = ChatClient(node.url, "alice")
    assert alice.call("join_room", "lobby")["ok"]
    redis_server.kill()
    wait_until(lambda: requests.get(f"{node.url}/healthz", timeout=10).status_code == 503, what="health to fail")

    said: list[dict[str, Any]] = []
    said.append(alice.call("join_room", "elsewhere", timeout=15)["error"])
    said.append(alice.call("list_directs", {}, timeout=15)["error"])
    said.append(alice.call("send_message", {"room": "lobby", "message": "x"}, timeout=15)["error"])
    for path, headers in (
        ("/api/rooms/x", {}),
        ("/api/rooms/x/members", {}),
        ("/api/rooms/x/history", {"Authorization": f"Bearer {KEY}"}),
    ):
        response = requests.get(f"{node.url}{path}", headers=headers, timeout=15)
        assert response.status_code == 503, (path, response.text)
        said.append(response.json()["error"])
    alice.sio.emit("join_room", "again")  # no ack asked: the error comes as an `error` event
    said.append(alice.wait_for(1, "error", timeout=15)[0])

    port = str(redis_server.port)
    for error in said:
        assert error["code"] == "unavailable", error
        assert error["message"].endswith("the service is unavailable: try again shortly"), error
        assert not re.search(rf"redis|{port}|127\.0\.0\.1|refused|Error \d+", error["message"], re.I), error
    # The detail is the operator's: in the log.
    logged = [x for x in node.log().splitlines() if "event=unavailable " in x]
    assert logged and any(port in x for x in logged), logged
    alice.close()
