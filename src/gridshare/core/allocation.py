"""The allocation engine: a demand snapshot in, one setpoint per connector out.

Every limit is a linear constraint on per-phase connector currents: each (group, phase)
pair, each group's kW limit, and each multi-connector charger's own maximum. Offline
connectors are fixed loads at their failsafe current. Solving happens in three steps:

1. **Admission** – who charges at all. Every admitted connector needs its minimum (6 A
   for AC); when not all minimums fit, connectors are admitted greedily in policy order
   and the rest pause. Who pauses rotates every ``rotation_interval_s`` and stays put in
   between, so nobody starves and nobody flaps.
2. **Sharing** – ``equal``, ``proportional`` and ``deadline`` are progressive filling
   (max-min fairness) of a level λ: each connector sits at ``clamp(λ·rate, low, high)``;
   the first constraint to fill freezes its members, the rest keep rising. ``priority``
   is a greedy pass in priority order.
3. **Rounding** – down to the setpoint resolution, then the left-over steps go back to the
   connectors that lost most, wherever every constraint above them still has room.

A group may override its parent's policy: the parent's policy decides how much the
subtree gets, per phase, then the subtree is re-shared by its own policy within that.

Everything runs on arrays (see :mod:`gridshare.core.arrays`) so that 10,000 connectors
take milliseconds. The result is the policy's answer, unguarded: the caller runs the
safety guard (:func:`gridshare.core.guard.enforce`) on it once per cycle.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from gridshare.core.arrays import (
    BoolArray,
    DemandArrays,
    FloatArray,
    IntArray,
    TopologyArrays,
    available_arrays,
    demand_arrays,
    topology_arrays,
)
from gridshare.core.decision import (
    Alarm,
    Allocation,
    Command,
    GroupLoad,
    RotationState,
    TransitionPlan,
)
from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import ConnectorKey, Phase, Policy, Topology

_TOL = 1e-9
_ROWS_PER_GROUP = 4
"""Constraint rows per group: L1, L2, L3 and kW."""


@dataclass(frozen=True, slots=True)
class Sums:
    """What a set of connector currents adds up to in every limit the allocator keeps."""

    group_amps: FloatArray
    """Shape (groups, 3): A per phase in every group."""
    group_kw: FloatArray
    charger_amps: FloatArray


def sums(ta: TopologyArrays, drawn: FloatArray) -> Sums:
    """Add each connector's current into its charger and every group above it."""
    n_groups = len(ta.group_ids)
    per_phase = drawn[:, None] * ta.phases
    power = drawn * ta.kw_per_amp
    amps = np.zeros((n_groups, 3))
    kw = np.zeros(n_groups)
    for level in range(ta.chain.shape[1]):
        groups = ta.chain[:, level]
        there = groups >= 0
        g = groups[there]
        for phase in range(3):
            amps[:, phase] += np.bincount(g, weights=per_phase[there, phase], minlength=n_groups)
        kw += np.bincount(g, weights=power[there], minlength=n_groups)
    chargers = np.bincount(ta.charger_of, weights=drawn, minlength=len(ta.charger_ids))
    return Sums(amps, kw, chargers.astype(float))


@dataclass(slots=True)
class _Problem:
    """Binding-capable constraints over one set of candidates, in both sparse orientations.

    Members are positions in the candidate array, not connector indices.
    """

    capacity: FloatArray
    c_ptr: IntArray
    c_member: IntArray
    c_weight: FloatArray
    m_ptr_np: IntArray
    m_cons_np: IntArray
    m_weight_np: FloatArray
    _lists: tuple[list[int], list[int], list[float]] | None = None
    """The member orientation as Python lists, built on first use by a Python loop."""

    def rows_of_entries(self) -> IntArray:
        return np.repeat(np.arange(len(self.capacity)), np.diff(self.c_ptr))

    def load(self, x: FloatArray) -> FloatArray:
        loads: FloatArray = np.bincount(
            self.rows_of_entries(), weights=self.c_weight * x[self.c_member],
            minlength=len(self.capacity)).astype(np.float64)
        return loads

    def lists(self) -> tuple[list[int], list[int], list[float]]:
        if self._lists is None:
            self._lists = (self.m_ptr_np.tolist(), self.m_cons_np.tolist(),
                           self.m_weight_np.tolist())
        return self._lists

    def member_rows(self, j: int) -> zip[tuple[int, float]]:
        ptr, cons, weight = self.lists()
        s, e = ptr[j], ptr[j + 1]
        return zip(cons[s:e], weight[s:e], strict=True)


