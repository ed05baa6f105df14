"""The real daemon, the real panel and the system Chromium, shared by the browser tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.e2e.panel_stack import PanelStack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="session")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PanelStack]:
    stack = PanelStack(tmp_path_factory.mktemp("e2e"))
    try:
        stack.start_daemon()
        stack.start_panel()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    # The system Chromium from the Debian package: the tests never download a browser.
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def new_context(browser: Browser, panel: PanelStack) -> BrowserContext:
    context = browser.new_context(base_url=panel.url, viewport=VIEWPORT, accept_downloads=True)
    context.set_default_timeout(15_000)
    return context


def log_in(page: Page, username: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()


@pytest.fixture(scope="session")
def admin_page(browser: Browser, panel: PanelStack) -> Iterator[Page]:
    """One logged-in administrator, kept for the whole session like a person's browser tab."""
    context = new_context(browser, panel)
    page = context.new_page()
    log_in(page, "admin", panel.admin_password)
    page.wait_for_url(f"{panel.url}/")
    yield page
    context.close()


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
