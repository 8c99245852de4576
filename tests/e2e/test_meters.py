"""A house with two chargers that follows its meter, end to end: the real app (CSMS,
controller, meter sources), simulated OCPP chargers and cars, and a meter that reads what
the house really draws (other loads + what the simulated cars draw).

MQTT: a real Mosquitto the test starts on a free port, a publisher task standing in for
the house meter. OCPP: a dedicated meter that connects as a charge point of its own.
Both cars charge at what the meter leaves (40 A house, 10 A other load: 15 A each), a rise
of the other load lowers them, and when the meter falls silent they are paused within its
max age and a few seconds, with the alarm that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import httpx
import pytest
from brokers import Mosquitto, mosquitto

from gridshare.app import ServeOptions, build_app
from gridshare.config import parse_site_config
from gridshare.controller.loop import ControllerSettings
from gridshare.sim.site_meter import SimSiteMeter

from .conftest import TOLERANCE_A, Rig

MAX_AGE_S = 4.0
LIMIT_A = 40.0
TOPIC = "home/meter/state"

CHARGERS = """
chargers:
  - {id: cp-1, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: cp-2, max_current: 32, phases: 3, failsafe_current: 0}
groups:
  - id: house
    max_current: 40
    meter: house-meter
    chargers: [cp-1, cp-2]
"""


def mqtt_site(broker_url: str) -> str:
    return f"""
site: house
voltage: 230
mqtt: {{url: "{broker_url}"}}
meters:
  - id: house-meter
    source: mqtt
    topic: {TOPIC}
    fields: {{L1: a_current, L2: b_current, L3: c_current}}
    unit: A
    max_age: {MAX_AGE_S}
""" + CHARGERS


OCPP_SITE = f"""
site: house
voltage: 230
meters:
  - {{id: house-meter, source: ocpp, charger: meter-1, connector: 0, max_age: {MAX_AGE_S}}}
""" + CHARGERS


class HouseRig(Rig):
    """The e2e rig on a site file with meters (its options from the file, as serve does)."""

    def __init__(self, protocol: str, site: str) -> None:
        super().__init__(protocol, site=site)
        config = parse_site_config(site, "house.yaml")
        settings = ControllerSettings(lease_s=60.0, settle_s=1.0, debounce_s=0.02,
                                      tick_s=0.25, retry_backoff_s=0.2)
        self.app = build_app(self.topology, ServeOptions(
            host="127.0.0.1", ocpp_port=0, api_port=0, db_url="none", controller=settings,
            meters=config.meters, mqtt=config.mqtt))
        self.other_a = 10.0
        """What the rest of the house draws, per phase."""
        self.overloads: list[str] = []
        self.step_at = 0.0

    def shares(self) -> list[float]:
        """What the two chargers offer, smallest first."""
        return sorted((self.offered("cp-1"), self.offered("cp-2")))

    def house_a(self) -> tuple[float, float, float]:
        """What the house meter reads: other loads and both cars."""
        a, b, c = self.sim.meter_a(self.topology.chargers, loads=())
        return (self.other_a + a, self.other_a + b, self.other_a + c)

    def check(self) -> None:
        """The house stays within 40 A, apart from the seconds right after a rise of the
        other load (the rise itself overloads it until the cars are cut)."""
        if time.monotonic() - self.step_at < 6.0:
            return
        peak = max(self.house_a())
        if peak > LIMIT_A + TOLERANCE_A:
            self.overloads.append(f"{peak:.1f} A\n{self.diagnose()}")

    async def watch(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(0.1)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with mosquitto(tmp_path / "mosquitto") as started:
        yield started


async def publish_meter(rig: HouseRig, broker: Mosquitto, running: asyncio.Event) -> None:
    """The house meter: its reading every second while ``running`` is set."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        while True:
            if running.is_set():
                a, b, c = rig.house_a()
                await client.publish(TOPIC, json.dumps(
                    {"a_current": round(a, 2), "b_current": round(b, 2),
                     "c_current": round(c, 2)}))
            await asyncio.sleep(1.0)


@contextlib.asynccontextmanager
async def started(rig: HouseRig) -> AsyncIterator[HouseRig]:
    await rig.start()
    watcher = asyncio.create_task(rig.watch())
    try:
        yield rig
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await rig.stop()


