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
FEASIBILITY = 1e-5
"""HiGHS's primal and integrality feasibility tolerances, in the model's units: its
continuous variables, rows and objective are in units of ``max(1 W, slack / (10 ×
FEASIBILITY))``, so a bound or a row may be missed by a tenth of the kept optima's slack
at most, whatever the building's size. Before, rows were in W checked to 1e-5 W (HiGHS's
postsolve called a MW building's optimum infeasible: a row of 800 kW missed by 1.6 mW,
and each such solve was run again without presolve or with the slack widened) while the
variables were shares checked to 1e-5 (0.2 W of a 23 kW level)."""


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


_ZERO, _KEPT, _CURRENT, _FULL = "zero", "kept", "current", "full"
"""How a level enters a model: fixed at 0 (untouched); its columns free under its kept
optimum; the level being minimised; or taken whole (a level provably taken whole, or one
after the current level, which only ever helps to take whole: dominance)."""


@dataclass(slots=True)
class _Group:
    """The columns of one priority level, by how a model treats them."""

    level: int
    cont: list[int]
    """Uncoupled continuous columns: W anywhere in [0, sum of uppers], one variable."""
    binary: list[int]
    charge: list[int]
    """Charging columns of coupled cars (each its own variable: it gates a discharge)."""
    discharge: list[int]
    """Discharging columns of coupled cars."""
    state: str = _FULL
    kept: float = 0.0
    ones: set[int] | None = None
    """Binaries every plan keeping this level's optimum takes (fixed at 1)."""
    whole: float = 0.0
    """W of its continuous, on/off and charging columns together."""
    cont_w: float = 0.0
    """W of its uncoupled continuous columns together."""

    def members(self) -> list[int]:
        return [*self.cont, *self.binary, *self.charge, *self.discharge]


@dataclass(slots=True)
class _Model:
    """A reduced model as loaded into HiGHS, and how to read its solution back."""

    var_of: dict[int, int]
    """Column -> variable (coupled discharges of full levels map to their z)."""
    agg_of: dict[int, int]
    """Level -> the variable of its aggregated continuous columns."""
    counts: list[tuple[int, list[int]]]
    """(integer variable, the on/off columns of one level and one power it counts)."""
    per_share: list[float]
    """Each variable's value for a whole column (its W upper in units; 1 for integers):
    a variable's value divided by it is the share of its columns taken."""

    def shares(self, values: Sequence[float]) -> list[float]:
        return [x / d if d > 0 else 0.0 for x, d in zip(values, self.per_share, strict=True)]