@dataclass(slots=True)
class _Capacity:
    """What each constraint row leaves for online connectors (offline loads deducted)."""

    rows: FloatArray
    """Shape (groups * 4 + chargers,): (g, L1..L3, kW) rows, then one row per charger."""

    def minus(self, load: Sums) -> _Capacity:
        """The room left once ``load`` is drawn."""
        groups = np.column_stack((load.group_amps, load.group_kw)).ravel()
        return _Capacity(self.rows - np.concatenate((groups, load.charger_amps)))

    def with_budget(self, group: int, amps: FloatArray, kw: float) -> _Capacity:
        rows = self.rows.copy()
        base = group * _ROWS_PER_GROUP
        rows[base:base + 3] = np.minimum(rows[base:base + 3], amps)
        rows[base + 3] = min(rows[base + 3], kw)
        return _Capacity(rows)


def _capacity(topology: Topology, ta: TopologyArrays, snapshot: Snapshot,
              fixed: Sums) -> tuple[_Capacity, list[Alarm]]:
    """Room per constraint row once offline connectors draw their failsafe current, and an
    alarm for every group and phase that those alone already overload."""
    avail = available_arrays(topology, ta, snapshot)
    left = avail.amps - fixed.group_amps
    left_kw = avail.kw - fixed.group_kw
    rows = np.concatenate((
        np.column_stack((left, left_kw)).ravel(),
        np.where(ta.multi, ta.charger_max - fixed.charger_amps, np.inf)))
    alarms: list[Alarm] = []
    for gi, p in zip(*np.nonzero(left < -1e-6), strict=True):
        gid, phase = ta.group_ids[gi], Phase(int(p))
        load, room = float(fixed.group_amps[gi, p]), float(avail.amps[gi, p])
        alarms.append(Alarm(gid, phase, load, room,
                            f"group {gid} {phase.name}: offline chargers alone draw {load:.1f} A "
                            f"at their failsafe current, above the {room:.1f} A available; "
                            f"online chargers on {phase.name} below it are paused"))
    for gi in np.flatnonzero(left_kw < -1e-6).tolist():
        gid = ta.group_ids[gi]
        load, room = float(fixed.group_kw[gi]), float(avail.kw[gi])
        alarms.append(Alarm(gid, None, load, room,
                            f"group {gid}: offline chargers alone draw {load:.1f} kW, above "
                            f"the {room:.1f} kW available; online chargers below it are paused"))
    return _Capacity(rows), alarms


def _problem(ta: TopologyArrays, cands: IntArray, groups_ok: BoolArray, cap: _Capacity,
             high: FloatArray) -> _Problem:
    """Constraint rows of the allowed groups (and multi-connector chargers) over ``cands``.

    Rows that cannot bind even with every candidate at its maximum are dropped: in an
    uncongested site almost nothing is left to solve.
    """
    rows: list[IntArray] = []
    members: list[IntArray] = []
    weights: list[FloatArray] = []
    positions = np.arange(len(cands))
    phases = ta.phases[cands]
    kw = ta.kw_per_amp[cands]
    for level in range(ta.chain.shape[1]):
        g = ta.chain[cands, level]
        ok = g >= 0
        ok[ok] = groups_ok[g[ok]]
        for p in range(3):
            sel = ok & (phases[:, p] == 1)
            rows.append(g[sel] * _ROWS_PER_GROUP + p)
            members.append(positions[sel])
            weights.append(np.ones(int(sel.sum())))
        rows.append(g[ok] * _ROWS_PER_GROUP + 3)
        members.append(positions[ok])
        weights.append(kw[ok])
    charger = ta.charger_of[cands]
    multi = ta.multi[charger]
    rows.append(len(ta.group_ids) * _ROWS_PER_GROUP + charger[multi])
    members.append(positions[multi])
    weights.append(np.ones(int(multi.sum())))
    row = np.concatenate(rows)
    member = np.concatenate(members)
    weight = np.concatenate(weights)
    total_high = np.bincount(row, weights=weight * high[member], minlength=len(cap.rows))
    binding = np.isfinite(cap.rows) & (cap.rows < total_high - _TOL)
    keep = binding[row]
    row, member, weight = row[keep], member[keep], weight[keep]
    used, row = np.unique(row, return_inverse=True)
    order = np.argsort(row, kind="stable")
    counts = np.bincount(row, minlength=len(used))
    c_ptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    by_member = np.argsort(member, kind="stable")
    m_counts = np.bincount(member, minlength=len(cands))
    m_ptr = np.concatenate(([0], np.cumsum(m_counts))).astype(np.int64)
    return _Problem(
        capacity=np.maximum(cap.rows[used], 0.0), c_ptr=c_ptr, c_member=member[order],
        c_weight=weight[order], m_ptr_np=m_ptr, m_cons_np=row[by_member],
        m_weight_np=weight[by_member])


