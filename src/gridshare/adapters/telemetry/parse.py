"""Telemetry payloads in, validated readings out: pure functions, no I/O.

Two schemas (docs/telemetry.md):

- AMI readings on ``<ami prefix>/<meter id>``: ``{"meter_id", "ts", "power_w",
  "energy_wh", "energy_export_wh", "current_a": [L1, L2, L3], "voltage_v": [L1, L2,
  L3]}``, the last three optional.
- Station meter values on ``<stations prefix>/<station id>``: ``{"station_id",
  "connector_id", "session_id", "connector_type", "power_kw", "current_a", "voltage_v",
  "energy_kwh", "soc_percent", "event_ts"}``; ``station_id``, ``connector_id``,
  ``event_ts`` and at least one of ``power_kw``/``current_a`` are required.

Every way a payload can be wrong ends in an :class:`Invalid` with a short ``reason`` code
(counted per source and reason, the labels of the metrics) and a ``detail`` for the log.
Nothing here raises for any payload: a hypothesis test feeds it arbitrary JSON.

Timestamps are ISO 8601 with an offset (``2026-11-30T14:00:00Z``,
``...+01:00``) or epoch seconds (a JSON number, UTC); a time without an offset is
ambiguous and rejected. Numbers are finite JSON numbers (the meter path's
:func:`~gridshare.adapters.meters.parse.number`: no NaN, no Infinity, no strings).
"""

from __future__ import annotations

import json
import math
from collections.abc import Container
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from gridshare.adapters.meters.parse import PAYLOAD_MAX, Rejected, echo, number, parse_json

# Reason codes: stable strings, the ``reason`` label of gridshare_telemetry_rejected.
BAD_JSON: Final = "bad_json"
NOT_OBJECT: Final = "not_object"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
NOT_FINITE: Final = "not_finite"
OUT_OF_RANGE: Final = "out_of_range"
BAD_PHASES: Final = "bad_phases"
BAD_TIMESTAMP: Final = "bad_timestamp"
FUTURE_TIMESTAMP: Final = "future_timestamp"
ID_MISMATCH: Final = "id_mismatch"
UNKNOWN_METER: Final = "unknown_meter"
UNKNOWN_STATION: Final = "unknown_station"
BAD_TOPIC: Final = "bad_topic"

REASONS: Final = (BAD_JSON, NOT_OBJECT, MISSING_FIELD, WRONG_TYPE, NOT_FINITE, OUT_OF_RANGE,
                  BAD_PHASES, BAD_TIMESTAMP, FUTURE_TIMESTAMP, ID_MISMATCH, UNKNOWN_METER,
                  UNKNOWN_STATION, BAD_TOPIC)
"""Every reason code, so the metrics show each one (at 0) from the start."""

MAX_POWER_W: Final = 1e9
"""1 GW: a reading above it is a unit mistake (kW sent as mW ...), not a meter."""
MAX_VOLTAGE_V: Final = 1e6
MAX_CURRENT_A: Final = 1e6
EPOCH_MIN: Final = 946_684_800.0
"""2000-01-01: an epoch before it is a meter that lost its clock (or sent milliseconds
as something else)."""
EPOCH_MAX_MS_GUESS: Final = 1e11
"""An epoch above it is milliseconds, not seconds: rejected with that said."""

