"""DC fast-charging stations and the cars that charge at them.

A DC plaza is what demand response is about: twenty 150 kW stations are a 3 MW load that
a utility may ask to shed within seconds. Two things make a DC station behave unlike an
AC wallbox, and both are modelled here:

* it is limited in kW: the cabinet (e.g. 150 kW) is shared by its outlets, each rated for
  its type (CCS 150 kW, CHAdeMO 50 kW). Its AC side is a 3-phase load on the site, so the
  simulator keeps its bookkeeping in A per phase at the site voltage, as every simulated
  charger does: a TxProfile in W (a DC station's native unit) or in A is obeyed alike;
* the car's power does not jump: after a new limit it reacts with a lag (up to 5 s), then
  ramps (10–20 kW/s up, several times faster down), and its battery tapers the power at
  high state of charge.

The station speaks the same real OCPP 1.6J / 2.0.1 as any :class:`SimCharger`; its
MeterValues carry Power.Active.Import, SoC and the energy register.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from gridshare.sim.charger import SimCharger
from gridshare.sim.ev import EV

if TYPE_CHECKING:
    from gridshare.core.topology import Charger

_EPS = 1e-12
DC_PHASES = 3
"""A DC station's rectifier loads all three phases of its feed."""


def kw_to_a(kw: float, voltage_v: float) -> float:
    """A per phase a 3-phase load of ``kw`` draws at phase voltage ``voltage_v``."""
    return kw * 1000.0 / (voltage_v * DC_PHASES)


def a_to_kw(amps: float, voltage_v: float) -> float:
    """kW of a 3-phase load drawing ``amps`` per phase at phase voltage ``voltage_v``."""
    return amps * voltage_v * DC_PHASES / 1000.0


@dataclass(slots=True)
class DcEV(EV):
    """A car on a DC charger: its power follows the offered limit after ``setpoint_lag_s``
    (the connector's business), then ramps at ``ramp_up_kw_s`` / ``ramp_down_kw_s``
    instead of jumping; its battery accepts ``max_power_kw`` up to ``taper_start_soc``,
    then less and less (``taper_end_fraction`` of it at 100 %).

    ``max_current_a`` is derived from ``max_power_kw`` at ``nominal_voltage_v``; the steps
    convert with the station's voltage. Energy bookkeeping stays exact: what a step
    returns, integrated over ``dt_s``, is what the battery stored.
    """

    min_current_a: float = 0.0
    """A DC car has no pilot minimum: it takes whatever the station allows."""
    taper_start_soc: float = 0.55
    taper_end_fraction: float = 0.1
    """DC curves taper early and far: half power at 80 %, a tenth at 100 %."""
    max_power_kw: float = 150.0
    """What the battery accepts at low state of charge."""
    ramp_up_kw_s: float = 15.0
    ramp_down_kw_s: float = 60.0
    """A car sheds power faster than it takes it up (its BMS and the charger's converter
    obey a lower limit at once; a higher one is approached carefully)."""
    nominal_voltage_v: float = 230.0
    ramp_a: float = 0.0
    """A per phase the car draws now: where its ramp stands."""

    def __post_init__(self) -> None:
        if self.max_power_kw <= 0 or self.nominal_voltage_v <= 0:
            raise ValueError("max_power_kw and nominal_voltage_v must be > 0")
        if self.ramp_up_kw_s <= 0 or self.ramp_down_kw_s <= 0:
            raise ValueError("ramp_up_kw_s and ramp_down_kw_s must be > 0")
        self.max_current_a = kw_to_a(self.max_power_kw, self.nominal_voltage_v)
        self.phases = DC_PHASES
        EV.__post_init__(self)

    @property
    def power_kw(self) -> float:
        """What the car draws now, at its nominal voltage."""
        return a_to_kw(self.ramp_a, self.nominal_voltage_v)

    def step(self, dt_s: float, offered_a: float, voltage_v: float, phases: int) -> float:
        """Ramp towards min(offer, charging curve) for ``dt_s`` seconds; return the A per
        phase drawn during the step (what the meter integrates)."""
        if self.full or voltage_v <= 0:
            self.ramp_a = 0.0  # the battery management ends the charge at once
            return 0.0
        target = 0.0
        if offered_a >= self.min_current_a - _EPS:
            target = max(0.0, min(offered_a, self.curve_limit_a()))
        drawn = self.ramp_a
        if dt_s > 0:
            per_kw = kw_to_a(1.0, voltage_v)
            if target > drawn:
                drawn = min(target, drawn + self.ramp_up_kw_s * per_kw * dt_s)
            else:
                drawn = max(target, drawn - self.ramp_down_kw_s * per_kw * dt_s)
        self.ramp_a = drawn
        if drawn <= 0.0 or dt_s <= 0:
            return drawn
        energy_wh = drawn * voltage_v * DC_PHASES * dt_s / 3600.0
        room_wh = (self.target_soc - self.soc) * self.capacity_kwh * 1000.0
        if energy_wh >= room_wh:
            energy_wh = max(0.0, room_wh)
            drawn = energy_wh * 3600.0 / (voltage_v * DC_PHASES * dt_s)
            self.soc = self.target_soc
            self.ramp_a = 0.0
        else:
            self.soc += energy_wh / (self.capacity_kwh * 1000.0)
        self.energy_charged_wh += energy_wh
        return drawn

    @classmethod
    def random_dc(
        cls,
        rng: random.Random,
        *,
        arrival: datetime | None = None,
        dwell_s: float | None = None,
        soc_range: tuple[float, float] = (0.1, 0.5),
        target_soc_range: tuple[float, float] = (0.8, 0.9),
        capacities_kwh: tuple[float, ...] = (58.0, 77.0, 100.0),
        max_powers_kw: tuple[float, ...] = (50.0, 100.0, 150.0, 150.0),
        ramp_up_range_kw_s: tuple[float, float] = (10.0, 20.0),
        lag_range_s: tuple[float, float] = (1.0, 5.0),
        nominal_voltage_v: float = 230.0,
        id: str = "",
    ) -> DcEV:
        """A plausible DC car drawn from ``rng`` (deterministic for a seeded rng); it sheds
        power four times as fast as it ramps up."""
        soc = rng.uniform(*soc_range)
        up = rng.uniform(*ramp_up_range_kw_s)
        return cls(
            capacity_kwh=rng.choice(capacities_kwh),
            soc=soc,
            target_soc=min(1.0, max(soc, rng.uniform(*target_soc_range))),
            max_power_kw=rng.choice(max_powers_kw),
            ramp_up_kw_s=up,
            ramp_down_kw_s=4.0 * up,
            setpoint_lag_s=rng.uniform(*lag_range_s),
            nominal_voltage_v=nominal_voltage_v,
            arrival=arrival,
            departure=(
                arrival + timedelta(seconds=dwell_s)
                if arrival is not None and dwell_s is not None
                else None
            ),
            id=id,
        )


