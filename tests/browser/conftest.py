"""The browser tests' Chromium: one per test, Debian's, driven by Playwright (support/browser.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser import chromium
from playwright.sync_api import Browser


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b
