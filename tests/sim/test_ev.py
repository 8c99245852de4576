"""EV battery physics: bounds, charging curve, exact energy bookkeeping."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.sim import EV

V = 230.0


def test_curve_full_current_until_80_percent_then_linear_taper() -> None:
    ev = EV(capacity_kwh=50, soc=0.5, max_current_a=32)
    assert ev.curve_limit_a() == 32
    ev.soc = 0.8
    assert ev.curve_limit_a() == pytest.approx(32)
    ev.soc = 0.9
    assert ev.curve_limit_a() == pytest.approx(32 * 0.6)
    ev.soc = 1.0
    assert ev.curve_limit_a() == pytest.approx(32 * 0.2)


def test_step_respects_offer_own_max_and_minimum() -> None:
    ev = EV(capacity_kwh=50, soc=0.2, max_current_a=16, phases=3)
    assert ev.step(1, 32, V, 3) == 16
    assert ev.step(1, 10, V, 3) == 10
    assert ev.step(1, 5.9, V, 3) == 0  # below the 6 A pilot minimum
    assert ev.step(1, 0, V, 3) == 0


def test_full_car_draws_nothing_and_lands_exactly_on_target() -> None:
    ev = EV(capacity_kwh=10, soc=0.79, target_soc=0.8, max_current_a=32)
    drawn = ev.step(3600, 32, V, 3)  # far more than the 0.1 kWh it needs
    assert ev.soc == 0.8
    assert drawn * V * 3 * 3600 / 3600 == pytest.approx(100.0)  # 0.1 kWh in Wh
    assert ev.step(1, 32, V, 3) == 0
    assert ev.full and ev.energy_needed_kwh == 0


def test_energy_needed_and_single_phase_power() -> None:
    ev = EV(capacity_kwh=60, soc=0.25, target_soc=0.75, phases=1, max_current_a=32)
    assert ev.energy_needed_kwh == pytest.approx(30)
    before = ev.soc
    drawn = ev.step(3600, 16, V, 3)  # 1-phase car on a 3-phase charger: one phase only
    assert drawn == 16
    assert (ev.soc - before) * 60_000 == pytest.approx(16 * V)


def test_random_ev_is_deterministic_and_plausible() -> None:
    t = datetime(2025, 1, 1, 8, tzinfo=UTC)
    a = [EV.random(random.Random(7), arrival=t, dwell_s=3600) for _ in range(3)]
    b = [EV.random(random.Random(7), arrival=t, dwell_s=3600) for _ in range(3)]
    assert a == b
    for ev in a:
        assert 1 <= ev.setpoint_lag_s <= 5
        assert ev.phases in (1, 3)
        assert ev.target_soc >= ev.soc
        assert ev.departure is not None and (ev.departure - t).total_seconds() == 3600


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.floats(5, 120),
    soc=st.floats(0, 1),
    target=st.floats(0, 1),
    max_a=st.floats(6, 80),
    phases=st.sampled_from([1, 3]),
    charger_phases=st.sampled_from([1, 3]),
    steps=st.lists(st.tuples(st.floats(0.001, 900), st.floats(0, 100)), min_size=1, max_size=60),
)
def test_energy_is_conserved(
    capacity: float,
    soc: float,
    target: float,
    max_a: float,
    phases: int,
    charger_phases: int,
    steps: list[tuple[float, float]],
) -> None:
    """∫ P dt over all steps equals ΔSoC × capacity; every step respects the bounds."""
    ev = EV(capacity_kwh=capacity, soc=soc, target_soc=target, max_current_a=max_a, phases=phases)
    start = ev.soc
    n = ev.phases_used(charger_phases)
    energy_wh = 0.0
    for dt, offered in steps:
        curve = ev.curve_limit_a()
        drawn = ev.step(dt, offered, V, charger_phases)
        assert 0 <= drawn <= offered + 1e-9
        assert drawn <= max_a + 1e-9 and drawn <= curve + 1e-9
        energy_wh += drawn * V * n * dt / 3600
        assert ev.soc <= max(target, start) + 1e-12
    assert energy_wh == pytest.approx((ev.soc - start) * capacity * 1000, rel=1e-9, abs=1e-6)
    assert ev.energy_charged_wh == pytest.approx(energy_wh, rel=1e-9, abs=1e-6)
    assert not math.isnan(ev.soc)
