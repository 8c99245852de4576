"""plan_transition (spec invariant 6): decreases first, then increases, ending exactly at
the target; no moment in between breaks a limit the target keeps."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import given, note
from hypothesis import strategies as st

from gridshare.core import guard
from gridshare.core.allocation import allocate, plan_transition
from gridshare.core.decision import TransitionPlan
from gridshare.core.topology import ConnectorKey

from .invariants import Model
from .strategies import CORE_SETTINGS, Case, cases, describe, snapshots

KEYS = st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.integers(1, 2))
AMPS = st.one_of(st.just(0.0), st.integers(0, 320).map(lambda n: n / 10))
SETPOINT_MAPS = st.dictionaries(KEYS, AMPS, max_size=12)


def apply(previous: Mapping[ConnectorKey, float], plan: TransitionPlan,
          increases: int | None = None) -> dict[ConnectorKey, float]:
    """The state after every decrease and the first ``increases`` increases (all if None)."""
    state = dict(previous)
    for cmd in plan.decreases:
        state[cmd.key] = cmd.current
    for cmd in plan.increases[:increases]:
        state[cmd.key] = cmd.current
    return state


def assert_well_formed(previous: Mapping[ConnectorKey, float],
                       target: Mapping[ConnectorKey, float], plan: TransitionPlan) -> None:
    keys = [c.key for c in (*plan.decreases, *plan.increases)]
    assert len(keys) == len(set(keys)), "a connector is commanded twice"
    for cmd in plan.decreases:
        assert cmd.current < cmd.previous
        assert cmd.previous == previous.get(cmd.key, 0.0)
        assert cmd.current == target.get(cmd.key, 0.0)
    for cmd in plan.increases:
        assert cmd.current > cmd.previous
        assert cmd.previous == previous.get(cmd.key, 0.0)
        assert cmd.current == target[cmd.key]
    changed = {k for k in set(previous) | set(target)
               if previous.get(k, 0.0) != target.get(k, 0.0)}
    assert set(keys) == changed, "unchanged connectors are left alone, changed ones are not"
    final = apply(previous, plan)
    for key, amps in target.items():
        assert final.get(key, 0.0) == amps


@CORE_SETTINGS
@given(previous=SETPOINT_MAPS, target=SETPOINT_MAPS)
def test_plan_shape(previous: dict[ConnectorKey, float],
                    target: dict[ConnectorKey, float]) -> None:
    plan = plan_transition(previous, target)
    assert_well_formed(previous, target, plan)
    same = all(previous.get(k, 0.0) == target.get(k, 0.0) for k in set(previous) | set(target))
    assert plan.empty == same


@CORE_SETTINGS
@given(target=SETPOINT_MAPS)
def test_plan_from_nothing_only_raises(target: dict[ConnectorKey, float]) -> None:
    plan = plan_transition({}, target)
    assert plan.decreases == ()
    assert {c.key for c in plan.increases} == {k for k, v in target.items() if v > 0}


@CORE_SETTINGS
@given(setpoints=SETPOINT_MAPS)
def test_same_setpoints_need_no_commands(setpoints: dict[ConnectorKey, float]) -> None:
    assert plan_transition(setpoints, dict(setpoints)).empty


@st.composite
def _before_and_after(draw: st.DrawFn) -> tuple[Case, dict[ConnectorKey, float]]:
    """A case (its allocation is the target) and a previous state on the same site: the
    allocation of another snapshot, or arbitrary amps."""
    case = draw(cases())
    if draw(st.booleans()):
        other = draw(snapshots(case.topology))
        previous = dict(allocate(case.topology, other).setpoints)
    else:
        previous = {c.key: draw(AMPS) for c in case.topology.connectors()}
    return case, previous


@CORE_SETTINGS
@given(data=_before_and_after(), cut=st.integers(0, 1000))
def test_every_moment_of_a_transition_is_safe(data: tuple[Case, dict[ConnectorKey, float]],
                                              cut: int) -> None:
    case, previous = data
    target = dict(allocate(case.topology, case.snapshot).setpoints)
    model = Model.build(case.topology, case.snapshot)
    plan = plan_transition(previous, target)
    note(describe(case))
    note(f"plan={plan}")
    assert_well_formed(previous, target, plan)
    if guard.check(case.topology, case.snapshot, target) or model.infeasible:
        return  # an unsavable group: nothing below can promise safety
    # Each step is safe while in flight: any subset of its commands applied at any moment.
    # Only online connectors are sent anything; the guard counts offline ones at their
    # failsafe current when they are left out of what is counted.
    def online(values: Mapping[ConnectorKey, float]) -> dict[ConnectorKey, float]:
        return {k: v for k, v in values.items() if k in model.online}

    lowered = apply(previous, plan, 0)
    assert guard.check_plan(case.topology, case.snapshot, online(previous),
                            online({c.key: c.current for c in plan.decreases})) == []
    assert guard.check_plan(case.topology, case.snapshot, online(lowered),
                            online({c.key: c.current for c in plan.increases})) == []
    assert not model.violations(target, include_infeasible=True)
    # After the decreases, after each prefix of the increases, and after an arbitrary
    # subset of them (commands are acknowledged in any order).
    for n in range(len(plan.increases) + 1):
        state = apply(previous, plan, n)
        assert not model.violations(state, include_infeasible=True), n
    subset = dict(apply(previous, plan, 0))
    for i, cmd in enumerate(plan.increases):
        if (cut >> (i % 10)) & 1:
            subset[cmd.key] = cmd.current
    assert not model.violations(subset, include_infeasible=True)
