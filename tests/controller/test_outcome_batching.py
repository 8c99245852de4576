"""Outcomes folded in by the batch: the answers resolved in one pass of the event loop are
recorded together, and an answer that changes nothing the controller decides on wakes no
cycle. Times on a fake clock; the driver's futures are resolved by the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from datetime import datetime
from typing import Any

import pytest

from gridshare.clock import FakeClock
from gridshare.controller.loop import Controller, ControllerSettings, CycleReport
from gridshare.controller.state import Impact, SiteState
from gridshare.core import guard
from gridshare.core.decision import Alarm
from gridshare.core.ledger import Effect
from gridshare.core.topology import ConnectorKey, Topology
from gridshare.drivers import CommandOutcome, CommandResult, SetpointRequest
from gridshare.events import ChargerBooted, ConnectorStatus, LimitChanged, StatusChanged

from .conftest import t

SETTINGS = ControllerSettings(tick_s=None, debounce_s=0.005, lease_s=60.0, settle_s=0.0)


class ManualDriver:
    """Setpoints are accepted at once while ``auto``; otherwise they wait on futures the
    test resolves (all at once, as a burst of answers read in one pass would). The
    failsafe and cap are accepted at once."""

    def __init__(self) -> None:
        self.auto = True
        self.waiting: list[tuple[SetpointRequest, asyncio.Future[CommandOutcome]]] = []
        self._submitted = asyncio.Event()
        self._seq = 0

    def _outcome(self, result: CommandResult) -> CommandOutcome:
        self._seq += 1
        return CommandOutcome(result, answer_seq=self._seq)

    async def submitted(self, count: int, timeout_s: float = 5.0) -> None:
        """Until ``count`` setpoints wait for their answer."""
        async with asyncio.timeout(timeout_s):
            while len(self.waiting) < count:
                self._submitted.clear()
                await self._submitted.wait()

    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[Awaitable[CommandOutcome]]:
        loop = asyncio.get_running_loop()
        futures: list[Awaitable[CommandOutcome]] = []
        for request in requests:
            future: asyncio.Future[CommandOutcome] = loop.create_future()
            if self.auto:
                future.set_result(self._outcome(CommandResult.ACCEPTED))
            else:
                self.waiting.append((request, future))
            futures.append(future)
        self._submitted.set()
        return futures

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandOutcome:
        (future,) = self.submit_setpoints([SetpointRequest(charger, connector, current_a,
                                                           lease_s)])
        return await future

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        return CommandOutcome(CommandResult.ACCEPTED)

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        return CommandOutcome(CommandResult.ACCEPTED)

    def answer_all(self, result: CommandResult = CommandResult.ACCEPTED) -> list[float]:
        """Resolve every waiting setpoint in this pass; returns their values."""
        values = []
        for request, future in self.waiting:
            future.set_result(self._outcome(result))
            values.append(request.current_a)
        self.waiting.clear()
        return values


class Spy:
    """Records the size of each batch SiteState.record_outcomes is given."""

    def __init__(self, state: SiteState) -> None:
        self.batches: list[int] = []
        original = state.record_outcomes

        def record_outcomes(outcomes: Iterable[Any], at: datetime, settle_s: float, *,
                            wake_on_apply: bool = True) -> tuple[list[Effect], Impact]:
            items = list(outcomes)
            self.batches.append(len(items))
            return original(items, at, settle_s, wake_on_apply=wake_on_apply)

        state.record_outcomes = record_outcomes  # type: ignore[method-assign]


@pytest.fixture
async def rig(topology: Topology, clock: FakeClock,
              ) -> AsyncIterator[tuple[Controller, ManualDriver, list[CycleReport]]]:
    driver = ManualDriver()
    controller = Controller(topology, driver, clock, settings=SETTINGS)
    cycles: list[CycleReport] = []
    controller.on_cycle(cycles.append)
    await controller.start()
    yield controller, driver, cycles
    await controller.stop()


async def charging(controller: Controller, driver: ManualDriver, clock: FakeClock,
                   chargers: Sequence[str]) -> None:
    """Every charger booted (idle connectors held at 0 A), cars on ``chargers``, every
    setpoint accepted; from then on the test answers."""
    for cid in controller.topology.chargers:
        controller.handle(ChargerBooted(cid, clock.now(), "ocpp1.6"))
    for cid in chargers:
        controller.handle(StatusChanged(cid, 1, ConnectorStatus.CHARGING, clock.now()))
    await controller.settle()
    driver.auto = False


async def test_a_burst_of_answers_is_folded_in_one_batch_and_wakes_no_cycle(
        rig: tuple[Controller, ManualDriver, list[CycleReport]], clock: FakeClock) -> None:
    """A cut: three decreases out; their three answers, resolved in one pass, are recorded
    in one batch, each connector is counted at its new value, and no cycle runs for them
    (nothing waits for the headroom they free)."""
    controller, driver, cycles = rig
    cars = ("a1", "a2", "a3")
    await charging(controller, driver, clock, cars)
    keys: list[ConnectorKey] = [(cid, 1) for cid in cars]
    before = controller.counted()
    clock.advance(1)
    controller.handle(LimitChanged("c1", clock.now(), "operator", max_current=18.0))
    await driver.submitted(3)
    cycles_after_cut = len(cycles)
    assert controller.last_decision is not None and not controller.last_decision.held
    spy = Spy(controller.state)
    values = driver.answer_all()
    assert all(v < before[k] for k, v in zip(keys, values, strict=True))
    # resolved but not folded in yet: still counted at the larger of old and new
    assert [controller.counted()[k] for k in keys] == [before[k] for k in keys]
    await controller.settle()
    assert spy.batches == [3]
    assert [controller.counted()[k] for k in keys] == values
    assert controller.commands_in_flight == 0
    assert len(cycles) == cycles_after_cut


async def test_a_held_increase_is_woken_by_the_batch_that_frees_its_room(
        rig: tuple[Controller, ManualDriver, list[CycleReport]], clock: FakeClock) -> None:
    """A second car arrives: the first car's decrease goes out, the newcomer's increase is
    held; the decrease's answer wakes a cycle that sends it."""
    controller, driver, _ = rig
    await charging(controller, driver, clock, ("a1",))
    clock.advance(1)
    controller.handle(StatusChanged("a2", 1, ConnectorStatus.CHARGING, clock.now()))
    await driver.submitted(1)
    ((request, _),) = driver.waiting
    assert request.charger == "a1"
    assert controller.last_decision is not None and controller.last_decision.held
    driver.answer_all()
    await driver.submitted(1)
    ((increase, _),) = driver.waiting
    assert increase.charger == "a2"
    assert increase.current_a == request.current_a


