"""An OpenEVSE box's MQTT status topics in, gridshare events out: pure, no I/O.

The box publishes each value on its own topic under its base (``<base>/amp`` in mA,
``voltage`` V, ``power`` W, ``pilot`` A, ``state`` (1 no car, 2 car connected, 3 charging,
4-11 faults, 254 sleeping, 255 disabled), ``vehicle`` 0/1, ``session_energy`` Wh,
``total_energy`` kWh) as plain numbers. :class:`BoxStatus` folds them into the events the
OCPP adapter publishes for a charger, so the controller treats a box like any charger:
a bad value is rejected (a reason, counted by the caller) and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from gridshare.adapters.meters.parse import Rejected, number, parse_json
from gridshare.events import (
    ChargerOffline,
    ChargerOnline,
    ConnectorStatus,
    Event,
    MeterReading,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)

TOPICS = ("amp", "voltage", "power", "pilot", "state", "vehicle", "session_energy",
          "total_energy", "status")
"""Sub-topics read under the box's base (``status`` is its online/offline will)."""

CONNECTOR = 1
"""An OpenEVSE box has one connector."""

CHARGING = 3
FAULTS = frozenset(range(4, 12))
PAUSED = frozenset({254, 255})
KNOWN_STATES = frozenset({0, 1, 2, CHARGING, *FAULTS, *PAUSED})

LIMITS = {"amp": 200_000.0, "voltage": 1000.0, "power": 200_000.0, "pilot": 100.0,
          "session_energy": 1e9, "total_energy": 1e9}
"""Largest plausible value per topic (unit as published): above it is a wrong unit."""


def connector_status(state: int, vehicle: bool) -> ConnectorStatus:
    """The OCPP-normalised status of a box's state and vehicle flag."""
    if state in FAULTS:
        return ConnectorStatus.FAULTED
    if not vehicle:
        return ConnectorStatus.AVAILABLE
    if state == CHARGING:
        return ConnectorStatus.CHARGING
    if state in PAUSED:
        return ConnectorStatus.SUSPENDED_EVSE
    return ConnectorStatus.SUSPENDED_EV  # car connected, not drawing (state 2)


@dataclass(slots=True)
class BoxStatus:
    """What one box last told us, and the events each new value calls for."""

    charger: str
    online: bool = False
    last_seen: datetime | None = None
    state: int | None = None
    vehicle: bool | None = None
    status: ConnectorStatus | None = None
    session_id: str | None = None
    sessions: int = 0
    total_wh: float | None = None
    session_wh: float | None = None

    def message(self, sub: str, payload: bytes, at: datetime) -> list[Event] | Rejected:
        """The events one message on ``<base>/<sub>`` calls for, or why it is bad."""
        if sub == "status":
            text = payload.decode("utf-8", "replace").strip()
            if text == "offline":
                return self.silent(at, "the box's MQTT will: offline")
            if text != "online":
                return Rejected(f"status: not online/offline: {text[:40]!r}")
            return self._seen(at)
        doc = parse_json(payload)
        if isinstance(doc, Rejected):
            return Rejected(f"{sub}: {doc.reason}")
        value = number(doc, sub)
        if isinstance(value, Rejected):
            return value
        if value < 0 or value > LIMITS.get(sub, 1e9):
            return Rejected(f"{sub}: out of range: {value:g}")
        if sub == "state":
            if value != int(value) or int(value) not in KNOWN_STATES:
                return Rejected(f"state: unknown state {value:g}")
            out = self._seen(at)
            self.state = int(value)
            return out + self._status(at)
        if sub == "vehicle":
            if value not in (0, 1):
                return Rejected(f"vehicle: not 0 or 1: {value:g}")
            out = self._seen(at)
            return out + self._vehicle(value == 1, at) + self._status(at)
        out = self._seen(at)
        tx = self.session_id
        if sub == "amp":
            return [*out, MeterReading(self.charger, CONNECTOR, at, tx,
                                       current_a=(value / 1000.0, None, None))]
        if sub == "power":
            return [*out, MeterReading(self.charger, CONNECTOR, at, tx, power_w=value)]
        if sub == "voltage":
            return [*out, MeterReading(self.charger, CONNECTOR, at, tx, voltage_v=value)]
        if sub == "total_energy":
            self.total_wh = value * 1000.0
            return [*out, MeterReading(self.charger, CONNECTOR, at, tx, energy_wh=value * 1000.0)]
        if sub == "session_energy":
            self.session_wh = value
        return out  # pilot, session_energy: kept, no event of their own

    def silent(self, at: datetime, reason: str) -> list[Event]:
        """The box went away (its will, or silence past the allowance)."""
        if not self.online:
            return []
        self.online = False
        return [ChargerOffline(self.charger, at, reason)]

    def _seen(self, at: datetime) -> list[Event]:
        self.last_seen = at
        if self.online:
            return []
        self.online = True
        return [ChargerOnline(self.charger, at)]

    def _vehicle(self, plugged: bool, at: datetime) -> list[Event]:
        was, self.vehicle = self.vehicle, plugged
        if plugged and not was:
            self.sessions += 1
            self.session_id = f"{self.charger}-{int(at.timestamp())}-{self.sessions}"
            return [SessionStarted(self.charger, CONNECTOR, self.session_id, at,
                                   meter_start_wh=self.total_wh)]
        if not plugged and was and self.session_id is not None:
            tx, self.session_id = self.session_id, None
            return [SessionStopped(self.charger, CONNECTOR, tx, at,
                                   meter_stop_wh=self.total_wh, reason="EVDisconnected")]
        return []

    def _status(self, at: datetime) -> list[Event]:
        if self.state is None or self.vehicle is None:
            return []
        status = connector_status(self.state, self.vehicle)
        if status == self.status:
            return []
        self.status = status
        return [StatusChanged(self.charger, CONNECTOR, status, at,
                              error_code=f"OpenEVSE state {self.state}"
                              if status is ConnectorStatus.FAULTED else "")]
