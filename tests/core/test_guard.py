"""The safety guard on hand-built setpoint maps: each kind of breach is named with its group
and phase; enforce() substitutes failsafes (or zeros) and passes safe answers through."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gridshare.core import guard
from gridshare.core.allocation import allocate
from gridshare.core.decision import Alarm, Allocation, RotationState
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


def test_enforce_reports_the_substitute_loads_and_every_violation() -> None:
    topo = site(charger("a", "sub", failsafe=6), charger("b", "sub", failsafe=6),
                main_a=40, sub_a=32)
    out = guard.enforce(topo, snap(on("a"), on("b")),
                        allocation({("a", 1): 20, ("b", 1): 20}))
    assert out.groups["sub"].current == (12.0, 0.0, 0.0)
    assert out.groups["main"].available == (40.0, 40.0, 40.0)
    [alarm] = out.alarms
    assert (alarm.group, alarm.phase, alarm.load, alarm.limit) == ("sub", Phase.L1, 40, 32)


def test_review_reports_overloads_of_what_it_returns() -> None:
    """Offline a and b overload main L1; c (online, on L1) is paused: the allocation passes
    and the overload is reported. Charging c instead is a violation; the substitute pauses
    it and still reports the overload."""
    topo = site(charger("a", "main", failsafe=20), charger("b", "main", failsafe=20),
                charger("c", "main", failsafe=6))
    demands = snap(ConnectorDemand("a", 1, online=False), ConnectorDemand("b", 1, online=False),
                   on("c"))
    paused = allocation({("a", 1): 20, ("b", 1): 20, ("c", 1): 0})
    passed = guard.review(topo, demands, paused)
    assert passed.allocation is paused
    assert passed.violations == ()
    assert names(list(passed.overloads)) == {("main", Phase.L1)}
    charging = guard.review(topo, demands, allocation({("a", 1): 20, ("b", 1): 20,
                                                       ("c", 1): 6}))
    assert charging.allocation.guarded
    assert charging.allocation.setpoints == {("a", 1): 20, ("b", 1): 20, ("c", 1): 0}
    assert charging.allocation.offline == {("a", 1), ("b", 1)}
    assert names(list(charging.violations)) == {("main", Phase.L1)}
    assert names(list(charging.overloads)) == {("main", Phase.L1)}
    assert charging.allocation.groups["main"].current == (40.0, 0.0, 0.0)


def test_failsafe_setpoints_charge_active_connectors_at_their_failsafe() -> None:
    topo = site(charger("a", "main", failsafe=10, connectors=2), main_a=40)
    assert guard.failsafe_setpoints(topo, snap(on("a", 1), on("a", 2))) == {
        ("a", 1): 10, ("a", 2): 10}
    assert guard.failsafe_setpoints(topo, snap(on("a", 1))) == {("a", 1): 10, ("a", 2): 0}
    tight = site(charger("a", "main", failsafe=10, connectors=2), main_a=15)
    assert guard.failsafe_setpoints(tight, snap(on("a", 1), on("a", 2))) == {
        ("a", 1): 0, ("a", 2): 0}


def two_circuits(*chargers: Charger, x_a: float = 16, y_a: float = 16,
                 main_a: float = 100) -> Topology:
    """main → circuits x and y; each charger sits in the group its ``group`` names."""
    groups = {
        "main": Group("main", main_a, None, 3, Policy.EQUAL, None, groups=("x", "y")),
        "x": Group("x", x_a, None, 3, Policy.EQUAL, "main",
                   chargers=tuple(c.id for c in chargers if c.group == "x")),
        "y": Group("y", y_a, None, 3, Policy.EQUAL, "main",
                   chargers=tuple(c.id for c in chargers if c.group == "y")),
    }
    return Topology(site="t", voltage=230, policy=Policy.EQUAL, groups=groups,
                    chargers={c.id: c for c in chargers}, roots=("main",))


def test_failsafe_setpoints_pause_only_under_the_limits_failsafes_break() -> None:
    """Failsafes overload circuit x on L1 only; y keeps charging, and so does the charger
    on another phase of x."""
    topo = two_circuits(charger("x1", "x", failsafe=10), charger("x2", "x", failsafe=10),
                        charger("x3", "x", failsafe=10, phase=Phase.L2),
                        charger("y1", "y", failsafe=10))
    demands = snap(on("x1"), on("x2"), on("x3"), on("y1"))
    assert guard.failsafe_setpoints(topo, demands) == {
        ("x1", 1): 0, ("x2", 1): 0, ("x3", 1): 10, ("y1", 1): 10}


def test_failsafe_above_the_ev_maximum_pauses_that_connector() -> None:
    topo = site(charger("a", "main", failsafe=10), charger("b", "main", failsafe=10))
    assert guard.failsafe_setpoints(topo, snap(on("a", max_current=8), on("b"))) == {
        ("a", 1): 0, ("b", 1): 10}


# -- offline load: overloads are reported, not held against the allocation -------------------


def test_offline_chargers_alone_overloading_a_limit_are_an_overload_not_a_violation() -> None:
    topo = site(charger("a", "main", failsafe=20), charger("b", "main", failsafe=20),
                charger("c", "main"), charger("d", "main", phase=Phase.L2))
    offline = (ConnectorDemand("a", 1, online=False), ConnectorDemand("b", 1, online=False))
    demands = snap(*offline, on("c"), on("d"))
    verdict = guard.assess(topo, demands, {("c", 1): 0, ("d", 1): 16})
    assert verdict.passed
    assert guard.check(topo, demands, {("c", 1): 0, ("d", 1): 16}) == []
    [overload] = verdict.overloads
    assert (overload.group, overload.phase, overload.load, overload.limit) == (
        "main", Phase.L1, 40, 32)
    # The same limit with an online connector still charging under it is a violation.
    charging = guard.assess(topo, demands, {("c", 1): 6, ("d", 1): 16})
    assert names(list(charging.violations)) == {("main", Phase.L1)}
    assert charging.overloads == ()


def test_a_stale_meter_under_offline_chargers_is_an_overload() -> None:
    topo = site(charger("a", "main", phases=3, failsafe=6), charger("b", "main"))
    demands = snap(ConnectorDemand("a", 1, online=False), on("b"),
                   main=GroupConditions(meter_stale=True))
    verdict = guard.assess(topo, demands, {("b", 1): 0})
    assert verdict.passed
    assert names(list(verdict.overloads)) == {
        ("main", Phase.L1), ("main", Phase.L2), ("main", Phase.L3), ("main", None)}
    charging = guard.assess(topo, demands, {("b", 1): 6})
    assert names(list(charging.violations)) == {("main", Phase.L1), ("main", None)}
    assert names(list(charging.overloads)) == {("main", Phase.L2), ("main", Phase.L3)}


def test_charger_maximum_broken_by_failsafes_alone_is_an_overload() -> None:
    topo = site(charger("a", "main", connectors=2, max_current=16, failsafe=10), main_a=100)
    demands = snap(ConnectorDemand("a", 1, online=False), ConnectorDemand("a", 2, online=False))
    verdict = guard.assess(topo, demands, {})
    assert verdict.passed
    assert [a.message.split(":")[0] for a in verdict.overloads] == ["charger a"]


def test_not_a_number_fails_closed() -> None:
    topo = site(charger("a", "main"), charger("b", "main"))
    alarms = guard.check(topo, snap(on("a"), on("b")), {("a", 1): math.nan, ("b", 1): 16})
    assert "a/1" in alarms[0].message
    assert ("main", Phase.L1) in names(alarms)


# -- check_plan: one send step, any subset of it applied ------------------------------------


def test_a_step_that_only_lowers_always_passes() -> None:
    """Even when what is counted already breaks the limit: lowering can only help."""
    topo = site(charger("a", "main"), charger("b", "main"))
    demands = snap(on("a"), on("b"))
    counted = {("a", 1): 32.0, ("b", 1): 32.0}
    assert guard.check_plan(topo, demands, counted, {("a", 1): 10.0, ("b", 1): 0.0}) == []
    assert guard.check_plan(topo, demands, counted, {("a", 1): 32.0}) == []
    assert guard.check_plan(topo, demands, counted, {}) == []


def test_a_raise_that_fits_only_after_a_decrease_took_effect_is_refused() -> None:
    topo = site(charger("a", "main"), charger("b", "main"))
    demands = snap(on("a"), on("b"))
    # a is being lowered 20 -> 10, its answer not in yet: it is still counted at 20.
    counted = {("a", 1): 20.0, ("b", 1): 10.0}
    alarms = guard.check_plan(topo, demands, counted, {("b", 1): 22.0})
    assert names(alarms) == {("main", Phase.L1)}
    assert (alarms[0].load, alarms[0].limit) == (42, 32)
    assert "raises b/1 under it" in alarms[0].message
    assert guard.check_plan(topo, demands, counted, {("b", 1): 12.0}) == []
    # Once the decrease is confirmed, the same raise fits.
    assert guard.check_plan(topo, demands, {("a", 1): 10.0, ("b", 1): 10.0},
                            {("b", 1): 22.0}) == []


def test_a_mixed_step_counts_each_connector_at_its_worst() -> None:
    """Lowering a and raising b in one step: b may have risen before a has lowered."""
    topo = site(charger("a", "main"), charger("b", "main"))
    demands = snap(on("a"), on("b"))
    counted = {("a", 1): 20.0, ("b", 1): 10.0}
    alarms = guard.check_plan(topo, demands, counted, {("a", 1): 10.0, ("b", 1): 20.0})
    assert names(alarms) == {("main", Phase.L1)}
    assert alarms[0].load == pytest.approx(40)
    assert guard.check_plan(topo, demands, counted, {("a", 1): 10.0, ("b", 1): 12.0}) == []


def test_check_plan_counts_offline_chargers_as_counted_and_minds_uncontrolled_load() -> None:
    topo = site(charger("a", "main", failsafe=10), charger("b", "main"))
    demands = snap(ConnectorDemand("a", 1, online=False), on("b"),
                   main=GroupConditions(uncontrolled=(6, 0, 0)))
    counted = {("a", 1): 10.0, ("b", 1): 0.0}
    assert names(guard.check_plan(topo, demands, counted, {("b", 1): 17.0})) == {
        ("main", Phase.L1)}
    assert guard.check_plan(topo, demands, counted, {("b", 1): 16.0}) == []
    # Missing from counted: taken at its failsafe current since it is offline.
    assert names(guard.check_plan(topo, demands, {("b", 1): 0.0}, {("b", 1): 17.0})) == {
        ("main", Phase.L1)}


def test_check_plan_only_refuses_limits_the_step_raises_a_connector_under() -> None:
    """x is over already (commands in flight); raising a charger in y is allowed."""
    topo = two_circuits(charger("x1", "x"), charger("x2", "x"), charger("y1", "y"),
                        x_a=32, y_a=32)
    demands = snap(on("x1"), on("x2"), on("y1"))
    counted = {("x1", 1): 20.0, ("x2", 1): 20.0, ("y1", 1): 0.0}
    assert guard.check_plan(topo, demands, counted, {("y1", 1): 32.0}) == []
    assert names(guard.check_plan(topo, demands, counted, {("x1", 1): 21.0})) == {
        ("x", Phase.L1)}
    # A raise on another phase of the same group does not load the broken phase.
    other = two_circuits(charger("x1", "x"), charger("x2", "x"),
                         charger("x3", "x", phase=Phase.L3), x_a=32)
    assert guard.check_plan(other, snap(on("x1"), on("x2"), on("x3")),
                            {("x1", 1): 20.0, ("x2", 1): 20.0, ("x3", 1): 0.0},
                            {("x3", 1): 32.0}) == []


def test_check_plan_kw_and_charger_limits() -> None:
    topo = site(charger("a", "main", phases=3, max_current=32), main_a=None, main_kw=10)
    assert names(guard.check_plan(topo, snap(on("a")), {("a", 1): 0.0},
                                  {("a", 1): 16.0})) == {("main", None)}
    two = site(charger("a", "main", connectors=2, max_current=32), main_a=100)
    alarms = guard.check_plan(two, snap(on("a", 1), on("a", 2)),
                              {("a", 1): 20.0, ("a", 2): 0.0}, {("a", 2): 16.0})
    assert [a.message.split(":")[0] for a in alarms] == ["charger a"]


@pytest.mark.parametrize(("send", "ev_max"), [(-1.0, None), (3.0, None), (40.0, None),
                                              (20.0, 16.0), (math.nan, None)],
                         ids=["negative", "below-min", "above-max", "above-ev-max", "nan"])
def test_check_plan_refuses_a_send_outside_its_bounds(send: float,
                                                      ev_max: float | None) -> None:
    topo = site(charger("a", "main"), main_a=100)
    alarms = guard.check_plan(topo, snap(on("a", max_current=ev_max)), {("a", 1): 32.0},
                              {("a", 1): send})
    assert alarms[0].message.startswith("a/1: send")


def test_check_plan_refuses_a_send_to_an_unknown_connector() -> None:
    topo = site(charger("a", "main"))
    alarms = guard.check_plan(topo, snap(on("a")), {("a", 1): 0.0}, {("zz", 1): 0.0})
    assert len(alarms) == 1
    assert "zz/1" in alarms[0].message


@dataclass(frozen=True)
class Step:
    case: Case
    counted: dict[ConnectorKey, float]
    sends: dict[ConnectorKey, float]


@st.composite
def steps(draw: st.DrawFn) -> Step:
    """A send step near the edge of the limits: what is counted is mostly a correct
    allocation (offline at failsafe), sometimes arbitrary amps; the step is a swap under a
    nearly full limit, or moves some connectors up or down by up to 10 A, so that sums land
    on both sides of the limits."""
    case = draw(cases(max_chargers=15))
    keys = sorted(c.key for c in case.topology.connectors())
    if draw(st.integers(0, 3)) > 0:
        counted = dict(allocate(case.topology, case.snapshot).setpoints)
    else:
        counted = {k: draw(st.integers(0, 400)) / 10 for k in keys}
    sends: dict[ConnectorKey, float] = {}
    model = Model.build(case.topology, case.snapshot)
    pairs = _tight_pairs(case, model, counted)
    if pairs and draw(st.integers(0, 3)) > 0:
        # A swap under a nearly full limit: what one connector gives up, another takes, in
        # the same step. The sum after both fits, but the raise may land first.
        giver, taker, amps = draw(st.sampled_from(pairs))
        return Step(case, counted, {giver: 0.0, taker: amps})
    for key in draw(st.lists(st.sampled_from(keys), unique=True)):
        amps = max(0.0, round(counted[key] + draw(st.integers(-100, 100)) / 10, 1))
        low = case.topology.connector(key).min_current
        top = _upper(case, key)
        if amps and draw(st.integers(0, 9)) > 0:  # mostly valid sends: 0 or within bounds
            amps = min(max(amps, low), top) if low <= top else 0.0
        sends[key] = amps
    return Step(case, counted, sends)


def _tight_pairs(case: Case, model: Model, counted: Mapping[ConnectorKey, float],
                 ) -> list[tuple[ConnectorKey, ConnectorKey, float]]:
    """(giver, taker, taker's new amps): two online connectors under a group limit that
    holds now but has less room than the taker gains by taking the giver's current (within
    its own bounds)."""
    pairs = []
    for con in model.constraints:
        if con.group is None:
            continue
        room = con.headroom(counted)
        if room < 0:
            continue  # already over: refused whichever way the step is counted
        under = [k for k in sorted(con.coef) if k in model.online]
        for giver in under:
            for taker in under:
                amps = min(counted[taker] + counted[giver], _upper(case, taker))
                gain = (amps - counted[taker]) * con.coef[taker]
                if taker != giver and gain > room + 1e-6 \
                        and amps >= case.topology.connector(taker).min_current:
                    pairs.append((giver, taker, amps))
    return pairs


def _upper(case: Case, key: ConnectorKey) -> float:
    charger = case.topology.chargers[key[0]]
    ev = case.snapshot.demand(key).max_current
    top = min(case.topology.connector(key).max_current, charger.max_current)
    return top if ev is None else min(top, ev)


@CORE_SETTINGS
@given(step=steps())
def test_check_plan_agrees_with_the_model_on_random_steps(step: Step) -> None:
    """Refused exactly when a limit the model finds broken at the worst case is loaded by a
    connector the step raises, or a send is out of bounds."""
    case, counted, sends = step.case, step.counted, step.sends
    model = Model.build(case.topology, case.snapshot)
    worst = {k: max(v, sends.get(k, v)) for k, v in counted.items()}
    raised = {k for k, v in sends.items() if v > counted[k] + 1e-6}
    refused_by_limits = any(c.load(worst) > c.capacity + 1e-6 and raised & set(c.coef)
                            for c in model.constraints)
    out_of_bounds = any(v != 0.0 and not (
        case.topology.connector(k).min_current - 1e-6 <= v <= model.upper(k) + 1e-6)
        for k, v in sends.items())
    alarms = guard.check_plan(case.topology, case.snapshot, counted, sends)
    assert bool(alarms) == (refused_by_limits or out_of_bounds)
    if not raised:
        assert all(": send " in a.message for a in alarms)


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
    names: as a violation when an online connector under it has a setpoint above 0, as an
    overload otherwise; and it names nothing else."""
    case, setpoints = data
    model = Model.build(case.topology, case.snapshot)
    verdict = guard.assess(case.topology, case.snapshot, setpoints)
    drawn = model.drawn(setpoints)
    broken = [c for c in model.constraints if c.load(drawn) > c.capacity + 1e-6]
    for kind, alarms in (("violation", verdict.violations), ("overload", verdict.overloads)):
        expected = [c for c in broken if any(
            k in model.online and setpoints[k] > 0 for k in c.coef) == (kind == "violation")]
        phase_rows = {(c.group, c.phase) for c in expected if c.phase is not None}
        assert {(a.group, a.phase) for a in alarms if a.phase is not None} == phase_rows, kind
        kw_groups = {c.group for c in expected if c.group is not None and c.phase is None}
        kw_alarms = {a.group for a in alarms if a.phase is None and " kW above " in a.message}
        assert kw_alarms == kw_groups, kind
        chargers = {c.name.removeprefix("charger ") for c in expected if c.group is None}
        charger_alarms = {a.message.split()[1].rstrip(":") for a in alarms
                          if a.message.startswith("charger ")}
        assert charger_alarms == chargers, kind
    out_of_bounds = {k for k in model.online if setpoints[k] != 0.0 and not (
        case.topology.connector(k).min_current - 1e-6 <= setpoints[k]
        <= model.upper(k) + 1e-6)}
    bound_alarms = {a.message.split(":")[0] for a in verdict.violations
                    if "setpoint" in a.message}
    assert bound_alarms == {f"{k[0]}/{k[1]}" for k in out_of_bounds}
    assert guard.check(case.topology, case.snapshot, setpoints) == list(verdict.violations)
    loads = guard.group_loads(case.topology, case.snapshot, setpoints)
    for con in (c for c in model.constraints if c.group is not None):
        load = loads[con.group]
        if con.phase is None:
            assert load.power_kw == pytest.approx(con.load(drawn), abs=1e-6), con.name
        else:
            assert load.current[con.phase] == pytest.approx(con.load(drawn), abs=1e-6)
            assert load.available[con.phase] == pytest.approx(con.capacity), con.name