def _solve(highspy: Any, cols: list[_Col], couplings: list[tuple[int, int, float, float]],
           need: float) -> list[float]:
    """W taken from each column: each level from the most important, minimised in turn.

    When the columns together cannot give ``need`` they are all taken (the shortfall is
    the least it can be); otherwise taking them all meets it (a coupled car stops
    charging, then discharges), so the shortfall is 0 and only the levels are solved.

    Each level's minimum is found on a small model rather than on all the columns
    (docs/dr-plan.md, "How it is solved"): levels fixed at 0 are left out; a level's
    uncoupled continuous columns are one variable (any W of a level counts the same);
    columns of levels after the current one are taken whole (they appear only in the
    reduction row, where more only helps: some optimum takes them whole), except a
    discharge whose charging is still undecided, which follows its binary; binaries
    that every plan keeping a level's optimum must take are fixed at 1.
    """
    if not cols or need <= 0:
        return [0.0] * len(cols)
    if sum(c.upper for c in cols) <= need:
        return [c.upper for c in cols]
    levels = sorted({c.level for c in cols})
    charge_of = {d: c for c, d, _, _ in couplings}
    discharge_of = {c: d for c, d, _, _ in couplings}
    groups = {lv: _Group(lv, [], [], [], []) for lv in levels}
    for j, c in enumerate(cols):
        g = groups[c.level]
        if c.binary:
            g.binary.append(j)
        elif j in discharge_of:
            g.charge.append(j)
        elif j in charge_of:
            g.discharge.append(j)
        else:
            g.cont.append(j)
    # W the levels less important than each one can give with none from it or a more
    # important one (a coupled discharge counts once its charge is less important too):
    # a column counts below every level under min(its level, its charge's level).
    opens_at = dict.fromkeys(levels, 0.0)
    for j, c in enumerate(cols):
        opens_at[c.level if j not in charge_of else
                 min(c.level, cols[charge_of[j]].level)] += c.upper
    free_below: dict[int, float] = {}
    below = 0.0
    for level in reversed(levels):
        free_below[level] = below
        below += opens_at[level]
    h = highspy.Highs()
    h.silent()
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-7)
    h.setOptionValue("threads", 1)
    # A binary within HiGHS's integrality tolerance (1e-6 by default) times a coefficient
    # can miss a row by more than the default 1e-7 check: both at FEASIBILITY.
    h.setOptionValue("primal_feasibility_tolerance", FEASIBILITY)
    h.setOptionValue("mip_feasibility_tolerance", FEASIBILITY)
    # Feasibility jump finds nothing on these small models that the LP-based heuristics
    # do not, and took half of each MILP's time (148 of the benchmark's slowest MILPs
    # replayed: 1.14 s with it, 0.53 s without). A heuristic: the optimum and its proof
    # are the same with or without it.
    h.setOptionValue("mip_heuristic_run_feasibility_jump", False)
    slack = [max(TOLERANCE_W, RELATIVE_SLACK * sum(c.upper for c in cols))]
    widest = 100 * slack[0]
    unit = max(1.0, slack[0] / (10 * FEASIBILITY))
    """W of one unit of the model's rows and objective (see FEASIBILITY)."""
    margin = max(1e-3, 100 * slack[0])
    """W by which a binary's absence must miss a kept optimum before it is fixed at 1."""
    dead: set[int] = set()  # discharge columns fixed at 0: their car keeps charging
    cap = {lv: sum(cols[j].upper for j in g.members()) for lv, g in groups.items()}
    for g in groups.values():
        g.whole = sum(cols[j].upper for j in (*g.cont, *g.binary, *g.charge))
        g.cont_w = sum(cols[j].upper for j in g.cont)

    def solve(current: int | None) -> tuple[float, tuple[_Model, list[float]]]:
        """Load the model with ``current`` as the level minimised (None: any plan that
        keeps every optimum) and solve it: its optimum, the model and its solution.

        The MILP directly: solving its relaxation first (to skip the MILP when that is
        integral, or when it proves the last solution optimal) cost more than it saved,
        since the cars' binaries make the relaxation weak (HiGHS solves the same LP at
        its root, and stops there when it is integral).
        """
        while True:
            model = _load(highspy, h, cols, couplings, charge_of, groups, dead, need,
                          current, slack[0], unit)
            if h.getNumCol() == 0:  # every column fixed: nothing to choose
                return 0.0, (model, [])
            h.run()
            status = h.getModelStatus()
            if status != highspy.HighsModelStatus.kOptimal:
                # Presolve can reduce a tiny model to nothing and leave a 1e-6 W residual
                # HiGHS then refuses: solved again without it (the model is feasible).
                h.setOptionValue("presolve", "off")
                h.run()
                h.setOptionValue("presolve", "choose")
                status = h.getModelStatus()
            if status != highspy.HighsModelStatus.kOptimal and slack[0] < widest:
                # Kept optima of 1e6 W with a slack of 1e-8 of that: should the solver's
                # tolerances still call their neighbourhood empty, widened tenfold, at
                # most twice (once in the benchmark's 500 buildings of seeds 1-5, four
                # times before the models were in units of the slack).
                slack[0] *= 10
                continue
            if status != highspy.HighsModelStatus.kOptimal:  # pragma: no cover
                raise RuntimeError(f"HiGHS: {h.modelStatusToString(status)}")
            return (unit * float(h.getInfo().objective_function_value),
                    (model, model.shares(h.getSolution().col_value)))

    last: tuple[_Model, list[float]] | None = None
    zeroed_since = False  # a level fixed at 0 since the last solve: its model is stale
    untouched_so_far = True
    taken = 0.0  # W the levels done so far give (each exactly its optimum, within slack)
    for n, level in enumerate(levels):
        g = groups[level]
        # The less important levels give at most their all (couplings relaxed): what they
        # cannot give, this level must.
        must = need - taken - sum(cap[lv] for lv in levels[n + 1:])
        if untouched_so_far and free_below[level] >= need:
            value = 0.0  # the less important levels can give it all: none from this one
            zeroed_since = True
        elif must >= cap[level] - slack[0] * (n + 1):
            # All of it (to within the kept optima's slack) in every plan that meets the
            # need: nothing to minimise; it stays "full", as the levels after it.
            untouched_so_far = False
            taken += cap[level]
            continue
        else:
            g.state = _CURRENT
            value, last = solve(level)
            zeroed_since = False
        taken += value
        if value <= 1e-9:
            g.state = _ZERO
            for j in g.charge:  # a car that keeps charging does not discharge either
                d = discharge_of[j]
                dead.add(d)
                cap[cols[d].level] -= cols[d].upper
        else:
            untouched_so_far = False
            g.state, g.kept = _KEPT, value
            g.ones = {j for j in g.binary if cap[level] - cols[j].upper < value - margin}
    if last is None or zeroed_since:
        kept = any(g.state == _KEPT for g in groups.values())
        last = solve(None)[1] if kept else None  # else: every level untouched or whole
    return _read(cols, couplings, groups, dead, last)


