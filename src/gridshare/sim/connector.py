"""One connector of a simulated charger: its state, its transaction, and its physics.

The physics is the part a meter would see: the car follows the offered current after its
own lag, draws what its battery accepts, and the energy register integrates it. Which
current is offered is decided elsewhere (:mod:`gridshare.sim.smart_charging`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from gridshare.sim.ev import EV

PHASE_NAMES = ("L1", "L2", "L3")
PhaseCurrents = tuple[float, float, float]


class Status(StrEnum):
    """Connector status in OCPP 1.6 terms (2.0.1 maps them to connector status and
    transaction chargingState)."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"


@dataclass(slots=True, eq=False)
class Transaction:
    """A charging session on one connector, from plug-in to stop."""

    connector: int
    id_tag: str
    plugged_at: datetime
    local_id: str
    """Station-generated id (the transactionId in OCPP 2.0.1)."""
    id: str | None = None
    """Transaction id the CSMS knows: 1.6 from StartTransaction.conf, 2.0.1 ``local_id``."""
    started_at: datetime | None = None
    """When energy transfer was allowed (authorized); None while waiting for it."""
    meter_start_wh: float = 0.0
    seq_no: int = 0
    active: bool = False
    ended: bool = False
    offline_start: bool = False
    stop_reason: str | None = None
    wire_state: str | None = None
    """Last charging state reported on the wire (OCPP 2.0.1)."""
    started_event: asyncio.Event | None = None
    stopped_event: asyncio.Event | None = None


@dataclass(slots=True)
class Connector:
    """State of one connector (1-based ``id``)."""

    id: int
    status: Status = Status.AVAILABLE
    ev: EV | None = None
    tx: Transaction | None = None
    offered_a: float = 0.0
    ev_limit_a: float = 0.0
    """What the car currently follows (the offered current, delayed by its lag)."""
    pending: deque[tuple[float, float]] = field(default_factory=deque)
    """(simulated time, offered A) changes the car has not followed yet."""
    drawn_a: float = 0.0
    phases_avail: int = 3
    phases_used: int = 3
    energy_wh: float = 0.0

    @property
    def charging_allowed(self) -> bool:
        """A car is plugged and its transaction allows energy transfer."""
        return self.ev is not None and self.tx is not None and self.tx.active

    def offer(self, value_a: float, now_ts: float) -> None:
        """Offer ``value_a``; the car follows after its setpoint lag."""
        self.offered_a = value_a
        if self.ev is not None:
            self.pending.append((now_ts + self.ev.setpoint_lag_s, value_a))

    def advance(self, dt_s: float, now_ts: float, voltage_v: float) -> Status | None:
        """Let ``dt_s`` simulated seconds pass; return the status the connector should
        now show (None: unchanged or no transaction)."""
        ev = self.ev
        if ev is None:
            return None
        pending = self.pending
        while pending and pending[0][0] <= now_ts:
            self.ev_limit_a = pending.popleft()[1]
        drawn = ev.step(dt_s, self.ev_limit_a, voltage_v, self.phases_avail)
        self.drawn_a = drawn
        self.phases_used = ev.phases_used(self.phases_avail)
        self.energy_wh += drawn * voltage_v * self.phases_used * dt_s / 3600.0
        if self.tx is None or not self.tx.active:
            return None
        if self.offered_a <= 0:
            new = Status.SUSPENDED_EVSE
        elif drawn > 0:
            new = Status.CHARGING
        elif ev.full or self.ev_limit_a > 0:
            new = Status.SUSPENDED_EV
        else:
            return None
        return new if new is not self.status else None

    def phase_vector(self, charger_phases: int, wired_phase: str) -> PhaseCurrents:
        """A drawn on (L1, L2, L3): a 1-phase charger (or car) draws on ``wired_phase``."""
        a = self.drawn_a
        if not a:
            return (0.0, 0.0, 0.0)
        if self.phases_used == 3:
            return (a, a, a)
        idx = PHASE_NAMES.index(wired_phase) if charger_phases == 1 else 0
        vec = [0.0, 0.0, 0.0]
        vec[idx] = a
        return (vec[0], vec[1], vec[2])
