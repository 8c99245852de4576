"""A simulated electric vehicle: battery, AC charging curve, stay at the charger.

Pure (no I/O, no clock): :meth:`EV.step` advances the battery by ``dt_s`` seconds at a
given offered current and says how much current the car actually drew. The charger
(:mod:`gridshare.sim.charger`) owns the setpoint lag; :attr:`EV.setpoint_lag_s` tells it
how sluggish this particular car is.

Energy bookkeeping is exact and loss-free: the energy returned by the steps
(``drawn_a * voltage_v * phases_used * dt_s / 3600`` Wh) equals the rise in stored
energy (``Δsoc * capacity_kwh * 1000`` Wh), so a meter integrating drawn current agrees
with the battery.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

_EPS = 1e-12


@dataclass(slots=True)
class EV:
    """One car. ``soc`` and ``target_soc`` are fractions (0–1), not percent."""

    capacity_kwh: float
    soc: float
    max_current_a: float = 16.0
    """A per phase the on-board charger can take."""
    phases: int = 3
    """Phases the on-board charger can use (1 or 3)."""
    target_soc: float = 1.0
    arrival: datetime | None = None
    departure: datetime | None = None
    setpoint_lag_s: float = 2.0
    """Seconds between a new offered current and the car following it (1–5 s typical)."""
    min_current_a: float = 6.0
    """Below this pilot current (IEC 61851) the car does not charge at all."""
    taper_start_soc: float = 0.8
    """Full current up to this SoC, then a linear taper."""
    taper_end_fraction: float = 0.2
    """Fraction of ``max_current_a`` the curve allows at 100 % SoC."""
    id: str = ""
    energy_charged_wh: float = 0.0
    """Energy delivered to this car so far (all steps)."""
    bpt: bool = True
    """ISO 15118-20 bidirectional power transfer: on a V2G (OCPP 2.1) charger the car
    offers AC_BPT in its charging needs and can discharge. False: a car that only
    charges (it offers no BPT mode; a discharge setpoint leaves it at 0 W)."""
    max_discharge_w: float | None = None
    """The most it discharges (W, all phases), sent as ``maxDischargePower``; None: its
    on-board charger's rating either way."""

    def __post_init__(self) -> None:
        if self.capacity_kwh <= 0:
            raise ValueError("capacity_kwh must be > 0")
        if self.phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        if not 0.0 <= self.soc <= 1.0 or not 0.0 <= self.target_soc <= 1.0:
            raise ValueError("soc and target_soc are fractions between 0 and 1")
        if self.max_current_a < 0 or self.setpoint_lag_s < 0:
            raise ValueError("max_current_a and setpoint_lag_s must be >= 0")
        if self.max_discharge_w is not None and not self.max_discharge_w >= 0:
            raise ValueError("max_discharge_w must be >= 0 W")

    @property
    def energy_needed_kwh(self) -> float:
        """Energy still needed to reach ``target_soc``."""
        return max(0.0, self.target_soc - self.soc) * self.capacity_kwh

    @property
    def full(self) -> bool:
        return self.soc >= self.target_soc - _EPS

    def curve_limit_a(self) -> float:
        """A per phase the battery accepts at the present SoC (charging curve)."""
        if self.soc <= self.taper_start_soc:
            return self.max_current_a
        span = max(1.0 - self.taper_start_soc, _EPS)
        frac = 1.0 - (1.0 - self.taper_end_fraction) * (self.soc - self.taper_start_soc) / span
        return self.max_current_a * max(self.taper_end_fraction, min(1.0, frac))

    def phases_used(self, phases: int) -> int:
        """Phases actually loaded when the charger provides ``phases``."""
        return 1 if min(self.phases, phases) < 3 else 3

    def step(self, dt_s: float, offered_a: float, voltage_v: float, phases: int) -> float:
        """Charge for ``dt_s`` seconds; return the current drawn per phase (A).

        The result is ≤ ``offered_a``, ≤ ``max_current_a`` and ≤ the charging curve; it is 0
        when the car is full or the offer is below ``min_current_a``. In the step that
        reaches the target the car draws only what fits, so the battery lands exactly on
        ``target_soc``.
        """
        if self.full or offered_a < self.min_current_a - _EPS or voltage_v <= 0:
            return 0.0
        drawn_a = max(0.0, min(offered_a, self.curve_limit_a()))
        if drawn_a <= 0.0 or dt_s <= 0:
            return drawn_a
        n = self.phases_used(phases)
        power_w = drawn_a * voltage_v * n
        energy_wh = power_w * dt_s / 3600.0
        room_wh = (self.target_soc - self.soc) * self.capacity_kwh * 1000.0
        if energy_wh >= room_wh:
            energy_wh = max(0.0, room_wh)
            drawn_a = energy_wh * 3600.0 / (voltage_v * n * dt_s)
            self.soc = self.target_soc
        else:
            self.soc += energy_wh / (self.capacity_kwh * 1000.0)
        self.energy_charged_wh += energy_wh
        return drawn_a

    @classmethod
    def random(
        cls,
        rng: random.Random,
        *,
        arrival: datetime | None = None,
        dwell_s: float | None = None,
        soc_range: tuple[float, float] = (0.1, 0.6),
        target_soc_range: tuple[float, float] = (0.8, 1.0),
        capacities_kwh: tuple[float, ...] = (40.0, 58.0, 77.0, 100.0),
        max_currents_a: tuple[float, ...] = (16.0, 32.0),
        three_phase_share: float = 0.8,
        lag_range_s: tuple[float, float] = (1.0, 5.0),
        id: str = "",
    ) -> EV:
        """A plausible car drawn from ``rng`` (deterministic for a seeded rng)."""
        soc = rng.uniform(*soc_range)
        target = max(soc, rng.uniform(*target_soc_range))
        return cls(
            capacity_kwh=rng.choice(capacities_kwh),
            soc=soc,
            target_soc=min(1.0, target),
            max_current_a=rng.choice(max_currents_a),
            phases=3 if rng.random() < three_phase_share else 1,
            arrival=arrival,
            departure=(
                arrival + timedelta(seconds=dwell_s)
                if arrival is not None and dwell_s is not None
                else None
            ),
            setpoint_lag_s=rng.uniform(*lag_range_s),
            id=id,
        )
