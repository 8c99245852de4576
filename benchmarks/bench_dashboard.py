"""Dashboard latency: a change in the controller → shown in the page, in headless Chromium.

N simulated chargers (default 1,000; OCPP 1.6J and 2.0.1 alternating, a car on each) run in
a subprocess (bench_control.py's worker) against the real CSMS, controller and REST API,
wired as ``gridshare serve`` does. Debian's Chromium (``/usr/bin/chromium``, driven by
Playwright) loads the dashboard, which follows ``GET /api/v1/stream``. Each repetition
publishes a LimitChanged on the site's top group (alternately cutting and restoring it, so
every charger's setpoint changes too) and measures, with the page's own clock (the same
system clock as ours):

- *limit shown*: from the event to the page showing the group's new limit (the controller
  takes the change → the stream sends the site → the page draws it);
- *setpoint shown*: to the page showing the new setpoint in force of the last charger of the
  site, found with the page's filter (the controller decides, the chargers answer, the
  stream sends all N chargers → the page takes them and draws what is shown);
- *in page*: of each, the part from the page receiving the stream event to drawing it.

    python benchmarks/bench_dashboard.py [--chargers 1000] [--reps 20] [--json]
    python benchmarks/bench_dashboard.py --screenshot docs/img/dashboard.png

``--screenshot`` instead runs the demo site (``gridshare demo``'s: 20 chargers under a
100 A service that follows a building meter, cars coming and going) with the API and saves
the dashboard as a desktop and a phone screenshot (PATH and PATH with ``-phone``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_control import (  # the worker lives beside this script
    charger_ids,
    raise_fd_limit,
    site_yaml,
    start_sim_subprocess,
    stop_sim_subprocess,
    wait_for,
)

CHROMIUM = os.environ.get("GRIDSHARE_CHROMIUM", "/usr/bin/chromium")
TOKEN = "bench-dashboard"

WAIT_JS = """([selector, text, kind]) => {
  // Resolve the moment `selector` shows `text` (checked on every DOM change) with the time
  // then and the time the page received the last stream event of `kind` before it.
  const done = () => [Date.now(), window.gridshare.received[kind] || 0];
  window.__shown = new Promise((resolve) => {
    const check = () => {
      const el = document.querySelector(selector);
      if (!el || el.textContent !== text) return;
      observer.disconnect();
      resolve(done());
    };
    const observer = new MutationObserver(check);
    observer.observe(document.body, { childList: true, subtree: true, characterData: true });
    check();
  });
}"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "mean": None}
    return {"p50": round(statistics.median(values), 1), "p99": round(percentile(values, 0.99), 1),
            "max": round(max(values), 1), "mean": round(statistics.fmean(values), 1)}


def limit_text(amps: float) -> str:
    """How the page writes a group's limit (app.js fmt: no decimals from 100 up)."""
    return f"limit {amps:.0f} A" if abs(amps) >= 100 else f"limit {amps:.1f} A"


def setpoint_text(amps: float) -> str:
    return f"{amps:.0f} A" if abs(amps) >= 100 else f"{amps:.1f} A"


async def launch_browser(p: Any) -> Any:
    if not os.access(CHROMIUM, os.X_OK):
        raise SystemExit(f"{CHROMIUM} is missing (apt-get install chromium)")
    return await p.chromium.launch(executable_path=CHROMIUM, headless=True)


