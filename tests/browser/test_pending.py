"""The dashboard's "Not declared yet" list in headless Chromium: an unknown simulated
charger shows up with its vendor, model and protocol; with a token, its Adopt form puts it
in a group, and it leaves the list for the chargers table, controlled, without a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api.conftest import TOKEN
from api.test_adopt import AdoptRig
from playwright.async_api import Browser, expect
from waits import eventually

from .conftest import PageErrors, open_page
from .test_dashboard import save_token


@pytest.fixture
async def adopt_rig(tmp_path: Path) -> AsyncIterator[AdoptRig]:
    rig = AdoptRig("ocpp2.0.1", tmp_path)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.stop()


async def test_pending_charger_listed_and_adopted_from_the_page(
        browser: Browser, adopt_rig: AdoptRig, page_errors: PageErrors) -> None:
    rig = adopt_rig
    sim = await rig.connect_unknown("new-1")
    page = await open_page(browser, f"http://127.0.0.1:{rig.app.api_port}/",
                           errors=page_errors)
    try:
        card = page.locator("#pending li[data-charger='new-1']")
        await expect(page.locator("#pending-section")).to_be_visible(timeout=10_000)
        await expect(card.locator(".who")).to_contain_text("new-1", timeout=10_000)
        await expect(card.locator(".who")).to_contain_text("ocpp2.0.1")
        await expect(card.locator(".seen")).to_contain_text("connected from 127.0.0.1:")
        await expect(page.locator("#pending-count")).to_have_text("(1)")
        # without a token there is nothing to press
        await expect(card.locator("form.adopt")).to_be_hidden()
        await expect(page.locator("#pending-token")).to_be_visible()

        await save_token(page, TOKEN)
        await expect(card.locator("form.adopt")).to_be_visible()
        await card.locator("select[name='group']").select_option("left")
        await card.locator("input[name='max_current']").fill("16")
        await card.locator("input[name='failsafe_current']").fill("0")
        await card.locator("button[type='submit']").click()
        await expect(card.locator(".result")).to_have_text("adopted into left")
        await expect(card).to_have_count(0, timeout=10_000)
        await expect(page.locator("#pending li.none")).to_have_text("none")
        await expect(page.locator("#chargers tr[data-charger='new-1']").first) \
            .to_be_visible(timeout=10_000)
        await eventually(lambda: sim.connected)
        assert "new-1" in rig.path.read_text()
        assert rig.app.topology.chargers["new-1"].max_current == 16.0
    finally:
        await page.context.close()
    assert not page_errors, f"script errors in the page: {page_errors}"
