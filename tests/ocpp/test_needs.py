"""NotifyEVChargingNeeds parsing (:mod:`gridshare.adapters.ocpp.needs`): every request here
is first proven valid against the official 2.1 (or 2.0.1) schema, then parsed as the
handlers get it (snake_case keys)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare.adapters.ocpp.needs import parse_charging_needs
from gridshare.adapters.ocpp.rpc import snake_keys
from gridshare.core.v2x_offer import BPT_MODES, V2xOffer, discharge_cap_w, offer_refusal
from gridshare.ocpp_version import OcppVersion
from gridshare.sim.schema import checker

AC = {"energyAmount": 20000, "evMinCurrent": 6, "evMaxCurrent": 16, "evMaxVoltage": 230}
MODES = ["AC_single_phase", "AC_two_phase", "AC_three_phase", "DC", "AC_BPT", "AC_BPT_DER",
         "AC_DER", "DC_BPT", "DC_ACDP", "DC_ACDP_BPT", "WPT"]


def parse(needs: dict[str, Any], version: OcppVersion = OcppVersion.V21):
    """Validate the request against the official schema, then parse it."""
    checker(version, "NotifyEVChargingNeeds", False)({"evseId": 1, "chargingNeeds": needs})
    return parse_charging_needs(snake_keys(needs), protocol=version)


def test_a_bpt_car_offers_its_modes_and_limits() -> None:
    needs = parse({
        "requestedEnergyTransfer": "AC_BPT",
        "availableEnergyTransfer": ["AC_three_phase", "AC_BPT"],
        "controlMode": "DynamicControl",
        "acChargingParameters": AC,
        "departureTime": "2026-11-30T18:00:00Z",
        "v2xChargingParameters": {
            "maxChargePower": 11000, "maxDischargePower": 7400, "minDischargePower": 1000,
            "evMinV2XEnergyRequest": -12000, "evMaxV2XEnergyRequest": 18000,
            "targetSoC": 80}})
    assert needs.rejects == ()
    assert needs.energy_wh == 20000 and needs.max_current_a == 16
    assert needs.departure is not None and needs.departure.hour == 18
    offer = needs.offer
    assert offer == V2xOffer(
        modes=("AC_three_phase", "AC_BPT"), requested="AC_BPT",
        control_mode="DynamicControl", max_discharge_w=7400.0, min_discharge_w=1000.0,
        max_charge_w=11000.0, min_charge_w=None, min_v2x_energy_wh=-12000.0,
        max_v2x_energy_wh=18000.0, target_soc=80)
    assert offer.bidirectional
    assert discharge_cap_w(10_000, offer) == 7400 and discharge_cap_w(5_000, offer) == 5000
    assert offer_refusal("cp", 1, offer) is None


def test_a_car_without_bpt_offers_no_discharge() -> None:
    needs = parse({"requestedEnergyTransfer": "AC_three_phase",
                   "availableEnergyTransfer": ["AC_three_phase", "AC_single_phase"],
                   "acChargingParameters": AC})
    offer = needs.offer
    assert offer is not None and not offer.bidirectional
    assert offer.modes == ("AC_three_phase", "AC_single_phase")
    assert discharge_cap_w(11_000, offer) == 0.0
    why = offer_refusal("cp-7", 2, offer)
    assert why is not None
    assert "cp-7 connector 2" in why and "AC_three_phase, AC_single_phase" in why
    assert "AC_BPT" in why  # what it would need


def test_without_available_modes_only_the_requested_one_is_known() -> None:
    """availableEnergyTransfer is optional: the requested mode alone decides (fail closed:
    a car asking AC_three_phase is not assumed to discharge)."""
    plain = parse({"requestedEnergyTransfer": "AC_three_phase", "acChargingParameters": AC})
    assert plain.offer is not None and plain.offer.modes == ("AC_three_phase",)
    assert not plain.offer.bidirectional
    bpt = parse({"requestedEnergyTransfer": "DC_BPT",
                 "dcChargingParameters": {"evMaxCurrent": 200, "evMaxVoltage": 800}})
    assert bpt.offer is not None and bpt.offer.bidirectional
    assert bpt.offer.max_discharge_w is None
    assert discharge_cap_w(11_000, bpt.offer) == 11_000  # no limit sent: the unit's


def test_per_phase_discharge_powers_add_up() -> None:
    """With L2/L3 values the field is L1's (2.1 schema): the total is the sum."""
    needs = parse({"requestedEnergyTransfer": "AC_BPT", "availableEnergyTransfer": ["AC_BPT"],
                   "v2xChargingParameters": {"maxDischargePower": 2000,
                                             "maxDischargePower_L2": 2000,
                                             "maxDischargePower_L3": 1500}})
    assert needs.offer is not None and needs.offer.max_discharge_w == 5500


def test_over_201_there_is_no_offer() -> None:
    needs = parse({"requestedEnergyTransfer": "AC_three_phase", "acChargingParameters": AC},
                  OcppVersion.V201)
    assert needs.offer is None and needs.energy_wh == 20000
    assert discharge_cap_w(11_000, None) == 11_000
    assert offer_refusal("cp", 1, None) is None


@pytest.mark.parametrize("bad", [-1, -7400.5])
def test_a_negative_max_discharge_is_refused_and_read_as_none(bad: float) -> None:
    """The schema types it but does not bound it: fail closed, no discharge."""
    needs = parse({"requestedEnergyTransfer": "AC_BPT", "availableEnergyTransfer": ["AC_BPT"],
                   "v2xChargingParameters": {"maxDischargePower": bad}})
    assert ("needs_bad_value", "maxDischargePower") in needs.rejects
    assert needs.offer is not None and needs.offer.max_discharge_w == 0.0
    assert discharge_cap_w(11_000, needs.offer) == 0.0


def test_nan_configured_power_counts_as_none() -> None:
    assert discharge_cap_w(float("nan"), None) == 0.0
    assert discharge_cap_w(float("inf"), None) == float("inf")


@given(modes=st.lists(st.sampled_from(MODES), min_size=1, max_size=5),
       max_w=st.none() | st.floats(0, 50_000), configured_w=st.floats(0, 50_000))
def test_any_offer_caps_below_the_car_and_the_unit(modes: list[str], max_w: float | None,
                                                   configured_w: float) -> None:
    v2x: dict[str, Any] = {} if max_w is None else {"maxDischargePower": max_w}
    needs = parse({"requestedEnergyTransfer": modes[0], "availableEnergyTransfer": modes,
                   "v2xChargingParameters": v2x})
    assert needs.offer is not None
    cap = discharge_cap_w(configured_w, needs.offer)
    assert 0.0 <= cap <= configured_w
    if max_w is not None:
        assert cap <= max_w
    if not BPT_MODES & set(modes):
        assert cap == 0.0 and offer_refusal("cp", 1, needs.offer) is not None
    else:
        assert offer_refusal("cp", 1, needs.offer) is None
