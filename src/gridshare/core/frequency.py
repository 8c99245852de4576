"""Frequency response: grid frequency samples in, per-unit power deltas out (droop).

Pure: no I/O and no clock; every time is a number of seconds passed in by the caller.
Powers are kW, + = charging (drawing from the grid), - = discharging.

Below nominal the units lower their draw (charge less, then discharge), above it they
draw more, in proportion to the deviation past the dead band (``droop_fraction``). The
``FrequencyResponder`` adds what a stream of samples needs on top: a hysteresis at the
dead band's edge (no added delay), rejection of bad samples, the safety window and a
stale-source check (both put every unit in its safe state with an alarm), and the battery
guards (state of charge floor, depth of discharge, cycles per rolling day).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

EPS = 1e-9
"""kW or Hz: differences below this are rounding."""
DAY_S = 86_400.0
"""Seconds in the rolling day over which cycles are counted."""
CYCLE_BIN_S = 60.0
"""Seconds per bin of the cycle counter: the rolling day is 1,440 bins, so memory stays
bounded whatever the sample rate (the day's edge is accurate to one bin)."""
PLAUSIBLE_DEVIATION_HZ = 5.0
"""A sample further than this from nominal is a sensor or parsing error, not the grid: it
is rejected (counted), not acted on."""


def curve_at(curve: tuple[tuple[float, float], ...], hz: float) -> float:
    """The value of a frequency-watt curve at ``hz`` (its own unit): linear between
    points, the end point's value beyond either end (OCPP 2.1: the charger interpolates
    the curve linearly)."""
    if hz <= curve[0][0]:
        return curve[0][1]
    for (f0, p0), (f1, p1) in itertools.pairwise(curve):
        if hz <= f1:
            return p0 + (p1 - p0) * (hz - f0) / (f1 - f0)
    return curve[-1][1]


def droop_fraction(deviation_hz: float, deadband: float, full_activation: float) -> float:
    """Share of full power, in [-1, 1], with the deviation's sign (+ = above nominal).

    0 inside ±``deadband``, linear up to ±1 at ±``full_activation`` (all in Hz) and held
    there beyond: ``(|Δf| − deadband) / (full_activation − deadband)``.
    """
    if not math.isfinite(deviation_hz):
        raise ValueError(f"deviation_hz must be a finite number, got {deviation_hz!r}")
    if not (math.isfinite(deadband) and deadband >= 0):
        raise ValueError(f"deadband must be a finite number >= 0 Hz, got {deadband!r}")
    if not (math.isfinite(full_activation) and full_activation > deadband):
        raise ValueError(f"full_activation ({full_activation!r} Hz) must be finite and above "
                         f"the deadband ({deadband!r} Hz)")
    size = abs(deviation_hz)
    if size <= deadband:
        return 0.0
    share = min(1.0, (size - deadband) / (full_activation - deadband))
    return share if deviation_hz > 0 else -share


@dataclass(frozen=True, slots=True)
class FrequencySettings:
    """The site file's ``frequency_response:`` block, in Hz and seconds."""

    nominal_hz: float
    deadband_hz: float
    full_activation_hz: float
    window_low_hz: float
    window_high_hz: float
    hysteresis_hz: float = 0.005
    """Once responding, the response ends only when |Δf| falls below deadband − this."""
    stale_after_s: float = 1.0
    """No valid sample for this long: the source is stale, every unit to its safe state."""
    recover_after_s: float = 5.0
    """After leaving the safety window, the frequency must stay inside it this long before
    the units respond again."""
    endurance_s: float = 900.0
    """A unit discharges at most what it can hold for this long above its SoC floor."""

    def __post_init__(self) -> None:
        for name in ("nominal_hz", "deadband_hz", "full_activation_hz", "window_low_hz",
                     "window_high_hz", "hysteresis_hz", "stale_after_s", "recover_after_s",
                     "endurance_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.full_activation_hz <= self.deadband_hz:
            raise ValueError(f"full_activation_hz {self.full_activation_hz} must be above "
                             f"deadband_hz {self.deadband_hz}")
        if self.deadband_hz > 0 and self.hysteresis_hz >= self.deadband_hz:
            raise ValueError(f"hysteresis_hz {self.hysteresis_hz} must be below deadband_hz "
                             f"{self.deadband_hz}")
        if not (self.window_low_hz < self.nominal_hz - self.deadband_hz
                and self.window_high_hz > self.nominal_hz + self.deadband_hz):
            raise ValueError(f"safety window [{self.window_low_hz}, {self.window_high_hz}] Hz "
                             f"must contain nominal {self.nominal_hz} Hz ± the deadband")
        if self.stale_after_s <= 0 or self.endurance_s <= 0:
            raise ValueError("stale_after_s and endurance_s must be above 0")


class UnitKind(StrEnum):
    CHARGER = "charger"
    BATTERY = "battery"


@dataclass(frozen=True, slots=True)
class UnitSpec:
    """A unit's fixed limits (the site file's ``units:`` entry)."""

    id: str
    kind: UnitKind
    max_discharge_kw: float
    max_charge_kw: float
    capacity_kwh: float
    min_soc_pct: float
    """Floor the response never discharges below (what the driver needs by departure)."""
    max_dod_pct: float = 100.0
    """Depth-of-discharge cap: the SoC floor is at least 100 − this (100: no extra floor)."""
    max_cycles_per_day: float | None = None
    """Equivalent full cycles over a rolling day past which the unit is held back; None:
    no cycle cap (written out in the site file's docs, never implied by a 0)."""

    def __post_init__(self) -> None:
        for name in ("max_discharge_kw", "max_charge_kw", "capacity_kwh", "min_soc_pct",
                     "max_dod_pct"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"unit {self.id!r}: {name} must be a finite number >= 0, "
                                 f"got {value!r}")
        if self.capacity_kwh <= 0:
            raise ValueError(f"unit {self.id!r}: capacity_kwh must be above 0")
        if self.min_soc_pct > 100 or self.max_dod_pct > 100:
            raise ValueError(f"unit {self.id!r}: min_soc_pct and max_dod_pct are percentages "
                             f"(0-100)")
        if self.max_cycles_per_day is not None and not (
                math.isfinite(self.max_cycles_per_day) and self.max_cycles_per_day > 0):
            raise ValueError(f"unit {self.id!r}: max_cycles_per_day must be above 0")

    @property
    def soc_floor_pct(self) -> float:
        return max(self.min_soc_pct, 100.0 - self.max_dod_pct)


@dataclass(frozen=True, slots=True)
class UnitState:
    """What the unit does now, from the allocation and its latest readings."""

    id: str
    base_kw: float = 0.0
    """The allocation's setpoint (a car) or the battery's own schedule; the response adds
    to it."""
    soc_pct: float | None = None
    """None: unknown, so the unit is not discharged (fail closed)."""
    present: bool = True
    """False: no car plugged in, or the unit is offline; it takes no part."""
    can_discharge: bool = True
    """False: the car or charger cannot discharge (no V2X): it may only charge less."""
    need_soc_pct: float = 0.0
    """The driver's need by departure, when it is above the unit's ``min_soc``."""
    max_discharge_kw: float | None = None
    """The most the car offers to discharge now (OCPP 2.1 ``maxDischargePower``), when it
    is below the unit's ``max_discharge_kw``; None: the unit's own maximum holds."""
    max_charge_kw: float | None = None
    """The most the unit may charge now, when it is below the unit's ``max_charge_kw``
    (a charger: the allocation's value, as its circuit carries no more); above nominal
    its headroom ends there and the others take its share. None: its own maximum."""
    curve_kw: tuple[tuple[float, float], ...] | None = None
    """(Hz, kW) of the frequency-watt curve the unit follows by itself (local mode, the
    curve in force on the charger): below nominal it does what the curve says, whatever
    its headroom share would be, so it takes that and the other units share the rest of
    the request. None: the unit does what it is sent."""


class Mode(StrEnum):
    IDLE = "idle"
    """Inside the dead band: no response."""
    RESPONDING = "responding"
    SAFE = "safe"
    """Every unit at its safe state: no discharge, charging at its base or less."""


@dataclass(frozen=True, slots=True)
class UnitDispatch:
    id: str
    delta_kw: float
    """What the response adds to the base (+ = charge more)."""
    setpoint_kw: float
    """The final setpoint: base + delta."""
    held: str | None = None
    """Why the unit takes no part (or a smaller one) in this direction, when it does not."""


@dataclass(frozen=True, slots=True)
class FrequencyDecision:
    at: float
    hz: float | None
    """The sample acted on (None: a stale check)."""
    mode: Mode
    fraction: float
    """The droop's share of full power, signed (0 in the safe state)."""
    request_kw: float
    """Signed: sum of the eligible units' maximum in that direction × fraction."""
    dispatched_kw: float
    """Signed sum of the deltas (below the request when headroom is short)."""
    units: tuple[UnitDispatch, ...]
    alarm: str | None = None
    """Why the units are in their safe state, while they are."""
    rejected: str | None = None
    """Why this sample was rejected (the previous decision then holds)."""


class CycleCounter:
    """Energy throughput of one unit over a rolling day, as equivalent full cycles
    (charged + discharged kWh over twice the capacity), in one-minute bins."""

    __slots__ = ("_bins", "_total")

    def __init__(self) -> None:
        self._bins: deque[list[float]] = deque()
        self._total = 0.0

    def add(self, at: float, kwh: float) -> None:
        """Record ``|kwh|`` moved through the battery in the bin of ``at``."""
        self.add_in_bin(math.floor(at / CYCLE_BIN_S), kwh)

    def add_in_bin(self, b: int, kwh: float) -> None:
        """:meth:`add` with the bin of ``at`` already worked out (one per sample for all
        units, not one per unit)."""
        if self._bins and self._bins[-1][0] >= b:
            self._bins[-1][1] += abs(kwh)
        else:
            self._bins.append([float(b), abs(kwh)])
        self._total += abs(kwh)

    def throughput_kwh(self, at: float) -> float:
        """kWh moved in the rolling day that ends at ``at``."""
        oldest = math.floor(at / CYCLE_BIN_S) - DAY_S / CYCLE_BIN_S
        bins = self._bins
        while bins and bins[0][0] <= oldest:
            self._total -= bins.popleft()[1]
        if not bins:
            self._total = 0.0
        return max(self._total, 0.0)

    def cycles(self, at: float, capacity_kwh: float) -> float:
        return self.throughput_kwh(at) / (2.0 * capacity_kwh)


def _safe_setpoint(base_kw: float) -> float:
    """No discharge, charging at the base or less."""
    return max(base_kw, 0.0)


class FrequencyResponder:
    """The droop over a stream of ``(at, hz)`` samples, with its guards.

    Hysteresis: responding starts when |Δf| > deadband and ends only when |Δf| <
    deadband − hysteresis, so a frequency hovering at the edge never toggles the response
    on and off (no filter: the first sample past the dead band acts, no added delay).
    Cycles are counted from the setpoints it commands, each held until the next step.
    """

    def __init__(self, settings: FrequencySettings, units: Iterable[UnitSpec],
                 at: float) -> None:
        self.settings = settings
        self.units: dict[str, UnitSpec] = {}
        for u in units:
            if u.id in self.units:
                raise ValueError(f"duplicate unit id {u.id!r}")
            self.units[u.id] = u
        self.mode = Mode.SAFE
        self.alarm: str | None = None
        self.rejected: dict[str, int] = {}
        """Rejected samples counted by reason (``nan``, ``range``, ``time``)."""
        self._started = at
        self._last_sample_at: float | None = None
        self._last_at = at
        self._window_ok_since: float | None = None
        self._window_tripped = False
        self._cycles = {uid: CycleCounter() for uid in self.units}
        self._commanded: dict[str, float] = {}
        self._last: FrequencyDecision | None = None

    def cycles(self, unit_id: str, at: float) -> float:
        """Equivalent full cycles of ``unit_id`` in the rolling day that ends at ``at``."""
        return self._cycles[unit_id].cycles(at, self.units[unit_id].capacity_kwh)

    def _reject(self, at: float, reason: str, why: str,
                states: Mapping[str, UnitState]) -> FrequencyDecision:
        """The previous decision, marked with why this sample was not acted on (or the
        stale-source decision, when bad samples have gone on for too long)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        stale = self.check(at, states) if math.isfinite(at) and at >= self._last_at else None
        base = stale if stale is not None else self._last
        if base is None:
            base = self._safe(at, None, states, self.alarm or "no valid frequency sample yet")
        return FrequencyDecision(base.at, base.hz, base.mode, base.fraction, base.request_kw,
                                 base.dispatched_kw, base.units, base.alarm, why)

    def sample(self, at: float, hz: float, states: Mapping[str, UnitState]
               ) -> FrequencyDecision:
        """The decision for one sample; ``states`` holds every unit's current state (a
        unit missing from it takes no part)."""
        s = self.settings
        if not math.isfinite(hz):
            return self._reject(at, "nan", f"frequency sample {hz!r} is not a number",
                                states)
        if not math.isfinite(at) or at < self._last_at or (
                self._last_sample_at is not None and at <= self._last_sample_at):
            return self._reject(at, "time", f"sample time {at!r} is not after the "
                                f"previous one", states)
        if abs(hz - s.nominal_hz) > PLAUSIBLE_DEVIATION_HZ:
            return self._reject(at, "range", f"frequency sample {hz:g} Hz is more than "
                                f"{PLAUSIBLE_DEVIATION_HZ:g} Hz from nominal "
                                f"{s.nominal_hz:g} Hz: a sensor error", states)
        self._last_sample_at = at
        if not s.window_low_hz <= hz <= s.window_high_hz:
            self._window_tripped = True
            self._window_ok_since = None
            return self._safe(at, hz, states,
                              f"frequency {hz:.3f} Hz is outside the safety window "
                              f"[{s.window_low_hz:g}, {s.window_high_hz:g}] Hz: every unit "
                              f"to its safe state")
        if self._window_tripped:
            if self._window_ok_since is None:
                self._window_ok_since = at
            if at - self._window_ok_since < s.recover_after_s:
                return self._safe(at, hz, states,
                                  f"frequency back inside the safety window for "
                                  f"{at - self._window_ok_since:.1f} s of "
                                  f"{s.recover_after_s:g} s: units held at their safe state")
            self._window_tripped = False
        deviation = hz - s.nominal_hz
        size = abs(deviation)
        if self.mode is Mode.RESPONDING:
            if size < s.deadband_hz - s.hysteresis_hz:
                self.mode = Mode.IDLE
        elif size > s.deadband_hz:
            self.mode = Mode.RESPONDING
        else:
            self.mode = Mode.IDLE
        self.alarm = None
        fraction = (droop_fraction(deviation, s.deadband_hz, s.full_activation_hz)
                    if self.mode is Mode.RESPONDING else 0.0)
        return self._dispatch(at, hz, fraction, states)

    def check(self, at: float, states: Mapping[str, UnitState]) -> FrequencyDecision | None:
        """The stale-source check, for the caller's timer: the safe-state decision when no
        valid sample came for ``stale_after_s``, else None."""
        since = self._last_sample_at if self._last_sample_at is not None else self._started
        if at - since <= self.settings.stale_after_s:
            return None
        return self._safe(at, None, states,
                          f"no valid frequency sample for {at - since:.1f} s (limit "
                          f"{self.settings.stale_after_s:g} s): frequency source stale, "
                          f"every unit to its safe state")

    # --- decisions -------------------------------------------------------------------

    def _accrue(self, at: float) -> None:
        """Count the energy of the setpoints in force since the last step, before any
        guard looks at the cycles."""
        dt = at - self._last_at
        if dt > 0:
            hours = dt / 3600.0
            counters = self._cycles
            b = math.floor(at / CYCLE_BIN_S)
            for uid, kw in self._commanded.items():
                if kw:
                    counters[uid].add_in_bin(b, kw * hours)
        self._last_at = max(self._last_at, at)

    def _safe(self, at: float, hz: float | None, states: Mapping[str, UnitState],
              alarm: str) -> FrequencyDecision:
        self._accrue(at)
        self.mode = Mode.SAFE
        self.alarm = alarm
        out = []
        for uid in self.units:
            st = states.get(uid)
            if st is None or not st.present:
                continue
            safe = _safe_setpoint(st.base_kw)
            out.append(UnitDispatch(uid, safe - st.base_kw, safe, "safe state"))
        units = tuple(out)
        self._commanded = {u.id: u.setpoint_kw for u in units}
        decision = FrequencyDecision(at, hz, Mode.SAFE, 0.0, 0.0,
                                     math.fsum(u.delta_kw for u in units), units, alarm)
        self._last = decision
        return decision

    def _dispatch(self, at: float, hz: float, fraction: float,
                  states: Mapping[str, UnitState]) -> FrequencyDecision:
        self._accrue(at)
        if fraction == 0.0:
            return self._idle(at, hz, fraction, states)
        up = fraction > 0
        endurance_h = self.settings.endurance_s / 3600.0
        # id, base, headroom, held, the delta of a unit on its own curve (else None)
        rows: list[tuple[str, float, float, str | None, float | None]] = []
        pmax_sum = 0.0
        room_sum = 0.0
        own_sum = 0.0
        for uid, spec in self.units.items():
            st = states.get(uid)
            if st is None or not st.present:
                continue
            base = st.base_kw
            held: str | None = None
            # every present unit counts in the request; one a guard holds back leaves its
            # share to the others' headroom
            pmax_sum += spec.max_charge_kw if up else spec.max_discharge_kw
            if not up and st.curve_kw is not None:
                # a unit on its own curve (local mode) does what the curve says; the rest
                # of the request goes to the others' headroom
                own = min(0.0, curve_at(st.curve_kw, hz) - base)
                own_sum += own
                rows.append((uid, base, 0.0, None, own))
                continue
            cap = spec.max_cycles_per_day
            if cap is not None:
                used = self._cycles[uid].cycles(at, spec.capacity_kwh)
                if used >= cap:
                    rows.append((uid, base, 0.0, f"max_cycles_per_day: {used:.2f} of {cap:g} "
                                                 f"equivalent full cycles used in 24 h", None))
                    continue
            if up:
                top = spec.max_charge_kw
                if st.max_charge_kw is not None and not st.max_charge_kw >= top:
                    top = st.max_charge_kw if st.max_charge_kw > 0 else 0.0  # NaN: 0
                    held = (f"charges at most {top:.3g} kW now (the allocation's value: "
                            f"its circuit's limit)")
                room = top - base
                if st.soc_pct is not None and st.soc_pct >= 100.0:
                    room, held = 0.0, "full (SoC 100 %)"
            else:
                lower = 0.0
                if not st.can_discharge:
                    held = "cannot discharge (no V2X): charges less only"
                elif st.soc_pct is None:
                    held = "SoC unknown: not discharged"
                else:
                    floor = max(spec.soc_floor_pct, st.need_soc_pct)
                    above_kwh = (st.soc_pct - floor) / 100.0 * spec.capacity_kwh
                    most = spec.max_discharge_kw
                    car = st.max_discharge_kw
                    if car is not None and not car >= most:  # NaN: 0 (fail closed)
                        most = car if car > 0 else 0.0
                        held = (f"the car offers at most {most:.3g} kW of discharge "
                                f"(maxDischargePower)")
                    limit = min(most, max(above_kwh, 0.0) / endurance_h)
                    lower = -limit
                    if limit < most - EPS:
                        which = ("min_soc" if floor == spec.min_soc_pct else
                                 "departure need" if floor == st.need_soc_pct else "max_dod")
                        held = (f"{which}: SoC {st.soc_pct:g} % with floor {floor:g} %: "
                                f"discharge limited to {limit:.3g} kW")
                room = base - lower
            room = max(room, 0.0)
            room_sum += room
            rows.append((uid, base, room, held, None))
        request = pmax_sum * fraction
        want = max(0.0, abs(request) - abs(own_sum))
        share = min(1.0, want / room_sum) if room_sum > EPS else 0.0
        sign = 1.0 if up else -1.0
        out = []
        total = 0.0
        for uid, base, room, held, on_curve in rows:
            delta = sign * room * share if on_curve is None else on_curve
            total += delta
            out.append(UnitDispatch(uid, delta, base + delta, held))
        units = tuple(out)
        self._commanded = {u.id: u.setpoint_kw for u in units}
        decision = FrequencyDecision(at, hz, self.mode, fraction, request, total, units)
        self._last = decision
        return decision

    def _idle(self, at: float, hz: float, fraction: float, states: Mapping[str, UnitState]
              ) -> FrequencyDecision:
        """:meth:`_dispatch` at fraction 0 (inside the dead band: most samples), without
        the headroom rows: every present unit at its base, its delta ``-0.0`` exactly as
        the general path gives (sign −1 × headroom 0 × share 0)."""
        out = []
        commanded: dict[str, float] = {}
        for uid in self.units:
            st = states.get(uid)
            if st is None or not st.present:
                continue
            setpoint = st.base_kw + -0.0
            out.append(UnitDispatch(uid, -0.0, setpoint, None))
            commanded[uid] = setpoint
        self._commanded = commanded
        decision = FrequencyDecision(at, hz, self.mode, fraction, 0.0 * fraction, 0.0,
                                     tuple(out))
        self._last = decision
        return decision

