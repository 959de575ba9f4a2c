"""The page at `/` in a real Chromium, against nodes started from the Procfile over one
real Redis: a dropped connection and its recovery, a send confirmed late, the server down and
the browser offline, the long-polling fallback, a lost ack retried, an overloaded send
retried then given up, a session the server ended."""

from __future__ import annotations

import re
import signal

import requests
from browser import (
    OVERLOADED,
    PHONE,
    TIMEOUT_MS,
    Relay,
    join,
    open_page,
    open_page_routed,
    screenshot,
    send,
)
from helpers import ChatClient, wait_until
from playwright.sync_api import expect


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
        expect(page.locator("#status")).to_have_text(re.compile(r"^reconnecting \(attempt \d+\)…$"))
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


def test_joining_while_the_server_is_down_and_the_browser_going_offline(redis_server, nodes, browser, capsys) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    bob = ChatClient(b.url, "bob")
    try:
        bob.call("join_room", "later")
        page = open_page(browser, a.url, viewport=PHONE)
        nodes.signal(a, signal.SIGKILL)
        a.process.wait(timeout=10)
        page.fill("#name", "alice")
        page.fill("#room", "later")
        page.click("#join")  # the page opens, but its server is gone: it keeps trying
        expect(page.locator("#status")).to_have_text(re.compile(r"^reconnecting \(attempt \d+\)…$"))
        send(page, "typed before connecting")  # not in the room yet: the text stays in the box
        expect(page.locator("#messages li")).to_have_count(0)
        expect(page.locator("#message")).to_have_value("typed before connecting")
        nodes.start(redis_server.url, PORT=str(a.port))
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        expect(page.locator("#member-list li")).to_have_text(["alice", "bob"])
        page.press("#message", "Enter")
        expect(page.locator("#messages li.mine")).to_have_attribute("data-state", "sent")
        assert bob.wait_for(1)[0]["message"] == "typed before connecting"

        page.context.set_offline(True)  # the browser says it has no network
        expect(page.locator("#status")).to_have_attribute("data-state", "offline")
        expect(page.locator("#status")).to_have_text("offline")
        expect(page.locator("#notice")).to_have_text("You are offline. The page reconnects when the network is back.")
        with capsys.disabled():
            print(f"\nscreenshot: {screenshot(page, 'browser-offline-phone')}")
        bob.call("send_message", {"room": "later", "message": "while you were offline"})
        page.context.set_offline(False)
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        expect(page.locator("#messages li.msg .text")).to_have_text(
            ["typed before connecting", "while you were offline"]
        )
        expect(page.locator("#notice")).to_have_text("Reconnected: 1 missed message recovered.")
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        bob.close()


# Every websocket the page opens fails before it opens, as behind a proxy that refuses the
# upgrade; the count shows the client did try a websocket first.
BLOCK_WEBSOCKETS = """
window.blockedSockets = 0;
window.WebSocket = class {
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    window.blockedSockets += 1;
    setTimeout(() => {
      this.readyState = 3;
      if (this.onerror) this.onerror(new Event("error"));
      if (this.onclose) this.onclose(new CloseEvent("close", { code: 1006 }));
    }, 0);
  }
  send() { throw new Error("not open"); }
  close() {}
};
"""


def test_without_websockets_the_page_falls_back_to_long_polling(redis_server, nodes, browser) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    bob = ChatClient(b.url, "bob")
    try:
        bob.call("join_room", "poll")
        context = browser.new_context(viewport=PHONE)
        context.add_init_script(BLOCK_WEBSOCKETS)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(a.url)
        join(page, "alice", "poll")
        expect(page.locator("#status")).to_have_attribute("data-transport", "polling")
        expect(page.locator("#status")).to_have_text("connected (long-polling)")
        assert page.evaluate("window.blockedSockets") >= 1  # websocket first
        send(page, "over long-polling")
        expect(page.locator("#messages li.mine")).to_have_attribute("data-state", "sent")
        assert bob.wait_for(1)[0]["message"] == "over long-polling"
        bob.call("send_message", {"room": "poll", "message": "back over the other node"})
        expect(page.locator("#messages li.msg .text")).to_have_text(["over long-polling", "back over the other node"])
        expect(page.locator("#member-list li")).to_have_text(["alice", "bob"])
    finally:
        bob.close()


