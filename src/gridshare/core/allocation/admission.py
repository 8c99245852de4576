"""Who charges at all when not every minimum fits, and how pauses rotate without flapping.

Every admitted connector needs its minimum; when the minimums do not all fit, connectors
are served in the policy's order and the rest pause. Who pauses rotates every
``rotation_interval_s`` and stays put in between, so nobody starves and nobody flaps.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

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
    every minimum (``over``) can refuse anyone, so only they are checked one by one."""
    n = len(low)
    owner = problem.owners()
    in_over = over[problem.m_cons]
    takes = (problem.m_weight * low[owner])[in_over]
    ptr = np.concatenate(([0], np.cumsum(np.bincount(owner[in_over], minlength=n))))
    ptr_l, rows_l, takes_l = ptr.tolist(), problem.m_cons[in_over].tolist(), takes.tolist()
    headroom = (problem.capacity + TOL).tolist()
    admitted = np.ones(n, dtype=bool)
    for j in order:
        s, e = ptr_l[j], ptr_l[j + 1]
        if s == e:
            continue
        for k in range(s, e):
            if headroom[rows_l[k]] < takes_l[k]:
                admitted[j] = False
                break
        else:
            for k in range(s, e):
                headroom[rows_l[k]] -= takes_l[k]
    return admitted


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