def _load(highspy: Any, h: Any, cols: list[_Col],
          couplings: list[tuple[int, int, float, float]], charge_of: dict[int, int],
          groups: dict[int, _Group], dead: set[int], need: float, current: int | None,
          slack: float, unit: float) -> _Model:
    """Load the reduced model (see :func:`_solve`) into ``h`` in one call; its rows in W
    (the reduction and the kept optima) and its objective are in ``unit`` W."""
    inf = highspy.kHighsInf
    var_of: dict[int, int] = {}
    agg_of: dict[int, int] = {}
    counts: list[tuple[int, list[int]]] = []
    costs: list[float] = []
    uppers: list[float] = []
    integer: list[int] = []
    rows: list[tuple[float, float, list[int], list[float]]] = []
    """(lower, upper, variables, coefficients), already in the model's units."""
    reduction_vars: list[int] = []
    reduction_coefs: list[float] = []
    const = 0.0  # W of the columns taken whole

    for g in groups.values():
        if g.state == _ZERO:
            continue
        if g.state == _FULL:
            const += g.whole
            for j in g.discharge:  # a coupled discharge: whole once its charge is
                if j not in dead and groups[cols[charge_of[j]].level].state == _FULL:
                    const += cols[j].upper
            continue
        cost = 1.0 if g.state == _CURRENT else 0.0  # per unit of W taken
        first = len(costs)
        fixed = 0.0
        if g.cont:
            agg_of[g.level] = len(costs)
            costs.append(cost)
            uppers.append(g.cont_w / unit)
            reduction_coefs.append(1.0)
        # on/off loads of one power are interchangeable: one integer, how many are off
        by_power: dict[float, list[int]] = {}
        for j in g.binary:
            if g.ones is not None and j in g.ones:
                fixed += cols[j].upper
            else:
                by_power.setdefault(cols[j].upper, []).append(j)
        for power, members in by_power.items():
            v = len(costs)
            integer.append(v)
            counts.append((v, members))
            costs.append(power / unit * cost)
            uppers.append(float(len(members)))
            reduction_coefs.append(power / unit)
        for j in (*g.charge, *g.discharge):
            if j in dead:
                continue
            var_of[j] = len(costs)
            costs.append(cost)
            uppers.append(cols[j].upper / unit)
            reduction_coefs.append(1.0)
        const += fixed
        members = list(range(first, len(costs)))
        reduction_vars.extend(members)
        if g.state == _KEPT:
            rows.append((-inf, (g.kept - fixed + slack) / unit, members,
                         reduction_coefs[len(reduction_coefs) - len(members):]))
    for c_col, d_col, b, d in couplings:
        if d_col in dead or groups[cols[d_col].level].state == _ZERO:
            continue  # the discharge is fixed at 0: the charge is free
        if groups[cols[c_col].level].state == _FULL:
            continue  # the charge is taken whole: the discharge is free (or whole)
        z = len(costs)
        integer.append(z)
        costs.append(0.0)
        uppers.append(1.0)
        # x_c >= b z (the charge wholly stopped when z), x_d <= d z (discharge only then)
        rows.append((0.0, inf, [var_of[c_col], z], [1.0, -b / unit]))
        if d_col in var_of:
            rows.append((-inf, 0.0, [var_of[d_col], z], [1.0, -d / unit]))
        else:  # the discharge's level is full: it discharges whenever it may
            var_of[d_col] = z
            reduction_vars.append(z)
            reduction_coefs.append(d / unit)
    rows.append(((need - const) / unit, inf, reduction_vars, reduction_coefs))
    k = len(costs)
    lp = highspy.HighsLp()
    lp.num_col_ = k
    lp.num_row_ = len(rows)
    lp.col_cost_ = costs
    lp.col_lower_ = [0.0] * k
    lp.col_upper_ = uppers
    lp.row_lower_ = [lo for lo, _, _, _ in rows]
    lp.row_upper_ = [hi for _, hi, _, _ in rows]
    start = [0]
    index: list[int] = []
    value: list[float] = []
    for _, _, row_vars, row_coefs in rows:
        index.extend(row_vars)
        value.extend(row_coefs)
        start.append(len(index))
    matrix = lp.a_matrix_
    matrix.format_ = highspy.MatrixFormat.kRowwise
    matrix.num_col_ = k
    matrix.num_row_ = len(rows)
    matrix.start_ = start
    matrix.index_ = index
    matrix.value_ = value
    integral = [False] * k
    for v in integer:
        integral[v] = True
    if integer:
        lp.integrality_ = [highspy.HighsVarType.kInteger if kind else
                           highspy.HighsVarType.kContinuous for kind in integral]
    h.passModel(lp)
    return _Model(var_of, agg_of, counts,
                  [1.0 if kind else upper for upper, kind in zip(uppers, integral, strict=True)])