Phases3 = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a payload gave no reading: a reason code and the detail for the log."""

    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class AmiReading:
    """One validated AMI reading; ``ts`` in epoch seconds (UTC)."""

    meter_id: str
    ts: float
    power_w: float
    energy_wh: float
    current_a: Phases3 | None = None
    voltage_v: Phases3 | None = None
    energy_export_wh: float | None = None
    """The export register (energy fed back); None: not sent (unknown, never 0)."""


@dataclass(frozen=True, slots=True)
class StationReading:
    """One validated meter value of a station that does not speak OCPP."""

    station_id: str
    connector_id: int
    event_ts: float
    session_id: str | None = None
    connector_type: str | None = None
    power_kw: float | None = None
    current_a: tuple[float | None, float | None, float | None] = (None, None, None)
    voltage_v: float | None = None
    energy_kwh: float | None = None
    soc_percent: float | None = None


def parse_ts(value: object, what: str) -> float | Invalid:
    """Epoch seconds from an ISO 8601 text with an offset or a JSON number of seconds."""
    if type(value) is float and EPOCH_MIN <= value < EPOCH_MAX_MS_GUESS:
        return value  # the fast path (NaN and inf fail the comparison)
    if isinstance(value, str):
        if len(value) > 64:
            return Invalid(BAD_TIMESTAMP, f"{what}: not an ISO 8601 time: {echo(value)}")
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return Invalid(BAD_TIMESTAMP, f"{what}: not an ISO 8601 time: {echo(value)}")
        if when.tzinfo is None or when.utcoffset() is None:
            return Invalid(BAD_TIMESTAMP, f"{what}: {echo(value)} has no UTC offset "
                                          "(add Z or +hh:mm)")
        try:
            seconds = when.timestamp()
        except (OverflowError, ValueError, OSError):
            return Invalid(BAD_TIMESTAMP, f"{what}: out of range: {echo(value)}")
    else:
        got = number(value, what)
        if isinstance(got, Rejected):
            return Invalid(NOT_FINITE if _non_finite(value) else BAD_TIMESTAMP, got.reason)
        seconds = got
        if seconds >= EPOCH_MAX_MS_GUESS:
            return Invalid(BAD_TIMESTAMP, f"{what}: {echo(value)} looks like milliseconds "
                                          "(send epoch seconds)")
    if seconds < EPOCH_MIN:
        return Invalid(BAD_TIMESTAMP, f"{what}: {echo(value)} is before 2000")
    return seconds


def _non_finite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _number(doc: dict[str, Any], key: str, *, low: float = 0.0,
            high: float = math.inf, unit: str = "") -> float | Invalid:
    """A required field: present, a finite number within [low, high]."""
    if key not in doc:
        return Invalid(MISSING_FIELD, f"{key} missing")
    return _value(doc[key], key, low, high, unit)


def _value(value: object, key: str, low: float, high: float, unit: str) -> float | Invalid:
    if type(value) is float or type(value) is int:  # the fast path: a plain number
        result = float(value)
        if not math.isfinite(result):
            return Invalid(NOT_FINITE, f"{key}: not a finite number")
    else:
        got = number(value, key)
        if isinstance(got, Rejected):
            return Invalid(WRONG_TYPE, got.reason)
        result = got
    if result < low or result > high:
        return Invalid(OUT_OF_RANGE, f"{key}: {echo(value)} {unit} outside "
                                     f"[{low:g}, {high:g}]".replace("  ", " "))
    return result


def _phases(value: object, key: str, high: float, unit: str) -> Phases3 | Invalid:
    """A list of three finite, non-negative numbers (L1, L2, L3)."""
    if type(value) is list and len(value) == 3:  # the fast path: three plain numbers
        a, b, c = value
        if type(a) is float and type(b) is float and type(c) is float \
                and 0.0 <= a <= high and 0.0 <= b <= high and 0.0 <= c <= high:
            return (a, b, c)  # comparisons are False for NaN: it takes the slow path
    if not isinstance(value, list):
        return Invalid(WRONG_TYPE, f"{key}: expected [L1, L2, L3] (got {echo(value)})")
    if len(value) != 3:
        return Invalid(BAD_PHASES, f"{key}: expected 3 values L1, L2, L3 (got "
                                   f"{len(value)})")
    out = []
    for i, item in enumerate(value):
        got = _value(item, f"{key}[{i}]", 0.0, high, unit)
        if isinstance(got, Invalid):
            return got
        out.append(got)
    return (out[0], out[1], out[2])


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""Built once: ``json.loads`` with a keyword builds a decoder per call (a third of the
parse time at 50,000 readings/s)."""


def _document(payload: bytes) -> dict[str, Any] | Invalid:
    doc: object
    try:  # the fast path; anything unusual goes through the meter path's parse_json
        doc = _DECODER.decode(payload.decode("utf-8")) if len(payload) <= PAYLOAD_MAX \
            else None
    except (ValueError, RecursionError):
        doc = None
    if doc is None:
        doc = parse_json(payload)
        if isinstance(doc, Rejected):
            return Invalid(BAD_JSON, doc.reason)
    if not isinstance(doc, dict):
        return Invalid(NOT_OBJECT, f"expected a JSON object (got {echo(doc)})")
    return doc


