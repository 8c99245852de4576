"""Live site state: events folded into what the allocation engine decides from.

Pure: no I/O, no clock; every method that depends on time takes ``now``. The controller
owns one instance per site, feeds it every event and every command result, and asks for a
:class:`~gridshare.core.snapshot.Snapshot` whenever it re-allocates.

Safety rules that live here, because they decide what the snapshot counts:

- A charger we cannot hear from (never connected since start, disconnected, silent) is
  offline and counted at its failsafe current — or at its last live setpoint while that
  setpoint's lease runs, since the charger keeps obeying it until then.
- A group meter that stopped reporting (nothing since start-up, or nothing within its
  ``max_age``) is stale: the group fails closed (no headroom).
- A meter measures the group's whole load, our chargers included; what they draw lags
  their setpoints by seconds and their own readings lag more. The uncontrolled load is
  the meter minus what they measurably draw only once every change under the group has
  settled and been read back; during a transition it is held at the last quiet value
  (lifted to the meter minus every connector's worst case, when that is higher; lowered
  to the meter itself, when that reads less): never lowered by our own transitions, and
  no feedback loop to oscillate (:func:`estimate_uncontrolled`).
- What each connector may be obeying is kept in a command ledger
  (:mod:`gridshare.core.ledger`): in force, in flight, unknown outcomes, settling. The
  allocation cannot lower what a charger may obey without an answer, so it is *reserved*
  (counted as uncontrolled load in every group above) where the allocation would not count
  it: an offline charger's profile above its failsafe, an idle connector's profile (a car
  may arrive and draw it before we know), a connector with an unanswered command.
- A charger whose meter shows it drawing more than its setpoint plus a tolerance for longer
  than a grace period is a *violator*: it is counted at what it really draws (reserved as
  uncontrolled load in every group above it) and its own setpoint goes to 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from gridshare.core.additions import added_chargers
from gridshare.core.ledger import ConnectorLedger, Effect, Ledger
from gridshare.core.snapshot import (
    ConnectorDemand,
    GroupConditions,
    GroupLimit,
    LimitSource,
    PhaseCurrents,
    Snapshot,
)
from gridshare.core.topology import Charger, ConnectorKey, Topology
from gridshare.core.v2x_offer import V2xOffer
from gridshare.drivers import CommandOutcome, CommandResult
from gridshare.events import (
    ChargerBooted,
    ChargerOffline,
    ChargerOnline,
    ChargingNeeds,
    ConnectorCapsChanged,
    ConnectorStatus,
    Event,
    EventCounters,
    GroupMeterReading,
    LimitChanged,
    MeterReading,
    MeterSample,
    PriorityChanged,
    ProfileRejected,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)

CAR_STATUSES = frozenset({ConnectorStatus.PREPARING, ConnectorStatus.CHARGING,
                          ConnectorStatus.SUSPENDED_EV, ConnectorStatus.SUSPENDED_EVSE})
"""A car is plugged in and may want power. SuspendedEVSE counts: it is what a car we have
paused (0 A) reports, and it must be able to get power back."""
NO_CAR_STATUSES = frozenset({ConnectorStatus.AVAILABLE, ConnectorStatus.FINISHING,
                             ConnectorStatus.FAULTED, ConnectorStatus.UNAVAILABLE,
                             ConnectorStatus.RESERVED})
"""Statuses in which a connector draws nothing even if a session is still open."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Impact(IntEnum):
    """What an event or the passing of time means for the allocation."""

    NONE = 0
    CHANGED = 1
    """Demand or headroom changed: re-allocate soon (bursts are batched)."""
    URGENT = 2
    """Headroom fell or a load may be above what we count: re-allocate at once."""


@dataclass(frozen=True, slots=True)
class MeterInfo:
    """What the controller needs of a declared meter: how long a reading lasts, and where
    it comes from (named in the alarm when it goes quiet)."""

    id: str
    source: str
    """mqtt | http | ocpp"""
    where: str
    """``mqtt home/meter/state``, ``http <url>``, ``ocpp <charger> connector <n>``."""
    max_age_s: float


@dataclass(frozen=True, slots=True)
class StateSettings:
    meter_stale_after_s: float = 60.0
    """A group meter silent for this long fails closed."""
    verify_tolerance_a: float = 2.0
    """Draw above the setpoint tolerated (meter accuracy, car overshoot)."""
    verify_grace_s: float = 15.0
    """How long a charger may draw above a lowered setpoint (settling takes 5–10 s)."""
    reading_max_age_s: float = 180.0
    """A charger's own meter reading older than this is not used."""
    offline_after_s: float | None = None
    """Mark a charger offline after this long without any event from it (None: rely on
    the transport's ChargerOffline)."""
    lapse_margin_s: float = 20.0
    """A live setpoint not renewed this long before its lease ends (at most the last
    quarter of the lease) also counts at the failsafe current, what the charger falls back
    to, so the others make room in time."""
    uncontrolled_deadband_a: float = 0.5
    """A change in a group's uncontrolled load smaller than this is not taken (no
    re-allocation, no setpoint change for meter noise)."""
    meter_readback_s: float = 30.0
    """After a change, how long a car's connector with no reading of its own keeps a meter
    following its group in transition (chargers send MeterValues every 10-60 s); after
    that it counts at its setpoint in force."""
    meters: tuple[MeterInfo, ...] = ()
    """Meters declared in the site file; a group meter not listed here goes stale after
    ``meter_stale_after_s``."""


@dataclass(frozen=True, slots=True)
class ChargerInfo:
    """What a charger told us about itself and when we last heard from it."""

    online: bool
    protocol: str
    vendor: str
    model: str
    last_seen: datetime | None
    since: datetime | None
    """When it last went online or offline."""
    boots: int


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A connector's session as the charger reports it (None where it has not said)."""

    transaction_id: str | None
    started: datetime | None
    arrival: datetime | None
    energy_wh: float | None
    """Delivered in this session: the register now minus at its start."""
    power_w: float | None
    soc_percent: float | None
    energy_needed_kwh: float | None
    departure: datetime | None
    v2x_offer: V2xOffer | None = None
    """What the car offered for V2X over OCPP 2.1 (None: it said nothing)."""


@dataclass(frozen=True, slots=True)
class Violation:
    key: ConnectorKey
    allowed_a: float
    """What we count the connector at (its setpoint in force)."""
    measured_a: float
    """Highest per-phase current its last meter reading showed."""
    since: datetime


