"""Tumbling-window load aggregation: exact window arithmetic from meter-value steps,
out-of-order samples within the open window, late ones dropped, zone sums."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridshare.core.dr import aggregate
from gridshare.core.dr.aggregate import (
    StationWindows,
    utilisation_pct,
    window_length,
    window_start,
    zone_window,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# --- window grid ------------------------------------------------------------------------


def test_windows_start_on_the_minute_whatever_the_offset_of_the_time() -> None:
    length = window_length(60)
    assert window_start(at(59.999), length) == T0
    assert window_start(at(60), length) == at(60)
    cet = timezone(timedelta(hours=1))
    assert window_start(datetime(2026, 11, 30, 13, 0, 30, tzinfo=cet), length) == T0
    assert window_start(at(3601), window_length(900)) == at(3600)
    assert window_start(at(14), window_length(15)) == T0


@pytest.mark.parametrize("bad", [0, -60, 7, 61.5, math.nan, math.inf, True, "60"])
def test_a_window_length_that_does_not_divide_an_hour_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="window"):
        window_length(bad)  # type: ignore[arg-type]


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="no UTC offset"):
        window_start(datetime(2026, 11, 30, 12, 0), window_length(60))


# --- one station ------------------------------------------------------------------------


def test_average_is_time_weighted_and_the_last_value_carries_into_the_next_window() -> None:
    w = StationWindows("S1", [1, 2])
    w.add_power(1, at(10), 50)
    w.add_power(2, at(30), 20)
    w.add_power(1, at(40), 10)
    current = w.current(at(50))
    assert current is not None and not current.closed
    assert current.avg_kw == pytest.approx((50 * 30 + 10 * 10 + 20 * 20) / 50)
    assert current.last_kw == 30
    w.add_power(1, at(70), 0)  # the next window: this one closes
    (closed,) = w.history()
    assert closed.closed and closed.start == T0 and closed.end == at(60) == closed.until
    assert closed.energy_kwh * 3600 == pytest.approx(50 * 30 + 10 * 20 + 20 * 30)
    assert closed.avg_kw == pytest.approx(2300 / 60)
    assert [c.avg_kw for c in closed.connectors] == pytest.approx([1700 / 60, 600 / 60])
    assert [c.max_kw for c in closed.connectors] == [50, 20]
    assert closed.last_kw == 30 and closed.active_connectors == 2
    nxt = w.current(at(80))
    assert nxt is not None
    # 10 kW (connector 1) held 60..70 and 20 kW (connector 2) over the 20 s so far.
    assert nxt.avg_kw == pytest.approx((10 * 10 + 20 * 20) / 20)


def test_station_maximum_is_the_highest_total_at_one_moment_not_the_sum_of_maxima() -> None:
    w = StationWindows("S1", [1, 2])
    w.add_power(1, at(0), 100)
    w.add_power(1, at(20), 0)
    w.add_power(2, at(20), 100)
    w.close_until(at(60))
    (closed,) = w.history()
    assert closed.max_kw == 100
    assert closed.max_connector_kw == 100
    assert closed.avg_connector_kw == pytest.approx(closed.avg_kw / 2)


def test_sessions_and_active_connectors_count_what_happened_in_the_window() -> None:
    w = StationWindows("S1", [1, 2, 3])
    w.add_session(1, at(5), "tx1")
    w.add_power(1, at(5), 7)
    w.add_session(1, at(30), None)
    w.add_power(1, at(30), 0)
    w.add_session(2, at(40), "tx2")  # plugged in, not drawing yet
    assert w.now(at(45)).active_sessions == 1
    assert w.now(at(45)).active_connectors == 0
    w.close_until(at(60))
    (first,) = w.history()
    assert (first.active_sessions, first.active_connectors) == (2, 1)
    w.close_until(at(120))
    second = w.history()[-1]
    assert (second.active_sessions, second.active_connectors) == (1, 0)  # tx2 carried over


def test_a_value_holds_at_most_hold_seconds() -> None:
    w = StationWindows("S1", [1], hold_s=30)
    w.add_power(1, at(10), 60)
    assert w.now(at(39)).kw == 60
    assert w.now(at(40)).kw == 0
    w.close_until(at(60))
    (closed,) = w.history()
    assert closed.energy_kwh * 3600 == pytest.approx(60 * 30)
    assert closed.last_kw == 0


def test_history_is_bounded_and_a_long_silence_keeps_only_the_last_windows() -> None:
    w = StationWindows("S1", [1], keep=5)
    w.add_power(1, at(0), 12)
    w.close_until(at(3600 * 24))
    hist = w.history()
    assert len(hist) == 5
    assert [h.start for h in hist] == [at(3600 * 24 - 60 * k) for k in range(5, 0, -1)]
    assert all(h.avg_kw == 12 for h in hist)  # the value still holds (no hold set)
    assert w.history(2) == hist[-2:] and w.history(0) == []


def test_late_samples_are_counted_and_change_nothing() -> None:
    w = StationWindows("S1", [1])
    w.add_power(1, at(10), 5)
    w.add_power(1, at(65), 9)
    before = [h.to_json() for h in w.history()], w.current(at(70))
    assert w.add_power(1, at(59), 100) is False
    assert w.add_session(1, at(1), "tx") is False
    assert w.late == 2
    assert ([h.to_json() for h in w.history()], w.current(at(70))) == before


def test_the_same_instant_twice_keeps_the_latest_value() -> None:
    w = StationWindows("S1", [1])
    w.add_power(1, at(0), 5)
    w.add_power(1, at(0), 8)
    w.close_until(at(60))
    (closed,) = w.history()
    assert closed.avg_kw == 8 and closed.samples == 1


def test_a_flood_of_samples_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregate, "MAX_SAMPLES_PER_WINDOW", 10)
    w = StationWindows("S1", [1])
    accepted = [w.add_power(1, at(i / 10), 1.0) for i in range(15)]
    assert accepted == [True] * 10 + [False] * 5 and w.dropped == 5
    assert w.add_power(1, at(61), 1.0)  # a new window takes samples again


@pytest.mark.parametrize("connector, kw, match", [
    (3, 1.0, "connector 3 is not one of its connectors"),
    (1, -1.0, "power -1.0 kW"), (1, math.nan, "power nan kW"), (1, math.inf, "power inf"),
])
def test_bad_samples_are_refused_naming_what(connector: int, kw: float, match: str) -> None:
    w = StationWindows("S1", [1, 2])
    with pytest.raises(ValueError, match=match):
        w.add_power(connector, at(0), kw)
    assert w.current(at(1)) is None  # nothing half-applied


def test_a_station_with_no_sample_yet_reports_zeros_once_started() -> None:
    w = StationWindows("S1", [1, 2])
    assert w.current(at(0)) is None and w.now(at(0)).kw == 0
    w.close_until(at(30))
    current = w.current(at(30))
    assert current is not None and current.avg_kw == 0 and current.samples == 0
    w.close_until(at(61))
    assert w.history()[0].avg_kw == 0


# --- zones ------------------------------------------------------------------------------


def test_zone_window_sums_its_stations_and_utilisation_needs_a_capacity() -> None:
    a, b = StationWindows("A", [1]), StationWindows("B", [1])
    a.add_power(1, at(0), 100)
    b.add_power(1, at(30), 60)
    for w in (a, b):
        w.close_until(at(60))
    zone = zone_window("Z1", 400.0, [a.history()[0], b.history()[0]])
    assert zone.avg_kw == pytest.approx(130) and zone.last_kw == 160
    assert zone.utilisation_pct == pytest.approx(32.5)
    assert zone.active_stations == 2 and zone.stations == 2 and zone.closed
    assert zone_window("Z2", None, [a.history()[0]]).utilisation_pct is None
    assert utilisation_pct(10, 0) is None
    with pytest.raises(ValueError, match="different starts"):
        zone_window("Z1", None, [a.history()[0], b.current(at(70))])  # type: ignore[list-item]


# --- properties -------------------------------------------------------------------------

SAMPLES = st.lists(
    st.tuples(st.sampled_from([1, 2]), st.integers(0, 299_999),
              st.floats(0, 400, allow_nan=False, allow_infinity=False)),
    max_size=40, unique_by=lambda s: (s[0], s[1]))


def contributions(samples: list[tuple[int, int, float]], connector: int, start: float,
                  end: float, hold: float | None) -> float:
    """kW·s the connector's samples contribute to [start, end) (times in seconds)."""
    mine = sorted((ms / 1000, kw) for n, ms, kw in samples if n == connector)
    total = 0.0
    for i, (t, kw) in enumerate(mine):
        stop = mine[i + 1][0] if i + 1 < len(mine) else math.inf
        if hold is not None:
            stop = min(stop, t + hold)
        total += kw * max(0.0, min(stop, end) - max(t, start))
    return total


