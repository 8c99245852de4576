"""Wire-exact tests of the charging-profile builders, and proof that everything they can
produce is valid against the official OCPP JSON schemas (the reason the CSMS may skip the
ocpp package's per-call validation)."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema.validators import validator_for

from gridshare.adapters.ocpp import profiles
from gridshare.adapters.ocpp.frames import call_frame as encode_call
from gridshare.adapters.ocpp.profiles import ScheduleLimit, limit_for
from gridshare.adapters.ocpp.schemas import load_schema
from gridshare.ocpp_version import V16, V201, OcppVersion

NOW = datetime(2024, 5, 1, 12, 0, 0, 654321, tzinfo=UTC)
A16 = ScheduleLimit("A", 16.0, 3)


def official_valid(protocol: OcppVersion, action: str, payload: dict[str, Any], *,
                   response: bool = False) -> None:
    """Validate with jsonschema against the official schema as published, multipleOf
    included (floats read as Decimal, as on the wire); raises on any violation. Independent
    of the adapter's own compiled validators, which drop multipleOf."""
    published = load_schema(protocol, action, response=response)
    assert published is not None
    schema = json.loads(json.dumps(published), parse_float=Decimal)
    wire = json.loads(json.dumps(copy.deepcopy(payload)), parse_float=Decimal)
    validator_for(schema)(schema).validate(wire)


# --- wire-exact ---------------------------------------------------------------------------

def test_v16_tx_profile_wire_exact() -> None:
    payload = profiles.setpoint_request(V16, connector=1, limit=A16, lease_s=180, now=NOW,
                                        transaction_id="42")
    assert encode_call("u1", "SetChargingProfile", payload) == (
        '[2,"u1","SetChargingProfile",{"connectorId":1,"csChargingProfiles":'
        '{"chargingProfileId":20001,"transactionId":42,"stackLevel":1,'
        '"chargingProfilePurpose":"TxProfile","chargingProfileKind":"Absolute",'
        '"validTo":"2024-05-01T12:03:00Z","chargingSchedule":{"duration":180,'
        '"startSchedule":"2024-05-01T12:00:00Z","chargingRateUnit":"A",'
        '"chargingSchedulePeriod":[{"startPeriod":0,"limit":16.0,"numberPhases":3}]}}}]')


def test_v16_setpoint_without_transaction_is_connector_tx_default() -> None:
    payload = profiles.setpoint_request(V16, connector=2, limit=ScheduleLimit("A", 6.5, 1),
                                        lease_s=60.9, now=NOW, transaction_id=None)
    assert payload == {
        "connectorId": 2,
        "csChargingProfiles": {
            "chargingProfileId": 10002, "stackLevel": 2,
            "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
            "validTo": "2024-05-01T12:01:00Z",
            "chargingSchedule": {
                "duration": 60, "startSchedule": "2024-05-01T12:00:00Z",
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6.5, "numberPhases": 1}],
            },
        },
    }


def test_v16_failsafe_and_cap_wire_exact() -> None:
    failsafe = profiles.failsafe_request(V16, limit=ScheduleLimit("A", 6.0, 3), now=NOW)
    assert encode_call("f", "SetChargingProfile", failsafe) == (
        '[2,"f","SetChargingProfile",{"connectorId":0,"csChargingProfiles":'
        '{"chargingProfileId":2,"stackLevel":0,"chargingProfilePurpose":"TxDefaultProfile",'
        '"chargingProfileKind":"Absolute","chargingSchedule":{"startSchedule":'
        '"2024-05-01T12:00:00Z","chargingRateUnit":"A","chargingSchedulePeriod":'
        '[{"startPeriod":0,"limit":6.0,"numberPhases":3}]}}}]')
    cap = profiles.cap_request(V16, limit=ScheduleLimit("A", 32.0, 3), now=NOW)
    assert cap["connectorId"] == 0
    assert cap["csChargingProfiles"]["chargingProfilePurpose"] == "ChargePointMaxProfile"
    assert cap["csChargingProfiles"]["chargingProfileId"] == profiles.CAP_PROFILE_ID
    assert "duration" not in cap["csChargingProfiles"]["chargingSchedule"]
    assert "validTo" not in cap["csChargingProfiles"]


