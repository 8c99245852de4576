"""A simulated charger's smart charging: which profiles it accepts, and what it offers.

The rules are the specs' (OCPP 1.6 §3.13 and 2.0.1 K01), not what any CSMS expects:

* a TxProfile needs a transaction the CSMS knows on its connector (1.6: started, with the
  id the CSMS gave; 2.0.1: reported Started, authorized or not) and, when it names one,
  that transaction's id; otherwise it is Rejected;
* an accepted profile applies until its validTo / duration runs out, connected or not;
  when a TxProfile ends, the TxDefaultProfile applies again (the failsafe a CSMS installs),
  and with no profile at all the charger offers its full rating;
* the configured ``failsafe_current_a`` applies only while offline on a charger that has
  never received a profile.

Composite-schedule arithmetic lives in :mod:`gridshare.sim.profiles`; this module adds the
charger: its rating, its connectors' transactions, and sharing a charger-wide limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gridshare.ocpp_version import OcppVersion
from gridshare.sim.connector import Connector
from gridshare.sim.profiles import ChargingProfile, Period, ProfileStore, Purpose, to_amps

MAX_STACK_LEVEL = 10
MAX_PERIODS = 24
MAX_PROFILES = 20
_INF = math.inf


@dataclass(frozen=True, slots=True)
class Rating:
    """The charger's electrical rating, fixed when it is built."""

    max_current_a: float
    min_current_a: float
    phases: int
    voltage_v: float
    connector_max_a: tuple[float, ...] = ()
    """Per connector (1-based, in order) the most it may carry, A per phase: a DC
    station's CHAdeMO outlet is rated lower than its CCS one. Empty: each connector may
    carry the whole ``max_current_a``."""

    def connector_limit_a(self, connector: int) -> float:
        """A per phase ``connector`` may carry on its own (0: the whole charger)."""
        if 1 <= connector <= len(self.connector_max_a):
            return min(self.max_current_a, self.connector_max_a[connector - 1])
        return self.max_current_a


@dataclass(frozen=True, slots=True)
class ConnectorCaps:
    tx_a: float
    """Limit of the connector's own (Tx / TxDefault) profile, A per phase."""
    charger_a: float
    """Charger-wide limit (Max profile), A per phase."""
    phases: int
    """Phases the current can flow on."""
    next_change: datetime | None


@dataclass(frozen=True, slots=True)
class Offer:
    offered_a: dict[int, float]
    """Per connector id: A per phase offered to the car (0: paused or no transaction)."""
    phases: dict[int, int]
    valid_until: datetime | None
    """When a schedule boundary may change the answer (None: not before something else
    changes)."""


def quantize(a: float, min_a: float) -> float:
    """Pilot resolution 0.1 A (rounded down); below the minimum the pilot pauses."""
    if a == _INF:
        return a
    q = math.floor(max(0.0, a) * 10 + 1e-6) / 10
    return q if q >= min_a - 1e-9 else 0.0


def waterfill(total: float, caps: list[float]) -> list[float]:
    """Share ``total`` max-min fairly among consumers capped at ``caps``."""
    if sum(caps) <= total:
        return list(caps)
    out = [0.0] * len(caps)
    order = sorted(range(len(caps)), key=lambda i: caps[i])
    left, n = total, len(caps)
    for k, i in enumerate(order):
        share = left / (n - k)
        out[i] = min(caps[i], share)
        left -= out[i]
    return out


