"""Typed events that adapters (OCPP, meters, operators, demand response) hand the controller.

Adapters decode and validate the outside world and publish these on the bus; the
controller folds them into site state and re-allocates. Times are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from gridshare.core.topology import ConnectorKey
from gridshare.core.v2x_offer import V2xOffer


class ConnectorStatus(StrEnum):
    """Union of OCPP 1.6 ChargePointStatus and 2.0.1 ConnectorStatusEnum, normalised."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    OCCUPIED = "Occupied"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


@dataclass(frozen=True, slots=True)
class ChargerBooted:
    charger: str
    at: datetime
    protocol: str
    """"ocpp1.6", "ocpp2.0.1" or "openevse" (a box found to have restarted)."""
    vendor: str = ""
    model: str = ""
    frame_seq: int | None = None
    """Inbound-frame sequence number of the BootNotification (see
    :attr:`gridshare.drivers.CommandOutcome.answer_seq`): answers with a lower number came
    before the reboot and are void; None when the adapter does not number frames."""


@dataclass(frozen=True, slots=True)
class ChargerOnline:
    charger: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ChargerOffline:
    """The connection closed or the charger was silent past its heartbeat allowance."""

    charger: str
    at: datetime
    reason: str = ""


@dataclass(frozen=True, slots=True)
class StatusChanged:
    charger: str
    connector: int
    status: ConnectorStatus
    at: datetime
    error_code: str = ""


@dataclass(frozen=True, slots=True)
class SessionStarted:
    charger: str
    connector: int
    transaction_id: str
    at: datetime
    id_tag: str = ""
    meter_start_wh: float | None = None
    """The energy register at the start (Wh); None: the charger sent none (an OCPP 2.x
    ``Started`` event without a meter value, a start we missed) -- unknown, never 0,
    which would bill the whole register as the session's energy."""


@dataclass(frozen=True, slots=True)
class SessionStopped:
    charger: str
    connector: int
    transaction_id: str
    at: datetime
    meter_stop_wh: float | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ChargingNeeds:
    """What the EV told us it needs (2.0.1/2.1 NotifyEVChargingNeeds, or an app)."""

    charger: str
    connector: int
    at: datetime
    energy_needed_kwh: float | None = None
    departure: datetime | None = None
    max_current: float | None = None
    v2x_offer: V2xOffer | None = None
    """Over OCPP 2.1: what the car offers for V2X (its modes, discharge limits), kept
    while it is plugged in; None over 2.0.1 or from an app (the site file decides)."""


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One validated sample from a charger's MeterValues (any field may be missing)."""

    charger: str
    connector: int
    at: datetime
    transaction_id: str | None = None
    power_w: float | None = None
    current_a: tuple[float | None, float | None, float | None] = (None, None, None)
    voltage_v: float | None = None
    energy_wh: float | None = None
    """The import register (energy drawn), Wh."""
    soc_percent: float | None = None
    energy_export_wh: float | None = None
    """The export register (energy fed back: V2G discharge), Wh; None: not sent (unknown,
    never 0)."""


@dataclass(frozen=True, slots=True)
class GroupMeterReading:
    """A site/sub-meter reading of a whole group's draw (A per phase)."""

    group: str
    at: datetime
    current_a: tuple[float, float, float]
    includes_chargers: bool = True
    """True when the meter also measures our chargers (the usual 'follow a meter' case)."""


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One reading of a meter declared in the site file (``meters:``), in A per phase on
    the site's phases (a W/kW total already split). Sources publish it; the controller
    applies it to every group whose ``meter:`` names it."""

    meter: str
    at: datetime
    current_a: tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class LimitChanged:
    """A group limit from a source other than the static config (DR, operator, ...)."""

    group: str
    at: datetime
    source: str
    max_current: float | None = None
    max_power_kw: float | None = None
    until: datetime | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ConnectorCapsChanged:
    """Per-connector caps from one source (demand response), in A per phase.

    ``caps`` is the whole set from ``source``: a connector absent from it has no cap from
    that source, and an empty mapping clears them all. Every source's cap applies: the
    tightest wins, below the EV's own maximum; a cap below a connector's minimum pauses it.
    """

    at: datetime
    source: str
    caps: Mapping[ConnectorKey, float]


@dataclass(frozen=True, slots=True)
class PriorityChanged:
    """A run-time priority for a charger (an operator's), in place of the site file's
    until changed again; ``priority`` None restores the configured one."""

    charger: str
    at: datetime
    priority: int | None
    source: str = "operator"


@dataclass(frozen=True, slots=True)
class ProfileRejected:
    charger: str
    connector: int
    at: datetime
    detail: str = ""


Event = (
    ChargerBooted | ChargerOnline | ChargerOffline | StatusChanged | SessionStarted
    | SessionStopped | ChargingNeeds | MeterReading | GroupMeterReading | MeterSample
    | LimitChanged | ConnectorCapsChanged | PriorityChanged | ProfileRejected
)


@dataclass(slots=True)
class EventCounters:
    """Rejections are counted, never stored: the operator sees how much bad input arrived."""

    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
