"""The Engine.IO v4 / Socket.IO v5 protocol as its specification says it (issue 23, item 7),
against a real node, written from the specification (socket.io-protocol's v5 and
engine.io-protocol's v4 documents), not from any test suite:

- Engine.IO over HTTP: a request names its `transport`; methods are GET and POST; a session
  whose pong is late is closed and its next request refused 400; a client's close packet ends
  its pending poll with a noop; HTTP requests of an upgraded session are refused 400.
- Socket.IO: a CONNECT to an unknown namespace is refused `{"message": "Invalid namespace"}`;
  a packet that breaks the format closes the connection; a session with no CONNECT is closed.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from helpers import wait_until

from bench.hostile import RawWebSocket, open_session

PATH = "/socket.io/"


@pytest.fixture
def node(nodes):
    # Short heartbeats, as the protocol's own tests use, and a CONNECT_TIMEOUT above three
    # ping cycles: a session that pings without connecting lives that long.
    return nodes.start(PING_INTERVAL="0.3", PING_TIMEOUT="0.2", CONNECT_TIMEOUT="1.5", MAX_PAYLOAD_BYTES="1000000")


@pytest.fixture
def slow_node(nodes):
    """For polls that must stay pending: no ping ends them meanwhile."""
    return nodes.start(PING_INTERVAL="10", PING_TIMEOUT="10", CONNECT_TIMEOUT="10")


def pending(poll: threading.Thread) -> bool:
    """The poll has not been answered within a round trip's worth of time: it waits."""
    poll.join(timeout=0.3)
    return poll.is_alive()


def polling_session(node) -> str:
    response = requests.get(f"{node.url}{PATH}?EIO=4&transport=polling", timeout=5)
    assert response.status_code == 200 and response.text.startswith("0")
    return json.loads(response.text[1:])["sid"]


def test_handshake_announces_the_settings(node) -> None:
    opened = json.loads(requests.get(f"{node.url}{PATH}?EIO=4&transport=polling", timeout=5).text[1:])
    assert set(opened) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
    assert (opened["pingInterval"], opened["pingTimeout"], opened["maxPayload"]) == (300, 200, 1_000_000)
    assert opened["upgrades"] == ["websocket"]


@pytest.mark.parametrize("query", ["EIO=4", "EIO=4&transport=abc", "transport=polling", "EIO=3&transport=polling"])
def test_a_request_without_a_known_transport_or_version_is_400(node, query: str) -> None:
    assert requests.get(f"{node.url}{PATH}?{query}", timeout=5).status_code == 400


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_methods_other_than_get_and_post_are_400(node, method: str) -> None:
    assert requests.request(method, f"{node.url}{PATH}?EIO=4&transport=polling", timeout=5).status_code == 400


def test_a_post_without_a_session_is_400(node) -> None:
    assert requests.post(f"{node.url}{PATH}?EIO=4&transport=polling", data="40", timeout=5).status_code == 400


def test_a_response_to_connection_close_says_close(node) -> None:
    response = requests.get(f"{node.url}{PATH}?EIO=4", headers={"Connection": "close"}, timeout=5)
    assert response.status_code == 400
    assert response.headers.get("Connection", "").lower() == "close"


def test_polling_heartbeat_and_its_timeout(node) -> None:
    sid = polling_session(node)
    url = f"{node.url}{PATH}?EIO=4&transport=polling&sid={sid}"
    assert requests.post(url, data='40{"username":"poller"}', timeout=5).status_code == 200
    assert requests.get(url, timeout=5).text.startswith("40")
    for _ in range(2):  # answered pings keep the session
        assert requests.get(url, timeout=5).text == "2"
        assert requests.post(url, data="3", timeout=5).status_code == 200
    # Now no pong: the next ping is due 0.3 s after the last pong, late 0.2 s after that.
    assert requests.get(url, timeout=5).text == "2"
    pinged = time.monotonic()
    wait_until(lambda: requests.get(url, timeout=5).status_code == 400, timeout=5, what="400 once the pong is late")
    assert time.monotonic() - pinged >= 0.2


def test_a_close_packet_ends_the_pending_poll_with_a_noop(slow_node) -> None:
    node = slow_node
    sid = polling_session(node)
    url = f"{node.url}{PATH}?EIO=4&transport=polling&sid={sid}"
    assert requests.post(url, data='40{"username":"closer"}', timeout=5).status_code == 200
    assert requests.get(url, timeout=5).text.startswith("40")  # the CONNECT answer
    answers: list[requests.Response] = []
    poll = threading.Thread(target=lambda: answers.append(requests.get(url, timeout=10)))
    poll.start()
    assert pending(poll)
    assert requests.post(url, data="1", timeout=5).status_code == 200
    poll.join(timeout=10)
    assert answers and (answers[0].status_code, answers[0].text) == (200, "6")
    assert requests.get(url, timeout=5).status_code == 400


