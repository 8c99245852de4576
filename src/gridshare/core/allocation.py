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
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import numpy.typing as npt

from gridshare.core import guard
from gridshare.core.decision import (
    Alarm,
    Allocation,
    Command,
    GroupLoad,
    RotationState,
    TransitionPlan,
)
from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import ConnectorDemand, Snapshot
from gridshare.core.topology import Connector, ConnectorKey, Policy, Topology

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_TOL = 1e-9


@dataclass(slots=True)
class _Candidate:
    """An online connector whose car wants power, with its bounds in A per phase."""

    index: int
    key: ConnectorKey
    low: float
    high: float
    kw_per_amp: float
    priority: int
    arrival: float
    laxity_h: float
    required_a: float


@dataclass(slots=True)
class _Problem:
    """Constraints restricted to one set of candidates, in compressed sparse form."""

    capacity: FloatArray
    # constraint -> members
    c_ptr: IntArray
    c_member: IntArray
    c_weight: FloatArray
    # member -> constraints
    m_ptr: IntArray
    m_cons: IntArray
    m_weight: FloatArray
    names: list[str]

    def members(self, i: int) -> tuple[list[int], list[float]]:
        lo, hi = self.m_ptr[i], self.m_ptr[i + 1]
        return self.m_cons[lo:hi].tolist(), self.m_weight[lo:hi].tolist()

    def load(self, x: FloatArray) -> FloatArray:
        counts = np.diff(self.c_ptr)
        rows = np.repeat(np.arange(len(self.capacity)), counts)
        loads: FloatArray = np.bincount(rows, weights=self.c_weight * x[self.c_member],
                                        minlength=len(self.capacity)).astype(np.float64)
        return loads


class _Site:
    """Per-allocation view of the topology: candidates, fixed offline loads, constraints."""

    def __init__(self, topology: Topology, snapshot: Snapshot) -> None:
        self.topology = topology
        self.snapshot = snapshot
        self.connectors: list[Connector] = list(topology.connectors())
        self.index = {c.key: i for i, c in enumerate(self.connectors)}
        self.candidates: list[_Candidate] = []
        self.fixed = np.zeros(len(self.connectors))
        self.offline: set[ConnectorKey] = set()
        res = topology.resolution_a
        now_ts = snapshot.now.timestamp()
        for i, conn in enumerate(self.connectors):
            charger = topology.chargers[conn.charger_id]
            demand = snapshot.demand(conn.key)
            if not demand.online:
                self.offline.add(conn.key)
                self.fixed[i] = charger.failsafe_current
                continue
            if not demand.active:
                continue
            high = min(conn.max_current, charger.max_current)
            if demand.max_current is not None:
                high = min(high, demand.max_current)
            high = math.floor(high / res + _TOL) * res
            low = math.ceil(conn.min_current / res - _TOL) * res
            if high < low or high <= 0:
                continue
            kw_per_amp = topology.power_kw_per_amp(charger)
            self.candidates.append(_Candidate(
                index=i, key=conn.key, low=low, high=high, kw_per_amp=kw_per_amp,
                priority=demand.priority if demand.priority is not None else charger.priority,
                arrival=demand.arrival.timestamp() if demand.arrival else now_ts,
                laxity_h=_laxity_h(demand, snapshot.now, high * kw_per_amp),
                required_a=_required_a(demand, snapshot.now, kw_per_amp),
            ))

    def problem(self, cands: Sequence[_Candidate], groups: Sequence[str],
                budgets: Mapping[str, tuple[FloatArray, float]]) -> _Problem:
        """Constraints of ``groups`` (and of chargers) over ``cands``; a budget (A per
        phase, kW) replaces a group's capacity when tighter."""
        topo = self.topology
        rows: list[tuple[str, float, list[int], list[float]]] = []
        by_group: dict[str, list[int]] = {g: [] for g in groups}
        wanted = set(groups)
        for j, cand in enumerate(cands):
            for gid in topo.charger_groups(cand.key[0]):
                if gid in wanted:
                    by_group[gid].append(j)
        for gid in groups:
            members = by_group[gid]
            if not members:
                continue
            group = topo.groups[gid]
            lim = effective_limit(group, self.snapshot.conditions(gid), topo.voltage)
            fixed_phase, fixed_kw = self._fixed_load(gid)
            budget = budgets.get(gid)
            for phase in range(3):
                on_phase = [j for j in members
                            if topo.chargers[cands[j].key[0]].phase_vector[phase]]
                cap = lim.available[phase] - fixed_phase[phase]
                if budget is not None:
                    cap = min(cap, float(budget[0][phase]))
                if on_phase and math.isfinite(cap):
                    rows.append((f"{gid}/L{phase + 1}", cap, on_phase, [1.0] * len(on_phase)))
            cap_kw = lim.available_power_kw - fixed_kw
            if budget is not None:
                cap_kw = min(cap_kw, budget[1])
            if math.isfinite(cap_kw):
                rows.append((f"{gid}/kW", cap_kw, members,
                             [cands[j].kw_per_amp for j in members]))
        by_charger: dict[str, list[int]] = {}
        for j, cand in enumerate(cands):
            by_charger.setdefault(cand.key[0], []).append(j)
        for cid, members in by_charger.items():
            charger = topo.chargers[cid]
            if len(charger.connectors) < 2:
                continue
            fixed = sum(self.fixed[self.index[c.key]] for c in charger.connectors)
            rows.append((f"{cid}/charger", charger.max_current - fixed, members,
                         [1.0] * len(members)))
        return _compress(rows, len(cands), cands)

    def _fixed_load(self, gid: str) -> tuple[list[float], float]:
        amps = [0.0, 0.0, 0.0]
        kw = 0.0
        if not self.offline:
            return amps, kw
        for cid in self.topology.subtree_chargers(gid):
            charger = self.topology.chargers[cid]
            for conn in charger.connectors:
                if conn.key in self.offline:
                    vec = charger.phase_vector
                    for p in range(3):
                        amps[p] += vec[p] * charger.failsafe_current
                    kw += charger.failsafe_current * self.topology.power_kw_per_amp(charger)
        return amps, kw


