"""The live dashboard in headless Chromium against the real app and simulated chargers:
it shows the site, follows load changes without reloading, changes a group's limit (which
reaches the chargers) and shows the API's errors, fits a phone and survives a restart of
the API server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from e2e.conftest import CAR_LAG_S
from playwright.async_api import Browser, Page, expect

from gridshare.api.app import create_api
from gridshare.api.server import ApiServer

from .conftest import TOKEN, DashboardRig, PageErrors, open_page

GROUPS = {"service": None, "left": "service", "right": "service"}
LEFT = ("e-1", "e-2", "e-3")


async def no_horizontal_scroll(page: Page) -> None:
    widths = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " window.innerWidth]")
    assert widths[0] <= widths[1] <= widths[2], f"scrollWidth, clientWidth, innerWidth: {widths}"


async def save_token(page: Page, token: str) -> None:
    await page.fill("#token", token)
    await page.click("#token-save")
    await expect(page.locator("#token-state")).to_have_text("a token is saved in this browser")


async def wait_for(cond: object, timeout_s: float, what: str) -> float:
    """Poll ``cond`` until true; return how long it took."""
    started = time.monotonic()
    while not cond():  # type: ignore[operator]
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_shows_the_site_tree_with_its_chargers(page: Page, dashboard: DashboardRig) -> None:
    await expect(page.locator("#site-name")).to_have_text("e2e")
    assert "e2e" in await page.title()
    # The tree: service above left and right, each with its three chargers.
    for gid, parent in GROUPS.items():
        node = page.locator(f"li[data-group='{gid}']")
        await expect(node).to_have_count(1)
        if parent is not None:
            await expect(page.locator(f"li[data-group='{parent}'] li[data-group='{gid}']")) \
                .to_have_count(1)
        bars = node.locator(":scope > .bars > .bar")
        await expect(bars).to_have_count(3)  # L1, L2, L3 against the limit
    await expect(page.locator("li[data-group='left'] > .group-head .group-limit")) \
        .to_have_text("limit 25.0 A")
    await expect(page.locator("li[data-group='service'] > .group-head .group-limit")) \
        .to_have_text("limit 40.0 A")
    await expect(page.locator("li[data-group='left'] > .bars > .bar[data-phase='L1'] .val")) \
        .to_have_text("0.0 / 25.0 A")
    chips = page.locator("li[data-group='left'] > .group-chargers > li")
    await expect(chips).to_have_count(3)
    assert await chips.evaluate_all("els => els.map(e => e.dataset.charger)") == list(LEFT)
    # Every charger listed, online, with its protocol; none charging yet.
    rows = page.locator("#chargers tbody tr[data-charger]")
    await expect(rows).to_have_count(6)
    for cid in dashboard.topology.chargers:
        row = page.locator(f"#chargers tr[data-charger='{cid}']")
        await expect(row.locator("td[data-label='Connection']")).to_have_text("online")
        await expect(row.locator("td[data-label='Protocol']")).to_have_text("ocpp1.6")
        await expect(row.locator("td[data-label='State']")).to_have_text("Available")
    await expect(page.locator("#chargers-count")).to_have_text("(6 of 6 online)")
    # The filter finds chargers by id, group, state, protocol or connection.
    await page.fill("#charger-filter", "right")
    await expect(rows).to_have_count(3)
    assert await rows.evaluate_all("els => els.map(e => e.dataset.charger)") == [
        "e-4", "e-5", "e-6"]
    await page.fill("#charger-filter", "offline")
    await expect(page.locator("#chargers tbody td")).to_have_text(["no charger matches"])
    await page.fill("#charger-filter", "")
    await expect(rows).to_have_count(6)
    # Alarms are announced; grid services say "none" until the server reports them.
    assert await page.get_attribute("#alarms", "aria-live") == "polite"
    await expect(page.locator("#alarms li")).to_have_text(["none"])
    await expect(page.locator("#dr")).to_have_text("none")
    await expect(page.locator("#fr")).to_have_text("none")
    await expect(page.locator("#sessions tbody td")).to_have_text(["none"])
    # Every form field has a label.
    unlabelled = await page.evaluate(
        "[...document.querySelectorAll('input, select')].filter(e => !e.labels.length)"
        ".map(e => e.id)")
    assert unlabelled == []
    await no_horizontal_scroll(page)


async def test_a_car_plugged_in_shows_up_live(page: Page, dashboard: DashboardRig) -> None:
    await page.evaluate("window.__notReloaded = true")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    row = page.locator("#chargers tr[data-charger='e-1']")
    dashboard.plug("e-1")
    started = time.monotonic()
    await expect(row.locator("td[data-label='State']")).to_have_text("Charging", timeout=5_000)
    # Its setpoint in force and its meter reading come next (readings every 2 s).
    await expect(row.locator("td.setpoint")).to_have_text("25.0 A", timeout=5_000)
    await expect(row.locator("td.measured")).not_to_have_text("–", timeout=5_000)
    bar = page.locator("li[data-group='left'] > .bars > .bar[data-phase='L1'] .val")
    await expect(bar).not_to_have_text("0.0 / 25.0 A", timeout=5_000)
    elapsed = time.monotonic() - started
    assert elapsed < 6.0
    await expect(page.locator("li[data-charger='e-1']")).to_have_text("e-1 · Charging")
    await expect(page.locator("#sessions tbody tr[data-charger='e-1']")).to_have_count(
        1, timeout=5_000)
    assert await page.evaluate("window.__notReloaded") is True
    assert navigations == []


async def test_a_limit_set_in_the_page_reaches_the_chargers(
        page: Page, dashboard: DashboardRig) -> None:
    dashboard.plug("e-1")
    dashboard.plug("e-2")
    await dashboard.settle()
    assert abs(dashboard.offered_sum("e-1", "e-2") - 25.0) < 0.2  # left's 25 A, shared
    # At its limit, left's L1 is amber (from 90 %); every level its bar shows is recorded.
    l1 = "li[data-group='left'] > .bars > .bar[data-phase='L1']"
    await expect(page.locator(l1)).to_have_attribute("data-level", "warn", timeout=5_000)
    await expect(page.locator(l1 + " .val")).to_have_text("25.0 / 25.0 A")
    await page.evaluate("""sel => {
      window.__levels = [];
      const note = () => {
        const bar = document.querySelector(sel);
        const level = bar && bar.dataset.level;
        if (level && window.__levels.at(-1) !== level) window.__levels.push(level);
      };
      new MutationObserver(note).observe(document.getElementById('groups'),
        {subtree: true, attributes: true, childList: true, characterData: true});
    }""", l1)
    await save_token(page, TOKEN)
    await page.select_option("#limit-group", "left")
    await page.fill("#limit-current", "14")
    await page.click("#limit-apply")
    await expect(page.locator("#limit-result")).to_have_text(
        "override applied on left: limit now 14.0 A")
    await wait_for(lambda: dashboard.offered_sum("e-1", "e-2") <= 14.05, 10.0,
                   "the chargers of left offer at most 14 A together")
    await asyncio.sleep(CAR_LAG_S + 0.3)  # the cars follow; from now on 14 A holds
    dashboard.extra_limits["left"] = 14.0
    head = page.locator("li[data-group='left'] > .group-head")
    await expect(head.locator(".group-limit")).to_have_text("limit 14.0 A")
    await expect(head.locator(".badge.override")).to_have_text("operator override 14.0 A")
    # Red while the load was still above the new limit, then amber: 14 A of 14 A.
    await expect(page.locator(l1 + " .val")).to_have_text("14.0 / 14.0 A", timeout=5_000)
    await expect(page.locator(l1)).to_have_attribute("data-level", "warn")
    levels = await page.evaluate("window.__levels")
    assert levels[0] == "over" and levels[-1] == "warn", levels
    for cid in ("e-1", "e-2"):  # the new setpoints in force, shown
        await expect(page.locator(f"#chargers tr[data-charger='{cid}'] td.setpoint")) \
            .to_have_text("7.0 A", timeout=5_000)
    # Removing it gives the chargers their share of 25 A back.
    dashboard.extra_limits.pop("left")
    await page.click("#limit-remove")
    await expect(page.locator("#limit-result")).to_have_text(
        "override removed on left: limit now 25.0 A")
    await wait_for(lambda: dashboard.offered_sum("e-1", "e-2") >= 24.8, 10.0,
                   "the chargers of left share 25 A again")
    await expect(head.locator(".badge.override")).to_be_hidden()
    assert dashboard.monitor.violations == []


async def test_a_bad_value_shows_the_apis_error(page: Page, dashboard: DashboardRig) -> None:
    controller = dashboard.app.controller
    url = f"http://127.0.0.1:{dashboard.app.api_port}/api/v1/groups/left/limit"
    async with httpx.AsyncClient() as client:
        bad = await client.put(url, json={"max_current": -5},
                               headers={"Authorization": f"Bearer {TOKEN}"})
        no_token = await client.put(url, json={"max_current": 10},
                                    headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    result = page.locator("#limit-result")
    # No token saved: the page says so and sends nothing.
    await page.select_option("#limit-group", "left")
    await page.fill("#limit-current", "10")
    await page.click("#limit-apply")
    await expect(result).to_have_text("enter and save an API token first")
    # A token the server does not know: its 401 detail.
    await save_token(page, "wrong")
    await page.click("#limit-apply")
    await expect(result).to_have_text(no_token.json()["detail"])
    await expect(result).to_have_class("result error")
    # A negative limit: the API's 422 detail, next to the form.
    await save_token(page, TOKEN)
    await page.fill("#limit-current", "-5")
    await page.click("#limit-apply")
    await expect(result).to_have_text(bad.json()["detail"])
    await expect(result).to_have_class("result error")
    # A priority that is not a whole number: the same, next to its own form.
    await page.select_option("#priority-charger", "e-2")
    await page.fill("#priority-value", "2.5")
    await page.click("#priority-apply")
    await expect(page.locator("#priority-result")).to_have_class("result error")
    assert (await page.locator("#priority-result").text_content() or "").strip()
    # Nothing changed.
    assert "operator" not in controller.state.limits_of("left", controller.clock.now())
    assert controller.state.priority_override("e-2") is None
    await expect(page.locator("li[data-group='left'] > .group-head .group-limit")) \
        .to_have_text("limit 25.0 A")
    # And a good priority is taken.
    await page.fill("#priority-value", "7")
    await page.click("#priority-apply")
    await expect(page.locator("#priority-result")).to_have_text("priority of e-2 is now 7")
    assert controller.state.priority_override("e-2") == 7
    await expect(page.locator("#chargers tr[data-charger='e-2'] td[data-label='Priority']")) \
        .to_have_text("7 (set)")


async def test_fits_a_phone(browser: Browser, dashboard: DashboardRig,
                            page_errors: PageErrors) -> None:
    dashboard.plug("e-1")
    dashboard.plug("e-6")
    phone = await open_page(browser, dashboard.url, width=390, height=844, is_mobile=True,
                            has_touch=True, device_scale_factor=3, errors=page_errors)
    try:
        await expect(phone.locator("#chargers tr[data-charger='e-1'] td[data-label='State']")) \
            .to_have_text("Charging", timeout=5_000)
        await no_horizontal_scroll(phone)
        # Tables stack into cards: each cell carries its own label.
        label = await phone.locator("#chargers tr[data-charger='e-1'] td[data-label='State']") \
            .evaluate("td => getComputedStyle(td, '::before').content")
        assert label == '"State"'
        # Everything fits in the 390 px: no element sticks out to the right.
        widest = await phone.evaluate(
            "Math.max(...[...document.querySelectorAll('body *')].map("
            "e => e.getBoundingClientRect().right))")
        assert widest <= 390.5
        await phone.locator("#limit-apply").scroll_into_view_if_needed()
        assert await phone.locator("#limit-apply").is_visible()
    finally:
        await phone.context.close()
    assert not page_errors


async def test_reconnects_after_the_server_restarts(page: Page,
                                                    dashboard: DashboardRig) -> None:
    app = dashboard.app
    port = app.api_port
    assert app.api_server is not None and port is not None
    connects = await page.evaluate("window.gridshare.connects")
    await app.api_server.stop()
    await page.wait_for_function("document.getElementById('conn').dataset.state === 'down'",
                                 timeout=10_000)
    await asyncio.sleep(1.0)  # down for a while: the page keeps trying
    dashboard.plug("e-4")  # a change while the page cannot see it
    app.api_server = ApiServer(create_api(app, (TOKEN,)))
    await app.api_server.start("127.0.0.1", port)
    await page.wait_for_function("document.getElementById('conn').dataset.state === 'live'",
                                 timeout=15_000)
    assert await page.evaluate("window.gridshare.connects") > connects
    await expect(page.locator("#chargers tr[data-charger='e-4'] td[data-label='State']")) \
        .to_have_text("Charging", timeout=5_000)
    # And it is live again: the next change shows without a reload.
    dashboard.plug("e-5")
    await expect(page.locator("#chargers tr[data-charger='e-5'] td[data-label='State']")) \
        .to_have_text("Charging", timeout=5_000)
    status = json.loads(await page.evaluate(
        "fetch('/status').then(r => r.text())"))
    assert status["site"] == "e2e"
