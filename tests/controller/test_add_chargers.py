"""Chargers added to a running controller (an operator adopted them): everything known of
the others stays, the new one counts at its failsafe until it is controlled, and a full
group makes room by lowering the others first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.clock import FakeClock
from gridshare.config import parse_site
from gridshare.controller.loop import Controller, CycleReport
from gridshare.core import guard
from gridshare.core.additions import InDrZone, NotAnAddition, added_chargers
from gridshare.core.topology import Topology
from gridshare.events import ChargerBooted, ConnectorStatus, StatusChanged

from .conftest import SITE, RecordingDriver
from .test_loop import FAST, arrive, assert_safe, boot

ADOPTED = SITE.replace("chargers: [a1, a2, a3]}", "chargers: [a1, a2, a3, a4]}") + \
    "  - {id: a4, max_current: 32, phases: 3, failsafe_current: 6}\n"


@pytest.fixture
async def controller(topology: Topology, driver: RecordingDriver,
                     clock: FakeClock) -> AsyncIterator[Controller]:
    c = Controller(topology, driver, clock, settings=FAST)
    await c.start()
    yield c
    await c.stop()


def test_added_chargers_only_takes_additions(topology: Topology) -> None:
    assert added_chargers(topology, parse_site(ADOPTED)) == ("a4",)
    assert added_chargers(topology, topology) == ()
    for changed, words in (
            (SITE.replace("max_current: 63", "max_current: 64"), "group main changed"),
            (SITE.replace("failsafe_current: 0", "failsafe_current: 1"), "charger b2 changed"),
            (SITE.replace("site: test", "site: other"), "site changed"),
            (SITE.replace("[b1, b2]", "[b1]").replace(
                "  - {id: b2, max_current: 32, phases: 3, failsafe_current: 0}\n", ""),
             "chargers removed")):
        with pytest.raises(NotAnAddition, match=words):
            added_chargers(topology, parse_site(changed))


def test_a_charger_in_a_dr_zone_or_new_zones_take_a_restart() -> None:
    """Demand response splits a zone's reduction among the stations it knew when an event
    began, so a station cannot join a zone live, nor can zones change."""
    zoned = SITE.replace("chargers:\n", "zones: [{id: Z1}]\nchargers:\n", 1)
    before = parse_site(zoned)
    with pytest.raises(InDrZone, match="a4 is in demand-response zone Z1"):
        added_chargers(before, parse_site(ADOPTED.replace(
            "chargers:\n", "zones: [{id: Z1}]\nchargers:\n", 1).replace(
            "a4, max_current: 32, phases: 3, failsafe_current: 6}",
            "a4, max_current: 32, phases: 3, failsafe_current: 6, zone: Z1}")))
    assert added_chargers(before, parse_site(ADOPTED.replace(
        "chargers:\n", "zones: [{id: Z1}]\nchargers:\n", 1))) == ("a4",)
    with pytest.raises(NotAnAddition, match="zones changed"):
        added_chargers(parse_site(SITE), parse_site(zoned))


async def test_adopted_charger_in_a_full_group_lowers_the_others_first(
        controller: Controller, driver: RecordingDriver, clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1", "a2", "a3")
    assert sorted(driver.last(c) or 0 for c in ("a1", "a2", "a3")) == [10.6, 10.7, 10.7]
    before = {k: controller.state.commands_of(k) for k in (("a1", 1), ("a2", 1), ("a3", 1))}
    driver.clear()
    for cid in ("a1", "a2", "a3"):
        driver.gates[cid] = asyncio.Event()

    reports: list[CycleReport] = []
    controller.on_cycle(reports.append)
    assert controller.add_chargers(parse_site(ADOPTED)) == ("a4",)
    # everything known of the others is kept, as it was
    assert {k: controller.state.commands_of(k) for k in before} == before
    assert controller.state.active(("a1", 1)) and controller.state.online("a1")
    await asyncio.sleep(0.05)
    # a4 is offline and counted at its 6 A failsafe: the circuit's 32 A leaves 26 A
    assert controller.allocation is not None
    assert ("a4", 1) in controller.allocation.offline
    assert sorted(x.current_a or 0 for x in driver.setpoints()) == [8.6, 8.7, 8.7]
    assert_safe(controller)
    # the first cycle after the change: the guard had nothing to correct, the plan check
    # refused nothing, and it sent decreases only
    first = reports[0]
    assert not first.allocation.guarded and first.refused == ()
    assert first.decision.increases == () and len(first.decision.decreases) == 3
    assert guard.check(controller.topology, controller.state.to_snapshot(first.at),
                       first.allocation.setpoints) == []

    # a4 boots and a car arrives while the decreases are unanswered: it gets its failsafe
    # and is held at 0 A when idle, but no increase goes out before the decreases land
    controller.handle(ChargerBooted("a4", clock.now(), "ocpp1.6"))
    controller.handle(StatusChanged("a4", 1, ConnectorStatus.CHARGING, clock.now()))
    await asyncio.sleep(0.05)
    assert all((x.current_a or 0) <= 6.0 for x in driver.setpoints("a4"))
    for gate in driver.gates.values():
        gate.set()
    await controller.settle()
    decreases = [x for x in driver.setpoints() if x.charger != "a4"]
    (increase,) = [x for x in driver.setpoints("a4") if (x.current_a or 0) > 6.0]
    assert increase.current_a == pytest.approx(8.0, abs=0.1)
    assert all(d.finished is not None and increase.started > d.finished for d in decreases)
    assert_safe(controller)


async def test_a_change_that_is_not_an_addition_changes_nothing(
        controller: Controller, topology: Topology) -> None:
    with pytest.raises(NotAnAddition):
        controller.add_chargers(parse_site(ADOPTED.replace("max_current: 63", "max_current: 1")))
    assert controller.topology is topology and controller.state.topology is topology
    assert ("a4", 1) not in controller.state.ledger.snapshot()


_STEPS = st.lists(st.tuples(
    st.sampled_from(["online", "offline", "car", "leave", "send", "accept", "timeout"]),
    st.sampled_from(["a1", "a2", "a3", "b1", "b2"]),
    st.floats(min_value=0, max_value=32, allow_nan=False).map(lambda x: round(x, 1))),
    max_size=30)


@settings(max_examples=60, deadline=None)
@given(steps=_STEPS)
def test_adding_a_charger_keeps_everything_known_of_the_others(
        steps: list[tuple[str, str, float]]) -> None:
    """Whatever happened before (sessions, commands in flight, accepted, unknown), adding
    a charger changes nothing the state says of the existing ones, and the new one counts
    at its failsafe, offline."""
    from gridshare.controller.state import SiteState
    from gridshare.drivers import CommandOutcome, CommandResult
    from gridshare.events import ChargerOffline, ChargerOnline

    from .conftest import t

    state = SiteState(parse_site(SITE), settle_s=5.0)
    sent: dict[tuple[str, int], list[int]] = {}
    for i, (what, cid, amps) in enumerate(steps):
        at, key = t(i), (cid, 1)
        if what == "online":
            state.apply(ChargerOnline(cid, at))
        elif what == "offline":
            state.apply(ChargerOffline(cid, at, "gone"))
        elif what in ("car", "leave"):
            status = ConnectorStatus.CHARGING if what == "car" else ConnectorStatus.AVAILABLE
            state.apply(StatusChanged(cid, 1, status, at))
        elif what == "send":
            sent.setdefault(key, []).append(state.record_sent(key, amps, at, 60.0))
        elif sent.get(key):
            result = CommandResult.ACCEPTED if what == "accept" else CommandResult.TIMEOUT
            state.record_outcome(key, sent[key].pop(0), CommandOutcome(result), at, 5.0)
    now = t(len(steps))
    old = parse_site(SITE)
    keys = [c.key for c in old.connectors()]

    def seen() -> object:
        snapshot, plan = state.snapshots(now)
        return ([(state.commands_of(k), state.believed_a(k, now), state.online(k[0]),
                  state.active(k), snapshot.connectors.get(k), plan.connectors.get(k))
                 for k in keys], {g: plan.groups.get(g) for g in old.groups})

    before = seen()
    assert state.add_chargers(parse_site(ADOPTED)) == ("a4",)
    assert seen() == before
    assert not state.online("a4")
    assert state.believed_a(("a4", 1), now) == 6.0
    demand = state.to_snapshot(now).connectors[("a4", 1)]
    assert (demand.online, demand.active) == (False, False)
