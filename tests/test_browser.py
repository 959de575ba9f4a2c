"""The page at `/` in a real Chromium, against nodes started from the Procfile over one
real Redis: two people on two nodes, a reload, a dropped connection and its recovery."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import pytest
from browser import chromium, screenshot
from helpers import ChatClient, wait_until
from playwright.sync_api import Browser, Page, expect

TIMEOUT_MS = 15_000
RECONNECT_BASE_MS = 500  # chat_app/static/sio.js: the first reconnect waits 250-500 ms
PHONE = {"width": 390, "height": 844}
ROOM = "hist #1 café"


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def open_page(browser: Browser, url: str, viewport: dict | None = None) -> Page:
    """A new context per person: its own storage, as two people on two machines."""
    context = browser.new_context(viewport=viewport or {"width": 1000, "height": 720})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    page.goto(url)
    return page


def open_page_routed(browser: Browser, url: str, route) -> Page:
    """Like open_page, with the page's Socket.IO websocket passing through `route`."""
    context = browser.new_context(viewport={"width": 1000, "height": 720})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.route_web_socket(re.compile(r".*/socket\.io/.*"), route)
    page.goto(url)
    return page


def join(page: Page, name: str, room: str) -> None:
    expect(page.locator("#chat")).to_be_hidden()
    page.fill("#name", name)
    page.fill("#room", room)
    page.click("#join")
    expect(page.locator("#status")).to_have_attribute("data-state", "connected")
    expect(page.locator("#join-form")).to_be_hidden()
    expect(page.locator("#member-list li", has_text=name).first).to_be_visible()


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.press("#message", "Enter")


def texts(page: Page) -> list[str]:
    return page.locator("#messages li.msg:not(.separator) .text").all_text_contents()


def members(page: Page) -> list[str]:
    return page.locator("#member-list li").all_text_contents()


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


def test_dropped_connection_recovers_missed_messages_or_says_it_could_not(redis_server, nodes, browser, capsys) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    bob = ChatClient(b.url, "bob")
    try:
        bob.call("join_room", "ops")
        page = open_page(browser, a.url, viewport=PHONE)
        join(page, "alice", "ops")
        bob.call("send_message", {"room": "ops", "message": "before"})
        expect(page.locator("#messages li.msg .text")).to_have_text(["before"])

        nodes.signal(a, signal.SIGKILL)  # node A dies: the page's websocket drops
        a.process.wait(timeout=10)
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        for text in ("while away 1", "while away 2"):
            assert bob.call("send_message", {"room": "ops", "message": text})["ok"]
        send(page, "typed while offline")
        unsent = page.locator("#messages li.mine").last
        expect(unsent).to_have_attribute("data-state", "failed")
        expect(unsent.locator(".state")).to_have_text("not sent: not connected")
        nodes.start(redis_server.url, PORT=str(a.port))  # the page reconnects to its restarted node
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        missed = ["before", "while away 1", "while away 2"]
        expect(page.locator("#messages li:not(.mine) .text")).to_have_text(missed)
        expect(page.locator("#notice")).to_have_text("Reconnected: 2 missed messages recovered.")
        unsent.locator("button.retry").click()
        expect(unsent).to_have_attribute("data-state", "sent")
        expect(page.locator("#messages li.msg .text")).to_have_text([*missed, "typed while offline"])
        assert bob.wait_for(4)[-1]["message"] == "typed while offline"

        # Now Redis loses everything while the page is away: the room starts a new epoch and
        # what was sent meanwhile cannot be recovered. The page says so instead of pretending.
        nodes.signal(nodes.nodes[-1], signal.SIGKILL)
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        redis_server.kill()
        redis_server.restart()
        nodes.start(redis_server.url, PORT=str(a.port))
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        expect(page.locator("#notice")).to_contain_text("could not be recovered")
        with capsys.disabled():
            print(f"\nscreenshot: {screenshot(page, 'recovery-not-possible-phone')}")
        send(page, "after the loss")
        expect(page.locator("#messages li.mine").last).to_have_attribute("data-state", "sent")
        assert [m["message"] for m in bob.wait_for(5)][-1] == "after the loss"
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        bob.close()


def test_a_send_confirmed_late_is_placed_in_the_servers_order(redis_server, nodes, browser) -> None:
    """The page's frames pass through Playwright to the real node, so the test can hold
    them: the page's send waits while another message goes first; then its ack is let
    through before its own broadcast. The confirmed message must move below the other."""
    node = nodes.start(redis_server.url)
    other = ChatClient(node.url, "dora")
    held: dict[str, list[str]] = {"up": [], "down": []}
    hold = {"up": False, "own_broadcast": False}
    routes: list = []
    try:
        other.call("join_room", "order")

        def route(ws) -> None:
            server = ws.connect_to_server()

            def up(frame) -> None:
                if hold["up"] and '"send_message"' in str(frame):
                    held["up"].append(frame)
                else:
                    server.send(frame)

            def down(frame) -> None:
                if hold["own_broadcast"] and '"broadcast_message"' in str(frame) and "mine" in str(frame):
                    held["down"].append(frame)
                else:
                    ws.send(frame)

            ws.on_message(up)
            server.on_message(down)
            routes.append((ws, server))

        page = open_page_routed(browser, node.url, route)
        join(page, "carl", "order")
        hold.update(up=True, own_broadcast=True)
        send(page, "mine")
        expect(page.locator("#messages li.mine")).to_have_attribute("data-state", "pending")
        # Route callbacks run while Playwright is called: evaluate() keeps it dispatching.
        wait_until(lambda: page.evaluate("true") and held["up"], what="the send held")
        assert other.call("send_message", {"room": "order", "message": "theirs"})["seq"] == 1
        expect(page.locator("#messages li.msg .text")).to_have_text(["mine", "theirs"])  # mine still pending
        ws, server = routes[0]
        server.send(held["up"].pop())
        expect(page.locator("#messages li.mine")).to_have_attribute("data-state", "sent")
        expect(page.locator("#messages li.msg .text")).to_have_text(["theirs", "mine"])
        hold["own_broadcast"] = False
        for frame in held["down"]:
            ws.send(frame)  # the late broadcast of our own message changes nothing
        expect(page.locator("#messages li.msg")).to_have_count(2)
        assert page.locator("#messages li.msg").evaluate_all("i => i.map(x => Number(x.dataset.seq))") == [1, 2]
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