def _source_id(doc: dict[str, Any], key: str, topic_id: str, known: Container[str] | None,
               unknown: str, what: str) -> str | Invalid:
    """The id in ``key`` (``meter_id``, ``station_id``): a text, the one of the topic it
    came on, and one of ``known`` (else ``unknown``, the reason for a ``what`` the site
    file does not declare)."""
    value = doc.get(key)
    if value is None:
        return Invalid(MISSING_FIELD, f"{key} missing")
    if not isinstance(value, str):
        return Invalid(WRONG_TYPE, f"{key}: not a text: {echo(value)}")
    if value != topic_id:
        return Invalid(ID_MISMATCH, f"{key} {echo(value)} on the topic of {echo(topic_id)}")
    if known is not None and value not in known:
        return Invalid(unknown, f"{what} {echo(value)} is not in the site file")
    return value


def _event_time(doc: dict[str, Any], key: str, now: float, skew: float) -> float | Invalid:
    """The required time in ``key`` (``ts``, ``event_ts``), not more than ``skew`` s
    (the ``clock_skew`` of docs/telemetry.md) ahead of ``now``."""
    if key not in doc:
        return Invalid(MISSING_FIELD, f"{key} missing")
    ts = parse_ts(doc[key], key)
    if isinstance(ts, Invalid):
        return ts
    if ts > now + skew:
        return Invalid(FUTURE_TIMESTAMP, f"{key} is {ts - now:.0f} s ahead of our clock "
                                         f"(allowed: {skew:g} s)")
    return ts


def parse_ami(topic_id: str, payload: bytes, *, now: float, skew: float,
              known: Container[str] | None) -> AmiReading | Invalid:
    """The AMI reading in ``payload``, published on the topic of meter ``topic_id``.

    ``now`` (epoch seconds) and ``skew`` bound ``ts`` from above; ``known`` is the site's
    AMI meters (None: any meter is accepted)."""
    doc = _document(payload)
    if isinstance(doc, Invalid):
        return doc
    meter_id = _source_id(doc, "meter_id", topic_id, known, UNKNOWN_METER, "meter")
    if isinstance(meter_id, Invalid):
        return meter_id
    ts = _event_time(doc, "ts", now, skew)
    if isinstance(ts, Invalid):
        return ts
    power = _number(doc, "power_w", low=-MAX_POWER_W, high=MAX_POWER_W, unit="W")
    if isinstance(power, Invalid):
        return power
    energy = _number(doc, "energy_wh", unit="Wh")
    if isinstance(energy, Invalid):
        return energy
    export = _optional_number(doc, "energy_export_wh", math.inf, "Wh")
    if isinstance(export, Invalid):
        return export
    phases: list[Phases3 | None] = []
    for key, high, unit in (("current_a", MAX_CURRENT_A, "A"), ("voltage_v", MAX_VOLTAGE_V,
                                                                 "V")):
        raw = doc.get(key)
        if raw is None:
            phases.append(None)
            continue
        got = _phases(raw, key, high, unit)
        if isinstance(got, Invalid):
            return got
        phases.append(got)
    return AmiReading(meter_id, ts, power, energy, phases[0], phases[1], export)


def _optional_text(doc: dict[str, Any], key: str) -> str | Invalid | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return Invalid(WRONG_TYPE, f"{key}: not a text: {echo(value)}")
    text = str(value)
    if not 0 < len(text) <= 64:
        return Invalid(OUT_OF_RANGE, f"{key}: 1 to 64 characters (got {len(text)})")
    return text


def _optional_number(doc: dict[str, Any], key: str, high: float,
                     unit: str) -> float | Invalid | None:
    value = doc.get(key)
    if value is None:
        return None
    return _value(value, key, 0.0, high, unit)


def _station_current(value: object) -> tuple[float | None, float | None, float | None
                                             ] | Invalid:
    """A number (the current on each phase the station uses) or [L1], [L1, L2, L3]."""
    if value is None:
        return (None, None, None)
    if isinstance(value, list):
        if len(value) not in (1, 3):
            return Invalid(BAD_PHASES, f"current_a: expected [L1] or [L1, L2, L3] (got "
                                       f"{len(value)} values)")
        out: list[float | None] = [None, None, None]
        for i, item in enumerate(value):
            got = _value(item, f"current_a[{i}]", 0.0, MAX_CURRENT_A, "A")
            if isinstance(got, Invalid):
                return got
            out[i] = got
        return (out[0], out[1], out[2])
    got = _value(value, "current_a", 0.0, MAX_CURRENT_A, "A")
    if isinstance(got, Invalid):
        return got
    return (got, None, None)


