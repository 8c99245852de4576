"""Area regulation from the meters: generation–load imbalance in, a storage correction out.

The area control error (ACE), in kW, with the convention used throughout gridshare:

    ACE = (P_load − P_sched) + B · Δf

- ``P_load``: the area's *net* load as its feeder/substation meters see it, storage units
  included (a battery that discharges lowers it);
- ``P_sched``: the area's scheduled generation (or import);
- ``Δf = f − f_nominal`` (Hz) and ``B`` the frequency bias in kW/Hz, **≤ 0** (NERC's sign).
  Load falls with frequency (load damping ``D`` kW/Hz: ``P_load(f) = P_load0 + D·Δf``), so
  a meter under-reads the imbalance when the frequency is low; ``B = −D`` adds it back and
  a more negative ``B`` also answers a loss of generation that the load does not show.

ACE > 0: the area draws more than is scheduled (the frequency falls) and the storage
units must *discharge*; the correction is in kW with **+ = discharge** (the battery
setpoint topics use + = charging, so the adapter publishes ``setpoint_kw = −correction``).

A PI controller: ``correction = kp·ACE + I``, ``I += ki·ACE·dt``, clipped to
``[−max_charge_kw, +max_discharge_kw]``, with anti-windup: the integral is itself kept
within those limits and integrates only as far as brings a saturated output to its
limit. Because the storage is behind the meters, the integral drives ACE to zero: the
units take over the imbalance and the frequency returns to nominal.

Deadline: each step says how old its inputs are and how long it has been since the last
step. Inputs older than ``deadline_s`` (5 s), a frequency needed (``B ≠ 0``) but missing or
stale, or a step later than ``deadline_s`` after the previous one yield *hold*: the units go
to their safe state (0 kW: neither charging nor discharging), the integral is reset (it was
built on data that is no longer trusted) and the step says why, for an alarm.

Pure: no clock, no I/O; ages and intervals are passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RegulationSettings:
    scheduled_kw: float
    bias_kw_per_hz: float = 0.0
    """B (kW/Hz, ≤ 0)."""
    kp: float = 0.5
    ki: float = 0.2
    """1/s."""
    max_discharge_kw: float = 0.0
    """What the units together can discharge (the correction's upper bound)."""
    max_charge_kw: float = 0.0
    """What they can take (the correction's lower bound is minus this)."""
    nominal_hz: float = 50.0
    deadline_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("scheduled_kw", "bias_kw_per_hz", "kp", "ki", "max_discharge_kw",
                     "max_charge_kw", "nominal_hz", "deadline_s"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: must be a finite number")
        if self.bias_kw_per_hz > 0:
            raise ValueError("bias_kw_per_hz: must be <= 0 (NERC sign: B = -D cancels "
                             "load damping)")
        if min(self.kp, self.ki, self.max_discharge_kw, self.max_charge_kw) < 0:
            raise ValueError("kp, ki, max_discharge_kw and max_charge_kw must be >= 0")
        if self.deadline_s <= 0 or self.nominal_hz <= 0:
            raise ValueError("deadline_s and nominal_hz must be > 0")


@dataclass(frozen=True, slots=True)
class RegulationStep:
    """One step's outcome."""

    correction_kw: float
    """+ = the units discharge; 0 when holding."""
    ace_kw: float | None
    """The area control error (None: not computed, the inputs were not usable)."""
    hold: bool
    reason: str | None
    """Why it holds (for the alarm); None when it regulates."""
    saturated: bool = False


def area_control_error(load_kw: float, scheduled_kw: float, bias_kw_per_hz: float,
                       delta_hz: float) -> float:
    """ACE = (P_load − P_sched) + B·Δf (kW; > 0: the area is short of generation)."""
    return (load_kw - scheduled_kw) + bias_kw_per_hz * delta_hz


class Regulator:
    """The PI controller and its integral, stepped by the adapter."""

    def __init__(self, settings: RegulationSettings) -> None:
        self.settings = settings
        self.integral_kw = 0.0

    def reset(self) -> None:
        self.integral_kw = 0.0

    def _hold(self, reason: str) -> RegulationStep:
        self.integral_kw = 0.0
        return RegulationStep(0.0, None, True, reason)

    def step(self, *, load_kw: float | None, load_age_s: float | None, hz: float | None,
             hz_age_s: float | None, dt_s: float) -> RegulationStep:
        """One step ``dt_s`` after the previous one (the first: the nominal step)."""
        s = self.settings
        limit = s.deadline_s
        if not (math.isfinite(dt_s) and dt_s >= 0):
            return self._hold(f"step interval {dt_s!r} is not a time")
        if dt_s > limit:
            return self._hold(f"step missed its deadline: {dt_s:.2f} s since the last one "
                              f"(deadline {limit:g} s)")
        if load_kw is None or load_age_s is None or not math.isfinite(load_kw):
            return self._hold("no area load")
        if not load_age_s <= limit:
            return self._hold(f"area load is {load_age_s:.1f} s old (deadline {limit:g} s)")
        delta = 0.0
        if s.bias_kw_per_hz != 0:
            if hz is None or hz_age_s is None or not math.isfinite(hz):
                return self._hold("no frequency (the bias term needs it)")
            if not hz_age_s <= limit:
                return self._hold(f"frequency is {hz_age_s:.1f} s old (deadline {limit:g} s)")
            delta = hz - s.nominal_hz
        ace = area_control_error(load_kw, s.scheduled_kw, s.bias_kw_per_hz, delta)
        high, low = s.max_discharge_kw, -s.max_charge_kw
        integral = self.integral_kw + s.ki * ace * dt_s
        raw = s.kp * ace + integral
        saturated = raw > high or raw < low
        if raw > high:
            # anti-windup: up to what brings the output to its limit, never beyond it
            # (and never pulled back below where it was by a large proportional term)
            integral = min(integral, max(high - s.kp * ace, self.integral_kw))
        elif raw < low:
            integral = max(integral, min(low - s.kp * ace, self.integral_kw))
        self.integral_kw = min(max(integral, low), high)
        out = min(max(s.kp * ace + self.integral_kw, low), high)
        return RegulationStep(out, ace, False, None, saturated)
