"""The simulated V2G charger, network-free on a manual clock: CentralSetpoint and
LocalFrequency profiles drive its power stage (ramp, car limits, SoC floor), and its meter
reports signed power in frames valid against the official 2.1 schema."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gridshare.app import csms_settings
from gridshare.config import load_site_config
from gridshare.ocpp_version import OcppVersion
from gridshare.sim import EV, ManualClock, SimCharger
from gridshare.sim.__main__ import _build_site, _parse_args
from gridshare.sim.ocpp201 import meter_value
from gridshare.sim.profiles import format_time, profile_from_v201
from gridshare.sim.schema import validate
from gridshare.sim.v2g import follow_curve, v2x_needs

START = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _charger(*, hz: list[float] | None = None, ramp_s: float = 1.0) -> SimCharger:
    grid = hz if hz is not None else [50.0]
    return SimCharger("V2G1", "ws://127.0.0.1:1", protocol="ocpp2.1", v2x=True,
                      grid_hz=lambda: grid[0], v2x_ramp_s=ramp_s,
                      clock=ManualClock(START), max_current_a=16.0)


def _ev(soc: float = 0.6) -> EV:
    return EV(capacity_kwh=60.0, soc=soc, max_current_a=16.0, phases=3, target_soc=0.9)


def _v2x_profile(charger: SimCharger, period: dict[str, Any], *, duration_s: int = 600,
                 stack: int = 2) -> dict[str, Any]:
    tx = charger.transaction(1)
    assert tx is not None and tx.id is not None
    start = charger.clock.now()
    return {"id": 30_001, "stackLevel": stack, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Absolute", "transactionId": tx.id,
            "validTo": format_time(start + timedelta(seconds=duration_s)),
            "chargingSchedule": [{"id": 1, "startSchedule": format_time(start),
                                  "duration": duration_s, "chargingRateUnit": "W",
                                  "chargingSchedulePeriod": [{"startPeriod": 0, **period}]}]}


def _install(charger: SimCharger, period: dict[str, Any], **kw: Any) -> None:
    raw = _v2x_profile(charger, period, **kw)
    validate(OcppVersion.V21, "SetChargingProfile", {"evseId": 1, "chargingProfile": raw},
             response=False)
    ok, reason = charger.install_profile(profile_from_v201(1, raw, charger.clock.now()))
    assert ok, reason


def _run(charger: SimCharger, seconds: float, dt: float = 0.1) -> list[float]:
    """Step the physics; the power after each step."""
    assert charger.v2g is not None
    out = []
    for _ in range(round(seconds / dt)):
        charger.clock.advance(dt)  # type: ignore[attr-defined]
        charger.step(dt)
        out.append(charger.v2g.power_w(1))
    return out


def test_central_setpoint_discharges_with_a_one_second_ramp() -> None:
    charger = _charger()
    ev = _ev()
    charger.plug_nowait(1, ev)
    _install(charger, {"limit": 0.0, "dischargeLimit": -5000.0, "setpoint": -5000.0,
                       "operationMode": "CentralSetpoint"})
    powers = _run(charger, 3.0)
    assert powers[0] == pytest.approx(-0.1 * 16 * 230 * 3)  # one 0.1 s ramp step
    first_90 = next(i for i, p in enumerate(powers) if p <= -4500) + 1
    assert 0.5 <= first_90 * 0.1 <= 1.0  # ~1 s ramp (full power 11 kW in 1 s)
    assert powers[-1] == pytest.approx(-5000.0)
    assert ev.soc < 0.6
    sample = charger.sample(charger._conn(1))
    assert sample.power_w == 0.0
    assert sample.power_export_w == pytest.approx(5000.0)
    assert sample.energy_export_wh is not None and sample.energy_export_wh > 0
    assert charger.status(1).value == "Charging"


def test_setpoint_bounded_by_the_car_and_the_discharge_limit() -> None:
    charger = _charger(ramp_s=0.0)
    charger.plug_nowait(1, _ev())
    _install(charger, {"limit": 0.0, "dischargeLimit": -20_000.0, "setpoint": -20_000.0,
                       "operationMode": "CentralSetpoint"})
    assert _run(charger, 0.5)[-1] == pytest.approx(-16 * 230 * 3)  # the car's 11 kW
    _install(charger, {"limit": 0.0, "dischargeLimit": -2000.0, "setpoint": -9000.0,
                       "operationMode": "CentralSetpoint"})
    assert _run(charger, 0.5)[-1] == pytest.approx(-2000.0)


def test_no_discharge_below_the_soc_floor() -> None:
    charger = _charger(ramp_s=0.0)
    ev = _ev(soc=0.2001)
    charger.plug_nowait(1, ev)
    _install(charger, {"limit": 0.0, "dischargeLimit": -11_000.0, "setpoint": -11_000.0,
                       "operationMode": "CentralSetpoint"})
    powers = _run(charger, 5.0)
    assert powers[-1] == 0.0
    assert ev.soc == pytest.approx(0.2, abs=1e-9)


def test_local_frequency_follows_the_curve_each_step() -> None:
    hz = [50.0]
    charger = _charger(hz=hz, ramp_s=0.0)
    charger.plug_nowait(1, _ev())
    curve = [{"frequency": 49.8, "power": -8000.0}, {"frequency": 49.98, "power": 0.0},
             {"frequency": 50.02, "power": 0.0}, {"frequency": 50.2, "power": 8000.0}]
    _install(charger, {"limit": 8000.0, "dischargeLimit": -8000.0,
                       "operationMode": "LocalFrequency", "v2xFreqWattCurve": curve})
    assert _run(charger, 0.2)[-1] == 0.0
    hz[0] = 49.89  # half-way down the discharge slope
    assert _run(charger, 0.2)[-1] == pytest.approx(-4000.0)
    hz[0] = 49.0  # beyond the curve: its end point
    assert _run(charger, 0.2)[-1] == pytest.approx(-8000.0)
    hz[0] = 50.11
    assert _run(charger, 0.2)[-1] == pytest.approx(4000.0)


def test_when_the_v2x_profile_ends_plain_charging_resumes() -> None:
    charger = _charger(ramp_s=0.0)
    charger.plug_nowait(1, _ev())
    _install(charger, {"limit": 0.0, "dischargeLimit": -3000.0, "setpoint": -3000.0,
                       "operationMode": "CentralSetpoint"}, duration_s=2)
    assert _run(charger, 1.0)[-1] == pytest.approx(-3000.0)
    _run(charger, 5.0)
    assert charger.v2g is not None and charger.v2g.mode(1) is None
    assert charger.v2g.power_w(1) == 0.0
    assert charger.drawn_a(1)[0] > 0  # charging again at its offered current


def test_meter_value_with_export_is_valid_ocpp21() -> None:
    charger = _charger(ramp_s=0.0)
    charger.plug_nowait(1, _ev())
    _install(charger, {"limit": 0.0, "dischargeLimit": -4000.0, "setpoint": -4000.0,
                       "operationMode": "CentralSetpoint"})
    _run(charger, 1.0)
    mv = meter_value(charger.sample(charger._conn(1)))
    by = {sv["measurand"]: sv["value"] for sv in mv["sampledValue"]}
    assert by["Power.Active.Import"] == 0.0
    assert by["Power.Active.Export"] == 4000.0
    assert by["Energy.Active.Export.Register"] > 0
    tx = charger.transaction(1)
    assert tx is not None
    validate(OcppVersion.V21, "TransactionEvent", {
        "eventType": "Updated", "timestamp": format_time(START), "triggerReason":
        "MeterValuePeriodic", "seqNo": 3, "transactionInfo": {"transactionId": tx.local_id},
        "meterValue": [mv]}, response=False)


def test_v2x_needs_ocpp21() -> None:
    with pytest.raises(ValueError, match=r"speaks ocpp2\.1"):
        SimCharger("X", "ws://x", protocol="ocpp2.0.1", v2x=True)


def _needs_request(charger: SimCharger, ev: EV) -> dict[str, Any]:
    """NotifyEVChargingNeeds as the simulated charger sends it over 2.1 (its 2.0.1 part,
    as in ``Ocpp201Wire._charging_needs``, plus :func:`v2x_needs`), schema-checked."""
    needs: dict[str, Any] = {
        "requestedEnergyTransfer": "AC_three_phase",
        "acChargingParameters": {"energyAmount": 18000, "evMinCurrent": 6,
                                 "evMaxCurrent": 16, "evMaxVoltage": 230}}
    needs.update(v2x_needs(ev, charger.v2g, ev.phases_used(charger.phases)))
    request = {"evseId": 1, "chargingNeeds": needs}
    validate(OcppVersion.V21, "NotifyEVChargingNeeds", request, response=False)
    return needs


def test_a_bpt_car_offers_ac_bpt_with_its_limits() -> None:
    charger = _charger()
    needs = _needs_request(charger, EV(capacity_kwh=60.0, soc=0.6, max_current_a=16.0,
                                       target_soc=0.9, max_discharge_w=7000.0))
    assert needs["requestedEnergyTransfer"] == "AC_BPT"
    assert needs["availableEnergyTransfer"] == ["AC_three_phase", "AC_BPT"]
    assert needs["controlMode"] == "DynamicControl"
    v2x = needs["v2xChargingParameters"]
    assert v2x["maxChargePower"] == 16 * 230 * 3 and v2x["maxDischargePower"] == 7000.0
    assert v2x["evMinV2XEnergyRequest"] == pytest.approx(-24000.0)  # 20 % floor, at 60 %
    assert v2x["evMaxV2XEnergyRequest"] == pytest.approx(18000.0)
    assert v2x["targetSoC"] == 90
    # its on-board charger's rating when it names no limit of its own
    assert _needs_request(charger, _ev())["v2xChargingParameters"][
        "maxDischargePower"] == 16 * 230 * 3


def test_a_car_without_bpt_offers_its_ac_mode_only_and_never_discharges() -> None:
    charger = _charger()
    ev = EV(capacity_kwh=60.0, soc=0.6, max_current_a=16.0, target_soc=0.9, bpt=False)
    needs = _needs_request(charger, ev)
    assert needs["requestedEnergyTransfer"] == "AC_three_phase"
    assert needs["availableEnergyTransfer"] == ["AC_three_phase"]
    assert "v2xChargingParameters" not in needs
    charger.plug_nowait(1, ev)
    _install(charger, {"limit": 0.0, "dischargeLimit": -5000.0, "setpoint": -5000.0,
                       "operationMode": "CentralSetpoint"})
    assert min(_run(charger, 2.0)) == 0.0  # the discharge is ignored: 0 W
    assert ev.soc == 0.6


def test_the_discharge_stops_at_the_cars_own_limit() -> None:
    charger = _charger()
    ev = EV(capacity_kwh=60.0, soc=0.6, max_current_a=16.0, target_soc=0.9,
            max_discharge_w=3000.0)
    charger.plug_nowait(1, ev)
    _install(charger, {"limit": 0.0, "dischargeLimit": -5000.0, "setpoint": -5000.0,
                       "operationMode": "CentralSetpoint"})
    assert _run(charger, 2.0)[-1] == pytest.approx(-3000.0)


def test_a_charger_without_v2x_offers_the_plain_mode() -> None:
    plain = SimCharger("P1", "ws://127.0.0.1:1", protocol="ocpp2.1", clock=ManualClock(START))
    needs = _needs_request(plain, _ev())
    assert needs["availableEnergyTransfer"] == ["AC_three_phase"]


def test_follow_curve_interpolates_and_holds_the_ends() -> None:
    curve = ((49.8, -1000.0), (50.2, 1000.0))
    assert follow_curve(curve, 50.0) == pytest.approx(0.0)
    assert follow_curve(curve, 40.0) == -1000.0
    assert follow_curve(curve, 60.0) == 1000.0


V2X_SITE = """
site: v2x
voltage: 230
groups:
  - {id: main, max_current: 63, chargers: [v2g-1, ac-1]}
chargers:
  - {id: v2g-1, max_current: 16, phases: 3, v2x: true}
  - {id: ac-1, max_current: 16, phases: 3}
"""


def test_ids_from_simulates_a_v2x_charger_as_v2g_over_21(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    site_file.write_text(V2X_SITE)
    args = _parse_args(["--url", "ws://127.0.0.1:9/", "--ids-from", str(site_file),
                        "--protocol", "ocpp2.0.1", "--grid-hz", "49.9"])
    config = load_site_config(site_file)
    sim = _build_site(args, config.topology)
    v2g, plain = sim.chargers["v2g-1"], sim.chargers["ac-1"]
    assert (v2g.protocol, plain.protocol) == ("ocpp2.1", "ocpp2.0.1")
    assert v2g.v2g is not None and plain.v2g is None
    assert v2g.v2g.grid_hz is not None and v2g.v2g.grid_hz() == 49.9
    assert v2g.meter_interval_s == 1.0 and plain.meter_interval_s == 10.0
    # and the central system is told who may discharge
    assert csms_settings(config).v2x == frozenset({"v2g-1"})
