"""Small hand-built sites with exact expected setpoints, one behaviour each. The first
failures hypothesis found were reduced to cases here, so each is also a reproducer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from gridshare.core.allocation import allocate
from gridshare.core.decision import RotationState
from gridshare.core.snapshot import ConnectorDemand, GroupConditions, Snapshot
from gridshare.core.topology import Charger, Connector, Group, Phase, Policy, Topology

from .invariants import (
    Model,
    conservation_problems,
    deadline_problems,
    equal_problems,
    priority_problems,
    proportional_problems,
    safety_problems,
)
from .strategies import BASE_TIME


@dataclass(frozen=True)
class Car:
    charger: str
    phases: int = 3
    phase: Phase | None = None
    max_current: float = 16
    min_current: float = 6
    failsafe: float = 0
    priority: int = 0
    online: bool = True
    active: bool = True
    ev_max: float | None = None
    arrival_s: int | None = None
    energy_kwh: float | None = None
    departure_s: int | None = None


@dataclass(frozen=True)
class Site:
    """One group holding every car (nested sites are built in the tests that need them)."""

    limit_a: float | None
    cars: tuple[Car, ...]
    limit_kw: float | None = None
    conditions: GroupConditions = field(default_factory=GroupConditions)

    def topology(self) -> Topology:
        chargers = {
            c.charger: Charger(c.charger, c.phases, c.phase if c.phases == 1 else None,
                               c.max_current, c.min_current, c.failsafe, c.priority,
                               (Connector(c.charger, 1, c.max_current, c.min_current),),
                               group="g")
            for c in self.cars}
        group = Group("g", self.limit_a, self.limit_kw, 3, Policy.EQUAL, None,
                      chargers=tuple(chargers))
        return Topology("t", 230, Policy.EQUAL, {"g": group}, chargers, ("g",))

    def snapshot(self, seconds: float = 0) -> Snapshot:
        now = BASE_TIME + timedelta(seconds=seconds)
        return Snapshot(now, {
            (c.charger, 1): ConnectorDemand(
                c.charger, 1, active=c.active, max_current=c.ev_max, online=c.online,
                arrival=None if c.arrival_s is None else now - timedelta(seconds=c.arrival_s),
                energy_needed_kwh=c.energy_kwh,
                departure=(None if c.departure_s is None
                           else now + timedelta(seconds=c.departure_s)))
            for c in self.cars}, {"g": self.conditions})


def setpoints(site: Site, policy: Policy, seconds: float = 0) -> dict[str, float]:
    topo, snap = site.topology(), site.snapshot(seconds)
    alloc = allocate(topo, snap, policy=policy)
    model = Model.build(topo, snap)
    problems = safety_problems(model, alloc.setpoints, {a.group for a in alloc.alarms})
    assert not problems, problems
    return {k[0]: v for k, v in alloc.setpoints.items()}


TABLE = [
    pytest.param(Site(40, (Car("a"), Car("b"), Car("c", ev_max=10))), Policy.EQUAL,
                 {"a": 15.0, "b": 15.0, "c": 10.0}, id="equal-ev-max-frees-room"),
    pytest.param(Site(30, (Car("a", max_current=32), Car("b", max_current=16))),
                 Policy.PROPORTIONAL, {"a": 20.0, "b": 10.0}, id="proportional-same-fraction"),
    pytest.param(Site(30, (Car("a", max_current=32), Car("b", max_current=16))),
                 Policy.EQUAL, {"a": 15.0, "b": 15.0}, id="equal-same-amps"),
    pytest.param(Site(None, (Car("a"), Car("b", phases=1, phase=Phase.L2)), limit_kw=9.2),
                 Policy.EQUAL, {"a": 10.0, "b": 10.0}, id="equal-in-amps-under-a-kw-limit"),
    pytest.param(Site(22, (Car("a", arrival_s=600), Car("b", arrival_s=60))),
                 Policy.PRIORITY, {"a": 16.0, "b": 6.0}, id="priority-tie-first-come"),
    pytest.param(Site(22, (Car("a", priority=0), Car("b", priority=2))), Policy.PRIORITY,
                 {"a": 6.0, "b": 16.0}, id="priority-larger-first"),
    pytest.param(Site(32, (Car("a", phases=1, phase=Phase.L1), Car("b", phases=1,
                                                                    phase=Phase.L2))),
                 Policy.EQUAL, {"a": 16.0, "b": 16.0}, id="other-phases-do-not-share"),
    pytest.param(Site(20, (Car("a"), Car("b")), conditions=GroupConditions(
                     uncontrolled=(0, 8, 0))), Policy.EQUAL, {"a": 6.0, "b": 6.0},
                 id="uncontrolled-load-on-one-phase-binds-three-phase-cars"),
    pytest.param(Site(32, (Car("a"), Car("b")), conditions=GroupConditions(meter_stale=True)),
                 Policy.EQUAL, {"a": 0.0, "b": 0.0}, id="stale-meter-fails-closed"),
    pytest.param(Site(32, (Car("a", online=False, failsafe=10), Car("b"))), Policy.EQUAL,
                 {"a": 10.0, "b": 16.0}, id="offline-at-failsafe"),
    pytest.param(Site(6, (Car("a", energy_kwh=20, departure_s=7200), Car("b"))),
                 Policy.DEADLINE, {"a": 6.0, "b": 0.0}, id="deadline-urgent-car-admitted"),
]


@pytest.mark.parametrize(("site", "policy", "expected"), TABLE)
def test_table(site: Site, policy: Policy, expected: dict[str, float]) -> None:
    assert setpoints(site, policy) == pytest.approx(expected)


# -- reproducers of engine bugs found by the property tests ----------------------------------


def test_offline_overload_pauses_what_loads_the_overloaded_phase() -> None:
    """A group that its offline chargers alone overload on L3 cannot be saved on L3: every
    online connector that loads L3 pauses and an alarm names the group. A 1-phase charger
    on L1 adds nothing to L3, so it keeps charging within L1's room."""
    site = Site(12, (Car("off", online=False, failsafe=6),
                     Car("on-l1", phases=1, phase=Phase.L1),
                     Car("on-3p")),
                conditions=GroupConditions(uncontrolled=(0, 0, 6.1)))
    topo, snap = site.topology(), site.snapshot()
    alloc = allocate(topo, snap)
    assert {(a.group, a.phase) for a in alloc.alarms} == {("g", Phase.L3)}
    assert alloc.setpoints[("on-3p", 1)] == 0.0
    assert alloc.setpoints[("on-l1", 1)] == 6.0


