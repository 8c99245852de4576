"""What leaves the core: setpoints, group loads, alarms and transition plans."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from gridshare.core.snapshot import PhaseCurrents
from gridshare.core.topology import ConnectorKey, Phase


@dataclass(frozen=True, slots=True)
class Alarm:
    """A limit that is, or would be, exceeded. Names the group and the phase."""

    group: str
    phase: Phase | None
    """None for a kW limit or a per-connector bound."""
    load: float
    limit: float
    message: str


@dataclass(frozen=True, slots=True)
class GroupLoad:
    id: str
    current: PhaseCurrents
    """A per phase drawn by controlled connectors (offline ones at failsafe)."""
    uncontrolled: PhaseCurrents
    limit: float
    """Tightest A-per-phase limit in force (inf when only a kW limit applies)."""
    available: PhaseCurrents
    power_kw: float
    limit_power_kw: float


@dataclass(frozen=True, slots=True)
class RotationState:
    """Who is paused and since when, carried from one allocation to the next."""

    last_rotation: datetime | None = None
    admitted_since: Mapping[ConnectorKey, datetime] = field(default_factory=dict)
    waiting_since: Mapping[ConnectorKey, datetime] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Allocation:
    setpoints: Mapping[ConnectorKey, float]
    """A per phase for every connector; offline connectors at their failsafe current."""
    offline: frozenset[ConnectorKey]
    """Connectors counted at their failsafe current: no command can reach them."""
    groups: Mapping[str, GroupLoad]
    rotation: RotationState
    alarms: tuple[Alarm, ...] = ()
    guarded: bool = False
    """True when the safety guard rejected the policy's answer and substituted failsafes."""


@dataclass(frozen=True, slots=True)
class Command:
    key: ConnectorKey
    current: float
    previous: float


@dataclass(frozen=True, slots=True)
class TransitionPlan:
    """Send every decrease, wait until they are accepted or timed out, then increases."""

    decreases: tuple[Command, ...]
    increases: tuple[Command, ...]

    @property
    def empty(self) -> bool:
        return not self.decreases and not self.increases
