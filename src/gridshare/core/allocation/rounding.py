"""Setpoints on the resolution grid without losing room: largest remainder first, then
a work-conserving top-up that hands left-over steps to the lowest connector."""

from __future__ import annotations

import heapq

import numpy as np

from gridshare.core.allocation.constraints import TOL, Problem
from gridshare.core.arrays import BoolArray, FloatArray, IntArray


def top_up(problem: Problem, x: FloatArray, low: FloatArray, high: FloatArray,
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
            active = (allowed & (x + steps <= high + TOL)
                      & (problem.least_room(head) >= steps - TOL))
            active = lowest_first(problem, active, x / per, (x + steps) / per)
            if not active.any() or not give_steps(problem, x, active, x / per, steps,
                                                   head).any():
                break
        allowed &= (problem.least_room(head) >= res - TOL) & (x < high - TOL)
    headroom = head.tolist()
    xs, lows, highs = x.tolist(), low.tolist(), high.tolist()
    # One step at a time to whoever is lowest, so the left-over is shared, not grabbed.
    pers = per.tolist()
    queue = [(xs[j] / pers[j], j) for j in np.flatnonzero(allowed).tolist()]
    heapq.heapify(queue)
    while queue:
        _, j = heapq.heappop(queue)
        step = lows[j] if xs[j] == 0 else res
        if xs[j] + step > highs[j] + TOL:
            continue
        rows = list(problem.member_rows(j))
        if any(headroom[c] < w * step - TOL for c, w in rows):
            continue
        xs[j] += step
        for c, w in rows:
            headroom[c] -= w * step
        heapq.heappush(queue, (xs[j] / pers[j], j))
    return np.array(xs, dtype=float)


def lowest_first(problem: Problem, active: BoolArray, level: FloatArray,
                 next_level: FloatArray) -> BoolArray:
    """Those of ``active`` whose step the one-at-a-time order would reach before any
    second step in a row they share: a member at ``level`` waits while some active
    member of one of its rows would still be below it after its own step
    (``next_level``). Without this, a round hands a step to a connector held up at its
    minimum while a lower one could have taken two."""
    owner = problem.owners()
    live = active[owner]
    row_next = np.full(len(problem.capacity), np.inf)
    np.minimum.at(row_next, problem.m_cons[live], next_level[owner[live]])
    bound = np.full(len(level), np.inf)
    np.minimum.at(bound, owner, row_next[problem.m_cons])
    eligible: BoolArray = active & (level <= bound + 1e-12)
    return eligible


def give_steps(problem: Problem, x: FloatArray, active: BoolArray, first_key: FloatArray,
                step: FloatArray, head: FloatArray) -> BoolArray:
    """One vectorised round: in every row, the active members in ``first_key`` order get
    their ``step`` while the steps of everyone before them in that row still fit; a member
    gets it only if every one of its rows agrees. Updates ``x`` and ``head`` in place and
    returns who got a step. No row can overflow: what it gives is at most a prefix sum."""
    owner = problem.owners()
    # Who some row blocks on its own takes no place in any row's queue.
    active = active & (problem.least_room(head) >= step - TOL)
    e = active[owner]
    eo, er = owner[e], problem.m_cons[e]
    cost_e = problem.m_weight[e] * step[eo]
    order = np.lexsort((eo, first_key[eo], er))
    er_sorted = er[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = er_sorted[1:] != er_sorted[:-1]
    starts = np.flatnonzero(first)
    cum = np.cumsum(cost_e[order])
    used = cum - (cum[starts] - cost_e[order][starts])[np.cumsum(first) - 1]
    fits = np.empty(len(order), dtype=bool)
    fits[order] = used <= head[er_sorted] + TOL
    chosen = active & ~(np.bincount(eo[~fits], minlength=len(x)) > 0)
    x[chosen] += step[chosen]
    got = chosen[eo]
    head -= np.bincount(er[got], weights=cost_e[got], minlength=len(head))
    return chosen


def round_to_grid(problem: Problem, x: FloatArray, low: FloatArray, res: float) -> FloatArray:
    """Floor to the resolution, then hand the left-over back one step each, largest
    remainder first (see :func:`give_steps`)."""
    floored = np.floor(x / res + 1e-7) * res
    floored = np.where(floored + TOL < low, 0.0, floored)
    remainder = x - floored
    active = (remainder > 1e-7) & (floored > 0)
    if not active.any() or len(problem.capacity) == 0:
        return floored
    head = problem.capacity - problem.load(floored)
    steps = np.full(len(x), res)
    for _ in range(6):
        chosen = give_steps(problem, floored, active, -remainder, steps, head)
        if not chosen.any():
            break
        active &= ~chosen
    return floored
