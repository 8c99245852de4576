"""OCPP smart-charging profiles as a charger applies them (pure, version-neutral).

Both OCPP 1.6 and 2.0.1 profiles are parsed into :class:`ChargingProfile`; a
:class:`ProfileStore` holds what a charger has installed and answers "what limit applies
on connector *c* at time *t*, and until when". The rules follow the specs:

* Within a purpose the highest ``stackLevel`` whose schedule covers *t* wins; when it runs
  out (``duration``, ``validTo``) the next lower one applies.
* A TxProfile (for the running transaction) overrides TxDefaultProfiles; a TxDefault set on
  the connector overrides one set on connector 0.
* The charger-wide Max profile (1.6 ChargePointMaxProfile / 2.0.1
  ChargingStationMaxProfile, connector 0) caps everything; the charger takes the minimum.
* Same purpose + stack level (+ connector) or the same id replaces an installed profile.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

DAY_S = 86_400
WEEK_S = 7 * DAY_S


class Purpose(StrEnum):
    MAX = "ChargePointMaxProfile"
    """1.6 ChargePointMaxProfile and 2.0.1 ChargingStationMaxProfile."""
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"
    EXTERNAL = "ChargingStationExternalConstraints"

    @classmethod
    def parse(cls, value: str) -> Purpose:
        purpose = _PURPOSES.get(value)
        return cls(value) if purpose is None else purpose


_PURPOSES: dict[str, Purpose] = {p.value: p for p in Purpose}
_PURPOSES["ChargingStationMaxProfile"] = Purpose.MAX


@dataclass(frozen=True, slots=True)
class Period:
    start_s: int
    limit: float
    number_phases: int | None = None
    operation_mode: str | None = None
    """OCPP 2.1 V2X: CentralSetpoint, LocalFrequency, … (None: plain charging)."""
    setpoint: float | None = None
    """OCPP 2.1, in the profile's unit, negative = discharge."""
    discharge_limit: float | None = None
    """OCPP 2.1, ≤ 0."""
    freq_watt_curve: tuple[tuple[float, float], ...] | None = None
    """OCPP 2.1 LocalFrequency: (Hz, W) points, + = charge."""


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    """One installed profile, whichever OCPP version it came from."""

    id: int
    connector: int
    """1.6 connectorId / 2.0.1 evseId; 0 is the whole charger."""
    purpose: Purpose
    stack_level: int
    kind: str
    """"Absolute", "Relative" or "Recurring"."""
    unit: str
    """"A" (per phase) or "W" (total)."""
    periods: tuple[Period, ...]
    installed_at: datetime
    duration_s: int | None = None
    start_schedule: datetime | None = None
    recurrency: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: str | None = None
    min_rate: float | None = None

    def schedule_start(self, t: datetime, relative_start: datetime) -> datetime:
        """Start of the schedule instance that is current at ``t``."""
        if self.kind == "Relative":
            return relative_start
        base = self.start_schedule or self.installed_at
        if self.kind == "Recurring":
            period_s = WEEK_S if self.recurrency == "Weekly" else DAY_S
            k = math.floor((t - base).total_seconds() / period_s)
            return base + timedelta(seconds=k * period_s)
        return base

    def evaluate(
        self, t: datetime, relative_start: datetime
    ) -> tuple[Period | None, datetime | None]:
        """The period in force at ``t`` (None if the profile does not apply) and the next
        instant the answer can change (None: never)."""
        valid_from = self.valid_from
        if valid_from is not None and t < valid_from:
            return None, valid_from
        # the earliest instant the answer can change (None: never)
        nxt = self.valid_to
        if nxt is not None and t >= nxt:
            return None, None
        kind = self.kind
        start = self.schedule_start(t, relative_start)
        if kind == "Recurring":
            period_s = WEEK_S if self.recurrency == "Weekly" else DAY_S
            change = start + timedelta(seconds=period_s)
            if nxt is None or change < nxt:
                nxt = change
        if t < start:
            return None, start if nxt is None or start < nxt else nxt
        offset_s = (t - start).total_seconds()
        duration_s = self.duration_s
        if duration_s is not None:
            if offset_s >= duration_s:
                return None, nxt if kind == "Recurring" else None
            change = start + timedelta(seconds=duration_s)
            if nxt is None or change < nxt:
                nxt = change
        current: Period | None = None
        for p in self.periods:
            if p.start_s <= offset_s:
                current = p
            else:
                change = start + timedelta(seconds=p.start_s)
                if nxt is None or change < nxt:
                    nxt = change
                break
        return current, nxt


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit from one profile, still in the profile's unit."""

    value: float
    unit: str
    number_phases: int | None
    profile_id: int