def test_v201_tx_profile_wire_exact() -> None:
    payload = profiles.setpoint_request(V201, connector=1, limit=A16, lease_s=180, now=NOW,
                                        transaction_id="tx-9")
    assert encode_call("u2", "SetChargingProfile", payload) == (
        '[2,"u2","SetChargingProfile",{"evseId":1,"chargingProfile":{"id":20001,'
        '"stackLevel":1,"chargingProfilePurpose":"TxProfile","chargingProfileKind":"Absolute",'
        '"validTo":"2024-05-01T12:03:00Z","transactionId":"tx-9","chargingSchedule":[{"id":'
        '20001,"startSchedule":"2024-05-01T12:00:00Z","duration":180,"chargingRateUnit":"A",'
        '"chargingSchedulePeriod":[{"startPeriod":0,"limit":16.0,"numberPhases":3}]}]}}]')


def test_v201_failsafe_cap_and_default_wire_exact() -> None:
    limit = ScheduleLimit("A", 8.0, 3)
    assert profiles.failsafe_request(V201, limit=limit, now=NOW) == {
        "evseId": 0,
        "chargingProfile": {
            "id": 2, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 2, "startSchedule": "2024-05-01T12:00:00Z",
                                  "chargingRateUnit": "A",
                                  "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 8.0,
                                                              "numberPhases": 3}]}],
        },
    }
    cap = profiles.cap_request(V201, limit=limit, now=NOW)
    assert cap["evseId"] == 0
    assert cap["chargingProfile"]["chargingProfilePurpose"] == "ChargingStationMaxProfile"
    default = profiles.setpoint_request(V201, connector=3, limit=limit, lease_s=30, now=NOW,
                                        transaction_id=None)
    assert default["evseId"] == 3
    assert default["chargingProfile"]["chargingProfilePurpose"] == "TxDefaultProfile"
    assert "transactionId" not in default["chargingProfile"]


def test_clear_and_composite_requests_wire_exact() -> None:
    assert profiles.clear_by_id_request(V16, 1) == {"id": 1}
    assert profiles.clear_by_id_request(V201, 1) == {"chargingProfileId": 1}
    assert profiles.clear_request(V16, connector=1, purpose="tx") == {
        "connectorId": 1, "chargingProfilePurpose": "TxProfile"}
    assert profiles.clear_request(V201, connector=0, purpose="max") == {
        "chargingProfileCriteria": {"evseId": 0,
                                    "chargingProfilePurpose": "ChargingStationMaxProfile"}}
    assert profiles.composite_schedule_request(V16, connector=1, duration_s=600) == {
        "connectorId": 1, "duration": 600, "chargingRateUnit": "A"}
    assert profiles.composite_schedule_request(V201, connector=1, duration_s=600) == {
        "duration": 600, "chargingRateUnit": "A", "evseId": 1}


@pytest.mark.parametrize(("current_a", "unit", "phases", "expected"), [
    (16.0, "A", 3, 16.0),
    (16.09, "A", 3, 16.0),
    (6.99, "A", 1, 6.9),
    (0.3, "A", 3, 0.3),
    (0.0, "A", 3, 0.0),
    (16.0, "W", 3, 11040.0),
    (10.0, "W", 1, 2300.0),
    (6.123, "W", 3, 4224.8),
], ids=["whole", "rounds-down", "rounds-down-2", "tenth", "zero", "W-3ph", "W-1ph", "W-frac"])
def test_limit_rounds_down_to_a_tenth(current_a: float, unit: str, phases: int,
                                      expected: float) -> None:
    limit = limit_for(current_a, unit=unit, voltage_v=230.0, phases=phases)
    assert limit.value == expected
    assert limit.unit == unit
    assert limit.number_phases == phases
    assert repr(limit.value).split(".")[1] == str(expected).split(".")[1]  # one decimal


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_limit_refuses_nonsense(bad: float) -> None:
    with pytest.raises(ValueError, match="current"):
        limit_for(bad)


def test_purpose_names_accept_both_versions() -> None:
    assert profiles.purpose_of("ChargePointMaxProfile") == "max"
    assert profiles.purpose_of("ChargingStationMaxProfile") == "max"
    assert profiles.purpose_name(V201, profiles.purpose_of("ChargePointMaxProfile")) == (
        "ChargingStationMaxProfile")
    with pytest.raises(ValueError, match="purpose"):
        profiles.purpose_of("Bogus")


