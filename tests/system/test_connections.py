"""A node is not capped at gunicorn's default of 1,000 connections (issue 15): started as the
Procfile starts it, under a soft limit of 1,024 open files, it holds well over 1,000
Socket.IO connections at once and still serves a member."""

from __future__ import annotations

import json
import resource
from concurrent.futures import ThreadPoolExecutor

import pytest
import websocket
from helpers import ChatClient, scrape, wait_until

CONNECTIONS = 1_200


def socketio_connect(port: int) -> websocket.WebSocket:
    """A bare Socket.IO v5 connection over websocket: handshake, then the namespace's CONNECT."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=15)
    assert ws.recv().startswith("0{")
    ws.send("40" + json.dumps({"username": "idle"}))
    assert ws.recv().startswith("40{")
    return ws


@pytest.fixture
def open_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTIONS + 512
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def test_one_node_holds_more_than_a_thousand_connections(redis_server, nodes, open_files) -> None:
    node = nodes.start(redis_server.url, open_files=1024)
    with ThreadPoolExecutor(8) as pool:
        sockets = list(pool.map(lambda _: socketio_connect(node.port), range(CONNECTIONS)))
    try:
        wait_until(lambda: scrape(node.url)["chat_connected_clients"] >= CONNECTIONS, what="all connected")
        alice, bob = ChatClient(node.url, "alice"), ChatClient(node.url, "bob")
        alice.call("join_room", "lobby")
        bob.call("join_room", "lobby")
        assert alice.call("send_message", {"room": "lobby", "message": "still here"})["ok"]
        assert bob.wait_for(1)[0]["message"] == "still here"
        assert scrape(node.url)["chat_connected_clients"] == CONNECTIONS + 2
        alice.close()
        bob.close()
    finally:
        for ws in sockets:
            ws.close()