def _compress(rows: list[tuple[str, float, list[int], list[float]]], n: int,
              cands: Sequence[_Candidate]) -> _Problem:
    """Drop constraints that can never bind; build both sparse orientations."""
    high = np.array([c.high for c in cands], dtype=float)
    kept = [r for r in rows if r[1] < sum(w * high[j] for j, w in zip(r[2], r[3], strict=True))
            - _TOL]
    capacity = np.array([max(0.0, r[1]) for r in kept], dtype=float)
    lengths = np.array([len(r[2]) for r in kept], dtype=np.int64)
    c_ptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    c_member = np.array([j for r in kept for j in r[2]], dtype=np.int64)
    c_weight = np.array([w for r in kept for w in r[3]], dtype=float)
    rows_of = np.repeat(np.arange(len(kept), dtype=np.int64), lengths)
    order = np.argsort(c_member, kind="stable")
    m_counts = np.bincount(c_member, minlength=n) if len(c_member) else np.zeros(n, np.int64)
    m_ptr = np.concatenate(([0], np.cumsum(m_counts))).astype(np.int64)
    return _Problem(capacity, c_ptr, c_member, c_weight, m_ptr,
                    rows_of[order], c_weight[order], [r[0] for r in kept])


def _laxity_h(demand: ConnectorDemand, now: datetime, max_kw: float) -> float:
    """Hours of slack before the car must charge flat out to meet its departure."""
    if demand.departure is None or demand.energy_needed_kwh is None or max_kw <= 0:
        return math.inf
    hours_left = (demand.departure - now).total_seconds() / 3600.0
    return hours_left - demand.energy_needed_kwh / max_kw


def _required_a(demand: ConnectorDemand, now: datetime, kw_per_amp: float) -> float:
    """The steady current that delivers the energy needed by departure (inf if overdue)."""
    if demand.departure is None or demand.energy_needed_kwh is None:
        return 0.0
    hours_left = (demand.departure - now).total_seconds() / 3600.0
    if hours_left <= 0:
        return math.inf if demand.energy_needed_kwh > 0 else 0.0
    return demand.energy_needed_kwh / hours_left / kw_per_amp


# --- admission and rotation -------------------------------------------------------------


def _class_key(cand: _Candidate, policy: Policy) -> float:
    if policy is Policy.PRIORITY:
        return float(-cand.priority)
    if policy is Policy.DEADLINE:
        return cand.laxity_h
    return 0.0


