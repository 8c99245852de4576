"""DC stations of the simulator: kW-limited cabinets with CCS and CHAdeMO outlets, cars
whose power follows a profile after a lag and then ramps, and the same real OCPP as every
simulated charger (a TxProfile in W obeyed, Power.Active.Import, SoC and energy metered).

The physics tests step a ManualClock by hand (no network); the OCPP test runs the station
against the test-only central system whose ``ocpp`` package validates every frame.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.v16 import call as c16
from ocpp.v201 import call as c201
from sim_csms import TestCSMS, eventually

from gridshare.sim import ChargingProfile, ManualClock, Period, Purpose, ScaledClock
from gridshare.sim.dc import CCS_150, CHADEMO_50, DcConnector, DcEV, DcStation, a_to_kw, kw_to_a

T0 = datetime(2025, 6, 1, 12, tzinfo=UTC)
V = 230.0
DT = 0.1


def car(**kw: Any) -> DcEV:
    kw.setdefault("capacity_kwh", 77.0)
    kw.setdefault("soc", 0.2)
    kw.setdefault("setpoint_lag_s", 3.0)
    return DcEV(**kw)


def station(clock: ManualClock, **kw: Any) -> DcStation:
    return DcStation("DC1", "ws://127.0.0.1:1", clock=clock, **kw)


def plug(ch: DcStation, ev: DcEV, connector: int = 1) -> None:
    """Plug in without a CSMS; the transaction gets the id a CSMS would have given."""
    ch.plug_nowait(connector, ev)
    ch.transaction(connector).id = str(40 + connector)  # type: ignore[union-attr]


def watts(pid: int, limit_w: float, connector: int = 1,
          installed: datetime = T0) -> ChargingProfile:
    return ChargingProfile(id=pid, connector=connector, purpose=Purpose.TX, stack_level=0,
                           kind="Relative", unit="W", periods=(Period(0, limit_w),),
                           installed_at=installed)


def run(ch: DcStation, clock: ManualClock, seconds: float, connector: int = 1) -> list[float]:
    """Step ``seconds``; the kW the connector drew at each step."""
    out = []
    for _ in range(round(seconds / DT)):
        clock.advance(DT)
        ch.step(DT)
        out.append(ch.power_kw(connector))
    return out


def test_w_profile_is_followed_after_the_lag_ramping_down_fast_and_up_slowly() -> None:
    clock = ManualClock(T0)
    ch = station(clock)
    ev = car(max_power_kw=150.0, ramp_up_kw_s=15.0, ramp_down_kw_s=60.0, setpoint_lag_s=3.0)
    plug(ch, ev)
    ramp = run(ch, clock, 12.0)
    # Up from nothing at 15 kW/s after the lag: 3 s of nothing, 10 s to reach 150 kW.
    assert ramp[int(3.0 / DT) - 2] == 0.0
    assert ramp[int(8.0 / DT) - 1] == pytest.approx(15.0 * 5.0, abs=1.6)
    assert max(ramp) <= 150.0 + 1e-6
    run(ch, clock, 2.0)
    assert ch.power_kw(1) == pytest.approx(150.0, abs=0.1)  # pilot resolution 0.1 A
    accepted, _ = ch.install_profile(watts(1, 60_000.0, installed=clock.now()))
    assert accepted
    assert ch.offered_kw(1) == pytest.approx(60.0, abs=0.1)  # the station obeys at once
    down = run(ch, clock, 6.0)
    # The car keeps drawing 150 kW for its lag, then sheds 90 kW at 60 kW/s: 1.5 s.
    assert min(down[: int(3.0 / DT) - 1]) == pytest.approx(150.0, abs=0.1)
    assert down[int(4.0 / DT) - 1] == pytest.approx(150.0 - 60.0 * 1.0, abs=6.1)
    assert down[int(4.5 / DT) + 1] == pytest.approx(60.0, abs=0.1)
    assert down[-1] == pytest.approx(60.0, abs=0.1)
    # Raised again: slow on the way up (15 kW/s), still after the lag.
    assert ch.install_profile(watts(1, 120_000.0, installed=clock.now()))[0]
    up = run(ch, clock, 6.0)
    assert up[int(3.0 / DT) - 2] == pytest.approx(60.0, abs=0.1)
    assert up[int(5.0 / DT) - 1] == pytest.approx(60.0 + 15.0 * 2.0, abs=1.6)
    assert up[-1] < 120.0


def test_amp_profile_is_obeyed_too() -> None:
    clock = ManualClock(T0)
    ch = station(clock)
    plug(ch, car(setpoint_lag_s=0.5))
    profile = ChargingProfile(id=2, connector=1, purpose=Purpose.TX, stack_level=0,
                              kind="Relative", unit="A", periods=(Period(0, 100.0),),
                              installed_at=T0)
    assert ch.install_profile(profile)[0]
    run(ch, clock, 20.0)
    assert ch.drawn_a(1) == pytest.approx((100.0, 100.0, 100.0))
    assert ch.power_kw(1) == pytest.approx(a_to_kw(100.0, V))


def test_chademo_outlet_is_limited_to_its_rating_and_the_cabinet_is_shared() -> None:
    clock = ManualClock(T0)
    ch = station(clock)
    assert ch.outlet(1) == CCS_150 and ch.outlet(2) == CHADEMO_50
    plug(ch, car(max_power_kw=100.0, setpoint_lag_s=0.0), connector=2)
    run(ch, clock, 10.0, connector=2)
    assert ch.offered_kw(2) == pytest.approx(50.0, abs=0.1)
    assert ch.power_kw(2) == pytest.approx(50.0, abs=0.1)
    # A 150 kW car on the CCS outlet gets what the 150 kW cabinet has left over: the
    # cabinet is shared max-min fairly (75 / 50 -> 100 / 50).
    plug(ch, car(max_power_kw=150.0, setpoint_lag_s=0.0), connector=1)
    run(ch, clock, 15.0)
    assert ch.offered_kw(1) + ch.offered_kw(2) <= 150.0 + 0.1
    assert ch.power_kw() == pytest.approx(150.0, abs=0.2)
    assert ch.power_kw(2) == pytest.approx(50.0, abs=0.1)
    with pytest.raises(ValueError, match="DC1 has no connector 3"):
        ch.outlet(3)


def test_a_full_battery_tapers_the_power() -> None:
    clock = ManualClock(T0)
    ch = station(clock, outlets=(DcConnector("CCS", 150.0),))
    plug(ch, car(soc=0.8, target_soc=1.0, setpoint_lag_s=0.0))
    run(ch, clock, 12.0)
    # Half of 150 kW at 80 % (the taper starts at 55 %, a tenth of it is left at 100 %).
    assert ch.power_kw(1) == pytest.approx(75.0, abs=1.0)


def test_bad_stations_and_cars_are_refused_by_name() -> None:
    clock = ManualClock(T0)
    with pytest.raises(ValueError, match="max_kw must be a positive number"):
        station(clock, max_kw=0.0)
    with pytest.raises(TypeError, match="DcStation sets phases"):
        station(clock, phases=1)
    with pytest.raises(ValueError, match="ramp_up_kw_s and ramp_down_kw_s"):
        car(ramp_down_kw_s=0.0)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0.01, 2.0), st.floats(0.0, 300.0)), min_size=1, max_size=60),
    up=st.floats(1.0, 30.0),
    down=st.floats(1.0, 120.0),
    soc=st.floats(0.0, 0.99),
)
def test_ramp_is_bounded_and_energy_is_exact(
    steps: list[tuple[float, float]], up: float, down: float, soc: float
) -> None:
    ev = car(soc=soc, target_soc=1.0, ramp_up_kw_s=up, ramp_down_kw_s=down)
    stored0 = ev.soc * ev.capacity_kwh * 1000.0
    metered_wh = 0.0
    before = 0.0
    for dt, offered in steps:
        drawn = ev.step(dt, offered, V, 3)
        assert drawn >= 0.0
        # never faster than the ramps, never above the battery's curve
        assert a_to_kw(drawn - before, V) <= up * dt + 1e-6
        assert a_to_kw(before - drawn, V) <= down * dt + 1e-6 or drawn == 0.0
        assert drawn <= ev.max_current_a + 1e-9
        metered_wh += drawn * V * 3 * dt / 3600.0
        before = ev.ramp_a
    assert ev.energy_charged_wh == pytest.approx(metered_wh, abs=1e-6)
    assert ev.soc * ev.capacity_kwh * 1000.0 - stored0 == pytest.approx(metered_wh, abs=1e-6)


def sampled(payload: dict[str, Any]) -> dict[str, float]:
    """measurand -> value (phase-less values) of a MeterValues / TransactionEvent."""
    out: dict[str, float] = {}
    for mv in payload.get("meter_value") or []:
        for sv in mv["sampled_value"]:
            if sv.get("phase") is None:
                out[sv.get("measurand", "Energy.Active.Import.Register")] = float(sv["value"])
    return out


def w_profile(ch: DcStation, limit_w: float) -> Any:
    period = {"start_period": 0, "limit": limit_w}
    sched: dict[str, Any] = {"charging_rate_unit": "W", "charging_schedule_period": [period]}
    tx = ch.transaction(1)
    assert tx is not None and tx.id is not None
    if ch.protocol == "ocpp1.6":
        return c16.SetChargingProfile(connector_id=1, cs_charging_profiles={
            "charging_profile_id": 7, "stack_level": 1, "charging_profile_purpose": "TxProfile",
            "charging_profile_kind": "Relative", "charging_schedule": sched,
            "transaction_id": int(tx.id)})
    return c201.SetChargingProfile(evse_id=1, charging_profile={
        "id": 7, "stack_level": 1, "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Relative", "charging_schedule": [{"id": 7, **sched}],
        "transaction_id": tx.id})


@pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
async def test_station_over_ocpp_obeys_a_w_profile_and_meters_power_soc_energy(
    protocol: str, csms: TestCSMS
) -> None:
    clock = ScaledClock(speed=10)
    ch = DcStation("DC-OCPP", csms.url, protocol=protocol, clock=clock, meter_interval_s=1,
                   reconnect_min_s=0.1, reconnect_max_s=0.5)
    try:
        await ch.start(tick_s=0.2)
        assert await ch.wait_connected(5)
        ev = car(max_power_kw=150.0, ramp_up_kw_s=20.0, ramp_down_kw_s=80.0,
                 setpoint_lag_s=2.0)
        tx = await ch.plug(1, ev)
        assert tx.id is not None
        await eventually(lambda: ch.power_kw(1) > 149.0, 10)
        res = await csms.call("DC-OCPP", w_profile(ch, 40_000.0))
        assert res.status == "Accepted"
        assert ch.offered_kw(1) == pytest.approx(40.0, abs=0.1)
        assert ch.power_kw(1) > 100.0  # the car has not reacted yet: its lag
        await eventually(lambda: ch.power_kw(1) == pytest.approx(40.0, abs=0.1), 10)
        # The meter values say so: power (W, the whole station), SoC and energy.
        action = "MeterValues" if protocol == "ocpp1.6" else "TransactionEvent"
        [msg] = await csms.wait_for(
            action, "DC-OCPP",
            lambda p: abs(sampled(p).get("Power.Active.Import", 0.0) - 40_000.0) < 100.0,
            timeout_s=10)
        values = sampled(msg.payload)
        assert 20.0 < values["SoC"] <= 100.0
        assert values["Energy.Active.Import.Register"] > 0.0
        assert values["Energy.Active.Import.Register"] <= ch.energy_wh(1) + 1.0  # 1.6: whole Wh
    finally:
        await ch.stop()


def test_conversions_round_trip() -> None:
    assert kw_to_a(150.0, V) == pytest.approx(217.391, abs=1e-3)
    assert a_to_kw(kw_to_a(42.0, V), V) == pytest.approx(42.0)


def test_settle_starts_a_car_at_the_offered_power_and_refuses_an_ac_car() -> None:
    from gridshare.sim import EV

    clock = ManualClock(T0)
    ch = station(clock)
    plug(ch, car(setpoint_lag_s=5.0, ramp_up_kw_s=10.0))
    ch.settle(1)  # a car that was charging before the simulation began
    assert run(ch, clock, 0.5) == pytest.approx([150.0] * 5, abs=0.1)
    other = station(clock)
    other.plug_nowait(1, EV(capacity_kwh=60.0, soc=0.5))
    with pytest.raises(TypeError, match="DC1 connector 1 has no DC car to settle"):
        other.settle(1)


def test_a_site_file_with_ccs_and_chademo_connectors_is_simulated_with_dc_stations_and_cars(
) -> None:
    from pathlib import Path

    from gridshare.config import load_site_config
    from gridshare.sim.__main__ import _build_site, _parse_args

    plaza = Path(__file__).resolve().parents[2] / "src/gridshare/examples/plaza.yaml"
    args = _parse_args(["--url", "ws://127.0.0.1:9/", "--ids-from", str(plaza),
                        "--initial-occupancy", "1", "--chargers", "4"])
    sim = _build_site(args, load_site_config(plaza).topology)
    assert list(sim.chargers) == ["dc-01", "dc-02", "dc-03", "dc-04"]
    for ch in sim.chargers.values():
        assert isinstance(ch, DcStation) and ch.max_kw == pytest.approx(150.0)
        assert [(o.type, round(o.max_kw, 3)) for o in ch.outlets] == [
            ("CCS", 150.0), ("CHAdeMO", 50.0)]
    sim.clock = clock = ManualClock(T0)
    for ch in sim.chargers.values():
        ch.clock = clock
    sim.advance(1.0)  # the scenario seeds its cars: DC cars at DC stations
    cars = [ch.ev(c) for ch in sim.chargers.values() for c in (1, 2)]
    assert cars and all(isinstance(ev, DcEV) for ev in cars)