@given(samples=SAMPLES, hold=st.none() | st.sampled_from([5.0, 45.0, 200.0]),
       order=st.randoms(use_true_random=False))
def test_window_sums_equal_the_samples_contributions_in_any_order_within_a_window(
        samples: list[tuple[int, int, float]], hold: float | None, order: object) -> None:
    w = StationWindows("S1", [1, 2], hold_s=hold)
    w.close_until(T0)
    # Windows in time order; inside each, any order (the meters' frames interleave).
    by_window: dict[int, list[tuple[int, int, float]]] = {}
    for s in samples:
        by_window.setdefault(s[1] // 60_000, []).append(s)
    for k in sorted(by_window):
        batch = by_window[k]
        order.shuffle(batch)  # type: ignore[attr-defined]
        for n, ms, kw in batch:
            assert w.add_power(n, at(ms / 1000), kw)
    w.close_until(at(300))
    hist = w.history()
    assert [h.start for h in hist] == [at(60 * k) for k in range(5)]
    for h in hist:
        s0 = (h.start - T0).total_seconds()
        expected = [contributions(samples, n, s0, s0 + 60, hold) for n in (1, 2)]
        got = [c.energy_kwh * 3600 for c in h.connectors]
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-6)
        assert h.energy_kwh * 3600 == pytest.approx(sum(expected), rel=1e-9, abs=1e-6)
        assert h.avg_kw == pytest.approx(sum(expected) / 60, rel=1e-9, abs=1e-6)
        assert h.max_kw <= sum(c.max_kw for c in h.connectors) + 1e-9
        assert h.avg_kw <= h.max_kw + 1e-9
    assert w.late == 0


@given(samples=SAMPLES, late=st.lists(st.tuples(st.sampled_from([1, 2]),
                                               st.integers(0, 299_999)), max_size=10))
def test_samples_older_than_the_open_window_are_late_and_dropped(
        samples: list[tuple[int, int, float]], late: list[tuple[int, int]]) -> None:
    w = StationWindows("S1", [1, 2])
    for n, ms, kw in sorted(samples, key=lambda s: s[1]):
        w.add_power(n, at(ms / 1000), kw)
    if w.open_start is None:
        return
    before = [h.to_json() for h in w.history()]
    open_at = (w.open_start - T0).total_seconds()
    dropped = 0
    for n, ms in late:
        if ms / 1000 < open_at:
            assert w.add_power(n, at(ms / 1000), 999.0) is False
            dropped += 1
    assert w.late == dropped
    assert [h.to_json() for h in w.history()] == before
