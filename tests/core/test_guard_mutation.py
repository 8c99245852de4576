"""Mutation test of the guard: take a correct allocation, push one single limit (a group on
one phase, or a group's kW) over by at most one resolution step, and the guard must reject
it and name that group; left untouched, the allocation must pass.

The mutation raises one online connector that loads the limit, within its own bounds, by
the fewest whole steps that break the limit. Limits offline chargers alone already break
are included: a correct allocation pauses every online connector under them, so starting
one is a violation too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from hypothesis import assume, given, note
from hypothesis import strategies as st

from gridshare.core import guard
from gridshare.core.allocation import allocate
from gridshare.core.topology import ConnectorKey

from .invariants import EPS, Constraint, Model
from .strategies import CORE_SETTINGS, Case, cases, describe


@dataclass(frozen=True)
class Mutation:
    limit: Constraint
    key: ConnectorKey
    amps: float
    """The connector's new setpoint."""

    @property
    def over_by(self) -> str:
        return f"{self.limit.name} over by raising {self.key} to {self.amps} A"


def one_step_over(model: Model, setpoints: Mapping[ConnectorKey, float],
                  limit: Constraint, key: ConnectorKey) -> Mutation | None:
    """Raise ``key`` by the fewest whole steps that put ``limit`` over (so over by at most
    one step of this connector), or None when that would take it out of its own bounds."""
    res = model.res
    room = limit.headroom(model.drawn(setpoints))
    coef = limit.coef[key]
    steps = max(1, math.floor(room / (coef * res) + 1e-9) + 1)
    while coef * steps * res <= room + EPS:  # float noise at the border: one more
        steps += 1
    amps = round(setpoints[key] + steps * res, 6)
    if setpoints[key] == 0.0 and amps < model.start(key):
        # A paused connector restarts at its minimum: over by more, still only this limit's
        # doing (every other limit over it is checked against the same new value).
        amps = model.start(key)
    if amps > model.top(key) + EPS:
        return None
    return Mutation(limit, key, amps)


def mutations(model: Model, setpoints: Mapping[ConnectorKey, float],
              limit: Constraint) -> list[Mutation]:
    found = (one_step_over(model, setpoints, limit, key) for key in sorted(limit.coef)
             if key in model.online and limit.coef[key] > 0)
    return [m for m in found if m is not None]


@CORE_SETTINGS
@given(case=cases(), data=st.data())
def test_any_single_group_limit_one_step_over_is_rejected_and_named(
        case: Case, data: st.DataObject) -> None:
    allocation = allocate(case.topology, case.snapshot)
    setpoints = dict(allocation.setpoints)
    note(describe(case))
    assert guard.check(case.topology, case.snapshot, setpoints) == []
    assert guard.enforce(case.topology, case.snapshot, allocation) is allocation
    model = Model.build(case.topology, case.snapshot)
    tried = 0
    for limit in model.constraints:
        if limit.group is None or math.isinf(limit.capacity):
            continue  # a charger's own maximum (the connector bounds cover it), or no limit
        options = mutations(model, setpoints, limit)
        if not options:
            continue
        mutation = data.draw(st.sampled_from(options), label=limit.name)
        mutated = {**setpoints, mutation.key: mutation.amps}
        alarms = guard.check(case.topology, case.snapshot, mutated)
        named = {(a.group, a.phase) for a in alarms}
        assert (limit.group, limit.phase) in named, mutation.over_by
        if limit.phase is None:
            assert any(a.group == limit.group and " kW above " in a.message
                       for a in alarms), mutation.over_by
        enforced = guard.enforce(case.topology, case.snapshot,
                                 type(allocation)(mutated, allocation.offline,
                                                  allocation.groups, allocation.rotation))
        assert enforced.guarded, mutation.over_by
        assert (limit.group, limit.phase) in {(a.group, a.phase) for a in enforced.alarms}
        tried += 1
    assume(tried > 0)
