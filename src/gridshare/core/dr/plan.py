"""Priority scheduling for a demand-response event: which loads to lower, and by how much.

A building's resources (on/off loads, variable loads, loads that cannot be controlled,
V2G cars and batteries) are asked to draw ``requested`` W less for ``duration_h`` hours.
The plan meets the reduction while disturbing the least important resources first
(larger priority number = less important = curtailed first), and when it cannot be met
says by how much it falls short.

The model (docs/dr-plan.md), every power in W (positive = consuming), energy in Wh:

* ``on_off``: after is ``power`` or 0 (a binary variable);
* ``variable``: after anywhere in ``[min_power, power]``;
* ``fixed``: after = before;
* ``v2g`` / ``storage``: after in ``[-max_discharge, +max_charge]`` with
  ``energy + after × duration_h`` in ``[min_energy, capacity]``; lowering its charging is
  a disturbance at ``charge_priority``, discharging at ``discharge_priority``. One
  present for only ``present_h`` of the event holds its setpoint while there: its energy
  is bookkept over ``present_h`` and its change of draw counts towards the reduction (a
  W average over the event) in the share ``present_h / duration_h``; absent for all of it,
  it is not counted.

It is solved exactly and lexicographically with HiGHS (a MILP): first the shortfall is
minimised (the most reduction that can be had, up to the request), then, priority level by
priority level from the most important (smallest number) to the least, the W taken from
that level is minimised with every earlier optimum kept as a constraint. Strict priority
order therefore holds by construction: no W is taken from a level if less important levels
could give it instead. Weights in one objective would need ratios past what a solver's
floating-point tolerances can tell apart once there are more than a handful of levels.

Pure: no I/O and no clock; highspy is the solver.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

TOLERANCE_W = 1e-4
"""W of slack, at least, when an earlier optimum is kept as a constraint."""
RELATIVE_SLACK = 1e-8
"""Slack as a share of the W all resources can give together: a binary within HiGHS's
integrality tolerance times a 10 kW coefficient misses a row by about 0.01 W, so a kept
optimum of a MW building needs a few tens of mW of room (30 mW at 3 MW)."""


class Kind(StrEnum):
    ON_OFF = "on_off"
    VARIABLE = "variable"
    FIXED = "fixed"
    V2G = "v2g"
    STORAGE = "storage"


STORAGE_KINDS = (Kind.V2G, Kind.STORAGE)


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource as the planner sees it (already validated: the CLI's loader checks
    the file and names each problem)."""

    id: str
    kind: Kind
    power: float
    """W drawn now (before the event); storage: its setpoint, negative when discharging."""
    priority: int | None = None
    """on_off and variable: larger = less important = curtailed first."""
    min_power: float = 0.0
    """variable: the lowest it can be set to, W."""
    energy: float = 0.0
    """storage: Wh stored now."""
    capacity: float = 0.0
    min_energy: float = 0.0
    max_charge: float = 0.0
    max_discharge: float = 0.0
    charge_priority: int | None = None
    discharge_priority: int | None = None
    name: str = ""
    present_h: float | None = None
    """storage: hours of the event it is plugged in / available (None: all of it; the
    CLI works it out from ``present_from``/``present_until`` and ``--start``)."""

    @property
    def is_storage(self) -> bool:
        return self.kind in STORAGE_KINDS

    def hours_present(self, duration_h: float) -> float:
        """Hours of the event it is there for (only storage can be absent)."""
        if not self.is_storage or self.present_h is None:
            return duration_h
        return min(max(self.present_h, 0.0), duration_h)

    def weight(self, duration_h: float) -> float:
        """The share of the event it is there for: its change of draw counts towards the
        reduction (an average over the event) in this proportion."""
        if duration_h <= 0:
            return 0.0 if self.is_storage and self.present_h is not None and \
                self.present_h <= 0 else 1.0
        return self.hours_present(duration_h) / duration_h


@dataclass(frozen=True, slots=True)
class Setpoint:
    id: str
    before: float
    after: float
    energy_after: float | None
    """Wh at the end of the event (storage only)."""


@dataclass(frozen=True, slots=True)
class Plan:
    requested: float
    achieved: float
    """W: sum(before) − sum(after)."""
    shortfall: float
    """W the reduction falls short of the request (0 when met)."""
    setpoints: tuple[Setpoint, ...]
    disturbance: dict[int, float]
    """W taken from each priority level (the quantity minimised, level by level)."""


def storage_range(r: Resource, duration_h: float) -> tuple[float, float]:
    """The setpoints (W) a storage resource can hold for the whole event without leaving
    ``[min_energy, capacity]`` nor its charge and discharge limits; 0 is always in it."""
    lo, hi = -r.max_discharge, r.max_charge
    if duration_h > 0:
        lo = max(lo, (r.min_energy - r.energy) / duration_h)
        hi = min(hi, (r.capacity - r.energy) / duration_h)
    return min(lo, 0.0), max(hi, 0.0)


