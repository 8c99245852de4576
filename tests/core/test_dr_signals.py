"""DR signal validation: one model from every channel, each refusal names field and reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare.core.dr.signals import (
    DrPriority,
    DrSignal,
    SignalInvalid,
    SignalType,
    signal_from_json,
)

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ZONES = ("Z1", "Z2")


def body(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "signal_id": "sig-1", "zone_id": "Z1", "signal_type": "CURTAIL",
        "target_reduction_kw": 90, "start_ts": "2026-11-30T12:00:00Z",
        "end_ts": "2026-11-30T13:00:00Z", "priority": 2,
        "received_ts": "2026-11-30T11:59:58Z"}
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


def parse(data: Any) -> DrSignal:
    return signal_from_json(data, zones=ZONES, now=NOW)


def test_a_valid_signal_and_its_wire_shape() -> None:
    signal = parse(body())
    assert signal == DrSignal(
        "sig-1", "Z1", SignalType.CURTAIL, 90.0, NOW, NOW + timedelta(hours=1),
        DrPriority.ECONOMIC, NOW - timedelta(seconds=2), "rest")
    assert signal.to_json() == body(target_reduction_kw=90.0)
    assert parse(signal.to_json()) == signal


def test_received_ts_defaults_to_now_and_source_is_kept() -> None:
    signal = signal_from_json(body(received_ts=...), zones=ZONES, now=NOW, source="mqtt")
    assert (signal.received_ts, signal.source) == (NOW, "mqtt")


def test_offsets_are_converted_to_utc() -> None:
    signal = parse(body(start_ts="2026-11-30T13:00:00+01:00", end_ts="2026-11-30T13:30:00Z"))
    assert signal.start_ts == NOW and signal.start_ts.tzinfo is UTC
    assert signal.start_ts.utcoffset() == timedelta(0)
    assert signal.to_json()["start_ts"] == "2026-11-30T12:00:00Z"


def test_restore_may_carry_zero() -> None:
    signal = parse(body(signal_type="RESTORE", target_reduction_kw=0))
    assert signal.signal_type is SignalType.RESTORE and signal.target_reduction_kw == 0


@pytest.mark.parametrize(("data", "field", "reason"), [
    ([1, 2], None, "expected a JSON object, got a list"),
    (body(colour="red"), "colour", "unknown field"),
    (body(zone_id=...), "zone_id", "missing"),
    (body(signal_id=...), "signal_id", "missing"),
    (body(signal_id=7), "signal_id", "expected a string, got a number"),
    (body(signal_id=""), "signal_id", "must be 1 to 200 characters"),
    (body(signal_id="a\nb"), "signal_id", "control characters"),
    (body(signal_type="DIM"), "signal_type", "unknown signal_type 'DIM'"),
    (body(signal_type=None), "signal_type", "expected a string, got null"),
    (body(zone_id="Z9"), "zone_id", "unknown zone 'Z9' (zones: Z1, Z2)"),
    (body(start_ts="tomorrow"), "start_ts", "not an ISO-8601 time: 'tomorrow'"),
    (body(start_ts=1700000000), "start_ts", "expected an ISO-8601 time string"),
    (body(end_ts="2026-11-30T13:00:00"), "end_ts", "needs a UTC offset"),
    (body(end_ts="2026-11-30T12:00:00Z"), "end_ts", "must be after start_ts"),
    (body(end_ts="2026-11-30T11:00:00Z"), "end_ts", "must be after start_ts"),
    (body(target_reduction_kw=-5), "target_reduction_kw", "must not be negative"),
    (body(target_reduction_kw=float("nan")), "target_reduction_kw", "finite"),
    (body(target_reduction_kw=float("inf")), "target_reduction_kw", "finite"),
    (body(target_reduction_kw="90"), "target_reduction_kw", "expected a number, got a string"),
    (body(target_reduction_kw=True), "target_reduction_kw", "got a boolean"),
    (body(target_reduction_kw=0), "target_reduction_kw", "must be above 0 for CURTAIL"),
    (body(priority=4), "priority", "must be 1 (emergency), 2 (economic) or 3"),
    (body(priority=0), "priority", "got 0"),
    (body(priority="1"), "priority", "expected 1, 2 or 3, got a string"),
    (body(priority=1.0), "priority", "got a number"),
    (body(received_ts="yesterday"), "received_ts", "not an ISO-8601 time"),
])
def test_each_invalid_kind_is_refused_with_its_reason(data: Any, field: str | None,
                                                      reason: str) -> None:
    with pytest.raises(SignalInvalid) as info:
        parse(data)
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value) == (f"{field}: {info.value.reason}" if field else info.value.reason)
    assert isinstance(info.value, ValueError)


def test_a_long_value_is_not_echoed_whole() -> None:
    with pytest.raises(SignalInvalid) as info:
        parse(body(signal_type="X" * 10_000))
    assert len(str(info.value)) < 200


def test_same_content_ignores_how_it_came() -> None:
    a = parse(body())
    b = signal_from_json(body(received_ts="2026-11-30T12:00:05Z"), zones=ZONES, now=NOW,
                         source="openadr")
    assert a.same_content(b) and a != b
    assert not a.same_content(parse(body(target_reduction_kw=91)))
    assert not a.same_content(parse(body(priority=1)))


@given(target=st.floats(min_value=0.001, max_value=1e6),
       minutes=st.integers(min_value=1, max_value=10_000),
       offset_h=st.integers(min_value=-12, max_value=14),
       priority=st.sampled_from([1, 2, 3]),
       kind=st.sampled_from(["CURTAIL", "SHED", "RESTORE"]))
def test_round_trip_through_the_wire_shape(target: float, minutes: int, offset_h: int,
                                           priority: int, kind: str) -> None:
    tz = timezone(timedelta(hours=offset_h))
    start = datetime(2026, 6, 1, 8, 0, tzinfo=tz)
    data = body(target_reduction_kw=target, start_ts=start.isoformat(),
                end_ts=(start + timedelta(minutes=minutes)).isoformat(),
                priority=priority, signal_type=kind)
    signal = parse(data)
    assert signal.end_ts - signal.start_ts == timedelta(minutes=minutes)
    again = parse(signal.to_json())
    assert again == signal


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6)


@given(st.dictionaries(st.sampled_from(["signal_id", "zone_id", "signal_type",
                                        "target_reduction_kw", "start_ts", "end_ts",
                                        "priority", "received_ts", "extra"]),
                       _json | st.sampled_from(["Z1", "CURTAIL", "SHED", "RESTORE",
                                                "2026-11-30T12:00:00Z", 1, 2, 3, 50.0])),
       st.booleans())
def test_any_json_is_a_signal_or_a_named_refusal(data: dict[str, Any], complete: bool) -> None:
    """Whatever arrives: a valid signal, or SignalInvalid naming a field of the body (or
    the body itself); never another exception."""
    if complete:
        data = {**body(), **data}
    try:
        signal = parse(data)
    except SignalInvalid as exc:
        assert exc.field is None or exc.field in data or exc.field in (
            "signal_id", "zone_id", "signal_type", "target_reduction_kw", "start_ts",
            "end_ts", "priority")
        assert exc.reason
    else:
        assert signal.zone_id in ZONES and signal.end_ts > signal.start_ts
        assert signal.target_reduction_kw >= 0 and 1 <= signal.priority <= 3
