"""Who charges at all when not every minimum fits, and how pauses rotate without flapping.

Every admitted connector needs its minimum; when the minimums do not all fit, connectors
are served in the policy's order and the rest pause. Who pauses rotates every
``rotation_interval_s`` and stays put in between, so nobody starves and nobody flaps.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from gridshare.core.allocation import kernels
from gridshare.core.allocation.constraints import TOL, Problem
from gridshare.core.allocation.inputs import Inputs
from gridshare.core.arrays import BoolArray, FloatArray, IntArray
from gridshare.core.decision import RotationState
from gridshare.core.topology import ConnectorKey, Policy


def rank(policy: Policy, inp: Inputs, cands: IntArray) -> FloatArray:
    """Admission class per candidate, lower first: who pauses last under the policy."""
    if policy is Policy.PRIORITY:
        return -inp.demand.priority[cands].astype(float)
    if policy is Policy.DEADLINE:
        return inp.laxity_h[cands]
    return np.zeros(len(cands))


def rotation_due(previous: RotationState, now: datetime, interval_s: float) -> bool:
    last = previous.last_rotation
    return last is None or (now - last).total_seconds() >= interval_s


def rotation_order(keys: list[ConnectorKey], rank: FloatArray, arrival: FloatArray, *,
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


def admit(problem: Problem, low: FloatArray, over: BoolArray, order: list[int]) -> BoolArray:
    """Who gets at least their minimum, served in ``order``. Only rows that cannot hold
    every minimum (``over``) can refuse anyone."""
    return kernels.admit(problem.capacity, problem.m_ptr, problem.m_cons, problem.m_weight,
                         low, over, np.asarray(order, dtype=np.int64), TOL)


def next_rotation(previous: RotationState, keys: list[ConnectorKey], charging: list[bool],
                  now: datetime, due: bool) -> RotationState:
    """The rotation state after one solve: since when each connector charges or waits,
    and the last rotation, which moves only when somebody actually had to pause."""
    last = previous.last_rotation
    contended = not all(charging)
    return RotationState(
        (now if due else last) if contended else last,
        {k: previous.admitted_since.get(k, now)
         for k, on in zip(keys, charging, strict=True) if on},
        {k: previous.waiting_since.get(k, now)
         for k, on in zip(keys, charging, strict=True) if not on})
