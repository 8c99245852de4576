"""The safety guard on hand-built setpoint maps: each kind of breach is named with its group
and phase; enforce() substitutes failsafes (or zeros) and passes safe answers through."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare.core import guard
from gridshare.core.decision import (
    Alarm,
    Allocation,
    Command,
    RotationState,
    TransitionPlan,
)
from gridshare.core.snapshot import (
    ConnectorDemand,
    GroupConditions,
    GroupLimit,
    LimitSource,
    Snapshot,
)
from gridshare.core.topology import (
    Charger,
    Connector,
    ConnectorKey,
    Group,
    Phase,
    Policy,
    Topology,
)

from .invariants import Model
from .strategies import CORE_SETTINGS, Case, cases

NOW = datetime(2025, 3, 3, 8, 0, tzinfo=UTC)


def charger(cid: str, group: str, *, phases: int = 1, phase: Phase | None = Phase.L1,
            max_current: float = 32, min_current: float = 6, failsafe: float = 0,
            connectors: int = 1) -> Charger:
    return Charger(
        id=cid, phases=phases, phase=phase if phases == 1 else None, max_current=max_current,
        min_current=min_current, failsafe_current=failsafe, priority=0,
        connectors=tuple(Connector(cid, n, max_current, min_current)
                         for n in range(1, connectors + 1)),
        group=group)


def site(*chargers: Charger, main_a: float | None = 32, main_kw: float | None = None,
         sub_a: float | None = None) -> Topology:
    """``main`` (root) holding every charger, or with ``sub_a``: main → sub → chargers."""
    groups = {"main": Group("main", main_a, main_kw, 3, Policy.EQUAL, None,
                            groups=("sub",) if sub_a is not None else (),
                            chargers=() if sub_a is not None else tuple(c.id for c in chargers))}
    if sub_a is not None:
        groups["sub"] = Group("sub", sub_a, None, 3, Policy.EQUAL, "main",
                              chargers=tuple(c.id for c in chargers))
    return Topology(site="t", voltage=230, policy=Policy.EQUAL, groups=groups,
                    chargers={c.id: c for c in chargers}, roots=("main",))


def snap(*demands: ConnectorDemand, **conditions: GroupConditions) -> Snapshot:
    return Snapshot(NOW, {d.key: d for d in demands}, conditions)


def on(cid: str, number: int = 1, max_current: float | None = None) -> ConnectorDemand:
    return ConnectorDemand(cid, number, active=True, max_current=max_current)


def names(alarms: list[Alarm]) -> set[tuple[str, Phase | None]]:
    return {(a.group, a.phase) for a in alarms}


# -- check ----------------------------------------------------------------------------------


def test_group_over_on_one_phase_names_group_and_phase() -> None:
    topo = site(charger("a", "main", phase=Phase.L2), charger("b", "main", phase=Phase.L2),
                charger("c", "main", phase=Phase.L1))
    alarms = guard.check(topo, snap(on("a"), on("b"), on("c")),
                         {("a", 1): 20, ("b", 1): 20, ("c", 1): 20})
    assert names(alarms) == {("main", Phase.L2)}
    assert alarms[0].load == pytest.approx(40)
    assert alarms[0].limit == pytest.approx(32)


def test_three_phase_load_counts_on_every_phase() -> None:
    topo = site(charger("a", "main", phases=3), charger("b", "main", phase=Phase.L3))
    alarms = guard.check(topo, snap(on("a"), on("b")), {("a", 1): 20, ("b", 1): 13})
    assert names(alarms) == {("main", Phase.L3)}


def test_kw_limit_exceeded_names_group_without_phase() -> None:
    topo = site(charger("a", "main", phases=3, max_current=16), main_a=None, main_kw=10)
    alarms = guard.check(topo, snap(on("a")), {("a", 1): 16})
    assert names(alarms) == {("main", None)}
    assert alarms[0].load == pytest.approx(16 * 3 * 230 / 1000)
    assert guard.check(topo, snap(on("a")), {("a", 1): 14.4}) == []


def test_parent_over_while_child_fine_names_the_parent() -> None:
    topo = site(charger("a", "sub"), charger("b", "sub"), main_a=30, sub_a=40)
    alarms = guard.check(topo, snap(on("a"), on("b")), {("a", 1): 16, ("b", 1): 16})
    assert names(alarms) == {("main", Phase.L1)}


def test_uncontrolled_load_and_extra_limits_lower_the_headroom() -> None:
    topo = site(charger("a", "main", phases=3))
    cond = GroupConditions(uncontrolled=(0, 10, 0))
    assert names(guard.check(topo, snap(on("a"), main=cond), {("a", 1): 25})) == {
        ("main", Phase.L2)}
    dr = GroupConditions(limits=(GroupLimit(LimitSource.DEMAND_RESPONSE, max_current=20),))
    assert names(guard.check(topo, snap(on("a"), main=dr), {("a", 1): 25})) == {
        ("main", Phase.L1), ("main", Phase.L2), ("main", Phase.L3)}
    kw = GroupConditions(limits=(GroupLimit(LimitSource.OPERATOR, max_power_kw=5),))
    assert names(guard.check(topo, snap(on("a"), main=kw), {("a", 1): 8})) == {("main", None)}


def test_stale_meter_allows_no_controlled_load() -> None:
    topo = site(charger("a", "main"))
    stale = GroupConditions(meter_stale=True)
    assert names(guard.check(topo, snap(on("a"), main=stale), {("a", 1): 6})) == {
        ("main", Phase.L1), ("main", None)}
    assert guard.check(topo, snap(on("a"), main=stale), {("a", 1): 0}) == []


@pytest.mark.parametrize(("amps", "ev_max"), [(3.0, None), (20.0, 16.0), (40.0, None)],
                         ids=["below-min", "above-ev-max", "above-connector-max"])
def test_connector_bounds(amps: float, ev_max: float | None) -> None:
    topo = site(charger("a", "main"), main_a=100)
    alarms = guard.check(topo, snap(on("a", max_current=ev_max)), {("a", 1): amps})
    assert names(alarms) == {("main", None)}
    assert "a/1" in alarms[0].message


def test_zero_is_always_a_valid_setpoint() -> None:
    topo = site(charger("a", "main"))
    assert guard.check(topo, snap(on("a", max_current=3.0)), {("a", 1): 0.0}) == []


def test_charger_over_its_own_maximum() -> None:
    topo = site(charger("a", "main", connectors=2, max_current=32), main_a=100)
    alarms = guard.check(topo, snap(on("a", 1), on("a", 2)), {("a", 1): 20, ("a", 2): 20})
    assert names(alarms) == {("main", None)}
    assert "charger a" in alarms[0].message


def test_offline_connector_counts_at_failsafe_whatever_its_setpoint() -> None:
    topo = site(charger("a", "main", failsafe=10), charger("b", "main"))
    demands = (ConnectorDemand("a", 1, online=False), on("b"))
    assert names(guard.check(topo, snap(*demands), {("a", 1): 0, ("b", 1): 25})) == {
        ("main", Phase.L1)}
    assert guard.check(topo, snap(*demands), {("a", 1): 0, ("b", 1): 22}) == []


# -- enforce and failsafe_setpoints ----------------------------------------------------------


def allocation(setpoints: Mapping[ConnectorKey, float]) -> Allocation:
    return Allocation(setpoints=dict(setpoints), offline=frozenset(), groups={},
                      rotation=RotationState(last_rotation=NOW))


def test_enforce_passes_a_safe_allocation_unchanged() -> None:
    topo = site(charger("a", "main"), charger("b", "main"))
    safe = allocation({("a", 1): 16, ("b", 1): 16})
    assert guard.enforce(topo, snap(on("a"), on("b")), safe) is safe


def test_enforce_replaces_an_unsafe_allocation_by_failsafes() -> None:
    topo = site(charger("a", "main", failsafe=6), charger("b", "main", failsafe=6))
    unsafe = allocation({("a", 1): 20, ("b", 1): 20})
    out = guard.enforce(topo, snap(on("a"), on("b")), unsafe)
    assert out.guarded
    assert out.setpoints == {("a", 1): 6, ("b", 1): 6}
    assert ("main", Phase.L1) in names(list(out.alarms))
    assert out.rotation == RotationState()
    assert guard.check(topo, snap(on("a"), on("b")), out.setpoints) == []


def test_enforce_pauses_everyone_when_failsafes_would_break_a_limit() -> None:
    topo = site(charger("a", "main", failsafe=20), charger("b", "main", failsafe=20))
    out = guard.enforce(topo, snap(on("a"), on("b")), allocation({("a", 1): 30,
                                                                   ("b", 1): 30}))
    assert out.guarded
    assert out.setpoints == {("a", 1): 0, ("b", 1): 0}


def test_enforce_keeps_offline_connectors_at_failsafe() -> None:
    topo = site(charger("a", "main", failsafe=20), charger("b", "main", failsafe=20))
    demands = snap(ConnectorDemand("a", 1, online=False), on("b"))
    out = guard.enforce(topo, demands, allocation({("a", 1): 20, ("b", 1): 30}))
    assert out.guarded
    assert out.setpoints == {("a", 1): 20, ("b", 1): 0}


def test_failsafe_setpoints() -> None:
    topo = site(charger("a", "main", failsafe=10, connectors=2), main_a=40)
    assert guard.failsafe_setpoints(topo, snap()) == {("a", 1): 10, ("a", 2): 10}
    tight = site(charger("a", "main", failsafe=10, connectors=2), main_a=15)
    assert guard.failsafe_setpoints(tight, snap()) == {("a", 1): 0, ("a", 2): 0}


# -- check_plan ------------------------------------------------------------------------------


def test_check_plan_flags_wrong_direction_and_wrong_end() -> None:
    topo = site(charger("a", "main"), charger("b", "main"))
    demands = snap(on("a"), on("b"))
    previous = {("a", 1): 16.0, ("b", 1): 10.0}
    target = {("a", 1): 10.0, ("b", 1): 16.0}
    good = TransitionPlan((Command(("a", 1), 10, 16),), (Command(("b", 1), 16, 10),))
    assert guard.check_plan(topo, demands, previous, good, target) == []
    swapped = TransitionPlan((Command(("b", 1), 16, 10),), (Command(("a", 1), 10, 16),))
    assert len(guard.check_plan(topo, demands, previous, swapped, target)) == 2
    short = TransitionPlan((Command(("a", 1), 10, 16),), ())
    assert len(guard.check_plan(topo, demands, previous, short, target)) == 1
    unsafe_target = {("a", 1): 16.0, ("b", 1): 20.0}
    plan = TransitionPlan((), (Command(("b", 1), 20, 10),))
    assert names(guard.check_plan(topo, demands, previous, plan, unsafe_target)) == {
        ("main", Phase.L1)}


# -- the guard against the independent model, on random setpoints ---------------------------


@st.composite
def _case_and_setpoints(draw: st.DrawFn) -> tuple[Case, dict[ConnectorKey, float]]:
    case = draw(cases(max_chargers=15))
    amps = st.integers(0, 400).map(lambda n: n / 10)
    return case, {c.key: draw(amps) for c in case.topology.connectors()}


@CORE_SETTINGS
@given(data=_case_and_setpoints())
def test_guard_agrees_with_an_independent_model(
        data: tuple[Case, dict[ConnectorKey, float]]) -> None:
    """Every group phase, group kW and charger limit the model finds broken, the guard
    names; and the guard names nothing else."""
    case, setpoints = data
    model = Model.build(case.topology, case.snapshot)
    alarms = guard.check(case.topology, case.snapshot, setpoints)
    drawn = model.drawn(setpoints)
    broken = [c for c in model.constraints if c.load(drawn) > c.capacity + 1e-6]
    phase_rows = {(c.group, c.phase) for c in broken if c.phase is not None}
    assert {(a.group, a.phase) for a in alarms if a.phase is not None} == phase_rows
    kw_groups = {c.group for c in broken if c.group is not None and c.phase is None}
    kw_alarms = {a.group for a in alarms if a.phase is None and " kW above " in a.message}
    assert kw_alarms == kw_groups
    chargers = {c.name.removeprefix("charger ") for c in broken if c.group is None}
    charger_alarms = {a.message.split()[1].rstrip(":") for a in alarms
                      if a.message.startswith("charger ")}
    assert charger_alarms == chargers
    out_of_bounds = {k for k in model.online if setpoints[k] != 0.0 and not (
        case.topology.connector(k).min_current - 1e-6 <= setpoints[k]
        <= model.upper(k) + 1e-6)}
    bound_alarms = {a.message.split(":")[0] for a in alarms if "setpoint" in a.message}
    assert bound_alarms == {f"{k[0]}/{k[1]}" for k in out_of_bounds}
