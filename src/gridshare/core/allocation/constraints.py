"""Every limit as a linear row over connector currents, and what load leaves of it.

Each group gives four rows (L1, L2, L3 in A, and kW), each multi-connector charger one
(its own maximum over the sum of its connectors). A connector contributes ``weight ×
current`` to every row above it: 1 per A on a phase it loads, kW per A on a kW row.
Policies, admission and rounding all work on these rows; nothing else knows the tree.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from gridshare.core.allocation import kernels
from gridshare.core.arrays import (
    BoolArray,
    FloatArray,
    IntArray,
    TopologyArrays,
    available_arrays,
    demand_arrays,
    topology_arrays,
)
from gridshare.core.decision import Alarm, GroupLoad
from gridshare.core.limits import effective_limit
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import ConnectorKey, Phase, Topology

TOL = 1e-9
"""Float slack when comparing currents with room: far below any setpoint step."""
ROWS_PER_GROUP = 4
"""Constraint rows per group: L1, L2, L3 and kW."""


@dataclass(slots=True)
class Problem:
    """Binding-capable rows over one set of candidates, in both sparse orientations.

    Members are positions in the candidate array, not connector indices.
    """

    capacity: FloatArray
    c_ptr: IntArray
    c_member: IntArray
    c_weight: FloatArray
    m_ptr: IntArray
    m_cons: IntArray
    m_weight: FloatArray

    def rows_of_entries(self) -> IntArray:
        return np.repeat(np.arange(len(self.capacity)), np.diff(self.c_ptr))

    def owners(self) -> IntArray:
        """Per entry of the member orientation, the member it belongs to."""
        return np.repeat(np.arange(len(self.m_ptr) - 1), np.diff(self.m_ptr))

    def load(self, x: FloatArray) -> FloatArray:
        loads: FloatArray = np.bincount(
            self.rows_of_entries(), weights=self.c_weight * x[self.c_member],
            minlength=len(self.capacity)).astype(np.float64)
        return loads

    def least_room(self, head: FloatArray) -> FloatArray:
        """Per member, the fewest A (in its own units) any of its rows still has room for."""
        least = np.full(len(self.m_ptr) - 1, np.inf)
        np.minimum.at(least, self.owners(), head[self.m_cons] / self.m_weight)
        return least


@dataclass(slots=True)
class Capacity:
    """What each constraint row leaves for online connectors (offline loads deducted)."""

    rows: FloatArray
    """Shape (groups * 4 + chargers,): (g, L1..L3, kW) rows, then one row per charger."""

    def minus(self, load: FloatArray) -> Capacity:
        """The room left once ``load`` (per row, see :func:`row_loads`) is drawn."""
        return Capacity(self.rows - load)

    def with_budget(self, group: int, amps: FloatArray, kw: float) -> Capacity:
        """The same rows with ``group`` held to at most ``amps`` per phase and ``kw``."""
        rows = self.rows.copy()
        base = group * ROWS_PER_GROUP
        rows[base:base + 3] = np.minimum(rows[base:base + 3], amps)
        rows[base + 3] = min(rows[base + 3], kw)
        return Capacity(rows)


def capacity(topology: Topology, ta: TopologyArrays, snapshot: Snapshot,
             fixed: FloatArray) -> tuple[Capacity, list[Alarm]]:
    """Room per constraint row once offline connectors draw their failsafe current
    (``fixed``, per row), and an alarm for every group and phase that those alone already
    overload."""
    avail = available_arrays(topology, ta, snapshot)
    per_group = fixed[:len(ta.group_ids) * ROWS_PER_GROUP].reshape(-1, ROWS_PER_GROUP)
    fixed_amps, fixed_kw = per_group[:, :3], per_group[:, 3]
    left = avail.amps - fixed_amps
    left_kw = avail.kw - fixed_kw
    rows = np.concatenate((
        np.column_stack((left, left_kw)).ravel(),
        np.where(ta.multi, ta.charger_max - fixed[len(ta.group_ids) * ROWS_PER_GROUP:],
                 np.inf)))
    alarms: list[Alarm] = []
    for gi, p in zip(*np.nonzero(left < -1e-6), strict=True):
        gid, phase = ta.group_ids[gi], Phase(int(p))
        load, room = float(fixed_amps[gi, p]), float(avail.amps[gi, p])
        alarms.append(Alarm(gid, phase, load, room,
                            f"group {gid} {phase.name}: offline chargers alone draw {load:.1f} A "
                            f"at their failsafe current, above the {room:.1f} A available; "
                            f"online chargers on {phase.name} below it are paused"))
    for gi in np.flatnonzero(left_kw < -1e-6).tolist():
        gid = ta.group_ids[gi]
        load, room = float(fixed_kw[gi]), float(avail.kw[gi])
        alarms.append(Alarm(gid, None, load, room,
                            f"group {gid}: offline chargers alone draw {load:.1f} kW, above "
                            f"the {room:.1f} kW available; online chargers below it are paused"))
    return Capacity(rows), alarms


@dataclass(frozen=True, slots=True)
class Entries:
    """Every (row, connector, weight) of a site, built once per topology: each call then
    only selects its candidates and binding rows, in linear time, without sorting."""

    conn: IntArray
    """Per entry, the connector; entries are sorted by connector."""
    row: IntArray
    weight: FloatArray
    by_row: IntArray
    """The entries in row order (stable): the row orientation without a sort per call."""
    n_rows: int
    n_conn: int


def entries(topology: Topology, ta: TopologyArrays) -> Entries:
    """The site's entries, cached on the (immutable) topology."""
    cached = topology._cache.get("allocation.entries")
    if isinstance(cached, Entries):
        return cached
    conns: list[IntArray] = []
    rows: list[IntArray] = []
    weights: list[FloatArray] = []
    everyone = np.arange(len(ta.keys))
    for level in range(ta.chain.shape[1]):
        g = ta.chain[:, level]
        ok = g >= 0
        for p in range(3):
            sel = ok & (ta.phases[:, p] == 1)
            conns.append(everyone[sel])
            rows.append(g[sel] * ROWS_PER_GROUP + p)
            weights.append(np.ones(int(sel.sum())))
        conns.append(everyone[ok])
        rows.append(g[ok] * ROWS_PER_GROUP + 3)
        weights.append(ta.kw_per_amp[ok])
    multi = ta.multi[ta.charger_of]
    conns.append(everyone[multi])
    rows.append(len(ta.group_ids) * ROWS_PER_GROUP + ta.charger_of[multi])
    weights.append(np.ones(int(multi.sum())))
    conn = np.concatenate(conns)
    by_conn = np.argsort(conn, kind="stable")
    row = np.concatenate(rows)[by_conn]
    built = Entries(conn=conn[by_conn], row=row, weight=np.concatenate(weights)[by_conn],
                    by_row=np.argsort(row, kind="stable"),
                    n_rows=len(ta.group_ids) * ROWS_PER_GROUP + len(ta.charger_ids),
                    n_conn=len(ta.keys))
    topology._cache["allocation.entries"] = built
    return built


