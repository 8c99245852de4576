"""Interval energy from registers: worked examples by hand and conservation properties."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.core.billing import (
    Flag,
    IntervalSettings,
    Reading,
    build_track,
    intervals,
    value_at,
)

Q = 900 * 1_000_000  # a quarter hour in µs
S = IntervalSettings()


def reg(minutes: float, wh: float) -> Reading:
    return Reading(round(minutes * 60 * 1_000_000), round(wh * 1000))


def energies(items: list) -> list[int]:
    return [i.energy_mwh for i in items]


def test_aligned_readings_give_register_differences() -> None:
    track = build_track([reg(0, 1000), reg(15, 1250), reg(30, 1300), reg(45, 1300)], S)
    out = intervals(track, 0, 3 * Q, S)
    assert energies(out) == [250_000, 50_000, 0]
    assert all(i.flags == () for i in out)


def test_boundary_value_is_interpolated_between_readings() -> None:
    # 10:05 at 100 Wh, 10:20 at 130 Wh: the 10:15 boundary reads 120 Wh
    track = build_track([reg(5, 100), reg(20, 130)], S)
    assert value_at(track, Q) == 120_000
    out = intervals(track, 0, 2 * Q, S)
    assert energies(out) == [20_000, 10_000]
    assert out[0].flags == (Flag.PARTIAL,) and out[1].flags == (Flag.PARTIAL,)


def test_interpolation_rounds_to_the_milliwatt_hour_and_still_conserves() -> None:
    # 1 Wh over 45 min read at 0 and 45: boundaries at 333.333.. and 666.666.. mWh
    track = build_track([reg(0, 0), reg(45, 1)], S)
    out = intervals(track, 0, 3 * Q, S)
    assert energies(out) == [333, 334, 333]
    assert sum(energies(out)) == 1000


def test_register_reset_counts_from_the_new_zero() -> None:
    # a meter replaced between 10:15 (5000 Wh) and 10:30 (its successor reads 40 Wh)
    track = build_track([reg(0, 4900), reg(15, 5000), reg(30, 40), reg(45, 90)], S)
    out = intervals(track, 0, 3 * Q, S)
    assert energies(out) == [100_000, 40_000, 50_000]
    assert out[1].flags == (Flag.REGISTER_RESET,)
    assert out[0].flags == () and out[2].flags == ()
    assert track.lost_mwh == 5_000_000


def test_rollover_at_a_known_modulus_loses_nothing() -> None:
    s = IntervalSettings(modulus_mwh=100_000 * 1000)  # a 5-digit kWh... in Wh: 100,000 Wh
    track = build_track([reg(0, 99_990), reg(15, 20)], s)
    out = intervals(track, 0, Q, s)
    assert energies(out) == [30_000]
    assert out[0].flags == (Flag.REGISTER_RESET,)
    assert track.lost_mwh == 0


def test_gap_is_spread_evenly_and_flagged() -> None:
    # no reading from 10:15 to 11:15 (4 intervals > the 2-interval limit): 400 Wh spread
    track = build_track([reg(0, 0), reg(15, 10), reg(75, 410), reg(90, 420)], S)
    out = intervals(track, 0, 6 * Q, S)
    assert energies(out) == [10_000, 100_000, 100_000, 100_000, 100_000, 10_000]
    assert out[0].flags == () and out[5].flags == ()
    for i in out[1:5]:
        assert i.flags == (Flag.ESTIMATED, Flag.GAP)


def test_short_gap_is_not_flagged() -> None:
    track = build_track([reg(0, 0), reg(30, 20)], S)  # 2 intervals apart: the limit
    assert all(i.flags == () for i in intervals(track, 0, 2 * Q, S))


def test_no_register_integrates_power() -> None:
    readings = [Reading(m * 60 * 1_000_000, None, 4000.0) for m in (0, 15, 30)]
    track = build_track(readings, S)
    out = intervals(track, 0, 2 * Q, S)
    assert energies(out) == [1_000_000, 1_000_000]  # 4 kW for 15 min = 1 kWh
    assert all(i.flags == (Flag.FROM_POWER,) for i in out)


def test_register_wins_over_power() -> None:
    track = build_track([Reading(0, 0, 9999.0), Reading(Q, 500_000, 9999.0)], S)
    out = intervals(track, 0, Q, S)
    assert energies(out) == [500_000] and out[0].flags == ()


def test_no_readings_no_data() -> None:
    out = intervals(build_track([], S), 0, 2 * Q, S)
    assert energies(out) == [0, 0] and all(i.flags == (Flag.NO_DATA,) for i in out)


def test_outside_the_readings_is_no_data() -> None:
    track = build_track([reg(15, 0), reg(30, 5)], S)
    out = intervals(track, 0, 3 * Q, S)
    assert energies(out) == [0, 5000, 0]
    assert out[0].flags == (Flag.NO_DATA,) and out[2].flags == (Flag.NO_DATA,)
    assert out[1].flags == ()


def test_duplicate_readings_are_ignored() -> None:
    track = build_track([reg(0, 0), reg(0, 0), reg(15, 7), reg(15, 7)], S)
    assert energies(intervals(track, 0, Q, S)) == [7000]


# --- properties -----------------------------------------------------------------------------

readings_st = st.lists(
    st.tuples(st.integers(0, 20 * Q), st.integers(0, 10**9)), min_size=0, max_size=40)


def _true_energy(points: list[tuple[int, int]], modulus: int | None) -> int:
    """Energy between the first and the last reading, stretch by stretch, by the rules:
    a rise counts, a drop counts the new value (from zero) or wraps at the modulus."""
    seen: dict[int, int] = {}
    for t, v in points:
        seen.setdefault(t, v)
    values = [seen[t] for t in sorted(seen)]
    total = 0
    for a, b in itertools.pairwise(values):
        if b >= a:
            total += b - a
        else:
            total += b + modulus - a if modulus is not None else b
    return total


@settings(max_examples=300, deadline=None)
@given(readings_st, st.sampled_from([None, 10**9 + 1]))
def test_conservation_exact_for_any_reading_sequence(points: list[tuple[int, int]],
                                                     modulus: int | None) -> None:
    s = IntervalSettings(modulus_mwh=modulus)
    track = build_track([Reading(t, v) for t, v in points], s)
    # a range that covers every reading: the intervals hold all the energy, exactly
    out = intervals(track, 0, 21 * Q, s)
    assert sum(energies(out)) == _true_energy(points, modulus)
    # and the register difference minus what the resets lost, when no modulus is known
    if points and modulus is None:
        first = min(points, key=lambda p: p[0])[0]
        raw = dict(reversed(points))  # the first reading of each instant
        last_t = max(raw)
        assert sum(energies(out)) == raw[last_t] - raw[first] + track.lost_mwh


@settings(max_examples=300, deadline=None)
@given(readings_st, st.integers(0, 24), st.integers(0, 24), st.integers(0, 24))
def test_splitting_the_range_gives_the_same_intervals(points: list[tuple[int, int]],
                                                      a: int, b: int, c: int) -> None:
    lo, mid, hi = sorted((a, b, c))
    track = build_track([Reading(t, v) for t, v in points], S)
    whole = intervals(track, lo * Q, hi * Q, S)
    assert whole == intervals(track, lo * Q, mid * Q, S) + intervals(track, mid * Q, hi * Q, S)
    # any range sums exactly to the boundary difference
    assert sum(energies(whole)) == value_at(track, hi * Q) - value_at(track, lo * Q)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8 * Q), st.integers(0, 10**7)), min_size=2,
                max_size=30))
def test_a_monotone_register_never_gives_negative_intervals(points: list[tuple[int, int]]
                                                            ) -> None:
    ordered = sorted(dict(points).items())
    values = sorted(v for _, v in ordered)
    track = build_track([Reading(t, v) for (t, _), v in zip(ordered, values, strict=True)], S)
    assert all(i.energy_mwh >= 0 for i in intervals(track, 0, 8 * Q, S))