class SmartCharging:
    """The profiles installed on one charger and the current they let it offer."""

    __slots__ = ("ever_profile", "rating", "store", "version")

    def __init__(self, rating: Rating, version: OcppVersion) -> None:
        self.rating = rating
        self.version: OcppVersion = version
        self.store = ProfileStore()
        self.ever_profile = False
        """Whether any profile was ever accepted (the configured failsafe then no longer
        applies: the installed profiles do)."""

    def rejection(self, profile: ChargingProfile, connectors: Sequence[Connector]) -> str:
        """Why the charger refuses ``profile`` ("" if it accepts it)."""
        c = profile.connector
        if c < 0 or c > len(connectors):
            return "unknown connector"
        if profile.purpose is Purpose.EXTERNAL:
            return "ChargingStationExternalConstraints cannot be set by the CSMS"
        if profile.purpose is Purpose.MAX and c != 0:
            return "Max profile only on connector 0"
        if profile.stack_level < 0 or profile.stack_level > MAX_STACK_LEVEL:
            return "stack level out of range"
        if not profile.periods or len(profile.periods) > MAX_PERIODS:
            return "number of periods out of range"
        if profile.periods[0].start_s != 0:
            return "first period must start at 0"
        if profile.unit not in ("A", "W"):
            return "unit"
        if profile.purpose is Purpose.TX:
            if c == 0:
                return "TxProfile needs a connector"
            tx = connectors[c - 1].tx
            # a transaction the CSMS can name: 1.6 once StartTransaction was answered (the
            # id comes from the CSMS), 2.0.1 from its Started event at plug-in, even while
            # authorization is pending (the profile then applies once energy may flow)
            if tx is None or tx.ended or tx.id is None:
                return "no transaction"
            if profile.transaction_id is None:
                if self.version != "ocpp1.6":
                    return "TxProfile without transactionId"
            elif profile.transaction_id != tx.id:
                return "transaction id mismatch"
        replaces = any(
            p.id == profile.id
            or (
                p.purpose is profile.purpose
                and p.stack_level == profile.stack_level
                and p.connector == c
            )
            for p in self.store.all
        )
        if not replaces and len(self.store) >= MAX_PROFILES:
            return "too many profiles"
        return ""

    def install(self, profile: ChargingProfile, connectors: Sequence[Connector]) -> str:
        """Install ``profile`` if the rules allow it; return the rejection reason or ""."""
        reason = self.rejection(profile, connectors)
        if not reason:
            self.store.install(profile)
            self.ever_profile = True
        return reason

    def caps(
        self,
        conn: Connector | None,
        connector: int,
        t: datetime,
        *,
        failsafe_a: float | None,
        ref: datetime | None = None,
    ) -> ConnectorCaps:
        """Limits on ``connector`` (0: the whole charger) at ``t``; ``failsafe_a`` is the
        configured failsafe when the charger is offline (None when online)."""
        rating = self.rating
        tx = conn.tx if conn is not None else None
        running = tx if tx is not None and tx.active else None
        lims = self.store.limits(
            connector,
            t,
            tx_id=running.id if running is not None else None,
            tx_start=running.started_at if running is not None else None,
            ref=ref,
        )
        phases = rating.phases
        tx_phases = lims.tx.number_phases if lims.tx is not None else None
        if tx_phases is not None and tx_phases < phases:
            phases = 1
        if conn is not None and conn.ev is not None and conn.ev.phases < phases:
            phases = 1
        cap = rating.connector_limit_a(connector)
        if lims.tx is not None:
            cap = min(cap, to_amps(lims.tx, rating.voltage_v, phases))
        total = rating.max_current_a
        if lims.max is not None:
            total = min(total, to_amps(lims.max, rating.voltage_v, rating.phases))
        if failsafe_a is not None and not self.ever_profile:
            cap = min(cap, failsafe_a)
        return ConnectorCaps(cap, total, phases, lims.next_change)

    def offer(
        self, connectors: Sequence[Connector], t: datetime, *, failsafe_a: float | None
    ) -> Offer:
        """What each connector offers at ``t``: its own cap, with the charger-wide limit
        shared max-min fairly among the connectors whose transaction allows charging."""
        min_a = self.rating.min_current_a
        caps: list[float] = []
        sharing: list[Connector] = []
        total = _INF
        offered: dict[int, float] = {}
        phases: dict[int, int] = {}
        next_change: datetime | None = None
        for conn in connectors:
            cid = conn.id
            c = self.caps(conn, cid, t, failsafe_a=failsafe_a)
            phases[cid] = c.phases
            offered[cid] = 0.0
            change = c.next_change
            if change is not None and (next_change is None or change < next_change):
                next_change = change
            # a connector whose own limit is below the pilot minimum is paused and takes
            # no share of the charger-wide limit
            if conn.charging_allowed and quantize(c.tx_a, min_a) > 0:
                sharing.append(conn)
                caps.append(c.tx_a)
                total = min(total, c.charger_a)
        if sharing:
            shares = waterfill(total, caps)
            for conn, a in zip(sharing, shares, strict=True):
                offered[conn.id] = quantize(a, min_a)
        return Offer(offered, phases, next_change)

    def composite_schedule(
        self,
        connectors: Sequence[Connector],
        connector: int,
        duration_s: int,
        unit: str,
        t0: datetime,
        *,
        failsafe_a: float | None,
    ) -> list[Period]:
        """What the charger will offer on ``connector`` (0: the whole charger) from ``t0``
        for ``duration_s`` seconds if nothing changes, in ``unit`` ("A" or "W")."""
        rating = self.rating
        end = t0 + timedelta(seconds=duration_s)
        conn = connectors[connector - 1] if connector > 0 else None
        periods: list[Period] = []
        t = t0
        while t < end:
            c = self.caps(conn, connector, t, failsafe_a=failsafe_a, ref=t0)
            amps = c.charger_a if connector == 0 else min(c.tx_a, c.charger_a)
            amps = quantize(amps, 0.0 if connector == 0 else rating.min_current_a)
            value = amps if unit == "A" else amps * rating.voltage_v * c.phases
            value = math.floor(value * 10 + 1e-6) / 10
            nph = c.phases if c.phases != 3 else None
            start_s = round((t - t0).total_seconds())
            if not periods or periods[-1].limit != value or periods[-1].number_phases != nph:
                periods.append(Period(start_s, value, nph))
            if c.next_change is None or c.next_change >= end:
                break
            t = c.next_change if c.next_change > t else t + timedelta(seconds=1)
        return periods
