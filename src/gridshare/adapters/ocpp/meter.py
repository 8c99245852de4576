"""MeterValues (1.6 and 2.0.1) → validated :class:`MeterReading` events.

Rejection is per sampled value: one NaN in a message does not cost the good samples next
to it. A sampled timestamp more than 60 s ahead of our clock, or one we cannot parse,
rejects that timestamp's samples only. Pure: the caller publishes and counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gridshare.events import MeterReading, MeterSample
from gridshare.ocpp_version import OcppVersion

FUTURE_TOLERANCE = timedelta(seconds=60)

_ENERGY = "Energy.Active.Import.Register"
_ENERGY_EXPORT = "Energy.Active.Export.Register"
"""Energy fed back (V2G discharge): kept apart from the import register, for billing."""
_POWER = "Power.Active.Import"
_EXPORT = "Power.Active.Export"
"""A V2G charger discharging reports it: the reading's ``power_w`` is then import − export."""
_CURRENT = "Current.Import"
_VOLTAGE = "Voltage"
_SOC = "SoC"

_PHASE_INDEX = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}

_ENERGY_SCALE = {"Wh": 1.0, "kWh": 1000.0}
_POWER_SCALE = {"W": 1.0, "kW": 1000.0}
_DEFAULT_UNIT = {_ENERGY: "Wh", _ENERGY_EXPORT: "Wh", _POWER: "W", _EXPORT: "W",
                 _CURRENT: "A", _VOLTAGE: "V", _SOC: "Percent"}