@CORE_SETTINGS
@given(data=_case_and_setpoints())
def test_the_substitute_always_passes(data: tuple[Case, dict[ConnectorKey, float]]) -> None:
    """Whatever the allocation was, what enforce puts in its place passes the guard and
    the model (limits offline chargers alone break aside), and keeps offline connectors at
    their failsafe current."""
    case, setpoints = data
    model = Model.build(case.topology, case.snapshot)
    unsafe = Allocation(setpoints=setpoints, offline=frozenset(), groups={},
                        rotation=RotationState(last_rotation=NOW))
    reviewed = guard.review(case.topology, case.snapshot, unsafe)
    out = reviewed.allocation
    assert reviewed.overloads == guard.assess(case.topology, case.snapshot,
                                              out.setpoints).overloads
    assert guard.enforce(case.topology, case.snapshot, unsafe) == out
    if not out.guarded:
        assert out is unsafe
        assert guard.check(case.topology, case.snapshot, setpoints) == []
        return
    assert guard.check(case.topology, case.snapshot, out.setpoints) == []
    assert model.violations(out.setpoints) == []
    assert out.offline == frozenset(model.offline)
    for key in model.offline:
        assert out.setpoints[key] == model.failsafe[key]
    for key in model.online:
        assert out.setpoints[key] in (0.0, model.failsafe[key])