async def run(count: int, reps: int) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    from gridshare.app import ServeOptions, build_app
    from gridshare.config import parse_site
    from gridshare.controller.loop import ControllerSettings
    from gridshare.events import LimitChanged

    raise_fd_limit(2 * count + 1024)
    topology = parse_site(site_yaml(count), "bench")
    app = build_app(topology, ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=0, api_tokens=(TOKEN,), db_url="none",
        controller=ControllerSettings(lease_s=3600.0, settle_s=0.0)))
    await app.start()
    proc = None
    try:
        proc, info = await start_sim_subprocess(f"ws://127.0.0.1:{app.ocpp_port}", count)
        log(f"{info['connected']} chargers connected in {info['connect_s']:.1f} s")
        controller = app.controller
        ok = await wait_for(lambda: len(controller.in_force()) == count and controller.idle, 180)
        if not ok:
            raise RuntimeError(f"only {len(controller.in_force())} of {count} setpoints in "
                               f"force after 180 s")
        last = charger_ids(count)[-1]
        limit_sel = "li[data-group='site'] > .group-head .group-limit"
        setpoint_sel = f"#chargers tr[data-charger='{last}'] td.setpoint"
        timings: dict[str, list[float]] = {
            name: [] for name in ("limit_shown", "limit_in_page", "setpoint_shown",
                                  "setpoint_in_page")}
        failures = 0
        async with async_playwright() as p:
            browser = await launch_browser(p)
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            started = time.perf_counter()
            await page.goto(f"http://127.0.0.1:{app.api_port}/")
            await page.wait_for_selector("#chargers tbody tr[data-charger]", timeout=60_000)
            # The table shows the first 100 chargers; the operator finds the last one.
            await page.fill("#charger-filter", last)
            await page.wait_for_selector(setpoint_sel, timeout=60_000)
            await page.wait_for_function(
                "document.getElementById('conn').dataset.state === 'live'", timeout=60_000)
            load_s = time.perf_counter() - started
            log(f"page live in {load_s:.1f} s")
            low, high = 12.0 * count, 14.0 * count
            for rep in range(2 * reps):
                limit = low if rep % 2 == 0 else high
                await wait_for(lambda: controller.idle, 30)
                await asyncio.sleep(1.5)  # between changes, as an operator would be
                await page.evaluate(WAIT_JS, [limit_sel, limit_text(limit), "site"])
                await page.evaluate("() => { window.__limitShown = window.__shown; }")
                await page.evaluate(WAIT_JS, [setpoint_sel, setpoint_text(limit / count),
                                              "chargers"])
                t0_ms = time.time() * 1000
                app.bus.publish(LimitChanged("site", datetime.now(UTC), "operator",
                                             max_current=limit, reason="bench"))
                try:
                    shown_limit = await page.evaluate(
                        "Promise.race([window.__limitShown, "
                        "new Promise(r => setTimeout(() => r(null), 30000))])")
                    shown_setpoint = await page.evaluate(
                        "Promise.race([window.__shown, "
                        "new Promise(r => setTimeout(() => r(null), 30000))])")
                except Exception:  # the page went away: count it, go on
                    shown_limit = shown_setpoint = None
                log(f"change {rep + 1}/{2 * reps}: limit {shown_limit}, setpoint "
                    f"{shown_setpoint} (t0 {t0_ms:.0f})")
                if shown_limit is None or shown_setpoint is None:
                    failures += 1
                    continue
                for name, (shown, received) in (("limit", shown_limit),
                                                ("setpoint", shown_setpoint)):
                    timings[f"{name}_shown"].append(shown - t0_ms)
                    timings[f"{name}_in_page"].append(shown - received)
            stats = await page.evaluate("({...window.gridshare})")
            await browser.close()
        return {
            "chargers": count,
            "connected": info["connected"],
            "repetitions": len(timings["limit_shown"]),
            "failures": failures,
            "page_load_s": round(load_s, 2),
            **{f"{name}_ms": summary(values) for name, values in timings.items()},
            "page": {key: stats.get(key) for key in ("renders", "events", "parseMs",
                                                      "renderMs")},
            "page_errors": errors,
        }
    finally:
        if proc is not None:
            await stop_sim_subprocess(proc)
        await app.stop()