# --- admission and rotation -------------------------------------------------------------


def _rank(policy: Policy, inp: _Inputs, cands: IntArray) -> FloatArray:
    """Admission class per candidate, lower first: who pauses last under the policy."""
    if policy is Policy.PRIORITY:
        return -inp.demand.priority[cands].astype(float)
    if policy is Policy.DEADLINE:
        return inp.laxity_h[cands]
    return np.zeros(len(cands))


def _rotation_order(keys: list[ConnectorKey], rank: FloatArray, arrival: FloatArray, *,
                    now: datetime, due: bool, previous: RotationState,
                    fixed: BoolArray) -> list[int]:
    """Candidates in the order they are served when not everyone can be.

    ``rank`` is the policy's class (lower first). Inside a class, between rotations the
    connectors already charging keep their place and their order; at a rotation the
    longest waiting go first and the longest served go last, so nobody starves.
    ``fixed`` connectors (whose pauses a subtree policy rotates itself) keep their place.
    """
    now_s = now.timestamp()
    if not previous.admitted_since and not previous.waiting_since:  # nobody has a history
        first: list[int] = np.lexsort(
            (np.arange(len(keys)), arrival, -fixed.astype(float), rank)).tolist()
        return first
    place = np.zeros(len(keys))
    since_s = np.zeros(len(keys))
    for j, key in enumerate(keys):
        since = previous.admitted_since.get(key)
        if fixed[j]:
            place[j], since_s[j] = -1.0, 0.0
        elif since is not None:
            # Most recently admitted first: the order the last rotation served them in.
            place[j], since_s[j] = (1.0 if due else 0.0), -since.timestamp()
        else:
            waited = previous.waiting_since.get(key)
            place[j] = 0.0 if due else 1.0
            since_s[j] = waited.timestamp() if waited is not None else now_s
    order: list[int] = np.lexsort((np.arange(len(keys)), arrival, since_s, place, rank)).tolist()
    return order


def _admit(problem: _Problem, low: FloatArray, over: BoolArray, order: list[int]) -> BoolArray:
    """Who gets at least their minimum, served in ``order``. Only rows that cannot hold
    every minimum (``over``) can refuse anyone, so only they are checked one by one."""
    n = len(low)
    owner = np.repeat(np.arange(n), np.diff(problem.m_ptr_np))
    in_over = over[problem.m_cons_np]
    takes = (problem.m_weight_np * low[owner])[in_over]
    ptr = np.concatenate(([0], np.cumsum(np.bincount(owner[in_over], minlength=n))))
    ptr_l, rows_l, takes_l = ptr.tolist(), problem.m_cons_np[in_over].tolist(), takes.tolist()
    headroom = (problem.capacity + _TOL).tolist()
    admitted = np.ones(n, dtype=bool)
    for j in order:
        s, e = ptr_l[j], ptr_l[j + 1]
        if s == e:
            continue
        for k in range(s, e):
            if headroom[rows_l[k]] < takes_l[k]:
                admitted[j] = False
                break
        else:
            for k in range(s, e):
                headroom[rows_l[k]] -= takes_l[k]
    return admitted


# --- sharing ----------------------------------------------------------------------------


