"""dr-plan's previous solver, kept as a reference for tests/core/test_dr_plan.py.

Every level after the deciding one solved as a MILP on the full model (all columns, one
row per kept optimum). Slow at 1,000 resources, but independent of the reduced models
the planner now solves; the property test checks the two give the same optimum.
"""

from __future__ import annotations

from typing import Any

from gridshare.core.dr.plan import RELATIVE_SLACK, TOLERANCE_W, _Col


def reference_solve(highspy: Any, cols: list[_Col], couplings: list[tuple[int, int, float, float]],
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

