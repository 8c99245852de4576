"""Every bus event as compact JSON, for NATS JetStream (and back).

One generic codec driven by the dataclass fields of :mod:`gridshare.events`, so a field
added to an event travels without touching this file: ``{"t": "<EventClass>", <field>:
<value>, ...}`` with datetimes as ISO 8601 text, tuples as arrays, enums as their value,
a connector-keyed mapping (``ConnectorCapsChanged.caps``) as ``[[charger, connector,
value], ...]`` (JSON object keys are text only), and a nested frozen dataclass
(``ChargingNeeds.v2x_offer``) as an object of its fields, decoded by the same rules. NaN
and infinities are refused on both sides: a reading that was validated once must not turn
into NaN in transit.

Subjects: charger and control events go to ``gridshare.<site>.events.<kind>``, readings
(:data:`READING_TYPES`) to ``gridshare.<site>.readings.<kind>.<source>``, where ``kind``
is the event class in snake case and ``source`` the meter, group or charger the reading
comes from. A reading's idempotency key is its kind, source and event time: the same
reading published twice is one reading (JetStream's ``Nats-Msg-Id`` within the stream's
duplicate window, and the exactly-once recorder's unique row after it).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gridshare import events as ev
from gridshare.events import Event

EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls for cls in typing.get_args(ev.Event)}
"""Type tag -> event class, for every member of :data:`gridshare.events.Event`."""

READING_TYPES: tuple[type[Any], ...] = (ev.MeterReading, ev.GroupMeterReading, ev.MeterSample)
"""The events that are meter readings: each has one idempotency key (source, event time)."""

SUBJECT_PREFIX = "gridshare"
STREAM_SUBJECTS = (f"{SUBJECT_PREFIX}.*.*.>",)
"""What the JetStream stream stores: ``gridshare.<site>.events.<kind>`` and
``gridshare.<site>.readings.<kind>.<source>``, not ``gridshare.<site>.cmd`` (three tokens:
request/reply, never stored). One pattern, so that a consumer's filter (a site's
everything, or its readings) is a subset of it, as nats-server requires."""
_TOKEN_BAD = re.compile(r"[^A-Za-z0-9_\-]")


class CodecError(ValueError):
    """A message that is not a valid gridshare event (what is wrong, and where)."""


def snake(name: str) -> str:
    """``MeterSample`` -> ``meter_sample``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def token(text: str) -> str:
    """A NATS subject token from any id: characters other than letters, digits, ``_``
    and ``-`` (``.``, ``*``, ``>``, spaces) become ``_``. Routing only: the exact id is
    in the payload."""
    return _TOKEN_BAD.sub("_", text) or "_"


def reading_source(event: Event) -> str | None:
    """The meter, group or charger/connector a reading comes from; None: not a reading."""
    if isinstance(event, ev.MeterSample):
        return event.meter
    if isinstance(event, ev.GroupMeterReading):
        return event.group
    if isinstance(event, ev.MeterReading):
        return f"{event.charger}/{event.connector}"
    return None


def reading_key(event: Event) -> str | None:
    """``<kind>|<source>|<event time ISO>``: one reading, however often it is delivered;
    None for events that are not readings."""
    source = reading_source(event)
    if source is None:
        return None
    return f"{snake(type(event).__name__)}|{source}|{event.at.isoformat()}"


def subject(site: str, event: Event) -> str:
    kind = snake(type(event).__name__)
    source = reading_source(event)
    if source is not None:
        return f"{SUBJECT_PREFIX}.{token(site)}.readings.{kind}.{token(source)}"
    return f"{SUBJECT_PREFIX}.{token(site)}.events.{kind}"


def site_subjects(site: str) -> str:
    """The filter of everything a site publishes (events and readings)."""
    return f"{SUBJECT_PREFIX}.{token(site)}.*.>"


def command_subject(site: str) -> str:
    """Setpoint commands to the site's OCPP gateway (request/reply, not stored)."""
    return f"{SUBJECT_PREFIX}.{token(site)}.cmd"


def msg_id(site: str, event: Event, payload: bytes) -> str:
    """The ``Nats-Msg-Id``: a reading's key (a re-sent reading is the same message); any
    other event's content hash (the very same event, re-sent after a lost ack)."""
    key = reading_key(event)
    if key is not None:
        return f"{site}|{key}"
    return f"{site}|{hashlib.sha256(payload).hexdigest()[:32]}"


# --- encoding -------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise CodecError(f"naive datetime {value!r}: events carry aware UTC times")
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        raise CodecError(f"non-finite number {value!r}")
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return [[*(k if isinstance(k, tuple) else (k,)), _plain(v)] for k, v in value.items()]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def to_dict(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"t": type(event).__name__}
    for f in dataclasses.fields(event):
        out[f.name] = _plain(getattr(event, f.name))
    return out


