"""The page with the archive on, in Debian's Chromium: "Load older" pages back through the
archive to the room's first message, the search box finds what was said, an erased message
leaves the page, and yesterday's conversation is listed on connect."""

from __future__ import annotations

import requests
from archive_helpers import AUTH, FAST, KEY, archived
from helpers import ChatClient, wait_until
from playwright.sync_api import Browser, Page, expect


def open_page(browser: Browser, url: str, name: str, room: str) -> Page:
    page = browser.new_context(viewport={"width": 1000, "height": 720}).new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    page.goto(url)
    page.fill("#name", name)
    page.fill("#room", room)
    page.click("#join")
    expect(page.locator("#join-form")).to_be_hidden()
    return page


def seqs(page: Page) -> list[int]:
    return page.locator("#messages li.msg:not(.separator)").evaluate_all(
        "items => items.map(i => Number(i.dataset.seq))"
    )


def test_load_older_search_and_erasure_on_the_page(redis_server, database_url, nodes, browser) -> None:
    a = nodes.start(redis_server.url, DATABASE_URL=database_url, API_KEY=KEY, **FAST)
    bob = ChatClient(a.url, "bob")
    try:
        bob.call("join_room", "long")
        for i in range(1, 181):
            text = "the deploy is done" if i == 7 else f"m{i}"
            assert bob.call("send_message", {"room": "long", "message": text})["ok"]
        wait_until(lambda: len(archived(database_url, "long")) == 180, timeout=20, what="archived")
        page = open_page(browser, a.url, "alice", "long")
        expect(page.locator("#messages li.msg:not(.separator)")).to_have_count(50)  # a join's history
        for shown in (100, 150, 180):
            page.click("#load-older")
            expect(page.locator("#messages li.msg:not(.separator)")).to_have_count(shown)
        assert seqs(page) == list(range(1, 181))  # in order, without holes or doubles
        expect(page.locator("#load-older")).to_be_hidden()  # the first message is reached

        page.fill("#search-q", "deploy")
        page.press("#search-q", "Enter")
        expect(page.locator("#search-results li .text")).to_have_text(["the deploy is done"])

        bob.call("send_message", {"room": "long", "message": "erase me"})
        expect(page.locator("#messages li.msg .text").last).to_have_text("erase me")
        wait_until(lambda: len(archived(database_url, "long")) == 181, timeout=10, what="archived")
        requests.delete(f"{a.url}/api/users/bob/messages", headers=AUTH, timeout=10).raise_for_status()
        expect(page.locator("#messages li.msg:not(.separator)")).to_have_count(0)
        assert page.errors == []  # type: ignore[attr-defined]
    finally:
        bob.close()


def test_yesterdays_conversation_is_listed_on_connect(redis_server, database_url, nodes, browser) -> None:
    a = nodes.start(redis_server.url, DATABASE_URL=database_url, **FAST)
    alice = ChatClient(a.url, "alice")
    room = alice.call("open_direct", {"with": "bob"})["room"]
    alice.call("send_message", {"room": room, "message": "see you tomorrow"})
    wait_until(lambda: archived(database_url, room) == [(1, "see you tomorrow")], timeout=10, what="archived")
    alice.close()
    r = redis_server.client()
    for key in r.scan_iter(match="chat:{user:*}:directs"):
        r.delete(key)  # a day later: Redis's lists have expired
    page = open_page(browser, a.url, "bob", "lobby")
    expect(page.locator("#direct-list li")).to_have_count(1)
    page.locator("#direct-list li button").first.click()
    expect(page.locator("#messages li.msg .text")).to_have_text(["see you tomorrow"])
