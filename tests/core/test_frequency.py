"""Frequency response core: droop, hysteresis, safety window, stale source, guards."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.core.frequency import (
    CycleCounter,
    FrequencyResponder,
    FrequencySettings,
    Mode,
    UnitKind,
    UnitSpec,
    UnitState,
    droop_fraction,
)

SET = FrequencySettings(nominal_hz=60.0, deadband_hz=0.020, full_activation_hz=0.200,
                        window_low_hz=59.5, window_high_hz=60.5)
V2G = UnitSpec("v2g-1", UnitKind.CHARGER, max_discharge_kw=10, max_charge_kw=11,
               capacity_kwh=60, min_soc_pct=40, max_cycles_per_day=2)
BESS = UnitSpec("bess-1", UnitKind.BATTERY, max_discharge_kw=50, max_charge_kw=50,
                capacity_kwh=100, min_soc_pct=10)
STATES = {"v2g-1": UnitState("v2g-1", base_kw=7.0, soc_pct=80),
          "bess-1": UnitState("bess-1", base_kw=0.0, soc_pct=60)}


def responder(*units: UnitSpec, s: FrequencySettings = SET) -> FrequencyResponder:
    return FrequencyResponder(s, units or (V2G, BESS), at=0.0)


# --- droop_fraction ----------------------------------------------------------------------


@pytest.mark.parametrize(("dev", "want"), [
    (0.0, 0.0), (0.020, 0.0), (-0.020, 0.0), (0.110, 0.5), (-0.110, -0.5),
    (0.200, 1.0), (-0.200, -1.0), (0.9, 1.0), (-3.0, -1.0)], ids=str)
def test_droop_table(dev: float, want: float) -> None:
    assert droop_fraction(dev, 0.020, 0.200) == pytest.approx(want)


@pytest.mark.parametrize(("args", "word"), [
    ((math.nan, 0.02, 0.2), "deviation_hz"), ((0.1, -0.01, 0.2), "deadband"),
    ((0.1, 0.02, 0.02), "full_activation"), ((0.1, 0.02, math.inf), "full_activation")])
def test_droop_bad_input_named(args: tuple[float, float, float], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        droop_fraction(*args)


finite = st.floats(-5, 5, allow_nan=False)


@given(finite, finite)
def test_droop_monotonic_signed_bounded(a: float, b: float) -> None:
    fa, fb = droop_fraction(a, 0.02, 0.2), droop_fraction(b, 0.02, 0.2)
    assert -1.0 <= fa <= 1.0
    assert fa == 0.0 or math.copysign(1, fa) == math.copysign(1, a)
    if abs(a) <= abs(b):
        assert abs(fa) <= abs(fb)
    if abs(a) <= 0.02:
        assert fa == 0.0
    if abs(a) >= 0.2:
        assert abs(fa) == 1.0


# --- dispatch ----------------------------------------------------------------------------


def test_below_nominal_discharges_in_proportion_to_headroom() -> None:
    d = responder().sample(1.0, 59.89, STATES)  # Δf = -110 mHz: half power
    assert d.mode is Mode.RESPONDING and d.fraction == pytest.approx(-0.5)
    assert d.request_kw == pytest.approx(-(10 + 50) * 0.5)
    by = {u.id: u for u in d.units}
    # headroom: v2g 7 + 10 = 17 kW, bess 0 + 50 = 50 kW; 30 kW shared 17:50
    assert by["v2g-1"].delta_kw == pytest.approx(-30 * 17 / 67)
    assert by["bess-1"].delta_kw == pytest.approx(-30 * 50 / 67)
    assert by["v2g-1"].setpoint_kw == pytest.approx(7 - 30 * 17 / 67)
    assert d.dispatched_kw == pytest.approx(d.request_kw)


def test_above_nominal_charges_more_and_saturates() -> None:
    d = responder().sample(1.0, 60.35, STATES)
    by = {u.id: u for u in d.units}
    assert d.fraction == 1.0 and d.request_kw == pytest.approx(61)
    # headroom: v2g 11 - 7 = 4, bess 50: short of 61, each unit to its limit
    assert by["v2g-1"].setpoint_kw == pytest.approx(11)
    assert by["bess-1"].setpoint_kw == pytest.approx(50)
    assert d.dispatched_kw == pytest.approx(54)


def test_inside_deadband_nothing_moves() -> None:
    d = responder().sample(1.0, 60.015, STATES)
    assert d.mode is Mode.IDLE
    assert all(u.delta_kw == 0 and u.held is None for u in d.units)


def test_min_soc_holds_back_discharge_and_share_goes_to_others() -> None:
    states = {**STATES, "v2g-1": UnitState("v2g-1", base_kw=0.0, soc_pct=40)}
    d = responder().sample(1.0, 59.89, states)
    by = {u.id: u for u in d.units}
    assert by["v2g-1"].delta_kw == 0 and "min_soc" in (by["v2g-1"].held or "")
    assert by["bess-1"].delta_kw == pytest.approx(-30)


def test_departure_need_and_dod_raise_the_floor() -> None:
    spec = UnitSpec("b", UnitKind.BATTERY, 50, 50, 100, min_soc_pct=10, max_dod_pct=70)
    r = responder(spec)
    d = r.sample(1.0, 59.7, {"b": UnitState("b", soc_pct=30)})
    # floor 30 % (100 - 70): nothing above it
    assert d.units[0].delta_kw == 0 and "max_dod" in (d.units[0].held or "")
    d = r.sample(2.0, 59.7, {"b": UnitState("b", soc_pct=40, need_soc_pct=38)})
    # 2 kWh above the driver's 38 % for 15 min: at most 8 kW
    assert d.units[0].delta_kw == pytest.approx(-8)
    assert "departure need" in (d.units[0].held or "")


def test_unknown_soc_or_no_v2x_charges_less_only() -> None:
    states = {"v2g-1": UnitState("v2g-1", base_kw=7.0, soc_pct=None),
              "bess-1": UnitState("bess-1", base_kw=5.0, soc_pct=90, can_discharge=False)}
    d = responder().sample(1.0, 59.5, states)
    assert {u.id: u.setpoint_kw for u in d.units} == pytest.approx({"v2g-1": 0, "bess-1": 0})


@pytest.mark.parametrize(("car_kw", "setpoint_kw"), [
    (None, -10.0),  # no offer: the unit's 10 kW
    (12.0, -10.0),  # the car offers more: the unit's still
    (3.0, -3.0),  # the car's maxDischargePower
    (0.0, 0.0),
    (math.nan, 0.0),  # fail closed
], ids=["none", "above", "below", "zero", "nan"])
def test_the_cars_max_discharge_clips_the_unit(car_kw: float | None,
                                               setpoint_kw: float) -> None:
    state = UnitState("v2g-1", base_kw=0.0, soc_pct=90, max_discharge_kw=car_kw)
    d = responder(V2G).sample(1.0, 59.7, {"v2g-1": state})
    assert d.units[0].setpoint_kw == pytest.approx(setpoint_kw)
    if car_kw is not None and not car_kw >= 10:
        assert "maxDischargePower" in (d.units[0].held or "")


def test_absent_unit_takes_no_part() -> None:
    d = responder().sample(1.0, 59.89, {"bess-1": STATES["bess-1"]})
    assert [u.id for u in d.units] == ["bess-1"]
    assert d.request_kw == pytest.approx(-25)


def test_cycle_cap_holds_unit_back_for_a_rolling_day() -> None:
    spec = UnitSpec("c", UnitKind.CHARGER, 10, 10, 10, min_soc_pct=0, max_cycles_per_day=1)
    r = responder(spec)
    state = {"c": UnitState("c", soc_pct=50)}
    d = r.sample(1.0, 60.3, state)
    assert d.units[0].setpoint_kw == 10
    # 10 kW for 1 h = 10 kWh = half a cycle; 2 h = one full cycle
    d = r.sample(1.0 + 3600, 60.3, state)
    assert d.units[0].setpoint_kw == 10
    d = r.sample(1.0 + 7200, 60.3, state)
    assert r.cycles("c", 7201) == pytest.approx(1.0)
    assert d.units[0].delta_kw == 0 and "max_cycles_per_day" in (d.units[0].held or "")
    d = r.sample(1.0 + 7200 + 86_400, 60.3, state)
    assert d.units[0].setpoint_kw == 10


def test_a_unit_held_by_its_cycles_leaves_its_share_to_the_others() -> None:
    tired = UnitSpec("t", UnitKind.CHARGER, 10, 10, 10, min_soc_pct=0, max_cycles_per_day=0.5)
    r = responder(tired, BESS)
    states = {"t": UnitState("t", soc_pct=50), "bess-1": UnitState("bess-1", soc_pct=60)}
    r.sample(0.0, 60.3, states)  # t charges 10 kW for an hour: half a cycle
    d = r.sample(3600.0, 59.89, states)
    by = {u.id: u for u in d.units}
    assert "max_cycles_per_day" in (by["t"].held or "") and by["t"].delta_kw == 0
    assert d.request_kw == pytest.approx(-(10 + 50) * 0.5)
    assert by["bess-1"].delta_kw == pytest.approx(-30)


def test_stale_before_the_first_sample() -> None:
    r = responder()
    assert r.mode is Mode.SAFE
    assert r.check(0.5, STATES) is None
    d = r.check(1.5, STATES)
    assert d is not None and "no valid frequency sample for 1.5 s" in (d.alarm or "")


def test_cycle_counter_forgets_after_a_day() -> None:
    c = CycleCounter()
    c.add(0.0, 5.0)
    c.add(30_000.0, -5.0)
    assert c.cycles(30_000.0, 10.0) == pytest.approx(0.5)
    assert c.throughput_kwh(86_400.0 + 120) == pytest.approx(5.0)
    assert c.throughput_kwh(30_000.0 + 86_400 + 120) == 0.0


# --- hysteresis --------------------------------------------------------------------------


def test_hysteresis_edge() -> None:
    r = responder()
    assert r.sample(1.0, 59.979, STATES).mode is Mode.RESPONDING  # 21 mHz
    assert r.sample(1.1, 59.984, STATES).mode is Mode.RESPONDING  # 16 mHz: inside the band
    assert r.sample(1.2, 59.9849, STATES).mode is Mode.RESPONDING
    assert r.sample(1.3, 59.986, STATES).mode is Mode.IDLE  # 14 mHz < 20 - 5


@settings(max_examples=200)
@given(st.booleans(), st.lists(st.floats(0.0151, 0.0249), min_size=1, max_size=60),
       st.lists(st.booleans(), min_size=60, max_size=60))
def test_no_chattering_in_the_band(engaged: bool, sizes: list[float],
                                   below: list[bool]) -> None:
    """Any sequence that stays above deadband − hysteresis switches the response on at
    most once and never off; inside the dead band the output does not move."""
    r = responder()
    if engaged:
        assert r.sample(0.5, 59.9, STATES).mode is Mode.RESPONDING
    modes = []
    for i, size in enumerate(sizes):
        hz = 60.0 - size if below[i] else 60.0 + size
        d = r.sample(1.0 + i * 0.01, hz, STATES)
        modes.append(d.mode)
        if abs(hz - 60.0) <= 0.020:  # the deviation as computed (60.02 - 60 > 0.02)
            assert all(u.delta_kw == 0 for u in d.units)
    assert sum(a is not b for a, b in itertools.pairwise(modes)) <= 1
    if Mode.RESPONDING in modes:
        assert Mode.IDLE not in modes[modes.index(Mode.RESPONDING):]
    if engaged:
        assert set(modes) == {Mode.RESPONDING}


# --- safety window, bad samples, stale source --------------------------------------------


def test_safety_window_puts_units_safe_with_alarm_and_recovers_after_hold() -> None:
    r = responder()
    d = r.sample(1.0, 59.4, STATES)
    assert d.mode is Mode.SAFE and "outside the safety window" in (d.alarm or "")
    assert {u.id: u.setpoint_kw for u in d.units} == {"v2g-1": 7.0, "bess-1": 0.0}
    d = r.sample(2.0, 59.9, STATES)
    assert d.mode is Mode.SAFE and "back inside" in (d.alarm or "")
    d = r.sample(7.0, 59.9, STATES)
    assert d.mode is Mode.RESPONDING and d.alarm is None


def test_safe_state_never_discharges() -> None:
    states = {"v2g-1": UnitState("v2g-1", base_kw=-5.0, soc_pct=80),
              "bess-1": UnitState("bess-1", base_kw=20.0, soc_pct=60)}
    d = responder().sample(1.0, 60.6, states)
    assert {u.id: u.setpoint_kw for u in d.units} == {"v2g-1": 0.0, "bess-1": 20.0}


@pytest.mark.parametrize(("hz", "reason"), [(math.nan, "nan"), (math.inf, "nan"),
                                            (-math.inf, "nan"), (0.0, "range"),
                                            (66.0, "range")])
def test_bad_samples_rejected_and_counted(hz: float, reason: str) -> None:
    r = responder()
    good = r.sample(1.0, 59.89, STATES)
    d = r.sample(1.01, hz, STATES)
    assert d.rejected is not None and r.rejected == {reason: 1}
    assert d.units == good.units  # the previous decision holds


def test_time_going_back_is_rejected() -> None:
    r = responder()
    r.sample(2.0, 60.0, STATES)
    d = r.sample(1.5, 59.8, STATES)
    assert r.rejected == {"time": 1} and "not after" in (d.rejected or "")


def test_stale_source_goes_safe_then_recovers() -> None:
    r = responder()
    r.sample(1.0, 59.89, STATES)
    assert r.check(1.9, STATES) is None
    d = r.check(2.5, STATES)
    assert d is not None and d.mode is Mode.SAFE and "stale" in (d.alarm or "")
    assert all(u.setpoint_kw >= 0 for u in d.units)
    assert r.sample(2.6, 59.89, STATES).mode is Mode.RESPONDING


def test_only_bad_samples_turn_stale() -> None:
    r = responder()
    r.sample(0.5, 60.0, STATES)
    d = r.sample(2.0, math.nan, STATES)
    assert d.mode is Mode.SAFE and "stale" in (d.alarm or "")


def test_settings_checked() -> None:
    with pytest.raises(ValueError, match="hysteresis"):
        FrequencySettings(60, 0.02, 0.2, 59.5, 60.5, hysteresis_hz=0.02)
    with pytest.raises(ValueError, match="safety window"):
        FrequencySettings(60, 0.02, 0.2, 60.1, 60.5)
    with pytest.raises(ValueError, match="duplicate unit"):
        responder(V2G, V2G)


# --- properties of the dispatch -----------------------------------------------------------

unit_draft = st.tuples(st.floats(0, 60), st.floats(0, 60), st.floats(1, 200), st.floats(0, 90),
                       st.floats(-20, 60), st.one_of(st.none(), st.floats(0, 100)),
                       st.booleans(), st.booleans(), st.floats(0, 100), st.floats(0, 100))
Draft = tuple[float, float, float, float, float, float | None, bool, bool, float, float]


def build(drafts: list[Draft]) -> tuple[list[UnitSpec], dict[str, UnitState]]:
    specs, states = [], {}
    for i, (dis, chg, cap, min_soc, base, soc, v2x, present, dod, need) in enumerate(drafts):
        uid = f"u{i}"
        specs.append(UnitSpec(uid, UnitKind.BATTERY, dis, chg, cap, min_soc, dod))
        states[uid] = UnitState(uid, base, soc, present, v2x, need)
    return specs, states


@settings(max_examples=200)
@given(st.lists(unit_draft, min_size=1, max_size=12), st.floats(59.55, 60.45))
def test_dispatch_properties(drafts: list[Draft], hz: float) -> None:
    specs, states = build(drafts)
    r = responder(*specs)
    d = r.sample(1.0, hz, states)
    fraction = droop_fraction(hz - 60.0, 0.02, 0.2)
    assert d.fraction == pytest.approx(fraction)
    room = 0.0
    for u in d.units:
        spec, s = r.units[u.id], states[u.id]
        assert s.present
        assert u.setpoint_kw == pytest.approx(s.base_kw + u.delta_kw)
        assert u.delta_kw == 0 or math.copysign(1, u.delta_kw) == math.copysign(1, fraction)
        if u.delta_kw > 0:  # never beyond the unit's charge limit
            assert u.setpoint_kw <= spec.max_charge_kw + 1e-6
        if u.delta_kw < 0 and u.setpoint_kw < 0:  # discharging: limits and guards
            assert s.can_discharge and s.soc_pct is not None
            assert -u.setpoint_kw <= spec.max_discharge_kw + 1e-6
            left = s.soc_pct / 100 * spec.capacity_kwh + u.setpoint_kw * 0.25
            floor = max(spec.min_soc_pct, 100 - spec.max_dod_pct, s.need_soc_pct)
            assert left >= floor / 100 * spec.capacity_kwh - 1e-6
        if u.delta_kw < 0:
            assert u.setpoint_kw >= -spec.max_discharge_kw - 1e-6
        room += abs(u.delta_kw)
    assert abs(d.dispatched_kw) <= abs(d.request_kw) + 1e-6
    assert sum(u.delta_kw for u in d.units) == pytest.approx(d.dispatched_kw, abs=1e-9)
    if abs(d.dispatched_kw) < abs(d.request_kw) - 1e-6:  # short: every unit at its limit
        for u in d.units:
            spec, s = r.units[u.id], states[u.id]
            if fraction > 0 and u.held is None:
                assert u.setpoint_kw == pytest.approx(max(spec.max_charge_kw, s.base_kw),
                                                      abs=1e-6)


@settings(max_examples=100)
@given(st.floats(0, 0.3), st.floats(0, 0.3))
def test_response_monotonic_in_deviation(a: float, b: float) -> None:
    small, large = sorted((a, b))
    d1 = responder().sample(1.0, 60.0 - small, STATES)
    d2 = responder().sample(1.0, 60.0 - large, STATES)
    assert abs(d1.dispatched_kw) <= abs(d2.dispatched_kw) + 1e-9


@settings(max_examples=100)
@given(st.lists(unit_draft, min_size=1, max_size=12),
       st.one_of(st.floats(55.0, 59.4999), st.floats(60.5001, 65.0)))
def test_outside_the_window_every_unit_is_safe(drafts: list[Draft], hz: float) -> None:
    specs, states = build(drafts)
    r = responder(*specs)
    r.sample(0.5, 59.8, states)
    d = r.sample(1.0, hz, states)
    assert d.mode is Mode.SAFE and d.alarm is not None and "safety window" in d.alarm
    for u in d.units:
        base = states[u.id].base_kw
        assert 0 <= u.setpoint_kw <= max(base, 0)


@settings(max_examples=100)
@given(st.lists(st.tuples(st.floats(0.1, 60), st.floats(0, 1)), min_size=1, max_size=12),
       st.floats(0.0201, 0.4), st.booleans())
def test_the_request_is_met_when_headroom_allows(units: list[tuple[float, float]],
                                                 size: float, up: bool) -> None:
    """Units with room to spare (SoC mid-way, no floor in reach) deliver exactly the
    request, in either direction."""
    specs = [UnitSpec(f"u{i}", UnitKind.BATTERY, p, p, 1e6, 0) for i, (p, _) in
             enumerate(units)]
    states = {f"u{i}": UnitState(f"u{i}", base_kw=p * b, soc_pct=50)
              for i, (p, b) in enumerate(units)}
    hz = 60.0 + size if up else 60.0 - size
    d = responder(*specs).sample(1.0, hz, states)
    room = sum(p * (1 - b) if up else p * (1 + b) for p, b in units)
    if room >= abs(d.request_kw):
        assert d.dispatched_kw == pytest.approx(d.request_kw, rel=1e-9, abs=1e-9)
    else:
        assert d.dispatched_kw == pytest.approx(room if up else -room, rel=1e-9, abs=1e-9)


# --- units on their own curve (local mode) ----------------------------------------------


def test_a_unit_on_its_own_curve_takes_what_the_curve_does_and_others_the_rest() -> None:
    """The issue's fleet in local mode at 59.75 Hz (fraction -1, request -60 kW): v2g-1's
    curve takes it from 7 kW to -3 kW (-10 kW), whatever its headroom share (-60 × 17/67
    = -15.2 kW) would be; the battery gives the other 50 kW, its maximum."""
    curve = ((59.8, -3.0), (59.98, 7.0), (60.02, 7.0), (60.2, 7.0))
    states = {**STATES, "v2g-1": UnitState("v2g-1", base_kw=7.0, soc_pct=80, curve_kw=curve)}
    d = responder().sample(1.0, 59.75, states)
    by = {u.id: u for u in d.units}
    assert d.request_kw == pytest.approx(-60.0)
    assert by["v2g-1"].delta_kw == pytest.approx(-10.0)
    assert by["bess-1"].delta_kw == pytest.approx(-50.0)
    assert d.dispatched_kw == pytest.approx(-60.0)
    half = responder().sample(1.0, 59.89, states)  # -30 kW: the curve's -5, the battery -25
    by = {u.id: u for u in half.units}
    assert by["v2g-1"].delta_kw == pytest.approx(-5.0)
    assert by["bess-1"].delta_kw == pytest.approx(-25.0)
    up = responder().sample(1.0, 60.11, states)  # above nominal: as before (no curve part)
    assert {u.id: u.delta_kw for u in up.units} == \
        {u.id: u.delta_kw for u in responder().sample(1.0, 60.11, STATES).units}


@settings(max_examples=200)
@given(st.lists(st.tuples(st.floats(0.1, 60), st.floats(0, 1)), min_size=1, max_size=8),
       st.lists(st.tuples(st.floats(0, 20), st.floats(0, 30)), min_size=1, max_size=4),
       st.floats(0.0201, 0.4))
def test_units_on_curves_never_make_the_others_do_more_than_the_rest(
        units: list[tuple[float, float]], curves: list[tuple[float, float]],
        size: float) -> None:
    """Below nominal, units on their own curve take exactly what the curve does there;
    the others share what remains of the request (nothing when the curves already cover
    it) within their headroom: the total meets the request when the headroom allows and
    never exceeds it unless the curves alone do."""
    specs = [UnitSpec(f"u{i}", UnitKind.BATTERY, p, p, 1e6, 0) for i, (p, _) in
             enumerate(units)]
    states = {f"u{i}": UnitState(f"u{i}", base_kw=p * b, soc_pct=50)
              for i, (p, b) in enumerate(units)}
    for j, (base, drop) in enumerate(curves):
        uid = f"c{j}"
        specs.append(UnitSpec(uid, UnitKind.CHARGER, drop, 11, 60, 0))
        states[uid] = UnitState(uid, base_kw=base, soc_pct=80, curve_kw=(
            (59.8, base - drop), (59.98, base), (60.02, base), (60.2, base)))
    hz = 60.0 - size
    d = responder(*specs).sample(1.0, hz, states)
    by = {u.id: u for u in d.units}
    own = 0.0
    for j, (_, drop) in enumerate(curves):
        expected = -drop * min(1.0, max(0.0, (59.98 - hz) / 0.18))
        assert by[f"c{j}"].delta_kw == pytest.approx(expected, abs=1e-9)
        own += expected
    rest = min(0.0, d.request_kw - own)
    room = sum(p * (1 + b) for p, b in units)
    others = sum(by[f"u{i}"].delta_kw for i in range(len(units)))
    assert others <= 1e-9
    assert others == pytest.approx(max(rest, -room), rel=1e-9, abs=1e-9)


def test_a_unit_that_may_not_charge_more_leaves_its_share_above_nominal() -> None:
    """A charger held at its allocation's value (its circuit) has no headroom above
    nominal: the battery takes the request (to its own maximum), and the charger's held
    says why."""
    states = {**STATES, "v2g-1": UnitState("v2g-1", base_kw=7.0, soc_pct=80,
                                          max_charge_kw=7.0)}
    d = responder().sample(1.0, 60.11, states)  # +0.5: request (11 + 50) × 0.5
    by = {u.id: u for u in d.units}
    assert d.request_kw == pytest.approx(30.5)
    assert by["v2g-1"].delta_kw == 0.0 and "at most 7 kW" in (by["v2g-1"].held or "")
    assert by["bess-1"].delta_kw == pytest.approx(30.5)
    full = responder().sample(1.0, 60.3, states)  # +1: 61 kW asked, the battery's 50
    assert full.dispatched_kw == pytest.approx(50.0)
    nan = {**states, "v2g-1": UnitState("v2g-1", base_kw=7.0, soc_pct=80,
                                       max_charge_kw=math.nan)}
    assert {u.id: u.delta_kw for u in responder().sample(1.0, 60.11, nan).units}[
        "v2g-1"] == 0.0  # NaN: fail closed (no charging more)
