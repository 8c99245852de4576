"""Invariants of tariff checking: a tariff that passes its checks prices every minute of
every day of the year by exactly one period; one that leaves a gap or overlaps is refused."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.billing_config import BillingSpec, tariff_problems

SPEC = BillingSpec()


def _hhmm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 24 * 4 - 1), min_size=1, max_size=8, unique=True))
def test_step_lists_price_every_minute_by_the_last_step_started(starts: list[int]) -> None:
    starts = sorted(q * 15 for q in starts)
    raw = [{"from": _hhmm(s), "price": float(i), "name": f"p{i}"} for i, s in enumerate(starts)]
    tariff, problems = tariff_problems(raw, ("tariff",), SPEC)
    assert problems == [] and tariff is not None
    plan = tariff.seasons[0].weekdays
    for minute in range(0, 24 * 60, 7):
        begun = [i for i, s in enumerate(starts) if s <= minute]
        expected = begun[-1] if begun else len(starts) - 1  # before the first: the last
        assert plan.at(minute).name == f"p{expected}"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 95), st.integers(1, 96)), min_size=1, max_size=6))
def test_explicit_periods_pass_only_when_they_cover_the_day_once(
        spans: list[tuple[int, int]]) -> None:
    periods = []
    minutes = [0] * (24 * 60)
    for i, (a, length) in enumerate(spans):
        s, e = a * 15, (a * 15 + length * 15)
        for m in range(s, e):
            minutes[m % (24 * 60)] += 1
        to = e % (24 * 60)
        periods.append({"from": _hhmm(s), "to": "24:00" if to == 0 else _hhmm(to),
                        "price": 1.0, "name": f"p{i}"})
    tariff, problems = tariff_problems(periods, ("tariff",), SPEC)
    assert (problems == []) == all(c == 1 for c in minutes), problems
    if tariff is not None:
        plan = tariff.seasons[0].weekdays
        for minute in range(0, 24 * 60, 5):
            owner = plan.at(minute).name
            s, length = spans[int(owner[1:])]
            assert (minute - s * 15) % (24 * 60) < length * 15


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 365), st.integers(0, 365)), min_size=1,
                max_size=4))
def test_seasons_pass_only_when_every_day_is_in_exactly_one(
        spans: list[tuple[int, int]]) -> None:
    leap = [date(2000, 1, 1) + timedelta(days=d) for d in range(366)]
    count = [0] * 366
    seasons = []
    for i, (a, b) in enumerate(spans):
        days = range(a, b + 1) if a <= b else [*range(a, 366), *range(0, b + 1)]
        for d in days:
            count[d] += 1
        seasons.append({"name": f"s{i}", "from": leap[a].strftime("%m-%d"),
                        "to": leap[b].strftime("%m-%d"),
                        "weekdays": [{"from": "00:00", "price": float(i)}]})
    tariff, problems = tariff_problems({"seasons": seasons}, ("tariff",), SPEC)
    assert (problems == []) == all(c == 1 for c in count), problems
    if tariff is not None:
        for d in leap[::3]:
            assert [s.name for s in tariff.seasons if s.contains(d.month, d.day)] \
                == [tariff.season_of(d).name]


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2000, 3000),
                     st.floats(allow_nan=True), st.text(max_size=8),
                     st.sampled_from(["07:00", "24:00", "25:00", "02-29", "13-01", "12-31",
                                      "2026-12-25", "x"]),
                     st.dates())
_keys = st.sampled_from(["from", "to", "price", "name", "seasons", "weekdays", "weekends",
                         "holidays", "bogus"])
_yaml = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)), max_leaves=25)


@settings(max_examples=500, deadline=None)
@given(_yaml)
def test_any_document_gives_a_tariff_or_problems_never_an_exception(raw: object) -> None:
    tariff, problems = tariff_problems(raw, ("tariff",), SPEC)
    assert (tariff is None) == bool(problems)  # a tariff, or the reasons there is none
    for loc, message in problems:
        assert loc[0] == "tariff" and message