@dataclass(slots=True)
class _ConnectorState:
    status: ConnectorStatus | None = None
    transaction_id: str | None = None
    session_started: datetime | None = None
    meter_start_wh: float | None = None
    arrival: datetime | None = None
    ev_max_current_a: float | None = None
    energy_needed_kwh: float | None = None
    departure: datetime | None = None
    v2x_offer: V2xOffer | None = None
    """The car's V2X offer (2.1 NotifyEVChargingNeeds), while that car is plugged in."""
    priority: int | None = None
    # last meter reading, on site phases
    measured_a: PhaseCurrents | None = None
    measured_max_a: float = 0.0
    measured_at: datetime | None = None
    energy_wh: float | None = None
    power_w: float | None = None
    soc_percent: float | None = None
    over_since: datetime | None = None
    flagged: bool = False
    lowered_at: datetime | None = None
    """Last time what we count it at went down; the verification grace starts here."""
    changed_at: datetime | None = None
    """Last time what it may draw changed (a setpoint sent or answered, a car came or went,
    a boot, online/offline): a meter following its group is in transition until then
    plus the settle time."""

    @property
    def active(self) -> bool:
        if self.status in CAR_STATUSES:
            return True
        return self.transaction_id is not None and self.status not in NO_CAR_STATUSES


@dataclass(slots=True)
class _ChargerState:
    online: bool = False
    """Never heard from since start counts as offline: fail closed."""
    changed_at: datetime | None = None
    last_seen: datetime | None = None
    protocol: str = ""
    vendor: str = ""
    model: str = ""
    boots: int = 0


@dataclass(slots=True)
class _GroupMeterState:
    current_a: PhaseCurrents
    at: datetime
    includes_chargers: bool
    floor_a: PhaseCurrents = (0.0, 0.0, 0.0)
    """The meter minus every connector's worst case, as of the reading."""
    quiet_a: PhaseCurrents | None = None
    """Held through transitions: the last quiet estimate, or the meter when it reads less."""
    used_a: PhaseCurrents | None = None
    """What the snapshot counts (moves only by more than the deadband)."""


@dataclass(slots=True)
class _ExtraLimit:
    limit: GroupLimit
    until: datetime | None


@dataclass(slots=True)
class _Cache:
    """Results of the last ``refresh`` so time-driven transitions are reported once."""

    stale: frozenset[str] = frozenset()


def _source(name: str) -> LimitSource:
    try:
        return LimitSource(name)
    except ValueError:
        return LimitSource.OPERATOR