# --- official schemas -----------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [V16, V201])
def test_every_builder_is_valid_against_official_schema(protocol: str) -> None:
    limit = limit_for(13.37, unit="A")
    watt = limit_for(13.37, unit="W", phases=1)
    cases = [
        ("SetChargingProfile", profiles.setpoint_request(
            protocol, connector=1, limit=limit, lease_s=180, now=NOW, transaction_id="7")),
        ("SetChargingProfile", profiles.setpoint_request(
            protocol, connector=2, limit=watt, lease_s=5, now=NOW, transaction_id=None)),
        ("SetChargingProfile", profiles.failsafe_request(protocol, limit=limit, now=NOW)),
        ("SetChargingProfile", profiles.cap_request(protocol, limit=watt, now=NOW)),
        ("ClearChargingProfile", profiles.clear_by_id_request(protocol, 1)),
        ("ClearChargingProfile", profiles.clear_request(protocol, connector=1,
                                                        purpose="tx_default")),
        ("GetCompositeSchedule", profiles.composite_schedule_request(protocol, connector=1,
                                                                     duration_s=3600)),
    ]
    for action, payload in cases:
        official_valid(protocol, action, payload)


@settings(max_examples=150, deadline=None)
@given(protocol=st.sampled_from([V16, V201]),
       current_a=st.floats(min_value=0, max_value=500, allow_nan=False),
       unit=st.sampled_from(["A", "W"]), phases=st.integers(1, 3),
       connector=st.integers(1, 8), lease_s=st.floats(min_value=1, max_value=86_400),
       tx=st.one_of(st.none(), st.integers(1, 2**31 - 1).map(str)))
def test_setpoints_always_schema_valid(protocol: str, current_a: float, unit: str,
                                       phases: int, connector: int, lease_s: float,
                                       tx: str | None) -> None:
    limit = limit_for(current_a, unit=unit, phases=phases)
    assert limit.value <= (current_a if unit == "A" else current_a * 230 * phases) + 1e-9
    payload = profiles.setpoint_request(protocol, connector=connector, limit=limit,
                                        lease_s=lease_s, now=NOW, transaction_id=tx)
    official_valid(protocol, "SetChargingProfile", payload)
    official_valid(protocol, "SetChargingProfile",
                   profiles.failsafe_request(protocol, limit=limit, now=NOW))


# --- composite schedule parsing -----------------------------------------------------------

def test_parse_composite_schedule_v16_decimal_and_watts() -> None:
    reply = {"status": "Accepted", "connectorId": 1,
             "chargingSchedule": {"chargingRateUnit": "W", "chargingSchedulePeriod": [
                 {"startPeriod": 0, "limit": Decimal("11040.0")},
                 {"startPeriod": 600, "limit": Decimal("2300.0"), "numberPhases": 1}]}}
    assert profiles.parse_composite_schedule(V16, reply) == [(0.0, 16.0), (600.0, 10.0)]


def test_parse_composite_schedule_v201_and_refusal() -> None:
    reply = {"status": "Accepted", "schedule": {
        "evseId": 1, "duration": 60, "scheduleStart": "2024-05-01T12:00:00Z",
        "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.5}]}}
    official_valid(V201, "GetCompositeSchedule", reply, response=True)
    assert profiles.parse_composite_schedule(V201, reply) == [(0.0, 10.5)]
    assert profiles.parse_composite_schedule(V201, {"status": "Rejected"}) is None
    assert profiles.parse_composite_schedule(V16, {"status": "Accepted"}) is None


@settings(max_examples=300, deadline=None)
@given(protocol=st.sampled_from([V16, V201]),
       current_a=st.floats(min_value=0, max_value=500, allow_nan=False),
       unit=st.sampled_from(["A", "W"]), phases=st.integers(1, 3),
       connector=st.integers(1, 64), lease_s=st.floats(min_value=1, max_value=86_400),
       now=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                        timezones=st.just(UTC)),
       tx=st.one_of(st.none(), st.integers(1, 2**31 - 1).map(str),
                    st.text(min_size=1, max_size=36)))
def test_fast_setpoint_json_is_the_builder_serialised(
        protocol: OcppVersion, current_a: float, unit: str, phases: int, connector: int,
        lease_s: float, now: datetime, tx: str | None) -> None:
    """The send path's hand-formatted frame is character for character the dict builder's
    payload through json.dumps, so everything proven of the builder holds for it."""
    if protocol is V16 and tx is not None and not (tx.isascii() and tx.isdigit()):
        tx = None  # 1.6 transaction ids are integers (the session drops any other)
    limit = limit_for(current_a, unit=unit, phases=phases)
    kwargs: dict[str, Any] = {"connector": connector, "limit": limit, "lease_s": lease_s,
                              "now": now, "transaction_id": tx}
    expected = json.dumps(profiles.setpoint_request(protocol, **kwargs), separators=(",", ":"),
                          allow_nan=False)
    assert profiles.setpoint_json(protocol, **kwargs) == expected
