"""The order of the commands that move chargers from one allocation to the next."""

from __future__ import annotations

from collections.abc import Mapping

from gridshare.core.decision import Command, TransitionPlan
from gridshare.core.topology import ConnectorKey


def plan_transition(previous: Mapping[ConnectorKey, float],
                    target: Mapping[ConnectorKey, float]) -> TransitionPlan:
    """Decreases first, increases after: every moment in between stays below the target
    on the connectors already raised and below the old value on the rest."""
    decreases: list[Command] = []
    increases: list[Command] = []
    for key in sorted(set(previous) | set(target)):
        old = previous.get(key, 0.0)
        new = target.get(key, 0.0)
        if new < old:
            decreases.append(Command(key, new, old))
        elif new > old:
            increases.append(Command(key, new, old))
    return TransitionPlan(tuple(decreases), tuple(increases))
