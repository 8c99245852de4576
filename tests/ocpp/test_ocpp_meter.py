"""MeterValues parsing: units, phases, per-sample rejection (pure, no sockets)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.adapters.ocpp.meter import parse_meter_values, parse_timestamp

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
TS = "2024-05-01T11:59:50Z"


def parse(protocol: str, elements: list[dict[str, Any]]) -> Any:
    return parse_meter_values(elements, protocol=protocol, charger="CP", connector=1,
                              transaction_id="9", now=NOW)


def test_v16_units_and_phases() -> None:
    out = parse("ocpp1.6", [{"timestamp": TS, "sampled_value": [
        {"value": "7.2", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "10.5", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
        {"value": "10.4", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
        {"value": "10.6", "measurand": "Current.Import", "phase": "L3", "unit": "A"},
        {"value": "230", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
        {"value": "232", "measurand": "Voltage", "phase": "L2-N", "unit": "V"},
        {"value": "12.5", "unit": "kWh"},  # default measurand: Energy.Active.Import.Register
        {"value": "55", "measurand": "SoC", "unit": "Percent", "location": "EV"},
        {"value": "3", "measurand": "Temperature", "unit": "Celsius"},
    ]}])
    assert out.rejects == []
    (reading,) = out.readings
    assert reading.at == datetime(2024, 5, 1, 11, 59, 50, tzinfo=UTC)
    assert reading.power_w == 7200.0
    assert reading.current_a == (10.5, 10.4, 10.6)
    assert reading.voltage_v == 231.0
    assert reading.energy_wh == 12500.0
    assert reading.soc_percent == 55.0
    assert reading.transaction_id == "9"


def test_v201_multiplier_and_unphased_current_and_phase_power() -> None:
    out = parse("ocpp2.0.1", [{"timestamp": TS, "sampled_value": [
        {"value": 1.2, "measurand": "Energy.Active.Import.Register",
         "unit_of_measure": {"unit": "Wh", "multiplier": 3}},
        {"value": 16, "measurand": "Current.Import"},
        {"value": 1000, "measurand": "Power.Active.Import", "phase": "L1"},
        {"value": 1500, "measurand": "Power.Active.Import", "phase": "L2"},
    ]}])
    (reading,) = out.readings
    assert reading.energy_wh == 1200.0
    assert reading.current_a == (16.0, None, None)
    assert reading.power_w == 2500.0


def _sv(protocol: str, value: float, measurand: str, unit: str, **extra: Any) -> dict[str, Any]:
    """One sampled value as the protocol writes it (1.6: text and ``unit``)."""
    if protocol == "ocpp1.6":
        return {"value": repr(value), "measurand": measurand, "unit": unit, **extra}
    return {"value": value, "measurand": measurand, "unit_of_measure": {"unit": unit},
            **extra}


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"])
def test_export_register_read_apart_from_import(protocol: str) -> None:
    out = parse(protocol, [{"timestamp": TS, "sampled_value": [
        _sv(protocol, 12.5, "Energy.Active.Import.Register", "kWh"),
        _sv(protocol, 3.25, "Energy.Active.Export.Register", "kWh"),
        _sv(protocol, 4000.0, "Power.Active.Export", "W"),
    ]}, {"timestamp": TS, "sampled_value": [
        _sv(protocol, 3300.0, "Energy.Active.Export.Register", "Wh"),  # alone: a reading
        _sv(protocol, 9.0, "Energy.Active.Export.Register", "Wh", phase="L1"),  # not total
    ]}])
    assert out.rejects == []
    first, second = out.readings
    assert (first.energy_wh, first.energy_export_wh, first.power_w) == (12500.0, 3250.0,
                                                                       -4000.0)
    assert (second.energy_wh, second.energy_export_wh) == (None, 3300.0)


def test_export_register_absent_is_unknown() -> None:
    (reading,) = parse("ocpp1.6", [{"timestamp": TS, "sampled_value": [
        {"value": "12500", "measurand": "Energy.Active.Import.Register"}]}]).readings
    assert reading.energy_export_wh is None


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1", "ocpp2.1"])
@pytest.mark.parametrize(("value", "unit", "reason"), [
    (math.nan, "Wh", "meter_not_finite"), (-1.0, "Wh", "meter_negative"),
    (5.0, "W", "meter_bad_unit")], ids=["nan", "negative", "power-unit"])
def test_bad_export_register_rejected_and_counted(protocol: str, value: float, unit: str,
                                                   reason: str) -> None:
    out = parse(protocol, [{"timestamp": TS, "sampled_value": [
        _sv(protocol, value, "Energy.Active.Export.Register", unit),
        _sv(protocol, 700.0, "Energy.Active.Import.Register", "Wh")]}])
    assert out.rejects == [reason]
    (reading,) = out.readings
    assert (reading.energy_wh, reading.energy_export_wh) == (700.0, None)


@pytest.mark.parametrize(("protocol", "bad", "reason"), [
    ("ocpp1.6", {"value": "NaN", "measurand": "Power.Active.Import"}, "meter_not_finite"),
    ("ocpp1.6", {"value": "inf", "measurand": "Power.Active.Import"}, "meter_not_finite"),
    ("ocpp1.6", {"value": "-5", "measurand": "Current.Import", "phase": "L1"}, "meter_negative"),
    ("ocpp1.6", {"value": "abc"}, "meter_unparsable"),
    ("ocpp1.6", {"value": "10", "unit": "varh"}, "meter_bad_unit"),
    ("ocpp1.6", {"value": "101", "measurand": "SoC"}, "meter_out_of_range"),
    ("ocpp2.0.1", {"value": math.nan, "measurand": "Power.Active.Import"}, "meter_not_finite"),
    ("ocpp2.0.1", {"value": -1.0}, "meter_negative"),
    ("ocpp2.0.1", {"value": 1e308, "unit_of_measure": {"multiplier": 9}}, "meter_not_finite"),
], ids=["nan", "inf", "negative-current", "text", "bad-unit", "soc>100", "nan-201",
        "negative-energy", "overflow"])
def test_bad_sample_rejected_good_kept(protocol: str, bad: dict[str, Any], reason: str) -> None:
    good = ({"value": "230", "measurand": "Voltage", "unit": "V"} if protocol == "ocpp1.6"
            else {"value": 230, "measurand": "Voltage", "unit_of_measure": {"unit": "V"}})
    out = parse(protocol, [{"timestamp": TS, "sampled_value": [bad, good]}])
    assert out.rejects == [reason]
    (reading,) = out.readings
    assert reading.voltage_v == 230.0
    assert reading.power_w is None and reading.energy_wh is None


def test_future_and_unreadable_timestamps_reject_only_their_group() -> None:
    future = (NOW + timedelta(seconds=61)).isoformat()
    near = (NOW + timedelta(seconds=59)).isoformat()
    sv = [{"value": "100", "measurand": "Energy.Active.Import.Register"}]
    out = parse("ocpp1.6", [{"timestamp": future, "sampled_value": sv},
                            {"timestamp": "yesterday", "sampled_value": sv},
                            {"timestamp": near, "sampled_value": sv}])
    assert out.rejects == ["meter_future_timestamp", "meter_bad_timestamp"]
    assert [r.at for r in out.readings] == [NOW + timedelta(seconds=59)]


def test_timestamp_without_zone_is_utc() -> None:
    assert parse_timestamp("2024-05-01T12:00:00") == NOW
    assert parse_timestamp("2024-05-01T14:00:00+02:00") == NOW
    assert parse_timestamp(123) is None


_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                    st.text(max_size=12), st.none(), st.booleans())
_sampled = st.fixed_dictionaries(
    {"value": _values},
    optional={"measurand": st.sampled_from(["Energy.Active.Import.Register",
                                            "Energy.Active.Export.Register",
                                            "Power.Active.Import", "Current.Import", "Voltage",
                                            "SoC", "Frequency"]),
              "phase": st.sampled_from(["L1", "L2", "L3", "N", "L1-N"]),
              "unit": st.sampled_from(["Wh", "kWh", "W", "kW", "A", "V", "Percent", "x"]),
              "unit_of_measure": st.fixed_dictionaries(
                  {}, optional={"unit": st.sampled_from(["Wh", "kWh", "W", "A"]),
                                "multiplier": st.integers(-12, 12)})})


@settings(max_examples=300, deadline=None)
@given(protocol=st.sampled_from(["ocpp1.6", "ocpp2.0.1"]),
       elements=st.lists(st.fixed_dictionaries({
           "timestamp": st.one_of(st.just(TS), st.text(max_size=30),
                                  st.just("2030-01-01T00:00:00Z")),
           "sampled_value": st.lists(_sampled, max_size=6)}), max_size=4))
def test_parser_never_raises_and_publishes_only_sane_numbers(
        protocol: str, elements: list[dict[str, Any]]) -> None:
    out = parse(protocol, elements)
    for reading in out.readings:
        assert reading.at <= NOW + timedelta(seconds=60)
        for value in (reading.power_w, reading.energy_wh, reading.energy_export_wh,
                      reading.voltage_v, *reading.current_a):
            assert value is None or (math.isfinite(value) and value >= 0)
        assert reading.soc_percent is None or 0 <= reading.soc_percent <= 100