def row_loads(ent: Entries, drawn: FloatArray) -> FloatArray:
    """What ``drawn`` (A per connector) adds up to in every row: A per phase and kW of
    every group, A of every multi-connector charger."""
    loads = np.bincount(ent.row, weights=ent.weight * drawn[ent.conn], minlength=ent.n_rows)
    return loads.astype(np.float64, copy=False)


def rows_of_groups(ta: TopologyArrays, groups_ok: BoolArray) -> BoolArray:
    """The row mask of ``groups_ok``; chargers' own rows always count."""
    return np.concatenate((np.repeat(groups_ok, ROWS_PER_GROUP),
                           np.ones(len(ta.charger_ids), dtype=bool)))


def build_problem(ent: Entries, cands: IntArray, rows_ok: BoolArray, cap: Capacity,
                  high: FloatArray) -> Problem:
    """The allowed rows (``rows_ok``) over ``cands`` (ascending connector indices).

    Rows that cannot bind even with every candidate at its maximum are dropped: in an
    uncongested site almost nothing is left to solve.
    """
    position = np.full(ent.n_conn, -1, dtype=np.int64)
    position[cands] = np.arange(len(cands))
    room, c_ptr, c_member, c_weight, m_ptr, m_cons, m_weight = kernels.select_rows(
        ent.conn, ent.row, ent.weight, ent.by_row, ent.n_rows, position, len(cands), high,
        rows_ok, cap.rows, TOL)
    return Problem(capacity=room, c_ptr=c_ptr, c_member=c_member, c_weight=c_weight,
                   m_ptr=m_ptr, m_cons=m_cons, m_weight=m_weight)


