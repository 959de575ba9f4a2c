"""Debian's Chromium driven by Playwright: never a downloaded browser.

CI (.ci/run) installs `chromium` with apt when it is missing; outside CI a machine without
it skips the browser tests with that reason printed, on CI they fail instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers import require_program
from playwright.sync_api import Browser, Page, sync_playwright
from processes import ROOT

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