def test_a_poll_that_follows_the_close_packet_gets_a_noop_then_400(slow_node) -> None:
    """The close packet may reach the server before the client's poll does: that poll still
    ends with a NOOP, and only later requests are refused."""
    node = slow_node
    sid = polling_session(node)
    url = f"{node.url}{PATH}?EIO=4&transport=polling&sid={sid}"
    assert requests.post(url, data="1", timeout=5).status_code == 200
    answer = requests.get(url, timeout=5)
    assert (answer.status_code, answer.text) == (200, "6")
    assert requests.get(url, timeout=5).status_code == 400


def test_http_requests_of_an_upgraded_session_are_400(node) -> None:
    for _ in range(5):  # the GET races the upgrade's last packet: every time, 400
        sid = polling_session(node)
        ws = RawWebSocket(node.port, f"EIO=4&transport=websocket&sid={sid}")
        try:
            ws.send("2probe")
            ws.send("5")
            assert requests.get(f"{node.url}{PATH}?EIO=4&transport=polling&sid={sid}", timeout=5).status_code == 400
            assert ws.recv_text() == "3probe"
        finally:
            ws.close()


def test_a_websocket_upgrade_still_completes_for_a_client_that_polls(slow_node) -> None:
    """A poll in flight while the probe is answered gets its noop, as the spec says, and the
    upgrade completes after it (the client pauses polling, then sends UPGRADE)."""
    node = slow_node
    sid = polling_session(node)
    url = f"{node.url}{PATH}?EIO=4&transport=polling&sid={sid}"
    assert requests.post(url, data='40{"username":"upgrader"}', timeout=5).status_code == 200
    assert requests.get(url, timeout=5).text.startswith("40")
    answers: list[str] = []
    poll = threading.Thread(target=lambda: answers.append(requests.get(url, timeout=10).text))
    poll.start()
    assert pending(poll)
    ws = RawWebSocket(node.port, f"EIO=4&transport=websocket&sid={sid}")
    try:
        ws.send("2probe")
        assert ws.recv_text() == "3probe"
        poll.join(timeout=10)
        assert answers and answers[0].endswith("6")
        ws.send("5")
        ws.send('421["join_room","lobby"]')
        assert json.loads(ws.recv_text()[3:])[0]["ok"] is True
    finally:
        ws.close()


def test_an_unknown_namespace_is_refused_invalid_namespace(node) -> None:
    ws, _ = open_session(node.port)
    try:
        ws.send("40/random,")
        assert ws.recv_text() == '44/random,{"message":"Invalid namespace"}'
    finally:
        ws.close()


@pytest.mark.parametrize(
    "packet",
    [
        "4abc",  # no such Socket.IO packet type
        "49",  # no such type either
        "44{}",  # CONNECT_ERROR comes from servers only
        '40"token"',  # a CONNECT payload is an object
        "42{}",  # an EVENT payload is an array
        "42[]",  # ... that starts with the event's name
        "42[1]",
        '42abc["join_room","lobby"]',  # an ack id is digits
        '451-["send_message",{"_placeholder":true,"num":0}]',  # binary: not in this protocol
        '461-1[{"_placeholder":true,"num":0}]',
        '43["no id"]',  # an ACK has an id
        "41{}",  # a DISCONNECT has no payload
    ],
)
def test_a_malformed_packet_closes_the_connection(node, packet: str) -> None:
    ws, _ = open_session(node.port)
    try:
        ws.send('40{"username":"malformed"}')
        assert ws.recv_text().startswith("40")
        ws.send(packet)
        assert ws.closed_within(5), f"{packet!r} left the connection open"
    finally:
        ws.close()
    assert "event=protocol_violation" in node.log()


def test_an_invalid_handshake_closes_the_connection(node) -> None:
    ws, _ = open_session(node.port)
    try:
        ws.send("4abc")
        assert ws.closed_within(5)
    finally:
        ws.close()


def test_no_connect_closes_the_session_and_pings_are_answered_until_then(node) -> None:
    ws, opened = open_session(node.port)
    started = time.monotonic()
    try:
        assert opened["pingInterval"] == 300
        assert ws.closed_within(5)
        assert 1.0 <= time.monotonic() - started < 4
    finally:
        ws.close()


def test_a_well_formed_session_is_untouched(node) -> None:
    """Events with and without ack ids, a namespace DISCONNECT and its pings: the connection
    lives past CONNECT_TIMEOUT."""
    ws, _ = open_session(node.port)
    try:
        ws.send('40{"username":"fine"}')
        assert ws.recv_text().startswith("40")
        ws.send('42["typing",{"room":"lobby"}]')
        ws.send('427["join_room","lobby"]')
        assert ws.recv_text().startswith("437[")
        assert not ws.closed_within(2)
        ws.send("41")
        assert not ws.closed_within(0.5)
    finally:
        ws.close()
