"""Invariants of ``allocate`` on random sites: safety, bounds, work conservation, policy
semantics and determinism (spec invariants 1-4 and 8)."""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, note, settings
from hypothesis import strategies as st

from gridshare.core import guard
from gridshare.core.allocation import allocate
from gridshare.core.decision import Allocation
from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import ConnectorDemand, Snapshot
from gridshare.core.topology import ALL_PHASES, ConnectorKey, Policy, Topology

from .invariants import (
    EPS,
    Model,
    bound_problems,
    conservation_problems,
    deadline_problems,
    equal_problems,
    maximal_admission_problems,
    priority_problems,
    proportional_problems,
    safety_problems,
)
from .strategies import (
    CORE_SETTINGS,
    POLICIES,
    Case,
    Options,
    cases,
    describe,
    examples,
    snapshots,
    topologies,
)

ANY_POLICY = st.sampled_from([None, *POLICIES])


def run(case: Case, policy: Policy | None) -> tuple[Model, Allocation]:
    alloc = allocate(case.topology, case.snapshot, policy=policy)
    model = Model.build(case.topology, case.snapshot)
    note(describe(case))
    note(f"policy={policy} infeasible={sorted(model.infeasible)} guarded={alloc.guarded}")
    note(f"non-zero setpoints={ {k: v for k, v in alloc.setpoints.items() if v} }")
    return model, alloc


# -- 1. safety -------------------------------------------------------------------------------


@CORE_SETTINGS
@given(case=cases(), policy=ANY_POLICY)
def test_every_savable_limit_holds(case: Case, policy: Policy | None) -> None:
    model, alloc = run(case, policy)
    problems = safety_problems(model, alloc.setpoints, {a.group for a in alloc.alarms})
    assert not problems, problems


@settings(CORE_SETTINGS, max_examples=examples(150))
@given(case=cases(options=Options(p_offline=0.4), max_chargers=12, limit_scale=0.2),
       policy=ANY_POLICY)
def test_offline_overload_pauses_what_loads_the_lost_limit(case: Case,
                                                             policy: Policy | None) -> None:
    """Many offline chargers at their failsafe current: some groups cannot be saved."""
    model, alloc = run(case, policy)
    problems = safety_problems(model, alloc.setpoints, {a.group for a in alloc.alarms})
    assert not problems, problems


@CORE_SETTINGS
@given(case=cases(), policy=ANY_POLICY)
def test_guard_agrees_when_offline_load_is_feasible(case: Case, policy: Policy | None) -> None:
    model, alloc = run(case, policy)
    if model.infeasible:
        return
    assert guard.check(case.topology, case.snapshot, alloc.setpoints) == []
    assert guard.enforce(case.topology, case.snapshot, alloc) is alloc
    assert alloc.alarms == ()


@CORE_SETTINGS
@given(case=cases(), policy=ANY_POLICY)
def test_reported_group_loads_match_setpoints(case: Case, policy: Policy | None) -> None:
    model, alloc = run(case, policy)
    drawn = model.drawn(alloc.setpoints)
    assert alloc.offline == frozenset(model.offline)
    assert set(alloc.groups) == set(case.topology.groups)
    for gid, group in case.topology.groups.items():
        load = alloc.groups[gid]
        lim = effective_limit(group, case.snapshot.conditions(gid), case.topology.voltage)
        for phase in ALL_PHASES:
            expected = sum(drawn[c.key] for cid in case.topology.subtree_chargers(gid)
                           for c in case.topology.chargers[cid].connectors
                           if case.topology.chargers[cid].loads(phase))
            assert math.isclose(load.current[phase], expected, abs_tol=1e-6), (gid, phase)
        assert load.available == lim.available


# -- 2. bounds -------------------------------------------------------------------------------


