"""The OpenEVSE driver against simulated boxes: real HTTP (claims, target, basic auth,
the shaper heartbeat) and a real Mosquitto (status topics in)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from brokers import Mosquitto, free_port
from waits import eventually

from gridshare.adapters.openevse import OpenEvseDriver
from gridshare.config import MqttSpec, OpenEvseSpec
from gridshare.drivers import CommandResult, SetpointRequest
from gridshare.events import (
    ChargerBooted,
    ChargerOffline,
    ChargerOnline,
    ConnectorStatus,
    Event,
    MeterReading,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)
from gridshare.sim.openevse import Claim, SimOpenEvse

from .conftest import BoxFactory

CLIENT = 18259


class Running:
    def __init__(self, driver: OpenEvseDriver, events: list[Event]) -> None:
        self.driver = driver
        self.events = events


def spec(box: SimOpenEvse, **kw: Any) -> OpenEvseSpec:
    kw.setdefault("heartbeat_s", 1.0)
    kw.setdefault("offline_after_s", 5.0)
    kw.setdefault("timeout_s", 2.0)
    return OpenEvseSpec(url=box.url, mqtt_base=box.base, **kw)


async def start(broker: Mosquitto, specs: dict[str, OpenEvseSpec],
                lease_s: float = 60.0) -> Running:
    events: list[Event] = []
    driver = OpenEvseDriver(specs, MqttSpec(url=broker.url), events.append, lease_s=lease_s)
    await driver.start()
    return Running(driver, events)


@pytest.fixture
async def one(broker: Mosquitto, boxes: BoxFactory) -> AsyncIterator[tuple[SimOpenEvse, Running]]:
    box = await boxes()
    running = await start(broker, {"oe-1": spec(box)})
    await eventually(lambda: box.shaper_fed_at is not None, 10.0)
    yield box, running
    await running.driver.stop()


async def test_claim_whole_amps_rounded_down(one: tuple[SimOpenEvse, Running]) -> None:
    box, r = one
    box.plug(32.0)
    outcome = await r.driver.apply_setpoint("oe-1", 1, 16.7, 60.0)
    assert outcome.result is CommandResult.ACCEPTED and outcome.valid_to is not None
    claim = box.claims[CLIENT]
    assert (claim.state, claim.charge_current, claim.max_current, claim.auto_release) == \
        ("active", 16, 16, False)
    assert box.pilot() == 16 and box.amps() == 16.0 and box.evse_state() == 3
    # the result is read back from the box's target
    assert ("GET", "/claims/target") in box.requests


async def test_below_six_amps_pauses(one: tuple[SimOpenEvse, Running]) -> None:
    box, r = one
    box.plug(32.0)
    assert (await r.driver.apply_setpoint("oe-1", 1, 10.0, 60.0)).result \
        is CommandResult.ACCEPTED
    assert box.amps() == 10.0
    for amps in (5.9, 0.0):
        outcome = await r.driver.apply_setpoint("oe-1", 1, amps, 60.0)
        assert outcome.result is CommandResult.ACCEPTED
        assert box.claims[CLIENT].state == "disabled"
        assert box.amps() == 0.0 and box.evse_state() == 254
    assert (await r.driver.apply_setpoint("oe-1", 1, 6.0, 60.0)).result \
        is CommandResult.ACCEPTED
    assert box.amps() == 6.0


async def test_batch_and_supersede(one: tuple[SimOpenEvse, Running]) -> None:
    box, r = one
    box.plug(32.0)
    first, second = r.driver.submit_setpoints([SetpointRequest("oe-1", 1, 20.0, 60.0),
                                               SetpointRequest("oe-1", 1, 8.0, 60.0)])
    assert (await first).result is CommandResult.SUPERSEDED
    assert (await second).result is CommandResult.ACCEPTED
    assert box.amps() == 8.0
    (unknown,) = r.driver.submit_setpoints([SetpointRequest("other", 1, 8.0, 60.0)])
    assert (await unknown).result is CommandResult.REJECTED


async def test_override_of_higher_priority_is_a_rejection(
        one: tuple[SimOpenEvse, Running]) -> None:
    box, r = one
    box.claims[65537] = Claim(1000, state="active", charge_current=32)  # manual override
    outcome = await r.driver.apply_setpoint("oe-1", 1, 10.0, 60.0)
    assert outcome.result is CommandResult.REJECTED
    assert "above the claim of 10 A" in outcome.detail
    del box.claims[65537]
    assert (await r.driver.apply_setpoint("oe-1", 1, 10.0, 60.0)).result \
        is CommandResult.ACCEPTED


async def test_heartbeat_feeds_the_shaper(one: tuple[SimOpenEvse, Running]) -> None:
    box, r = one
    fed = box.shaper_fed_at
    assert fed is not None
    await eventually(lambda: r.driver.status()["oe-1"]["heartbeats"] >= 3, 10.0)
    assert box.requests.count(("POST", "/status")) >= 3
    assert box.shaper_fed_at is not None and box.shaper_fed_at > fed
    assert not box.shaper_failsafe()


async def test_gridshare_stops_box_pauses_within_its_shaper_interval(
        one: tuple[SimOpenEvse, Running]) -> None:
    """The dead-man switch: no heartbeat for current_shaper_data_maxinterval (3 s here)
    and the box pauses, whatever gridshare claimed last."""
    box, r = one
    box.plug(32.0)
    assert (await r.driver.apply_setpoint("oe-1", 1, 16.0, 600.0)).result \
        is CommandResult.ACCEPTED
    assert box.amps() == 16.0
    await r.driver.stop()
    stopped = time.monotonic()
    await eventually(lambda: box.amps() == 0.0, 10.0, poll_s=0.05)
    took = time.monotonic() - stopped
    # it holds the claim until the interval runs out (less the heartbeat's age), no longer
    assert 3.0 - 1.0 - 0.3 <= took <= 3.0 + 0.5, took
    assert box.evse_state() == 254
    assert box.claims[CLIENT].charge_current == 16  # our claim is still there, overridden


async def test_unrenewed_lease_falls_to_the_failsafe(broker: Mosquitto,
                                                     boxes: BoxFactory) -> None:
    box = await boxes()
    r = await start(broker, {"oe-1": spec(box)}, lease_s=10.0)
    try:
        await eventually(lambda: box.shaper_fed_at is not None, 10.0)
        box.plug(32.0)
        failsafe = await r.driver.apply_failsafe("oe-1", 8.0)
        assert failsafe.result is CommandResult.ACCEPTED, failsafe.detail
        assert box.amps() == 8.0  # in force until a setpoint replaces it
        assert (await r.driver.apply_setpoint("oe-1", 1, 20.0, 2.0)).result \
            is CommandResult.ACCEPTED
        assert box.amps() == 20.0
        sent = time.monotonic()
        await eventually(lambda: box.amps() == 8.0, 10.0, poll_s=0.05)
        assert time.monotonic() - sent <= 2.0 + 1.5  # the lease, and one watch pass
    finally:
        await r.driver.stop()


async def test_failsafe_checks_the_box_falls_back(broker: Mosquitto,
                                                  boxes: BoxFactory) -> None:
    off = await boxes("oe-off", shaper_enabled=False)
    slow = await boxes("oe-slow", shaper_maxinterval_s=120.0)
    r = await start(broker, {"off": spec(off), "slow": spec(slow)}, lease_s=60.0)
    try:
        outcome = await r.driver.apply_failsafe("off", 0.0)
        assert outcome.result is CommandResult.REJECTED and "shaper is off" in outcome.detail
        outcome = await r.driver.apply_failsafe("slow", 0.0)
        assert outcome.result is CommandResult.REJECTED
        assert "current_shaper_data_maxinterval 120.0 s" in outcome.detail
    finally:
        await r.driver.stop()


async def test_basic_auth(broker: Mosquitto, boxes: BoxFactory, tmp_path: Path) -> None:
    box = await boxes(username="admin", password="box-pw")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("box-pw\n")
    bad.write_text("wrong\n")
    r = await start(broker, {
        "ok": spec(box, username="admin", password_file=good),
        "no": spec(box, username="admin", password_file=bad, claim_client=7)})
    try:
        assert (await r.driver.apply_setpoint("ok", 1, 10.0, 60.0)).result \
            is CommandResult.ACCEPTED
        outcome = await r.driver.apply_setpoint("no", 1, 10.0, 60.0)
        assert outcome.result is CommandResult.REJECTED and "401" in outcome.detail
        assert 7 not in box.claims
    finally:
        await r.driver.stop()


async def test_unreachable_and_silent_boxes(broker: Mosquitto, boxes: BoxFactory) -> None:
    slow = await boxes(http_delay_s=1.5)
    nobody = OpenEvseSpec(url=f"http://127.0.0.1:{free_port()}", mqtt_base="nobody",
                          heartbeat_s=1.0)
    r = await start(broker, {"slow": spec(slow, timeout_s=0.3), "gone": nobody})
    try:
        offline = await r.driver.apply_setpoint("gone", 1, 10.0, 60.0)
        assert offline.result is CommandResult.OFFLINE and not offline.sent
        assert not offline.unknown
        timeout = await r.driver.apply_setpoint("slow", 1, 10.0, 60.0)
        assert timeout.result is CommandResult.TIMEOUT and timeout.unknown
        assert timeout.valid_to is not None
        await eventually(lambda: r.driver.status()["gone"]["heartbeat_errors"] >= 1, 10.0)
    finally:
        await r.driver.stop()


async def test_status_topics_become_events(broker: Mosquitto, boxes: BoxFactory) -> None:
    box = await boxes()
    r = await start(broker, {"oe-1": spec(box)})
    try:
        await eventually(lambda: any(isinstance(e, ChargerOnline) for e in r.events), 10.0)
        box.plug(32.0)
        assert (await r.driver.apply_setpoint("oe-1", 1, 12.0, 60.0)).result \
            is CommandResult.ACCEPTED

        def seen(kind: type, **match: Any) -> list[Any]:
            return [e for e in r.events if isinstance(e, kind)
                    and all(getattr(e, k) == v for k, v in match.items())]

        # The box publishes each topic on its own, in no set order: the current may come
        # before the vehicle topic that starts the session.
        await eventually(lambda: bool(seen(MeterReading, current_a=(12.0, None, None))), 10.0)
        await eventually(lambda: bool(seen(SessionStarted)), 10.0)
        (started,) = seen(SessionStarted)
        assert started.charger == "oe-1" and started.connector == 1
        await eventually(lambda: bool(seen(StatusChanged, status=ConnectorStatus.CHARGING)),
                         10.0)
        await eventually(lambda: bool(seen(MeterReading, power_w=12.0 * 230,
                                           transaction_id=started.transaction_id)), 10.0)
        box.unplug()
        await eventually(lambda: bool(seen(SessionStopped)), 10.0)
        assert seen(SessionStopped)[0].transaction_id == started.transaction_id
        await eventually(lambda: bool(seen(StatusChanged, status=ConnectorStatus.AVAILABLE)),
                         10.0)
        # bad values on the box's topics: rejected, counted, no event
        before = len(seen(MeterReading))
        async with aiomqtt.Client(broker.host, broker.port) as client:
            for payload in ("nan", "-1", "volts", "1e999"):
                await client.publish(f"{box.base}/voltage", payload)
        await eventually(lambda: r.driver.status()["oe-1"]["rejected"] >= 4, 10.0)
        assert all(e.voltage_v in (None, 230.0) for e in seen(MeterReading)[before:])
        assert "voltage" in (r.driver.status()["oe-1"]["last_error"] or "")
        # the box's will: offline
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish(f"{box.base}/status", "offline")
        await eventually(lambda: bool(seen(ChargerOffline)), 10.0)
    finally:
        await r.driver.stop()


async def test_silent_box_goes_offline(broker: Mosquitto, boxes: BoxFactory) -> None:
    box = await boxes()
    r = await start(broker, {"oe-1": spec(box, offline_after_s=5.0)})
    try:
        await eventually(lambda: any(isinstance(e, ChargerOnline) for e in r.events), 10.0)
        await box.stop()  # a clean disconnect: no will, only silence
        quiet = time.monotonic()
        await eventually(lambda: any(isinstance(e, ChargerOffline) for e in r.events), 15.0)
        assert 4.0 <= time.monotonic() - quiet <= 5.0 + 2.5
        await asyncio.sleep(0)
    finally:
        await r.driver.stop()


async def test_box_restart_loses_the_claim_and_gets_the_safe_one_before_its_feed(
        one: tuple[SimOpenEvse, Running]) -> None:
    """Claims live in the box's RAM: after a restart it would charge at its maximum once
    its shaper is fed. The heartbeat finds the claim gone, claims the safe current first,
    and tells the controller the box booted."""
    box, r = one
    box.plug(32.0)
    assert (await r.driver.apply_failsafe("oe-1", 0.0)).result is CommandResult.ACCEPTED
    assert (await r.driver.apply_setpoint("oe-1", 1, 16.0, 60.0)).result \
        is CommandResult.ACCEPTED
    assert box.amps() == 16.0
    box.reboot()
    drawn: list[float] = []

    async def sample() -> None:
        while True:
            drawn.append(box.amps())
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        await eventually(lambda: any(isinstance(e, ChargerBooted) for e in r.events), 10.0)
        await eventually(lambda: box.shaper_fed_at is not None, 10.0)
        await asyncio.sleep(0.2)
    finally:
        sampler.cancel()
    assert box.claims[CLIENT].state == "disabled"
    assert max(drawn) == 0.0  # never at the box's own maximum in between
    (booted,) = [e for e in r.events if isinstance(e, ChargerBooted)]
    assert booted.charger == "oe-1" and booted.protocol == "openevse"