@dataclass(slots=True)
class _Col:
    """A column of the model: W taken from one resource at one priority level."""

    resource: int
    level: int
    upper: float
    binary: bool = False


def plan(resources: Sequence[Resource], requested: float, duration_h: float) -> Plan:
    """The setpoints that lower the draw by ``requested`` W for ``duration_h`` hours,
    disturbing the least important resources first; see the module's docstring."""
    import highspy

    n = len(resources)
    weight = [r.weight(duration_h) for r in resources]
    """Storage present for part of the event: its W count in proportion (columns are in
    W averaged over the event; its setpoint holds while it is there)."""
    base = [0.0] * n
    """Each resource's after before any disturbance: its power, clamped into what storage
    can hold for the event (a forced change, the same in every plan)."""
    cols: list[_Col] = []
    couplings: list[tuple[int, int, float, float]] = []
    """(charge column, discharge column, b, d): the discharge column only opens once the
    charge column takes its whole ``b`` (a car stops charging before it discharges)."""
    for i, r in enumerate(resources):
        if r.kind is Kind.ON_OFF:
            base[i] = r.power
            if r.power > 0:
                cols.append(_Col(i, _level(r.priority), r.power, binary=True))
        elif r.kind is Kind.VARIABLE:
            base[i] = r.power
            if r.power > r.min_power:
                cols.append(_Col(i, _level(r.priority), r.power - r.min_power))
        elif r.kind is Kind.FIXED:
            base[i] = r.power
        elif weight[i] <= 0:
            base[i] = r.power  # absent for the whole event: not counted, not moved
        else:
            lo, hi = storage_range(r, r.hours_present(duration_h))
            b = min(max(r.power, lo), hi)
            base[i] = b
            w = weight[i]
            charge = max(b, 0.0) * w
            discharge = (b - lo - max(b, 0.0)) * w
            c_col = d_col = -1
            if charge > 0:
                c_col = len(cols)
                cols.append(_Col(i, _level(r.charge_priority), charge))
            if discharge > 0:
                d_col = len(cols)
                cols.append(_Col(i, _level(r.discharge_priority), discharge))
            if c_col >= 0 and d_col >= 0 and cols[c_col].level < cols[d_col].level:
                # Charging is the more important: alone, the solver would "discharge"
                # while still charging. Orders the two with a binary.
                couplings.append((c_col, d_col, charge, discharge))
    forced = sum(w * (r.power - b) for r, b, w in zip(resources, base, weight, strict=True))
    take = _solve(highspy, cols, couplings, requested - forced)
    after = list(base)
    disturbance: dict[int, float] = {}
    for col, w in zip(cols, take, strict=True):
        after[col.resource] -= w / weight[col.resource]
        disturbance[col.level] = disturbance.get(col.level, 0.0) + w
    setpoints = tuple(
        Setpoint(r.id, r.power, a, r.energy + a * r.hours_present(duration_h)
                 if r.is_storage else None)
        for r, a in zip(resources, after, strict=True))
    achieved = sum(w * (r.power - a) for r, a, w in zip(resources, after, weight, strict=True))
    shortfall = max(0.0, requested - achieved)
    if shortfall <= max(1e-3, 1e-6 * sum(c.upper for c in cols)):
        # the solver's tolerances on a MW building (binaries rounded), not a shortfall
        shortfall = 0.0
    return Plan(requested, achieved, shortfall, setpoints,
                {level: w for level, w in sorted(disturbance.items()) if w > 0})


def _level(priority: int | None) -> int:
    return 0 if priority is None else priority