def test_offline_overload_alarm_reports_load_and_limit() -> None:
    """An alarm carries the overloaded phase, the load and the limit it breaks."""
    site = Site(12, (Car("off", online=False, failsafe=6), Car("on")),
                conditions=GroupConditions(uncontrolled=(0, 0, 6.1)))
    alloc = allocate(site.topology(), site.snapshot())
    (alarm,) = alloc.alarms
    assert alarm.group == "g"
    assert alarm.phase is Phase.L3
    assert alarm.load == pytest.approx(6.0)
    assert alarm.limit == pytest.approx(5.9)


def test_priority_lower_priority_gets_nothing_a_higher_one_could_take() -> None:
    """Spec invariant 4 (priority): 12 A for two cars of 6-16 A. The priority-2 car could
    take all 12 A; the priority-0 car must not keep its 6 A minimum meanwhile."""
    site = Site(12, (Car("low", priority=0), Car("high", priority=2)))
    assert setpoints(site, Policy.PRIORITY) == {"low": 0.0, "high": 12.0}


def test_deadline_required_rate_comes_first() -> None:
    """Policy.DEADLINE: the urgent car (20 kWh in 2 h = 14.5 A on 3 phases) gets its
    required rate before the car without a deadline gets anything; 1.5 A left is below
    the other car's 6 A minimum, so it pauses."""
    site = Site(16, (Car("urgent", energy_kwh=20, departure_s=7200), Car("relaxed")))
    got = setpoints(site, Policy.DEADLINE)
    assert got["urgent"] >= 14.4
    assert got["relaxed"] == 0.0


