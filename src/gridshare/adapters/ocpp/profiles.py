"""Smart-charging payload builders for OCPP 1.6 and 2.0.1 (and 2.1, whose payloads for
these are 2.0.1's): pure functions, wire-exact.

Their output is sent without the ocpp package's per-message jsonschema validation (that
costs ~320 µs a call); tests/ocpp/test_profiles.py proves it valid against the official
schemas instead, for both versions and every purpose.

Layout of what gridshare installs on a charger (connector = EVSE id in 2.0.1):

=========================  =========  ===========  ========  ============================
what                       connector  purpose      stack     lifetime
=========================  =========  ===========  ========  ============================
charger cap                0          *MaxProfile  0         until lifted (cleared by id)
failsafe                   0          TxDefault    0         permanent
setpoint, no transaction   c          TxDefault    c         ``lease_s`` (duration+validTo)
setpoint, transaction      c          TxProfile    c         ``lease_s`` (duration+validTo)
=========================  =========  ===========  ========  ============================

The per-connector stack level is the connector number because OCPP 1.6 replaces a profile
with the same purpose and stack level *anywhere on the charge point*: two connectors must
not share one. When a lease expires the charger falls back to the failsafe profile.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gridshare.ocpp_version import V16, V21, V201, OcppVersion

CAP_PROFILE_ID = 1
FAILSAFE_PROFILE_ID = 2
_TX_DEFAULT_BASE_ID = 10_000
_TX_BASE_ID = 20_000

Purpose = Literal["max", "tx_default", "tx"]
"""The adapter's one profile-purpose type, version-neutral: the charger-wide maximum, the
default for sessions, a session."""

_PURPOSE_NAMES: dict[OcppVersion, dict[Purpose, str]] = {
    V16: {"max": "ChargePointMaxProfile", "tx_default": "TxDefaultProfile", "tx": "TxProfile"},
    V201: {"max": "ChargingStationMaxProfile", "tx_default": "TxDefaultProfile",
           "tx": "TxProfile"},
}
_PURPOSE_NAMES[V21] = _PURPOSE_NAMES[V201]
_PURPOSE_ALIASES: dict[str, Purpose] = {
    "max": "max", "ChargePointMaxProfile": "max", "ChargingStationMaxProfile": "max",
    "tx_default": "tx_default", "TxDefaultProfile": "tx_default",
    "tx": "tx", "TxProfile": "tx",
}


def purpose_of(name: str) -> Purpose:
    """Accept either version's purpose name (or the neutral one) and return the neutral one."""
    try:
        return _PURPOSE_ALIASES[name]
    except KeyError:
        raise ValueError(f"unknown charging profile purpose {name!r}") from None


def purpose_name(protocol: OcppVersion, purpose: Purpose) -> str:
    return _PURPOSE_NAMES[protocol][purpose]


@dataclass(frozen=True, slots=True)
class ScheduleLimit:
    """A constant limit in the unit the charger is configured for."""

    unit: Literal["A", "W"]
    value: float
    number_phases: int


def floor_01(value: float) -> float:
    """Round *down* to 0.1: OCPP 1.6 allows one decimal, and rounding up could exceed a fuse.

    ``n / 10`` prints with exactly one decimal, so the frame passes ``multipleOf: 0.1``.
    """
    return math.floor(value * 10 + 1e-9) / 10


def limit_for(current_a: float, *, unit: str = "A", voltage_v: float = 230.0,
              phases: int = 3) -> ScheduleLimit:
    """Per-phase current → the schedule limit (A per phase, or W total = A × V × phases)."""
    if not math.isfinite(current_a) or current_a < 0:
        raise ValueError(f"current must be a finite, non-negative number, got {current_a}")
    if unit == "A":
        return ScheduleLimit("A", floor_01(current_a), phases)
    if unit == "W":
        return ScheduleLimit("W", floor_01(current_a * voltage_v * phases), phases)
    raise ValueError(f"unit must be 'A' or 'W', got {unit!r}")


def iso_utc(at: datetime) -> str:
    """RFC 3339 in UTC with a 'Z', whole seconds (what every charger parses)."""
    return _iso_utc(at)


@functools.lru_cache(maxsize=16)
def _iso_utc(at: datetime) -> str:
    # Cached: a batch of setpoints formats the same few instants a thousand times.
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def setpoint_profile_id(connector: int, *, transaction: bool) -> int:
    return (_TX_BASE_ID if transaction else _TX_DEFAULT_BASE_ID) + connector


def _period(limit: ScheduleLimit) -> dict[str, Any]:
    return {"startPeriod": 0, "limit": limit.value, "numberPhases": limit.number_phases}


