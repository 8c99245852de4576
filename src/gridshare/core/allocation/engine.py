"""The whole tree: one solve per policy subtree, budgets handed down between policies.

A group may override its parent's policy: the parent's policy decides how much the
subtree gets, per phase, then the subtree is re-shared by its own policy within that, and
whatever the subtree leaves goes back to the rest.
"""

from __future__ import annotations

from itertools import compress

import numpy as np

from gridshare.core.allocation.admission import Rotation, admit, rank, rotation_order
from gridshare.core.allocation.constraints import (
    TOL,
    Capacity,
    build_problem,
    capacity,
    entries,
    group_loads_of,
    row_loads,
    rows_of_groups,
)
from gridshare.core.allocation.inputs import Inputs, connector_inputs
from gridshare.core.allocation.policies import share
from gridshare.core.allocation.rounding import round_to_grid, top_up
from gridshare.core.arrays import BoolArray, FloatArray, IntArray, topology_arrays
from gridshare.core.decision import Allocation, RotationState
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import Policy, Topology


def solve(topology: Topology, inp: Inputs, cands: IntArray, rows_ok: BoolArray,
          cap: Capacity, policy: Policy, rotation: Rotation, fixed: BoolArray) -> FloatArray:
    """Admission, sharing and rounding of ``cands`` under one policy within ``cap``;
    records who charges in ``rotation``."""
    problem = build_problem(entries(topology, inp.ta), cands, rows_ok, cap, inp.high[cands])
    low = inp.low[cands]
    high = inp.high[cands]
    due = rotation.due(topology.rotation_interval_s)
    over = problem.load(low) > problem.capacity + TOL
    order: list[int] = []
    if over.any() or policy in (Policy.PRIORITY, Policy.DEADLINE):
        order = rotation_order(cands, rank(policy, inp, cands), inp.demand.arrival_s[cands],
                               now_s=rotation.now.timestamp(), due=due,
                               previous=rotation.previous, fixed=fixed)
    serves_in_order = policy in (Policy.PRIORITY, Policy.DEADLINE)
    admitted = (admit(problem, low, over, order) if over.any() and not serves_in_order
                else np.ones(len(cands), bool))
    x = share(problem, inp, cands, admitted, policy, order, topology.resolution_a)
    if serves_in_order:
        admitted = x > 0
    x = round_to_grid(x, np.where(admitted, low, 0.0), topology.resolution_a)
    x = top_up(problem, x, low, high, topology.resolution_a,
               only=np.flatnonzero((x > 0) & (x < high - TOL)),
               scale=high if policy is Policy.PROPORTIONAL else None)
    rotation.record(cands, x > 0, due)
    return x


def override_roots(topology: Topology, gid: str, policy: Policy) -> list[str]:
    """Top-most groups below ``gid`` whose own policy differs from ``policy``."""
    out: list[str] = []
    for child in topology.groups[gid].groups:
        if topology.groups[child].policy is not policy:
            out.append(child)
        else:
            out.extend(override_roots(topology, child, policy))
    return out


def allocate(topology: Topology, snapshot: Snapshot, *, policy: Policy | None = None,
             rotation: RotationState | None = None) -> Allocation:
    """Setpoints for every connector that keep every limit of ``topology``.

    ``policy`` overrides every group's configured policy. ``rotation`` is the state the
    previous allocation returned; pass it back so pauses rotate and do not flap. The
    answer is the policy's, unguarded: the caller runs :func:`gridshare.core.guard.enforce`
    on it once per cycle.
    """
    ta = topology_arrays(topology)
    inp = connector_inputs(topology, ta, snapshot)
    demand = inp.demand
    fixed_load = np.where(demand.online, 0.0, ta.failsafe)
    ent = entries(topology, ta)
    cap, overload_alarms = capacity(topology, ta, snapshot, row_loads(ent, fixed_load))
    candidate = demand.online & demand.active & (inp.high >= inp.low) & (inp.high > 0)
    setpoints = fixed_load.copy()
    state = Rotation(ta, rotation or RotationState(), snapshot.now)

    def solve_tree(root: str, pol: Policy, cap: Capacity) -> None:
        root_i = ta.group_index[root]
        in_tree = (ta.chain == root_i).any(axis=1)
        cands = np.flatnonzero(candidate & in_tree)
        if len(cands) == 0:
            return
        rows_ok = rows_of_groups(ta, (ta.group_chain == root_i).any(axis=1))
        subs = [] if policy is not None else override_roots(topology, root, pol)
        fixed = np.zeros(len(cands), dtype=bool)
        for sub in subs:
            fixed |= (ta.chain[cands] == ta.group_index[sub]).any(axis=1)
        setpoints[cands] = solve(topology, inp, cands, rows_ok, cap, pol, state, fixed)
        for sub in subs:
            sub_i = ta.group_index[sub]
            in_sub = cands[(ta.chain[cands] == sub_i).any(axis=1)]
            amps = (setpoints[in_sub, None] * ta.phases[in_sub]).sum(axis=0)
            kw = float((setpoints[in_sub] * ta.kw_per_amp[in_sub]).sum())
            solve_tree(sub, topology.groups[sub].policy,
                       cap.with_budget(sub_i, amps + TOL, kw + TOL))
        if subs and fixed.any() and not fixed.all():
            # What the subtrees left of their budget goes back to everyone else: solve
            # the rest again with the subtrees' final draw as a fixed load.
            held = np.zeros(len(ta.keys))
            held[cands[fixed]] = setpoints[cands[fixed]]
            rest = cands[~fixed]
            setpoints[rest] = solve(topology, inp, rest, rows_ok,
                                    cap.minus(row_loads(ent, held)), pol, state,
                                    np.zeros(len(rest), dtype=bool))

    for root in topology.roots:
        solve_tree(root, policy or topology.groups[root].policy, cap)
    if policy is None and any(override_roots(topology, r, topology.groups[r].policy)
                              for r in topology.roots):
        # Budgets handed down between policies can strand room; hand it out last.
        cands = np.flatnonzero(candidate)
        problem = build_problem(entries(topology, ta), cands,
                                np.ones(len(cap.rows), dtype=bool), cap, inp.high[cands])
        setpoints[cands] = top_up(problem, setpoints[cands], inp.low[cands],
                                  inp.high[cands], topology.resolution_a)

    offline = frozenset(compress(ta.keys, (~demand.online).tolist()))
    return Allocation(
        setpoints=dict(zip(ta.keys, setpoints.tolist(), strict=True)), offline=offline,
        groups=group_loads_of(topology, snapshot, setpoints),
        rotation=state.state(),
        alarms=tuple(overload_alarms))