def test_zero_minimum_connector_does_not_starve() -> None:
    """Spec invariant 5: a connector whose minimum is 0 A is always "admitted" but gets
    0 A while another car's 6 A minimum fills the group; it must get its turn."""
    site = Site(6, (Car("six"), Car("zero", min_current=0, max_current=32)))
    topo = site.topology()
    rotation: RotationState | None = None
    charged = set()
    for n in range(4):
        alloc = allocate(topo, site.snapshot(n * topo.rotation_interval_s), rotation=rotation)
        rotation = alloc.rotation
        charged |= {k[0] for k, v in alloc.setpoints.items() if v > 0}
    assert charged == {"six", "zero"}


def test_mixed_policies_unused_subtree_budget_goes_back_to_siblings() -> None:
    """Spec invariant 3 with policy=None: ``main`` (equal, 6.1 A) first gives its 6 A to the
    3-phase car of ``sub`` (priority); ``sub`` re-shares that to its priority-1 car on L1
    and pauses the 3-phase one, so L2 and L3 of the budget go unused, while the car on L2
    directly under ``main`` must then get the 6.1 A free on its phase."""
    def charger(cid: str, group: str, phase: Phase | None, priority: int) -> Charger:
        return Charger(cid, 1 if phase is not None else 3, phase, 16, 6, 0, priority,
                       (Connector(cid, 1, 16, 6),), group=group)

    chargers = {"three": charger("three", "sub", None, 0),
                "l1": charger("l1", "sub", Phase.L1, 1),
                "l2": charger("l2", "main", Phase.L2, 0)}
    groups = {
        "main": Group("main", 6.1, None, 3, Policy.EQUAL, None, groups=("sub",),
                      chargers=("l2",)),
        "sub": Group("sub", 6, None, 3, Policy.PRIORITY, "main", chargers=("three", "l1")),
    }
    topo = Topology("t", 230, Policy.EQUAL, groups, chargers, ("main",))
    snap = Snapshot(BASE_TIME, {(c, 1): ConnectorDemand(c, 1, active=True) for c in chargers})
    alloc = allocate(topo, snap)
    assert {k[0]: v for k, v in alloc.setpoints.items()} == pytest.approx(
        {"three": 0.0, "l1": 6.0, "l2": 6.1})


def test_top_up_after_rounding_stays_fair() -> None:
    """Spec invariant 4 (equal): connectors sharing the binding constraint with the same
    bounds differ by at most one step. 28.87 kW for two 1-phase and two 3-phase connectors
    gives 15.69 A each; after rounding down, 0.166 kW is left: one step of every 1-phase
    connector costs 0.023 kW, so the two 1-phase ones can both reach 15.8 A (one 3-phase at
    15.7 A), not one 15.9 A and the other 15.7 A."""
    def charger(cid: str, phase: Phase | None) -> Charger:
        return Charger(cid, 1 if phase is not None else 3, phase, 32, 6, 0, 0,
                       (Connector(cid, 1, 32, 6), Connector(cid, 2, 32, 6)), group="g")

    chargers = {"one": charger("one", Phase.L1), "three": charger("three", None)}
    group = Group("g", None, 28.87, 3, Policy.EQUAL, None, chargers=("one", "three"))
    topo = Topology("t", 230, Policy.EQUAL, {"g": group}, chargers, ("g",))
    snap = Snapshot(BASE_TIME, {(c, n): ConnectorDemand(c, n, active=True)
                                for c in chargers for n in (1, 2)})
    alloc = allocate(topo, snap)
    one = sorted((alloc.setpoints[("one", 1)], alloc.setpoints[("one", 2)]))
    three = sorted((alloc.setpoints[("three", 1)], alloc.setpoints[("three", 2)]))
    assert one[1] - one[0] <= 0.1 + 1e-9, one
    assert three[1] - three[0] <= 0.1 + 1e-9, three
    assert alloc.groups["g"].power_kw > 28.87 - 0.023  # and nothing a 1-phase step could use