class SiteState:
    """Everything the controller knows about one site, folded from events."""

    def __init__(self, topology: Topology, settings: StateSettings | None = None, *,
                 settle_s: float = 5.0) -> None:
        """``settle_s``: how long a car takes to follow a lower limit; a lapsed command
        still counts this long after its validTo."""
        self.topology = topology
        self.settings = settings or StateSettings()
        self.counters = EventCounters()
        self._chargers = {cid: _ChargerState() for cid in topology.chargers}
        self._connectors = {c.key: _ConnectorState() for c in topology.connectors()}
        self._demands: dict[ConnectorKey, tuple[tuple[object, ...], ConnectorDemand]] = {}
        self._meters: dict[str, _GroupMeterState] = {}
        self._limits: dict[tuple[str, str], _ExtraLimit] = {}
        self._priorities: dict[str, int] = {}
        """Charger id -> run-time priority (an operator's), in place of the site file's."""
        self._caps_by_source: dict[str, dict[ConnectorKey, float]] = {}
        """Source -> its per-connector caps (A per phase), the whole set it last sent."""
        self._caps: dict[ConnectorKey, float] = {}
        """Connector -> the tightest cap of every source (absent: no cap)."""
        self._cache = _Cache()
        self._subtrees = {gid: tuple(topology.subtree_chargers(gid)) for gid in topology.groups}
        self._metered_by: dict[str, tuple[str, ...]] = {}
        """Meter id -> the groups that follow it."""
        for gid, group in topology.groups.items():
            if group.meter is not None:
                self._metered_by[group.meter] = (*self._metered_by.get(group.meter, ()), gid)
        self.ledger = Ledger(topology, self.settings.lapse_margin_s, settle_s)
        self._settle = timedelta(seconds=settle_s)
        self._readback = self._settle + timedelta(seconds=self.settings.meter_readback_s)
        self._meter_info = {m.id: m for m in self.settings.meters}
        self._samples: dict[str, tuple[PhaseCurrents, datetime]] = {}
        """Meter id -> its last sample."""
        self._started_at: datetime | None = None
        """The first time we were told about: 'no reading since start-up' counts from here."""
        self._refreshed_at: datetime | None = None
        self.last_event_at: datetime | None = None
        self._now: datetime | None = None
        """The latest time we were told about (events, refresh): for views without one."""

    def add_chargers(self, topology: Topology) -> tuple[str, ...]:
        """Take ``topology``, which only adds chargers to ours (see
        :func:`gridshare.core.additions.added_chargers`, which raises otherwise): each new
        one starts as never heard from (offline, counted at its failsafe), and everything
        known of the others stays. Returns the ids added."""
        added = added_chargers(self.topology, topology)
        self.ledger.add_chargers(topology, added)
        for cid in added:
            self._chargers[cid] = _ChargerState()
            for conn in topology.chargers[cid].connectors:
                self._connectors[conn.key] = _ConnectorState()
        self.topology = topology
        self._subtrees = {gid: tuple(topology.subtree_chargers(gid)) for gid in topology.groups}
        return added

    # --- events ---------------------------------------------------------------------------

    def apply(self, event: Event) -> Impact:
        """Fold one event in; say whether (and how urgently) to re-allocate."""
        self.last_event_at = event.at
        if self._now is None or event.at > self._now:
            self._now = event.at
        if self._started_at is None:
            self._started_at = event.at
        if isinstance(event, GroupMeterReading):
            return self._group_meter(event)
        if isinstance(event, MeterSample):
            seen = self._samples.get(event.meter)
            if seen is None or event.at >= seen[1]:
                self._samples[event.meter] = (event.current_a, event.at)
            impact = Impact.NONE
            for gid in self._metered_by.get(event.meter, ()):
                impact = max(impact, self._group_meter(GroupMeterReading(
                    gid, event.at, event.current_a)))
            return impact
        if isinstance(event, LimitChanged):
            return self._limit(event)
        if isinstance(event, PriorityChanged):
            # Not a sign of life from the charger: it comes from an operator.
            return self.set_priority(event.charger, event.priority)
        if isinstance(event, ConnectorCapsChanged):
            return self._set_caps(event)
        charger = self._chargers.get(event.charger)
        if charger is None:
            self.counters.reject("unknown charger")
            return Impact.NONE
        if charger.last_seen is None or event.at > charger.last_seen:
            charger.last_seen = event.at
        impact = Impact.NONE
        if isinstance(event, ChargerBooted):
            charger.protocol, charger.vendor, charger.model = (event.protocol, event.vendor,
                                                               event.model)
            charger.boots += 1
            self.record_boot(event.charger, event.at, event.frame_seq)
            return max(self.set_online(event.charger, True, event.at), Impact.CHANGED)
        if isinstance(event, ChargerOnline | ChargerOffline):
            # a new connection, or none: the CSMS keeps a car's V2X offer per connection
            for left in self._charger_connectors(event.charger):
                left.v2x_offer = None
            return self.set_online(event.charger, isinstance(event, ChargerOnline), event.at)
        if not charger.online and not isinstance(event, ProfileRejected) and \
                (charger.changed_at is None or event.at > charger.changed_at):
            # A charger that talks after it went offline is connected, whatever we missed.
            impact = self.set_online(event.charger, True, event.at)
        key = (event.charger, event.connector)
        conn = self._connectors.get(key)
        if conn is None:
            if not (isinstance(event, MeterReading | StatusChanged) and event.connector == 0):
                self.counters.reject("unknown connector")
            return impact
        was_active = conn.active
        if isinstance(event, StatusChanged):
            conn.status = event.status
            if event.status is ConnectorStatus.AVAILABLE:
                conn.v2x_offer = None  # no car: its offer left with it
        elif isinstance(event, SessionStarted):
            conn.transaction_id = event.transaction_id
            conn.session_started, conn.meter_start_wh = event.at, event.meter_start_wh
            if conn.status in NO_CAR_STATUSES:
                conn.status = None  # the status notification may still be on its way
        elif isinstance(event, SessionStopped):
            if conn.transaction_id in (None, event.transaction_id):
                conn.transaction_id = None
                conn.v2x_offer = None
                if conn.status in CAR_STATUSES:
                    conn.status = ConnectorStatus.FINISHING
        elif isinstance(event, ChargingNeeds):
            conn.energy_needed_kwh = event.energy_needed_kwh
            conn.departure = event.departure
            if event.v2x_offer is not None:  # needs without one (2.0.1, an app) keep it
                conn.v2x_offer = event.v2x_offer
            if event.max_current is not None:
                conn.ev_max_current_a = event.max_current
            return max(impact, Impact.CHANGED if conn.active else Impact.NONE)
        elif isinstance(event, MeterReading):
            return max(impact, self._meter_value(event, conn))
        elif isinstance(event, ProfileRejected):
            return impact
        if conn.active != was_active:
            conn.changed_at = event.at
            if conn.active:
                conn.arrival = event.at
            else:
                self._session_over(conn, event.at)
            return max(impact, Impact.CHANGED)
        return impact

    def set_online(self, charger_id: str, online: bool, at: datetime) -> Impact:
        charger = self._chargers[charger_id]
        if charger.online == online:
            return Impact.NONE
        charger.online = online
        charger.changed_at = at
        for conn in self._charger_connectors(charger_id):
            conn.changed_at = at
        # Going offline raises what we must count (failsafe) for it: others must give way.
        return Impact.URGENT if not online else Impact.CHANGED

    def record_boot(self, charger_id: str, at: datetime, frame_seq: int | None = None) -> None:
        """The charger restarted: setpoints accepted before frame ``frame_seq`` are gone,
        it is at its default profile (see :meth:`Ledger.boot`)."""
        self.ledger.boot(charger_id, frame_seq)
        for conn in self._charger_connectors(charger_id):
            conn.lowered_at = conn.changed_at = at

    def _session_over(self, conn: _ConnectorState, at: datetime) -> None:
        """The car left. What we sent stays counted: a setpoint installed on the connector
        before the transaction was known outlives the session until its lease ends and
        would apply to the next car (the decision holds an idle connector at 0 A)."""
        conn.arrival = None
        conn.ev_max_current_a = conn.energy_needed_kwh = None
        conn.departure = None
        conn.v2x_offer = None
        conn.priority = None
        conn.lowered_at = at

    def _meter_value(self, event: MeterReading, conn: _ConnectorState) -> Impact:
        charger = self.topology.chargers[event.charger]
        amps = _site_phase_currents(charger, event, self.topology.voltage)
        if event.energy_wh is not None:
            conn.energy_wh = event.energy_wh
            if conn.transaction_id is not None and conn.meter_start_wh is None and \
                    event.transaction_id == conn.transaction_id:
                # A start without its register (an OCPP 2.x Started event without a
                # meter value): the session's energy counts from its first reading (a
                # little short, never the whole register)
                conn.meter_start_wh = event.energy_wh
        if event.power_w is not None:
            conn.power_w = event.power_w
        if event.soc_percent is not None:
            conn.soc_percent = event.soc_percent
        if amps is None:
            return Impact.NONE
        conn.measured_a = amps
        conn.measured_max_a = max(amps)
        conn.measured_at = event.at
        allowed = self.allowed_a((event.charger, event.connector), event.at)
        if conn.measured_max_a > allowed + self.settings.verify_tolerance_a:
            if conn.over_since is None:
                conn.over_since = event.at
            return Impact.NONE
        conn.over_since = None
        if conn.flagged:
            conn.flagged = False
            return Impact.CHANGED  # back within its setpoint: give it power again
        return Impact.NONE

    def _group_meter(self, event: GroupMeterReading) -> Impact:
        if event.group not in self.topology.groups:
            self.counters.reject("unknown group")
            return Impact.NONE
        was_stale = event.group in self._cache.stale
        previous = self._meters.get(event.group)
        if previous is not None and event.at < previous.at:
            return Impact.NONE  # an older reading than the one we hold says nothing new
        meter = _GroupMeterState(event.current_a, event.at, event.includes_chargers)
        if previous is not None:
            meter.quiet_a, meter.used_a = previous.quiet_a, previous.used_a
        if event.includes_chargers:
            worst = self._ours(event.group, event.at, worst=True)[0]
            meter.floor_a = _minus(event.current_a, worst)
        self._meters[event.group] = meter
        if was_stale:
            self._cache.stale = self._cache.stale - {event.group}
        impact = self._follow(event.group, event.at)
        return max(impact, Impact.CHANGED) if was_stale else impact

    def _ours(self, group_id: str, now: datetime, *, worst: bool = False,
              meter_at: datetime | None = None) -> tuple[PhaseCurrents, bool]:
        """What our connectors below the group draw, and whether that is settled.

        ``worst``: each at the most it may draw (the ledger's worst case, or its reading
        when that is higher). Otherwise: a car's connector at its reading, or at its
        setpoint in force when its charger sends none; an idle one at a reading taken since
        it went idle, else 0. Settled (a quiet meter) when the reading at ``meter_at`` and
        every connector's reading were taken a settle time after its last change."""
        out = [0.0, 0.0, 0.0]
        quiet = True
        for cid in self._subtrees[group_id]:
            charger = self.topology.chargers[cid]
            vec = charger.phase_vector
            for c in charger.connectors:
                conn = self._connectors[c.key]
                measured = self.measured_a(c.key, now)
                changed = conn.changed_at
                if meter_at is not None and changed is not None and \
                        meter_at < changed + self._settle:
                    quiet = False
                amps: PhaseCurrents
                if worst:
                    value = self.believed_a(c.key, now)
                    amps = (vec[0] * value, vec[1] * value, vec[2] * value)
                    if measured is not None:
                        amps = (max(amps[0], measured[0]), max(amps[1], measured[1]),
                                max(amps[2], measured[2]))
                elif measured is not None and conn.measured_at is not None and (
                        changed is None or conn.measured_at >= changed):
                    amps = measured
                    if conn.active and changed is not None and \
                            conn.measured_at < changed + self._settle:
                        quiet = False
                elif conn.active:
                    if measured is not None:
                        amps = measured
                        quiet = False  # read before its last change: not yet read back
                    else:
                        # Not read yet (a new car, or a charger that sends no MeterValues):
                        # wait a while for its first reading, then trust its setpoint.
                        if changed is not None and now < changed + self._readback:
                            quiet = False
                        setpoint = self.in_force_a(c.key, now)
                        if setpoint is None:
                            setpoint = charger.failsafe_current
                        amps = (vec[0] * setpoint, vec[1] * setpoint, vec[2] * setpoint)
                else:
                    continue
                out[0] += amps[0]
                out[1] += amps[1]
                out[2] += amps[2]
        return (out[0], out[1], out[2]), quiet

    def _follow(self, group_id: str, now: datetime) -> Impact:
        """Re-estimate the group's uncontrolled load; take it when it moved by more than the
        deadband. URGENT when it rose (less headroom), CHANGED when it fell."""
        meter = self._meters[group_id]
        if not meter.includes_chargers:
            estimate = meter.current_a
        else:
            ours, quiet = self._ours(group_id, now, meter_at=meter.at)
            estimate, meter.quiet_a = estimate_uncontrolled(
                meter.current_a, ours, meter.floor_a, quiet=quiet, held_a=meter.quiet_a)
        before = meter.used_a if meter.used_a is not None else (0.0, 0.0, 0.0)
        band = self.settings.uncontrolled_deadband_a
        if meter.used_a is not None and \
                all(abs(a - b) <= band for a, b in zip(estimate, before, strict=True)):
            return Impact.NONE
        meter.used_a = estimate
        if any(a > b + band for a, b in zip(estimate, before, strict=True)):
            return Impact.URGENT
        if any(abs(a - b) > band for a, b in zip(estimate, before, strict=True)):
            return Impact.CHANGED
        return Impact.NONE

    def _limit(self, event: LimitChanged) -> Impact:
        if event.group not in self.topology.groups:
            self.counters.reject("unknown group")
            return Impact.NONE
        before = self._tightest(event.group, event.at)
        key = (event.group, event.source)
        if event.max_current is None and event.max_power_kw is None:
            self._limits.pop(key, None)
        else:
            self._limits[key] = _ExtraLimit(
                GroupLimit(_source(event.source), event.max_current, event.max_power_kw,
                           event.reason or event.source), event.until)
        after = self._tightest(event.group, event.at)
        if after[0] < before[0] or after[1] < before[1]:
            return Impact.URGENT
        return Impact.CHANGED if after != before else Impact.NONE

    def _set_caps(self, event: ConnectorCapsChanged) -> Impact:
        """Replace one source's caps; whole or not at all (an unknown connector or a value
        that is not a finite number >= 0 refuses the event, counted). URGENT when a
        charging connector's cap fell (a decrease), CHANGED when one rose or cleared."""
        caps: dict[ConnectorKey, float] = {}
        for key, value in event.caps.items():
            if key not in self._connectors:
                self.counters.reject("unknown connector")
                return Impact.NONE
            if isinstance(value, bool) or not isinstance(value, int | float) or \
                    not math.isfinite(value) or value < 0:
                self.counters.reject("bad cap")
                return Impact.NONE
            caps[key] = float(value)
        before = self._caps
        if caps:
            self._caps_by_source[event.source] = caps
        else:
            self._caps_by_source.pop(event.source, None)
        after: dict[ConnectorKey, float] = {}
        for source_caps in self._caps_by_source.values():
            for key, value in source_caps.items():
                found = after.get(key)
                after[key] = value if found is None else min(found, value)
        self._caps = after
        impact = Impact.NONE
        for key in before.keys() | after.keys():
            old, new = before.get(key, math.inf), after.get(key, math.inf)
            if old == new or not self._connectors[key].active:
                continue
            if new < old:
                return Impact.URGENT
            impact = Impact.CHANGED
        return impact

    def caps_of(self, key: ConnectorKey) -> float | None:
        """The tightest run-time cap on a connector (A per phase), or None: no cap."""
        return self._caps.get(key)

    def cap_sources(self, key: ConnectorKey) -> dict[str, float]:
        """Every source's cap on a connector: source -> A per phase."""
        return {src: caps[key] for src, caps in self._caps_by_source.items() if key in caps}

    def set_priority(self, charger_id: str, priority: int | None) -> Impact:
        """A run-time priority for a charger (None: the site file's again); the priority
        policy orders by it from the next allocation on."""
        if charger_id not in self._chargers:
            self.counters.reject("unknown charger")
            return Impact.NONE
        before = self.priority_of(charger_id)
        if priority is None:
            self._priorities.pop(charger_id, None)
        else:
            self._priorities[charger_id] = priority
        return Impact.CHANGED if self.priority_of(charger_id) != before else Impact.NONE

    def priority_of(self, charger_id: str) -> int:
        """The priority the policy orders this charger by now."""
        found = self._priorities.get(charger_id)
        return self.topology.chargers[charger_id].priority if found is None else found

    def priority_override(self, charger_id: str) -> int | None:
        return self._priorities.get(charger_id)

    def limits_of(self, group_id: str, now: datetime,
                  ) -> dict[str, tuple[GroupLimit, datetime | None]]:
        """Limit sources of a group besides the site file, in force at ``now``: source ->
        (limit, until)."""
        return {src: (x.limit, x.until) for (gid, src), x in self._limits.items()
                if gid == group_id and (x.until is None or x.until > now)}

    def _tightest(self, group_id: str, now: datetime) -> tuple[float, float]:
        amps, kw = math.inf, math.inf
        for lim in self._extra_limits(group_id, now):
            if lim.max_current is not None:
                amps = min(amps, lim.max_current)
            if lim.max_power_kw is not None:
                kw = min(kw, lim.max_power_kw)
        return amps, kw

    def _extra_limits(self, group_id: str, now: datetime) -> list[GroupLimit]:
        return [x.limit for (gid, _), x in self._limits.items()
                if gid == group_id and (x.until is None or x.until > now)]

    # --- commands -------------------------------------------------------------------------

    def believed_a(self, key: ConnectorKey, now: datetime | None = None) -> float:
        """The most this connector may draw (its counted value in the ledger); offline, at
        least its failsafe. ``now`` defaults to the latest time we were told about."""
        when = now if now is not None else self._now
        if when is None:
            return max(self.ledger.failsafe_a(key), self.ledger.counted_a(key, _EPOCH))
        return self.ledger.counted_a(key, when, offline=not self._chargers[key[0]].online)

    def allowed_a(self, key: ConnectorKey, now: datetime) -> float:
        """What we count this connector at, for verification."""
        if not self._chargers[key[0]].online:
            return self.topology.chargers[key[0]].failsafe_current
        return self.believed_a(key, now) if self._connectors[key].active else 0.0

    def record_sent(self, key: ConnectorKey, current_a: float, now: datetime,
                    lease_s: float) -> int:
        """A command is about to be submitted: counted from now on. Returns its id."""
        if current_a != self.in_force_a(key, now):
            self._connectors[key].changed_at = now  # the charger may apply it any moment
        return self.ledger.sent(key, current_a, now, lease_s)

    def pending_a(self, key: ConnectorKey) -> float | None:
        """The newest command in flight to this connector."""
        newest = self.ledger[key].newest_in_flight()
        return newest.value_a if newest is not None else None

    def record_outcome(self, key: ConnectorKey, command_id: int, outcome: CommandOutcome,
                       at: datetime, settle_s: float, *,
                       wake_on_apply: bool = True) -> tuple[Effect, Impact]:
        """Fold a command's outcome into the ledger; say whether to re-allocate. A settle
        window is only kept for a connector with a car (an idle one draws nothing).

        ``wake_on_apply=False`` when nothing waits for headroom (no increase held, no step
        refused): then an accept, or a decrease of a connector the allocation does not
        reserve (online, with a car, no unknown outcome), changes nothing the next cycle
        would decide on, and needs none (a burst of 1,000 answers would otherwise run
        full cycles while the rest of the answers wait to be read). What is counted is
        updated either way: this only spares the cycle. An unknown outcome or a rise of
        what is counted is always urgent; a refusal, a lowered reservation or an unknown
        outcome that ended always re-allocates."""
        conn = self._connectors[key]
        ledger = self.ledger
        failsafe = ledger.failsafe_a(key)
        margin_s, tail_s = ledger.lapse_margin_s, ledger.tail_s
        online = self._chargers[key[0]].online
        entry = ledger[key]
        before = entry.counted_a(failsafe, at, offline=not online, lapse_margin_s=margin_s,
                                 tail_s=tail_s)
        obeyed = _in_force_value(entry, at)
        pinned = bool(entry.unknown) and bool(entry.live_unknowns(at))
        effect = ledger.outcome(key, command_id, outcome, at, settle_s if conn.active else 0.0)
        entry = ledger[key]
        after = entry.counted_a(failsafe, at, offline=not online, lapse_margin_s=margin_s,
                                tail_s=tail_s)
        if after != before or obeyed != _in_force_value(entry, at):
            conn.changed_at = at  # the car starts to follow now
        impact = Impact.NONE
        if outcome.result is CommandResult.OFFLINE:
            impact = self.set_online(key[0], False, at)
        if after < before:
            conn.lowered_at = at
        if effect is Effect.UNKNOWN or after > before:
            return effect, Impact.URGENT
        pinned_after = bool(entry.unknown) and bool(entry.live_unknowns(at))
        reserved = not conn.active or not self._chargers[key[0]].online or pinned_after
        if (after < before and (wake_on_apply or reserved)) or effect is Effect.REJECTED or \
                (effect is Effect.APPLIED and wake_on_apply) or (pinned and not pinned_after):
            # An accept may start a settle window or end a wait: decide again.
            impact = max(impact, Impact.CHANGED)
        return effect, impact

    def record_outcomes(self, outcomes: Iterable[tuple[ConnectorKey, int, CommandOutcome]],
                        at: datetime, settle_s: float, *, wake_on_apply: bool = True,
                        ) -> tuple[list[Effect], Impact]:
        """:meth:`record_outcome` for each of a batch (the answers that arrived in one pass
        of the event loop), in order, all at ``at``: their effects, and the one impact
        that covers them all (the most urgent)."""
        effects: list[Effect] = []
        impact = Impact.NONE
        for key, command_id, outcome in outcomes:
            effect, one = self.record_outcome(key, command_id, outcome, at, settle_s,
                                              wake_on_apply=wake_on_apply)
            effects.append(effect)
            impact = max(impact, one)
        return effects, impact

    def command_keys(self) -> list[ConnectorKey]:
        """Connectors a setpoint must be sent to: online charger, car present."""
        return [key for key, conn in self._connectors.items()
                if conn.active and self._chargers[key[0]].online]

    def in_force_a(self, key: ConnectorKey, now: datetime) -> float | None:
        """The accepted setpoint still inside its lease, or None."""
        in_force = self.ledger[key].in_force
        if in_force is None or not in_force.valid(now):
            return None
        return in_force.value_a

    # --- time -----------------------------------------------------------------------------

    def refresh(self, now: datetime) -> Impact:
        """Apply what the passing of time changes: stale meters, expired limits and leases,
        silent chargers, new violators. Call every tick and before each allocation."""
        impact = Impact.NONE
        if self._started_at is None:
            self._started_at = now
        stale = frozenset(self.stale_groups(now))
        if stale - self._cache.stale:
            impact = Impact.URGENT
        elif stale != self._cache.stale:
            impact = Impact.CHANGED
        self._cache.stale = stale
        for lim_key, lim in list(self._limits.items()):
            if lim.until is not None and lim.until <= now:
                del self._limits[lim_key]
                impact = max(impact, Impact.CHANGED)
        previous = self._refreshed_at if self._refreshed_at is not None else self._now
        self._refreshed_at = now
        if previous is not None and previous < now:
            for key, entry in self.ledger.items():
                margin_s, tail_s = self.ledger.lapse_margin_s, self.ledger.tail_s
                change = entry.next_change(previous, margin_s, tail_s)
                if change is None or change > now:
                    continue
                # A lease lapsed, an unknown outcome expired or a car settled.
                offline = not self._chargers[key[0]].online
                failsafe = self.ledger.failsafe_a(key)
                before = entry.counted_a(failsafe, previous, offline=offline,
                                         lapse_margin_s=margin_s, tail_s=tail_s)
                after = entry.counted_a(failsafe, now, offline=offline, lapse_margin_s=margin_s,
                                        tail_s=tail_s)
                if after != before:
                    self._connectors[key].changed_at = now
                if after > before:
                    impact = Impact.URGENT
                elif after < before:
                    self._connectors[key].lowered_at = now
                    impact = max(impact, Impact.CHANGED)
            self.ledger.prune(now)
        if self._now is None or now > self._now:
            self._now = now
        limit_s = self.settings.offline_after_s
        if limit_s is not None:
            for cid, charger in self._chargers.items():
                if charger.online and charger.last_seen is not None and \
                        (now - charger.last_seen).total_seconds() > limit_s:
                    impact = max(impact, self.set_online(cid, False, now))
        current = {v.key for v in self.violators(now)}
        for key, conn in self._connectors.items():
            if key in current and not conn.flagged:
                conn.flagged = True
                impact = Impact.URGENT
            elif key not in current and conn.flagged:
                conn.flagged = False  # its reading went stale or it went offline
                impact = max(impact, Impact.CHANGED)
        for gid in self._meters:
            if gid not in stale:
                impact = max(impact, self._follow(gid, now))
        return impact

    def max_age_s(self, meter_id: str | None) -> float:
        """How long a reading of this meter counts (its ``max_age``, else the default)."""
        info = self._meter_info.get(meter_id) if meter_id is not None else None
        return info.max_age_s if info is not None else self.settings.meter_stale_after_s

    def stale_groups(self, now: datetime) -> list[str]:
        """Groups whose meter is configured or was seen, and has not reported since start-up
        or within that meter's max age."""
        out = []
        for gid, group in self.topology.groups.items():
            meter = self._meters.get(gid)
            if meter is None:
                if group.meter is not None:
                    out.append(gid)
            elif now - meter.at > timedelta(seconds=self.max_age_s(group.meter)):
                out.append(gid)
        return out

    def meter_alarms(self, now: datetime) -> dict[str, str]:
        """Meter id -> why the groups following it are at 0 A headroom, for every declared
        meter that is stale now. A meter never heard from is reported once its max age has
        passed since start-up (its groups fail closed from the start, silently)."""
        stale = set(self.stale_groups(now))
        out = {}
        for meter_id, groups in self._metered_by.items():
            hit = [g for g in groups if g in stale]
            if not hit:
                continue
            max_age = self.max_age_s(meter_id)
            info = self._meter_info.get(meter_id)
            where = f" ({info.where})" if info is not None and info.where else ""
            heard = any(g in self._meters for g in hit)
            if not heard:
                since = self._started_at or now
                if (now - since).total_seconds() < max_age:
                    continue
                what = "no reading since start-up"
            else:
                what = f"no reading for {max_age:g} s"
            names = ", ".join(hit)
            out[meter_id] = (f"meter {meter_id}: {what}{where} — "
                             f"group{'s' if len(hit) > 1 else ''} {names} at 0 A headroom")
        return out

    def violators(self, now: datetime) -> list[Violation]:
        """Connectors drawing above what we count them at, beyond tolerance and grace."""
        grace = timedelta(seconds=self.settings.verify_grace_s)
        max_age = timedelta(seconds=self.settings.reading_max_age_s)
        out = []
        for key, conn in self._connectors.items():
            if conn.over_since is None or conn.measured_at is None:
                continue
            if now - conn.measured_at > max_age or not self._chargers[key[0]].online:
                continue
            allowed = self.allowed_a(key, now)
            if conn.measured_max_a <= allowed + self.settings.verify_tolerance_a:
                continue
            since = conn.over_since
            if conn.lowered_at is not None and conn.lowered_at > since:
                since = conn.lowered_at
            if conn.flagged or now - since >= grace:
                out.append(Violation(key, allowed, conn.measured_max_a, conn.over_since))
        return out

    # --- the snapshot ---------------------------------------------------------------------

    def measured_a(self, key: ConnectorKey, now: datetime) -> PhaseCurrents | None:
        conn = self._connectors[key]
        if conn.measured_a is None or conn.measured_at is None:
            return None
        if now - conn.measured_at > timedelta(seconds=self.settings.reading_max_age_s):
            return None
        return conn.measured_a

    def metered_uncontrolled(self, group_id: str) -> PhaseCurrents:
        """The uncontrolled load we estimate for a metered group (see :meth:`_follow`)."""
        meter = self._meters[group_id]
        return meter.used_a if meter.used_a is not None else (0.0, 0.0, 0.0)

    def _counted_uncontrolled(self, group_id: str) -> PhaseCurrents:
        """What the allocation counts for it: the estimate plus the deadband. A rise
        smaller than the deadband is not acted on, so it is kept in reserve (a heat pump's
        soft start is many small rises, each below it)."""
        used = self.metered_uncontrolled(group_id)
        band = self.settings.uncontrolled_deadband_a
        return (used[0] + band, used[1] + band, used[2] + band)

    def reserved(self, now: datetime, violators: set[ConnectorKey] | None = None, *,
                 commands: bool = True) -> dict[str, PhaseCurrents]:
        """Per group, current we count outside the allocation: violators at what they
        draw and, with ``commands``, what the ledger says a connector may obey that the
        allocation cannot lower by itself — an offline charger above its failsafe, an idle
        connector (a car may arrive), a connector with an unanswered command."""
        if violators is None:
            violators = {v.key for v in self.violators(now)}
        drawn, obeyed = self._reservations(now, violators)
        return _added(drawn, obeyed) if commands else drawn

    def _reservations(self, now: datetime, violators: set[ConnectorKey],
                      ) -> tuple[dict[str, PhaseCurrents], dict[str, PhaseCurrents]]:
        """(violators at what they draw, what the ledger reserves), per group."""
        drawn: dict[str, list[float]] = {}
        obeyed: dict[str, list[float]] = {}
        ledger = self.ledger
        for key, conn in self._connectors.items():
            charger = self.topology.chargers[key[0]]
            amps: PhaseCurrents | None = None
            into = obeyed
            if not self._chargers[key[0]].online:
                # Counted at failsafe by the allocation, but a profile stays in force in
                # the charger until its validTo: reserve what it may add above failsafe.
                extra = ledger.counted_a(key, now, offline=True) - charger.failsafe_current
                if extra <= 0:
                    continue
                amps = _on_phases(charger, extra)
            elif key in violators:
                amps = self.measured_a(key, now)
                into = drawn
            elif not conn.active or ledger[key].live_unknowns(now):
                value = ledger.counted_a(key, now)
                if value <= 0:
                    continue
                amps = _on_phases(charger, value)
            if amps is None:
                continue
            for gid in self.topology.charger_groups(key[0]):
                acc = into.get(gid)
                if acc is None:
                    acc = into[gid] = [0.0, 0.0, 0.0]
                acc[0] += amps[0]
                acc[1] += amps[1]
                acc[2] += amps[2]
        return ({gid: (a[0], a[1], a[2]) for gid, a in drawn.items()},
                {gid: (a[0], a[1], a[2]) for gid, a in obeyed.items()})

    def _demand(self, key: ConnectorKey, conn: _ConnectorState, *,
                online: bool) -> ConnectorDemand:
        """The connector's demand, as the same object as last cycle when nothing in it
        changed: the allocator re-reads only connectors whose demand object is new."""
        # An operator's priority for the charger wins over a session's.
        priority = self._priorities.get(key[0], conn.priority)
        cap = self._caps.get(key)
        fields = (online, conn.active, conn.ev_max_current_a, priority, conn.arrival,
                  conn.energy_needed_kwh, conn.departure, cap)
        cached = self._demands.get(key)
        if cached is not None and cached[0] == fields:
            return cached[1]
        if online:
            most = conn.ev_max_current_a
            if cap is not None:
                # A cap below the minimum cannot be obeyed while charging: it pauses. A
                # cap converted from kW may miss the minimum by a rounding error: that
                # one is the minimum.
                low = self.topology.connector(key).min_current
                if cap < low:
                    cap = low if cap >= low - 1e-6 else 0.0
                most = cap if most is None else min(most, cap)
            demand = ConnectorDemand(
                key[0], key[1], active=True, max_current=most,
                priority=priority, arrival=conn.arrival,
                energy_needed_kwh=conn.energy_needed_kwh, departure=conn.departure)
        else:
            demand = ConnectorDemand(key[0], key[1], active=conn.active, online=False)
        self._demands[key] = (fields, demand)
        return demand

    def to_snapshot(self, now: datetime, *, commands: bool = True) -> Snapshot:
        """What the allocation decides from, as of ``now`` (does not change the state).
        ``commands=False`` leaves out what the ledger reserves: the view for checking a
        plan against every connector's worst case, which counts those itself."""
        for_allocation, for_plan = self.snapshots(now)
        return for_allocation if commands else for_plan

    def snapshots(self, now: datetime) -> tuple[Snapshot, Snapshot]:
        """Both views of :meth:`to_snapshot` at once (one pass over the connectors):
        (for the allocation, for checking a plan against the ledger's worst case)."""
        violators = {v.key for v in self.violators(now)}
        connectors: dict[ConnectorKey, ConnectorDemand] = {}
        for key, conn in self._connectors.items():
            if not self._chargers[key[0]].online:
                connectors[key] = self._demand(key, conn, online=False)
            elif conn.active and key not in violators:
                connectors[key] = self._demand(key, conn, online=True)
        drawn, obeyed = self._reservations(now, violators)
        stale = set(self.stale_groups(now))
        with_commands: dict[str, GroupConditions] = {}
        without: dict[str, GroupConditions] = {}
        for gid in self.topology.groups:
            extra = tuple(self._extra_limits(gid, now))
            unc = (0.0, 0.0, 0.0)
            if gid in self._meters and gid not in stale:
                unc = self._counted_uncontrolled(gid)
            base = _added({gid: unc}, drawn)[gid] if gid in drawn else unc
            full = _added({gid: base}, obeyed)[gid] if gid in obeyed else base
            for out, amps in ((without, base), (with_commands, full)):
                if extra or gid in stale or any(amps):
                    out[gid] = GroupConditions(uncontrolled=amps, limits=extra,
                                               meter_stale=gid in stale)
        return (Snapshot(now=now, connectors=connectors, groups=with_commands),
                Snapshot(now=now, connectors=dict(connectors), groups=without))

    # --- views for status -----------------------------------------------------------------

    def _charger_connectors(self, charger_id: str) -> Iterable[_ConnectorState]:
        for conn in self.topology.chargers[charger_id].connectors:
            yield self._connectors[conn.key]

    def online(self, charger_id: str) -> bool:
        return self._chargers[charger_id].online

    def active(self, key: ConnectorKey) -> bool:
        return self._connectors[key].active

    def status_of(self, key: ConnectorKey) -> ConnectorStatus | None:
        return self._connectors[key].status

    def transaction_of(self, key: ConnectorKey) -> str | None:
        return self._connectors[key].transaction_id

    def uncertain_a(self, key: ConnectorKey, now: datetime | None = None) -> float | None:
        """The largest value among commands with an unknown outcome, or None."""
        when = now if now is not None else self._now
        unknowns = self.ledger[key].unknown if when is None else \
            self.ledger[key].live_unknowns(when)
        return max((u.value_a for u in unknowns), default=None)

    def commands_of(self, key: ConnectorKey) -> ConnectorLedger:
        return self.ledger[key]

    def protocol(self, charger_id: str) -> str:
        return self._chargers[charger_id].protocol

    def charger_info(self, charger_id: str) -> ChargerInfo:
        c = self._chargers[charger_id]
        return ChargerInfo(c.online, c.protocol, c.vendor, c.model, c.last_seen, c.changed_at,
                           c.boots)

    def session_info(self, key: ConnectorKey) -> SessionInfo:
        conn = self._connectors[key]
        energy = None
        if conn.transaction_id is not None and conn.energy_wh is not None and \
                conn.meter_start_wh is not None:
            energy = max(0.0, conn.energy_wh - conn.meter_start_wh)
        open_ = conn.transaction_id is not None
        return SessionInfo(conn.transaction_id, conn.session_started if open_ else None,
                           conn.arrival, energy, conn.power_w if conn.active else None,
                           conn.soc_percent if conn.active else None, conn.energy_needed_kwh,
                           conn.departure, conn.v2x_offer)

    def live_reading(self, key: ConnectorKey) -> tuple[float | None, float | None]:
        """(power W, SoC %) of the car on ``key`` from its last meter value, None each when
        unknown or no car: :meth:`session_info`'s ``power_w`` and ``soc_percent`` without
        building it (the frequency service reads them for every unit at every sample)."""
        conn = self._connectors[key]
        if not conn.active:
            return None, None
        return conn.power_w, conn.soc_percent

    def v2x_offer(self, key: ConnectorKey) -> V2xOffer | None:
        """What the car on ``key`` offers for V2X (2.1 charging needs), None when it said
        nothing: :meth:`session_info`'s ``v2x_offer`` without building it."""
        return self._connectors[key].v2x_offer

    def group_meter(self, group_id: str) -> tuple[PhaseCurrents, datetime] | None:
        meter = self._meters.get(group_id)
        return None if meter is None else (meter.current_a, meter.at)

    def meter_sample(self, meter_id: str) -> tuple[PhaseCurrents, datetime] | None:
        """The last sample of a declared meter, or None."""
        return self._samples.get(meter_id)

    def meter_groups(self, meter_id: str) -> tuple[str, ...]:
        """The groups that follow a meter."""
        return self._metered_by.get(meter_id, ())

    def meter_ids(self) -> list[str]:
        """Declared meters, then any other a group names."""
        ids = [m.id for m in self.settings.meters]
        return ids + [m for m in self._metered_by if m not in ids]

    def meter_info(self, meter_id: str) -> MeterInfo | None:
        return self._meter_info.get(meter_id)

    def online_count(self) -> int:
        return sum(1 for c in self._chargers.values() if c.online)


