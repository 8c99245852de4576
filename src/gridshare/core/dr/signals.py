"""Demand-response signals: the one model that REST, MQTT/NATS, OpenADR and the CLI feed.

A signal is validated whole before anything is stored (never half-applied) and every
refusal names the field and the reason, worded for whoever sent it. Times are UTC.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any


class SignalType(StrEnum):
    """What a signal asks of a zone."""

    CURTAIL = "CURTAIL"
    """Lower the zone's draw by the target; stations are dimmed by the policy."""
    SHED = "SHED"
    """The same target, met by pausing whole stations in policy order."""
    RESTORE = "RESTORE"
    """End the zone's events of equal or lower urgency (priority number >= its own) at its
    start_ts: an economic RESTORE does not end an emergency."""


class DrPriority(IntEnum):
    """Urgency: a lower number is more urgent."""

    EMERGENCY = 1
    ECONOMIC = 2
    OPTIONAL = 3


FIELDS = ("signal_id", "zone_id", "signal_type", "target_reduction_kw", "start_ts",
          "end_ts", "priority", "received_ts")
"""The wire shape's fields, in the issue's order."""
_REQUIRED = FIELDS[:-1]
MAX_ID_LENGTH = 200
"""Characters: a signal id longer than this is refused (it is stored and echoed)."""


@dataclass(frozen=True, slots=True)
class DrSignal:
    """One validated signal. Its identity is ``signal_id``; ``received_ts`` and ``source``
    say how it came and are not part of its content (a redelivery differs in them)."""

    signal_id: str
    zone_id: str
    signal_type: SignalType
    target_reduction_kw: float
    start_ts: datetime
    end_ts: datetime
    priority: DrPriority
    received_ts: datetime
    source: str = "rest"
    """rest | mqtt | nats | openadr | cli: where it came from."""

    def same_content(self, other: DrSignal) -> bool:
        """Whether ``other`` is the same signal (a redelivery), ignoring how it came."""
        return (self.signal_id == other.signal_id and self.zone_id == other.zone_id
                and self.signal_type is other.signal_type
                and self.target_reduction_kw == other.target_reduction_kw
                and self.start_ts == other.start_ts and self.end_ts == other.end_ts
                and self.priority is other.priority)

    def to_json(self) -> dict[str, Any]:
        """The wire shape of the issue (times ISO-8601 in UTC with ``Z``)."""
        return {"signal_id": self.signal_id, "zone_id": self.zone_id,
                "signal_type": self.signal_type.value,
                "target_reduction_kw": self.target_reduction_kw,
                "start_ts": iso(self.start_ts), "end_ts": iso(self.end_ts),
                "priority": int(self.priority), "received_ts": iso(self.received_ts)}


class SignalInvalid(ValueError):
    """A signal refused, with the field at fault (None: the whole body) and why."""

    def __init__(self, field: str | None, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field is not None else reason)


def iso(at: datetime) -> str:
    """A UTC time as ISO-8601 with ``Z`` (what every DR payload carries)."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: Any, field: str) -> datetime:
    """An ISO-8601 time with a UTC offset (``Z`` or ``+02:00``), as UTC; a naive time is
    refused: nobody can tell which zone the sender meant."""
    if isinstance(value, datetime):
        at = value
    elif isinstance(value, str):
        if len(value) > 64:
            raise SignalInvalid(field, "not an ISO-8601 time (too long)")
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            raise SignalInvalid(field, f"not an ISO-8601 time: {value!r}") from None
    else:
        raise SignalInvalid(field, f"expected an ISO-8601 time string, got "
                                   f"{_kind(value)}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise SignalInvalid(field, "needs a UTC offset (Z or +hh:mm)")
    return at.astimezone(UTC)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _text(data: Mapping[str, Any], field: str) -> str:
    value = data[field]
    if not isinstance(value, str):
        raise SignalInvalid(field, f"expected a string, got {_kind(value)}")
    if not value or len(value) > MAX_ID_LENGTH:
        raise SignalInvalid(field, f"must be 1 to {MAX_ID_LENGTH} characters")
    if not value.isprintable():
        raise SignalInvalid(field, "must not hold control characters")
    return value


def signal_from_json(data: Mapping[str, Any], *, zones: Collection[str], now: datetime,
                     source: str = "rest") -> DrSignal:
    """Validate a signal's JSON (the issue's wire shape) against the declared ``zones``.

    Raises :class:`SignalInvalid` for the first problem: not an object, unknown or missing
    field, wrong type, unknown signal_type or zone, a time that is not ISO-8601 with a UTC
    offset, end_ts not after start_ts, a target that is NaN, infinite or negative (or 0
    for CURTAIL/SHED: nothing to do), a priority outside 1..3. ``received_ts`` defaults
    to ``now``.
    """
    if not isinstance(data, Mapping):
        raise SignalInvalid(None, f"expected a JSON object, got {_kind(data)}")
    unknown = sorted(str(k) for k in data if k not in FIELDS)
    if unknown:
        raise SignalInvalid(unknown[0], "unknown field (expected " + ", ".join(FIELDS) + ")")
    for name in _REQUIRED:
        if name not in data:
            raise SignalInvalid(name, "missing")
    signal_id = _text(data, "signal_id")
    raw_type = data["signal_type"]
    if not isinstance(raw_type, str):
        raise SignalInvalid("signal_type", f"expected a string, got {_kind(raw_type)}")
    try:
        kind = SignalType(raw_type)
    except ValueError:
        shown = raw_type if len(raw_type) <= 40 else raw_type[:40] + "…"
        raise SignalInvalid("signal_type", f"unknown signal_type {shown!r} (expected "
                                           "CURTAIL, SHED or RESTORE)") from None
    zone = _text(data, "zone_id")
    if zone not in zones:
        known = ", ".join(sorted(zones)) or "none declared"
        shown = zone if len(zone) <= 40 else zone[:40] + "…"
        raise SignalInvalid("zone_id", f"unknown zone {shown!r} (zones: {known})")
    target = data["target_reduction_kw"]
    if isinstance(target, bool) or not isinstance(target, int | float):
        raise SignalInvalid("target_reduction_kw", f"expected a number, got {_kind(target)}")
    target = float(target)
    if not math.isfinite(target):
        raise SignalInvalid("target_reduction_kw", "must be a finite number")
    if target < 0:
        raise SignalInvalid("target_reduction_kw", f"must not be negative (got {target:g})")
    if target == 0 and kind is not SignalType.RESTORE:
        raise SignalInvalid("target_reduction_kw", f"must be above 0 for {kind.value}")
    start = parse_time(data["start_ts"], "start_ts")
    end = parse_time(data["end_ts"], "end_ts")
    if end <= start:
        raise SignalInvalid("end_ts", f"must be after start_ts ({iso(end)} <= {iso(start)})")
    raw_priority = data["priority"]
    if isinstance(raw_priority, bool) or not isinstance(raw_priority, int):
        raise SignalInvalid("priority", f"expected 1, 2 or 3, got {_kind(raw_priority)}")
    if raw_priority not in (1, 2, 3):
        raise SignalInvalid("priority", f"must be 1 (emergency), 2 (economic) or 3 "
                                        f"(optional), got {raw_priority}")
    received = data.get("received_ts")
    received_ts = now if received is None else parse_time(received, "received_ts")
    return DrSignal(signal_id, zone, kind, target, start, end, DrPriority(raw_priority),
                    received_ts.astimezone(UTC), source)