def test_top_up_follows_the_policy_level_not_amps() -> None:
    """Spec invariant 4 (proportional): left-over steps after rounding go to the lowest
    fraction of its maximum, not the lowest current. 5.7 kW for a 5 A car and two 63 A
    cars (1- and 3-phase, 6 A minimum) is 9.6 % each: 0.48 A and 6.07 A. The small car
    must not end at 0.6 A (12 %) while the big 1-phase car could take that step at 9.7 %."""
    def charger(cid: str, phase: Phase | None, top: float, low: float) -> Charger:
        return Charger(cid, 1 if phase is not None else 3, phase, top, low, 0, 0,
                       (Connector(cid, 1, top, low),), group="g")

    chargers = {"small": charger("small", Phase.L1, 5, 0),
                "big": charger("big", Phase.L1, 63, 6),
                "three": charger("three", None, 63, 6)}
    group = Group("g", None, 5.7, 3, Policy.PROPORTIONAL, None, chargers=tuple(chargers))
    topo = Topology("t", 230, Policy.PROPORTIONAL, {"g": group}, chargers, ("g",))
    snap = Snapshot(BASE_TIME, {(c, 1): ConnectorDemand(c, 1, active=True) for c in chargers})
    alloc = allocate(topo, snap)
    assert not proportional_problems(Model.build(topo, snap), alloc.setpoints)
    assert alloc.setpoints[("small", 1)] <= 0.5 + 1e-9


def test_priority_room_a_paused_car_held_goes_to_the_next() -> None:
    """Spec invariant 3 (priority): 12.1 A per phase; ``a`` (priority 2, L1) takes all of
    L1, so ``b`` (priority 1, 3-phase) cannot have its 6 A on L1 and pauses; ``c``
    (priority 0, L2, 10 A minimum) must then get L2, which nobody else uses."""
    site = Site(12.1, (Car("a", phases=1, phase=Phase.L1, max_current=32, priority=2),
                       Car("b", priority=1),
                       Car("c", phases=1, phase=Phase.L2, max_current=32, min_current=10)))
    assert setpoints(site, Policy.PRIORITY) == pytest.approx({"a": 12.1, "b": 0.0,
                                                              "c": 12.1})


def test_left_over_steps_go_to_the_lowest_fraction() -> None:
    """Spec invariant 4 (proportional): 8.3 kW; two 1-phase 16 A connectors sit at their
    6 A minimum (37 % of their maximum), the 3-phase car gets 4.6 A (14 %), the 63 A
    1-phase car its 10 A minimum (16 %). 0.066 kW is left after rounding, not enough for
    a 3-phase step: both 1-phase steps (0.023 kW each) belong to the 63 A car (10.2 A,
    16 %), not to a 16 A connector already at 37 %."""
    chargers = {
        "three": Charger("three", 3, None, 32, 0, 0, 0, (Connector("three", 1, 32, 0),),
                         group="g"),
        "big": Charger("big", 1, Phase.L1, 63, 10, 0, 0, (Connector("big", 1, 63, 10),),
                       group="g"),
        "pair": Charger("pair", 1, Phase.L1, 16, 6, 0, 0,
                        (Connector("pair", 1, 16, 6), Connector("pair", 2, 16, 6)),
                        group="g"),
    }
    group = Group("g", None, 8.3, 3, Policy.PROPORTIONAL, None, chargers=tuple(chargers))
    topo = Topology("t", 230, Policy.PROPORTIONAL, {"g": group}, chargers, ("g",))
    keys = [("three", 1), ("big", 1), ("pair", 1), ("pair", 2)]
    snap = Snapshot(BASE_TIME, {k: ConnectorDemand(k[0], k[1], active=True) for k in keys})
    alloc = allocate(topo, snap)
    assert not proportional_problems(Model.build(topo, snap), alloc.setpoints)
    assert [alloc.setpoints[k] for k in keys] == pytest.approx([4.6, 10.2, 6.0, 6.0])


