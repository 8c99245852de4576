"""Windowed demand per level: definitions, lateness, duplicates, order independence."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.core.telemetry.aggregate import (
    ADDED,
    DUPLICATE,
    LATE,
    UNKNOWN,
    Aggregator,
    DemandWindow,
    Placement,
)

PLACES = [Placement("m1", "F1", "S1", "north"), Placement("m2", "F1", "S1", "north"),
          Placement("m3", "F2", "S1", "north"), Placement("m4", "F3", None, "south")]
T0 = 1_800_000_000.0  # a multiple of 60


def by_key(rows: list[DemandWindow]) -> dict[tuple[str, str, float], DemandWindow]:
    return {(r.level, r.key, r.window_start): r for r in rows}


def test_demand_is_sum_of_meter_means() -> None:
    agg = Aggregator(PLACES, window_s=60, lateness_s=10)
    assert agg.add("m1", T0 + 0, 1000) == ADDED
    assert agg.add("m1", T0 + 30, 3000) == ADDED  # m1's mean: 2 kW
    assert agg.add("m2", T0 + 15, 500) == ADDED
    assert agg.add("m3", T0 + 59.9, 4000) == ADDED
    assert agg.add("m9", T0 + 1, 1) == UNKNOWN
    assert agg.advance(T0 + 69.9) == []  # the end (60) + lateness (10) not yet passed
    rows = by_key(agg.advance(T0 + 70))
    f1 = rows[("feeder", "F1", T0)]
    assert f1.demand_kw == pytest.approx(2.5)
    assert (f1.meters_reporting, f1.meters_expected, f1.readings) == (2, 2, 3)
    assert f1.max_meter_kw == pytest.approx(2.0)
    assert f1.window_end == T0 + 60
    assert rows[("substation", "S1", T0)].demand_kw == pytest.approx(6.5)
    assert rows[("substation", "S1", T0)].meters_expected == 3
    assert rows[("region", "north", T0)].demand_kw == pytest.approx(6.5)
    assert ("feeder", "F3", T0) not in rows  # nobody reported: no row
    assert agg.open_windows() == 0


def test_late_and_duplicate_readings() -> None:
    agg = Aggregator(PLACES, window_s=60, lateness_s=10)
    assert agg.add("m1", T0 + 5, 1000) == ADDED
    assert agg.add("m1", T0 + 5, 9999) == DUPLICATE  # same meter, same ts: first wins
    assert agg.add("m1", T0 + 65, 1000) == ADDED
    assert agg.add("m1", T0 + 50, 3000) == ADDED  # out of order, within lateness
    rows = agg.advance(T0 + 71)
    assert [r.window_start for r in rows if r.key == "F1"] == [T0]
    assert by_key(rows)[("feeder", "F1", T0)].demand_kw == pytest.approx(2.0)
    assert agg.add("m2", T0 + 59, 1000) == LATE
    assert (agg.added, agg.duplicates, agg.late, agg.unknown) == (3, 1, 1, 0)


def test_event_time_advances_the_watermark() -> None:
    agg = Aggregator(PLACES, window_s=60, lateness_s=10)
    agg.add("m1", T0, 1000)
    agg.add("m1", T0 + 75, 1000)  # event time moved on: the first window may close
    assert [r.key for r in agg.advance() if r.level == "feeder"] == ["F1"]
    assert agg.add("m2", T0 + 1, 5) == LATE


def test_quiet_windows_close_by_the_clock() -> None:
    agg = Aggregator(PLACES, window_s=60, lateness_s=0)
    agg.advance(T0 + 600)
    assert agg.add("m1", T0 + 100, 1) == LATE
    assert agg.add("m1", T0 + 600, 1) == ADDED


READINGS = st.lists(
    st.tuples(st.sampled_from(["m1", "m2", "m3", "m4"]),
              st.integers(min_value=0, max_value=299),
              st.floats(min_value=-5000, max_value=50_000, allow_nan=False)),
    max_size=60)


def run(readings: list[tuple[str, int, float]]) -> dict[tuple[str, str, float], float]:
    agg = Aggregator(PLACES, window_s=60, lateness_s=1000)
    for meter, offset, power in readings:
        agg.add(meter, T0 + offset, power)
    return {k: r.demand_kw for k, r in by_key(agg.advance(T0 + 10_000)).items()}


@settings(max_examples=150, deadline=None)
@given(READINGS, st.randoms(use_true_random=False))
def test_order_within_lateness_does_not_matter(readings: list[tuple[str, int, float]],
                                               rnd: object) -> None:
    shuffled = list(readings)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    first, second = run(readings), run(shuffled)
    # A duplicate (same meter, same second) keeps the first arrival, so compare the
    # readings without duplicates.
    seen: set[tuple[str, int]] = set()
    unique = [r for r in readings if not ((r[0], r[1]) in seen or seen.add((r[0], r[1])))]
    if len(unique) == len(readings):
        assert first.keys() == second.keys()
        for key, value in first.items():
            assert second[key] == pytest.approx(value, rel=1e-9, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(READINGS)
def test_levels_add_up_and_duplicates_ignored(readings: list[tuple[str, int, float]]) -> None:
    agg = Aggregator(PLACES, window_s=60, lateness_s=1000)
    for meter, offset, power in readings + readings:  # every reading delivered twice
        agg.add(meter, T0 + offset, power)
    assert agg.duplicates == 2 * len(readings) - len({(m, o) for m, o, _ in readings})
    rows = agg.advance(T0 + 10_000)
    # Reference: per window, per meter, the mean of its distinct readings.
    firsts: dict[tuple[str, int], float] = {}
    for meter, offset, power in readings:
        firsts.setdefault((meter, offset), power)
    means: dict[tuple[str, float], list[float]] = {}
    for (meter, offset), power in firsts.items():
        means.setdefault((meter, T0 + offset // 60 * 60), []).append(power)
    region: dict[tuple[str, float], float] = {}
    place = {p.meter_id: p for p in PLACES}
    for (meter, start), powers in means.items():
        key = (place[meter].region or "", start)
        region[key] = region.get(key, 0.0) + sum(powers) / len(powers) / 1000.0
    got = {(r.key, r.window_start): r.demand_kw for r in rows if r.level == "region"}
    assert got.keys() == region.keys()
    for key, value in region.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-9)
    feeders = sum(r.demand_kw for r in rows if r.level == "feeder")
    assert feeders == pytest.approx(sum(region.values()), rel=1e-9, abs=1e-6)
    assert all(r.meters_reporting <= r.meters_expected for r in rows)
    assert all(math.isfinite(r.max_meter_kw) for r in rows)


def test_a_missing_meter_is_carried_at_its_last_closed_demand() -> None:
    """The demand of a meter that skipped a window is carried from the newest earlier
    closed window it reported in: never stored in ``demand_kw``, never from a window
    still open, and a meter never seen is not carried."""
    agg = Aggregator(PLACES, window_s=60, lateness_s=10)
    agg.add("m1", T0 + 5, 1000)
    agg.add("m2", T0 + 5, -3000)  # a battery discharging
    rows = by_key(agg.advance(T0 + 70))
    first = rows[("feeder", "F1", T0)]
    assert (first.carried_kw, first.meters_carried) == (0.0, 0)
    agg.add("m1", T0 + 65, 2000)  # m2's reading is lost
    agg.add("m1", T0 + 125, 2000)
    running = by_key(agg.running())[("feeder", "F1", T0 + 60)]
    assert running.carried_kw == pytest.approx(-3.0)
    rows = by_key(agg.advance(T0 + 130))
    second = rows[("feeder", "F1", T0 + 60)]
    assert second.demand_kw == pytest.approx(2.0) and second.meters_reporting == 1
    assert second.carried_kw == pytest.approx(-3.0) and second.meters_carried == 1
    region = rows[("region", "north", T0 + 60)]  # m3 never reported: not carried
    assert region.meters_carried == 1 and region.carried_kw == pytest.approx(-3.0)
    agg.add("m2", T0 + 125, -1000)
    agg.add("m1", T0 + 185, 1000)
    agg.add("m2", T0 + 190, -500)
    rows = by_key(agg.advance(T0 + 190))
    third = rows[("feeder", "F1", T0 + 120)]
    assert third.meters_carried == 0 and third.carried_kw == 0.0
    agg.add("m1", T0 + 245, 1000)
    rows = by_key(agg.advance(T0 + 250))
    fourth = rows[("feeder", "F1", T0 + 180)]
    assert fourth.meters_carried == 0  # both reported
    fifth = by_key(agg.running())[("feeder", "F1", T0 + 240)]
    assert fifth.carried_kw == pytest.approx(-0.5)  # m2 as of its newest closed window