def _shares(groups: dict[int, _Group], last: tuple[_Model, list[float]]
            ) -> dict[int, float]:
    """The share of each column the model's solution gives a value to."""
    model, values = last
    share = {j: values[v] for j, v in model.var_of.items()}
    for level, v in model.agg_of.items():
        share.update(dict.fromkeys(groups[level].cont, values[v]))
    for v, members in model.counts:
        on = round(values[v])
        share.update({j: float(n < on) for n, j in enumerate(members)})
    return share


def _share(j: int, cols: list[_Col], groups: dict[int, _Group], dead: set[int],
           share: dict[int, float], charge_of: dict[int, int]) -> float:
    """The share of column ``j`` taken, in [0, 1]."""
    c = cols[j]
    if groups[c.level].state == _ZERO or j in dead:
        x = 0.0
    elif j in share:
        x = share[j]
    elif j in charge_of and groups[cols[charge_of[j]].level].state == _ZERO:
        x = 0.0
    else:
        x = 1.0  # full, or a binary fixed at 1
    x = min(max(x, 0.0), 1.0)
    return float(round(x)) if c.binary else x


def _read(cols: list[_Col], couplings: list[tuple[int, int, float, float]],
          groups: dict[int, _Group], dead: set[int],
          last: tuple[_Model, list[float]] | None) -> list[float]:
    """W taken from each column, from the last model's solution (None: no level kept, so
    every level is either untouched or taken whole)."""
    charge_of = {d: c for c, d, _, _ in couplings}
    share = {} if last is None else _shares(groups, last)
    return [_share(j, cols, groups, dead, share, charge_of) * c.upper
            for j, c in enumerate(cols)]


def exact_w(value: float) -> float:
    """A W figure as printed: rounded to the mW, -0.0 and float noise cleaned."""
    out = round(value, 3)
    return 0.0 if out == 0 or math.isclose(out, 0.0, abs_tol=1e-9) else out
