"""A simulated bidirectional (V2G) charger's power stage: OCPP 2.1 V2X operation modes.

A :class:`~gridshare.sim.charger.SimCharger` built with ``v2x=True`` (it must speak
``ocpp2.1``) owns one :class:`V2gStage`. While the TxProfile in force on a connector has a
period with a V2X ``operationMode``, the stage — not the plain charging physics — decides
the power, every physics step:

* ``CentralSetpoint``: follow ``setpoint`` (W, negative = discharge), kept inside
  ``dischargeLimit`` ≤ P ≤ ``limit``;
* ``LocalFrequency``: read the grid frequency from the injected ``grid_hz`` callable and
  follow the ``v2xFreqWattCurve`` (linear between points, end points held) on its own;
* ``ChargingOnly`` / ``Idle`` / anything else: the plain charging physics
  (``Idle``: 0 W).

The car's limits always apply: at most its on-board charger's power either way (and its
``max_discharge_w`` when discharging), no discharge at all from a car without BPT
(``EV.bpt`` False: it holds 0 W, as a real charger ignores a discharge the car cannot
do), no discharge at or below ``min_soc``, no charge when full. The car tells the CSMS
what it offers in its NotifyEVChargingNeeds (:func:`v2x_needs`). Power follows its target at a
finite rate (full power in ``ramp_s``, ~1 s by default, as real inverters do). The meter
then reports signed power: ``Power.Active.Import`` and ``Power.Active.Export`` (both ≥ 0,
as the spec has them) and ``Energy.Active.Export.Register``.

Independent of the CSMS adapter on purpose (its own curve interpolation): the simulator
is the counterpart that tests gridshare, so it shares none of its code.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gridshare.sim.connector import Connector
from gridshare.sim.ev import EV
from gridshare.sim.profiles import Period

if TYPE_CHECKING:
    from gridshare.sim.smart_charging import SmartCharging

V2X_MODES = frozenset({"CentralSetpoint", "LocalFrequency", "Idle"})
"""Operation modes this stage drives; any other leaves the plain charging physics."""


def follow_curve(curve: tuple[tuple[float, float], ...], hz: float) -> float:
    """The curve's power at ``hz``: linear between points, the end point's beyond."""
    if hz <= curve[0][0]:
        return curve[0][1]
    for (f0, p0), (f1, p1) in itertools.pairwise(curve):
        if hz <= f1:
            return p0 + (p1 - p0) * (hz - f0) / (f1 - f0) if f1 > f0 else p1
    return curve[-1][1]


def v2x_needs(ev: EV, stage: V2gStage | None, phases_used: int) -> dict[str, Any]:
    """The OCPP 2.1 fields of a car's NotifyEVChargingNeeds ``chargingNeeds`` (merged
    into the 2.0.1 ones): what it can do. On a V2G charger a BPT car requests AC_BPT,
    offers it beside its plain AC mode, with its power limits and V2X energy range in
    ``v2xChargingParameters``; any other car offers its plain AC mode only."""
    plain = "AC_three_phase" if phases_used == 3 else "AC_single_phase"
    if stage is None or not ev.bpt:
        return {"availableEnergyTransfer": [plain]}
    rated = stage.rated_w(ev)
    discharge = rated if ev.max_discharge_w is None else min(rated, ev.max_discharge_w)
    capacity_wh = ev.capacity_kwh * 1000.0
    return {
        "requestedEnergyTransfer": "AC_BPT",
        "availableEnergyTransfer": [plain, "AC_BPT"],
        "controlMode": "DynamicControl",
        "v2xChargingParameters": {
            "maxChargePower": round(rated, 1),
            "maxDischargePower": round(discharge, 1),
            "evMinV2XEnergyRequest": round((stage.min_soc - ev.soc) * capacity_wh, 1),
            "evMaxV2XEnergyRequest": round((ev.target_soc - ev.soc) * capacity_wh, 1),
            "targetSoC": round(ev.target_soc * 100),
        },
    }


@dataclass(slots=True)
class _State:
    power_w: float = 0.0
    """Signed power now, + = from the grid into the car."""
    export_wh: float = 0.0
    """Export register (Wh fed back since the simulator started)."""
    mode: str | None = None


class V2gStage:
    """Per connector V2X power of one bidirectional charger (see module docstring)."""

    def __init__(self, *, voltage_v: float, phases: int, max_current_a: float,
                 grid_hz: Callable[[], float] | None = None, ramp_s: float = 1.0,
                 min_soc: float = 0.2) -> None:
        if ramp_s < 0 or not 0.0 <= min_soc <= 1.0:
            raise ValueError("ramp_s must be >= 0 and min_soc a fraction 0–1")
        self.voltage_v = voltage_v
        self.phases = phases
        self.max_current_a = max_current_a
        self.grid_hz = grid_hz
        """The grid frequency as the charger measures it (LocalFrequency); None: nominal
        is unknown and the charger holds 0 W in that mode."""
        self.ramp_s = ramp_s
        self.min_soc = min_soc
        self._states: dict[int, _State] = {}

    def state(self, connector: int) -> _State:
        st = self._states.get(connector)
        if st is None:
            st = self._states[connector] = _State()
        return st

    def power_w(self, connector: int) -> float:
        """Signed power on ``connector`` now (+ = charging, − = discharging)."""
        st = self._states.get(connector)
        return st.power_w if st is not None else 0.0

    def export_wh(self, connector: int) -> float:
        st = self._states.get(connector)
        return st.export_wh if st is not None else 0.0

    def mode(self, connector: int) -> str | None:
        """The V2X operation mode in force on ``connector`` (None: plain charging)."""
        st = self._states.get(connector)
        return st.mode if st is not None else None

    def rated_w(self, ev: EV) -> float:
        """The car's power through this charger either way (W, all phases used)."""
        return min(ev.max_current_a, self.max_current_a) * self.voltage_v * \
            ev.phases_used(self.phases)

    def period_in_force(self, smart: SmartCharging, conn: Connector,
                        t: datetime) -> Period | None:
        """The TxProfile period in force on ``conn`` at ``t`` (the profile the charger's
        own stacking rules pick), if it carries a V2X operation mode."""
        tx = conn.tx
        if tx is None or not tx.active or conn.ev is None:
            return None
        lims = smart.store.limits(conn.id, t, tx_id=tx.id, tx_start=tx.started_at)
        if lims.tx is None:
            return None
        for profile in smart.store.all:
            if profile.id == lims.tx.profile_id:
                period, _ = profile.evaluate(t, tx.started_at or t)
                if period is not None and period.operation_mode in V2X_MODES:
                    return period
        return None

    def _target_w(self, period: Period, rated_w: float) -> float:
        mode = period.operation_mode
        if mode == "CentralSetpoint":
            target = period.setpoint if period.setpoint is not None else 0.0
        elif mode == "LocalFrequency" and period.freq_watt_curve and self.grid_hz is not None:
            hz = self.grid_hz()
            target = follow_curve(period.freq_watt_curve, hz) if math.isfinite(hz) else 0.0
        else:
            target = 0.0
        upper = period.limit if math.isfinite(period.limit) else rated_w
        lower = period.discharge_limit if period.discharge_limit is not None else -rated_w
        return max(lower, -rated_w, min(target, upper, rated_w))

    def step(self, smart: SmartCharging, conn: Connector, t: datetime, dt_s: float) -> bool:
        """Advance ``conn`` by ``dt_s`` seconds if a V2X period is in force (True), else
        leave it to the plain charging physics (False, and the stage forgets its power)."""
        period = self.period_in_force(smart, conn, t)
        st = self.state(conn.id)
        ev = conn.ev
        if period is None or ev is None:
            st.power_w = 0.0
            st.mode = None
            return False
        st.mode = period.operation_mode
        n = ev.phases_used(self.phases)
        rated_w = self.rated_w(ev)
        target = self._target_w(period, rated_w)
        capacity_wh = ev.capacity_kwh * 1000.0
        if target < 0 and (not ev.bpt or ev.soc <= self.min_soc + 1e-12):
            target = 0.0
        if target < 0 and ev.max_discharge_w is not None:
            target = max(target, -ev.max_discharge_w)
        if target > 0 and ev.full:
            target = 0.0
        step_w = rated_w / self.ramp_s * dt_s if self.ramp_s > 0 else math.inf
        power = st.power_w + max(-step_w, min(step_w, target - st.power_w))
        if dt_s > 0:
            # never past the SoC floor or the target SoC within this step
            if power < 0:
                room_wh = max(0.0, (ev.soc - self.min_soc) * capacity_wh)
                power = max(power, -room_wh * 3600.0 / dt_s)
            elif power > 0:
                room_wh = max(0.0, (ev.target_soc - ev.soc) * capacity_wh)
                power = min(power, room_wh * 3600.0 / dt_s)
            energy_wh = power * dt_s / 3600.0
            ev.soc = min(1.0, max(0.0, ev.soc + energy_wh / capacity_wh))
            ev.energy_charged_wh += energy_wh
            if energy_wh > 0:
                conn.energy_wh += energy_wh
            else:
                st.export_wh -= energy_wh
        st.power_w = power
        conn.phases_used = n
        conn.drawn_a = max(power, 0.0) / (self.voltage_v * n)
        return True
