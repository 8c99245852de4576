"""V2X profile builders: wire-exact, and valid against the ``ocpp`` package's official 2.1
schema (checked with jsonschema, not the adapter's own compiled validator); the curve is
the same droop as the central mode's."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import ocpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.adapters.ocpp import v2x
from gridshare.core.frequency import FrequencySettings, droop_fraction

NOW = datetime(2026, 11, 30, 14, 0, 0, 400_000, tzinfo=UTC)
SETTINGS_50 = FrequencySettings(50.0, 0.02, 0.2, 49.5, 50.5)
SETTINGS_60 = FrequencySettings(60.0, 0.02, 0.2, 59.5, 60.5)


def _schema(name: str) -> Any:
    path = Path(ocpp.__file__).parent / "v21" / "schemas" / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8-sig"))


REQUEST = _schema("SetChargingProfileRequest")
CLEAR = _schema("ClearChargingProfileRequest")


def _valid(payload: Any, schema: Any = REQUEST) -> None:
    jsonschema.validate(payload, schema, format_checker=jsonschema.FormatChecker())


def test_central_setpoint_discharge_wire_exact() -> None:
    request = v2x.v2x_request(connector=1, transaction_id="tx-9",
                              period=v2x.central_setpoint(-5000), valid_s=60.9, now=NOW)
    assert request == {"evseId": 1, "chargingProfile": {
        "id": 30_001, "stackLevel": 2, "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Absolute", "validTo": "2026-11-30T14:01:00Z",
        "transactionId": "tx-9", "chargingSchedule": [{
            "id": 30_001, "startSchedule": "2026-11-30T14:00:00Z", "duration": 60,
            "chargingRateUnit": "W", "chargingSchedulePeriod": [{
                "startPeriod": 0, "limit": 0.0, "numberPhases": 3, "dischargeLimit": -5000.0,
                "setpoint": -5000.0, "operationMode": "CentralSetpoint"}]}]}}
    _valid(request)


def test_central_setpoint_charge_is_bounded_the_other_way() -> None:
    period = v2x.central_setpoint(3000.04)
    assert (period.limit_w, period.discharge_limit_w, period.setpoint_w) == (3000.0, 0.0,
                                                                             3000.0)


def test_local_frequency_profile_is_valid_and_bounded_by_its_curve() -> None:
    curve = v2x.freq_watt_curve(SETTINGS_60, max_charge_w=11_000, max_discharge_w=7_400)
    assert curve == ((59.8, -7400.0), (59.98, 0.0), (60.02, 0.0), (60.2, 11_000.0))
    period = v2x.local_frequency(curve)
    assert (period.limit_w, period.discharge_limit_w) == (11_000.0, -7400.0)
    request = v2x.v2x_request(connector=2, transaction_id="T", period=period, valid_s=300,
                              now=NOW, number_phases=1)
    _valid(request)
    [sched] = request["chargingProfile"]["chargingSchedule"]
    assert sched["chargingSchedulePeriod"][0]["v2xFreqWattCurve"] == [
        {"frequency": 59.8, "power": -7400.0}, {"frequency": 59.98, "power": 0.0},
        {"frequency": 60.02, "power": 0.0}, {"frequency": 60.2, "power": 11_000.0}]
    assert request["chargingProfile"]["stackLevel"] == 3


def test_no_deadband_gives_three_points() -> None:
    flat = FrequencySettings(50.0, 0.0, 0.2, 49.5, 50.5, hysteresis_hz=0.0)
    curve = v2x.freq_watt_curve(flat, max_charge_w=1000, max_discharge_w=1000)
    assert curve == ((49.8, -1000.0), (50.0, 0.0), (50.2, 1000.0))


def test_clear_request_names_only_the_v2x_profile() -> None:
    _valid(v2x.v2x_clear_request(1), CLEAR)
    assert v2x.v2x_clear_request(1) == {"chargingProfileId": 30_001}


@pytest.mark.parametrize("curve, message", [
    ([], "1 to 20 points"),
    ([(50.0 + i / 100, 0.0) for i in range(21)], "1 to 20 points"),
    ([(50.1, 0.0), (50.0, 0.0)], "increase strictly"),
    ([(50.0, float("nan"))], "finite"),
    ([(0.0, 1.0)], "positive"),
])
def test_bad_curves_are_refused(curve: list[tuple[float, float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        v2x.local_frequency(curve)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bad_setpoints_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        v2x.central_setpoint(bad)


def test_a_v2x_profile_needs_an_evse_and_a_lease() -> None:
    with pytest.raises(ValueError):
        v2x.v2x_request(connector=0, transaction_id="T", period=v2x.central_setpoint(0),
                        valid_s=10, now=NOW)
    with pytest.raises(ValueError):
        v2x.v2x_request(connector=1, transaction_id="T", period=v2x.central_setpoint(0),
                        valid_s=0.5, now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([SETTINGS_50, SETTINGS_60]), st.floats(-1.0, 1.0),
       st.floats(0, 50_000), st.floats(0, 50_000))
def test_curve_is_the_central_droop(settings_: FrequencySettings, offset: float,
                                    up: float, down: float) -> None:
    """At any frequency the charger following the curve draws what the central mode's
    droop asks of it: one droop, two modes."""
    curve = v2x.freq_watt_curve(settings_, max_charge_w=up, max_discharge_w=down)
    hz = settings_.nominal_hz + offset
    share = droop_fraction(hz - settings_.nominal_hz, settings_.deadband_hz,
                           settings_.full_activation_hz)
    expected = share * (up if share > 0 else down)
    assert abs(v2x.curve_power_w(curve, hz) - expected) <= 0.01 + 1e-6 * max(up, down)


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False), st.integers(1, 8), st.integers(1, 86_400))
def test_every_central_setpoint_profile_is_schema_valid(watts: float, evse: int,
                                                        valid_s: int) -> None:
    request = v2x.v2x_request(connector=evse, transaction_id="abc", valid_s=valid_s,
                              period=v2x.central_setpoint(watts), now=NOW)
    _valid(request)
    period = request["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period["dischargeLimit"] <= period["setpoint"] <= period["limit"]
