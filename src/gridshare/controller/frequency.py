"""The frequency response service: grid-frequency samples in, unit setpoints out, live.

Each sample (from :mod:`gridshare.adapters.frequency.mqtt`, or a simulator) goes to the
pure core's :class:`~gridshare.core.frequency.FrequencyResponder` with every unit's state
read now; its per-unit setpoints (the allocation's value plus the droop's delta) are handed
out at once, without one unit waiting on another:

- **batteries**: a setpoint message on the unit's ``setpoint_topic`` (kW and W, + =
  charging, with ``valid_until``; :func:`gridshare.adapters.frequency.setpoint_payload`);
  their SoC comes from ``soc_topic``;
- **V2X chargers** (OCPP 2.1, through :class:`V2xDriver`): in ``central`` mode a setpoint
  per charger, coalesced (sent only when it moved by more than ``step_kw``, when it starts
  or stops a discharge, or to renew it before ``setpoint_valid_s`` ends) with at most one
  in flight per charger — a newer one waits and the newest wins; in ``local`` mode the
  droop curve once per charger (and again after a reconnection or a safe state), then only
  supervision: an alarm when the measured power departs from the curve;
- **chargers without V2X**: only curtailed (charge less, never discharge) through a
  per-connector cap, one ``ConnectorCapsChanged(source="frequency")`` on the bus, which the
  controller folds as one more limit (the tightest wins).

Guards sit between the core and the wire, all about the circuits (the core knows only
units): a charger is never asked to charge above the allocation's value (charging more
could overload its circuit; batteries, outside the charger tree, do); the discharge of the
V2X chargers under one group is scaled to what that group carries (a discharging car frees
capacity on its circuit, never more than the circuit carries the other way); and then
every V2X setpoint or curve takes **the one safe path** the discharge test takes too:
checked by :func:`gridshare.core.guard.check_v2x` through the app's shared
:class:`~gridshare.core.v2x_book.V2xBook` (counting every value that may still be in force,
whoever sent it), clipped to what passes (with an alarm), and booked before it leaves.

Outside the safety window, or with a stale source, every unit goes to its safe state (no
discharge, charging at the allocation's value or less) and an alarm says why (once per
condition, cleared on recovery; to the store's alarm records and :meth:`alarms`).
Nothing here reads the system clock: times come from the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from gridshare.adapters.ocpp.v2x import Curve, V2xRefused, curve_power_w, freq_watt_curve
from gridshare.bus import Bus
from gridshare.clock import Clock
from gridshare.controller.audit import AlarmRecord
from gridshare.controller.caps import CapPublisher
from gridshare.core.frequency import (
    EPS,
    FrequencyDecision,
    FrequencyResponder,
    Mode,
    UnitKind,
    UnitState,
)
from gridshare.core.snapshot import PhaseCurrents, Snapshot
from gridshare.core.topology import Charger, ConnectorKey, Topology, amps_to_kw
from gridshare.core.v2x_book import V2xBook
from gridshare.core.v2x_offer import V2xOffer, discharge_cap_w, offer_refusal
from gridshare.drivers import CommandOutcome, CommandResult
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    from gridshare.adapters.frequency import SocReading
    from gridshare.config import FrequencyResponseSpec, FrequencyUnitSpec
    from gridshare.controller.state import SessionInfo

log = logging.getLogger("gridshare.frequency")

SOURCE = "frequency"
"""The limit source of the non-V2X chargers' caps (the controller folds every source's)."""
FUTURE_S = 1.0
"""A sample stamped further ahead of our clock than this is refused (a skewed sender would
otherwise keep a dead source looking fresh)."""
MAX_ALARMS = 200
COMPUTE_WINDOW = 2000
"""Samples whose handling time the status keeps (for p50/p99)."""


class V2xDriver(Protocol):
    """What the service needs of the CSMS for V2X chargers (OCPP 2.1; ``CentralSystem``)."""

    def v2x_capable(self, charger: str) -> bool: ...

    async def send_v2x_setpoint(self, charger: str, connector: int, setpoint_w: float,
                                *, valid_s: float) -> CommandOutcome: ...

    async def send_v2x_local_frequency(self, charger: str, connector: int,
                                       curve: Sequence[tuple[float, float]],
                                       *, valid_s: float) -> CommandOutcome: ...


class BatteryLink(Protocol):
    """Where battery setpoints go (``FrequencyMqtt``): queued, never awaited."""

    connected: bool

    def send_setpoint(self, topic: str, kw: float, at: float, valid_s: float,
                      mode: str) -> None:
        """Queue ``kw`` (+ = charging) for the battery on ``topic``, stamped ``at`` (epoch
        seconds), valid ``valid_s``; a newer one replaces it if not sent yet."""


class StateView(Protocol):
    """What the service reads of the controller's live state (``SiteState``)."""

    def online(self, charger_id: str) -> bool: ...

    def active(self, key: ConnectorKey) -> bool: ...

    def in_force_a(self, key: ConnectorKey, now: datetime) -> float | None: ...

    def believed_a(self, key: ConnectorKey, now: datetime | None = None) -> float: ...

    def session_info(self, key: ConnectorKey) -> SessionInfo: ...

    def live_reading(self, key: ConnectorKey) -> tuple[float | None, float | None]:
        """(power W, SoC %) of the car on ``key``: ``session_info``'s ``power_w`` and
        ``soc_percent``, read at every sample without building the whole record."""

    def v2x_offer(self, key: ConnectorKey) -> V2xOffer | None:
        """``session_info``'s ``v2x_offer``, read at every sample the same way."""

    def measured_a(self, key: ConnectorKey, now: datetime) -> PhaseCurrents | None: ...


