"""A simulated charger's configuration keys, in OCPP 1.6 terms.

1.6 GetConfiguration / ChangeConfiguration use these keys directly; OCPP 2.0.1 device-model
variables map onto them (see :mod:`gridshare.sim.ocpp201`). Only the sampling and heartbeat
intervals can be changed; the smart-charging limits are what the simulator enforces.
"""

from __future__ import annotations

from dataclasses import dataclass

from gridshare.sim.smart_charging import MAX_PERIODS, MAX_PROFILES, MAX_STACK_LEVEL

MEASURANDS = (
    "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Current.Offered,Voltage,SoC"
)


@dataclass(slots=True)
class Configuration:
    heartbeat_interval_s: float
    meter_interval_s: float
    """MeterValueSampleInterval: 0 sends no periodic samples."""
    connectors: int

    def items(self) -> dict[str, tuple[str, bool]]:
        """key → (value, read-only)."""
        return {
            "HeartbeatInterval": (str(round(self.heartbeat_interval_s)), False),
            "MeterValueSampleInterval": (str(round(self.meter_interval_s)), False),
            "NumberOfConnectors": (str(self.connectors), True),
            "ChargeProfileMaxStackLevel": (str(MAX_STACK_LEVEL), True),
            "ChargingScheduleAllowedChargingRateUnit": ("Current,Power", True),
            "ChargingScheduleMaxPeriods": (str(MAX_PERIODS), True),
            "MaxChargingProfilesInstalled": (str(MAX_PROFILES), True),
            "MeterValuesSampledData": (MEASURANDS, True),
        }

    def change(self, key: str, value: str) -> str:
        """Apply a ChangeConfiguration; returns "Accepted", "Rejected" or "NotSupported"."""
        items = self.items()
        if key not in items:
            return "NotSupported"
        if items[key][1]:
            return "Rejected"
        try:
            number = float(value)
        except ValueError:
            return "Rejected"
        if number < 0:
            return "Rejected"
        if key == "HeartbeatInterval":
            self.heartbeat_interval_s = number or self.heartbeat_interval_s
        else:
            self.meter_interval_s = number
        return "Accepted"