@dataclass(frozen=True, slots=True)
class DcConnector:
    """One outlet of a DC station: its plug type and the most it delivers."""

    type: str
    """"CCS" or "CHAdeMO" (the site file's connector ``type``)."""
    max_kw: float


DC_TYPES = frozenset({"CCS", "CHAdeMO"})


def is_dc(charger: Charger) -> bool:
    """A site file's charger is a DC station: 3-phase, with a CCS or CHAdeMO connector."""
    return charger.phases == DC_PHASES and any(
        c.type is not None and str(c.type) in DC_TYPES for c in charger.connectors)


CCS_150 = DcConnector("CCS", 150.0)
CHADEMO_50 = DcConnector("CHAdeMO", 50.0)


class DcStation(SimCharger):
    """A kW-limited DC charging station (default: 150 kW, one CCS 150 kW and one CHAdeMO
    50 kW outlet sharing the cabinet). Everything else is :class:`SimCharger`'s: the real
    OCPP, profiles in W or A, meter values, faults."""

    def __init__(
        self,
        id: str,
        url: str,
        *,
        max_kw: float = 150.0,
        outlets: tuple[DcConnector, ...] = (CCS_150, CHADEMO_50),
        voltage_v: float = 230.0,
        min_current_a: float = 6.0,
        **kwargs: Any,
    ) -> None:
        if not (math.isfinite(max_kw) and max_kw > 0):
            raise ValueError(f"max_kw must be a positive number, got {max_kw}")
        if not outlets or any(not (o.max_kw > 0) for o in outlets):
            raise ValueError("a DC station needs outlets with a positive max_kw")
        for name in ("phases", "max_current_a", "connectors", "connector_max_a"):
            if name in kwargs:
                raise TypeError(f"DcStation sets {name} from max_kw and outlets")
        kwargs.setdefault("model", "SimDC")
        super().__init__(
            id,
            url,
            phases=DC_PHASES,
            max_current_a=kw_to_a(max_kw, voltage_v),
            min_current_a=min_current_a,
            connectors=len(outlets),
            connector_max_a=tuple(kw_to_a(o.max_kw, voltage_v) for o in outlets),
            voltage_v=voltage_v,
            **kwargs,
        )
        self.max_kw = float(max_kw)
        self.outlets = outlets

    def outlet(self, connector: int) -> DcConnector:
        """The outlet behind ``connector`` (1-based)."""
        self._conn(connector)  # names the station and connector when out of range
        return self.outlets[connector - 1]

    def power_kw(self, connector: int | None = None) -> float:
        """kW drawn in the last step by ``connector`` (None: the whole station)."""
        amps = self.meter_a() if connector is None else self.drawn_a(connector)
        return sum(amps) * self.voltage_v / 1000.0

    def settle(self, connector: int) -> None:
        """Let the car on ``connector`` draw what the station offers now, with no lag and
        no ramp: demos and benchmarks start with cars that were already charging (a car
        that arrives later ramps up from nothing)."""
        conn = self._conn(connector)
        ev = conn.ev
        if not isinstance(ev, DcEV):
            raise TypeError(f"{self.id} connector {connector} has no DC car to settle")
        self._refresh()
        conn.pending.clear()
        conn.ev_limit_a = conn.offered_a
        ev.ramp_a = min(conn.offered_a, ev.curve_limit_a()) if not ev.full else 0.0

    def offered_kw(self, connector: int) -> float:
        """kW the station offers the car on ``connector`` now (0: paused or idle)."""
        return a_to_kw(self.offered_a(connector), self.voltage_v)
