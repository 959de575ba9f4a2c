"""chat_app/static/sio.js, the page's own Socket.IO client, in a real Chromium against a
scripted Engine.IO v4 server (Playwright's WebSocket routing), so each protocol rule is
checked on its own: handshake with auth, ping/pong, events, acks, ping timeout, server
disconnect and connect errors, reconnection."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from browser import chromium
from helpers import wait_until
from playwright.sync_api import Page, WebSocketRoute
from processes import ROOT

ORIGIN = "http://chat.test"
WS_URL = "ws://chat.test/socket.io/?EIO=4&transport=websocket"
SLOW_PINGS = {"pingInterval": 25_000, "pingTimeout": 20_000}  # no ping timeout within a test
FAST_PINGS = {"pingInterval": 300, "pingTimeout": 200}


class FakeServer:
    """Plays the server side of each connection the page opens; records every frame."""

    def __init__(self, pings: dict[str, int]) -> None:
        self.pings = pings
        self.connections: list[WebSocketRoute] = []
        self.frames: list[list[str]] = []
        self.refuse_with: str | None = None

    def handle(self, ws: WebSocketRoute) -> None:
        index = len(self.connections)
        self.connections.append(ws)
        self.frames.append([])
        ws.on_message(lambda message: self.on_frame(ws, index, str(message)))
        ws.send("0" + json.dumps({"sid": f"eio{index}", "upgrades": [], "maxPayload": 1_000_000, **self.pings}))

    def on_frame(self, ws: WebSocketRoute, index: int, frame: str) -> None:
        self.frames[index].append(frame)
        if frame.startswith("40"):
            ws.send(self.refuse_with or '40{"sid":"sio' + str(index) + '"}')

    def received(self, index: int) -> list[str]:
        return list(self.frames[index]) if index < len(self.frames) else []


@pytest.fixture
def page(request: pytest.FixtureRequest) -> Iterator[tuple[Page, FakeServer]]:
    script = (ROOT / "chat_app" / "static" / "sio.js").read_text()
    server = FakeServer(getattr(request, "param", SLOW_PINGS))
    with chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(10_000)
        page.route(f"{ORIGIN}/", lambda route: route.fulfill(content_type="text/html", body="<!doctype html><p>t</p>"))
        page.route_web_socket(WS_URL, server.handle)
        page.goto(f"{ORIGIN}/")
        page.add_script_tag(content=script)
        page.evaluate(
            """url => {
                window.log = [];
                const c = new SioClient(url, {auth: {username: "zoe"}, reconnectBase: 50, reconnectCap: 100});
                for (const name of ["connect", "disconnect", "connect_error", "broadcast_message"]) {
                    c.on(name, (...args) => window.log.push([name, ...args]));
                }
                window.client = c;
                c.open();
            }""",
            WS_URL,
        )
        yield page, server


def log(page: Page) -> list[list]:
    return page.evaluate("window.log")


def pump(page: Page, predicate, what: str):
    """Wait with the browser's event loop and Playwright's dispatcher both running."""

    def check():
        page.wait_for_timeout(20)
        return predicate()

    return wait_until(check, timeout=10, what=what)


def test_handshake_events_acks_and_pings(page) -> None:
    page, server = page
    pump(page, lambda: log(page), "connect")
    assert server.received(0)[0] == '40{"username":"zoe"}'
    assert log(page) == [["connect", {"sid": "sio0"}]]

    ws = server.connections[0]
    ws.send("2")
    pump(page, lambda: "3" in server.received(0), "pong")

    ws.send('42["broadcast_message",{"message":"<b>hi</b>","seq":1}]')
    pump(page, lambda: len(log(page)) == 2, "event")
    assert log(page)[1] == ["broadcast_message", {"message": "<b>hi</b>", "seq": 1}]

    page.evaluate("() => { window.answer = client.call('send_message', {room: 'r', message: 'x'}); }")
    frame = pump(page, lambda: [f for f in server.received(0) if f.startswith("420")], "ack request")[0]
    assert json.loads(frame[3:]) == ["send_message", {"room": "r", "message": "x"}]
    ws.send('430[{"ok":true,"seq":7}]')
    assert page.evaluate("window.answer") == {"ok": True, "seq": 7}
    assert page.evaluate("client.emit('leave_room', {room: 'r'})") is True
    pump(page, lambda: '42["leave_room",{"room":"r"}]' in server.received(0), "plain emit")


@pytest.mark.parametrize("page", [FAST_PINGS], indirect=True)
def test_silence_past_the_ping_timeout_reconnects_and_pending_acks_fail(page) -> None:
    page, server = page
    pump(page, lambda: log(page), "connect")
    page.evaluate("() => { window.pending = client.call('join_room', 'r'); }")
    # No ping for pingInterval + pingTimeout (500 ms): the client gives up on the connection.
    pump(page, lambda: len(server.connections) == 2, "a second connection")
    assert page.evaluate("window.pending")["error"]["code"] == "disconnected"
    pump(page, lambda: [e[0] for e in log(page)] == ["connect", "disconnect", "connect"], "reconnected")
    assert server.received(1)[0] == '40{"username":"zoe"}'


def test_server_disconnect_and_connect_error(page) -> None:
    page, server = page
    pump(page, lambda: log(page), "connect")
    server.refuse_with = '44{"message":"unauthorized"}'
    server.connections[0].send("41")  # the server ends the Socket.IO session
    pump(page, lambda: any(e[0] == "connect_error" for e in log(page)), "connect_error")
    assert ["connect_error", {"message": "unauthorized"}] in log(page)
    assert page.evaluate("client.connected") is False
    server.refuse_with = None
    pump(page, lambda: page.evaluate("client.connected"), "connected after the refusals stop")
    page.evaluate("client.close()")
    count = len(server.connections)
    page.wait_for_timeout(300)  # a closed client must not come back (several backoffs long)
    assert len(server.connections) == count