class AlarmSink(Protocol):
    def record_alarm(self, record: AlarmRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class FrequencyOptions:
    """The service's tunables (not in the site file; docs/frequency.md states them)."""

    setpoint_valid_s: float = 10.0
    """Validity of a V2X or battery setpoint: a unit that hears nothing newer falls back."""
    renew_after_s: float = 5.0
    """An unchanged setpoint is sent again this long after the last one."""
    retry_after_s: float = 1.0
    """A setpoint or curve the charger refused or did not answer is tried again after
    this (not at the sample rate)."""
    step_kw: float = 0.2
    """A setpoint is sent when it moved by more than this (or starts/stops a discharge)."""
    cap_step_a: float = 0.5
    """Non-V2X caps are published again when one moved by more than this (A per phase)."""
    tick_s: float | None = 0.1
    """Stale-source check, renewals and supervision period (None: tests call
    :meth:`FrequencyService.tick`)."""
    soc_max_age_s: float = 60.0
    """A battery's SoC older than this is unknown (it is then not discharged)."""
    curve_valid_s: float = 86_400.0
    """Local mode: validity of the curve (sent again at half of it, and after a
    reconnection or a safe state)."""
    supervise_tolerance_kw: float = 1.0
    """Local mode: measured power this far from the curve's counts as a departure..."""
    supervise_after_s: float = 5.0
    """... and raises an alarm once it has lasted this long."""


def _iso(at: float) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=at)).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class _Unit:
    """One unit's configuration and what the service knows and sent of it."""

    spec: FrequencyUnitSpec
    kind: UnitKind
    charger: Charger | None = None
    connector: int = 1
    id: str = field(init=False)
    """``spec.id``, kept plain: it is read for every unit at every sample."""
    keys: tuple[ConnectorKey, ...] = ()
    """The charger's connector keys, in order (precomputed: read at every sample)."""
    declared_v2x: bool = False
    """The site file declares the charger ``v2x: true`` (static)."""
    key: ConnectorKey = ("", 0)
    """``(charger id, connector)``: the connector it takes part on (kept with
    ``connector``, so no key is built per sample)."""
    present: bool = False
    v2x: bool = False
    offer: V2xOffer | None = None
    """What the car plugged in offered for V2X (OCPP 2.1), as last read; None: nothing."""
    not_v2x: str | None = None
    """Why a declared V2X charger takes part as a plain one now (its car's offer)."""
    base_kw: float = 0.0
    """The allocation's value as last read."""
    decided_base_kw: float = 0.0
    """The base the last decision was made from (the status shows it with its setpoint)."""
    setpoint_kw: float | None = None
    """The final setpoint of the last decision (after the circuit guards)."""
    delta_kw: float = 0.0
    held: str | None = None
    measured_kw: float | None = None
    soc_pct: float | None = None
    soc_at: float | None = None
    # sending
    target_kw: float | None = None
    sent_kw: float | None = None
    sent_at: float = -math.inf
    in_flight: bool = False
    sends: int = 0
    last_result: str | None = None
    failed_at: float | None = None
    """When the last command to it was not accepted (retried after ``retry_after_s``)."""
    failures: int = 0
    curve_sent: bool = False
    curve_at: float = -math.inf
    curve_base_kw: float = 0.0
    """The allocation's value the curve in force was built around."""
    curve_in_force: Curve | None = None
    curve_share: float = 1.0
    """The share of its discharge end the guard passed (below 1: tried again later)."""
    """The curve last accepted (what supervision compares the meter with)."""
    curve_task: bool = False
    safe_override: bool = False
    """Local mode: a safe-state setpoint overrides the curve (sent again after)."""
    was_online: bool = False
    departing_since: float | None = None

    def __post_init__(self) -> None:
        self.id = self.spec.id


@dataclass(slots=True)
class _GroupGuard:
    """A group with a limit and the V2X units under it: their discharge stays within it,
    on each phase (A) and in kW."""

    group: str
    max_current: float
    """A per phase (inf: none)."""
    max_kw: float
    """kW (inf: none)."""
    units: list[tuple[str, tuple[float, float, float]]] = field(default_factory=list)
    """(unit id, A per phase per kW of its discharge)."""


def _send_task(kind: str, unit_id: str) -> str:
    """The name of the task sending a unit its setpoint (``v2x``) or curve (``curve``):
    how :meth:`FrequencyService.stand_aside` finds one in flight."""
    return f"frequency-{kind}-{unit_id}"