def encode(event: Event) -> bytes:
    """The event as compact UTF-8 JSON; CodecError for what cannot travel (NaN, naive
    times, a type that is no bus event)."""
    if type(event).__name__ not in EVENT_TYPES:
        raise CodecError(f"{type(event).__name__} is not a bus event")
    return json.dumps(to_dict(event), separators=(",", ":"), allow_nan=False).encode()


# --- decoding -------------------------------------------------------------------------------

_HINTS: dict[type[Any], dict[str, Any]] = {
    cls: typing.get_type_hints(cls, vars(ev)) for cls in EVENT_TYPES.values()}


_SHAPES: dict[Any, tuple[Any, tuple[Any, ...]]] = {}
"""Field type -> (origin, args), computed once (typing's introspection is slow)."""


def _shape(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    found = _SHAPES.get(tp)
    if found is None:
        found = _SHAPES[tp] = (typing.get_origin(tp), typing.get_args(tp))
    return found


def _value(tp: Any, value: Any, where: str) -> Any:
    # Fast paths for what nearly every field is (the decode runs once per message).
    kind = type(value)
    if tp is str and kind is str:
        return value
    if tp is float and kind is float and math.isfinite(value):
        return value
    origin, args = _shape(tp)
    if origin in (typing.Union, types.UnionType):
        arms = args
        if value is None:
            if type(None) in arms:
                return None
            raise CodecError(f"{where}: null is not allowed")
        errors = []
        for arm in arms:
            if arm is type(None):
                continue
            try:
                return _value(arm, value, where)
            except CodecError as exc:
                errors.append(str(exc))
        raise CodecError(errors[0] if errors else f"{where}: no type fits")
    if value is None:
        raise CodecError(f"{where}: null is not allowed")
    if origin is tuple:
        if not isinstance(value, list):
            raise CodecError(f"{where}: expected an array")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_value(args[0], v, where) for v in value)
        if len(value) != len(args):
            raise CodecError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_value(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value,
                                                                                   strict=True)))
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        key_tp, val_tp = args
        if not isinstance(value, list):
            raise CodecError(f"{where}: expected an array of [key..., value]")
        out: dict[Any, Any] = {}
        key_args = typing.get_args(key_tp) if typing.get_origin(key_tp) is tuple else None
        for i, item in enumerate(value):
            width = len(key_args) + 1 if key_args else 2
            if not isinstance(item, list) or len(item) != width:
                raise CodecError(f"{where}[{i}]: expected {width} items")
            if key_args:
                key = _value(key_tp, item[:-1], f"{where}[{i}]")
            else:
                key = _value(key_tp, item[0], f"{where}[{i}]")
            out[key] = _value(val_tp, item[-1], f"{where}[{i}]")
        return out
    if tp is datetime:
        if not isinstance(value, str):
            raise CodecError(f"{where}: expected an ISO 8601 time")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise CodecError(f"{where}: {exc}") from exc
        if parsed.tzinfo is None:
            raise CodecError(f"{where}: time {value!r} has no UTC offset")
        return parsed
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError as exc:
            raise CodecError(f"{where}: {exc}") from exc
    if tp is bool:
        if not isinstance(value, bool):
            raise CodecError(f"{where}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodecError(f"{where}: expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"{where}: expected a number")
        number = float(value)
        if not math.isfinite(number):
            raise CodecError(f"{where}: not a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise CodecError(f"{where}: expected text")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise CodecError(f"{where}: expected an object")
        return tp(**_fields(tp, value, where))
    raise CodecError(f"{where}: unsupported field type {tp!r}")


def _hints(cls: type[Any]) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:  # a nested dataclass: its own module resolves its annotations
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def _fields(cls: type[Any], data: dict[str, Any], where: str) -> dict[str, Any]:
    """The constructor arguments of dataclass ``cls`` from ``data``."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if (f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                raise CodecError(f"{where}.{f.name}: missing")
            continue
        kwargs[f.name] = _value(hints[f.name], data[f.name], f"{where}.{f.name}")
    # Fields this build does not know are ignored: a newer gateway may add one while an
    # older controller still runs (rolling upgrade).
    return kwargs


def from_dict(data: Any) -> Event:
    if not isinstance(data, dict):
        raise CodecError("expected a JSON object")
    tag = data.get("t")
    cls = EVENT_TYPES.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise CodecError(f"unknown event type {tag!r}")
    event: Event = cls(**_fields(cls, data, str(tag)))
    return event


def decode(payload: bytes) -> Event:
    """The event in ``payload``; CodecError (saying what and where) for anything else."""
    try:
        data = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CodecError(f"not JSON: {exc}") from exc
    return from_dict(data)


def _no_constant(name: str) -> Any:
    raise CodecError(f"{name} is not a number")