def profile_start(now: datetime) -> datetime:
    """A profile starts at ``now`` in whole UTC seconds (what :func:`iso_utc` prints)."""
    return now.astimezone(UTC).replace(microsecond=0)


def lease_valid_to(now: datetime, lease_s: float) -> datetime:
    """The validTo a setpoint built at ``now`` with ``lease_s`` carries."""
    return profile_start(now) + timedelta(seconds=lease_seconds(lease_s))


def set_charging_profile(protocol: OcppVersion, *, connector: int, profile_id: int,
                         stack_level: int, purpose: Purpose, limit: ScheduleLimit, now: datetime,
                         duration_s: int | None = None,
                         transaction_id: str | None = None) -> dict[str, Any]:
    """SetChargingProfile request payload: one constant period, kind Absolute from ``now``.

    With ``duration_s`` the schedule ends and the profile expires (validTo) after that many
    seconds, so a charger that stops hearing from us falls back to its failsafe.
    """
    start = profile_start(now)
    valid_to = iso_utc(start + timedelta(seconds=duration_s)) if duration_s else None
    if protocol == V16:
        schedule: dict[str, Any] = {}
        if duration_s:
            schedule["duration"] = duration_s
        schedule["startSchedule"] = iso_utc(start)
        schedule["chargingRateUnit"] = limit.unit
        schedule["chargingSchedulePeriod"] = [_period(limit)]
        profile: dict[str, Any] = {"chargingProfileId": profile_id}
        if transaction_id is not None:
            profile["transactionId"] = int(transaction_id)
        profile["stackLevel"] = stack_level
        profile["chargingProfilePurpose"] = purpose_name(V16, purpose)
        profile["chargingProfileKind"] = "Absolute"
        if valid_to:
            profile["validTo"] = valid_to
        profile["chargingSchedule"] = schedule
        return {"connectorId": connector, "csChargingProfiles": profile}
    if protocol.v2:
        schedule = {"id": profile_id, "startSchedule": iso_utc(start)}
        if duration_s:
            schedule["duration"] = duration_s
        schedule["chargingRateUnit"] = limit.unit
        schedule["chargingSchedulePeriod"] = [_period(limit)]
        profile = {"id": profile_id, "stackLevel": stack_level,
                   "chargingProfilePurpose": purpose_name(protocol, purpose),
                   "chargingProfileKind": "Absolute"}
        if valid_to:
            profile["validTo"] = valid_to
        if transaction_id is not None:
            profile["transactionId"] = transaction_id
        profile["chargingSchedule"] = [schedule]
        return {"evseId": connector, "chargingProfile": profile}
    raise ValueError(f"unsupported protocol {protocol!r}")


def lease_seconds(lease_s: float) -> int:
    """Whole seconds, rounded down (the charger must fall back no later than promised)."""
    if not math.isfinite(lease_s) or lease_s < 1:
        raise ValueError(f"lease must be at least 1 s, got {lease_s}")
    return int(lease_s)


def setpoint_request(protocol: OcppVersion, *, connector: int, limit: ScheduleLimit, lease_s: float,
                     now: datetime, transaction_id: str | None) -> dict[str, Any]:
    """The live setpoint: a TxProfile for the running transaction, or — with no transaction,
    where a 1.6 TxProfile is not allowed — a TxDefaultProfile on that connector."""
    tx = transaction_id is not None
    return set_charging_profile(
        protocol, connector=connector,
        profile_id=setpoint_profile_id(connector, transaction=tx), stack_level=connector,
        purpose="tx" if tx else "tx_default", limit=limit, now=now,
        duration_s=lease_seconds(lease_s), transaction_id=transaction_id)


