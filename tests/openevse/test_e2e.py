"""End to end: one OCPP charger (the OCPP simulator) and two OpenEVSE boxes (simulated,
real HTTP and a real Mosquitto) on one 32 A line, run by the real app: the setpoints go
out through both drivers, the three cars share the line, and it never carries more than
32 A, offered or drawn."""

from __future__ import annotations

import asyncio
import contextlib

from brokers import Mosquitto
from waits import eventually

from gridshare.app import ServeOptions, build_app
from gridshare.config import parse_site_config
from gridshare.controller.loop import ControllerSettings
from gridshare.sim import EV, SimCharger
from gridshare.sim.openevse import SimOpenEvse
from gridshare.sim.site import SimSite

from .conftest import BoxFactory

LIMIT_A = 32.0
TOLERANCE_A = 0.5
CLIENT = 18259


def site(broker: Mosquitto, urls: dict[str, str]) -> str:
    boxes = "\n".join(
        f"  - {{id: {cid}, max_current: 32, phases: 1, phase: L1, failsafe_current: 0, "
        f"driver: openevse, openevse: {{url: \"{url}\", mqtt_base: {cid}-base, "
        f"heartbeat_s: 1}}}}" for cid, url in urls.items())
    return f"""
site: mixed
voltage: 230
mqtt: {{url: "{broker.url}"}}
groups:
  - {{id: line, max_current: {LIMIT_A:g}, chargers: [cp-1, oe-1, oe-2]}}
chargers:
  - {{id: cp-1, max_current: 32, phases: 1, phase: L1, failsafe_current: 0}}
{boxes}
"""


def box_offered(box: SimOpenEvse) -> float:
    return float(box.pilot()) if box.plugged and box.state_active() else 0.0


async def test_ocpp_and_openevse_share_one_line(broker: Mosquitto,
                                                boxes: BoxFactory) -> None:
    oe = {cid: await boxes(f"{cid}-base", shaper_maxinterval_s=30.0) for cid in ("oe-1", "oe-2")}
    config = parse_site_config(site(broker, {cid: b.url for cid, b in oe.items()}),
                               "mixed.yaml")
    settings = ControllerSettings(lease_s=60.0, settle_s=1.0, debounce_s=0.02, tick_s=0.25,
                                  retry_backoff_s=0.2)
    app = build_app(config.topology, ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none", controller=settings,
        mqtt=config.mqtt, openevse=config.openevse))
    sim = SimSite(tick_s=0.1)
    violations: list[str] = []

    async def monitor() -> None:
        while True:
            cp = sim.chargers["cp-1"]
            offered = cp.offered_a(1) + sum(box_offered(b) for b in oe.values())
            drawn = cp.drawn_a(1)[0] + sum(b.amps() for b in oe.values())
            for what, value in (("offered", offered), ("drawn", drawn)):
                if value > LIMIT_A + TOLERANCE_A:
                    violations.append(f"{what} {value:.1f} A")
            await asyncio.sleep(0.05)

    await app.start()
    watcher: asyncio.Task[None] | None = None
    try:
        assert app.openevse is not None
        sim.add_charger(SimCharger("cp-1", f"ws://127.0.0.1:{app.ocpp_port}",
                                   protocol="ocpp1.6", phases=1, phase="L1",
                                   max_current_a=32.0, meter_interval_s=2.0))
        assert await sim.start(wait_connected_s=10.0) == 1
        await eventually(lambda: app.controller.state.online_count() == 3, 20.0)
        # the failsafe (0 A) is installed on the boxes before any car comes
        await eventually(lambda: all(CLIENT in b.claims for b in oe.values()), 20.0)
        assert all(b.claims[CLIENT].state == "disabled" for b in oe.values())
        watcher = asyncio.create_task(monitor())

        sim.chargers["cp-1"].plug_nowait(1, EV(capacity_kwh=60.0, soc=0.3,
                                               max_current_a=32.0, setpoint_lag_s=0.5))
        for b in oe.values():
            b.plug(32.0)

        def shared() -> bool:
            amps = [sim.chargers["cp-1"].offered_a(1), *(b.amps() for b in oe.values())]
            return all(a >= 6.0 for a in amps) and sum(amps) >= LIMIT_A - 3.0

        await eventually(shared, 30.0)
        await asyncio.sleep(3.0)  # settled: nothing moves above the line's limit
        allocation = app.controller.allocation
        assert allocation is not None
        for cid, b in oe.items():
            setpoint = allocation.setpoints[(cid, 1)]
            assert b.claims[CLIENT].state == "active"
            assert b.claims[CLIENT].charge_current == int(setpoint)  # whole amps, down
            assert b.amps() == int(setpoint)
        assert abs(sim.chargers["cp-1"].offered_a(1) - allocation.setpoints[("cp-1", 1)]) < 0.1
        assert sum(allocation.setpoints.values()) <= LIMIT_A + 1e-6

        # one box's car leaves: the others take its share, the line still holds
        oe["oe-2"].unplug()
        await eventually(lambda: sim.chargers["cp-1"].offered_a(1) > 14.0
                         and oe["oe-1"].amps() >= 14.0, 30.0)
        await asyncio.sleep(2.0)
        assert violations == [], violations[:5]
        boxes_status = app.status()["openevse"]
        assert set(boxes_status) == {"oe-1", "oe-2"}
        assert all(b["online"] and b["heartbeats"] > 0 and b["rejected"] == 0
                   for b in boxes_status.values())
        counters = app.controller.counters
        assert counters.get("failsafe_accepted", 0) >= 3, dict(counters)
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await sim.stop()
        await app.stop()
