"""What the allocation engine decides from: a frozen picture of demand and conditions.

The controller builds one of these from live events (sessions, meter values, demand
response, operator overrides); tests and the CLI build them by hand. No clock is read
anywhere in the core: ``Snapshot.now`` is the only time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from gridshare.core.topology import ConnectorKey

PhaseCurrents = tuple[float, float, float]
ZERO3: PhaseCurrents = (0.0, 0.0, 0.0)


class LimitSource(StrEnum):
    """Where a group limit comes from; the tightest one in force wins."""

    STATIC = "static"
    METER = "meter"
    DEMAND_RESPONSE = "demand_response"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class GroupLimit:
    source: LimitSource
    max_current: float | None = None
    """A per phase, or None if this source does not limit current."""
    max_power_kw: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class GroupConditions:
    """Live conditions of one group."""

    uncontrolled: PhaseCurrents = ZERO3
    """Measured draw of loads we do not control (A per phase); lowers headroom."""
    limits: tuple[GroupLimit, ...] = ()
    """Extra limits in force now (meter-derived, demand response, operator)."""
    meter_stale: bool = False
    """The group's meter has gone stale: fail closed, no headroom for controlled loads."""


@dataclass(frozen=True, slots=True)
class ConnectorDemand:
    """One connector's state as the controller knows it."""

    charger: str
    connector: int = 1
    active: bool = False
    """A car is plugged in and wants power."""
    max_current: float | None = None
    """The EV's own maximum in A per phase, if known."""
    priority: int | None = None
    """Overrides the charger's configured priority for this session."""
    arrival: datetime | None = None
    online: bool = True
    """False when the charger cannot hear us: it draws its failsafe current."""
    energy_needed_kwh: float | None = None
    departure: datetime | None = None

    @property
    def key(self) -> ConnectorKey:
        return (self.charger, self.connector)

    def __post_init__(self) -> None:
        for name in ("max_current", "energy_needed_kwh"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ValueError(f"{self.charger}/{self.connector}: {name} must be a "
                                 f"finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: datetime
    connectors: Mapping[ConnectorKey, ConnectorDemand] = field(default_factory=dict)
    """Connectors absent here are idle and online."""
    groups: Mapping[str, GroupConditions] = field(default_factory=dict)
    _cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False,
                                      hash=False)
    """Derived views (the array form) computed once per snapshot."""

    def demand(self, key: ConnectorKey) -> ConnectorDemand:
        found = self.connectors.get(key)
        return found if found is not None else ConnectorDemand(key[0], key[1])

    def conditions(self, group_id: str) -> GroupConditions:
        found = self.groups.get(group_id)
        return found if found is not None else GroupConditions()