async def test_an_increase_whose_step_was_refused_is_woken_by_the_answers(
        rig: tuple[Controller, ManualDriver, list[CycleReport]], clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An increase that fits but whose step check_plan refused is not 'held' by the
    decision, yet it waits: the answers to the decreases of that cycle wake a cycle that
    sends it."""
    controller, driver, _ = rig
    await charging(controller, driver, clock, ("a1",))
    refusal = Alarm("c2", None, 20.0, 16.0, "group c2: refused by the test")
    real_check = guard.check_plan

    def check_plan(*args: Any) -> list[Alarm]:
        return [refusal] if ("b1", 1) in args[3] else real_check(*args)

    monkeypatch.setattr(guard, "check_plan", check_plan)
    clock.advance(1)
    controller.handle(LimitChanged("c1", clock.now(), "operator", max_current=20.0))
    controller.handle(StatusChanged("b1", 1, ConnectorStatus.CHARGING, clock.now()))
    await driver.submitted(1)
    ((decrease, _),) = driver.waiting
    assert (decrease.charger, decrease.current_a) == ("a1", 20.0)
    report = controller.last_report
    assert report is not None and report.refused == (refusal,)
    assert controller.last_decision is not None and not controller.last_decision.held
    monkeypatch.undo()
    driver.answer_all()
    await driver.submitted(1)
    ((increase, _),) = driver.waiting
    assert (increase.charger, increase.current_a) == ("b1", 16.0)


def test_a_lowered_reservation_still_wakes_when_nothing_waits(topology: Topology) -> None:
    """With nothing waiting (``wake_on_apply=False``), an accepted decrease of a connector
    with a car changes nothing the allocation decides on (no cycle); the same on an idle
    connector frees reserved headroom (a cycle). A refusal or an unknown outcome always
    calls for one."""
    state = SiteState(topology, settle_s=0.0)
    for cid in topology.chargers:
        state.apply(ChargerBooted(cid, t(0), "ocpp1.6"))
    state.apply(StatusChanged("a1", 1, ConnectorStatus.CHARGING, t(0)))

    def answer(key: ConnectorKey, amps: float, result: CommandResult,
               at_s: float) -> tuple[Effect, Impact]:
        command_id = state.record_sent(key, amps, t(at_s), 60)
        (effect,), impact = state.record_outcomes(
            [(key, command_id, CommandOutcome(result))], t(at_s), 0.0, wake_on_apply=False)
        return effect, impact

    assert answer(("a1", 1), 16.0, CommandResult.ACCEPTED, 1) == (Effect.APPLIED,
                                                                  Impact.NONE)
    assert answer(("a1", 1), 10.0, CommandResult.ACCEPTED, 2) == (Effect.APPLIED,
                                                                  Impact.NONE)
    assert state.believed_a(("a1", 1), t(2)) == 10.0
    assert answer(("a2", 1), 0.0, CommandResult.ACCEPTED, 3) == (Effect.APPLIED,
                                                                 Impact.CHANGED)
    assert answer(("a1", 1), 8.0, CommandResult.REJECTED, 4) == (Effect.REJECTED,
                                                                 Impact.CHANGED)
    assert answer(("a1", 1), 8.0, CommandResult.TIMEOUT, 5) == (Effect.UNKNOWN,
                                                                Impact.URGENT)
    assert state.believed_a(("a1", 1), t(5)) == 10.0  # the profile in force, still counted
