"""Charge planning live, end to end: OCPP 2.0.1 simulated chargers whose cars send their
charging needs (NotifyEVChargingNeeds), the app plans them under a time-of-use tariff and
the chargers' offered current follows the plan's current period; a driver's need over the
API re-plans; the API reports a car that cannot be met."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from waits import eventually

from gridshare.app import build_app
from gridshare.config import ChargePlanningSpec
from gridshare.sim import EV, SimCharger

from .conftest import Rig

SITE = """
site: planlive
voltage: 230
groups:
  - id: main
    max_current: 80
    chargers: [p-1, p-2]
chargers:
  - {id: p-1, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: p-2, max_current: 32, phases: 3, failsafe_current: 0}
"""
TOKEN = "plan-live-token-3c9e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def dear_now_tariff(now: datetime) -> list[dict[str, object]]:
    """Dear during the current UTC hour and the next, cheap the rest of the day."""
    hour = now.hour
    dear, cheap = f"{hour:02d}:00", f"{(hour + 2) % 24:02d}:00"
    steps = [(dear, 1.0), (cheap, 0.1)]
    return [{"from": at, "price": p} for at, p in sorted(steps)]


class PlanRig(Rig):
    def __init__(self, data_dir: Path) -> None:
        super().__init__("ocpp2.0.1", site=SITE)
        spec = ChargePlanningSpec.model_validate({
            "tariff": dear_now_tariff(datetime.now(UTC)), "replan_min_interval_s": 0.2})
        options = dataclasses.replace(self.app.options, api_port=0, api_tokens=(TOKEN,),
                                      charge_planning=spec, data_dir=data_dir)
        self.app = build_app(self.topology, options)
        self.http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        await self.app.start()
        url = f"ws://127.0.0.1:{self.app.ocpp_port}"
        for cid in self.topology.chargers:
            self.sim.add_charger(SimCharger(cid, url, protocol="ocpp2.0.1", phases=3,
                                            max_current_a=32, min_current_a=6,
                                            meter_interval_s=2.0, charging_needs=True))
        assert await self.sim.start(wait_connected_s=10.0) == 2
        await self.wait_until(lambda: self.app.controller.state.online_count() == 2)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.app.api_port}",
                                      timeout=10.0)

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        await super().stop()

    @property
    def client(self) -> httpx.AsyncClient:
        assert self.http is not None
        return self.http

    def plug_car(self, charger: str, soc: float, target: float, stay_h: float) -> None:
        ev = EV(capacity_kwh=60.0, soc=soc, target_soc=target, max_current_a=32.0,
                departure=datetime.now(UTC) + timedelta(hours=stay_h), setpoint_lag_s=0.2)
        self.sim.chargers[charger].plug_nowait(1, ev)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[PlanRig]:
    r = PlanRig(tmp_path / "var")
    await r.start()
    try:
        yield r
    finally:
        with contextlib.suppress(Exception):
            await r.stop()


async def test_caps_follow_the_plan_and_replan_on_needs(rig: PlanRig) -> None:
    planning = rig.app.planning
    assert planning is not None
    # p-1: 10 kWh over 6 h: waits for the cheap hours (cap 0: paused now).
    # p-2: 48 kWh within 1 h: cannot be met, charges at full current whatever the price.
    rig.plug_car("p-1", soc=0.5, target=0.5 + 10 / 60, stay_h=6)
    rig.plug_car("p-2", soc=0.1, target=0.9, stay_h=1)
    await eventually(lambda: planning.caps == {("p-1", 1): 0.0, ("p-2", 1): 32.0},
                     timeout_s=30)
    await eventually(lambda: rig.offered("p-1") == 0.0 and rig.offered("p-2") == 32.0,
                     timeout_s=30)
    assert rig.app.controller.state.cap_sources(("p-1", 1)) == {"charge_plan": 0.0}

    plan = (await rig.client.get("/api/v1/plan")).json()
    cars = {c["charger"]: c for c in plan["cars"]}
    assert cars["p-1"]["met"] is True and cars["p-1"]["need_source"] == "ocpp"
    assert cars["p-1"]["need_kwh"] == pytest.approx(10.0, abs=0.01)
    assert cars["p-2"]["met"] is False
    # at most one hour at 22.08 kW (less: the hour began before the plan's period did)
    assert cars["p-2"]["shortfall_kwh"] >= 48 - 22.08 - 0.5
    assert plan["cars_short"] == 1

    # The driver of p-1 now must leave in 30 minutes with 20 kWh: full current.
    departure = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    r = await rig.client.put("/api/v1/chargers/p-1/connectors/1/need",
                             json={"energy_kwh": 20, "departure": departure}, headers=AUTH)
    assert r.status_code == 200, r.text
    await eventually(lambda: rig.offered("p-1") == 32.0, timeout_s=30)
    assert planning.need_of(("p-1", 1)) is not None

    # p-2 leaves: re-planned without it, its cap gone.
    rig.sim.chargers["p-2"].unplug_nowait(1)
    await eventually(lambda: ("p-2", 1) not in planning.caps, timeout_s=30)
    await asyncio.sleep(0)


async def test_need_api_errors(rig: PlanRig) -> None:
    body = {"energy_kwh": 5}
    r = await rig.client.put("/api/v1/chargers/p-1/connectors/1/need", json=body)
    assert r.status_code == 401
    r = await rig.client.put("/api/v1/chargers/nope/connectors/1/need", json=body,
                             headers=AUTH)
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = await rig.client.put("/api/v1/chargers/p-1/connectors/9/need", json=body,
                             headers=AUTH)
    assert r.status_code == 404
    r = await rig.client.put("/api/v1/chargers/p-1/connectors/1/need",
                             json={"energy_kwh": -1}, headers=AUTH)
    assert r.status_code == 422
    r = await rig.client.put("/api/v1/chargers/p-1/connectors/1/need",
                             json={"energy_kwh": 5, "departure": "2026-12-01T07:00:00"},
                             headers=AUTH)
    assert r.status_code == 422  # no UTC offset
    r = await rig.client.get("/api/v1/plan")
    assert r.status_code == 200 and r.json()["enabled"] is True