def _levels(rows: IntArray, weight: FloatArray, low: FloatArray, high: FloatArray,
            rate: FloatArray, cap_left: FloatArray) -> FloatArray:
    """For every row, the smallest λ at which Σ weight·clamp(λ·rate, low, high) over its
    entries reaches ``cap_left`` (inf if it never does). ``rows`` must be sorted."""
    n_rows = len(cap_left)
    lam = np.full(n_rows, np.inf)
    if len(rows) == 0:
        return lam
    base = np.bincount(rows, weights=weight * low, minlength=n_rows)
    top = np.bincount(rows, weights=weight * high, minlength=n_rows)
    present = np.bincount(rows, minlength=n_rows) > 0
    need = present & (top > cap_left + _TOL)
    at_start = need & (cap_left <= base)
    lam[at_start] = 0.0
    solve = need & ~at_start
    e = solve[rows]
    if not e.any():
        return lam
    rows, weight, low, high, rate = rows[e], weight[e], low[e], high[e], rate[e]
    points = np.concatenate((low / rate, high / rate))
    seg = np.concatenate((rows, rows))
    step = np.concatenate((weight * rate, -weight * rate))
    order = np.lexsort((points, seg))
    points, seg, step = points[order], seg[order], step[order]
    first = np.ones(len(seg), dtype=bool)
    first[1:] = seg[1:] != seg[:-1]
    last = np.ones(len(seg), dtype=bool)
    last[:-1] = first[1:]
    seg_no = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    cum = np.cumsum(step)
    slope = cum - (cum[starts] - step[starts])[seg_no]
    length = np.where(last, 0.0, np.diff(points, append=points[-1]))
    rise = slope * length
    cum_rise = np.cumsum(rise)
    before = cum_rise - rise
    load = base[seg] + before - before[starts][seg_no]
    cap = cap_left[seg]
    cross = (load <= cap) & (load + rise > cap) & (slope > _TOL)
    np.minimum.at(lam, seg[cross], points[cross] + (cap[cross] - load[cross]) / slope[cross])
    missed = solve & np.isinf(lam)
    if missed.any():  # rounding left no exact crossing: stop at the last point that fits
        fits = (load <= cap) & missed[seg]
        fallback = np.full(n_rows, 0.0)
        np.maximum.at(fallback, seg[fits], points[fits])
        lam[missed] = fallback[missed]
    return lam


def _fill(problem: _Problem, low: FloatArray, high: FloatArray, rate: FloatArray) -> FloatArray:
    """Progressive filling, in rounds: a row whose level is the lowest of every row its
    members belong to fills first, whatever the rest do; freeze its members, recompute
    the rows they touch, repeat."""
    n_rows = len(problem.capacity)
    x = low.copy()
    frozen = low >= high
    rows = problem.rows_of_entries()
    members = problem.c_member
    weights = problem.c_weight
    held = frozen[members]
    frozen_load = np.bincount(rows[held], weights=weights[held] * x[members[held]],
                              minlength=n_rows).astype(np.float64)
    rows, members, weights = rows[~held], members[~held], weights[~held]
    lam = np.full(n_rows, np.inf)
    dirty = np.ones(n_rows, dtype=bool)
    while len(rows):
        sel = dirty[rows]
        fresh = _levels(rows[sel], weights[sel], low[members[sel]], high[members[sel]],
                        rate[members[sel]], problem.capacity - frozen_load)
        lam[dirty] = fresh[dirty]
        dirty[:] = False
        lam_e = lam[rows]
        if not np.isfinite(lam_e).any():
            break
        member_min = np.full(len(low), np.inf)
        np.minimum.at(member_min, members, lam_e)
        row_min = np.full(n_rows, np.inf)
        np.minimum.at(row_min, rows, member_min[members])
        final = np.isfinite(lam) & (lam <= row_min)
        newly = np.unique(members[final[rows]])
        x[newly] = np.clip(member_min[newly] * rate[newly], low[newly], high[newly])
        frozen[newly] = True
        gone = frozen[members]
        frozen_load += np.bincount(rows[gone], weights=weights[gone] * x[members[gone]],
                                   minlength=n_rows)
        dirty[rows[gone]] = True
        rows, members, weights = rows[~gone], members[~gone], weights[~gone]
    x[~frozen] = high[~frozen]
    return x