def _solve(highspy: Any, cols: list[_Col], couplings: list[tuple[int, int, float, float]],
           need: float) -> list[float]:
    """W taken from each column: each level from the most important, minimised in turn.

    When the columns together cannot give ``need`` they are all taken (the shortfall is
    the least it can be); otherwise taking them all meets it (a coupled car stops
    charging, then discharges), so the shortfall is 0 and only the levels are solved.
    """
    if not cols or need <= 0:
        return [0.0] * len(cols)
    if sum(c.upper for c in cols) <= need:
        return [c.upper for c in cols]
    levels = sorted({c.level for c in cols})
    charge_of = {d: c for c, d, _, _ in couplings}
    discharge_of = {c: d for c, d, _, _ in couplings}
    free_below: dict[int, float] = {}
    """W the levels less important than each one can give with none from it or a more
    important one (a coupled discharge counts once its charge is less important too)."""
    for level in levels:
        free_below[level] = sum(
            c.upper for j, c in enumerate(cols)
            if c.level > level and (j not in charge_of or cols[charge_of[j]].level > level))
    h = highspy.Highs()
    h.silent()
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-7)
    h.setOptionValue("threads", 1)
    # Rows are in W: a binary within HiGHS's integrality tolerance (1e-6) times a W
    # coefficient can miss a row by 1e-6 W, which the default 1e-7 check would refuse.
    h.setOptionValue("primal_feasibility_tolerance", 1e-5)
    h.setOptionValue("mip_feasibility_tolerance", 1e-5)
    inf = highspy.kHighsInf
    # x_j in [0, 1]: the share of column j taken (binary for on/off loads and couplings)
    k = len(cols)
    h.addVars(k, [0.0] * k, [1.0] * k)
    for j, c in enumerate(cols):
        if c.binary:
            h.changeColIntegrality(j, highspy.HighsVarType.kInteger)
    for c_col, d_col, _b, _d in couplings:
        z = h.getNumCol()
        h.addVar(0.0, 1.0)
        h.changeColIntegrality(z, highspy.HighsVarType.kInteger)
        # x_c >= z (charge fully stopped when z), x_d <= z (discharge only then)
        h.addRow(0.0, inf, 2, [c_col, z], [1.0, -1.0])
        h.addRow(-inf, 0.0, 2, [d_col, z], [1.0, -1.0])
    # sum upper_j x_j >= need
    h.addRow(need, inf, k, list(range(k)), [c.upper for c in cols])
    ncol = h.getNumCol()

    kept: list[tuple[int, float]] = []  # (row, optimum) of the levels solved
    slack = [max(TOLERANCE_W, RELATIVE_SLACK * sum(c.upper for c in cols))]
    widest = 100 * slack[0]

    def minimise(costs: dict[int, float]) -> float:
        h.changeColsCost(ncol, list(range(ncol)), [costs.get(j, 0.0) for j in range(ncol)])
        h.run()
        status = h.getModelStatus()
        while status == highspy.HighsModelStatus.kInfeasible and slack[0] < widest:
            # Rows of 1e6 W kept to 1e-4 W: the solver's tolerances can call the last
            # optimum's neighbourhood empty. Widened tenfold, at most twice.
            slack[0] *= 10
            for row, value in kept:
                h.changeRowBounds(row, -inf, value + slack[0])
            h.run()
            status = h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            # Presolve can reduce a tiny model to nothing and leave a 1e-6 W residual
            # HiGHS then refuses: solved again without it (the model is always feasible).
            h.setOptionValue("presolve", "off")
            h.run()
            h.setOptionValue("presolve", "choose")
            status = h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:  # pragma: no cover - feasible
            raise RuntimeError(f"HiGHS: {h.modelStatusToString(status)}")
        return float(h.getInfo().objective_function_value)

    cap = {level: sum(c.upper for c in cols if c.level == level) for level in levels}
    dead: set[int] = set()  # columns fixed at 0 by a coupling
    solved_at: int | None = None
    untouched_so_far = True
    taken = 0.0  # W the levels done so far give (each exactly its optimum, within slack)
    for n, level in enumerate(levels):
        members = [j for j, c in enumerate(cols) if c.level == level and j not in dead]
        # The less important levels give at most their all (couplings relaxed): what they
        # cannot give, this level must.
        must = need - taken - sum(cap[lv] for lv in levels[n + 1:])
        if untouched_so_far and free_below[level] >= need:
            value = 0.0  # the less important levels can give it all: none from this one
        elif must >= cap[level] - slack[0] * (n + 1):
            # All of it (to within the kept optima's slack) in every plan that meets the
            # need: nothing to minimise, and nothing to fix either (fixing it at exactly
            # all could contradict a kept optimum by that slack).
            untouched_so_far = False
            taken += cap[level]
            continue
        else:
            value = minimise({j: cols[j].upper for j in members})
            solved_at = level
        taken += value
        if value <= 1e-9:
            for j in members:  # untouched: fix them, a smaller model for what follows
                h.changeColBounds(j, 0.0, 0.0)
                d = discharge_of.get(j)
                if d is not None:  # a car that keeps charging does not discharge either
                    dead.add(d)
                    h.changeColBounds(d, 0.0, 0.0)
                    cap[cols[d].level] -= cols[d].upper
        else:
            untouched_so_far = False
            kept.append((h.getNumRow(), value))
            h.addRow(-inf, value + slack[0], len(members), members,
                     [cols[j].upper for j in members])
    if solved_at != levels[-1]:  # bounds changed since the last solve: its values too
        minimise({})
    values = h.getSolution().col_value
    out = []
    for j, c in enumerate(cols):
        x = min(max(values[j], 0.0), 1.0)
        if c.binary:
            x = float(round(x))
        out.append(x * c.upper)
    return out


def exact_w(value: float) -> float:
    """A W figure as printed: rounded to the mW, -0.0 and float noise cleaned."""
    out = round(value, 3)
    return 0.0 if out == 0 or math.isclose(out, 0.0, abs_tol=1e-9) else out
