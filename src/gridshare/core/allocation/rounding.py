"""Setpoints on the resolution grid without losing room: floor, then a work-conserving
top-up that hands the left-over steps out one at a time to the lowest connector."""

from __future__ import annotations

import numpy as np

from gridshare.core.allocation import kernels
from gridshare.core.allocation.constraints import TOL, Problem
from gridshare.core.arrays import FloatArray, IntArray


def round_to_grid(x: FloatArray, low: FloatArray, res: float) -> FloatArray:
    """Floor to the resolution; below ``low`` is a pause. The steps this leaves go out in
    :func:`top_up`, lowest level first: handing them back by largest remainder can lift a
    connector past one that a tighter limit holds just below it, and on the grid that one
    may well fit another step (max-min fairness is judged on the grid, not before it)."""
    floored = np.floor(x / res + 1e-7) * res
    out: FloatArray = np.where(floored + TOL < low, 0.0, floored)
    return out


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
    allowed = np.arange(len(x)) if only is None else only.astype(np.int64)
    kernels.top_up(head, problem.m_ptr, problem.m_cons, problem.m_weight, x, low, high, per,
                   allowed, res, TOL)
    return x