def parse_timestamp(value: Any) -> datetime | None:
    """ISO 8601 → aware UTC datetime; a missing zone is taken as UTC (common in the field)."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    if at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    return at.astimezone(UTC)


@dataclass(slots=True)
class MeterParse:
    readings: list[MeterReading] = field(default_factory=list)
    rejects: list[str] = field(default_factory=list)
    """One counter key per rejected sampled value (or per rejected timestamp group)."""


@dataclass(slots=True)
class _Sample:
    energy_wh: float | None = None
    energy_export_wh: float | None = None
    power_total_w: float | None = None
    power_phase_w: list[float] = field(default_factory=list)
    export_w: float | None = None
    current: list[float | None] = field(default_factory=lambda: [None, None, None])
    current_unphased: float | None = None
    voltages: list[float] = field(default_factory=list)
    soc: float | None = None

    def empty(self) -> bool:
        return (self.energy_wh is None and self.energy_export_wh is None
                and self.power_total_w is None
                and self.export_w is None and not self.power_phase_w
                and self.current == [None, None, None]
                and self.current_unphased is None and not self.voltages and self.soc is None)


def _number(sv: Mapping[str, Any], protocol: OcppVersion) -> float | str:
    """The value as a float with the 2.0.1 multiplier applied, or a reject reason."""
    raw = sv.get("value")
    if protocol == OcppVersion.V16:
        if sv.get("format") == "SignedData":
            return "meter_signed_data"
        if not isinstance(raw, str):
            return "meter_unparsable"
        try:
            value = float(raw)
        except ValueError:
            return "meter_unparsable"
        multiplier = 0
    else:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return "meter_unparsable"
        value = float(raw)
        uom = sv.get("unit_of_measure") or {}
        multiplier = uom.get("multiplier", 0) if isinstance(uom, Mapping) else 0
        if isinstance(multiplier, bool) or not isinstance(multiplier, int) or abs(
                multiplier) > 9:
            return "meter_bad_unit"
    if not math.isfinite(value):
        return "meter_not_finite"
    value *= 10.0 ** multiplier
    if not math.isfinite(value):
        return "meter_not_finite"
    return value


def _unit(sv: Mapping[str, Any], protocol: OcppVersion, measurand: str) -> str:
    if protocol == OcppVersion.V16:
        unit = sv.get("unit")
    else:
        uom = sv.get("unit_of_measure")
        unit = uom.get("unit") if isinstance(uom, Mapping) else None
    return unit if isinstance(unit, str) else _DEFAULT_UNIT.get(measurand, "")


def _apply(sample: _Sample, sv: Mapping[str, Any], protocol: OcppVersion) -> str | None:
    """Fold one sampled value into ``sample``; return a reject reason or None."""
    measurand = sv.get("measurand") or _ENERGY
    if measurand not in _DEFAULT_UNIT:
        return None  # other measurands are fine, we just do not use them
    value = _number(sv, protocol)
    if isinstance(value, str):
        return value
    unit = _unit(sv, protocol, measurand)
    phase = sv.get("phase")
    if measurand == _SOC:
        if not 0 <= value <= 100:
            return "meter_out_of_range"
        sample.soc = value
        return None
    if value < 0:
        return "meter_negative"
    if measurand == _ENERGY:
        if unit not in _ENERGY_SCALE:
            return "meter_bad_unit"
        sample.energy_wh = value * _ENERGY_SCALE[unit]
    elif measurand == _ENERGY_EXPORT:
        if unit not in _ENERGY_SCALE:
            return "meter_bad_unit"
        if phase is None:  # a phase-wise register is not used (totals only, as import)
            sample.energy_export_wh = value * _ENERGY_SCALE[unit]
    elif measurand == _POWER:
        if unit not in _POWER_SCALE:
            return "meter_bad_unit"
        if phase in _PHASE_INDEX:
            sample.power_phase_w.append(value * _POWER_SCALE[unit])
        else:
            sample.power_total_w = value * _POWER_SCALE[unit]
    elif measurand == _EXPORT:
        if unit not in _POWER_SCALE:
            return "meter_bad_unit"
        if phase is None:  # a phase-wise export is not used (totals only)
            sample.export_w = value * _POWER_SCALE[unit]
    elif measurand == _CURRENT:
        if unit != "A":
            return "meter_bad_unit"
        if phase in _PHASE_INDEX:
            sample.current[_PHASE_INDEX[phase]] = value
        elif phase is None:
            sample.current_unphased = value
        # "N" (neutral) is not a load we share
    elif measurand == _VOLTAGE:
        if unit != "V":
            return "meter_bad_unit"
        sample.voltages.append(value)
    return None


def parse_meter_values(meter_values: Sequence[Mapping[str, Any]], *, protocol: OcppVersion,
                       charger: str, connector: int, transaction_id: str | None,
                       now: datetime) -> MeterParse:
    """One MeterReading per sampled timestamp that has at least one usable value.

    Phases: Current.Import with phase L1/L2/L3 fills that phase; without a phase it is taken
    as L1 unless phased values are present. Power per phase is summed unless a total is given.
    """
    out = MeterParse()
    limit = now + FUTURE_TOLERANCE
    for element in meter_values:
        if not isinstance(element, Mapping):
            out.rejects.append("meter_unparsable")
            continue
        values = element.get("sampled_value") or ()
        at = parse_timestamp(element.get("timestamp"))
        if at is None:
            out.rejects.append("meter_bad_timestamp")
            continue
        if at > limit:
            out.rejects.append("meter_future_timestamp")
            continue
        sample = _Sample()
        for sv in values:
            reason = _apply(sample, sv, protocol) if isinstance(sv, Mapping) else "meter_unparsable"
            if reason is not None:
                out.rejects.append(reason)
        if sample.empty():
            continue
        current = list(sample.current)
        if current == [None, None, None] and sample.current_unphased is not None:
            current[0] = sample.current_unphased
        power = sample.power_total_w
        if power is None and sample.power_phase_w:
            power = sum(sample.power_phase_w)
        if sample.export_w is not None:  # signed: negative while discharging
            power = (power or 0.0) - sample.export_w
        voltage = sum(sample.voltages) / len(sample.voltages) if sample.voltages else None
        out.readings.append(MeterReading(
            charger=charger, connector=connector, at=at, transaction_id=transaction_id,
            power_w=power, current_a=(current[0], current[1], current[2]), voltage_v=voltage,
            energy_wh=sample.energy_wh, soc_percent=sample.soc,
            energy_export_wh=sample.energy_export_wh))
    return out


def energy_register_wh(meter_values: Sequence[Mapping[str, Any]], *, protocol: OcppVersion,
                       now: datetime) -> float | None:
    """The last valid Energy.Active.Import.Register in ``meter_values`` (start/stop meter)."""
    parsed = parse_meter_values(meter_values, protocol=protocol, charger="", connector=0,
                                transaction_id=None, now=now)
    for reading in reversed(parsed.readings):
        if reading.energy_wh is not None:
            return reading.energy_wh
    return None


# --- meters that are read over OCPP (``source: ocpp`` in the site file) ---------------------


@dataclass(frozen=True, slots=True)
class OcppMeter:
    """A site meter read from a charge point's MeterValues: a charger's connector 0 (its
    whole supply) or a dedicated meter that connects as a charge point of its own."""

    meter: str
    charger: str
    connector: int = 0
    phases: int = 3
    """Phases of the group it feeds: a total power is split evenly over them."""
    dedicated: bool = False
    """Not a charger of the site: accepted as a charge point, never sent a profile, and
    its own events (boot, status) mean nothing to the controller."""


def meter_sample(reading: MeterReading, meter: OcppMeter, *, voltage_v: float,
                 ) -> MeterSample | None:
    """A reading of the meter's charge point as the group meter's sample (A per phase).

    Current.Import per phase is taken as is; a phase it leaves out counts as its largest
    (a meter that says less must not lower the headroom). Without currents, the total
    Power.Active.Import is split evenly over the group's phases. None: nothing usable."""
    values = [v for v in reading.current_a if v is not None]
    if values:
        top = max(values)
        if meter.phases == 1:
            return MeterSample(meter.meter, reading.at, (top, 0.0, 0.0))
        a = [top if v is None else v for v in reading.current_a]
        return MeterSample(meter.meter, reading.at, (a[0], a[1], a[2]))
    if reading.power_w is not None:
        if meter.phases == 1:
            return MeterSample(meter.meter, reading.at,
                               (reading.power_w / voltage_v, 0.0, 0.0))
        amps = reading.power_w / (voltage_v * 3)
        return MeterSample(meter.meter, reading.at, (amps, amps, amps))
    return None