@CORE_SETTINGS
@given(case=cases(), policy=ANY_POLICY)
def test_setpoints_are_paused_or_within_bounds_on_the_grid(case: Case,
                                                          policy: Policy | None) -> None:
    model, alloc = run(case, policy)
    assert set(alloc.setpoints) == {c.key for c in case.topology.connectors()}
    problems = bound_problems(model, alloc.setpoints)
    assert not problems, problems


# -- 3. work conservation --------------------------------------------------------------------


@CORE_SETTINGS
@given(case=cases(mixed_policies=False), policy=ANY_POLICY)
def test_work_conservation(case: Case, policy: Policy | None) -> None:
    """Every site-wide policy (and policy=None on a site with a single policy)."""
    model, alloc = run(case, policy)
    problems = conservation_problems(model, alloc.setpoints)
    assert not problems, problems


@settings(CORE_SETTINGS, max_examples=examples(150))
@given(case=cases(mixed_policies=True))
def test_work_conservation_with_mixed_group_policies(case: Case) -> None:
    """policy=None on a tree whose groups override each other's policy."""
    model, alloc = run(case, None)
    problems = conservation_problems(model, alloc.setpoints)
    assert not problems, problems


def phase_demand(topology: Topology) -> list[float]:
    """A per phase every charger could draw flat out (all active, no EV limits)."""
    demand = [0.0, 0.0, 0.0]
    for charger in topology.chargers.values():
        flat_out = min(charger.max_current, sum(c.max_current for c in charger.connectors))
        for phase in ALL_PHASES:
            if charger.loads(phase):
                demand[phase] += flat_out
    return demand


@st.composite
def _oversubscribed(draw: st.DrawFn, phases: int) -> tuple[Case, float]:
    """One binding A limit at the top, generous limits below, small minimums, demand above
    supply: the top must be used to 99.5 %."""
    topo = draw(topologies(min_chargers=20, max_chargers=40, small_mins=True,
                           phases=phases, resolution_a=0.1))
    snap = draw(snapshots(topo, Options(p_active=1.0, allow_offline=False,
                                        allow_conditions=False, ev_limits=False)))
    demand = phase_demand(topo)
    # A single root with the binding limit, children that never bind.
    fraction = draw(st.integers(30, 90)) / 100
    top_a = round(max(100.0, fraction * min(d for d in demand if d > 0)), 1)
    groups = {}
    roots = [g for g in topo.groups.values() if g.parent is None]
    for gid, group in topo.groups.items():
        groups[gid] = replace(group, max_current=1e6, max_power_kw=None)
    # Hang every root under one new binding group.
    groups["top"] = replace(roots[0], id="top", max_current=top_a, max_power_kw=None,
                            parent=None, groups=tuple(g.id for g in roots), chargers=())
    for r in roots:
        groups[r.id] = replace(groups[r.id], parent="top")
    topology = Topology(site="site", voltage=topo.voltage, policy=topo.policy, groups=groups,
                        chargers=topo.chargers, roots=("top",),
                        rotation_interval_s=topo.rotation_interval_s, resolution_a=0.1)
    return Case(topology, snap), top_a


@CORE_SETTINGS
@given(data=_oversubscribed(phases=3), policy=st.sampled_from(POLICIES))
def test_binding_limit_fully_used_three_phase(data: tuple[Case, float], policy: Policy) -> None:
    case, top_a = data
    _, alloc = run(case, policy)
    load = alloc.groups["top"].current
    assert max(load) <= top_a + EPS
    assert min(load) >= 0.995 * top_a, (load, top_a)


@CORE_SETTINGS
@given(data=_oversubscribed(phases=1), policy=st.sampled_from(POLICIES))
def test_binding_limit_fully_used_per_phase(data: tuple[Case, float], policy: Policy) -> None:
    case, top_a = data
    _, alloc = run(case, policy)
    load = alloc.groups["top"].current
    demand = phase_demand(case.topology)
    for phase in ALL_PHASES:
        assert load[phase] <= top_a + EPS
        if demand[phase] > top_a:
            assert load[phase] >= 0.995 * top_a, (phase, load, top_a)


