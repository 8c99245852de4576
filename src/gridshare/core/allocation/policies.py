"""How each policy shares what the limits leave among the admitted connectors.

``equal``, ``proportional`` and ``deadline`` are progressive filling (max-min fairness) of
a level λ: each connector sits at ``clamp(λ·rate, low, high)``; the first row to fill
freezes its members, the rest keep rising. ``priority`` is a greedy pass in priority
order; ``deadline`` first serves each car its required rate, least laxity first.
"""

from __future__ import annotations

import numpy as np

from gridshare.core.allocation import kernels
from gridshare.core.allocation.constraints import TOL, Problem
from gridshare.core.allocation.inputs import Inputs
from gridshare.core.arrays import BoolArray, FloatArray, IntArray
from gridshare.core.topology import Policy


def levels(rows: IntArray, weight: FloatArray, low: FloatArray, high: FloatArray,
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
    need = present & (top > cap_left + TOL)
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
    cross = (load <= cap) & (load + rise > cap) & (slope > TOL)
    np.minimum.at(lam, seg[cross], points[cross] + (cap[cross] - load[cross]) / slope[cross])
    missed = solve & np.isinf(lam)
    if missed.any():  # rounding left no exact crossing: stop at the last point that fits
        fits = (load <= cap) & missed[seg]
        fallback = np.full(n_rows, 0.0)
        np.maximum.at(fallback, seg[fits], points[fits])
        lam[missed] = fallback[missed]
    return lam


def fill(problem: Problem, low: FloatArray, high: FloatArray, rate: FloatArray) -> FloatArray:
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
        fresh = levels(rows[sel], weights[sel], low[members[sel]], high[members[sel]],
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


def serve_in_order(problem: Problem, low: FloatArray, high: FloatArray, order: list[int],
                   res: float) -> FloatArray:
    """Each connector in turn takes all it can, on the setpoint grid; one that would get
    less than its minimum pauses and leaves the room to those after it. Taking whole steps
    as it goes (not rounding afterwards) keeps the part of a step a connector could not use
    for whoever comes next, never for someone before it."""
    return kernels.serve_in_order(problem.capacity, problem.m_ptr, problem.m_cons,
                                  problem.m_weight, low, high,
                                  np.asarray(order, dtype=np.int64), res, TOL)


def share(problem: Problem, inp: Inputs, cands: IntArray, admitted: BoolArray,
          policy: Policy, order: list[int], res: float) -> FloatArray:
    """Continuous setpoints of ``cands`` under ``policy``. ``admitted`` (who gets at least
    a minimum) is decided by admission for the fair policies; ``priority`` and
    ``deadline`` admit by themselves while serving in ``order``: a car left out for want
    of its minimum may still fit once one before it has paused for want of its own."""
    low = np.where(admitted, inp.low[cands], 0.0)
    high = np.where(admitted, inp.high[cands], 0.0)
    if policy is Policy.PRIORITY:
        return serve_in_order(problem, inp.low[cands], inp.high[cands], order, res)
    if policy is Policy.DEADLINE:
        # Least laxity first, each car its required rate (at least its minimum) or a
        # pause; then whatever is left is shared equally among the cars still charging.
        required = np.minimum(inp.high[cands], np.maximum(inp.low[cands],
                                                          inp.required_a[cands]))
        low = serve_in_order(problem, inp.low[cands], required, order, res)
        high = np.where(low > 0, inp.high[cands], 0.0)
    rate = np.where(high > 0, high, 1.0) if policy is Policy.PROPORTIONAL else np.ones(len(low))
    return fill(problem, low, high, rate)
