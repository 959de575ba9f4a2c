"""The page at `/` in a real Chromium, against nodes started from the Procfile over one
real Redis: a direct conversation across nodes, with typing and recovery."""

from __future__ import annotations

import signal
import time

from browser import (
    PHONE,
    join,
    open_page,
    screenshot,
    send,
)
from helpers import wait_until
from playwright.sync_api import expect


def direct_commands(node) -> int:
    """Join commands of alice+bob this node has acted on (two per direct message)."""
    return sum("event=command_done" in line and "room=@alice+bob" in line for line in node.log().splitlines())


def test_a_direct_conversation_across_nodes_with_typing_and_recovery(redis_server, nodes, browser, capsys) -> None:
    a = nodes.start(redis_server.url)
    b = nodes.start(redis_server.url)
    alice = open_page(browser, a.url)
    bob = open_page(browser, b.url, viewport=PHONE)
    join(alice, "alice", "lobby")
    join(bob, "bob", "lobby")

    alice.fill("#direct-with", "bob")
    alice.press("#direct-with", "Enter")
    expect(alice.locator("#room-title")).to_have_text("Conversation with bob")
    expect(alice.locator("#direct-list button[data-with=bob]")).to_have_attribute("aria-current", "true")
    expect(alice.locator("#member-list li")).to_have_text(["alice"])
    send(alice, "hi bob")
    expect(alice.locator("#messages li.mine").last).to_have_attribute("data-state", "sent")

    # Bob never opened it: it shows up in his conversations list, counted, without moving him.
    conversation = bob.locator("#direct-list button[data-with=alice]")
    expect(conversation.locator(".unread")).to_have_text("1")
    expect(bob.locator("#notice")).to_have_text("New conversation with alice.")
    expect(bob.locator("#room-title")).to_have_text("lobby")
    expect(bob.locator("#room-list button .name")).to_have_text(["lobby"])  # rooms and conversations apart
    shots = [screenshot(bob, "direct-unread-bob-phone")]
    conversation.click()
    expect(bob.locator("#room-title")).to_have_text("Conversation with alice")
    expect(bob.locator("#messages li.msg .text")).to_have_text(["hi bob"])
    expect(conversation.locator(".unread")).to_have_count(0)

    # Bob types: alice sees it for about 5 s after the last typing event; bob never sees himself.
    bob.locator("#message").press_sequentially("hello al", delay=50)
    expect(alice.locator("#typing")).to_have_text("bob is typing…")
    expect(alice.locator("#typing")).to_be_visible()
    shown = time.monotonic()
    expect(bob.locator("#typing")).to_be_hidden()
    shots += [screenshot(alice, "direct-typing-alice"), screenshot(bob, "direct-conversation-bob-phone")]
    width = bob.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"the page scrolls sideways on a phone: {width}px"
    expect(alice.locator("#typing")).to_be_hidden(timeout=10_000)
    assert time.monotonic() - shown > 3, "the typing line went away long before ~5 s"
    bob.locator("#message").press_sequentially("ice", delay=50)
    bob.press("#message", "Enter")
    expect(alice.locator("#messages li.msg .text")).to_have_text(["hi bob", "hello alice"])
    expect(alice.locator("#typing")).to_be_hidden()  # a sent message ends the line at once

    # Bob's node dies and comes back: his page rejoins the conversation from where it was
    # and shows what alice sent meanwhile, each message once.
    commands = direct_commands(a)
    nodes.signal(b, signal.SIGKILL)
    b.process.wait(timeout=10)
    expect(bob.locator("#status")).to_have_attribute("data-state", "reconnecting")
    for i in range(3):
        send(alice, f"while away {i}")
        expect(alice.locator("#messages li.mine").last).to_have_attribute("data-state", "sent")
    # Each message's join commands have gone out (bob had no connection to join): none can
    # reach bob's new connection before its own rejoin.
    wait_until(lambda: direct_commands(a) >= commands + 6, what="the join commands of the three messages")
    nodes.start(redis_server.url, PORT=str(b.port))
    expect(bob.locator("#status")).to_have_attribute("data-state", "connected")
    everything = ["hi bob", "hello alice", "while away 0", "while away 1", "while away 2"]
    expect(bob.locator("#messages li.msg .text")).to_have_text(everything)
    expect(bob.locator("#notice")).to_have_text("Reconnected: 3 missed messages recovered.")
    seqs = bob.locator("#messages li.msg").evaluate_all("items => items.map(i => Number(i.dataset.seq))")
    assert seqs == [1, 2, 3, 4, 5]
    send(bob, "back")
    expect(alice.locator("#messages li.msg .text")).to_have_text([*everything, "back"])

    # A fresh page of bob's (another device) finds the conversation through list_directs.
    other = open_page(browser, a.url)
    join(other, "bob", "lobby")
    expect(other.locator("#direct-list button[data-with=alice] .name")).to_have_text("alice")
    other.click("#direct-list button[data-with=alice]")
    expect(other.locator("#messages li.msg .text")).to_have_text([*everything, "back"])
    assert alice.errors == [] and bob.errors == [] and other.errors == []  # type: ignore[attr-defined]
    with capsys.disabled():
        print(f"\nscreenshots: {' '.join(map(str, shots))}")
