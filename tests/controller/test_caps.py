"""Per-connector caps (demand response) folded into site state, and the loop obeying them."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest

from gridshare.clock import FakeClock
from gridshare.controller.loop import Controller, ControllerSettings
from gridshare.controller.state import Impact, SiteState, StateSettings
from gridshare.core.allocation import allocate
from gridshare.core.topology import Topology
from gridshare.events import ChargingNeeds, ConnectorCapsChanged

from .conftest import RecordingDriver, t
from .test_loop import arrive, assert_safe, boot
from .test_state import boot_all, plug

A1, A2, A3 = ("a1", 1), ("a2", 1), ("a3", 1)
DR = "demand_response"


def caps(at_s: float, source: str = DR, **amps: float) -> ConnectorCapsChanged:
    return ConnectorCapsChanged(t(at_s), source, {(cid, 1): a for cid, a in amps.items()})


@pytest.fixture
def state(topology: Topology) -> SiteState:
    s = SiteState(topology)
    boot_all(s)
    plug(s, "a1", 1)
    plug(s, "a2", 1)
    return s


def setpoints(state: SiteState, at_s: float) -> dict[tuple[str, int], float]:
    return dict(allocate(state.topology, state.to_snapshot(t(at_s))).setpoints)


def test_a_cap_lowers_the_demand_maximum(state: SiteState) -> None:
    assert setpoints(state, 2)[A1] == 16.0  # c1's 32 A shared by a1 and a2
    assert state.apply(caps(2, a1=10.0)) is Impact.URGENT
    assert state.caps_of(A1) == 10.0 and state.caps_of(A2) is None
    assert state.to_snapshot(t(2)).demand(A1).max_current == 10.0
    got = setpoints(state, 2)
    assert got[A1] == 10.0 and got[A2] == 22.0  # what a1 cannot take goes to a2


def test_the_tighter_of_the_ev_maximum_and_the_cap(state: SiteState) -> None:
    state.apply(ChargingNeeds("a1", 1, t(2), max_current=8.0))
    state.apply(caps(2, a1=10.0))
    assert state.to_snapshot(t(2)).demand(A1).max_current == 8.0
    state.apply(caps(3, a1=7.0))
    assert state.to_snapshot(t(3)).demand(A1).max_current == 7.0


def test_a_cap_below_the_minimum_pauses(state: SiteState) -> None:
    state.apply(caps(2, a1=5.9))  # the charger's minimum is 6 A
    assert state.to_snapshot(t(2)).demand(A1).max_current == 0.0
    got = setpoints(state, 2)
    assert got[A1] == 0.0 and got[A2] == 32.0
    state.apply(caps(3, a1=6.0))  # at the minimum: charges at it
    assert setpoints(state, 3)[A1] == 6.0
    state.apply(caps(4, a1=6.0 - 1e-9))  # a kW cap converted back to A, rounding: 6 A
    assert state.to_snapshot(t(4)).demand(A1).max_current == 6.0
    assert setpoints(state, 4)[A1] == 6.0


def test_clearing_restores(state: SiteState) -> None:
    state.apply(caps(2, a1=10.0, a2=10.0))
    assert state.apply(caps(3)) is Impact.CHANGED  # an empty set clears the source
    assert state.caps_of(A1) is None
    assert state.to_snapshot(t(3)).demand(A1).max_current is None
    got = setpoints(state, 3)
    assert got[A1] == got[A2] == 16.0


def test_a_key_left_out_is_no_longer_capped_by_that_source(state: SiteState) -> None:
    state.apply(caps(2, a1=10.0, a2=10.0))
    assert state.apply(caps(3, a1=10.0)) is Impact.CHANGED  # a2 released
    assert (state.caps_of(A1), state.caps_of(A2)) == (10.0, None)


def test_two_sources_the_tightest_wins(state: SiteState) -> None:
    state.apply(caps(2, a1=12.0))
    assert state.apply(caps(2, "operator", a1=8.0, a2=14.0)) is Impact.URGENT
    assert (state.caps_of(A1), state.caps_of(A2)) == (8.0, 14.0)
    assert state.cap_sources(A1) == {DR: 12.0, "operator": 8.0}
    got = setpoints(state, 2)
    assert (got[A1], got[A2]) == (8.0, 14.0)
    # DR lowering its own cap above the operator's changes nothing that counts
    assert state.apply(caps(3, a1=9.0)) is Impact.NONE
    assert state.caps_of(A1) == 8.0
    # the operator's cleared: DR's cap is the one in force again
    assert state.apply(caps(4, "operator")) is Impact.CHANGED
    assert (state.caps_of(A1), state.caps_of(A2)) == (9.0, None)


def test_impact_of_caps_on_idle_connectors_is_none(state: SiteState) -> None:
    assert state.apply(caps(2, a3=3.0)) is Impact.NONE  # no car there
    assert state.caps_of(A3) == 3.0
    plug(state, "a3", 3)
    assert state.to_snapshot(t(3)).demand(A3).max_current == 0.0  # below its 6 A minimum


@pytest.mark.parametrize("bad", [{("nope", 1): 5.0}, {("a1", 9): 5.0}, {A1: math.nan},
                                 {A1: -1.0}, {A1: math.inf}])
def test_a_bad_caps_event_is_refused_whole(state: SiteState,
                                           bad: dict[tuple[str, int], float]) -> None:
    state.apply(caps(2, a2=10.0))
    event = ConnectorCapsChanged(t(3), DR, {A1: 7.0, **bad})
    assert state.apply(event) is Impact.NONE
    assert (state.caps_of(A1), state.caps_of(A2)) == (None, 10.0)  # nothing half-applied
    assert sum(state.counters.rejected.values()) == 1


def test_demand_cache_follows_caps(state: SiteState) -> None:
    """The allocator re-reads only connectors whose demand object is new: a cap change must
    give a new object, an unchanged cap the same one."""
    first = state.to_snapshot(t(2)).demand(A1)
    assert state.to_snapshot(t(2)).demand(A1) is first
    state.apply(caps(2, a1=10.0))
    capped = state.to_snapshot(t(2)).demand(A1)
    assert capped is not first and capped.max_current == 10.0
    assert state.to_snapshot(t(3)).demand(A2) is state.to_snapshot(t(3)).demand(A2)
    state.apply(caps(3, a1=10.0))  # the same cap again: the same object
    assert state.to_snapshot(t(3)).demand(A1) is capped
    state.apply(caps(4))
    assert state.to_snapshot(t(4)).demand(A1).max_current is None
    # and the allocator, which caches by object, sees every step
    assert setpoints(state, 4)[A1] == 16.0
    state.apply(caps(5, a1=6.5))
    assert setpoints(state, 5)[A1] == 6.5
    state.apply(caps(6))
    assert setpoints(state, 6)[A1] == 16.0


# --- the control loop ---------------------------------------------------------------------

FAST = ControllerSettings(tick_s=None, debounce_s=0.005, lease_s=60.0, retry_backoff_s=5.0,
                          settle_s=0.0, state=StateSettings())


@pytest.fixture
async def controller(topology: Topology, driver: RecordingDriver,
                     clock: FakeClock) -> AsyncIterator[Controller]:
    c = Controller(topology, driver, clock, settings=FAST)
    await c.start()
    yield c
    await c.stop()


async def test_lowering_a_cap_is_a_decrease_sent_first(controller: Controller,
                                                       driver: RecordingDriver,
                                                       clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1", "a2")
    assert (driver.last("a1"), driver.last("a2")) == (16.0, 16.0)
    driver.clear()
    controller.handle(ConnectorCapsChanged(clock.now(), DR, {A1: 6.0}))
    await controller.settle()
    (down,) = driver.setpoints("a1")
    (up,) = driver.setpoints("a2")
    assert (down.current_a, up.current_a) == (6.0, 26.0)
    assert down.finished is not None and up.started > down.finished  # decrease first
    assert_safe(controller)
    driver.clear()
    controller.handle(ConnectorCapsChanged(clock.now(), DR, {}))  # the event ended
    await controller.settle()
    (down,) = driver.setpoints("a2")
    (up,) = driver.setpoints("a1")
    assert (down.current_a, up.current_a) == (16.0, 16.0)
    assert down.finished is not None and up.started > down.finished
    assert_safe(controller)


async def test_a_cap_below_the_minimum_pauses_the_car(controller: Controller,
                                                      driver: RecordingDriver,
                                                      clock: FakeClock) -> None:
    await boot(controller, clock)
    await arrive(controller, clock, "a1")
    assert driver.last("a1") == 32.0
    controller.handle(ConnectorCapsChanged(clock.now(), DR, {A1: 2.0}))
    await controller.settle()
    assert driver.last("a1") == 0.0
    assert controller.state.caps_of(A1) == 2.0
