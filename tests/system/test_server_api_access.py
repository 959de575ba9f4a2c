"""The server API over HTTP, its door: a post reaches members on every node with the key and
only with it, no API without API_KEY, bad input gets a 400 with its code, users are found by
token or name. Nodes started as the Procfile starts them, one real Redis, real Socket.IO
clients, real HTTP calls."""

from __future__ import annotations

import time

import jwt
import pytest
import requests
from api_client import KEY, ApiClient, api, seq_of
from test_cluster import cluster  # noqa: F401 (fixture)


def test_http_publish_reaches_members_on_every_node_and_needs_the_key(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY)
    b = nodes.start(redis_server.url, API_KEY=KEY)
    alice, bob = ApiClient(a.url, "alice"), ApiClient(b.url, "bob")
    alice.call("join_room", "lobby")
    bob.call("join_room", "lobby")

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Bearer {KEY}x"}):
        refused = api("POST", a.url, "/api/rooms/lobby/messages", headers=headers, json={"message": "no"})
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    for path in ("/api/rooms", "/api/rooms/lobby/history"):
        assert api("GET", a.url, path, headers={}).status_code == 401
    assert api("POST", a.url, "/api/users/alice/disconnect", headers={}).status_code == 401
    assert alice.sio.connected

    ok = api("POST", a.url, "/api/rooms/lobby/messages", json={"message": "Your order shipped", "sender": "shop"})
    assert ok.status_code == 200, ok.text
    ack = ok.json()
    assert ack["ok"] and ack["seq"] == 1 and set(ack) == {"ok", "id", "seq", "epoch", "timestamp"}
    for member in (alice, bob):
        (got,) = member.wait_for(1)
        assert (got["id"], got["seq"], got["sender"], got["message"]) == (ack["id"], 1, "shop", "Your order shipped")
        assert got["instance_id"] == f"api:{a.instance_id}" and got["timestamp"] == ack["timestamp"]
    assert seq_of(a.url, "lobby") == 1, "the refused posts stored nothing"

    # The same key twice stores one message: the retry is answered with the first one.
    first = api("POST", b.url, "/api/rooms/lobby/messages", json={"message": "once", "key": "k-1"}).json()
    again = api("POST", a.url, "/api/rooms/lobby/messages", json={"message": "once", "key": "k-1"}).json()
    assert (again["id"], again["seq"]) == (first["id"], first["seq"]) == (first["id"], 2)
    api("POST", a.url, "/api/rooms/lobby/messages", json={"message": "after"})  # a duplicate would come first
    assert [m["seq"] for m in bob.wait_for(3)] == [1, 2, 3]
    # The open room endpoint stays open.
    assert requests.get(f"{a.url}/api/rooms/lobby", timeout=5).json()["members"] == ["alice", "bob"]


def test_api_is_off_without_api_key(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url)
    member = ApiClient(a.url, "alice")
    member.call("join_room", "lobby")
    for method, path in (
        ("POST", "/api/rooms/lobby/messages"),
        ("GET", "/api/rooms"),
        ("POST", "/api/users/alice/disconnect"),
        ("DELETE", "/api/users/alice/rooms/lobby"),
    ):
        response = api(method, a.url, path, json={"message": "x"})
        assert response.status_code == 404, (path, response.text)
        assert response.json() == {
            "ok": False,
            "error": {"code": "not_found", "message": "the server API is off: set API_KEY to turn it on"},
        }
    assert seq_of(a.url, "lobby") == 0 and member.sio.connected and member.received() == []
    assert requests.get(f"{a.url}/api/rooms/lobby", timeout=5).status_code == 200


def test_a_short_api_key_stops_the_node(nodes) -> None:
    with pytest.raises(AssertionError, match="API_KEY must be at least 32 bytes"):
        nodes.start(None, API_KEY="short")