def group_loads(topology: Topology, snapshot: Snapshot,
                setpoints: Mapping[ConnectorKey, float]) -> GroupLoads:
    """Per-phase and kW load of every group, for reporting (offline at failsafe)."""
    ta = topology_arrays(topology)
    values = np.fromiter((setpoints.get(k, 0.0) for k in ta.keys), dtype=float,
                         count=len(ta.keys))
    return group_loads_of(topology, snapshot, values)


def group_loads_of(topology: Topology, snapshot: Snapshot,
                   setpoints: FloatArray) -> GroupLoads:
    """:func:`group_loads` for setpoints aligned with the topology's connector order."""
    ta = topology_arrays(topology)
    drawn = np.where(demand_arrays(ta, snapshot).online, setpoints, ta.failsafe)
    total = row_loads(entries(topology, ta), drawn)
    per_group = total[:len(ta.group_ids) * ROWS_PER_GROUP].reshape(-1, ROWS_PER_GROUP)
    return GroupLoads(topology, snapshot, ta, per_group,
                      available_arrays(topology, ta, snapshot).amps)


class GroupLoads(Mapping[str, GroupLoad]):
    """Every group's load, for reporting: summed with the allocation, each
    :class:`GroupLoad` built when first read (most cycles read few or none, and building
    a thousand frozen objects would cost more than the allocation itself)."""

    __slots__ = ("_available", "_built", "_per_group", "_snapshot", "_ta", "_topology")

    def __init__(self, topology: Topology, snapshot: Snapshot, ta: TopologyArrays,
                 per_group: FloatArray, available: FloatArray) -> None:
        self._topology = topology
        self._snapshot = snapshot
        self._ta = ta
        self._per_group = per_group
        self._available = available
        self._built: dict[str, GroupLoad] = {}

    def __getitem__(self, gid: str) -> GroupLoad:
        found = self._built.get(gid)
        if found is not None:
            return found
        gi = self._ta.group_index[gid]
        cond = self._snapshot.groups.get(gid)
        if cond is None:  # no live conditions: the static limit as configured
            limit, limit_kw, unc = (float(self._ta.group_max_current[gi]),
                                    float(self._ta.group_max_kw[gi]), (0.0, 0.0, 0.0))
        else:
            lim = effective_limit(self._topology.groups[gid], cond, self._topology.voltage)
            limit, limit_kw, unc = lim.current, lim.power_kw, cond.uncontrolled
        a = self._per_group[gi].tolist()
        av = self._available[gi].tolist()
        load = GroupLoad(gid, (a[0], a[1], a[2]), unc, limit, (av[0], av[1], av[2]), a[3],
                         limit_kw)
        self._built[gid] = load
        return load

    def __iter__(self) -> Iterator[str]:
        return iter(self._ta.group_ids)

    def __len__(self) -> int:
        return len(self._ta.group_ids)

    def __repr__(self) -> str:
        return f"GroupLoads({dict(self)!r})"
