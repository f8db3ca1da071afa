"""Browser fixtures for the consoles' tests: Playwright driving Debian's Chromium.

``make test`` installs Chromium first (``make browsers``, scripts/install-chromium.sh);
a run without it fails here with that instruction rather than skipping, so a missing
browser never passes unnoticed. Screenshots go to ``TRAPDOOR_SCREENSHOTS`` when set
(``make screenshots`` refreshes the ones docs/OPERATIONS.md shows) and to the test's
temporary folder otherwise.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM_ENV = "TRAPDOOR_CHROMIUM"
SCREENSHOTS_ENV = "TRAPDOOR_SCREENSHOTS"


def chromium_path() -> str:
    """Debian's Chromium (or ``TRAPDOOR_CHROMIUM``); fails with how to install it."""
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not found:
        pytest.fail("Chromium is not installed: run `make browsers` (make test does)")
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path())
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page; console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda exc: problems.append(str(exc)))
    try:
        yield opened
    finally:
        context.close()
    # a blocked inline script or style (CSP) shows up here as a console error
    assert not problems, f"browser console errors: {problems}"


@pytest.fixture
def screenshot(tmp_path: Path) -> Callable[[Page, str], Path]:
    """Save a full-page PNG named ``<name>.png`` and return its path."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def take(shown: Page, name: str) -> Path:
        path = folder / f"{name}.png"
        shown.screenshot(path=str(path), full_page=True)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return path

    return take


def log_in(shown: Page, base_url: str, token: str) -> None:
    """Open the console's login page, enter ``token`` and land on its first page."""
    shown.goto(f"{base_url}/console/login")
    shown.fill("#token", token)
    shown.click("form button[type=submit]")
    shown.wait_for_load_state()
    assert "/console/login" not in shown.url, "the login was refused"
