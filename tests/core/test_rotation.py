"""Pauses rotate (spec invariant 5): nobody starves when not every car can get its minimum,
and nobody flaps between rotations."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import assume, given, note
from hypothesis import strategies as st

from gridshare.core.allocation import allocate
from gridshare.core.decision import Allocation, RotationState
from gridshare.core.snapshot import ConnectorDemand, Snapshot
from gridshare.core.topology import Charger, Connector, ConnectorKey, Group, Policy, Topology

from .invariants import Model, safety_problems
from .strategies import BASE_TIME, CORE_SETTINGS, Case, Options, cases, describe
from .test_examples import carport

ONE_CLASS = Options(p_active=0.9, allow_offline=True, allow_stale=False, deadlines=False,
                    uniform_priority=True)
"""Steady demand in one priority class, no deadlines: rotation alone decides who pauses."""

CONTENDED = cases(options=ONE_CLASS, min_chargers=4, max_chargers=20, limit_scale=0.1)
"""Tight limits over at least four chargers: pauses are the rule, not the exception."""

ROTATING = st.sampled_from([Policy.EQUAL, Policy.PROPORTIONAL, Policy.PRIORITY])


def at(snapshot: Snapshot, seconds: float) -> Snapshot:
    return Snapshot(now=snapshot.now + timedelta(seconds=seconds),
                    connectors=snapshot.connectors, groups=snapshot.groups)


def paused(model: Model, alloc: Allocation) -> frozenset[ConnectorKey]:
    return frozenset(k for k in model.failsafe if model.wants(k) and alloc.setpoints[k] == 0)


def chargeable_alone(model: Model) -> list[ConnectorKey]:
    """Cars that could charge if every other online connector were paused."""
    nobody = model.drawn({})
    return [k for k in sorted(model.failsafe)
            if model.wants(k) and model.blocked(k, nobody, model.start(k)) is None]


CONTENDED_MIN6 = cases(options=ONE_CLASS, min_chargers=4, max_chargers=20, limit_scale=0.1,
                       positive_mins=True)
"""The same, every connector with a minimum above 0 A (the usual AC case)."""


@CORE_SETTINGS
@given(case=CONTENDED, policy=ROTATING)
def test_every_car_charges_within_a_bounded_number_of_rotations(case: Case,
                                                                 policy: Policy) -> None:
    starvation_check(case, policy)


@CORE_SETTINGS
@given(case=CONTENDED_MIN6, policy=ROTATING)
def test_every_car_charges_within_a_bounded_number_of_rotations_positive_minimums(
        case: Case, policy: Policy) -> None:
    starvation_check(case, policy)


def starvation_check(case: Case, policy: Policy) -> None:
    """Rotate once per competing car (plus two) at most; every car that could charge
    alone must have charged at least once."""
    model = Model.build(case.topology, case.snapshot)
    candidates = chargeable_alone(model)
    first = allocate(case.topology, case.snapshot, policy=policy)
    assume(paused(model, first) & set(candidates))
    interval = case.topology.rotation_interval_s
    rotation: RotationState | None = None
    charged: set[ConnectorKey] = set()
    # Every online car that wants power competes for the room, not only those that could
    # charge alone: one rotation each, plus slack.
    rounds = len([k for k in model.online if model.wants(k)]) + 2
    history = []
    for n in range(rounds):
        snap = at(case.snapshot, n * interval)
        alloc = allocate(case.topology, snap, policy=policy, rotation=rotation)
        problems = safety_problems(model, alloc.setpoints, {a.group for a in alloc.alarms})
        assert not problems, problems
        rotation = alloc.rotation
        now_charging = {k for k in candidates if alloc.setpoints[k] > 0}
        history.append(sorted(now_charging))
        charged |= now_charging
        if charged >= set(candidates):
            break
    note(describe(case))
    note(f"charging per rotation: {history}")
    assert set(candidates) <= charged, sorted(set(candidates) - charged)


@CORE_SETTINGS
@given(case=CONTENDED, policy=ROTATING,
       steps=st.lists(st.integers(1, 99), min_size=1, max_size=4))
def test_no_flapping_between_rotations(case: Case, policy: Policy, steps: list[int]) -> None:
    """Same demand, ``now`` moving within one interval: the same cars stay paused (and the
    setpoints do not move either); the same holds again within the next interval."""
    model = Model.build(case.topology, case.snapshot)
    interval = case.topology.rotation_interval_s
    note(describe(case))
    rotation: RotationState | None = None
    for window in (0, 1):
        start = window * interval
        first = allocate(case.topology, at(case.snapshot, start), policy=policy,
                         rotation=rotation)
        rotation = first.rotation
        elapsed = 0.0
        for pct in sorted(steps):
            elapsed = interval * pct / 100
            later = allocate(case.topology, at(case.snapshot, start + elapsed), policy=policy,
                             rotation=rotation)
            assert paused(model, later) == paused(model, first), (window, elapsed)
            assert later.setpoints == first.setpoints, (window, elapsed)
            rotation = later.rotation


def test_rotation_state_round_trips_without_demand() -> None:
    """An idle site: nothing to rotate, everything at 0 however often it is asked."""
    topo = carport()
    first = allocate(topo, Snapshot(now=BASE_TIME))
    assert all(v == 0 for v in first.setpoints.values())
    again = allocate(topo, Snapshot(now=BASE_TIME + timedelta(seconds=10)),
                     rotation=first.rotation)
    assert again.setpoints == first.setpoints


@CORE_SETTINGS
@given(case=CONTENDED, policy=ROTATING, seconds=st.sampled_from([10.0, 900.0, 1800.0]))
def test_rotation_state_as_plain_dicts_decides_the_same(case: Case, policy: Policy,
                                                        seconds: float) -> None:
    """The state ``allocate`` returns is array-backed; a caller may keep it as plain dicts
    (persisted, rebuilt): the next allocation and the state it returns are the same."""
    first = allocate(case.topology, case.snapshot, policy=policy)
    kept = first.rotation
    plain = RotationState(kept.last_rotation, dict(kept.admitted_since),
                          dict(kept.waiting_since))
    assert plain == kept
    later = at(case.snapshot, seconds)
    a = allocate(case.topology, later, policy=policy, rotation=kept)
    b = allocate(case.topology, later, policy=policy, rotation=plain)
    assert a.setpoints == b.setpoints
    assert a.rotation == b.rotation


def test_an_unknown_arrival_does_not_move_with_the_clock() -> None:
    """Spec invariant 5 (found on a random seed): 19.3 A for a 2-connector charger; the
    first connector's arrival is unknown, the second arrived at the start. If an unknown
    arrival counted as ``now``, the two would tie at the start and the order flip 9 s
    later under priority, pausing a car between rotations."""
    charger = Charger("cp", 3, None, 32, 6, 0, 0,
                      (Connector("cp", 1, 32, 6), Connector("cp", 2, 32, 6)), group="g")
    group = Group("g", 19.3, None, 3, Policy.EQUAL, None, chargers=("cp",))
    topo = Topology("t", 230, Policy.EQUAL, {"g": group}, {"cp": charger}, ("g",))
    snap = Snapshot(BASE_TIME, {
        ("cp", 1): ConnectorDemand("cp", 1, active=True, max_current=13.3),
        ("cp", 2): ConnectorDemand("cp", 2, active=True, arrival=BASE_TIME)})
    for policy in (Policy.EQUAL, Policy.PROPORTIONAL, Policy.PRIORITY, Policy.DEADLINE):
        first = allocate(topo, snap, policy=policy)
        later = allocate(topo, at(snap, 9), policy=policy, rotation=first.rotation)
        assert later.setpoints == first.setpoints, policy