def estimate_uncontrolled(meter_a: PhaseCurrents, ours_a: PhaseCurrents,
                          floor_a: PhaseCurrents, *, quiet: bool,
                          held_a: PhaseCurrents | None,
                          ) -> tuple[PhaseCurrents, PhaseCurrents]:
    """A group's uncontrolled load from its meter: (estimate, the value to hold).

    Quiet (every change below the group settled and read back): the meter minus what our
    connectors draw, and that is held. In a transition our readings lag what the cars
    really draw (a car that slowed down still reads high, which would lower the estimate
    below the truth and hand out current that is not there, then take it back: an
    oscillation), so the held value stays; ``floor_a`` (the meter minus every connector's
    worst case, never above the truth) lifts it when the other loads rose meanwhile, and
    what it lifted stays lifted until the next quiet moment: right after a decrease the
    worst case still counts the old value, the floor dips, and an estimate that followed
    the dip would raise the cars again at once — a sawtooth of decreases and increases
    every cycle that never lets the group settle (seen with a heat pump's soft start). The
    meter itself is never below the truth (it counts everything), so the held value drops
    to it when it reads less; with nothing held yet, it starts there."""
    if quiet:
        measured = _minus(meter_a, ours_a)
        return measured, measured
    held = meter_a if held_a is None else (
        min(held_a[0], meter_a[0]), min(held_a[1], meter_a[1]), min(held_a[2], meter_a[2]))
    held = (max(held[0], floor_a[0]), max(held[1], floor_a[1]), max(held[2], floor_a[2]))
    return held, held