def _admit(problem: _Problem, cands: Sequence[_Candidate], policy: Policy, *, now: datetime,
           interval_s: float, previous: RotationState) -> tuple[list[bool], RotationState]:
    """Choose who charges. Returns per-candidate admission and the new rotation state."""
    low = np.array([c.low for c in cands], dtype=float)
    if np.all(problem.load(low) <= problem.capacity + _TOL):
        return [True] * len(cands), RotationState(
            previous.last_rotation, {c.key: previous.admitted_since.get(c.key, now)
                                     for c in cands}, {})
    last = previous.last_rotation
    due = last is None or (now - last).total_seconds() >= interval_s
    def order_key(j: int) -> tuple[float, int, float, float, int]:
        cand = cands[j]
        was_admitted = cand.key in previous.admitted_since
        if was_admitted:
            since = previous.admitted_since[cand.key].timestamp()
            # Stable between rotations; at a rotation, the longest served pause first.
            rank, t = (0, 0.0) if not due else (1, -since)
        else:
            rank = 1 if not due else 0
            t = previous.waiting_since.get(cand.key, now).timestamp()
        return (_class_key(cand, policy), rank, t, cand.arrival, j)

    order = sorted(range(len(cands)), key=order_key)
    headroom = problem.capacity.copy()
    admitted = [False] * len(cands)
    for j in order:
        cons, weights = problem.members(j)
        need = cands[j].low
        if all(headroom[c] >= w * need - _TOL for c, w in zip(cons, weights, strict=True)):
            admitted[j] = True
            for c, w in zip(cons, weights, strict=True):
                headroom[c] -= w * need
    admitted_since = {
        c.key: (previous.admitted_since.get(c.key, now) if ok else now)
        for c, ok in zip(cands, admitted, strict=True) if ok
    }
    waiting = {c.key: previous.waiting_since.get(c.key, now)
               for c, ok in zip(cands, admitted, strict=True) if not ok}
    return admitted, RotationState(now if due else last, admitted_since, waiting)


# --- sharing ----------------------------------------------------------------------------


def _binding_level(cap_left: float, weight: FloatArray, low: FloatArray, high: FloatArray,
                   rate: FloatArray) -> float:
    """Smallest λ at which Σ weight·clamp(λ·rate, low, high) reaches ``cap_left``."""
    if len(weight) == 0 or float(weight @ high) <= cap_left + _TOL:
        return math.inf
    base = float(weight @ low)
    if cap_left <= base:
        return 0.0
    points = np.concatenate((low / rate, high / rate))
    slope_step = np.concatenate((weight * rate, -weight * rate))
    order = np.argsort(points, kind="stable")
    points = points[order]
    slope = np.cumsum(slope_step[order])
    loads = base + np.concatenate(([0.0], np.cumsum(slope[:-1] * np.diff(points))))
    k = int(np.searchsorted(loads, cap_left, side="right")) - 1
    if k < 0:
        return 0.0
    if slope[k] <= _TOL:
        return float(points[k])
    return float(points[k] + (cap_left - loads[k]) / slope[k])


def _fill(problem: _Problem, low: FloatArray, high: FloatArray, rate: FloatArray) -> FloatArray:
    """Progressive filling: raise a common level until every connector is stopped by a
    full constraint or its own maximum."""
    n_cons = len(problem.capacity)
    frozen = low >= high
    x = low.copy()
    frozen_load = np.zeros(n_cons)
    # Connectors stuck at their bound count as fixed load from the start.
    if frozen.any():
        for j in np.flatnonzero(frozen & (x > 0)).tolist():
            cons, weights = problem.members(j)
            for c, w in zip(cons, weights, strict=True):
                frozen_load[c] += w * x[j]
    done = np.zeros(n_cons, dtype=bool)
    dirty = np.zeros(n_cons, dtype=bool)

    def level(c: int) -> float:
        s, e = problem.c_ptr[c], problem.c_ptr[c + 1]
        members = problem.c_member[s:e]
        live = ~frozen[members]
        m = members[live]
        return _binding_level(problem.capacity[c] - frozen_load[c], problem.c_weight[s:e][live],
                              low[m], high[m], rate[m])

    heap = [(level(c), c) for c in range(n_cons)]
    heapq.heapify(heap)
    while heap:
        lam, c = heapq.heappop(heap)
        if done[c]:
            continue
        if dirty[c]:
            dirty[c] = False
            heapq.heappush(heap, (level(c), c))
            continue
        if math.isinf(lam):
            break
        done[c] = True
        s, e = problem.c_ptr[c], problem.c_ptr[c + 1]
        members = problem.c_member[s:e]
        m = members[~frozen[members]]
        if len(m) == 0:
            continue
        x[m] = np.clip(lam * rate[m], low[m], high[m])
        frozen[m] = True
        starts = problem.m_ptr[m]
        counts = problem.m_ptr[m + 1] - starts
        idx = np.repeat(starts - np.concatenate(([0], np.cumsum(counts)[:-1])), counts) + \
            np.arange(int(counts.sum()))
        touched = problem.m_cons[idx]
        np.add.at(frozen_load, touched, problem.m_weight[idx] * np.repeat(x[m], counts))
        dirty[touched] = True
    rest = ~frozen
    x[rest] = high[rest]
    return x


