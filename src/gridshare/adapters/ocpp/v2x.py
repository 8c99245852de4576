"""V2X over OCPP 2.1: the TxProfiles that ask a bidirectional charger to discharge.

Pure builders, like :mod:`.profiles`; ``tests/ocpp/test_v21_v2x.py`` proves every one valid
against the official 2.1 schema (``ocpp/v21/schemas/SetChargingProfileRequest.json``).

Two operation modes of a schedule period (OCPP 2.1 part 2, Q "bidirectional power
transfer"):

* ``CentralSetpoint``: gridshare decides; ``setpoint`` in W, **negative = discharge** (the
  schema: "Use negative values for discharging"). ``limit`` (≥ 0) and ``dischargeLimit``
  (≤ 0) bound the overshoot; both are set tight around the setpoint, so a charger that
  overshoots never exceeds what the guard passed.
* ``LocalFrequency``: the charger follows a ``v2xFreqWattCurve`` of up to 20
  ``{frequency Hz, power W}`` points (positive = charge) on its own, every cycle; gridshare
  only supervises. Each point is the absolute power at that frequency (no
  ``v2xBaseline`` is sent), so the curve is built around the allocation's value
  (:func:`freq_watt_curve`, the one builder), from the same droop as the central mode
  (:func:`gridshare.core.frequency.droop_fraction` with :class:`FrequencySettings`), so both
  modes answer a frequency with the same power.

Layout on the charger (per EVSE; 2.x keeps stack levels per EVSE): the controller's live
setpoint is a TxProfile at stack level ``connector`` (:mod:`.profiles`); a V2X profile is a
TxProfile at stack level ``connector + 1`` with its own id, so while it is valid it wins,
and when it expires (``validTo``) or is cleared by id the controller's setpoint applies
again without a new command.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gridshare.core.frequency import FrequencySettings, curve_at, droop_fraction

from .profiles import iso_utc, lease_seconds, profile_start

V2X_BASE_ID = 30_000
"""Profile id of a V2X TxProfile: this + the connector (EVSE) number."""
MAX_CURVE_POINTS = 20
"""``v2xFreqWattCurve`` maxItems in the 2.1 schema."""
OFFER_TOLERANCE_W = 1.0
"""A discharge this far above the car's maxDischargePower is rounding (setpoints go out to
0.1 W, curve points to 1 mW), not a breach."""

Curve = tuple[tuple[float, float], ...]
"""(frequency Hz, power W) points, frequencies strictly increasing, + = charge."""


class V2xRefused(ValueError):
    """A V2X command that must not be sent: the charger is not declared bidirectional, is
    not connected over OCPP 2.1, or is not connected at all; or the car on the connector
    offers no bidirectional mode, or less discharge than asked. Nothing left."""


def v2x_profile_id(connector: int) -> int:
    return V2X_BASE_ID + connector


def v2x_stack_level(connector: int) -> int:
    """One above the controller's live setpoint on the same EVSE (see module docstring)."""
    return connector + 1


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_curve(curve: Sequence[tuple[float, float]]) -> Curve:
    """``curve`` as a :data:`Curve`, or ValueError naming what is wrong (1–20 points,
    finite, positive frequencies strictly increasing)."""
    points = tuple((_finite("frequency", f), _finite("power", p)) for f, p in curve)
    if not 1 <= len(points) <= MAX_CURVE_POINTS:
        raise ValueError(f"a v2xFreqWattCurve has 1 to {MAX_CURVE_POINTS} points, "
                         f"got {len(points)}")
    if points[0][0] <= 0:
        raise ValueError(f"frequencies are positive Hz, got {points[0][0]}")
    for (f0, _), (f1, _) in itertools.pairwise(points):
        if f1 <= f0:
            raise ValueError(f"frequencies must increase strictly: {f0} then {f1}")
    return points


