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


def fill(problem: Problem, low: FloatArray, high: FloatArray, rate: FloatArray) -> FloatArray:
    """Progressive filling of ``clamp(λ·rate, low, high)``: max-min fair in ``x / rate``."""
    return kernels.fill(problem.capacity, problem.c_ptr, problem.c_member, problem.c_weight,
                        problem.m_ptr, problem.m_cons, low, high, rate, TOL)


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