def setpoint_json(protocol: OcppVersion, *, connector: int, limit: ScheduleLimit,
                  lease_s: float, now: datetime, transaction_id: str | None) -> str:
    """:func:`setpoint_request` already serialised, character for character what
    ``json.dumps(setpoint_request(...), separators=(",", ":"))`` gives (the tests prove it),
    in a few µs instead of ~20: the send path of a 1,000-charger batch formats one each."""
    duration_s = lease_seconds(lease_s)
    start = profile_start(now)
    start_iso = iso_utc(start)
    valid_to = iso_utc(start + timedelta(seconds=duration_s))
    tx = transaction_id is not None
    profile_id = setpoint_profile_id(connector, transaction=tx)
    purpose = purpose_name(protocol, "tx" if tx else "tx_default")
    period = (f'[{{"startPeriod":0,"limit":{limit.value!r},'
              f'"numberPhases":{limit.number_phases}}}]')
    if protocol == V16:
        tx_part = f'"transactionId":{int(transaction_id)},' if transaction_id is not None else ""
        return (f'{{"connectorId":{connector},"csChargingProfiles":{{'
                f'"chargingProfileId":{profile_id},{tx_part}"stackLevel":{connector},'
                f'"chargingProfilePurpose":"{purpose}","chargingProfileKind":"Absolute",'
                f'"validTo":"{valid_to}","chargingSchedule":{{"duration":{duration_s},'
                f'"startSchedule":"{start_iso}","chargingRateUnit":"{limit.unit}",'
                f'"chargingSchedulePeriod":{period}}}}}}}')
    if protocol.v2:
        tx_part = (f',"transactionId":{json.dumps(transaction_id)}'
                   if transaction_id is not None else "")
        return (f'{{"evseId":{connector},"chargingProfile":{{"id":{profile_id},'
                f'"stackLevel":{connector},"chargingProfilePurpose":"{purpose}",'
                f'"chargingProfileKind":"Absolute","validTo":"{valid_to}"{tx_part},'
                f'"chargingSchedule":[{{"id":{profile_id},"startSchedule":"{start_iso}",'
                f'"duration":{duration_s},"chargingRateUnit":"{limit.unit}",'
                f'"chargingSchedulePeriod":{period}}}]}}}}')
    raise ValueError(f"unsupported protocol {protocol!r}")


def failsafe_request(protocol: OcppVersion, *, limit: ScheduleLimit,
                     now: datetime) -> dict[str, Any]:
    """TxDefaultProfile on connector 0, stack 0, no duration: what the charger uses alone."""
    return set_charging_profile(protocol, connector=0, profile_id=FAILSAFE_PROFILE_ID,
                                stack_level=0, purpose="tx_default", limit=limit, now=now)


def cap_request(protocol: OcppVersion, *, limit: ScheduleLimit, now: datetime) -> dict[str, Any]:
    """ChargePointMaxProfile / ChargingStationMaxProfile on connector 0 (whole charger)."""
    return set_charging_profile(protocol, connector=0, profile_id=CAP_PROFILE_ID,
                                stack_level=0, purpose="max", limit=limit, now=now)


def clear_by_id_request(protocol: OcppVersion, profile_id: int) -> dict[str, Any]:
    if protocol == V16:
        return {"id": profile_id}
    if protocol.v2:
        return {"chargingProfileId": profile_id}
    raise ValueError(f"unsupported protocol {protocol!r}")


def clear_request(protocol: OcppVersion, *, connector: int, purpose: Purpose) -> dict[str, Any]:
    """Clear every profile of ``purpose`` on ``connector`` (what the operator asks for)."""
    if protocol == V16:
        return {"connectorId": connector, "chargingProfilePurpose": purpose_name(V16, purpose)}
    if protocol.v2:
        return {"chargingProfileCriteria": {"evseId": connector,
                                            "chargingProfilePurpose": purpose_name(protocol,
                                                                                   purpose)}}
    raise ValueError(f"unsupported protocol {protocol!r}")


def composite_schedule_request(protocol: OcppVersion, *, connector: int,
                               duration_s: int) -> dict[str, Any]:
    if protocol == V16:
        return {"connectorId": connector, "duration": duration_s, "chargingRateUnit": "A"}
    if protocol.v2:
        return {"duration": duration_s, "chargingRateUnit": "A", "evseId": connector}
    raise ValueError(f"unsupported protocol {protocol!r}")


def parse_composite_schedule(protocol: OcppVersion, payload: Mapping[str, Any], *,
                             voltage_v: float = 230.0,
                             phases: int = 3) -> list[tuple[float, float]] | None:
    """GetCompositeSchedule response → ``[(start_offset_s, limit_a_per_phase), ...]``.

    None when the charger did not accept or sent no schedule. Schedules in W are converted
    with the period's numberPhases (or ``phases``) and ``voltage_v``.
    """
    if payload.get("status") != "Accepted":
        return None
    schedule = (payload.get("chargingSchedule") if protocol == V16
                else payload.get("schedule"))
    if not isinstance(schedule, Mapping):
        return None
    unit = schedule.get("chargingRateUnit", "A")
    periods: Sequence[Any] = schedule.get("chargingSchedulePeriod") or ()
    result: list[tuple[float, float]] = []
    for period in periods:
        start = float(period["startPeriod"])
        limit = float(period["limit"])
        if unit == "W":
            n = int(period.get("numberPhases") or phases)
            limit = limit / (voltage_v * n)
        result.append((start, limit))
    return result
