"""The limit each group is held to right now: one definition, shared by policies and guard.

A group's current limit is the tightest of its static value and every extra source in
force (meter, demand response, operator). What it leaves for controlled load is that
limit minus the measured uncontrolled draw on each phase. A stale meter fails closed: the
group then has no headroom at all, never the headroom of an old reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gridshare.core.snapshot import GroupConditions, PhaseCurrents
from gridshare.core.topology import Group


@dataclass(frozen=True, slots=True)
class EffectiveLimit:
    current: float
    """Tightest A-per-phase limit in force (inf when the group is limited in kW only)."""
    power_kw: float
    """Tightest kW limit in force (inf when none)."""
    available: PhaseCurrents
    """A per phase left for controlled load: limit minus uncontrolled, 0 if stale."""
    available_power_kw: float
    """kW left for controlled load."""


def effective_limit(group: Group, cond: GroupConditions, voltage: float) -> EffectiveLimit:
    current = group.max_current if group.max_current is not None else math.inf
    power = group.max_power_kw if group.max_power_kw is not None else math.inf
    for lim in cond.limits:
        if lim.max_current is not None:
            current = min(current, lim.max_current)
        if lim.max_power_kw is not None:
            power = min(power, lim.max_power_kw)
    if cond.meter_stale:
        return EffectiveLimit(current, power, (0.0, 0.0, 0.0), 0.0)
    unc = cond.uncontrolled
    available = (
        max(0.0, current - unc[0]),
        max(0.0, current - unc[1]),
        max(0.0, current - unc[2]),
    )
    avail_power = max(0.0, power - voltage * (unc[0] + unc[1] + unc[2]) / 1000.0)
    return EffectiveLimit(current, power, available, avail_power)