@CORE_SETTINGS
@given(case=cases(max_chargers=15), data=st.data())
def test_a_step_of_pure_decreases_always_passes(case: Case, data: st.DataObject) -> None:
    """Whatever is counted (even far over every limit), lowering connectors to valid values
    is never refused."""
    model = Model.build(case.topology, case.snapshot)
    keys = sorted(model.failsafe)
    counted = {k: data.draw(st.integers(0, 800).map(lambda n: n / 10)) for k in keys}
    sends: dict[ConnectorKey, float] = {}
    for key in data.draw(st.lists(st.sampled_from(keys), unique=True)):
        low, top = case.topology.connector(key).min_current, model.top(key)
        valid = [0.0]
        if low <= top and low <= counted[key]:
            valid += [low, min(counted[key], top)]
        sends[key] = data.draw(st.sampled_from(valid))
    assert guard.check_plan(case.topology, case.snapshot, counted, sends) == []


@CORE_SETTINGS
@given(case=cases(max_chargers=15), data=st.data())
def test_decreases_then_increases_to_a_passing_allocation_both_pass(
        case: Case, data: st.DataObject) -> None:
    """From any state to an allocation the guard passes: sending every decrease, then (once
    they are confirmed) every increase, is allowed at both steps."""
    target = allocate(case.topology, case.snapshot).setpoints
    assume(guard.check(case.topology, case.snapshot, target) == [])
    model = Model.build(case.topology, case.snapshot)
    previous = {k: (model.failsafe[k] if k in model.offline
                    else data.draw(st.integers(0, 400).map(lambda n: n / 10)))
                for k in sorted(model.failsafe)}
    decreases = {k: target[k] for k in model.online if target[k] < previous[k]}
    assert guard.check_plan(case.topology, case.snapshot, previous, decreases) == []
    confirmed = {**previous, **decreases}
    increases = {k: target[k] for k in model.online if target[k] > confirmed[k]}
    assert guard.check_plan(case.topology, case.snapshot, confirmed, increases) == []


@CORE_SETTINGS
@given(step=steps(), data=st.data())
def test_an_allowed_step_never_pushes_a_limit_over_whatever_subset_applies(
        step: Step, data: st.DataObject) -> None:
    """The promise check_plan makes: once a step is allowed, any subset of its commands
    taking effect leaves every limit within its capacity, or no worse than it was."""
    case, counted, sends = step.case, step.counted, step.sends
    assume(guard.check_plan(case.topology, case.snapshot, counted, sends) == [])
    model = Model.build(case.topology, case.snapshot)
    applied = data.draw(st.sets(st.sampled_from(sorted(sends)))) if sends else set()
    state = {k: (sends[k] if k in applied else v) for k, v in counted.items()}
    for limit in model.constraints:
        assert limit.load(state) <= max(limit.capacity, limit.load(counted)) + 1e-6, limit.name