def test_a_send_whose_answer_was_lost_is_retried_with_the_same_key_and_stored_once(
    redis_server, nodes, browser
) -> None:
    node = nodes.start(redis_server.url)
    dora = ChatClient(node.url, "dora")
    relay = Relay()
    try:
        dora.call("join_room", "keys")
        page = open_page_routed(browser, node.url, relay)
        join(page, "carl", "keys")
        relay.hold_down = True  # the send reaches the server; its ack and broadcast never come back
        send(page, "exactly once")
        assert dora.wait_for(1)[0]["message"] == "exactly once"  # stored and delivered
        mine = page.locator("#messages li.mine")
        expect(mine).to_have_attribute("data-state", "pending")
        relay.cut()
        relay.hold_down = False
        expect(mine.locator(".state")).to_have_text("not sent: connection lost before the answer")
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")  # the client reconnected
        expect(page.locator("#notice")).to_have_text("Reconnected: 1 missed message recovered.")
        mine.locator("button.retry").click()
        expect(page.locator("#messages li.msg")).to_have_count(1)
        expect(page.locator("#messages li.msg")).to_have_attribute("data-state", "sent")
        first, again = relay.sent(0, "send_message"), relay.sent(1, "send_message")
        assert len(first) == len(again) == 1 and first[0]["key"] == again[0]["key"]
        room = requests.get(f"{node.url}/api/rooms/keys", timeout=5).json()
        assert room["seq"] == 1  # the retry was not stored a second time
        assert [m["message"] for m in dora.received()] == ["exactly once"]
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        dora.close()


def test_a_send_refused_overloaded_is_sent_again_after_a_pause_then_given_up(redis_server, nodes, browser) -> None:
    node = nodes.start(redis_server.url)
    relay = Relay()
    page = open_page_routed(browser, node.url, relay)
    join(page, "erin", "busy")
    relay.refuse_sends = 2  # the node sheds the first two attempts
    send(page, "after a pause")
    mine = page.locator("#messages li.mine")
    expect(mine).to_have_attribute("data-state", "sent")
    attempts = relay.sent(0, "send_message")
    assert [a["message"] for a in attempts] == ["after a pause"] * 3
    assert len({a["key"] for a in attempts}) == 1  # one key: a resend is never stored twice
    assert requests.get(f"{node.url}/api/rooms/busy", timeout=5).json()["seq"] == 1

    relay.refuse_sends = 5  # shedding outlasts the page's four resends (~3.7 s of pauses)
    send(page, "given up")
    last = page.locator("#messages li.mine").last
    expect(last.locator(".state")).to_have_text("server busy, sending again…")
    expect(last.locator(".state")).to_have_text(f"not sent: {OVERLOADED['message']}", timeout=10_000)
    assert len(relay.sent(0, "send_message")) == 3 + 5
    last.locator("button.retry").click()  # by hand, once the node caught up
    expect(last).to_have_attribute("data-state", "sent")
    assert requests.get(f"{node.url}/api/rooms/busy", timeout=5).json()["seq"] == 2
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_session_the_server_ended_is_reconnected_and_recovered(redis_server, nodes, browser) -> None:
    """A node shutting down (SIGTERM) ends each Socket.IO session itself (`41`), which the
    client does not reconnect from on its own; the page does, after a pause, and recovers.
    The relay plays the node's `41` so the test does not race gunicorn's stop."""
    node = nodes.start(redis_server.url)
    bob = ChatClient(node.url, "bob")
    relay = Relay()
    try:
        bob.call("join_room", "deploy")
        page = open_page_routed(browser, node.url, relay)
        join(page, "alice", "deploy")
        bob.call("send_message", {"room": "deploy", "message": "before"})
        expect(page.locator("#messages li.msg .text")).to_have_text(["before"])
        relay.connections[-1][0].send("41")
        relay.cut()
        expect(page.locator("#status")).to_have_attribute("data-state", "reconnecting")
        assert bob.call("send_message", {"room": "deploy", "message": "during the deploy"})["ok"]
        expect(page.locator("#status")).to_have_attribute("data-state", "connected")
        expect(page.locator("#messages li.msg .text")).to_have_text(["before", "during the deploy"])
        assert relay.sent(1, "join_room")[0]["since"] == 1  # a rejoin from where it was
        assert len(relay.connections) == 2
    finally:
        bob.close()
