"""The NATS event codec: every bus event type survives encode -> decode unchanged."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare import events as ev
from gridshare.adapters.nats.codec import (
    EVENT_TYPES,
    CodecError,
    decode,
    encode,
    msg_id,
    reading_key,
    subject,
)

TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                     timezones=st.sampled_from([UTC, timezone(timedelta(hours=2))]))
TEXT = st.text(min_size=0, max_size=12)
NUMBERS = st.floats(allow_nan=False, allow_infinity=False, width=64)


def strategy(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy for one dataclass field's declared type (so a new field is covered)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else strategy(a)
                           for a in typing.get_args(tp)))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy(args[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy(a) for a in args))
    if origin is not None and issubclass(origin, Mapping):
        key, value = typing.get_args(tp)
        return st.dictionaries(strategy(key), strategy(value), max_size=4)
    if tp is datetime:
        return TIMES
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # nested (a V2X offer)
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: strategy(hints[f.name])
                                for f in dataclasses.fields(tp)})
    return {bool: st.booleans(), int: st.integers(-2**40, 2**40), float: NUMBERS,
            str: TEXT}[tp]


def event_strategy(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, vars(ev))
    return st.builds(cls, **{f.name: strategy(hints[f.name]) for f in dataclasses.fields(cls)})


ALL_EVENTS = st.one_of(*(event_strategy(cls) for cls in EVENT_TYPES.values()))


def test_every_event_type_is_covered() -> None:
    assert set(EVENT_TYPES) == {c.__name__ for c in typing.get_args(ev.Event)}
    assert len(EVENT_TYPES) >= 14


@given(ALL_EVENTS)
def test_round_trip(event: Any) -> None:
    decoded = decode(encode(event))
    assert decoded == event
    assert type(decoded) is type(event)
    for f in dataclasses.fields(event):  # same Python types, not only equal values
        assert type(getattr(decoded, f.name)) is type(getattr(event, f.name))


@given(ALL_EVENTS)
def test_subject_and_id_are_stable(event: Any) -> None:
    payload = encode(event)
    subj = subject("site.1", event)
    assert subj.startswith("gridshare.site_1.")
    assert all(tok and not set(tok) & set(".*> ") for tok in subj.split("."))
    assert msg_id("s", event, payload) == msg_id("s", decode(payload), encode(decode(payload)))


def test_reading_key_is_source_and_event_time() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    a = ev.MeterSample("m-1", at, (1.0, 2.0, 3.0))
    b = ev.MeterSample("m-1", at, (9.0, 9.0, 9.0))
    c = ev.MeterSample("m-1", at + timedelta(seconds=1), (1.0, 2.0, 3.0))
    assert reading_key(a) == reading_key(b) != reading_key(c)
    assert subject("s1", a) == "gridshare.s1.readings.meter_sample.m-1"
    assert subject("s1", ev.ChargerOnline("c1", at)) == "gridshare.s1.events.charger_online"
    assert reading_key(ev.ChargerOnline("c1", at)) is None


@pytest.mark.parametrize("payload, message", [
    (b"{not json", "not JSON"),
    (b'[1]', "JSON object"),
    (b'{"t": "Nope"}', "unknown event type"),
    (b'{"t": "ChargerOnline", "charger": "c1"}', "ChargerOnline.at: missing"),
    (b'{"t": "ChargerOnline", "charger": "c1", "at": "2026-01-01T00:00:00"}', "UTC offset"),
    (b'{"t": "MeterSample", "meter": "m", "at": "2026-01-01T00:00:00+00:00",'
     b' "current_a": [1, NaN, 3]}', "NaN"),
    (b'{"t": "MeterSample", "meter": "m", "at": "2026-01-01T00:00:00+00:00",'
     b' "current_a": [1, 2]}', "expected 3 items"),
    (b'{"t": "StatusChanged", "charger": "c", "connector": 1, "status": "Dancing",'
     b' "at": "2026-01-01T00:00:00+00:00"}', "StatusChanged.status"),
    (b'{"t": "StatusChanged", "charger": "c", "connector": "1", "status": "Charging",'
     b' "at": "2026-01-01T00:00:00+00:00"}', "StatusChanged.connector: expected an integer"),
])
def test_bad_messages_are_refused_with_where(payload: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(payload)


def test_nan_never_leaves() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(CodecError, match="non-finite"):
        encode(ev.MeterSample("m", at, (1.0, float("nan"), 0.0)))
    with pytest.raises(CodecError, match="naive"):
        encode(ev.ChargerOnline("c", datetime(2026, 1, 1)))


def test_charging_needs_carries_the_cars_v2x_offer() -> None:
    from gridshare.core.v2x_offer import V2xOffer

    offer = V2xOffer(modes=("AC_three_phase", "AC_BPT"), requested="AC_BPT",
                     control_mode="DynamicControl", max_discharge_w=7400.0, target_soc=80)
    event = ev.ChargingNeeds("cp", 1, datetime(2026, 1, 1, tzinfo=UTC),
                             energy_needed_kwh=20.0, v2x_offer=offer)
    decoded = decode(encode(event))
    assert decoded == event and isinstance(decoded, ev.ChargingNeeds)
    assert decoded.v2x_offer is not None and decoded.v2x_offer.modes == offer.modes


def test_export_register_round_trips_and_old_messages_decode_without_it() -> None:
    at = datetime(2026, 11, 30, 14, tzinfo=UTC)
    reading = ev.MeterReading("cp1", 1, at, "T1", power_w=-4000.0, energy_wh=12500.0,
                              energy_export_wh=3250.5)
    wire = encode(reading)
    assert b'"energy_export_wh":3250.5' in wire
    assert decode(wire) == reading
    # a gateway from before the export register: the field is unknown, never 0
    old = wire.replace(b',"energy_export_wh":3250.5', b"")
    assert b"energy_export_wh" not in old
    assert decode(old) == dataclasses.replace(reading, energy_export_wh=None)