def test_priority_rounding_does_not_hand_a_higher_cars_room_down() -> None:
    """Spec invariant 4 (priority), a rounding edge: ``sub`` has 4.2 kW, which the
    priority-1 3-phase car fills to 6.09 A; rounded to 6.0 A it leaves 0.06 kW, room for
    0.2 A of the priority-1 1-phase car (0 A minimum). Serving in priority order must give
    it that before the priority-0 car under ``main`` takes the last of L1."""
    def charger(cid: str, phase: Phase | None, low: float, priority: int,
                group: str) -> Charger:
        return Charger(cid, 1 if phase is not None else 3, phase, 16, low, 0, priority,
                       (Connector(cid, 1, 16, low),), group=group)

    chargers = {"low": charger("low", None, 6, 0, "main"),
                "high3": charger("high3", None, 6, 1, "sub"),
                "high1": charger("high1", Phase.L1, 0, 1, "sub")}
    groups = {"main": Group("main", 12.1, None, 3, Policy.PRIORITY, None, groups=("sub",),
                            chargers=("low",)),
              "sub": Group("sub", None, 4.2, 3, Policy.PRIORITY, "main",
                           chargers=("high3", "high1"))}
    topo = Topology("t", 230, Policy.PRIORITY, groups, chargers, ("main",))
    snap = Snapshot(BASE_TIME, {(c, 1): ConnectorDemand(c, 1, active=True) for c in chargers})
    alloc = allocate(topo, snap)
    assert not priority_problems(Model.build(topo, snap), alloc.setpoints)
    assert alloc.setpoints[("high1", 1)] == pytest.approx(0.2)


def test_deadline_room_a_paused_urgent_car_held_goes_to_the_next_urgent() -> None:
    """Spec invariant 4 (deadline): 18 A per phase, an offline 3-phase charger drawing 2 × 3 A.
    The most urgent car (3-phase, 6 A) cannot keep its 6 A once the 1-phase L1 car with a
    deadline takes its required rate, so it pauses; the room it held on L2 must then go to
    the L2 car with a deadline (10 A minimum, 1.3 h of laxity), not to the L2 car without
    one (which gets 12 A while the urgent one waits)."""
    now = BASE_TIME
    departure = now + timedelta(hours=4)

    def charger(cid: str, phase: Phase | None, top: float,
                conns: tuple[tuple[float, float], ...], failsafe: float = 0) -> Charger:
        return Charger(cid, 1 if phase is not None else 3, phase, top,
                       min(c[1] for c in conns), failsafe, 0,
                       tuple(Connector(cid, n, mx, mn) for n, (mx, mn) in enumerate(conns, 1)),
                       group="g")

    chargers = {"off": charger("off", None, 6, ((6, 6), (6, 6)), failsafe=3),
                "three": charger("three", None, 6, ((6, 6), (6, 6))),
                "l2": charger("l2", Phase.L2, 32, ((16, 6), (32, 10))),
                "l1": charger("l1", Phase.L1, 63, ((63, 6), (63, 6)))}
    group = Group("g", 18, None, 3, Policy.DEADLINE, None, chargers=tuple(chargers))
    topo = Topology("t", 230, Policy.DEADLINE, {"g": group}, chargers, ("g",))
    demands = {("off", n): ConnectorDemand("off", n, active=True, online=False) for n in (1, 2)}
    for cid in ("three", "l2", "l1"):
        demands[(cid, 1)] = ConnectorDemand(cid, 1, active=True)
        demands[(cid, 2)] = ConnectorDemand(cid, 2, active=True, energy_needed_kwh=20,
                                            departure=departure,
                                            max_current=13.3 if cid == "l1" else None)
    snap = Snapshot(now, demands)
    alloc = allocate(topo, snap)
    assert not deadline_problems(Model.build(topo, snap), alloc.setpoints)
    assert alloc.setpoints[("l2", 2)] >= 10.0


