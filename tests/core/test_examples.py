"""The worked examples of the product brief, from YAML through parse_site to setpoints:
the 100 A carport with four 40 A circuits, and a 14 kW house with an air conditioner."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from datetime import timedelta

import pytest

from gridshare.config import parse_site
from gridshare.core import guard
from gridshare.core.allocation import allocate
from gridshare.core.decision import Allocation, RotationState
from gridshare.core.snapshot import ConnectorDemand, GroupConditions, Snapshot
from gridshare.core.topology import ConnectorKey, Policy, Topology

from .invariants import (
    Model,
    conservation_problems,
    equal_problems,
    maximal_admission_problems,
    safety_problems,
)
from .strategies import BASE_TIME

PHASE_NAMES = ("L1", "L2", "L3")


def carport(phases: int = 3, policy: str = "equal") -> Topology:
    """Four 40 A circuits of five 32 A chargers (min 6 A) under a 100 A service. 1-phase
    chargers go round L1, L2, L3 in order (cp-1 on L1, cp-2 on L2, ...)."""
    circuits = "\n".join(
        f"      - id: circuit-{c}\n"
        f"        max_current: 40\n"
        f"        chargers: [{', '.join(f'cp-{5 * (c - 1) + i}' for i in range(1, 6))}]"
        for c in range(1, 5))
    chargers = "\n".join(
        f"  - id: cp-{i}\n"
        f"    max_current: 32\n"
        f"    min_current: 6\n"
        f"    phases: {phases}\n"
        + (f"    phase: {PHASE_NAMES[(i - 1) % 3]}\n" if phases == 1 else "")
        + "    failsafe_current: 6\n"
          "    priority: 1\n"
          "    connectors: 1"
        for i in range(1, 21))
    text = (f"site: carport\nvoltage: 230\npolicy: {policy}\nrotation_interval: 900\n"
            f"groups:\n  - id: service\n    max_current: 100\n    phases: 3\n    groups:\n"
            f"{circuits}\nchargers:\n{chargers}\n")
    return parse_site(text, "carport.yaml")


def demand(*chargers: str, now_s: float = 0) -> Snapshot:
    return Snapshot(now=BASE_TIME + timedelta(seconds=now_s),
                    connectors={(c, 1): ConnectorDemand(c, 1, active=True) for c in chargers})


def every(n: int = 20) -> list[str]:
    return [f"cp-{i}" for i in range(1, n + 1)]


def charging(alloc: Allocation) -> dict[str, float]:
    return {k[0]: v for k, v in alloc.setpoints.items() if v > 0}


def assert_sound(topo: Topology, snap: Snapshot, alloc: Allocation) -> None:
    model = Model.build(topo, snap)
    problems = (safety_problems(model, alloc.setpoints, {a.group for a in alloc.alarms})
                + conservation_problems(model, alloc.setpoints))
    assert not problems, problems
    assert guard.check(topo, snap, alloc.setpoints) == []
    assert guard.enforce(topo, snap, alloc) is alloc


def circuit_loads(alloc: Allocation) -> Iterable[tuple[str, float]]:
    for c in range(1, 5):
        yield f"circuit-{c}", max(alloc.groups[f"circuit-{c}"].current)


# -- the carport ----------------------------------------------------------------------------


def test_carport_parses_as_described() -> None:
    topo = carport()
    assert topo.roots == ("service",)
    assert topo.groups["service"].groups == tuple(f"circuit-{c}" for c in range(1, 5))
    assert topo.charger_groups("cp-7") == ("circuit-2", "service")
    assert topo.chargers["cp-7"].max_current == 32
    assert topo.rotation_interval_s == 900
    assert topo.resolution_a == pytest.approx(0.1)


def test_carport_all_twenty_active_equal() -> None:
    """100 A / 20 = 5 A is below the 6 A minimum: 16 charge at 6.2-6.3 A (the service
    full to the last step), 4 pause."""
    topo = carport()
    snap = demand(*every())
    alloc = allocate(topo, snap)
    assert_sound(topo, snap, alloc)
    on = charging(alloc)
    assert len(on) == 16, on
    assert all(6.2 - 1e-9 <= v <= 6.3 + 1e-9 for v in on.values()), on
    service = alloc.groups["service"].current
    assert max(service) <= 100 + 1e-6
    assert min(service) >= 99.5, service
    for name, load in circuit_loads(alloc):
        assert load <= 40 + 1e-6, name
    model = Model.build(topo, snap)
    assert not equal_problems(model, alloc.setpoints)
    assert not maximal_admission_problems(model, alloc.setpoints)


def test_carport_pause_rotates_through_all_twenty() -> None:
    """Four pause at a time; each rotation pauses four others, so within five rotations
    every car has charged, and each rotation keeps 16 charging."""
    topo = carport()
    rotation: RotationState | None = None
    charged: set[str] = set()
    paused_sets = []
    for n in range(5):
        snap = demand(*every(), now_s=n * topo.rotation_interval_s)
        alloc = allocate(topo, snap, rotation=rotation)
        assert_sound(topo, snap, alloc)
        rotation = alloc.rotation
        on = charging(alloc)
        assert len(on) == 16
        charged |= set(on)
        paused_sets.append(frozenset(every()) - set(on))
    assert charged == set(every()), paused_sets
    assert all(a != b for a, b in itertools.pairwise(paused_sets))


def test_carport_paused_set_holds_between_rotations() -> None:
    topo = carport()
    first = allocate(topo, demand(*every()))
    rotation = first.rotation
    for seconds in (1, 60, 450, 899):
        later = allocate(topo, demand(*every(), now_s=seconds), rotation=rotation)
        assert later.setpoints == first.setpoints, seconds
        rotation = later.rotation


@pytest.mark.parametrize("policy", list(Policy))
def test_carport_two_in_different_circuits_get_their_own_max(policy: Policy) -> None:
    topo = carport()
    snap = demand("cp-1", "cp-6")
    alloc = allocate(topo, snap, policy=policy)
    assert_sound(topo, snap, alloc)
    assert charging(alloc) == {"cp-1": 32.0, "cp-6": 32.0}


@pytest.mark.parametrize("policy", [Policy.EQUAL, Policy.PROPORTIONAL])
def test_carport_two_in_the_same_circuit_share_it(policy: Policy) -> None:
    topo = carport()
    snap = demand("cp-1", "cp-2")
    alloc = allocate(topo, snap, policy=policy)
    assert_sound(topo, snap, alloc)
    assert charging(alloc) == {"cp-1": 20.0, "cp-2": 20.0}


def test_carport_four_in_one_circuit_one_elsewhere() -> None:
    """Circuit 1 binds at 40 A (10 A each); the fifth car takes its own 32 A."""
    topo = carport()
    snap = demand("cp-1", "cp-2", "cp-3", "cp-4", "cp-20")
    alloc = allocate(topo, snap)
    assert_sound(topo, snap, alloc)
    assert charging(alloc) == {"cp-1": 10.0, "cp-2": 10.0, "cp-3": 10.0, "cp-4": 10.0,
                               "cp-20": 32.0}


def test_carport_single_phase_all_active() -> None:
    """1-phase chargers round L1/L2/L3: 7 on L1, 7 on L2, 6 on L3; the service holds per
    phase and each phase is used to the last step."""
    topo = carport(phases=1)
    snap = demand(*every())
    alloc = allocate(topo, snap)
    assert_sound(topo, snap, alloc)
    on = charging(alloc)
    assert len(on) == 20
    service = alloc.groups["service"].current
    for phase in range(3):
        assert 99.5 <= service[phase] <= 100 + 1e-6, service
    assert all(14.2 - 1e-9 <= on[f"cp-{i}"] <= 14.3 + 1e-9 for i in (1, 4, 7, 2, 5)), on
    assert all(16.6 - 1e-9 <= on[f"cp-{i}"] <= 16.7 + 1e-9 for i in (3, 6, 9)), on
    for name, load in circuit_loads(alloc):
        assert load <= 40 + 1e-6, name


def test_carport_single_phase_same_circuit_same_phase_share() -> None:
    topo = carport(phases=1)
    snap = demand("cp-1", "cp-4")  # both on L1, both in circuit 1
    alloc = allocate(topo, snap)
    assert_sound(topo, snap, alloc)
    assert charging(alloc) == {"cp-1": 20.0, "cp-4": 20.0}


def test_carport_single_phase_same_circuit_other_phases_do_not_share() -> None:
    topo = carport(phases=1)
    snap = demand("cp-1", "cp-2", "cp-3")  # L1, L2, L3 in circuit 1
    alloc = allocate(topo, snap)
    assert_sound(topo, snap, alloc)
    assert charging(alloc) == {"cp-1": 32.0, "cp-2": 32.0, "cp-3": 32.0}


def test_carport_offline_charger_counts_at_failsafe() -> None:
    """cp-2 lost contact and may draw its 6 A failsafe: the three active cars of circuit 1
    share the 34 A it leaves (11.3 A each, the last 0.1 A step to one of them)."""
    topo = carport()
    offline = {("cp-2", 1): ConnectorDemand("cp-2", 1, active=True, online=False)}
    active = {(c, 1): ConnectorDemand(c, 1, active=True) for c in ("cp-1", "cp-3", "cp-4")}
    snap = Snapshot(now=BASE_TIME, connectors={**offline, **active})
    alloc = allocate(topo, snap)
    assert_sound(topo, snap, alloc)
    assert alloc.setpoints[("cp-2", 1)] == 6.0
    assert alloc.offline == frozenset({("cp-2", 1)})
    shares = sorted(v for k, v in charging(alloc).items() if k != "cp-2")
    assert shares == pytest.approx([11.3, 11.3, 11.4])
    assert max(alloc.groups["circuit-1"].current) == pytest.approx(40.0)


# -- the house ------------------------------------------------------------------------------


HOUSE_KW = """
site: house
voltage: 230
policy: equal
rotation_interval: 900
groups:
  - id: house
    max_power: 14
    phases: 3
    chargers: [ev-1, ev-2]
