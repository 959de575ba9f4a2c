"""Debian's Chromium driven by Playwright: never a downloaded browser.

CI (.ci/run) installs `chromium` with apt when it is missing; outside CI a machine without
it skips the browser tests with that reason printed, on CI they fail instead.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import require_program, wait_until
from playwright.sync_api import Browser, Page, WebSocketRoute, expect, sync_playwright
from processes import ROOT

from chat_app.service import BEHIND

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # we run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def require_chromium() -> None:
    require_program(CHROMIUM, "apt-get install chromium")


@contextmanager
def chromium() -> Iterator[Browser]:
    """One headless Chromium; Playwright gives each launch a fresh temporary profile."""
    require_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# What the browser tests do with a page (tests/browser/).

TIMEOUT_MS = 15_000
PHONE = {"width": 390, "height": 844}


def open_page(browser: Browser, url: str, viewport: dict | None = None) -> Page:
    """A new context per person: its own storage, as two people on two machines."""
    context = browser.new_context(viewport=viewport or {"width": 1000, "height": 720})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    page.fetched = fetched  # type: ignore[attr-defined]
    page.goto(url)
    return page


def open_page_routed(browser: Browser, url: str, route, before: Callable[[Page], None] | None = None) -> Page:
    """Like open_page, with the page's Socket.IO websocket passing through `route`, and
    `before` run on the page before it loads (a fake clock, an init script)."""
    context = browser.new_context(viewport={"width": 1000, "height": 720})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors  # type: ignore[attr-defined]
    page.route_web_socket(re.compile(r".*/socket\.io/.*"), route)
    if before:
        before(page)
    page.goto(url)
    return page


class Relay:
    """Passes each websocket the page opens through to the real node, records the frames
    the page sends, and lets the test speak as the server (`inject`) or cut the connection."""

    def __init__(self) -> None:
        self.connections: list[tuple[WebSocketRoute, WebSocketRoute]] = []
        self.up: list[list[str]] = []
        self.hold_down = False  # drop what the server sends (an answer lost on the way)
        self.refuse_sends = 0  # answer this many sends `overloaded` here, as a shedding node

    def __call__(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        frames: list[str] = []
        self.up.append(frames)
        self.connections.append((ws, server))

        def up(frame) -> None:
            frames.append(str(frame))
            send = re.fullmatch(r'42(\d+)\["send_message".*', str(frame), re.DOTALL)
            if send and self.refuse_sends:
                self.refuse_sends -= 1
                ws.send(f"43{send.group(1)}" + json.dumps([{"ok": False, "error": OVERLOADED}]))
                return
            server.send(frame)

        def down(frame) -> None:
            if not self.hold_down:
                ws.send(frame)

        ws.on_message(up)
        server.on_message(down)

    def inject(self, event: str, data: dict) -> None:
        self.connections[-1][0].send("42" + json.dumps([event, data]))

    def cut(self) -> None:
        """Both sides of the current connection close, as when a network path dies."""
        ws, server = self.connections[-1]
        server.close()
        ws.close()

    def sent(self, index: int, event: str) -> list:
        """Payloads of `event` the page sent on its index-th connection."""
        out = []
        for frame in self.up[index]:
            match = re.fullmatch(r"42\d*(\[.*\])", frame, re.DOTALL)
            if match and json.loads(match.group(1))[0] == event:
                out.append(json.loads(match.group(1))[1])
        return out


OVERLOADED = {"code": "overloaded", "message": BEHIND}


def pump(page: Page, predicate, what: str):
    """Wait with Playwright dispatching the route callbacks (they run while it is called)."""
    return wait_until(lambda: page.evaluate("true") and predicate(), timeout=TIMEOUT_MS / 1000, what=what)


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