def _serve_in_order(problem: _Problem, low: FloatArray, high: FloatArray,
                    order: list[int]) -> FloatArray:
    """Strict priority: each connector in turn takes all it can; one that would get less
    than its minimum pauses and leaves the room to those after it."""
    headroom = problem.capacity.tolist()
    ptr, cons, weights = problem.lists()
    lows, highs = low.tolist(), high.tolist()
    x = [0.0] * len(lows)
    for j in order:
        s, e = ptr[j], ptr[j + 1]
        room = highs[j]
        for k in range(s, e):
            fit = headroom[cons[k]] / weights[k]
            if fit < room:  # noqa: PLR1730 - a bare comparison is twice as fast as min() here
                room = fit
        if room >= lows[j] - _TOL and room > 0:
            x[j] = room
            for k in range(s, e):
                headroom[cons[k]] -= weights[k] * room
    return np.array(x, dtype=float)


def _least_room(problem: _Problem, head: FloatArray, n: int) -> FloatArray:
    """Per member, the fewest A (in its own units) any of its rows still has room for."""
    owner = np.repeat(np.arange(n), np.diff(problem.m_ptr_np))
    least = np.full(n, np.inf)
    np.minimum.at(least, owner, head[problem.m_cons_np] / problem.m_weight_np)
    return least


def _top_up(problem: _Problem, x: FloatArray, low: FloatArray, high: FloatArray,
            res: float, only: IntArray | None = None,
            scale: FloatArray | None = None) -> FloatArray:
    """Raise, lowest first, every connector (of ``only``) that every row above it still
    has room for, in whole steps, a paused one only by at least its minimum. Policies
    stop at their fair level; this makes sure nothing is left that someone could use.
    "Lowest" is the policy's level: x / ``scale`` (a connector's maximum under
    ``proportional``), plain amps otherwise."""
    per = np.ones(len(x)) if scale is None else np.where(scale > 0, scale, 1.0)
    head = problem.capacity - problem.load(x)
    x = x.copy()
    allowed = np.zeros(len(x), dtype=bool)
    allowed[np.arange(len(x)) if only is None else only] = True
    if len(problem.capacity):
        # Whole vectorised rounds first (lowest first in every row); the step-by-step loop
        # below then only sees the few that those rounds could not settle.
        for _ in range(20):
            steps = np.where(x == 0, low, res)
            active = allowed & (x + steps <= high + _TOL)
            if not active.any() or not _give_steps(problem, x, active, x / per, steps,
                                                   head).any():
                break
        allowed &= (_least_room(problem, head, len(x)) >= res - _TOL) & (x < high - _TOL)
    headroom = head.tolist()
    xs, lows, highs = x.tolist(), low.tolist(), high.tolist()
    # One step at a time to whoever is lowest, so the left-over is shared, not grabbed.
    pers = per.tolist()
    queue = [(xs[j] / pers[j], j) for j in np.flatnonzero(allowed).tolist()]
    heapq.heapify(queue)
    while queue:
        _, j = heapq.heappop(queue)
        step = lows[j] if xs[j] == 0 else res
        if xs[j] + step > highs[j] + _TOL:
            continue
        rows = list(problem.member_rows(j))
        if any(headroom[c] < w * step - _TOL for c, w in rows):
            continue
        xs[j] += step
        for c, w in rows:
            headroom[c] -= w * step
        heapq.heappush(queue, (xs[j] / pers[j], j))
    return np.array(xs, dtype=float)


