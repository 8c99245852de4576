"""Who charges at all when not every minimum fits, and how pauses rotate without flapping.

Every admitted connector needs its minimum; when the minimums do not all fit, connectors
are served in the policy's order and the rest pause. Who pauses rotates every
``rotation_interval_s`` and stays put in between, so nobody starves and nobody flaps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from itertools import compress

import numpy as np

from gridshare.core.allocation import kernels
from gridshare.core.allocation.constraints import TOL, Problem
from gridshare.core.allocation.inputs import Inputs
from gridshare.core.arrays import BoolArray, FloatArray, IntArray, TopologyArrays
from gridshare.core.decision import RotationState
from gridshare.core.topology import ConnectorKey, Policy


def rank(policy: Policy, inp: Inputs, cands: IntArray) -> FloatArray:
    """Admission class per candidate, lower first: who pauses last under the policy."""
    if policy is Policy.PRIORITY:
        return -inp.demand.priority[cands].astype(float)
    if policy is Policy.DEADLINE:
        return inp.laxity_h[cands]
    return np.zeros(len(cands))


class Since(Mapping[ConnectorKey, datetime]):
    """Since when each of a set of connectors has been charging (or waiting), as epoch
    seconds aligned with the topology's connectors (NaN: not in the set). The next
    allocation reads it back as an array, without a loop over connectors; a datetime is
    built only when somebody looks one up."""

    __slots__ = ("_len", "seconds", "ta", "tz")

    def __init__(self, ta: TopologyArrays, seconds: FloatArray, tz: tzinfo | None) -> None:
        self.ta = ta
        self.seconds = seconds
        self.tz = tz
        self._len = int(np.count_nonzero(~np.isnan(seconds)))

    def __getitem__(self, key: ConnectorKey) -> datetime:
        i = self.ta.index.get(key)
        if i is None or math.isnan(self.seconds[i]):
            raise KeyError(key)
        return datetime.fromtimestamp(float(self.seconds[i]), self.tz)

    def __iter__(self) -> Iterator[ConnectorKey]:
        return compress(self.ta.keys, (~np.isnan(self.seconds)).tolist())

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"Since({dict(self)!r})"


def seconds_of(since: Mapping[ConnectorKey, datetime], ta: TopologyArrays) -> FloatArray:
    """``since`` as epoch seconds per connector (NaN where absent). What an allocation on
    this topology returned is read as it is; any other mapping is converted."""
    if isinstance(since, Since) and since.ta is ta:
        return since.seconds
    out = np.full(len(ta.keys), np.nan)
    for key, when in since.items():
        i = ta.index.get(key)
        if i is not None:
            out[i] = when.timestamp()
    return out


@dataclass(frozen=True, slots=True)
class History:
    """The previous rotation state as arrays over the topology's connectors."""

    admitted_s: FloatArray
    waiting_s: FloatArray

    @property
    def empty(self) -> bool:
        return bool(np.isnan(self.admitted_s).all() and np.isnan(self.waiting_s).all())


def history(previous: RotationState, ta: TopologyArrays) -> History:
    return History(seconds_of(previous.admitted_since, ta), seconds_of(previous.waiting_since, ta))


def rotation_order(cands: IntArray, rank: FloatArray, arrival: FloatArray, *, now_s: float,
                   due: bool, previous: History, fixed: BoolArray) -> list[int]:
    """Candidates in the order they are served when not everyone can be.

    ``rank`` is the policy's class (lower first). Inside a class, between rotations the
    connectors already charging keep their place and their order; at a rotation the
    longest waiting go first and the longest served go last, so nobody starves.
    ``fixed`` connectors (whose pauses a subtree policy rotates itself) keep their place.
    """
    positions = np.arange(len(cands))
    if previous.empty:  # nobody has a history
        first: list[int] = np.lexsort((positions, arrival, -fixed.astype(float), rank)).tolist()
        return first
    admitted = previous.admitted_s[cands]
    waited = previous.waiting_s[cands]
    charging = ~np.isnan(admitted)
    # Most recently admitted first: the order the last rotation served them in.
    place = np.where(fixed, -1.0, np.where(charging, 1.0 if due else 0.0, 0.0 if due else 1.0))
    since = np.where(fixed, 0.0, np.where(charging, -admitted,
                                          np.where(np.isnan(waited), now_s, waited)))
    order: list[int] = np.lexsort((positions, arrival, since, place, rank)).tolist()
    return order


def admit(problem: Problem, low: FloatArray, over: BoolArray, order: list[int]) -> BoolArray:
    """Who gets at least their minimum, served in ``order``. Only rows that cannot hold
    every minimum (``over``) can refuse anyone."""
    return kernels.admit(problem.capacity, problem.m_ptr, problem.m_cons, problem.m_weight,
                         low, over, np.asarray(order, dtype=np.int64), TOL)


class Rotation:
    """The rotation state being built during one allocation: the latest solve of a
    connector has the last word on it."""

    def __init__(self, ta: TopologyArrays, previous: RotationState, now: datetime) -> None:
        self.ta = ta
        self.previous = history(previous, ta)
        self.now = now
        self.last = previous.last_rotation
        self.previous_last = previous.last_rotation
        self.admitted_s = np.full(len(ta.keys), np.nan)
        self.waiting_s = np.full(len(ta.keys), np.nan)

    def due(self, interval_s: float) -> bool:
        """Whether the pause rotates in this allocation (judged on the state passed in)."""
        last = self.previous_last
        return last is None or (self.now - last).total_seconds() >= interval_s

    def record(self, cands: IntArray, charging: BoolArray, due: bool) -> None:
        """Since when each of ``cands`` charges or waits after a solve; the last rotation
        moves only when somebody actually had to pause."""
        now_s = self.now.timestamp()
        on, off = cands[charging], cands[~charging]
        before_on = self.previous.admitted_s[on]
        self.admitted_s[on] = np.where(np.isnan(before_on), now_s, before_on)
        self.waiting_s[on] = np.nan
        before_off = self.previous.waiting_s[off]
        self.waiting_s[off] = np.where(np.isnan(before_off), now_s, before_off)
        self.admitted_s[off] = np.nan
        if len(off) and due and (self.last is None or self.now > self.last):
            self.last = self.now

    def state(self) -> RotationState:
        tz = self.now.tzinfo
        return RotationState(self.last, Since(self.ta, self.admitted_s, tz),
                             Since(self.ta, self.waiting_s, tz))
