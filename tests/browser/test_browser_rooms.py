"""The page at `/` in a real Chromium, against nodes started from the Procfile over one
real Redis: two people on two nodes, a reload and the room's history, a refused connection,
unread counts in a second room, a shared room link and the page's CSP."""

from __future__ import annotations

import requests
from browser import (
    PHONE,
    TIMEOUT_MS,
    join,
    open_page,
    open_page_routed,
    screenshot,
    send,
)
from helpers import ChatClient, wait_until
from playwright.sync_api import expect

RECONNECT_BASE_MS = 500  # chat_app/static/sio.js: the first reconnect waits 250-500 ms
ROOM = "hist #1 café"


def test_two_pages_on_two_nodes_see_each_other(redis_server, nodes, browser, capsys) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    alice = open_page(browser, a.url)
    bob = open_page(browser, b.url, viewport=PHONE)
    join(alice, "alice", "lobby")
    join(bob, "bob", "lobby")
    expect(bob.locator("#member-list li")).to_have_text(["alice", "bob"])
    expect(alice.locator("#member-list li")).to_have_text(["alice", "bob"])

    markup = "hello from A <b>not bold</b> <img src=x onerror=alert(1)>"
    send(alice, markup)
    mine = alice.locator("#messages li.mine").last
    expect(mine).to_have_attribute("data-state", "sent")  # the ack confirmed it
    expect(mine.locator(".state")).to_have_text("✓ sent")
    expect(bob.locator("#messages li.msg .text")).to_have_text([markup])
    assert bob.locator("#messages b, #messages img").count() == 0  # shown as text, never parsed
    expect(bob.locator("#messages li.msg .sender")).to_have_text(["alice"])

    send(bob, "hi from B, on a phone")
    expect(alice.locator("#messages li.msg .text")).to_have_text([markup, "hi from B, on a phone"])
    expect(bob.locator("#messages li.mine").last).to_have_attribute("data-state", "sent")
    seqs = alice.locator("#messages li.msg").evaluate_all("items => items.map(i => Number(i.dataset.seq))")
    assert seqs == [1, 2]

    wide, phone = screenshot(alice, "two-nodes-alice-node-a"), screenshot(bob, "two-nodes-bob-node-b-phone")
    width = bob.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone: {width}px"
    with capsys.disabled():
        print(f"\nscreenshots: {wide} {phone}")

    for page in (alice, bob):  # nothing from a CDN: the page works without the internet
        assert page.fetched, "no request recorded"  # type: ignore[attr-defined]
        assert all(url.startswith(f"{a.url}/") or url.startswith(f"{b.url}/") for url in page.fetched)  # type: ignore[attr-defined]

    bob.click("#leave")  # presence events (or, from servers without them, a re-read) update alice
    expect(bob.locator("#join-form")).to_be_visible()
    expect(alice.locator("#member-list li")).to_have_text(["alice"])
    expect(alice.locator("#member-count")).to_have_text("1")
    assert alice.errors == [] and bob.errors == []  # type: ignore[attr-defined]


def test_reload_shows_the_rooms_history(redis_server, nodes, browser) -> None:
    """The room name holds characters that need escaping in the URL and the HTTP API."""
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    other = ChatClient(b.url, "dora")
    try:
        other.call("join_room", ROOM)
        page = open_page(browser, a.url)
        join(page, "carl", ROOM)
        for i in range(3):
            send(page, f"line {i}")
        expect(page.locator("#messages li.mine[data-state=sent]")).to_have_count(3)
        other.call("send_message", {"room": ROOM, "message": "from the other node"})
        expected = ["line 0", "line 1", "line 2", "from the other node"]
        expect(page.locator("#messages li.msg .text")).to_have_text(expected)

        page.reload()  # name and room come back from storage and the URL: straight into the room
        expect(page.locator("#room-title")).to_have_text(ROOM)
        assert page.evaluate("location.hash") == "#hist%20%231%20caf%C3%A9"
        expect(page.locator("#messages li.msg .text")).to_have_text(expected)
        expect(page.locator("#messages li.mine .sender")).to_have_text(["carl"] * 3)
        expect(page.locator("#member-list li")).to_have_text(["carl", "dora"])

        fresh = open_page(browser, f"{a.url}/#%zz")  # a broken link: the form, no script error
        expect(fresh.locator("#join-form")).to_be_visible()
        assert fresh.errors == []  # type: ignore[attr-defined]
    finally:
        other.close()