def _in_force_value(entry: ConnectorLedger, now: datetime) -> float | None:
    """The accepted setpoint still inside its lease, or None (:meth:`SiteState.in_force_a`
    of one entry)."""
    in_force = entry.in_force
    if in_force is None or not in_force.valid(now):
        return None
    return in_force.value_a


def _minus(a: PhaseCurrents, b: PhaseCurrents) -> PhaseCurrents:
    return (max(0.0, a[0] - b[0]), max(0.0, a[1] - b[1]), max(0.0, a[2] - b[2]))


def _added(a: dict[str, PhaseCurrents], b: dict[str, PhaseCurrents]) -> dict[str, PhaseCurrents]:
    """Per-group sums of two reservations."""
    out = dict(a)
    for gid, amps in b.items():
        if gid in out:
            x = out[gid]
            out[gid] = (x[0] + amps[0], x[1] + amps[1], x[2] + amps[2])
        else:
            out[gid] = amps
    return out


def _on_phases(charger: Charger, amps: float) -> PhaseCurrents:
    vec = charger.phase_vector
    return (vec[0] * amps, vec[1] * amps, vec[2] * amps)


def _site_phase_currents(charger: Charger, event: MeterReading,
                         voltage: float) -> PhaseCurrents | None:
    """A reading's per-phase currents on the site's phases. A 1-phase charger reports its
    current on its own L1 whatever line it is wired to, so its largest value goes on the
    line the topology says; a missing phase of a 3-phase charger counts as the largest."""
    values = [v for v in event.current_a if v is not None and math.isfinite(v)]
    if values:
        if charger.phases == 1:
            amps = max(0.0, *values)
            vec = charger.phase_vector
            return (vec[0] * amps, vec[1] * amps, vec[2] * amps)
        top = max(0.0, *values)
        got = [top if v is None or not math.isfinite(v) else max(0.0, v)
               for v in event.current_a]
        return (got[0], got[1], got[2])
    if event.power_w is not None and math.isfinite(event.power_w):
        amps = max(0.0, event.power_w) / (voltage * charger.phases)
        vec = charger.phase_vector
        return (vec[0] * amps, vec[1] * amps, vec[2] * amps)
    return None