def _greedy_raise(problem: _Problem, x: FloatArray, cap_at: FloatArray,
                  order: Sequence[int]) -> None:
    """In ``order``, raise each connector to ``cap_at`` as far as every constraint allows."""
    headroom = (problem.capacity - problem.load(x)).tolist()
    for j in order:
        room = float(cap_at[j] - x[j])
        if room <= 0:
            continue
        cons, weights = problem.members(j)
        for c, w in zip(cons, weights, strict=True):
            room = min(room, headroom[c] / w)
        if room > 0:
            x[j] += room
            for c, w in zip(cons, weights, strict=True):
                headroom[c] -= w * room


def _share(problem: _Problem, cands: Sequence[_Candidate], admitted: Sequence[bool],
           policy: Policy) -> FloatArray:
    ok = np.array(admitted, dtype=bool)
    low = np.where(ok, [c.low for c in cands], 0.0)
    high = np.where(ok, [c.high for c in cands], 0.0)
    if policy is Policy.PRIORITY:
        x = low.copy()
        order = sorted((j for j in range(len(cands)) if ok[j]),
                       key=lambda j: (-cands[j].priority, cands[j].arrival, j))
        _greedy_raise(problem, x, high, order)
        return x
    if policy is Policy.DEADLINE:
        required = np.minimum(high, np.maximum(low, [c.required_a for c in cands]))
        boosted = low.copy()
        order = sorted((j for j in range(len(cands)) if ok[j]),
                       key=lambda j: (cands[j].laxity_h, cands[j].arrival, j))
        _greedy_raise(problem, boosted, required, order)
        low = boosted
    rate = np.where(high > 0, high, 1.0) if policy is Policy.PROPORTIONAL else np.ones(len(low))
    return _fill(problem, low, high, rate)


def _round(problem: _Problem, x: FloatArray, low: FloatArray, res: float) -> FloatArray:
    """Floor to the resolution, then hand back whole steps, largest remainders first."""
    floored = np.floor(x / res + 1e-7) * res
    floored = np.where(floored + _TOL < low, 0.0, floored)
    remainder = x - floored
    candidates = np.flatnonzero((remainder > 1e-7) & (floored > 0))
    if len(candidates) == 0 or len(problem.capacity) == 0:
        return floored
    headroom = (problem.capacity - problem.load(floored)).tolist()
    for j in sorted(candidates.tolist(), key=lambda j: (-remainder[j], j)):
        cons, weights = problem.members(j)
        if all(headroom[c] >= w * res - _TOL for c, w in zip(cons, weights, strict=True)):
            floored[j] += res
            for c, w in zip(cons, weights, strict=True):
                headroom[c] -= w * res
    return floored


# --- the whole tree ---------------------------------------------------------------------