def test_a_refused_connection_is_explained_and_not_retried(nodes, browser) -> None:
    """A server that refuses the Socket.IO connect (as one with AUTH_SECRET does without a
    token) answers `44{message}`; played here by a routed websocket in front of a real node."""
    node = nodes.start(None)
    attempts: list[str] = []

    def refuse(ws) -> None:
        attempts.append("open")
        ws.on_message(lambda frame: ws.send('44{"message":"a valid token is required"}'))
        ws.send('0{"sid":"x","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}')

    page = open_page_routed(browser, node.url, refuse)
    page.fill("#name", "eve")
    page.fill("#room", "lobby")
    page.click("#join")
    expect(page.locator("#join-error")).to_have_text("The server refused the connection: a valid token is required")
    expect(page.locator("#join-form")).to_be_visible()
    expect(page.locator("#chat")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("not connected")
    # A retry would come within the reconnect delay (sio.js: 500 ms at most at first); only
    # waiting past it shows there is none. Playwright serves routes during the wait.
    page.wait_for_timeout(2 * RECONNECT_BASE_MS)
    expect(page.locator("#status")).to_have_text("not connected")
    assert attempts == ["open"]


def test_a_second_room_counts_unread_messages_until_it_is_shown(redis_server, nodes, browser, capsys) -> None:
    node = nodes.start(redis_server.url)
    dora = ChatClient(node.url, "dora")
    try:
        dora.call("join_room", "side")
        page = open_page(browser, node.url)
        join(page, "alice", "main")
        page.fill("#another-room", "side")
        page.press("#another-room", "Enter")
        expect(page.locator("#room-title")).to_have_text("side")
        expect(page.locator("#member-list li")).to_have_text(["alice", "dora"])
        page.click("#room-list button[data-room=main]")
        for text in ("m1", "m2"):
            dora.call("send_message", {"room": "side", "message": text})
        expect(page.locator("#room-list button[data-room=side] .unread")).to_have_text("2")
        shot = screenshot(page, "unread-in-another-room")
        expect(page.locator("#messages li.msg")).to_have_count(0)  # main's own list
        page.click("#room-list button[data-room=side]")
        expect(page.locator("#messages li.msg .text")).to_have_text(["m1", "m2"])
        expect(page.locator("#room-list .unread")).to_have_count(0)
        page.click("#leave")  # leaves this room only; the other stays
        expect(page.locator("#room-title")).to_have_text("main")
        expect(page.locator("#room-list button .name")).to_have_text(["main"])
        wait_until(
            lambda: requests.get(f"{node.url}/api/rooms/side", timeout=5).json()["members"] == ["dora"],
            what="alice left side on the server",
        )
        assert page.errors == []  # type: ignore[attr-defined]
        with capsys.disabled():
            print(f"\nscreenshot: {shot}")
    finally:
        dora.close()


def test_a_shared_room_link_waits_for_a_click_and_the_page_keeps_to_its_csp(redis_server, nodes, browser) -> None:
    """A link to `/#room` (from another site, or a message) must not put a returning visitor
    in that room under their saved name by itself: the form comes filled, Join focused. A
    reload of the tab that showed the room still goes straight back. All of it under the
    page's Content-Security-Policy, which Chromium would report on the console if broken."""
    node = nodes.start(redis_server.url)
    context = browser.new_context(viewport={"width": 1000, "height": 720})
    console: list[str] = []
    first = context.new_page()
    first.set_default_timeout(TIMEOUT_MS)
    first.on("console", lambda message: console.append(message.text))
    websockets: list[str] = []
    first.on("websocket", lambda ws: websockets.append(ws.url))
    response = first.goto(node.url)
    assert response is not None and "frame-ancestors 'none'" in response.headers["content-security-policy"]
    join(first, "erin", "lobby")  # the name is now saved in this browser
    expect(first.locator("#status")).to_have_text("connected")  # a websocket, allowed by connect-src 'self'
    assert websockets and websockets[0].startswith(node.url.replace("http://", "ws://"))

    linked = context.new_page()  # a new tab: the link opened from elsewhere
    linked.set_default_timeout(TIMEOUT_MS)
    linked.on("console", lambda message: console.append(message.text))
    asked: list[str] = []
    linked.on("request", lambda request: asked.append(request.url))
    linked.goto(f"{node.url}/#secret%20room")
    expect(linked.locator("#join-form")).to_be_visible()
    expect(linked.locator("#name")).to_have_value("erin")
    expect(linked.locator("#room")).to_have_value("secret room")
    expect(linked.locator("#join")).to_be_focused()
    expect(linked.locator("#status")).to_have_text("not connected")
    assert not [url for url in asked if "/socket.io/" in url], asked
    assert requests.get(f"{node.url}/api/rooms/secret%20room", timeout=5).json()["members"] == []
    linked.click("#join")  # the visitor's own decision
    expect(linked.locator("#room-title")).to_have_text("secret room")
    expect(linked.locator("#member-list li")).to_have_text(["erin"])
    linked.reload()  # this tab showed the room: a reload goes straight back in
    expect(linked.locator("#room-title")).to_have_text("secret room")
    expect(linked.locator("#status")).to_have_attribute("data-state", "connected")
    assert not [line for line in console if "Content Security Policy" in line], console
    context.close()
