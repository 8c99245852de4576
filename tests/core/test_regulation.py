"""The regulation core: ACE convention, PI with anti-windup, deadline and stale inputs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.core.regulation import (
    RegulationSettings,
    Regulator,
    area_control_error,
)

BASE = RegulationSettings(scheduled_kw=1000, bias_kw_per_hz=-500, kp=0.5, ki=0.2,
                          max_discharge_kw=100, max_charge_kw=80, nominal_hz=50)


def step(r: Regulator, load: float, hz: float = 50.0, dt: float = 1.0) -> float:
    out = r.step(load_kw=load, load_age_s=0.1, hz=hz, hz_age_s=0.05, dt_s=dt)
    assert not out.hold, out.reason
    return out.correction_kw


def test_ace_convention() -> None:
    # load above schedule: positive; low frequency with B < 0 adds to it
    assert area_control_error(1050, 1000, -500, 0.0) == 50
    assert area_control_error(1000, 1000, -500, -0.1) == pytest.approx(50)
    assert area_control_error(950, 1000, -500, 0.1) == pytest.approx(-100)


def test_zero_imbalance_zero_correction() -> None:
    r = Regulator(BASE)
    for _ in range(10):
        assert step(r, 1000.0) == 0.0


def test_pi_response_and_integral_to_a_constant_error() -> None:
    r = Regulator(BASE)
    first = step(r, 1020.0)  # ACE 20: kp·20 + ki·20·1 = 10 + 4
    assert first == pytest.approx(14.0)
    second = step(r, 1020.0)
    assert second == pytest.approx(18.0)  # the integral grows while the error stays


def test_saturation_and_anti_windup() -> None:
    r = Regulator(BASE)
    for _ in range(100):
        assert step(r, 2000.0) == 100.0  # far short: full discharge, no more
    assert r.integral_kw == 0.0  # saturated from the first step: nothing integrated
    # the error reverses: the output follows at once (no wound-up integral to unwind)
    out = step(r, 900.0)  # ACE −100: kp·(−100) + ki·(−100)·1 = −50 − 20
    assert out == pytest.approx(-70.0)
    assert step(r, 900.0) == pytest.approx(-80.0)  # at the limit, integral only to it
    assert r.integral_kw == pytest.approx(-30.0)
    assert step(r, 900.0) == pytest.approx(-80.0)
    assert r.integral_kw == pytest.approx(-30.0)  # no windup while saturated


def test_stale_inputs_and_a_missed_deadline_hold() -> None:
    r = Regulator(BASE)
    step(r, 1050.0)
    assert r.integral_kw != 0
    out = r.step(load_kw=1050, load_age_s=5.5, hz=50, hz_age_s=0, dt_s=1)
    assert out.hold and out.correction_kw == 0 and "area load is 5.5 s old" in (out.reason or "")
    assert r.integral_kw == 0
    out = r.step(load_kw=1050, load_age_s=0, hz=50, hz_age_s=6, dt_s=1)
    assert out.hold and "frequency" in (out.reason or "")
    out = r.step(load_kw=1050, load_age_s=0, hz=None, hz_age_s=None, dt_s=1)
    assert out.hold
    out = r.step(load_kw=1050, load_age_s=0, hz=50, hz_age_s=0, dt_s=7)
    assert out.hold and "deadline" in (out.reason or "")
    out = r.step(load_kw=None, load_age_s=None, hz=50, hz_age_s=0, dt_s=1)
    assert out.hold and out.reason == "no area load"


def test_frequency_not_needed_without_bias() -> None:
    r = Regulator(RegulationSettings(scheduled_kw=0, max_discharge_kw=10, max_charge_kw=10))
    out = r.step(load_kw=4, load_age_s=0, hz=None, hz_age_s=None, dt_s=1)
    assert not out.hold and out.correction_kw > 0


def test_bad_settings_refused() -> None:
    with pytest.raises(ValueError, match="bias"):
        RegulationSettings(scheduled_kw=0, bias_kw_per_hz=10)
    with pytest.raises(ValueError):
        RegulationSettings(scheduled_kw=float("nan"))


loads = st.floats(-5000, 5000, allow_nan=False)
freqs = st.floats(49.0, 51.0, allow_nan=False)
dts = st.floats(0.0, 5.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(loads, freqs, dts), min_size=1, max_size=40),
       st.floats(0, 5), st.floats(0, 2), st.floats(0, 500), st.floats(0, 500),
       st.floats(-2000, 0))
def test_output_always_within_the_units_limits(
        seq: list[tuple[float, float, float]], kp: float, ki: float, dis: float,
        chg: float, bias: float) -> None:
    r = Regulator(RegulationSettings(scheduled_kw=0, bias_kw_per_hz=bias, kp=kp, ki=ki,
                                     max_discharge_kw=dis, max_charge_kw=chg))
    for load, hz, dt in seq:
        out = r.step(load_kw=load, load_age_s=0, hz=hz, hz_age_s=0, dt_s=dt)
        assert -chg - 1e-9 <= out.correction_kw <= dis + 1e-9
        assert -chg - 1e-9 <= r.integral_kw <= dis + 1e-9


@settings(max_examples=300, deadline=None)
@given(loads, freqs, st.floats(0.01, 5), st.floats(0, 2), st.floats(-2000, 0))
def test_sign_follows_the_imbalance_from_rest(load: float, hz: float, kp: float, ki: float,
                                              bias: float) -> None:
    r = Regulator(RegulationSettings(scheduled_kw=0, bias_kw_per_hz=bias, kp=kp, ki=ki,
                                     max_discharge_kw=1e6, max_charge_kw=1e6))
    out = r.step(load_kw=load, load_age_s=0, hz=hz, hz_age_s=0, dt_s=1)
    ace = area_control_error(load, 0, bias, hz - 50)
    assert out.ace_kw == pytest.approx(ace)
    if ace > 1e-9:
        assert out.correction_kw > 0  # short of generation: discharge
    elif ace < -1e-9:
        assert out.correction_kw < 0  # surplus: charge
    else:
        assert out.correction_kw == pytest.approx(0, abs=1e-6)