def test_left_over_steps_skip_a_connector_held_at_its_minimum() -> None:
    """Spec invariant 4 (equal): 4.3 kW; ``pair`` has two L1 connectors, the second held
    up at its 10 A minimum, the first at its 6 A minimum; the 3-phase car gets 0.8 A. The
    0.068 kW left is two 1-phase steps: both belong to the 6 A connector (6.2 A), none to
    the one already at 10 A."""
    chargers = {
        "pair": Charger("pair", 1, Phase.L1, 63, 6, 0, 0,
                        (Connector("pair", 1, 16, 6), Connector("pair", 2, 63, 10)),
                        group="g"),
        "three": Charger("three", 3, None, 16, 0, 0, 0, (Connector("three", 1, 16, 0),),
                         group="g"),
    }
    group = Group("g", None, 4.3, 3, Policy.EQUAL, None, chargers=tuple(chargers))
    topo = Topology("t", 230, Policy.EQUAL, {"g": group}, chargers, ("g",))
    keys = [("pair", 1), ("pair", 2), ("three", 1)]
    snap = Snapshot(BASE_TIME, {k: ConnectorDemand(k[0], k[1], active=True) for k in keys})
    alloc = allocate(topo, snap)
    assert not equal_problems(Model.build(topo, snap), alloc.setpoints)
    assert [alloc.setpoints[k] for k in keys] == pytest.approx([6.2, 10.0, 0.8])


def test_deadline_group_leaves_no_phase_idle_that_a_paused_car_fits() -> None:
    """Spec invariant 3 (deadline, found on a random seed): 6.1 A; ``c`` (L1, 6 A max)
    needs 20 kWh within 4 h and takes L1; the 3-phase ``a`` cannot have its 6 A on L1 and
    pauses; ``b`` (L2, 6 A minimum) must then get L2, which nobody else uses."""
    def charger(cid: str, phase: Phase | None, top: float) -> Charger:
        return Charger(cid, 1 if phase is not None else 3, phase, top, 6, 0, 0,
                       (Connector(cid, 1, top, 6),), group="g")

    chargers = {"a": charger("a", None, 16), "b": charger("b", Phase.L2, 16),
                "c": charger("c", Phase.L1, 6)}
    group = Group("g", 6.1, None, 3, Policy.DEADLINE, None, chargers=tuple(chargers))
    topo = Topology("t", 230, Policy.EQUAL, {"g": group}, chargers, ("g",))
    demands = {(c, 1): ConnectorDemand(c, 1, active=True) for c in ("a", "b")}
    demands[("c", 1)] = ConnectorDemand("c", 1, active=True, energy_needed_kwh=20,
                                        departure=BASE_TIME + timedelta(hours=4))
    snap = Snapshot(BASE_TIME, demands)
    alloc = allocate(topo, snap)
    model = Model.build(topo, snap)
    assert not conservation_problems(model, alloc.setpoints)
    assert {k[0]: v for k, v in alloc.setpoints.items()} == pytest.approx(
        {"a": 0.0, "b": 6.1, "c": 6.0})


def test_priority_takes_whole_steps_in_order() -> None:
    """Spec invariant 3 (priority, 1 A steps, found on a random seed): 7.1 A with 5.2 A of
    uncontrolled load on L3. ``cp4`` (3-phase, 0 A minimum) comes first and can use 1.9 A
    of L3, so 1 A on the grid; ``cp5`` (L1, 6 A minimum) must then get the 6.1 A left on
    L1, not be paused for the 0.9 A ``cp4`` could not use."""
    def charger(cid: str, phase: Phase | None, low: float) -> Charger:
        return Charger(cid, 1 if phase is not None else 3, phase, 16, low, 0, 0,
                       (Connector(cid, 1, 16, low),), group="g")

    chargers = {"cp4": charger("cp4", None, 0), "cp5": charger("cp5", Phase.L1, 6)}
    group = Group("g", 7.1, None, 3, Policy.PRIORITY, None, chargers=tuple(chargers))
    topo = Topology("t", 230, Policy.EQUAL, {"g": group}, chargers, ("g",),
                    resolution_a=1.0)
    snap = Snapshot(BASE_TIME, {(c, 1): ConnectorDemand(c, 1, active=True) for c in chargers},
                    {"g": GroupConditions(uncontrolled=(0, 0, 5.2))})
    alloc = allocate(topo, snap)
    model = Model.build(topo, snap)
    assert not conservation_problems(model, alloc.setpoints)
    assert {k[0]: v for k, v in alloc.setpoints.items()} == pytest.approx(
        {"cp4": 1.0, "cp5": 6.0})