# -- 4. policy semantics ---------------------------------------------------------------------


def _policy_case(policy: Policy) -> st.SearchStrategy[Case]:
    return cases(policy=policy)


@CORE_SETTINGS
@given(case=_policy_case(Policy.EQUAL))
def test_equal_is_max_min_fair(case: Case) -> None:
    model, alloc = run(case, Policy.EQUAL)
    problems = equal_problems(model, alloc.setpoints)
    assert not problems, problems


@CORE_SETTINGS
@given(case=_policy_case(Policy.EQUAL))
def test_equal_pauses_only_cars_that_do_not_fit(case: Case) -> None:
    model, alloc = run(case, Policy.EQUAL)
    problems = maximal_admission_problems(model, alloc.setpoints)
    assert not problems, problems


@CORE_SETTINGS
@given(case=_policy_case(Policy.PROPORTIONAL))
def test_proportional_gives_equal_fractions(case: Case) -> None:
    model, alloc = run(case, Policy.PROPORTIONAL)
    problems = proportional_problems(model, alloc.setpoints)
    assert not problems, problems


@CORE_SETTINGS
@given(case=_policy_case(Policy.PROPORTIONAL))
def test_proportional_pauses_only_cars_that_do_not_fit(case: Case) -> None:
    model, alloc = run(case, Policy.PROPORTIONAL)
    problems = maximal_admission_problems(model, alloc.setpoints)
    assert not problems, problems


@CORE_SETTINGS
@given(case=_policy_case(Policy.PRIORITY))
def test_priority_serves_higher_priority_first(case: Case) -> None:
    model, alloc = run(case, Policy.PRIORITY)
    problems = priority_problems(model, alloc.setpoints)
    assert not problems, problems


@CORE_SETTINGS
@given(case=_policy_case(Policy.DEADLINE))
def test_deadline_never_pauses_the_more_urgent_car(case: Case) -> None:
    model, alloc = run(case, Policy.DEADLINE)
    problems = deadline_problems(model, alloc.setpoints)
    assert not problems, problems


@CORE_SETTINGS
@given(case=cases(mixed_policies=False), data=st.data())
def test_policy_argument_equals_configuring_it_on_every_group(case: Case,
                                                              data: st.DataObject) -> None:
    """Passing policy=P is the same as a site whose every group is configured with P."""
    policy = data.draw(st.sampled_from(POLICIES))
    groups = {gid: replace(g, policy=policy) for gid, g in case.topology.groups.items()}
    configured = replace(case.topology, groups=groups, policy=policy)
    a = allocate(case.topology, case.snapshot, policy=policy)
    b = allocate(configured, case.snapshot)
    assert a.setpoints == b.setpoints


# -- 8. determinism --------------------------------------------------------------------------


@CORE_SETTINGS
@given(case=cases(), policy=ANY_POLICY)
def test_same_inputs_same_output(case: Case, policy: Policy | None) -> None:
    first = allocate(case.topology, case.snapshot, policy=policy)
    second = allocate(case.topology, case.snapshot, policy=policy)
    assert first == second


@CORE_SETTINGS
@given(case=cases(), policy=ANY_POLICY)
def test_snapshot_order_does_not_matter(case: Case, policy: Policy | None) -> None:
    """The controller builds snapshots from events in arrival order; that order must not
    change the answer."""
    reordered: dict[ConnectorKey, ConnectorDemand] = dict(
        reversed(list(case.snapshot.connectors.items())))
    groups = dict(reversed(list(case.snapshot.groups.items())))
    other = Snapshot(now=case.snapshot.now, connectors=reordered, groups=groups)
    first = allocate(case.topology, case.snapshot, policy=policy)
    second = allocate(case.topology, other, policy=policy)
    assert first.setpoints == second.setpoints