class FrequencyService:
    """Frequency response for one site (built by the app when the site file has the block)."""

    def __init__(self, spec: FrequencyResponseSpec, topology: Topology, clock: Clock, *,
                 bus: Bus | None, state_view: StateView, v2x: V2xDriver | None = None,
                 batteries: BatteryLink | None = None, store: AlarmSink | None = None,
                 options: FrequencyOptions | None = None, book: V2xBook | None = None,
                 counted: Callable[[], Mapping[ConnectorKey, float]] | None = None
                 ) -> None:
        """``book``: the app's shared :class:`V2xBook` (the discharge test books in it
        too, so the two never double-count; a private one when None). ``counted``: the
        controller's counted current per connector (A), for the guard's forward check."""
        self.spec = spec
        self.mode = spec.mode
        self.settings = spec.settings()
        self.topology = topology
        self.clock = clock
        self.options = options or FrequencyOptions()
        self._bus = bus
        self._state = state_view
        self._v2x = v2x
        self._batteries = batteries
        self._store = store
        self.book = book if book is not None else V2xBook()
        self._counted = counted
        self._voltage = topology.voltage
        self.testing: set[ConnectorKey] = set()
        """Connectors a discharge test (``gridshare v2g test``, api/v2g.py) runs on: the
        test owns their V2X profile (the same profile id), so a unit there takes no part
        (absent) until the test has restored it; then it gets its setpoint or curve
        again (the test's clear removed ours)."""
        self.units: dict[str, _Unit] = {}
        for u in spec.units:
            unit = _Unit(u, UnitKind.CHARGER if u.charger is not None else UnitKind.BATTERY)
            if u.charger is not None:
                unit.charger = topology.chargers.get(u.charger)
                if unit.charger is None:
                    raise ValueError(f"frequency unit {u.charger!r}: no such charger")
                unit.connector = unit.charger.connectors[0].number
                unit.keys = tuple(c.key for c in unit.charger.connectors)
                unit.key = unit.keys[0]
                unit.declared_v2x = unit.charger.v2x
            self.units[u.id] = unit
        self._guards = self._group_guards()
        self._guard_last: tuple[dict[ConnectorKey, float], float, float, str | None] | \
            None = None
        """(setpoints W checked, when, share passed, why clipped) of the last guard run."""
        at = self._now_s()
        self.responder = FrequencyResponder(self.settings, [u.unit() for u in spec.units],
                                            at)
        self.decision: FrequencyDecision | None = None
        self.last_sample: tuple[float, float, float | None] | None = None
        """(at, hz, ts as sent) of the last sample acted on."""
        self.rejected: Counter[str] = Counter()
        """Samples refused before the core (``payload``, ``future``, ``late``, ``time``)."""
        self.last_rejected: str | None = None
        self.soc_rejected: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._last_at = at
        self._last_ts: float | None = None
        self._publisher = CapPublisher(SOURCE, bus, self.counters,
                                       same=self._caps_within_step)
        self._held_base: dict[ConnectorKey, float] = {}
        self._alarm_keys: dict[str, AlarmRecord] = {}
        self._alarms: deque[AlarmRecord] = deque(maxlen=MAX_ALARMS)
        self._compute_ms: deque[float] = deque(maxlen=COMPUTE_WINDOW)
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the stale-source timer; units begin in their safe state (no sample yet)."""
        if self._ticker is None and self.options.tick_s is not None:
            self._ticker = asyncio.create_task(self._tick_loop(), name="gridshare-frequency")

    async def stop(self) -> None:
        """Stop sending; lift the non-V2X caps (setpoints lapse by their validity)."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            await cancel_and_wait([ticker])
        await cancel_and_wait(list(self._tasks), swallow_errors=True)
        self._publisher.lift(self.clock.now())

    async def _tick_loop(self) -> None:
        assert self.options.tick_s is not None
        while True:
            await asyncio.sleep(self.options.tick_s)
            try:
                self.tick()
            except Exception:  # a bug must not end the stale check: count, log rarely
                self.counters["tick_errors"] += 1
                if self.counters["tick_errors"] % 1000 == 1:
                    log.exception("frequency tick failed (%d so far)",
                                  self.counters["tick_errors"])

    # --- the sink of the source (FrequencyMqtt) ------------------------------------------

    def on_sample(self, ts: float | None, hz: float) -> FrequencyDecision | None:
        """One sample (``ts``: epoch seconds as the sender stamped it, None: now). Returns
        the decision acted on, or None when the sample was refused."""
        t0 = time.perf_counter()
        now = self._now_s()
        if ts is not None:
            why = None
            if ts > now + FUTURE_S:
                why = ("future", f"sample time {_iso(ts)} is {ts - now:.1f} s ahead of "
                                 f"our clock")
            elif ts < now - self.settings.stale_after_s:
                why = ("late", f"sample time {_iso(ts)} is {now - ts:.1f} s old (more "
                               f"than stale_after_s {self.settings.stale_after_s:g} s)")
            elif self._last_ts is not None and ts <= self._last_ts:
                why = ("time", f"sample time {_iso(ts)} is not after the previous one")
            if why is not None:
                self._reject(*why)
                return None
            self._last_ts = ts
        at = max(now, self._last_at + 1e-6)
        states = self._states(at)
        decision = self.responder.sample(at, hz, states)
        if decision.rejected is not None:
            self._reject(None, decision.rejected)
            return None
        self._last_at = at
        self.counters["samples"] += 1
        self.last_sample = (at, hz, ts)
        self._apply(decision, at)
        self._compute_ms.append((time.perf_counter() - t0) * 1000.0)
        return decision

    def on_sample_rejected(self, why: str) -> None:
        self._reject("payload", why)

    def on_soc(self, battery: str, reading: SocReading) -> None:
        unit = self.units.get(battery)
        if unit is None:
            return
        unit.soc_pct = reading.soc_pct
        unit.soc_at = self._now_s()
        if reading.power_kw is not None:
            unit.measured_kw = reading.power_kw

    def on_soc_rejected(self, battery: str, why: str) -> None:
        self.soc_rejected[battery] += 1
        if self.soc_rejected[battery] == 1 or self.soc_rejected[battery] % 1000 == 0:
            log.warning("frequency: battery %s: SoC payload refused (%d so far): %s",
                        battery, self.soc_rejected[battery], why)

    def _reject(self, reason: str | None, why: str) -> None:
        """Count a refused sample (``reason`` None: the core counted it already)."""
        if reason is not None:
            self.rejected[reason] += 1
        self.last_rejected = why
        total = sum(self.rejected.values()) + sum(self.responder.rejected.values())
        if total == 1 or total % 1000 == 0:
            log.warning("frequency: sample refused (%d so far): %s", total, why)

    def rejected_counts(self) -> dict[str, int]:
        """Refused samples by reason: the service's and the core's (``nan``, ``range``)."""
        out = Counter(self.rejected)
        out.update(self.responder.rejected)
        return dict(out)

    # --- time ----------------------------------------------------------------------------

    def tick(self) -> None:
        """The stale-source check, renewals, local-mode curves and supervision."""
        now = self._now_s()
        at = max(now, self._last_at)
        states = self._states(at)
        decision = self.responder.check(at, states)
        if decision is not None:
            self._last_at = at
            self._apply(decision, at)
        for unit in self.units.values():
            if unit.present and unit.target_kw is not None and \
                    at - unit.sent_at >= self.options.renew_after_s:
                self._offer(unit, unit.target_kw, at)
        if self.mode == "local":
            self._local(at)

    def _now_s(self) -> float:
        return self.clock.now().timestamp()

    # --- unit states ---------------------------------------------------------------------

    def _states(self, at: float) -> dict[str, UnitState]:
        now = datetime.fromtimestamp(at, UTC)
        out: dict[str, UnitState] = {}
        charger_state, battery_state = self._charger_state, self._battery_state
        for uid, unit in self.units.items():
            if unit.charger is None:
                out[uid] = battery_state(unit, at)
            else:
                out[uid] = charger_state(unit, unit.charger, now)
        return out

    def _v2x_capable(self, unit: _Unit, charger: Charger) -> bool:
        """Whether the CSMS can send this charger V2X commands now (a driver that fails
        to say counts as no: the charger is then only curtailed)."""
        if self._v2x is None or not unit.declared_v2x:
            return False  # the guard refuses a discharge to it: only curtailed
        try:
            return bool(self._v2x.v2x_capable(charger.id))
        except Exception:
            self.counters["v2x_capable_errors"] += 1
            return False

    def _battery_state(self, unit: _Unit, at: float) -> UnitState:
        link = self._batteries
        unit.present = link is not None and link.connected
        soc = unit.soc_pct
        if unit.soc_at is None or at - unit.soc_at > self.options.soc_max_age_s:
            soc = None
        unit.base_kw = 0.0
        return UnitState(unit.id, 0.0, soc, unit.present, True)

    def _charger_state(self, unit: _Unit, charger: Charger, now: datetime) -> UnitState:
        state = self._state
        online = state.online(charger.id)
        if not online:
            unit.curve_sent = False  # a reconnection gets the curve again
        unit.was_online = online
        key: ConnectorKey | None = None
        if online:
            for k in unit.keys:
                if state.active(k):
                    key = k
                    break
        if key is None:
            unit.present = False
            unit.offer, unit.not_v2x = None, None
            if unit.sent_kw is not None:
                unit.sent_kw, unit.target_kw = None, None
            return UnitState(unit.id, present=False)
        if self.testing and key in self.testing:
            # A discharge test owns the V2X profile: neither override it (central) nor
            # believe our curve survives its clear (local); send again after it.
            unit.present = False
            unit.curve_sent, unit.curve_in_force = False, None
            unit.sent_kw, unit.target_kw = None, None
            return UnitState(unit.id, present=False)
        unit.key, unit.connector = key, key[1]
        unit.present = True
        unit.offer = state.v2x_offer(key)
        unit.not_v2x = offer_refusal(charger.id, key[1], unit.offer)
        # a car that offers no BPT mode: a plain charger (cap only, never a discharge)
        unit.v2x = unit.not_v2x is None and self._v2x_capable(unit, charger)
        if not unit.v2x and unit.sent_kw is not None:
            unit.sent_kw, unit.target_kw = None, None  # no V2X renewals to it
        power_w, soc = state.live_reading(key)
        alloc_a = state.in_force_a(key, now)
        if alloc_a is None:
            # No accepted setpoint in its lease (one in flight, a lapse): what every limit
            # counts the connector at (never 0: that would read as 'allocated nothing' and
            # curtail the car to a standstill).
            alloc_a = state.believed_a(key, now)
        base = amps_to_kw(charger, alloc_a, self._voltage)
        if key in self._publisher.caps:
            # While our own cap is in force the allocation's value cannot be seen (it is
            # the cap, or 0 when the cap is below the connector's minimum and pauses the
            # car): the value from before the cap holds until the cap is lifted (reading
            # the capped value as the base would curtail again and again, or flap).
            base = self._held_base.get(key, base)
        else:
            self._held_base[key] = base
        unit.base_kw = base
        if power_w is not None and math.isfinite(power_w):
            unit.measured_kw = power_w / 1000.0
        else:
            amps = state.measured_a(key, now)
            unit.measured_kw = None if amps is None else \
                sum(amps) * self._voltage / 1000.0
        unit.soc_pct = soc
        cap = self.discharge_cap_kw(unit)
        own: tuple[tuple[float, float], ...] | None = None
        if self.mode == "local" and unit.v2x and unit.curve_sent and \
                unit.curve_in_force is not None and not unit.safe_override:
            # it answers the frequency itself: the core counts what its curve does
            own = tuple((hz, w / 1000.0) for hz, w in unit.curve_in_force)
        # never charged above the allocation's value (its circuit): the batteries take
        # what it cannot above nominal
        return UnitState(unit.id, base, soc, True, unit.v2x,
                         max_discharge_kw=cap if cap < unit.spec.max_discharge_kw else None,
                         max_charge_kw=max(base, 0.0), curve_kw=own)

    def discharge_cap_kw(self, unit: _Unit) -> float:
        """The most ``unit`` may discharge (kW): its ``max_discharge_kw`` clipped by the
        car's offer (:func:`gridshare.core.v2x_offer.discharge_cap_w`, the one rule). The
        core gets it with the unit's state (central setpoints), and the local curve's
        discharge end is held to it; the guard checks what comes out either way."""
        return discharge_cap_w(unit.spec.max_discharge_kw * 1000.0, unit.offer) / 1000.0

    # --- decisions to the wire -----------------------------------------------------------

    def _apply(self, decision: FrequencyDecision, at: float) -> None:
        # A change of state (the response starts or ends, the safe state) is sent at once
        # whatever the step: the first sample past the dead band reaches every unit.
        force = self.decision is None or self.decision.mode is not decision.mode
        self.decision = decision
        self._alarms_of(decision, at)
        setpoints = self._circuit_guards(decision)
        if self.mode == "central" or decision.mode is Mode.SAFE:
            self._v2x_guard(setpoints, at)
        caps: dict[ConnectorKey, float] = {}
        for d in decision.units:
            unit = self.units[d.id]
            kw, held = setpoints[d.id]
            base = d.setpoint_kw - d.delta_kw  # the base this decision was made from
            unit.decided_base_kw = base
            unit.setpoint_kw, unit.delta_kw, unit.held = kw, kw - base, held
            if unit.charger is None:
                self._offer(unit, kw, at, force=force)
            elif unit.v2x:
                if self.mode == "central" or decision.mode is Mode.SAFE:
                    if self.mode == "local":
                        unit.safe_override = True
                    self._offer(unit, kw, at, force=force)
            elif unit.delta_kw < -EPS:
                key = (unit.charger.id, unit.connector)
                caps[key] = math.floor(max(kw, 0.0) * 1000.0 / (
                    self._voltage * unit.charger.phases) * 100 + 1e-6) / 100
        self._publisher.publish(caps, datetime.fromtimestamp(at, UTC))
        if self.mode == "local" and decision.mode is not Mode.SAFE:
            self._local(at)

    def _circuit_guards(self, decision: FrequencyDecision
                        ) -> dict[str, tuple[float, str | None]]:
        """Per unit (setpoint kW, why held): chargers never above the allocation's value;
        V2X discharge under a group within what the group carries."""
        out: dict[str, tuple[float, str | None]] = {}
        units = self.units
        discharging = False
        for d in decision.units:
            kw, held = d.setpoint_kw, d.held
            if units[d.id].charger is not None:
                base = d.setpoint_kw - d.delta_kw
                if kw > max(base, 0.0) + EPS:
                    kw = max(base, 0.0)
                    held = "charging above the allocation is not sent (its circuit's limit)"
            if kw < 0:
                discharging = True
            out[d.id] = (kw, held)
        if discharging:  # without a discharge no group's reverse flow is scaled
            self._group_scale(out)
        return out

    def _group_scale(self, out: dict[str, tuple[float, str | None]]) -> None:
        """Scale the discharges (negative kW) in ``out`` under each group with a limit
        together, so they stay within what the group carries (in place)."""
        for guard in self._guards:
            kw = 0.0
            amps = [0.0, 0.0, 0.0]
            for uid, per_kw in guard.units:
                if uid in out and out[uid][0] < 0:
                    export = -out[uid][0]
                    kw += export
                    for p in range(3):
                        amps[p] += export * per_kw[p]
            scale = 1.0
            if kw > guard.max_kw + EPS:
                scale = guard.max_kw / kw
            for p in range(3):
                if amps[p] > guard.max_current + EPS:
                    scale = min(scale, guard.max_current / amps[p])
            if scale < 1.0:
                for uid, _ in guard.units:
                    if uid in out and out[uid][0] < 0:
                        out[uid] = (out[uid][0] * scale,
                                    f"group {guard.group}: the discharges under it limited "
                                    f"to what it carries ({guard.max_current:g} A per phase"
                                    f", {guard.max_kw:g} kW)")

    # --- the discharge guard (core.guard.check_v2x through the shared V2xBook) ---------

    def _guard_check(self, new_w: Mapping[ConnectorKey, float], at: float) -> list[str]:
        """:meth:`V2xBook.check` of ``new_w`` (W per connector) against the conductors'
        static ratings, with the controller's counted currents and every V2X value that
        may still be in force (ours and the discharge test's): the alarms' messages."""
        snapshot = Snapshot(now=datetime.fromtimestamp(at, UTC))
        counted = self._counted() if self._counted is not None else {}
        return [a.message for a in self.book.check(self.topology, snapshot, counted, new_w)]

    def _guard_passes(self, new_w: Mapping[ConnectorKey, float], at: float) -> bool:
        """Whether :meth:`_guard_check` would find nothing (:meth:`V2xBook.passes`: the
        same verdict, a quarter of the work; the messages are only read on a refusal)."""
        snapshot = Snapshot(now=datetime.fromtimestamp(at, UTC))
        self.counters["v2x_guard_checks"] += 1
        return self.book.passes(self.topology, snapshot, self._counted or dict, new_w)

    def _guard_scale(self, new_w: Mapping[ConnectorKey, float], at: float
                     ) -> tuple[float, list[str]]:
        """The largest share (0–1, to 1/1024) of every discharge in ``new_w`` that the
        guard passes, and the alarms at full share. 0 also when even no discharge passes:
        what may still be in force already exceeds a limit (it counts until the new value
        is accepted), and sending no discharge can only lower the reverse flow."""
        if self._guard_passes(new_w, at):
            return 1.0, []
        found = self._guard_check(new_w, at)

        def scaled(share: float) -> dict[ConnectorKey, float]:
            return {k: w * share if w < 0 else w for k, w in new_w.items()}

        if not self._guard_passes(scaled(0.0), at):
            return 0.0, found
        lo, hi = 0.0, 1.0
        for _ in range(10):
            mid = (lo + hi) / 2
            if self._guard_passes(scaled(mid), at):
                lo = mid
            else:
                hi = mid
        return lo, found

    def _v2x_guard(self, setpoints: dict[str, tuple[float, str | None]], at: float
                   ) -> None:
        """Pass the V2X setpoints about to be offered through ``check_v2x`` (in place:
        discharges the guard refuses are clipped, together, to the share it passes).
        Checked again only when a setpoint moved or a second passed (the book's values
        in force only ever shrink in between, or are booked by someone who checked
        against ours)."""
        new_w: dict[ConnectorKey, float] = {}
        ids: list[str] = []
        units = self.units
        for uid, (kw, _) in setpoints.items():
            unit = units[uid]
            if unit.charger is None or not unit.v2x or not unit.present:
                continue
            # _guarded_w of a charge (or 0) is 0.0: not rounded for nothing at each sample
            new_w[unit.key] = 0.0 if kw >= 0.0 else _guarded_w(kw * 1000.0)
            ids.append(uid)
        if not new_w:
            return
        last = self._guard_last
        if last is not None and last[0] == new_w and at - last[1] < 1.0:
            share, why = last[2], last[3]
        else:
            share, alarms = self._guard_scale(new_w, at)
            why = alarms[0] if alarms else None
            self._guard_last = (new_w, at, share, why)
            if why is None:
                self._clear("v2x_guard", at)
            else:
                self.counters["v2x_guard_clipped"] += 1
                self._raise("v2x_guard", "frequency_guard",
                            f"frequency: V2X setpoints refused by the discharge guard ({why})"
                            f": discharges clipped to {share * 100:.1f} %", at, share, 1.0)
        if share >= 1.0:
            return
        for uid in ids:
            kw, _ = setpoints[uid]
            if kw < 0:
                setpoints[uid] = (kw * share, f"discharge guard: {why}")

    def _group_guards(self) -> list[_GroupGuard]:
        topo = self.topology
        guards: dict[str, _GroupGuard] = {}
        for unit in self.units.values():
            if unit.charger is None:
                continue
            charger = unit.charger
            a_per_kw = 1000.0 / (self._voltage * charger.phases)
            if charger.phases == 3 or charger.phase is None:
                per_kw = (a_per_kw, a_per_kw, a_per_kw)  # no line known: every one
            else:
                vec = charger.phase_vector
                per_kw = (a_per_kw * vec[0], a_per_kw * vec[1], a_per_kw * vec[2])
            for gid in topo.charger_groups(charger.id):
                group = topo.groups[gid]
                amps = group.max_current if group.max_current is not None else math.inf
                kw = group.max_power_kw if group.max_power_kw is not None else math.inf
                if math.isfinite(amps) or math.isfinite(kw):
                    guards.setdefault(gid, _GroupGuard(gid, amps, kw)).units.append(
                        (unit.id, per_kw))
        return list(guards.values())

    def _due(self, unit: _Unit, kw: float, at: float, *, force: bool = False) -> bool:
        if unit.failed_at is not None and at - unit.failed_at < self.options.retry_after_s:
            return False  # refused or unanswered just now: not again at the sample rate
        sent = unit.sent_kw
        if sent is None or (force and kw != sent):
            return True
        if (kw < -EPS) != (sent < -EPS):
            return True  # a discharge starts or stops: exactly, whatever the step
        if abs(kw - sent) > self.options.step_kw:
            return True
        return at - unit.sent_at >= self.options.renew_after_s

    def _offer(self, unit: _Unit, kw: float, at: float, *, force: bool = False) -> None:
        """Hand a setpoint to the unit's driver if due (``force``: whatever the step);
        never two in flight per unit."""
        unit.target_kw = kw
        if unit.charger is None:
            if self._batteries is None or not self._batteries.connected or \
                    not self._due(unit, kw, at, force=force):
                return
            topic = unit.spec.setpoint_topic
            assert topic is not None
            self._batteries.send_setpoint(topic, kw, at, self.options.setpoint_valid_s,
                                          self.mode)
            unit.sent_kw, unit.sent_at = kw, at
            unit.sends += 1
            self.counters["battery_setpoints"] += 1
            return
        if unit.in_flight or self._v2x is None or not self._due(unit, kw, at, force=force):
            return
        unit.in_flight = True  # before the task runs: a second offer must not spawn one
        self._spawn(self._send_v2x(unit), _send_task("v2x", unit.id))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_v2x(self, unit: _Unit) -> None:
        """Send the unit's newest target until what was sent is the newest (coalesced)."""
        driver = self._v2x
        assert driver is not None and unit.charger is not None
        try:
            while unit.target_kw is not None and unit.present and \
                    unit.key not in self.testing:
                kw, at = unit.target_kw, self._now_s()
                unit.sent_kw, unit.sent_at = kw, at
                unit.sends += 1
                self.counters["v2x_setpoints"] += 1
                outcome = await self._booked(
                    unit, kw * 1000.0, self.options.setpoint_valid_s,
                    driver.send_v2x_setpoint(unit.charger.id, unit.connector, kw * 1000.0,
                                             valid_s=self.options.setpoint_valid_s))
                if not self._sent(unit, outcome, "setpoint"):
                    unit.sent_kw = None  # not in force: the next offer goes out
                    break
                target = unit.target_kw
                if target is None or not self._due(unit, target, self._now_s()):
                    break
        finally:
            unit.in_flight = False

    async def _booked(self, unit: _Unit, watts: float, valid_s: float,
                      send: Any) -> CommandOutcome:
        """Await ``send`` (the driver's coroutine) with the command booked in the shared
        :class:`V2xBook` before it leaves and its outcome after (an exception is a
        refusal: nothing in force)."""
        assert unit.charger is not None
        key = (unit.charger.id, unit.connector)
        command = self.book.sent(key, _guarded_w(watts), self.clock.now(), valid_s)
        try:
            outcome: CommandOutcome = await send
        except V2xRefused as exc:  # not V2X now (offline, not 2.1): nothing sent
            outcome = CommandOutcome(CommandResult.OFFLINE, sent=False, detail=str(exc))
        except Exception as exc:  # a refusal by the driver
            outcome = CommandOutcome(CommandResult.REJECTED, sent=False,
                                     detail=f"{type(exc).__name__}: {exc}")
        except BaseException:  # cancelled: unknown, kept until its validTo
            self.book.outcome(key, command, CommandOutcome(CommandResult.TIMEOUT))
            raise
        self.book.outcome(key, command, outcome)
        return outcome

    def _sent(self, unit: _Unit, outcome: CommandOutcome, what: str) -> bool:
        """Record a V2X command's outcome; False (and a back-off) unless accepted. The
        first failure of a run is logged, then every 100th."""
        result = outcome.result.value
        unit.last_result = result if not outcome.detail else f"{result}: {outcome.detail}"
        self.counters[f"v2x_{what}_{result}"] += 1
        if outcome.result is CommandResult.ACCEPTED:
            unit.failed_at, unit.failures = None, 0
            return True
        unit.failed_at = self._now_s()
        unit.failures += 1
        if unit.failures == 1 or unit.failures % 100 == 0:
            log.warning("frequency: V2X %s to %s not accepted (%d in a row): %s", what,
                        unit.id, unit.failures, unit.last_result)
        return False

    def _caps_within_step(self, caps: Mapping[ConnectorKey, float],
                          old: Mapping[ConnectorKey, float]) -> bool:
        """The same connectors, none moved more than ``cap_step_a`` and none paused or
        resumed: not worth a new set (each one is a command to the chargers)."""
        return caps.keys() == old.keys() and all(
            abs(caps[k] - old[k]) <= self.options.cap_step_a and
            (caps[k] == 0) == (old[k] == 0) for k in caps)

    @property
    def caps(self) -> dict[ConnectorKey, float]:
        """The non-V2X caps last published, A per phase."""
        return dict(self._publisher.caps)

    # --- local mode ----------------------------------------------------------------------

    def curve(self, unit: _Unit, base_kw: float, low_w: float | None = None) -> Curve:
        """The droop as the charger's frequency-watt curve (:func:`freq_watt_curve`, the
        one builder): absolute (Hz, W) points of what it draws, + = charging, built
        around the allocation's value ``base_kw``.

        The allocation's value inside the dead band, falling linearly to it minus
        ``max_discharge_kw`` at nominal − full activation (or to ``low_w``, what the
        discharge guard passed, when that is higher), held below; flat above nominal (a
        charger never charges above the allocation: its circuit's limit)."""
        base_w = max(base_kw, 0.0) * 1000.0
        drop_w = unit.spec.max_discharge_kw * 1000.0
        # never past what the car offers to discharge (an absolute end, W)
        drop_w = min(drop_w, base_w + self.discharge_cap_kw(unit) * 1000.0)
        if low_w is not None:
            drop_w = max(0.0, min(drop_w, base_w - low_w))
        return freq_watt_curve(self.settings, base_w=base_w, max_charge_w=0.0,
                               max_discharge_w=drop_w)

    def curve_power_kw(self, unit: _Unit, hz: float) -> float:
        """What the curve in force asks of the unit at ``hz`` (kW, + = charging)."""
        curve = unit.curve_in_force
        if curve is None:
            curve = self.curve(unit, unit.curve_base_kw)
        return curve_power_w(curve, hz) / 1000.0

    def _local(self, at: float) -> None:
        safe = self.decision is None or self.decision.mode is Mode.SAFE
        for unit in self.units.values():
            if unit.charger is None or not unit.present or not unit.v2x:
                continue
            if safe:
                continue
            if unit.safe_override:
                # Back from the safe state: the curve again, and no more setpoints.
                unit.safe_override, unit.curve_sent = False, False
                unit.target_kw = unit.sent_kw = None
            if unit.curve_sent and (
                    at - unit.curve_at >= self.options.curve_valid_s / 2 or
                    abs(unit.base_kw - unit.curve_base_kw) > self.options.step_kw):
                unit.curve_sent = False  # old, or the allocation moved: a new curve
            elif unit.curve_sent and unit.curve_share < 1.0 and \
                    at - unit.curve_at >= self.options.retry_after_s and \
                    self._curve_share(unit, unit.base_kw, at)[0] > unit.curve_share + 0.01:
                unit.curve_sent = False  # clipped by the guard, and more passes now
            if not unit.curve_sent and not unit.curve_task and not unit.in_flight and (
                    unit.failed_at is None or
                    at - unit.failed_at >= self.options.retry_after_s):
                unit.curve_task = True
                self._spawn(self._send_curve(unit), _send_task("curve", unit.id))
            elif unit.curve_sent:
                self._supervise(unit, at)

    async def _send_curve(self, unit: _Unit) -> None:
        """Send the unit's curve, its discharge end first passed through the guard
        (clipped to what passes, or not sent) and booked in the shared book at its most
        discharging point."""
        driver = self._v2x
        assert driver is not None and unit.charger is not None
        try:
            at, base = self._now_s(), unit.base_kw
            share, alarms, low_w = self._curve_share(unit, base, at)
            if alarms:
                self.counters["v2x_guard_clipped"] += 1
                self._raise(f"v2x_guard:{unit.id}", "frequency_guard",
                            f"frequency: curve of {unit.id} refused by the discharge guard "
                            f"({alarms[0]}): discharge clipped to {share * 100:.1f} %",
                            at, share, 1.0)
            else:
                self._clear(f"v2x_guard:{unit.id}", at)
            curve = self.curve(unit, base, low_w * share)
            outcome = await self._booked(
                unit, min(p for _, p in curve), self.options.curve_valid_s,
                driver.send_v2x_local_frequency(unit.charger.id, unit.connector, curve,
                                                valid_s=self.options.curve_valid_s))
            unit.curve_sent = self._sent(unit, outcome, "curve")
            unit.curve_at, unit.curve_base_kw = at, base
            if unit.curve_sent:
                unit.curve_in_force, unit.curve_share = curve, share
        finally:
            unit.curve_task = False

    def _curve_share(self, unit: _Unit, base_kw: float, at: float
                     ) -> tuple[float, list[str], float]:
        """(share of the curve's discharge end the guard passes, its alarms, that end W)."""
        assert unit.charger is not None
        low_w = _guarded_w(min(p for _, p in self.curve(unit, base_kw)))
        # the group guard first, as in central mode: every local curve's discharge end
        # under a group shares what the group carries (so the first curve sent does not
        # take it all), then check_v2x with what is in force
        ends: dict[str, tuple[float, str | None]] = {}
        for other in self.units.values():
            if other.charger is not None and other.present and other.v2x:
                base = base_kw if other is unit else other.base_kw
                ends[other.id] = (max(max(base, 0.0) - other.spec.max_discharge_kw,
                                      -self.discharge_cap_kw(other)), None)
        self._group_scale(ends)
        if unit.id in ends:
            low_w = max(low_w, _guarded_w(ends[unit.id][0] * 1000.0))
        share, alarms = self._guard_scale({(unit.charger.id, unit.connector): low_w}, at)
        return share, alarms, low_w

    def _supervise(self, unit: _Unit, at: float) -> None:
        """Alarm once when the measured power has been off the curve for too long."""
        if unit.measured_kw is None or self.last_sample is None:
            return
        expected = self.curve_power_kw(unit, self.last_sample[1])
        key = f"curve:{unit.id}"
        off = abs(unit.measured_kw - expected) > self.options.supervise_tolerance_kw
        if not off:
            unit.departing_since = None
            self._clear(key, at)
            return
        if unit.departing_since is None:
            unit.departing_since = at
        if at - unit.departing_since >= self.options.supervise_after_s:
            self._raise(key, "frequency_curve",
                        f"frequency: charger {unit.id} draws {unit.measured_kw:.2f} kW, its "
                        f"curve asks {expected:.2f} kW at {self.last_sample[1]:.3f} Hz (for "
                        f"{at - unit.departing_since:.0f} s)", at, unit.measured_kw, expected)

    # --- alarms --------------------------------------------------------------------------

    def _alarms_of(self, decision: FrequencyDecision, at: float) -> None:
        if decision.alarm is None:
            self._clear("stale", at)
            self._clear("window", at)
            return
        key = "stale" if decision.hz is None else "window"
        self._clear("window" if key == "stale" else "stale", at)
        s = self.settings
        limit = s.window_low_hz if (decision.hz or s.nominal_hz) < s.nominal_hz else \
            s.window_high_hz
        self._raise(key, "frequency", decision.alarm, at, decision.hz or 0.0,
                    limit if key == "window" else s.stale_after_s)

    def _raise(self, key: str, kind: str, message: str, at: float, load: float,
               limit: float) -> None:
        if key in self._alarm_keys:
            return
        record = AlarmRecord(datetime.fromtimestamp(at, UTC), kind, "", None, load, limit,
                             message)
        self._alarm_keys[key] = record
        self._record(record)
        log.warning("ALARM %s: %s", kind, message)

    def _clear(self, key: str, at: float) -> None:
        old = self._alarm_keys.pop(key, None)
        if old is None:
            return
        record = AlarmRecord(datetime.fromtimestamp(at, UTC), old.kind, old.group, None,
                             old.load, old.limit, f"cleared: {old.message}", cleared=True)
        self._record(record)
        log.info("alarm cleared: %s", old.message)

    def _record(self, record: AlarmRecord) -> None:
        self._alarms.append(record)
        self.counters[f"alarms_{record.kind}{'_cleared' if record.cleared else ''}"] += 1
        if self._store is not None:
            self._store.record_alarm(record)

    def alarms(self) -> list[AlarmRecord]:
        """Recent alarms and clearings, oldest first."""
        return list(self._alarms)

    @property
    def active_alarms(self) -> list[str]:
        return [r.message for r in self._alarm_keys.values()]

    # --- status --------------------------------------------------------------------------

    def compute_ms(self) -> dict[str, float | None]:
        """Time to handle one sample (core + handing out every setpoint), recent window."""
        values = sorted(self._compute_ms)
        if not values:
            return {"p50": None, "p99": None, "last": None}
        n = len(values)
        return {"p50": round(values[n // 2], 3), "p99": round(values[min(n - 1,
                                                                         int(n * 0.99))], 3),
                "last": round(self._compute_ms[-1], 3)}

    @contextlib.asynccontextmanager
    async def stand_aside(self, key: ConnectorKey, timeout_s: float = 15.0
                          ) -> AsyncIterator[None]:
        """Leave ``key`` to a discharge test while the block runs: nothing new is sent to
        it (``testing``), and the block starts only once a setpoint or curve already in
        flight to it has been answered (or ``timeout_s`` passed), so that it cannot land
        after the test's own profile and override it. Taken back after the block."""
        self.testing.add(key)
        try:
            names = {_send_task(kind, u.id) for u in self.units.values()
                     if u.charger is not None and u.key == key for kind in ("v2x", "curve")}
            sending = [t for t in self._tasks if t.get_name() in names]
            if sending:
                await asyncio.wait(sending, timeout=timeout_s)
            yield
        finally:
            self.testing.discard(key)

    def grid_unsafe(self) -> str | None:
        """Why no discharge may run now because of the grid's frequency (its safe state:
        outside the safety window, or the hold after coming back), else None. A silent
        source is not such a reason: nothing is known of the grid then."""
        d = self.decision
        if d is None or d.mode is not Mode.SAFE or d.hz is None:
            return None
        return d.alarm or f"frequency {d.hz:.3f} Hz: the units are in their safe state"

    def status(self) -> dict[str, Any]:
        """What ``GET /api/v1/frequency`` serves (docs/frequency.md)."""
        d = self.decision
        at = self._now_s()
        sample = None
        if self.last_sample is not None:
            s_at, hz, ts = self.last_sample
            sample = {"at": _iso(s_at), "hz": hz, "ts": None if ts is None else _iso(ts),
                      "age_s": round(at - s_at, 3)}
        units = []
        for u in self.units.values():
            units.append({
                "id": u.id, "kind": u.kind.value, "present": u.present,
                "v2x": u.v2x if u.charger is not None else None,
                "v2x_detail": u.not_v2x if u.charger is not None else None,
                "ev_offer": u.offer.json() if u.charger is not None and u.offer is not None
                else None,
                "max_discharge_kw": round(self.discharge_cap_kw(u), 3),
                "connector": u.connector if u.charger is not None else None,
                "base_kw": round(u.decided_base_kw, 3),
                "setpoint_kw": None if u.setpoint_kw is None else round(u.setpoint_kw, 3),
                "delta_kw": round(u.delta_kw, 3),
                "sent_kw": None if u.sent_kw is None else round(u.sent_kw, 3),
                "measured_kw": None if u.measured_kw is None else round(u.measured_kw, 3),
                "soc": u.soc_pct, "cycles": round(self.responder.cycles(u.id, at), 4),
                "held": u.held, "sends": u.sends, "last_result": u.last_result,
                "curve_sent": u.curve_sent if self.mode == "local" and u.charger else None})
        return {
            "mode": self.mode,
            "state": d.mode.value if d is not None else Mode.SAFE.value,
            "nominal_hz": self.settings.nominal_hz,
            "deadband_mhz": self.spec.deadband_mhz,
            "full_activation_mhz": self.spec.full_activation_mhz,
            "safety_window_hz": list(self.spec.safety_window_hz),
            "last_sample": sample,
            "fraction": None if d is None else round(d.fraction, 4),
            "request_kw": None if d is None else round(d.request_kw, 3),
            "dispatched_kw": None if d is None else round(d.dispatched_kw, 3),
            "alarm": None if d is None else d.alarm,
            "alarms": self.active_alarms,
            "link_connected": None if self._batteries is None else
            bool(self._batteries.connected),
            "samples": self.counters["samples"],
            "rejected": self.rejected_counts(),
            "last_rejected": self.last_rejected,
            "soc_rejected": dict(self.soc_rejected),
            "caps_a": [[k[0], k[1], a] for k, a in sorted(self._publisher.caps.items())],
            "compute_ms": self.compute_ms(),
            "counters": dict(sorted(self.counters.items())),
            "units": units,
        }


def _guarded_w(watts: float) -> float:
    """What the guard and the book see of a V2X setpoint: its discharge (≤ 0 W, to 0.1 W).

    A V2X *charge* setpoint is never above the allocation's value (the circuit guard),
    which the controller's own guard passed and its ledger counts; checking it again as a
    current send would refuse the small charges a ramp towards discharge passes through
    (``check_plan``: 0 or within the connector's [min, max] A). The discharge side is the
    news: every discharge, and every one that may still be in force, is counted."""
    return min(round(watts, 1), 0.0) + 0.0


def v2x_driver(csms: object) -> V2xDriver | None:
    """``csms`` as a :class:`V2xDriver` when it has the three methods (OCPP 2.1 support),
    else None: every charger unit is then only curtailed."""
    names = ("v2x_capable", "send_v2x_setpoint", "send_v2x_local_frequency")
    if all(callable(getattr(csms, n, None)) for n in names):
        return csms  # type: ignore[return-value]
    return None


def soc_topics(spec: FrequencyResponseSpec) -> Mapping[str, str]:
    """Battery ``soc_topic`` -> battery id."""
    return {u.soc_topic: u.id for u in spec.units
            if u.battery is not None and u.soc_topic is not None}