def test_left_over_steps_go_one_at_a_time_not_in_rounds() -> None:
    """Spec invariant 4 (equal, found on a random seed): 19.8 kW for a 5 A car and two
    pairs (1-phase on L1, 3-phase) at 10.13 A each. Rounded down to 10.1 A, 0.066 kW is
    left: two 1-phase steps (0.023 kW each), not enough for a 3-phase one. Handing steps
    out in rounds gave the 1-phase pair 10.5 A while the 3-phase pair stayed at 10.0 A."""
    def charger(cid: str, phase: Phase | None, top: float,
                conns: tuple[tuple[float, float], ...]) -> Charger:
        return Charger(cid, 1 if phase is not None else 3, phase, top,
                       min(c[1] for c in conns), 0, 0,
                       tuple(Connector(cid, n, mx, mn) for n, (mx, mn) in enumerate(conns, 1)),
                       group="g")

    chargers = {"small": charger("small", Phase.L1, 63, ((63, 1),)),
                "one": charger("one", Phase.L1, 63, ((16, 6), (63, 10))),
                "three": charger("three", None, 32, ((16, 6), (32, 10)))}
    group = Group("g", None, 19.8, 3, Policy.EQUAL, None, chargers=tuple(chargers))
    topo = Topology("t", 230, Policy.EQUAL, {"g": group}, chargers, ("g",))
    keys = [("small", 1), ("one", 1), ("one", 2), ("three", 1), ("three", 2)]
    demands = {k: ConnectorDemand(k[0], k[1], active=True) for k in keys}
    demands[("small", 1)] = ConnectorDemand("small", 1, active=True, max_current=5.0)
    snap = Snapshot(BASE_TIME, demands)
    alloc = allocate(topo, snap)
    assert not equal_problems(Model.build(topo, snap), alloc.setpoints)
    assert [alloc.setpoints[k] for k in keys] == pytest.approx([5.0, 10.2, 10.2, 10.1, 10.1])


def test_left_over_steps_go_to_the_lowest_even_past_its_continuous_share() -> None:
    """Spec invariant 4 (equal, found on a random seed): ``a`` (3-phase) under ``g0``
    (21.1 A), ``b`` (3-phase) and ``c`` (L1, two connectors, one paused) under ``g1``
    (6.4 kW). Continuously ``g1`` holds ``b`` and ``c`` at 6.96 A and ``a`` gets 7.19 A;
    on the grid ``g1`` still has room for ``c`` at 7.1 A, so the last L1 step is ``c``'s,
    not a step lifting ``a`` to 7.2 A over ``c`` at 7.0 A (largest remainder did that)."""
    def charger(cid: str, phase: Phase | None, top: float, conns: int, group: str) -> Charger:
        return Charger(cid, 1 if phase is not None else 3, phase, top, 6, 0, 0,
                       tuple(Connector(cid, n, top, 6) for n in range(1, conns + 1)),
                       group=group)

    chargers = {"a": charger("a", None, 16, 1, "g0"), "b": charger("b", None, 16, 1, "g1"),
                "c": charger("c", Phase.L1, 63, 2, "g1")}
    groups = {"g0": Group("g0", 21.1, None, 3, Policy.EQUAL, None, groups=("g1",),
                          chargers=("a",)),
              "g1": Group("g1", None, 6.4, 3, Policy.EQUAL, "g0", chargers=("b", "c"))}
    topo = Topology("t", 230, Policy.EQUAL, groups, chargers, ("g0",))
    keys = [("a", 1), ("b", 1), ("c", 1), ("c", 2)]
    snap = Snapshot(BASE_TIME, {k: ConnectorDemand(k[0], k[1], active=True) for k in keys})
    alloc = allocate(topo, snap)
    assert not equal_problems(Model.build(topo, snap), alloc.setpoints)
    assert [alloc.setpoints[k] for k in keys] == pytest.approx([7.1, 6.9, 7.1, 0.0])