async def follow_and_fail_closed(rig: HouseRig, stop_meter: asyncio.Event,
                                 where: str) -> None:
    """The shared scenario once the meter reports."""
    rig.plug("cp-1")
    rig.plug("cp-2")
    # 40 A less 10 A of other load and the meter's 0.5 A deadband, kept in reserve.
    await rig.wait_until(lambda: rig.shares() == [14.7, 14.8], 30.0)
    await rig.settle()

    def meter_reads_the_cars() -> bool:
        current = rig.app.status()["meters"][0]["current"]
        return current is not None and min(current) > 39.0

    await rig.wait_until(meter_reads_the_cars, 10.0)
    await asyncio.sleep(2.0)  # and the cars' own readings come in: nothing moves
    assert rig.shares() == [14.7, 14.8]
    status = rig.app.status()
    (meter,) = status["meters"]
    assert meter["id"] == "house-meter" and meter["where"] == where
    assert meter["stale"] is False and meter["groups"] == ["house"]
    assert meter["current"] == pytest.approx([40.0, 40.0, 40.0], abs=1.0)
    assert status["groups"][0]["uncontrolled_a"] == pytest.approx([10.0, 10.0, 10.0], abs=0.6)
    # The rest of the house draws 10 A more: both cars give way.
    rig.step_at = time.monotonic()
    rig.other_a = 20.0
    await rig.wait_until(lambda: rig.shares() == [9.7, 9.8], 30.0)
    await rig.settle()
    assert rig.overloads == [], rig.overloads[0]
    # The meter falls silent: both cars paused within its max age and a few seconds.
    silent_at = time.monotonic()
    stop_meter.set()
    await rig.wait_until(lambda: rig.offered("cp-1") == rig.offered("cp-2") == 0.0,
                         MAX_AGE_S + 6.0)
    assert time.monotonic() - silent_at < MAX_AGE_S + 6.0
    alarms = [a.message for a in rig.app.controller.recent_alarms]
    assert f"meter house-meter: no reading for {MAX_AGE_S:g} s ({where}) — group house at 0 A " \
           "headroom" in alarms
    assert not [a for a in alarms if "offline chargers" in a]
    (meter,) = rig.app.status()["meters"]
    assert meter["stale"] is True and meter["age_s"] >= MAX_AGE_S


async def test_mqtt_house_meter(broker: Mosquitto) -> None:
    rig = HouseRig("ocpp1.6", mqtt_site(broker.url))
    running = asyncio.Event()
    running.set()
    async with started(rig):
        publisher = asyncio.create_task(publish_meter(rig, broker, running))
        stop = asyncio.Event()
        stopper = asyncio.create_task(stop.wait())
        stopper.add_done_callback(lambda _: running.clear())
        try:
            await follow_and_fail_closed(rig, stop, f"mqtt {TOPIC}")
            assert rig.app.api_port is not None
            async with httpx.AsyncClient() as http:
                got = await http.get(f"http://127.0.0.1:{rig.app.api_port}/status")
            (meter,) = got.json()["meters"]
            assert meter["id"] == "house-meter" and meter["source"] == "mqtt"
            assert meter["stale"] is True and meter["errors"] == 0
            assert [a["kind"] for a in got.json()["alarms"]] == ["meter"]
        finally:
            for task in (publisher, stopper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_ocpp_dedicated_meter() -> None:
    rig = HouseRig("ocpp2.0.1", OCPP_SITE)
    async with started(rig):
        meter = SimSiteMeter("meter-1", f"ws://127.0.0.1:{rig.app.ocpp_port}", rig.house_a,
                             interval_s=1.0)
        await meter.start()
        stop = asyncio.Event()

        async def silence() -> None:
            await stop.wait()
            await meter.stop()

        stopper = asyncio.create_task(silence())
        try:
            await asyncio.wait_for(meter.connected.wait(), 10.0)
            await follow_and_fail_closed(rig, stop, "ocpp meter-1 connector 0")
            # The meter is no charger: never a profile, never in the controller's view.
            assert "meter-1" not in rig.app.topology.chargers
            assert rig.app.controller.state.counters.rejected.get("unknown charger", 0) == 0
            assert meter.sent >= 3
        finally:
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
            await meter.stop()