def _subtree_groups(topology: Topology, root: str) -> list[str]:
    out, stack = [], [root]
    while stack:
        gid = stack.pop()
        out.append(gid)
        stack.extend(topology.groups[gid].groups)
    return out


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
    site = _Site(topology, snapshot)
    previous = rotation or RotationState()
    setpoints = np.array(site.fixed)
    new_admitted: dict[ConnectorKey, datetime] = {}
    new_waiting: dict[ConnectorKey, datetime] = {}
    last_rotation = previous.last_rotation

    def solve(group_ids: list[str], cands: list[_Candidate], pol: Policy,
              budgets: Mapping[str, tuple[FloatArray, float]]) -> None:
        nonlocal last_rotation
        if not cands:
            return
        problem = site.problem(cands, group_ids, budgets)
        admitted, state = _admit(problem, cands, pol, now=snapshot.now,
                                 interval_s=topology.rotation_interval_s, previous=previous)
        x = _share(problem, cands, admitted, pol)
        low = np.array([c.low for c in cands], dtype=float)
        x = _round(problem, x, low, topology.resolution_a)
        for cand, amps in zip(cands, x.tolist(), strict=True):
            setpoints[cand.index] = amps
        new_admitted.update(state.admitted_since)
        new_waiting.update(state.waiting_since)
        if state.last_rotation is not None and (last_rotation is None
                                                or state.last_rotation > last_rotation):
            last_rotation = state.last_rotation

    def solve_tree(root: str, pol: Policy, budgets: Mapping[str, tuple[FloatArray, float]],
                   ) -> None:
        groups = _subtree_groups(topology, root)
        in_tree = set(topology.subtree_chargers(root))
        cands = [c for c in site.candidates if c.key[0] in in_tree]
        solve(groups, cands, pol, budgets)
        if policy is not None:
            return
        for sub in _override_roots(topology, root, pol):
            sub_chargers = set(topology.subtree_chargers(sub))
            amps = np.zeros(3)
            kw = 0.0
            for cand in cands:
                if cand.key[0] in sub_chargers:
                    charger = topology.chargers[cand.key[0]]
                    amps += np.array(charger.phase_vector) * setpoints[cand.index]
                    kw += setpoints[cand.index] * cand.kw_per_amp
            solve_tree(sub, topology.groups[sub].policy, {sub: (amps, kw + _TOL)})

    for root in topology.roots:
        solve_tree(root, policy or topology.groups[root].policy, {})

    result = {c.key: float(setpoints[i]) for i, c in enumerate(site.connectors)}
    loads = group_loads(topology, snapshot, result)
    overloaded = {gid for gid in topology.groups if _offline_overload(site, gid)}
    alarms = tuple(
        Alarm(gid, None, max(loads[gid].current), min(loads[gid].available),
              f"group {gid}: offline chargers alone draw more than it allows; "
              f"every online charger below it is paused")
        for gid in sorted(overloaded))
    allocation = Allocation(
        setpoints=result, offline=frozenset(site.offline), groups=loads,
        rotation=RotationState(last_rotation, new_admitted, new_waiting), alarms=alarms)
    unexplained = [a for a in guard.check(topology, snapshot, result)
                   if a.group not in overloaded]
    if not unexplained:
        return allocation
    guarded = guard.enforce(topology, snapshot, allocation)
    return replace(guarded, groups=group_loads(topology, snapshot, guarded.setpoints))


def _offline_overload(site: _Site, gid: str) -> bool:
    group = site.topology.groups[gid]
    lim = effective_limit(group, site.snapshot.conditions(gid), site.topology.voltage)
    amps, kw = site._fixed_load(gid)
    return any(a > av + 1e-6 for a, av in zip(amps, lim.available, strict=True)) or \
        kw > lim.available_power_kw + 1e-6


def group_loads(topology: Topology, snapshot: Snapshot,
                setpoints: Mapping[ConnectorKey, float]) -> dict[str, GroupLoad]:
    """Per-phase and kW load of every group for reporting (offline at failsafe)."""
    drawn = guard.drawn_current(topology, snapshot, setpoints)
    amps = {gid: [0.0, 0.0, 0.0] for gid in topology.groups}
    kw = dict.fromkeys(topology.groups, 0.0)
    for charger in topology.chargers.values():
        total = sum(drawn[c.key] for c in charger.connectors)
        if total == 0:
            continue
        vec = charger.phase_vector
        for gid in topology.charger_groups(charger.id):
            for p in range(3):
                amps[gid][p] += vec[p] * total
            kw[gid] += total * topology.power_kw_per_amp(charger)
    out: dict[str, GroupLoad] = {}
    for gid, group in topology.groups.items():
        cond = snapshot.conditions(gid)
        lim = effective_limit(group, cond, topology.voltage)
        a = amps[gid]
        out[gid] = GroupLoad(gid, (a[0], a[1], a[2]), cond.uncontrolled, lim.current,
                             lim.available, kw[gid], lim.power_kw)
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