def test_bad_input_gets_a_400_with_its_code_and_changes_nothing(redis_server, nodes) -> None:
    a = nodes.start(redis_server.url, API_KEY=KEY, MAX_MESSAGE_BYTES="100")
    alice = ApiClient(a.url, "alice")
    alice.call("join_room", "lobby")
    post = "/api/rooms/lobby/messages"
    cases = [
        ("POST", "/api/rooms/bad*room/messages", {"json": {"message": "x"}}, "invalid_room"),
        ("POST", "/api/rooms/a%2Fb/messages", {"json": {"message": "x"}}, "invalid_room"),
        ("POST", f"/api/rooms/{'r' * 65}/messages", {"json": {"message": "x"}}, "invalid_room"),
        ("POST", "/api/rooms/%20lobby/messages", {"json": {"message": "x"}}, "invalid_room"),
        ("POST", post, {"json": {"message": "é" * 51}}, "message_too_large"),
        ("POST", post, {"data": b"x" * 20_000}, "message_too_large"),
        ("POST", post, {"data": "not json"}, "invalid_payload"),
        ("POST", post, {"data": "[1, 2]"}, "invalid_payload"),
        ("POST", post, {}, "invalid_payload"),
        ("POST", post, {"json": {"message": 5}}, "invalid_payload"),
        ("POST", post, {"json": {"message": "   "}}, "invalid_payload"),
        ("POST", post, {"json": {"message": "x", "sender": "sh\nop"}}, "invalid_user"),
        ("POST", post, {"json": {"message": "x", "sender": ""}}, "invalid_user"),
        ("POST", post, {"json": {"message": "x", "key": ""}}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?limit=-1", {}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?limit=1000000000", {}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?limit=0", {}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?before=0", {}, "invalid_payload"),
        ("GET", "/api/rooms/lobby/history?before=ten", {}, "invalid_payload"),
        ("GET", "/api/rooms/bad%00room/history", {}, "invalid_room"),
        ("GET", "/api/rooms?limit=101", {}, "invalid_payload"),
        ("GET", "/api/rooms?cursor=not-a-cursor", {}, "invalid_payload"),
        ("POST", "/api/users/al%0Aice/rooms/lobby", {}, "invalid_user"),
        ("POST", "/api/users/al%1Bice/disconnect", {}, "invalid_user"),
        ("POST", "/api/users/%20alice/disconnect", {}, "invalid_user"),
        ("POST", f"/api/users/{'u' * 65}/disconnect", {}, "invalid_user"),
        ("POST", "/api/users/alice/rooms/bad*room", {}, "invalid_room"),
        ("DELETE", "/api/users/alice/rooms/lobby", {"json": {"ban_seconds": -1}}, "invalid_payload"),
        ("DELETE", "/api/users/alice/rooms/lobby", {"json": {"ban_seconds": "60"}}, "invalid_payload"),
        ("DELETE", "/api/users/alice/rooms/lobby", {"json": {"ban_seconds": 10**9}}, "invalid_payload"),
        ("DELETE", "/api/users/alice/rooms/lobby", {"data": "{"}, "invalid_payload"),
        ("POST", "/api/users/alice/disconnect", {"json": {"reason": "bye\n"}}, "invalid_payload"),
        ("POST", "/api/users/alice/disconnect", {"json": {"reason": 42}}, "invalid_payload"),
    ]
    for method, path, kw, code in cases:
        response = api(method, a.url, path, **kw)
        assert response.status_code == 400, (path, kw, response.status_code, response.text)
        error = response.json()
        assert error["ok"] is False and error["error"]["code"] == code, (path, kw, error)
        assert error["error"]["message"]
    assert api("GET", a.url, "/api/nowhere").json()["error"]["code"] == "not_found"
    assert api("PUT", a.url, post).status_code == 405
    # Nothing happened: no message stored or delivered, alice still in, still connected.
    assert seq_of(a.url, "lobby") == 0
    assert alice.sio.connected and alice.received() == [] and alice.received("room_left") == []
    assert alice.call("send_message", {"room": "lobby", "message": "still a member"})["seq"] == 1
    assert redis_server.client().keys("*:ban:*") == []


def test_users_are_found_by_their_token_or_their_connect_time_name(redis_server, nodes) -> None:
    secret = "s" * 32
    signed = nodes.start(redis_server.url, API_KEY=KEY, AUTH_SECRET=secret)
    named = nodes.start(redis_server.url, API_KEY=KEY, INSTANCE_ID="named")  # another deployment's way
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    # The token decides: the username it also sends is not her name.
    by_token = ApiClient(signed.url, connect_auth={"token": token, "username": "mallory"})
    by_query = ApiClient(f"{named.url}?username=alice")
    nameless = ApiClient(named.url)  # no name at connect: its payloads' senders are not names
    assert api("POST", signed.url, "/api/users/mallory/rooms/lobby").json()["connections"] == 0
    assert api("POST", signed.url, "/api/users/alice/rooms/lobby").json() == {
        "ok": True,
        "connections": 2,
        "nodes": 2,
    }
    for client in (by_token, by_query):
        assert client.wait_for(1, "room_joined")[0]["room"] == "lobby"
    assert nameless.received("room_joined") == []
