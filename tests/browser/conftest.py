"""The dashboard in a real headless Chromium: Debian's ``/usr/bin/chromium`` driven by
Playwright (``executable_path``; Playwright never downloads a browser here), against the
real app (CSMS, controller, REST API with its live stream) and simulated chargers over
WebSockets (the e2e rig, with the API on a free port and an audit store under tmp_path).

A missing Chromium fails these tests (``scripts/setup`` installs it): it never skips them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import SITE, Rig
from playwright.async_api import Browser, Page, async_playwright

from gridshare.app import build_app

CHROMIUM = os.environ.get("GRIDSHARE_CHROMIUM", "/usr/bin/chromium")
TOKEN = "dashboard-test-token"


class DashboardRig(Rig):
    """The e2e rig with the REST API and the dashboard on a free port, a token that may
    change things, and an audit store (sessions, alarms) under ``data_dir``."""

    def __init__(self, protocol: str, data_dir: Path, *, site: str = SITE) -> None:
        super().__init__(protocol, site=site)
        # Same site, controller settings and CSMS as the e2e rig; the API on too.
        options = dataclasses.replace(self.app.options, api_port=0, api_tokens=(TOKEN,),
                                      db_url=None, data_dir=data_dir)
        self.app = build_app(self.topology, options)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.api_port}/"

    def offered_sum(self, *chargers: str) -> float:
        return sum(self.offered(c) for c in chargers)


@pytest.fixture
async def dashboard(tmp_path: Path) -> AsyncIterator[DashboardRig]:
    rig = DashboardRig("ocpp1.6", tmp_path / "var")
    await rig.start()
    try:
        yield rig
    finally:
        await rig.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: the dashboard's browser tests need Debian's "
                    f"chromium (scripts/setup installs it: apt-get install chromium)")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


class PageErrors(list[str]):
    """Uncaught exceptions in the page's scripts (a test ends by asserting none)."""


async def open_page(browser: Browser, url: str, *, width: int = 1280, height: int = 900,
                    errors: PageErrors | None = None, **context: Any) -> Page:
    ctx = await browser.new_context(viewport={"width": width, "height": height}, **context)
    page = await ctx.new_page()
    if errors is not None:
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    # Loaded and live: the tree is drawn and the stream is open.
    await page.wait_for_selector("#groups li[data-group]", timeout=10_000)
    await page.wait_for_function("document.getElementById('conn').dataset.state === 'live'",
                                 timeout=10_000)
    return page


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
async def page(browser: Browser, dashboard: DashboardRig,
               page_errors: PageErrors) -> AsyncIterator[Page]:
    opened = await open_page(browser, dashboard.url, errors=page_errors)
    try:
        yield opened
    finally:
        await opened.context.close()
    assert not page_errors, f"script errors in the page: {page_errors}"
