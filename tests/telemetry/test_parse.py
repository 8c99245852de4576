"""AMI and station payload validation: every bad kind has its reason, nothing raises."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.adapters.telemetry import parse
from gridshare.adapters.telemetry.parse import (
    REASONS,
    AmiReading,
    Invalid,
    StationReading,
    parse_ami,
    parse_station,
    topic_id,
)

NOW = datetime(2026, 11, 30, 14, 30, tzinfo=UTC).timestamp()
GOOD_AMI = {"meter_id": "m-1", "ts": NOW - 5, "power_w": 1500.0, "energy_wh": 12345.0,
            "current_a": [3.0, 2.0, 1.5], "voltage_v": [230.0, 231.0, 229.5]}
GOOD_STATION = {"station_id": "cp-1", "connector_id": 1, "session_id": "tx-9",
                "connector_type": "Type2", "power_kw": 11.0, "current_a": [16, 16, 16],
                "voltage_v": 230, "energy_kwh": 5.5, "soc_percent": 42, "event_ts": NOW - 1}


def ami(doc: object, topic: str = "m-1", known: set[str] | None = None
        ) -> AmiReading | Invalid:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_ami(topic, payload, now=NOW, skew=30.0,
                     known={"m-1", "m-2"} if known is None else known)


def station(doc: object, topic: str = "cp-1") -> StationReading | Invalid:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_station(topic, payload, now=NOW, skew=30.0, known={"cp-1"})


def test_good_ami_reading() -> None:
    got = ami(GOOD_AMI)
    assert got == AmiReading("m-1", NOW - 5, 1500.0, 12345.0, (3.0, 2.0, 1.5),
                             (230.0, 231.0, 229.5))


def test_optional_phases_and_iso_time() -> None:
    doc = {"meter_id": "m-1", "ts": "2026-11-30T14:00:00+01:00", "power_w": -200,
           "energy_wh": 0}
    got = ami(doc)
    assert isinstance(got, AmiReading)
    assert got.ts == datetime(2026, 11, 30, 13, tzinfo=UTC).timestamp()
    assert got.power_w == -200.0  # export is a reading, not an error
    assert got.current_a is None and got.voltage_v is None
    zulu = ami({**doc, "ts": "2026-11-30T13:00:00Z"})
    assert isinstance(zulu, AmiReading) and zulu.ts == got.ts


@pytest.mark.parametrize(("change", "reason"), [
    ({"meter_id": None}, parse.MISSING_FIELD),
    ({"ts": None}, parse.MISSING_FIELD),
    ({"power_w": None}, parse.MISSING_FIELD),
    ({"energy_wh": None}, parse.MISSING_FIELD),
    ({"meter_id": 7}, parse.WRONG_TYPE),
    ({"power_w": "1500"}, parse.WRONG_TYPE),
    ({"power_w": True}, parse.WRONG_TYPE),
    ({"energy_wh": -1}, parse.OUT_OF_RANGE),
    ({"power_w": 5e12}, parse.OUT_OF_RANGE),
    ({"current_a": [1, 2]}, parse.BAD_PHASES),
    ({"current_a": [1, 2, 3, 4]}, parse.BAD_PHASES),
    ({"current_a": 5}, parse.WRONG_TYPE),
    ({"current_a": [1, -2, 3]}, parse.OUT_OF_RANGE),
    ({"voltage_v": [230, "x", 230]}, parse.WRONG_TYPE),
    ({"energy_export_wh": -1}, parse.OUT_OF_RANGE),
    ({"energy_export_wh": "5"}, parse.WRONG_TYPE),
    ({"energy_export_wh": [5]}, parse.WRONG_TYPE),
    ({"ts": "yesterday"}, parse.BAD_TIMESTAMP),
    ({"ts": "2026-11-30T14:00:00"}, parse.BAD_TIMESTAMP),  # no offset
    ({"ts": NOW * 1000}, parse.BAD_TIMESTAMP),  # milliseconds
    ({"ts": 12}, parse.BAD_TIMESTAMP),  # before 2000
    ({"ts": NOW + 31}, parse.FUTURE_TIMESTAMP),
    ({"meter_id": "m-2"}, parse.ID_MISMATCH),
])
def test_bad_ami_field(change: dict[str, object], reason: str) -> None:
    doc = {k: v for k, v in {**GOOD_AMI, **change}.items() if v is not None}
    got = ami(doc)
    assert isinstance(got, Invalid), got
    assert got.reason == reason, got.detail


def test_export_register_optional_and_absent_is_unknown() -> None:
    with_export = ami({**GOOD_AMI, "energy_export_wh": 250.5})
    assert isinstance(with_export, AmiReading) and with_export.energy_export_wh == 250.5
    assert with_export.energy_wh == 12345.0  # the import register is unchanged
    zero = ami({**GOOD_AMI, "energy_export_wh": 0})
    assert isinstance(zero, AmiReading) and zero.energy_export_wh == 0.0
    for doc in (GOOD_AMI, {**GOOD_AMI, "energy_export_wh": None}):
        got = ami(doc)
        assert isinstance(got, AmiReading) and got.energy_export_wh is None  # not 0


def test_export_register_not_finite() -> None:
    payload = (b'{"meter_id": "m-1", "ts": %d, "power_w": 1, "energy_wh": 1, '
               b'"energy_export_wh": 1e999}' % int(NOW))
    got = ami(payload)
    assert isinstance(got, Invalid) and got.reason == parse.NOT_FINITE, got


def test_ami_within_skew_accepted_and_unknown_meter() -> None:
    assert isinstance(ami({**GOOD_AMI, "ts": NOW + 29}), AmiReading)
    got = ami({**GOOD_AMI, "meter_id": "m-9"}, topic="m-9")
    assert isinstance(got, Invalid) and got.reason == parse.UNKNOWN_METER


@pytest.mark.parametrize(("payload", "reason"), [
    (b"{not json", parse.BAD_JSON),
    (b'{"meter_id": "m-1", "ts": 1, "power_w": NaN, "energy_wh": 1}', parse.BAD_JSON),
    (b'{"meter_id": "m-1", "ts": 1796000000, "power_w": 1e999, "energy_wh": 1}',
     parse.NOT_FINITE),
    (b"\xff\xfe", parse.BAD_JSON),
    (b"[1, 2]", parse.NOT_OBJECT),
    (b"42", parse.NOT_OBJECT),
])
def test_bad_ami_payload(payload: bytes, reason: str) -> None:
    got = ami(payload)
    assert isinstance(got, Invalid) and got.reason == reason, got


def test_good_station_reading() -> None:
    got = station(GOOD_STATION)
    assert got == StationReading("cp-1", 1, NOW - 1, "tx-9", "Type2", 11.0,
                                 (16.0, 16.0, 16.0), 230.0, 5.5, 42.0)
    one = station({"station_id": "cp-1", "connector_id": 2, "event_ts": NOW,
                   "current_a": 10})
    assert isinstance(one, StationReading)
    assert one.current_a == (10.0, None, None) and one.power_kw is None


@pytest.mark.parametrize(("change", "reason"), [
    ({"station_id": None}, parse.MISSING_FIELD),
    ({"connector_id": None}, parse.MISSING_FIELD),
    ({"event_ts": None}, parse.MISSING_FIELD),
    ({"power_kw": None, "current_a": None}, parse.MISSING_FIELD),
    ({"connector_id": "1"}, parse.WRONG_TYPE),
    ({"connector_id": -1}, parse.OUT_OF_RANGE),
    ({"soc_percent": 101}, parse.OUT_OF_RANGE),
    ({"energy_kwh": -0.1}, parse.OUT_OF_RANGE),
    ({"power_kw": -3}, parse.OUT_OF_RANGE),
    ({"current_a": [1, 2]}, parse.BAD_PHASES),
    ({"session_id": {"a": 1}}, parse.WRONG_TYPE),
    ({"event_ts": NOW + 3600}, parse.FUTURE_TIMESTAMP),
    ({"station_id": "cp-2"}, parse.ID_MISMATCH),
])
def test_bad_station_field(change: dict[str, object], reason: str) -> None:
    doc = {k: v for k, v in {**GOOD_STATION, **change}.items() if v is not None}
    got = station(doc)
    assert isinstance(got, Invalid), got
    assert got.reason == reason, got.detail


@pytest.mark.parametrize(("change", "refused"), [
    ({}, False),  # 11 kW, 16 A on a 22 kW / 32 A charger
    ({"power_kw": 60.0, "current_a": 90}, False),  # an overdraw: seen, not refused
    ({"power_kw": 11000.0}, True),  # W sent as kW
    ({"power_kw": None, "current_a": [16000, 0, 0]}, True),  # mA sent as A
])
def test_a_value_far_beyond_the_chargers_rating_is_a_unit_mistake(
        change: dict[str, object], refused: bool) -> None:
    got = station({k: v for k, v in {**GOOD_STATION, **change}.items() if v is not None})
    assert isinstance(got, StationReading)
    bad = parse.beyond_rating(got, 22_080.0, 32.0)
    assert (bad is not None) == refused
    if bad is not None:
        assert bad.reason == parse.OUT_OF_RANGE and "rating" in bad.detail


def test_unknown_station() -> None:
    got = station({**GOOD_STATION, "station_id": "cp-x"}, topic="cp-x")
    assert isinstance(got, Invalid) and got.reason == parse.UNKNOWN_STATION


def test_topic_id() -> None:
    assert topic_id("gridshare/s/ami/m-1", "gridshare/s/ami") == "m-1"
    assert topic_id("gridshare/s/ami/", "gridshare/s/ami") is None
    assert topic_id("gridshare/s/ami/a/b", "gridshare/s/ami") is None
    assert topic_id("gridshare/s/amix/m", "gridshare/s/ami") is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=6),
    max_leaves=20)
FIELD_VALUES = JSON | st.sampled_from([NOW, NOW + 100, "2026-11-30T14:00:00Z", -1.0, 0,
                                       [1, 2, 3], "m-1", "cp-1", math.inf])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted({*GOOD_AMI, *GOOD_STATION, "x",
                                                 "energy_export_wh"})),
                       FIELD_VALUES, max_size=12) | JSON)
def test_any_json_is_accepted_or_rejected_with_a_reason(doc: object) -> None:
    payload = json.dumps(doc).encode()
    for result in (ami(payload), station(payload)):
        if isinstance(result, Invalid):
            assert result.reason in REASONS
            assert result.detail
        else:
            assert isinstance(result, AmiReading | StationReading)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_never_raise(payload: bytes) -> None:
    for result in (ami(payload), station(payload)):
        assert isinstance(result, Invalid | AmiReading | StationReading)