chargers:
  - {id: ev-1, max_current: 16, min_current: 6, phases: 3, failsafe_current: 0}
  - {id: ev-2, max_current: 16, min_current: 6, phases: 3, failsafe_current: 0}
"""

HOUSE_AMPS = HOUSE_KW.replace("max_power: 14", "max_current: 20")

# (seconds, air conditioner A per phase, expected setpoints of ev-1 and ev-2 as a sorted
# pair): 14 kW / 0.69 kW per A = 20.3 A for both cars.
AC_KW_SERIES = [
    (0, (0.0, 0.0, 0.0), (10.1, 10.1)),       # 20.29 A → 10.1 each
    (60, (5.0, 5.0, 5.0), (7.6, 7.6)),        # 10.55 kW left → 15.29 A → 7.6 each
    (120, (10.0, 10.0, 10.0), (0.0, 10.2)),   # 7.1 kW → 10.29 A: 5.1 each < 6, one pauses
    (180, (20.0, 20.0, 20.0), (0.0, 0.0)),    # 0.2 kW left: both pause
    (240, (12.0, 0.0, 0.0), (8.1, 8.1)),      # 1-phase AC: 11.24 kW → 16.29 A
    (300, (0.0, 0.0, 0.0), (10.1, 10.1)),     # AC off: both recover
]


def house_snapshot(seconds: float, ac: tuple[float, float, float]) -> Snapshot:
    return Snapshot(
        now=BASE_TIME + timedelta(seconds=seconds),
        connectors={(e, 1): ConnectorDemand(e, 1, active=True) for e in ("ev-1", "ev-2")},
        groups={"house": GroupConditions(uncontrolled=ac)})


def _setpoint_pair(alloc: Allocation) -> tuple[float, float]:
    a, b = sorted((alloc.setpoints[("ev-1", 1)], alloc.setpoints[("ev-2", 1)]))
    return a, b


def test_house_kw_limit_with_air_conditioner() -> None:
    topo = parse_site(HOUSE_KW, "house.yaml")
    assert topo.groups["house"].max_power_kw == 14
    rotation: RotationState | None = None
    for seconds, ac, expected in AC_KW_SERIES:
        snap = house_snapshot(seconds, ac)
        alloc = allocate(topo, snap, rotation=rotation)
        rotation = alloc.rotation
        assert_sound(topo, snap, alloc)
        total_kw = alloc.groups["house"].power_kw + 230 * sum(ac) / 1000
        assert total_kw <= 14 + 1e-6, (seconds, total_kw)
        assert _setpoint_pair(alloc) == pytest.approx(expected), (seconds, ac)


def test_house_amp_limit_with_air_conditioner() -> None:
    """The same house as a 3-phase 20 A supply: the AC's phase is the one that binds."""
    topo = parse_site(HOUSE_AMPS, "house.yaml")
    series = [
        (0, (0.0, 0.0, 0.0), (10.0, 10.0)),
        (60, (5.0, 5.0, 5.0), (7.5, 7.5)),
        (120, (0.0, 9.0, 0.0), (0.0, 11.0)),    # L2 has 11 A left: one car, 5.5 < 6
        (180, (0.0, 15.0, 0.0), (0.0, 0.0)),    # 5 A left on L2: nobody
        (240, (0.0, 0.0, 0.0), (10.0, 10.0)),
    ]
    rotation: RotationState | None = None
    for seconds, ac, expected in series:
        snap = house_snapshot(seconds, ac)
        alloc = allocate(topo, snap, rotation=rotation)
        rotation = alloc.rotation
        assert_sound(topo, snap, alloc)
        for phase in range(3):
            assert alloc.groups["house"].current[phase] + ac[phase] <= 20 + 1e-6
        assert _setpoint_pair(alloc) == pytest.approx(expected), (seconds, ac)


def test_house_paused_car_is_the_same_until_the_rotation() -> None:
    """With room for one car only, the paused one stays paused for the interval, then the
    two swap."""
    topo = parse_site(HOUSE_KW, "house.yaml")
    ac = (10.0, 10.0, 10.0)
    first = allocate(topo, house_snapshot(0, ac))
    on_first = {k for k, v in first.setpoints.items() if v > 0}
    assert len(on_first) == 1
    mid = allocate(topo, house_snapshot(600, ac), rotation=first.rotation)
    assert {k for k, v in mid.setpoints.items() if v > 0} == on_first
    swapped = allocate(topo, house_snapshot(900, ac), rotation=mid.rotation)
    on_after: set[ConnectorKey] = {k for k, v in swapped.setpoints.items() if v > 0}
    assert len(on_after) == 1
    assert on_after != on_first