async def screenshot(path: Path, settle_s: float, seed: int) -> list[Path]:
    """The demo site with its API: cars arrive and leave; screenshots of the dashboard."""
    import tempfile

    from playwright.async_api import async_playwright

    from gridshare.app import ServeOptions, build_app
    from gridshare.cli.serve_cmds import BUILDING_LOAD_A, _group_draw, demo_site_text
    from gridshare.config import parse_site_config
    from gridshare.controller.loop import ControllerSettings
    from gridshare.sim import SimCharger
    from gridshare.sim.site import ConstantLoad, Scenario, SimSite
    from gridshare.sim.site_meter import SimSiteMeter

    config = parse_site_config(demo_site_text(20), "demo-site.yaml")
    topology = config.topology
    with tempfile.TemporaryDirectory() as data_dir:
        app = build_app(topology, ServeOptions(
            host="127.0.0.1", ocpp_port=0, api_port=0, api_tokens=(TOKEN,),
            data_dir=Path(data_dir), controller=ControllerSettings(lease_s=120.0),
            meters=config.meters))
        await app.start()
        url = f"ws://127.0.0.1:{app.ocpp_port}"
        sims = [SimCharger(cid, url, protocol=("ocpp1.6", "ocpp2.0.1")[i % 2],
                           phases=ch.phases,
                           phase=ch.phase.name if ch.phase is not None else "L1",
                           max_current_a=ch.max_current, min_current_a=ch.min_current,
                           meter_interval_s=2.0, seed=seed)
                for i, (cid, ch) in enumerate(topology.chargers.items())]
        scenario = Scenario(seed=seed, arrivals_per_hour=60.0, dwell_mean_h=0.5,
                            min_dwell_s=120.0, initial_occupancy=0.75,
                            max_currents_a=(16.0, 32.0), lag_range_s=(1.0, 3.0))
        sim = SimSite(sims, tick_s=0.5, scenario=scenario)
        sim.add_load("building", ConstantLoad(BUILDING_LOAD_A))
        (spec,) = [m for m in config.meters if m.id == topology.groups["service"].meter]
        assert spec.charger is not None
        meter = SimSiteMeter(spec.charger, url, lambda: _group_draw(app, sim, "service"),
                             interval_s=2.0)
        await meter.start()
        out = []
        try:
            await sim.start(wait_connected_s=15.0)
            await asyncio.sleep(settle_s)
            async with async_playwright() as p:
                browser = await launch_browser(p)
                for suffix, viewport, scale in (("", {"width": 1280, "height": 900}, 1),
                                                ("-phone", {"width": 390, "height": 844}, 2)):
                    page = await browser.new_page(viewport=viewport,
                                                  device_scale_factor=scale)
                    await page.goto(f"http://127.0.0.1:{app.api_port}/")
                    await page.wait_for_function(
                        "document.getElementById('conn').dataset.state === 'live'")
                    await page.wait_for_selector("#chargers tr[data-charger='cp-20']")
                    await asyncio.sleep(2.5)  # a few stream updates, meter readings in
                    target = path.with_name(path.stem + suffix + path.suffix)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(path=str(target), full_page=not suffix)
                    out.append(target)
                    await page.close()
                await browser.close()
        finally:
            await meter.stop()
            await sim.stop()
            await app.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chargers", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=20,
                        help="Cut-and-restore pairs (2 changes each).")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--screenshot", type=Path, metavar="PATH",
                        help="Save screenshots of the demo site's dashboard instead.")
    parser.add_argument("--settle", type=float, default=20.0,
                        help="Seconds the demo runs before the screenshot.")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.screenshot is not None:
        for saved in asyncio.run(screenshot(args.screenshot, args.settle, args.seed)):
            print(f"saved {saved}")
        return
    result = asyncio.run(run(args.chargers, args.reps))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"dashboard latency, {result['chargers']} chargers ({result['connected']} "
          f"connected), {result['repetitions']} changes, {result['failures']} failures; "
          f"page load {result['page_load_s']} s")
    for name in ("limit_shown_ms", "setpoint_shown_ms", "limit_in_page_ms",
                 "setpoint_in_page_ms"):
        s = result[name]
        print(f"  {name:20s} p50 {s['p50']} ms  p99 {s['p99']} ms  max {s['max']} ms")
    page = result["page"]
    print(f"  page: {page['events']} stream events, {page['renders']} renders, slowest "
          f"JSON.parse {page['parseMs']:.1f} ms, slowest render {page['renderMs']:.1f} ms")
    if result["page_errors"]:
        print(f"  page errors: {result['page_errors']}")


if __name__ == "__main__":
    main()