def parse_station(topic_id: str, payload: bytes, *, now: float, skew: float,
                  known: Container[str] | None) -> StationReading | Invalid:
    """The meter value in ``payload``, published on the topic of station ``topic_id``;
    ``known``: the site's chargers (a station not declared is rejected)."""
    doc = _document(payload)
    if isinstance(doc, Invalid):
        return doc
    station = _source_id(doc, "station_id", topic_id, known, UNKNOWN_STATION, "station")
    if isinstance(station, Invalid):
        return station
    connector = doc.get("connector_id")
    if connector is None:
        return Invalid(MISSING_FIELD, "connector_id missing")
    if isinstance(connector, bool) or not isinstance(connector, int):
        return Invalid(WRONG_TYPE, f"connector_id: not an integer: {echo(connector)}")
    if not 0 <= connector <= 64:
        return Invalid(OUT_OF_RANGE, f"connector_id: {connector} outside [0, 64]")
    ts = _event_time(doc, "event_ts", now, skew)
    if isinstance(ts, Invalid):
        return ts
    session = _optional_text(doc, "session_id")
    if isinstance(session, Invalid):
        return session
    kind = _optional_text(doc, "connector_type")
    if isinstance(kind, Invalid):
        return kind
    power = _optional_number(doc, "power_kw", MAX_POWER_W / 1000.0, "kW")
    if isinstance(power, Invalid):
        return power
    current = _station_current(doc.get("current_a"))
    if isinstance(current, Invalid):
        return current
    if power is None and all(c is None for c in current):
        return Invalid(MISSING_FIELD, "power_kw or current_a needed")
    voltage = _optional_number(doc, "voltage_v", MAX_VOLTAGE_V, "V")
    if isinstance(voltage, Invalid):
        return voltage
    energy = _optional_number(doc, "energy_kwh", math.inf, "kWh")
    if isinstance(energy, Invalid):
        return energy
    soc = _optional_number(doc, "soc_percent", 100.0, "%")
    if isinstance(soc, Invalid):
        return soc
    return StationReading(station, connector, ts, session, kind, power, current, voltage,
                          energy, soc)


UNIT_MISTAKE_FACTOR: Final = 10.0
"""A station value above this many times its charger's rating is a unit mistake (W sent
as kW, mA as A: a factor of 1,000), not an overdraw: no charger draws 10 times its rating,
while a real overdraw (a car above its setpoint) stays well below and must stay visible."""


def beyond_rating(r: StationReading, max_w: float, max_a: float) -> Invalid | None:
    """``out_of_range`` when ``r``'s power or a phase current is more than
    :data:`UNIT_MISTAKE_FACTOR` times its charger's rating (``max_w`` W, ``max_a`` A per
    phase, from the site file), else None."""
    if r.power_kw is not None and r.power_kw * 1000.0 > UNIT_MISTAKE_FACTOR * max_w:
        return Invalid(OUT_OF_RANGE, f"power_kw: {r.power_kw:g} kW is more than "
                                     f"{UNIT_MISTAKE_FACTOR:g} x {r.station_id}'s rating "
                                     f"({max_w / 1000.0:g} kW): W sent as kW?")
    for amps in r.current_a:
        if amps is not None and amps > UNIT_MISTAKE_FACTOR * max_a:
            return Invalid(OUT_OF_RANGE, f"current_a: {amps:g} A is more than "
                                         f"{UNIT_MISTAKE_FACTOR:g} x {r.station_id}'s "
                                         f"rating ({max_a:g} A): mA sent as A?")
    return None


def topic_id(topic: str, prefix: str) -> str | None:
    """The meter or station id of ``<prefix>/<id>`` (one level, not empty), else None."""
    if len(topic) <= len(prefix) + 1 or not topic.startswith(prefix) \
            or topic[len(prefix)] != "/":
        return None
    ident = topic[len(prefix) + 1:]
    if "/" in ident or len(ident) > 64:
        return None
    return ident
