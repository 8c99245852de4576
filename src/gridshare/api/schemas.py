"""The shapes of the API's answers, for the OpenAPI document (``/openapi.json``, ``/docs``).

The routes build their JSON in :mod:`gridshare.api.views` and send it as bytes (cached,
shared by every client); these models describe it. ``tests/api`` checks the served JSON
against them, so the document cannot drift from what is sent.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

Phases = list[float | None]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitSourceOut(_Out):
    source: str = Field(description="static (the site file), operator, demand_response, ...")
    max_current: float | None = Field(description="A per phase")
    max_power: float | None = Field(description="kW")
    until: str | None


class OverrideOut(_Out):
    max_current: float | None
    max_power: float | None
    until: str | None


class Group(_Out):
    id: str
    limit: float | None = Field(description="Tightest A-per-phase limit in force (static "
                                "and every other source); null: only a kW limit.")
    limit_power: float | None = Field(description="Tightest kW limit in force, or null.")
    current: Phases = Field(description="A per phase [L1, L2, L3] flowing now: the group's "
                            "meter when it follows a fresh one, else the sum of its "
                            "chargers' own readings.")
    power: float | None = Field(description="kW of `current` at the site voltage.")
    available: Phases | None = Field(description="A per phase left for its chargers after "
                                     "the uncontrolled load (last allocation).")
    allocated: Phases | None = Field(description="A per phase the last allocation gave its "
                                     "chargers.")
    counted: Phases = Field(description="A per phase the limit is checked against: every "
                            "connector at its worst case plus the uncontrolled load.")
    uncontrolled: Phases
    phases: int
    policy: str
    meter: str | None
    meter_stale: bool = Field(description="Its meter is quiet: the group is at 0 A headroom.")
    override: OverrideOut | None = Field(description="The operator's override, if any.")
    limits: list[LimitSourceOut]
    children: list[Group]
    chargers: list[str] = Field(description="Ids of the chargers directly in this group.")


class Site(_Out):
    site: str
    at: str
    voltage: float
    policy: str
    chargers_configured: int
    chargers_online: int
    groups: list[Group] = Field(description="The top-level groups, each with its children.")


class RejectedOut(_Out):
    current: float | None
    at: str | None
    detail: str


class SessionNow(_Out):
    transaction_id: str | None
    started: str | None
    arrival: str | None
    energy_wh: float | None = Field(description="Delivered in this session so far.")
    power_w: float | None
    soc_percent: float | None
    energy_needed_kwh: float | None
    departure: str | None


class EvOfferOut(_Out):
    """What the car offered for V2X in its OCPP 2.1 NotifyEVChargingNeeds (W, Wh)."""

    bidirectional: bool = Field(description="It offers a *_BPT mode: it may discharge.")
    modes: list[str] = Field(description="availableEnergyTransfer (its requested mode "
                             "alone when it sent none).")
    requested: str | None = Field(description="requestedEnergyTransfer")
    control_mode: str | None = Field(description="ScheduledControl or DynamicControl")
    max_discharge_w: float | None = Field(description="maxDischargePower: the most it "
                                          "discharges (discharges are clipped to it).")
    min_discharge_w: float | None
    max_charge_w: float | None
    min_charge_w: float | None
    min_v2x_energy_wh: float | None = Field(description="evMinV2XEnergyRequest")
    max_v2x_energy_wh: float | None = Field(description="evMaxV2XEnergyRequest")
    target_soc: int | None = Field(description="%")


class ConnectorOut(_Out):
    connector: int
    status: str | None = Field(description="OCPP status (Available, Charging, ...).")
    active: bool = Field(description="A car is plugged in and may want power.")
    setpoint: float | None = Field(description="A: the setpoint in force (accepted, inside "
                                   "its lease); null: the charger's failsafe/default.")
    lease_end: str | None = Field(description="When the setpoint in force ends unless "
                                  "renewed.")
    target: float | None = Field(description="A the last allocation wants.")
    counted: float | None = Field(description="A every limit counts it at (worst case).")
    measured: Phases | None = Field(description="A per phase of its last reading.")
    measured_max: float | None
    in_flight: list[float | None]
    uncertain: bool = Field(description="A command with an unknown outcome may be in force.")
    held: bool = Field(description="An increase waits for others' decreases to settle.")
    violator: bool
    rejected: RejectedOut | None
    max_current: float | None
    ev_offer: EvOfferOut | None = Field(description="The car's V2X offer (OCPP 2.1), while "
                                        "it is plugged in; null: it said nothing (the site "
                                        "file's v2x decides).")
    session: SessionNow | None


class ConnectionOut(_Out):
    online: bool
    since: str | None
    last_seen: str | None
    boots: int


class Charger(_Out):
    id: str
    group: str
    status: str = Field(description="offline, online, or its busiest connector's status.")
    connection: ConnectionOut
    protocol: str | None = Field(description="ocpp1.6 or ocpp2.0.1, once it has booted.")
    vendor: str | None
    model: str | None
    phases: int
    phase: str | None
    max_current: float | None
    max_power: float | None
    min_current: float | None
    failsafe_current: float | None
    priority: int = Field(description="The priority the policy orders it by now.")
    priority_override: int | None = Field(description="The operator's, if set.")
    connectors: list[ConnectorOut]


class PendingCharger(_Out):
    """A charger that connected without being declared: answered Pending, never
    controlled, until an operator adopts it (``POST /api/v1/chargers``)."""

    id: str
    registration: str = Field(description="Always pending.")
    vendor: str | None = Field(description="From its BootNotification (null before one).")
    model: str | None
    protocol: str = Field(description="ocpp1.6 or ocpp2.0.1")
    remote_address: str = Field(description="host:port of its latest connection.")
    first_seen: str
    last_seen: str
    connected: bool
    boots: int


class Chargers(_Out):
    site: str
    at: str
    chargers: list[Charger | PendingCharger] = Field(
        description="Declared chargers; with ?registration=pending or all, pending ones too.")


class PendingChargers(_Out):
    at: str
    pending_unknown: bool = Field(description="Whether unknown chargers are held pending "
                                  "(the site file's ocpp.pending_unknown) or refused.")
    pending: list[PendingCharger]


class SessionOut(_Out):
    charger: str
    connector: int
    transaction_id: str
    id_tag: str | None
    started: str | None
    stopped: str | None
    meter_start_wh: float | None
    meter_stop_wh: float | None
    energy_wh: float | None = Field(description="Stop minus start register; for a running "
                                    "session, delivered so far (null if unknown).")
    stop_reason: str | None


class Sessions(_Out):
    at: str
    sessions: list[SessionOut]


class CommandOut(_Out):
    at: str | None
    charger: str
    connector: int = Field(description="0 for a charger-wide command (failsafe).")
    kind: str = Field(description="decrease, increase, renew, retry, release, failsafe")
    current: float
    previous: float | None
    result: str = Field(description="accepted, rejected, timeout, offline, ...")
    latency_ms: float


class Commands(_Out):
    commands: list[CommandOut]


class AlarmOut(_Out):
    at: str | None
    kind: str
    group: str | None
    phase: str | None
    load: float | None
    limit: float | None
    message: str
    cleared: bool


class Alarms(_Out):
    alarms: list[AlarmOut]
