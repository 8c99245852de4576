"""The control loop as time series on a fake clock, against a recording driver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from gridshare.bus import MemoryBus
from gridshare.clock import FakeClock
from gridshare.config import parse_site
from gridshare.controller import loop as loop_module
from gridshare.controller.loop import (
    AlarmRecord,
    CommandRecord,
    Controller,
    ControllerSettings,
    CycleReport,
)
from gridshare.controller.state import StateSettings
from gridshare.core import guard
from gridshare.core.decision import Alarm
from gridshare.core.topology import Topology
from gridshare.drivers import CommandResult
from gridshare.events import (
    ChargerBooted,
    ChargerOffline,
    ChargerOnline,
    ConnectorStatus,
    GroupMeterReading,
    LimitChanged,
    MeterReading,
    StatusChanged,
)

from .conftest import SITE, RecordingDriver

FAST = ControllerSettings(tick_s=None, debounce_s=0.005, lease_s=60.0, retry_backoff_s=5.0,
                          settle_s=0.0,
                          state=StateSettings(meter_stale_after_s=30.0, verify_grace_s=10.0,
                                              verify_tolerance_a=1.0))


@pytest.fixture
async def controller(topology: Topology, driver: RecordingDriver,
                     clock: FakeClock) -> AsyncIterator[Controller]:
    c = Controller(topology, driver, clock, settings=FAST)
    await c.start()
    yield c
    await c.stop()


async def boot(c: Controller, clock: FakeClock, *chargers: str, keep: bool = False) -> None:
    """Boot chargers; forget the calls that booting causes (failsafe, idle holds at 0 A)
    unless ``keep``."""
    for cid in chargers or tuple(c.topology.chargers):
        c.handle(ChargerBooted(cid, clock.now(), "ocpp1.6"))
    await c.settle()
    if not keep:
        assert isinstance(c.driver, RecordingDriver)
        c.driver.clear()


async def arrive(c: Controller, clock: FakeClock, *chargers: str) -> None:
    for cid in chargers:
        c.handle(StatusChanged(cid, 1, ConnectorStatus.CHARGING, clock.now()))
    await c.settle()


async def advance(c: Controller, clock: FakeClock, seconds: float, step: float = 1.0) -> None:
    """Move time on, ticking every ``step`` seconds like the real tick task."""
    done = 0.0
    while done < seconds - 1e-9:
        clock.advance(min(step, seconds - done))
        done += step
        await c.tick()
        await c.settle()


def assert_safe(c: Controller) -> None:
    """What the chargers were last told (offline ones at failsafe) keeps every limit."""
    assert c.allocation is not None
    snapshot = c.state.to_snapshot(c.clock.now())
    assert guard.check(c.topology, snapshot, c.allocation.setpoints) == []


async def test_car_arrives_at_3s(controller: Controller, driver: RecordingDriver,
                                 clock: FakeClock) -> None:
    await boot(controller, clock, keep=True)
    # Every charger got its failsafe when it booted; idle connectors whose failsafe is above
    # 0 are held at 0 A while we are connected, so a new car does not start at failsafe.
    assert sorted((c.charger, c.current_a) for c in driver.calls if c.kind == "failsafe") == \
        [("a1", 6.0), ("a2", 6.0), ("a3", 6.0), ("b1", 6.0), ("b2", 0.0)]
    assert sorted((c.charger, c.current_a) for c in driver.setpoints()) == \
        [("a1", 0.0), ("a2", 0.0), ("a3", 0.0), ("b1", 0.0)]
    driver.clear()
    await advance(controller, clock, 3)
    await arrive(controller, clock, "a1")
    (call,) = driver.setpoints()
    assert (call.charger, call.connector, call.current_a, call.lease_s) == ("a1", 1, 32.0, 60.0)
    assert controller.in_force() == {("a1", 1): 32.0, ("a2", 1): 0.0, ("a3", 1): 0.0,
                                     ("b1", 1): 0.0}
    assert_safe(controller)


async def test_burst_of_arrivals_is_one_allocation(topology: Topology, driver: RecordingDriver,
                                                   clock: FakeClock) -> None:
    c = Controller(topology, driver, clock,
                   settings=ControllerSettings(tick_s=None, debounce_s=0.05, settle_s=0.0))
    await c.start()
    try:
        await boot(c, clock)
        reports: list[CycleReport] = []
        c.on_cycle(reports.append)
        for cid in ("a1", "a2", "a3"):
            c.handle(StatusChanged(cid, 1, ConnectorStatus.CHARGING, clock.now()))
        await c.settle()
        # One allocation sent all three; the cycles after it (each answer triggers one)
        # found nothing more to send.
        assert [len(r.sent) for r in reports] == [3] + [0] * (len(reports) - 1)
        assert sorted(x.current_a or 0 for x in driver.setpoints()) == [10.6, 10.7, 10.7]
    finally:
        await c.stop()


async def test_decreases_complete_before_any_increase(controller: Controller,
                                                      driver: RecordingDriver,
                                                      clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1")
    assert driver.last("a1") == 32.0
    driver.gates["a1"] = gate = asyncio.Event()
    controller.handle(StatusChanged("a2", 1, ConnectorStatus.CHARGING, clock.now()))
    await asyncio.sleep(0.05)
    # a1's decrease is out and unanswered: a2 (at its 6 A default) must not be raised yet.
    assert driver.last("a1") == 16.0
    assert driver.setpoints("a2") == []
    gate.set()
    await controller.settle()
    (dec,) = [x for x in driver.setpoints("a1") if x.current_a == 16.0]
    (inc,) = driver.setpoints("a2")
    assert inc.current_a == 16.0
    assert dec.finished is not None and inc.started > dec.finished
    assert_safe(controller)


async def test_meter_goes_stale_at_40s_fails_closed(metered: Topology, driver: RecordingDriver,
                                                     clock: FakeClock) -> None:
    c = Controller(metered, driver, clock, settings=FAST)
    await c.start()
    try:
        await boot(c, clock)
        await arrive(c, clock, "m1")
        # The meter has never reported: no headroom; m1 stays at the 0 A its idle connector
        # was held at (not its 6 A failsafe).
        assert driver.setpoints() == []
        assert c.in_force() == {("m1", 1): 0.0, ("m2", 1): 0.0}
        for _ in range(3):  # t = 0, 5, 10
            c.handle(GroupMeterReading("main", clock.now(), (8.0, 8.0, 8.0),
                                       includes_chargers=False))
            await c.settle()
            await advance(c, clock, 5)
        assert driver.last("m1") == 31.5  # 40 A − 8 A of house load − 0.5 A deadband
        assert clock.now().second == 15
        await advance(c, clock, 25)  # t = 40: 30 s since the last reading at t = 10
        assert driver.last("m1") == 31.5
        await advance(c, clock, 1)  # t = 41: stale
        assert driver.last("m1") == 0.0
        assert c.status().groups[0].meter_stale
        # The meter comes back: charging resumes.
        c.handle(GroupMeterReading("main", clock.now(), (8.0, 8.0, 8.0),
                                   includes_chargers=False))
        await c.settle()
        assert driver.last("m1") == 31.5
    finally:
        await c.stop()


async def test_charger_offline_counts_at_failsafe_and_others_give_way(
        controller: Controller, driver: RecordingDriver, clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1")
    assert driver.last("a1") == 32.0
    await advance(controller, clock, 2)
    controller.handle(ChargerOffline("a2", clock.now(), "connection closed"))
    await controller.settle()
    # a2 (no car) may now draw its 6 A failsafe: a1 gets the rest of the 32 A circuit.
    assert driver.last("a1") == 26.0
    assert controller.allocation is not None
    assert controller.allocation.offline == {("a2", 1)}
    assert_safe(controller)
    # Back online (no reboot): counted at its setpoint again, failsafe not re-sent.
    failsafes = len([x for x in driver.calls if x.kind == "failsafe"])
    controller.handle(ChargerOnline("a2", clock.now()))
    await controller.settle()
    assert driver.last("a1") == 32.0
    assert len([x for x in driver.calls if x.kind == "failsafe"]) == failsafes


async def test_leases_are_renewed_at_half_life(controller: Controller, driver: RecordingDriver,
                                               clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1", "a2", "a3", "b1", "b2")
    first = len(driver.setpoints())
    assert first == 5
    await advance(controller, clock, 29)
    assert len(driver.setpoints()) == first
    await advance(controller, clock, 1)  # 30 s = lease_s / 2
    renewed = driver.setpoints()[first:]
    assert sorted(x.charger for x in renewed) == ["a1", "a2", "a3", "b1", "b2"]
    assert {x.charger: x.current_a for x in renewed} == \
        {x.charger: x.current_a for x in driver.setpoints()[:first]}
    await advance(controller, clock, 29)
    assert len(driver.setpoints()) == first + 5
    await advance(controller, clock, 1)
    assert len(driver.setpoints()) == first + 10


async def test_urgent_cut_does_not_wait_for_a_stuck_decrease(
        controller: Controller, driver: RecordingDriver, clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1", "a2")
    assert (driver.last("a1"), driver.last("a2")) == (16.0, 16.0)
    driver.gates["a1"] = gate = asyncio.Event()
    controller.handle(StatusChanged("a3", 1, ConnectorStatus.CHARGING, clock.now()))
    await asyncio.sleep(0.05)
    assert driver.setpoints("a3") == []  # held behind a1's unanswered decrease
    controller.handle(LimitChanged("c1", clock.now(), "demand_response", max_current=12.0))
    await asyncio.sleep(0.05)
    # The cut went out at once to a2 although a1 still has not answered.
    assert driver.last("a2") in (0.0, 6.0)
    assert driver.setpoints("a3") == [] or driver.last("a3") in (0.0, 6.0)
    gate.set()
    await controller.settle()
    total = sum(controller.state.believed_a((cid, 1)) for cid in ("a1", "a2", "a3")
                if controller.state.active((cid, 1)))
    assert total <= 12.0
    assert_safe(controller)


async def test_rejected_decrease_keeps_the_old_profile_counted_and_raises_an_alarm(
        controller: Controller, driver: RecordingDriver, clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1")
    driver.results["a1"] = CommandResult.REJECTED
    await arrive(controller, clock, "a2")
    # a1 refused to come down from 32 A: its 32 A profile stays in force and counts, so
    # a2 may not rise from the 0 A its idle connector was held at.
    assert driver.last("a1") == 16.0
    assert driver.setpoints("a2") == []
    status = controller.status()
    a1, a2 = status.connectors[0], status.connectors[1]
    assert (a1.setpoint_a, a1.counted_a) == (32.0, 32.0)
    assert a1.rejected is not None and a1.rejected.current_a == 16.0
    assert a2.held
    assert [a.kind for a in status.alarms] == ["rejected"]
    data = json.loads(json.dumps(status.to_dict()))
    assert data["connectors"][0]["rejected"]["current_a"] == 16.0
    driver.results["a1"] = CommandResult.ACCEPTED
    await advance(controller, clock, 4)
    assert driver.last("a2") is None  # back-off: 5 s after the refusal
    await advance(controller, clock, 1)
    assert driver.last("a1") == 16.0
    assert driver.last("a2") == 16.0
    assert controller.status().connectors[0].rejected is None


async def test_violator_is_paused_and_counted_at_its_draw(
        controller: Controller, driver: RecordingDriver, clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1", "a2")
    assert driver.last("a1") == 16.0
    for _ in range(11):
        controller.handle(MeterReading("a1", 1, clock.now(), current_a=(30.0, 30.0, 30.0)))
        await advance(controller, clock, 1)
    # 30 A drawn in a 32 A circuit: a2 cannot keep its 6 A minimum; a1 told to stop.
    assert driver.last("a1") == 0.0
    assert driver.last("a2") == 0.0
    status = controller.status()
    assert status.connectors[0].violator
    assert any(a.kind == "violation" for a in status.alarms)
    c1 = next(g for g in status.groups if g.id == "c1")
    assert c1.uncontrolled_a == (30.0, 30.0, 30.0)
    controller.handle(MeterReading("a1", 1, clock.now(), current_a=(0.2, 0.2, 0.2)))
    await advance(controller, clock, 1)
    assert (driver.last("a1"), driver.last("a2")) == (16.0, 16.0)


async def test_failsafe_on_boot_and_on_first_connection(
        controller: Controller, driver: RecordingDriver, clock: FakeClock) -> None:
    controller.handle(ChargerOnline("a1", clock.now()))
    await controller.settle()
    controller.handle(ChargerOffline("a1", clock.now()))
    controller.handle(ChargerOnline("a1", clock.now()))
    await controller.settle()
    controller.handle(ChargerBooted("a1", clock.now(), "ocpp2.0.1"))
    await controller.settle()
    assert [(x.kind, x.charger, x.current_a) for x in driver.calls if x.kind == "failsafe"] \
        == [("failsafe", "a1", 6.0), ("failsafe", "a1", 6.0)]


async def test_failsafe_retried_until_accepted(controller: Controller, driver: RecordingDriver,
                                               clock: FakeClock) -> None:
    driver.results["b1"] = CommandResult.TIMEOUT
    await boot(controller, clock, "b1", keep=True)
    driver.results["b1"] = CommandResult.ACCEPTED
    # The one back-off policy (retry_backoff_s = 5 s here), as for setpoints.
    await advance(controller, clock, 4)
    assert len([x for x in driver.calls if x.kind == "failsafe"]) == 1
    await advance(controller, clock, 1)
    assert [x.result for x in driver.calls if x.kind == "failsafe"] == \
        [CommandResult.TIMEOUT, CommandResult.ACCEPTED]


async def test_driver_error_counts_as_timeout_with_alarm(
        controller: Controller, driver: RecordingDriver, clock: FakeClock) -> None:
    await boot(controller, clock)
    driver.errors.add("a1")
    await arrive(controller, clock, "a1")
    assert controller.counters["setpoint_timeout"] == 1
    assert any("driver error" in a.message for a in controller.status().alarms)
    assert controller.state.uncertain_a(("a1", 1)) == 32.0


async def test_crashed_worker_is_restarted(controller: Controller, driver: RecordingDriver,
                                           clock: FakeClock,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real = loop_module.allocate
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop_module, "allocate", flaky)
    await boot(controller, clock)
    await asyncio.sleep(0.3)
    await arrive(controller, clock, "a1")
    assert controller.counters["task_crashes"] == 1
    assert driver.last("a1") == 32.0


async def test_events_from_the_bus(topology: Topology, driver: RecordingDriver,
                                   clock: FakeClock) -> None:
    bus = MemoryBus()
    c = Controller(topology, driver, clock, settings=FAST, bus=bus)
    await c.start()
    try:
        bus.publish(ChargerBooted("b2", clock.now(), "ocpp2.0.1"))
        bus.publish(StatusChanged("b2", 1, ConnectorStatus.PREPARING, clock.now()))
        await asyncio.sleep(0.02)
        await c.settle()
        # b1 has never connected: counted at its 6 A failsafe in the same 32 A circuit.
        assert driver.last("b2") == 26.0
    finally:
        await c.stop()
    assert bus.subscribers == ()


class Audit:
    def __init__(self) -> None:
        self.commands: list[CommandRecord] = []
        self.alarms: list[AlarmRecord] = []

    def record_command(self, record: CommandRecord) -> None:
        self.commands.append(record)

    def record_alarm(self, record: AlarmRecord) -> None:
        self.alarms.append(record)


async def test_audit_and_status(topology: Topology, driver: RecordingDriver,
                                clock: FakeClock) -> None:
    audit = Audit()
    c = Controller(topology, driver, clock, settings=FAST, audit=audit)
    await c.start()
    try:
        await boot(c, clock, "a1", "a2", "a3")
        await arrive(c, clock, "a1")
        kinds = sorted(r.kind for r in audit.commands)
        assert kinds == ["failsafe"] * 3 + ["increase"] + ["release"] * 3
        # b1 and b2 never connected: 6 A on L2 and 0 A at failsafe, no alarm.
        c.handle(LimitChanged("main", clock.now(), "operator", max_current=3.0))
        await c.settle()
        assert any(a.kind == "limit" and a.group == "main" for a in audit.alarms)
        status = c.status()
        data = json.loads(json.dumps(status.to_dict()))
        assert data["site"] == "test"
        assert data["chargers_configured"] == 5
        assert data["chargers_online"] == 3
        main = data["groups"][0]
        assert main["id"] == "main" and main["limit_a"] == 3.0
        assert main["allocated_a"] == [0.0, 6.0, 0.0]
        a1 = data["connectors"][0]
        assert (a1["charger"], a1["online"], a1["active"], a1["setpoint_a"]) == \
            ("a1", True, True, 0.0)
        c.handle(LimitChanged("main", clock.now(), "operator"))
        await c.settle()
        assert any(a.cleared for a in audit.alarms)
    finally:
        await c.stop()


async def test_increase_waits_for_decreases_to_settle_unless_it_fits(
        driver: RecordingDriver, clock: FakeClock) -> None:
    topology = parse_site(SITE.replace("max_current: 63", "max_current: 100"), "roomy")
    settings = ControllerSettings(tick_s=None, debounce_s=0.005, settle_s=5.0)
    c = Controller(topology, driver, clock, settings=settings)
    await c.start()
    try:
        await boot(c, clock, "a1", "a2", "a3", "b2")
        await arrive(c, clock, "a1")
        assert driver.last("a1") == 32.0
        await arrive(c, clock, "a2")
        # a1 was told 16 A, but its car may draw 32 A for a few more seconds: a2 waits.
        assert driver.last("a1") == 16.0
        assert driver.setpoints("a2") == []
        assert c.last_report is not None and c.last_report.increases_held == 1
        assert c.last_report.decision.wake_at == clock.now() + timedelta(seconds=5)
        # An increase elsewhere that fits even with a1 at 32 A goes at once.
        await arrive(c, clock, "b2")
        assert driver.last("b2") == 26.0  # 32 A circuit, never-seen b1 at its 6 A failsafe
        assert driver.setpoints("a2") == []
        await advance(c, clock, 4.9, step=4.9)
        assert driver.setpoints("a2") == []
        await advance(c, clock, 0.1, step=0.1)  # exactly settle_s after the accept
        assert driver.last("a2") == 16.0
    finally:
        await c.stop()


async def test_departure_releases_the_connector(controller: Controller, driver: RecordingDriver,
                                                clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1")
    assert driver.last("a1") == 32.0
    controller.handle(StatusChanged("a1", 1, ConnectorStatus.AVAILABLE, clock.now()))
    await controller.settle()
    assert driver.last("a1") == 0.0
    # The next car starts from 0, is raised by an increase, not left at the last share.
    await arrive(controller, clock, "a1")
    assert [x.current_a for x in driver.setpoints("a1")] == [32.0, 0.0, 32.0]


async def test_a_step_the_plan_check_refuses_is_never_sent(
        controller: Controller, driver: RecordingDriver, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    await boot(controller, clock)
    refusal = Alarm("c1", None, 40.0, 32.0, "group c1: 40 A above 32 A")
    monkeypatch.setattr(loop_module.guard, "check_plan", lambda *args: [refusal])
    await arrive(controller, clock, "a1")
    assert driver.setpoints() == []
    assert controller.last_report is not None
    assert controller.last_report.refused == (refusal,)
    assert [a.kind for a in controller.status().alarms] == ["plan"]
    monkeypatch.undo()
    await advance(controller, clock, 5)
    assert driver.last("a1") == 32.0


@pytest.mark.parametrize(("error", "counted", "uncertain"), [
    (ValueError("bad setpoint"), 0.0, False),  # refused before anything was queued
    (RuntimeError("writer gone"), 32.0, True),  # may have left: outcome unknown
], ids=["refused-before-sending", "unknown"])
async def test_a_driver_that_raises_on_submit(
        controller: Controller, driver: RecordingDriver, clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch, error: Exception, counted: float,
        uncertain: bool) -> None:
    await boot(controller, clock)

    def broken(requests: object) -> list[object]:
        raise error

    monkeypatch.setattr(driver, "submit_setpoints", broken)
    await arrive(controller, clock, "a1")
    a1 = controller.status().connectors[0]
    assert (a1.counted_a, a1.uncertain) == (counted, uncertain)
    assert any("driver error" in a.message for a in controller.status().alarms)