def _give_steps(problem: _Problem, x: FloatArray, active: BoolArray, first_key: FloatArray,
                step: FloatArray, head: FloatArray) -> BoolArray:
    """One vectorised round: in every row, the active members in ``first_key`` order get
    their ``step`` while the steps of everyone before them in that row still fit; a member
    gets it only if every one of its rows agrees. Updates ``x`` and ``head`` in place and
    returns who got a step. No row can overflow: what it gives is at most a prefix sum."""
    owner = np.repeat(np.arange(len(x)), np.diff(problem.m_ptr_np))
    # Who some row blocks on its own takes no place in any row's queue.
    active = active & (_least_room(problem, head, len(x)) >= step - _TOL)
    e = active[owner]
    eo, er = owner[e], problem.m_cons_np[e]
    cost_e = problem.m_weight_np[e] * step[eo]
    order = np.lexsort((eo, first_key[eo], er))
    er_sorted = er[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = er_sorted[1:] != er_sorted[:-1]
    starts = np.flatnonzero(first)
    cum = np.cumsum(cost_e[order])
    used = cum - (cum[starts] - cost_e[order][starts])[np.cumsum(first) - 1]
    fits = np.empty(len(order), dtype=bool)
    fits[order] = used <= head[er_sorted] + _TOL
    chosen = active & ~(np.bincount(eo[~fits], minlength=len(x)) > 0)
    x[chosen] += step[chosen]
    got = chosen[eo]
    head -= np.bincount(er[got], weights=cost_e[got], minlength=len(head))
    return chosen


def _round(problem: _Problem, x: FloatArray, low: FloatArray, res: float) -> FloatArray:
    """Floor to the resolution, then hand the left-over back one step each, largest
    remainder first (see :func:`_give_steps`)."""
    floored = np.floor(x / res + 1e-7) * res
    floored = np.where(floored + _TOL < low, 0.0, floored)
    remainder = x - floored
    active = (remainder > 1e-7) & (floored > 0)
    if not active.any() or len(problem.capacity) == 0:
        return floored
    head = problem.capacity - problem.load(floored)
    steps = np.full(len(x), res)
    for _ in range(6):
        chosen = _give_steps(problem, floored, active, -remainder, steps, head)
        if not chosen.any():
            break
        active &= ~chosen
    return floored


@dataclass(slots=True)
class _Inputs:
    """Per-connector arrays of one allocation, shared by every (sub)solve."""

    ta: TopologyArrays
    demand: DemandArrays
    low: FloatArray
    high: FloatArray
    laxity_h: FloatArray
    required_a: FloatArray


def _inputs(topology: Topology, ta: TopologyArrays, snapshot: Snapshot) -> _Inputs:
    demand = demand_arrays(ta, snapshot)
    res = topology.resolution_a
    high = np.floor(np.minimum(ta.max_current, demand.ev_max) / res + 1e-7) * res
    # Less than one step is no charging: a 0 A minimum still competes for one step, so a
    # car without a minimum waits its turn like the others instead of starving at 0 A.
    low = np.maximum(np.ceil(ta.min_current / res - 1e-7) * res, res)
    hours_left = (demand.departure_s - snapshot.now.timestamp()) / 3600.0
    with np.errstate(divide="ignore", invalid="ignore"):
        max_kw = high * ta.kw_per_amp
        laxity = np.where(np.isnan(hours_left) | np.isnan(demand.energy_kwh) | (max_kw <= 0),
                          np.inf, hours_left - demand.energy_kwh / max_kw)
        required = np.where(np.isnan(hours_left) | np.isnan(demand.energy_kwh), 0.0,
                            np.where(hours_left > 0,
                                     demand.energy_kwh / hours_left / ta.kw_per_amp, np.inf))
    return _Inputs(ta, demand, low, high, laxity, np.nan_to_num(required, posinf=np.inf))


def _share(problem: _Problem, inp: _Inputs, cands: IntArray, admitted: BoolArray,
           policy: Policy, order: list[int]) -> FloatArray:
    low = np.where(admitted, inp.low[cands], 0.0)
    high = np.where(admitted, inp.high[cands], 0.0)
    if policy is Policy.PRIORITY:
        # Strict priority admits by itself, in order: a car the minimums' admission left
        # out may still fit once a higher one has paused for want of its own minimum.
        return _serve_in_order(problem, inp.low[cands], inp.high[cands], order)
    if policy is Policy.DEADLINE:
        # Least laxity first, each car its required rate (at least its minimum) or a
        # pause; then whatever is left is shared equally among the cars still charging.
        required = np.minimum(high, np.maximum(low, inp.required_a[cands]))
        low = _serve_in_order(problem, low, required, [j for j in order if admitted[j]])
        high = np.where(low > 0, high, 0.0)
    rate = np.where(high > 0, high, 1.0) if policy is Policy.PROPORTIONAL else np.ones(len(low))
    return _fill(problem, low, high, rate)


def _solve(topology: Topology, inp: _Inputs, cands: IntArray, groups_ok: BoolArray,
           cap: _Capacity, policy: Policy, previous: RotationState,
           now: datetime, fixed: BoolArray) -> tuple[FloatArray, RotationState]:
    problem = _problem(inp.ta, cands, groups_ok, cap, inp.high[cands])
    keys = [inp.ta.keys[i] for i in cands.tolist()]
    low = inp.low[cands]
    last = previous.last_rotation
    due = last is None or (now - last).total_seconds() >= topology.rotation_interval_s
    over = problem.load(low) > problem.capacity + _TOL
    order: list[int] = []
    if over.any() or policy in (Policy.PRIORITY, Policy.DEADLINE):
        order = _rotation_order(keys, _rank(policy, inp, cands), inp.demand.arrival_s[cands],
                                now=now, due=due, previous=previous, fixed=fixed)
    admitted = _admit(problem, low, over, order) if over.any() else np.ones(len(keys), bool)
    x = _share(problem, inp, cands, admitted, policy, order)
    if policy is Policy.PRIORITY:
        admitted = x > 0
    x = _round(problem, x, np.where(admitted, low, 0.0), topology.resolution_a)
    x = _top_up(problem, x, low, inp.high[cands], topology.resolution_a,
                only=np.flatnonzero((x > 0) & (x < inp.high[cands] - _TOL)),
                scale=inp.high[cands] if policy is Policy.PROPORTIONAL else None)
    charging = (x > 0).tolist()
    contended = not all(charging)
    state = RotationState(
        (now if due else last) if contended else last,
        {k: previous.admitted_since.get(k, now)
         for k, on in zip(keys, charging, strict=True) if on},
        {k: previous.waiting_since.get(k, now)
         for k, on in zip(keys, charging, strict=True) if not on})
    return x, state


# --- the whole tree ---------------------------------------------------------------------


def _override_roots(topology: Topology, gid: str, policy: Policy) -> list[str]:
    """Top-most groups below ``gid`` whose own policy differs from ``policy``."""
    out: list[str] = []
    for child in topology.groups[gid].groups:
        if topology.groups[child].policy is not policy:
            out.append(child)
        else:
            out.extend(_override_roots(topology, child, policy))
    return out


def allocate(topology: Topology, snapshot: Snapshot, *, policy: Policy | None = None,
             rotation: RotationState | None = None) -> Allocation:
    """Setpoints for every connector that keep every limit of ``topology``.

    ``policy`` overrides every group's configured policy. ``rotation`` is the state the
    previous allocation returned; pass it back so pauses rotate and do not flap.
    """
    ta = topology_arrays(topology)
    inp = _inputs(topology, ta, snapshot)
    demand = inp.demand
    fixed = np.where(demand.online, 0.0, ta.failsafe)
    cap, overload_alarms = _capacity(topology, ta, snapshot, sums(ta, fixed))
    candidate = demand.online & demand.active & (inp.high >= inp.low) & (inp.high > 0)
    setpoints = fixed.copy()
    previous = rotation or RotationState()
    admitted_since: dict[ConnectorKey, datetime] = {}
    waiting_since: dict[ConnectorKey, datetime] = {}
    last_rotation = previous.last_rotation

    def solve_tree(root: str, pol: Policy, cap: _Capacity) -> None:
        root_i = ta.group_index[root]
        in_tree = (ta.chain == root_i).any(axis=1)
        cands = np.flatnonzero(candidate & in_tree)
        if len(cands) == 0:
            return
        groups_ok = np.array([root in topology.group_chain(g) for g in ta.group_ids])
        subs = [] if policy is not None else _override_roots(topology, root, pol)
        fixed = np.zeros(len(cands), dtype=bool)
        for sub in subs:
            fixed |= (ta.chain[cands] == ta.group_index[sub]).any(axis=1)
        x, state = _solve(topology, inp, cands, groups_ok, cap, pol, previous, snapshot.now,
                          fixed)
        setpoints[cands] = x
        record(state)
        for sub in subs:
            sub_i = ta.group_index[sub]
            in_sub = cands[(ta.chain[cands] == sub_i).any(axis=1)]
            amps = (setpoints[in_sub, None] * ta.phases[in_sub]).sum(axis=0)
            kw = float((setpoints[in_sub] * ta.kw_per_amp[in_sub]).sum())
            solve_tree(sub, topology.groups[sub].policy,
                       cap.with_budget(sub_i, amps + _TOL, kw + _TOL))
        if subs and fixed.any() and not fixed.all():
            # What the subtrees left of their budget goes back to everyone else: solve
            # the rest again with the subtrees' final draw as a fixed load.
            held = np.zeros(len(ta.keys))
            held[cands[fixed]] = setpoints[cands[fixed]]
            rest = cands[~fixed]
            x, state = _solve(topology, inp, rest, groups_ok, cap.minus(sums(ta, held)),
                              pol, previous, snapshot.now, np.zeros(len(rest), dtype=bool))
            setpoints[rest] = x
            record(state)

    def record(state: RotationState) -> None:
        """The latest solve of a connector has the last word on its rotation state."""
        nonlocal last_rotation
        for key, since in state.admitted_since.items():
            admitted_since[key] = since
            waiting_since.pop(key, None)
        for key, since in state.waiting_since.items():
            waiting_since[key] = since
            admitted_since.pop(key, None)
        if state.last_rotation is not None and (
                last_rotation is None or state.last_rotation > last_rotation):
            last_rotation = state.last_rotation

    for root in topology.roots:
        solve_tree(root, policy or topology.groups[root].policy, cap)
    if policy is None and any(_override_roots(topology, r, topology.groups[r].policy)
                              for r in topology.roots):
        # Budgets handed down between policies can strand room; hand it out last.
        cands = np.flatnonzero(candidate)
        problem = _problem(ta, cands, np.ones(len(ta.group_ids), dtype=bool), cap,
                           inp.high[cands])
        setpoints[cands] = _top_up(problem, setpoints[cands], inp.low[cands],
                                   inp.high[cands], topology.resolution_a)

    result = dict(zip(ta.keys, setpoints.tolist(), strict=True))
    alarms = tuple(overload_alarms)
    offline = frozenset(k for k, on in zip(ta.keys, demand.online.tolist(), strict=True)
                        if not on)
    return Allocation(
        setpoints=result, offline=offline, groups=_group_loads(topology, snapshot, setpoints),
        rotation=RotationState(last_rotation, admitted_since, waiting_since), alarms=alarms)


def group_loads(topology: Topology, snapshot: Snapshot,
                setpoints: Mapping[ConnectorKey, float]) -> dict[str, GroupLoad]:
    """Per-phase and kW load of every group, for reporting (offline at failsafe)."""
    ta = topology_arrays(topology)
    values = np.fromiter((setpoints.get(k, 0.0) for k in ta.keys), dtype=float,
                         count=len(ta.keys))
    return _group_loads(topology, snapshot, values)


def _group_loads(topology: Topology, snapshot: Snapshot,
                 setpoints: FloatArray) -> dict[str, GroupLoad]:
    ta = topology_arrays(topology)
    drawn = np.where(demand_arrays(ta, snapshot).online, setpoints, ta.failsafe)
    total = sums(ta, drawn)
    avail = available_arrays(topology, ta, snapshot)
    amps = total.group_amps.tolist()
    kw = total.group_kw.tolist()
    available = avail.amps.tolist()
    out: dict[str, GroupLoad] = {}
    for gi, gid in enumerate(ta.group_ids):
        cond = snapshot.groups.get(gid)
        if cond is None:  # no live conditions: the static limit as configured
            limit, limit_kw, unc = (float(ta.group_max_current[gi]),
                                    float(ta.group_max_kw[gi]), (0.0, 0.0, 0.0))
        else:
            lim = effective_limit(topology.groups[gid], cond, topology.voltage)
            limit, limit_kw, unc = lim.current, lim.power_kw, cond.uncontrolled
        a, av = amps[gi], available[gi]
        out[gid] = GroupLoad(gid, (a[0], a[1], a[2]), unc, limit, (av[0], av[1], av[2]),
                             kw[gi], limit_kw)
    return out


def plan_transition(previous: Mapping[ConnectorKey, float],
                    target: Mapping[ConnectorKey, float]) -> TransitionPlan:
    """Decreases first, increases after: every moment in between stays below the target
    on the connectors already raised and below the old value on the rest."""
    decreases: list[Command] = []
    increases: list[Command] = []
    for key in sorted(set(previous) | set(target)):
        old = previous.get(key, 0.0)
        new = target.get(key, 0.0)
        if new < old:
            decreases.append(Command(key, new, old))
        elif new > old:
            increases.append(Command(key, new, old))
    return TransitionPlan(tuple(decreases), tuple(increases))


__all__ = ["allocate", "group_loads", "plan_transition"]