@dataclass(frozen=True, slots=True)
class ConnectorLimits:
    max: Limit | None
    """Charger-wide Max profile in force (None: none)."""
    tx: Limit | None
    """TxProfile, or TxDefaultProfile when no TxProfile applies (None: none)."""
    next_change: datetime | None


class ProfileStore:
    """The profiles installed on one charger."""

    __slots__ = ("_profiles",)

    def __init__(self) -> None:
        self._profiles: list[ChargingProfile] = []

    def __len__(self) -> int:
        return len(self._profiles)

    @property
    def all(self) -> tuple[ChargingProfile, ...]:
        return tuple(self._profiles)

    def install(self, profile: ChargingProfile) -> None:
        """Add ``profile``, replacing one with the same id or the same purpose, stack level
        and connector (the OCPP replacement rules)."""
        # in place: a new list per install would be one more young object for the
        # garbage collector to scan, a thousand times per burst of a large site
        profiles = self._profiles
        for i in range(len(profiles) - 1, -1, -1):
            p = profiles[i]
            if p.id == profile.id or (
                p.purpose is profile.purpose
                and p.stack_level == profile.stack_level
                and p.connector == profile.connector
            ):
                del profiles[i]
        profiles.append(profile)

    def clear(
        self,
        *,
        profile_id: int | None = None,
        connector: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> int:
        """Remove matching profiles; return how many went. With ``profile_id`` only that
        one is considered; otherwise every given criterion must match."""
        keep: list[ChargingProfile] = []
        for p in self._profiles:
            if profile_id is not None:
                hit = p.id == profile_id
            else:
                hit = (
                    (connector is None or p.connector == connector)
                    and (purpose is None or p.purpose is purpose)
                    and (stack_level is None or p.stack_level == stack_level)
                )
            if not hit:
                keep.append(p)
        removed = len(self._profiles) - len(keep)
        self._profiles = keep
        return removed

    def drop_tx_profiles(self, connector: int) -> int:
        """A TxProfile lives only as long as its transaction."""
        return self.clear(connector=connector, purpose=Purpose.TX)

    def limits(
        self,
        connector: int,
        t: datetime,
        *,
        tx_id: str | None,
        tx_start: datetime | None,
        ref: datetime | None = None,
    ) -> ConnectorLimits:
        """Limits on ``connector`` at ``t``. ``tx_id``/``tx_start`` describe the running
        transaction (None: none); without one, Relative schedules start at ``ref``
        (default ``t``), i.e. as if a transaction started then."""
        rel = tx_start if tx_start is not None else (ref or t)
        # the candidates of each step, in installation order (one pass)
        maxes: list[ChargingProfile] = []
        txs: list[ChargingProfile] = []
        own_defaults: list[ChargingProfile] = []
        charger_defaults: list[ChargingProfile] = []
        for p in self._profiles:
            purpose = p.purpose
            if purpose is Purpose.TX:
                if (
                    tx_id is not None
                    and p.connector == connector
                    and p.transaction_id in (None, tx_id)
                ):
                    txs.append(p)
            elif purpose is Purpose.TX_DEFAULT:
                if p.connector == connector:
                    own_defaults.append(p)
                if p.connector == 0:
                    charger_defaults.append(p)
            elif purpose is Purpose.MAX and p.connector == 0:
                maxes.append(p)
        max_lim, next_change = _best(maxes, t, None, None)
        tx_lim, next_change = _best(txs, t, rel, next_change)
        if tx_lim is None:
            tx_lim, next_change = _best(own_defaults, t, rel, next_change)
        if tx_lim is None:
            tx_lim, next_change = _best(charger_defaults, t, rel, next_change)
        return ConnectorLimits(max_lim, tx_lim, next_change)


def _best(
    cands: Iterable[ChargingProfile],
    t: datetime,
    rel_start: datetime | None,
    next_change: datetime | None,
) -> tuple[Limit | None, datetime | None]:
    """The limit of the highest stack level in force at ``t`` among ``cands`` (Relative
    schedules start at ``rel_start``, default: their installation), and ``next_change``
    lowered to the earliest instant one of them can change."""
    found: Limit | None = None
    found_level = -1
    for p in cands:
        period, nxt = p.evaluate(t, rel_start or p.installed_at)
        if nxt is not None and (next_change is None or nxt < next_change):
            next_change = nxt
        if period is not None and p.stack_level > found_level:
            found_level = p.stack_level
            found = Limit(period.limit, p.unit, period.number_phases, p.id)
    return found, next_change


def to_amps(limit: Limit, voltage_v: float, phases: int) -> float:
    """A per phase for ``limit`` when ``phases`` phases carry the current."""
    if limit.unit == "W":
        return limit.value / (voltage_v * max(1, phases))
    return limit.value


def parse_time(value: str | None) -> datetime | None:
    """OCPP date-time string to an aware datetime (naive means UTC)."""
    if value is None:
        return None
    return _parse_time(value)


@functools.lru_cache(maxsize=1024)
def _parse_time(value: str) -> datetime:
    # cached: a CSMS sends the same few instants (schedule start, validTo) to every
    # charger of a site in one burst, and datetimes are immutable
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def format_time(t: datetime) -> str:
    """Aware datetime to the OCPP wire form with a Z suffix (millisecond precision)."""
    t = t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _periods(raw: Iterable[Mapping[str, Any]]) -> tuple[Period, ...]:
    periods = [
        Period(
            start_s=int(p["startPeriod"]),
            # 2.1 may leave the limit out when the operation mode does not need it
            limit=float(p["limit"]) if p.get("limit") is not None else math.inf,
            number_phases=int(p["numberPhases"]) if p.get("numberPhases") else None,
            operation_mode=p.get("operationMode"),
            setpoint=float(p["setpoint"]) if p.get("setpoint") is not None else None,
            discharge_limit=(
                float(p["dischargeLimit"]) if p.get("dischargeLimit") is not None else None
            ),
            freq_watt_curve=(
                tuple((float(q["frequency"]), float(q["power"])) for q in p["v2xFreqWattCurve"])
                if p.get("v2xFreqWattCurve")
                else None
            ),
        )
        for p in raw
    ]
    periods.sort(key=lambda p: p.start_s)
    return tuple(periods)


def _common(raw: Mapping[str, Any], sched: Mapping[str, Any]) -> dict[str, Any]:
    tx = raw.get("transactionId")
    min_rate = sched.get("minChargingRate")
    return {
        "purpose": Purpose.parse(raw["chargingProfilePurpose"]),
        "stack_level": int(raw["stackLevel"]),
        "kind": raw["chargingProfileKind"],
        "unit": sched["chargingRateUnit"],
        "periods": _periods(sched["chargingSchedulePeriod"]),
        "duration_s": int(sched["duration"]) if sched.get("duration") is not None else None,
        "start_schedule": parse_time(sched.get("startSchedule")),
        "recurrency": raw.get("recurrencyKind"),
        "valid_from": parse_time(raw.get("validFrom")),
        "valid_to": parse_time(raw.get("validTo")),
        "transaction_id": str(tx) if tx is not None else None,
        "min_rate": float(min_rate) if min_rate is not None else None,
    }


def profile_from_v16(
    connector_id: int, raw: Mapping[str, Any], installed_at: datetime
) -> ChargingProfile:
    """Build from a 1.6 ``csChargingProfiles`` object as it is on the wire."""
    return ChargingProfile(
        id=int(raw["chargingProfileId"]),
        connector=connector_id,
        installed_at=installed_at,
        **_common(raw, raw["chargingSchedule"]),
    )


def profile_from_v201(
    evse_id: int, raw: Mapping[str, Any], installed_at: datetime
) -> ChargingProfile:
    """Build from a 2.0.1 ``chargingProfile`` object as it is on the wire. Only the first
    of up to three schedules is used."""
    scheds = raw["chargingSchedule"]
    sched = scheds[0] if isinstance(scheds, list) else scheds
    return ChargingProfile(
        id=int(raw["id"]), connector=evse_id, installed_at=installed_at, **_common(raw, sched)
    )
