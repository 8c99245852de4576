"""Site topology: nested load groups, chargers, connectors, phases and limits.

Pure data, frozen once built. Loading and validating a YAML file lives in
:mod:`gridshare.config`; this module only describes a site that is already known to be
consistent and answers structural questions about it (ancestors, phase loading, units).

Units: currents in amperes *per phase*, powers in kilowatts, voltage phase-to-neutral.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

ConnectorKey = tuple[str, int]
"""(charger id, connector number starting at 1): the unit a setpoint is sent to."""


class Phase(IntEnum):
    """A line conductor; the value is its index in per-phase vectors."""

    L1 = 0
    L2 = 1
    L3 = 2


ALL_PHASES: tuple[Phase, ...] = (Phase.L1, Phase.L2, Phase.L3)


class Policy(StrEnum):
    """How a group shares what its limits leave among the connectors below it."""

    EQUAL = "equal"
    """Max-min fair in amps across connectors, through the whole tree."""
    PRIORITY = "priority"
    """Highest priority first; ties by arrival (first come, first served)."""
    PROPORTIONAL = "proportional"
    """Everyone at the same fraction of their own maximum."""
    DEADLINE = "deadline"
    """Least laxity first: cars that need energy by a departure time get their required
    rate first (most urgent first), the rest is shared equally."""


class ConnectorType(StrEnum):
    TYPE2 = "Type2"
    TYPE1 = "Type1"
    CCS = "CCS"
    CHADEMO = "CHAdeMO"
    SCHUKO = "Schuko"
    OTHER = "Other"


@dataclass(frozen=True, slots=True)
class Connector:
    charger_id: str
    number: int
    max_current: float
    """A per phase this connector may draw (cable, socket, or DC power converted)."""
    min_current: float
    type: ConnectorType | None = None

    @property
    def key(self) -> ConnectorKey:
        return (self.charger_id, self.number)


@dataclass(frozen=True, slots=True)
class Charger:
    id: str
    phases: int
    """1 or 3: how many line conductors the charger loads."""
    phase: Phase | None
    """For a 1-phase charger, the line it is wired to; None for 3-phase."""
    max_current: float
    """A per phase for the whole charger (all connectors together)."""
    min_current: float
    failsafe_current: float
    """What each connector may draw when the charger cannot hear us (0 allowed)."""
    priority: int
    connectors: tuple[Connector, ...]
    max_power_kw: float | None = None
    """Set for chargers configured in kW (typically DC); also capped in A via max_current."""
    group: str = ""
    """Id of the innermost load group that holds this charger."""
    zone: str | None = None
    """Demand-response zone (a utility's grid area) the station is in, if any."""
    max_station_kw: float | None = None
    """The most the whole station may draw in kW (a DC cabinet's rating), if known."""
    contract_max_kw: float | None = None
    """The draw above which the station breaks its grid contract (an alert, not a limit)."""
    v2x: bool = False
    """Declared bidirectional: may be asked to discharge when connected over OCPP 2.1."""

    def loads(self, phase: Phase) -> bool:
        """Whether current drawn by this charger flows on ``phase``."""
        return self.phases == 3 or self.phase is phase

    @property
    def phase_vector(self) -> tuple[int, int, int]:
        if self.phases == 3:
            return (1, 1, 1)
        assert self.phase is not None
        vec = [0, 0, 0]
        vec[self.phase] = 1
        return (vec[0], vec[1], vec[2])


@dataclass(frozen=True, slots=True)
class Group:
    id: str
    max_current: float | None
    """Static limit in A per phase, or None when only a kW limit is set."""
    max_power_kw: float | None
    phases: int
    policy: Policy
    parent: str | None
    groups: tuple[str, ...] = ()
    chargers: tuple[str, ...] = ()
    meter: str | None = None
    """Meter whose reading of loads we do not control lowers this group's headroom."""


@dataclass(frozen=True, slots=True)
class Zone:
    """A demand-response zone: the stations one utility signal addresses together."""

    id: str
    capacity_kw: float | None = None
    """The zone's connection capacity, for utilisation figures (None: not declared)."""


@dataclass(frozen=True, slots=True)
class Topology:
    site: str
    voltage: float
    """Volts phase-to-neutral, used to convert between A per phase and kW."""
    policy: Policy
    groups: Mapping[str, Group]
    chargers: Mapping[str, Charger]
    roots: tuple[str, ...]
    rotation_interval_s: float = 900.0
    """How long a set of paused cars stays paused before the pause rotates."""
    resolution_a: float = 0.1
    """Setpoints are multiples of this (OCPP 1.6 allows one decimal)."""
    zones: Mapping[str, Zone] = field(default_factory=dict)
    """Demand-response zones by id (empty: the site takes no DR signals)."""
    _ancestors: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _cache: dict[str, object] = field(default_factory=dict, repr=False, compare=False,
                                      hash=False)
    """Derived, immutable views (e.g. the array form) computed once per topology."""

    def __post_init__(self) -> None:
        chains: dict[str, tuple[str, ...]] = {}
        for gid in self.groups:
            chain: list[str] = []
            cur: str | None = gid
            while cur is not None:
                chain.append(cur)
                cur = self.groups[cur].parent
            chains[gid] = tuple(chain)
        object.__setattr__(self, "_ancestors", chains)

    def group_chain(self, group_id: str) -> tuple[str, ...]:
        """The group and its ancestors, innermost first, root last."""
        return self._ancestors[group_id]

    def charger_groups(self, charger_id: str) -> tuple[str, ...]:
        """Every group whose limits the charger counts against, innermost first."""
        return self._ancestors[self.chargers[charger_id].group]

    def connectors(self) -> Iterator[Connector]:
        for charger in self.chargers.values():
            yield from charger.connectors

    def connector(self, key: ConnectorKey) -> Connector:
        charger = self.chargers[key[0]]
        for conn in charger.connectors:
            if conn.number == key[1]:
                return conn
        raise KeyError(key)

    def power_kw_per_amp(self, charger: Charger) -> float:
        """kW drawn per A of per-phase current by this charger."""
        return self.voltage * charger.phases / 1000.0

    def subtree_chargers(self, group_id: str) -> list[str]:
        """Every charger in the group or any group below it."""
        out: list[str] = []
        stack = [group_id]
        while stack:
            g = self.groups[stack.pop()]
            out.extend(g.chargers)
            stack.extend(g.groups)
        return out

    def zone_chargers(self, zone_id: str) -> list[str]:
        """The chargers (stations) a zone's signals address, in file order."""
        return [cid for cid, c in self.chargers.items() if c.zone == zone_id]

    def effective_policy(self, group_id: str) -> Policy:
        return self.groups[group_id].policy


def amps_to_kw(charger: Charger, amps: float, voltage: float) -> float:
    """kW that ``amps`` per phase make on this charger (the inverse of
    :func:`station_kw_to_amps`)."""
    return amps * voltage * charger.phases / 1000.0


def station_kw_to_amps(charger: Charger, kw: float, voltage: float) -> float:
    """A per phase that make ``kw`` on this charger at ``voltage`` (phase-to-neutral):
    the unit setpoints and caps are sent in, from the kW a DR split speaks in."""
    return kw * 1000.0 / (voltage * charger.phases)