def freq_watt_curve(settings: FrequencySettings, *, max_charge_w: float,
                    max_discharge_w: float, base_w: float = 0.0) -> Curve:
    """The droop as a frequency-watt curve of **absolute** power (W, + = charge): the
    one curve builder, used by the frequency service in ``local`` mode.

    OCPP 2.1 reads each point's ``power`` as "power in W to charge (positive) or
    discharge (negative) at specified frequency" — what the charger draws, not a change —
    unless the period also carries ``v2xBaseline`` (then the curve is added to it). We
    send no ``v2xBaseline``, so the curve is built around ``base_w``, what the allocation
    gives the car: ``base_w`` inside the dead band, linear to ``base_w - max_discharge_w``
    at nominal − full activation and ``base_w + max_charge_w`` at nominal + full
    activation, held beyond (the charger holds the end points). Each point is
    ``base_w + droop_fraction(offset) × max``, the same function the central mode uses.
    The frequency service passes ``max_charge_w=0`` (a charger never charges above its
    allocation: its circuit's limit), so above nominal the curve is flat at ``base_w``.

    Four points when the dead band is above 0, three when it is 0 (the two middle points
    coincide)."""
    up = _finite("max_charge_w", max_charge_w)
    down = _finite("max_discharge_w", max_discharge_w)
    base = _finite("base_w", base_w)
    if up < 0 or down < 0:
        raise ValueError("max_charge_w and max_discharge_w are magnitudes (>= 0 W)")
    nominal, band, full = settings.nominal_hz, settings.deadband_hz, settings.full_activation_hz
    # a dead band below the rounding of the frequencies (1 µHz) is none: three points
    offsets = [-full, -band, band, full] if round(band, 6) > 0 else [-full, 0.0, full]
    points: list[tuple[float, float]] = []
    for offset in offsets:
        share = droop_fraction(offset, band, full)
        power = base + share * (up if share > 0 else down)
        points.append((round(nominal + offset, 6), round(power, 3) + 0.0))
    return check_curve(points)


def curve_power_w(curve: Curve, hz: float) -> float:
    """What a charger following ``curve`` draws at ``hz`` (W, + = charge): linear between
    points, the end point's power beyond either end (OCPP 2.1 Q: the curve is
    interpolated linearly)."""
    return curve_at(curve, hz)


@dataclass(frozen=True, slots=True)
class V2xPeriod:
    """One schedule period's V2X content, as it goes on the wire (W, + = charge)."""

    operation_mode: str
    limit_w: float
    """Most it may charge (≥ 0)."""
    discharge_limit_w: float
    """Most it may discharge (≤ 0)."""
    setpoint_w: float | None = None
    curve: Curve | None = None

    def json(self, number_phases: int) -> dict[str, Any]:
        period: dict[str, Any] = {"startPeriod": 0, "limit": self.limit_w,
                                  "numberPhases": number_phases,
                                  "dischargeLimit": self.discharge_limit_w}
        if self.setpoint_w is not None:
            period["setpoint"] = self.setpoint_w
        period["operationMode"] = self.operation_mode
        if self.curve is not None:
            period["v2xFreqWattCurve"] = [{"frequency": f, "power": p} for f, p in self.curve]
        return period


def central_setpoint(setpoint_w: float) -> V2xPeriod:
    """CentralSetpoint at ``setpoint_w`` (negative = discharge), bounded tightly: a
    discharge may not charge and may not discharge more than asked, and the reverse."""
    value = round(_finite("setpoint_w", setpoint_w), 1) + 0.0
    return V2xPeriod("CentralSetpoint", limit_w=max(value, 0.0),
                     discharge_limit_w=min(value, 0.0), setpoint_w=value)


def local_frequency(curve: Sequence[tuple[float, float]]) -> V2xPeriod:
    """LocalFrequency following ``curve``; the limits are the curve's own extremes, so the
    charger can never be asked for more than the curve allows."""
    points = check_curve(curve)
    powers = [p for _, p in points]
    return V2xPeriod("LocalFrequency", limit_w=max(*powers, 0.0),
                     discharge_limit_w=min(*powers, 0.0), curve=points)


def v2x_valid_to(now: datetime, valid_s: float) -> datetime:
    return profile_start(now) + timedelta(seconds=lease_seconds(valid_s))


def v2x_request(*, connector: int, transaction_id: str, period: V2xPeriod, valid_s: float,
                now: datetime, number_phases: int = 3) -> dict[str, Any]:
    """SetChargingProfile (2.1) of a V2X TxProfile: W, kind Absolute from ``now``, ending
    (duration and validTo) after ``valid_s`` seconds, so a charger that stops hearing from
    us stops discharging then."""
    if connector < 1:
        raise ValueError("a V2X profile needs an EVSE >= 1")
    duration = lease_seconds(valid_s)
    start = profile_start(now)
    profile_id = v2x_profile_id(connector)
    schedule = {"id": profile_id, "startSchedule": iso_utc(start), "duration": duration,
                "chargingRateUnit": "W",
                "chargingSchedulePeriod": [period.json(number_phases)]}
    profile = {"id": profile_id, "stackLevel": v2x_stack_level(connector),
               "chargingProfilePurpose": "TxProfile", "chargingProfileKind": "Absolute",
               "validTo": iso_utc(start + timedelta(seconds=duration)),
               "transactionId": transaction_id, "chargingSchedule": [schedule]}
    return {"evseId": connector, "chargingProfile": profile}


def v2x_clear_request(connector: int) -> dict[str, Any]:
    """ClearChargingProfile of the V2X profile only: the controller's setpoint below it
    applies again."""
    return {"chargingProfileId": v2x_profile_id(connector)}
