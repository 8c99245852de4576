"""Time-of-use tariffs: DST days, period boundaries, seasons, weekends; the checks of the
``billing:`` block and of tariff files (file, line, path)."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gridshare.billing_config import BillingSpec, billing_of, load_tariff_file, tariff_problems
from gridshare.config import ConfigError, load_site_config, parse_site_config
from gridshare.core.billing import IntervalSettings, Reading, Tariff, bill_all, prices_for
from gridshare.core.billing.intervals import boundaries

US = 1_000_000
BERLIN = BillingSpec(timezone="Europe/Berlin")
SITE_HEAD = """\
site: home
groups:
  - id: main
    max_current: 40
    chargers: [cp-1]
chargers:
  - id: cp-1
    max_current: 32
"""

TARIFF = {
    "holidays": ["2026-12-25"],
    "seasons": [
        {"name": "winter", "from": "10-01", "to": "03-31",
         "weekdays": [{"from": "00:00", "price": 0.20, "name": "night"},
                      {"from": "07:00", "price": 0.40, "name": "day"},
                      {"from": "22:00", "price": 0.20, "name": "night"}],
         "weekends": [{"from": "00:00", "price": 0.25, "name": "weekend"}]},
        {"name": "summer", "from": "04-01", "to": "09-30",
         "weekdays": [{"from": "00:00", "to": "12:00", "price": 0.30, "name": "s-morning"},
                      {"from": "12:00", "to": "24:00", "price": 0.10, "name": "s-solar"}]},
    ],
}


def tariff() -> Tariff:
    t, problems = tariff_problems(TARIFF, ("tariff",), BERLIN)
    assert problems == [] and t is not None
    return t


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def day_periods(local_day: str) -> list[str]:
    """The period of every 15-minute interval of a local day in Berlin."""
    start = datetime.fromisoformat(f"{local_day}T00:00").replace(tzinfo=BERLIN.zone)
    end = start.replace(day=start.day + 1)
    s = IntervalSettings()
    rng = boundaries(int(start.timestamp()) * US, int(end.timestamp()) * US, s)
    return [p.name for p in prices_for(tariff(), rng)]


def test_weekday_boundary_at_local_seven() -> None:
    t = tariff()
    # Tuesday 2026-11-03, CET (UTC+1): 06:45 local is night, 07:00 local is day
    assert t.period_at(utc("2026-11-03T06:45+01:00")).name == "night"
    assert t.period_at(utc("2026-11-03T07:00+01:00")).name == "day"
    assert t.period_at(utc("2026-11-03T21:45+01:00")).name == "day"
    assert t.period_at(utc("2026-11-03T22:00+01:00")).price == Decimal("0.20")


def test_weekend_and_holiday() -> None:
    t = tariff()
    assert t.period_at(utc("2026-11-07T12:00+01:00")).name == "weekend"  # Saturday
    assert t.period_at(utc("2026-12-25T12:00+01:00")).name == "weekend"  # Friday, holiday
    assert t.period_at(utc("2026-12-24T12:00+01:00")).name == "day"


def test_season_change_at_local_midnight() -> None:
    t = tariff()
    # 2026-03-31 is a Tuesday (winter), 2026-04-01 a Wednesday (summer, CEST = UTC+2)
    assert t.period_at(utc("2026-03-31T23:45+02:00")).name == "night"
    assert t.period_at(utc("2026-04-01T00:00+02:00")).name == "s-morning"
    assert t.period_at(utc("2026-04-01T12:00+02:00")).name == "s-solar"


def test_spring_forward_day_has_92_quarter_hours() -> None:
    # Sunday 2026-03-29: 02:00 CET jumps to 03:00 CEST
    names = day_periods("2026-03-29")
    assert len(names) == 92
    assert set(names) == {"weekend"}
    # the weekday after: 96, with the 07:00 boundary at local 07:00 (05:00 UTC)
    names = day_periods("2026-03-30")
    assert len(names) == 96
    assert names.index("day") == 28  # 07:00 is the 29th quarter hour of a normal day


def test_fall_back_day_has_100_quarter_hours_and_the_hour_repeats() -> None:
    # Sunday 2026-10-25: 03:00 CEST falls back to 02:00 CET. Use a weekday plan by
    # pricing a weekday-like tariff: the repeated hour is priced as the clock reads.
    names = day_periods("2026-10-25")
    assert len(names) == 100
    t, _ = tariff_problems([{"from": "00:00", "price": 1, "name": "a"},
                            {"from": "02:30", "price": 2, "name": "b"},
                            {"from": "03:00", "price": 3, "name": "c"}], ("t",), BERLIN)
    assert t is not None
    start = int(datetime(2026, 10, 25, tzinfo=BERLIN.zone).timestamp()) * US
    got = [p.name for p in prices_for(t, boundaries(start, start + 100 * 900 * US,
                                                    IntervalSettings()))]
    # 00:00-02:30 CEST: 10 quarter hours of a; 02:30-03:00 CEST: 2 of b; then 02:00-02:30
    # CET: 2 of a again, 02:30-03:00 CET: 2 of b again, then c for the rest of the day
    assert got[:16] == ["a"] * 10 + ["b"] * 2 + ["a"] * 2 + ["b"] * 2
    assert set(got[16:]) == {"c"} and len(got) == 100


def test_an_odd_boundary_prices_the_interval_by_its_start() -> None:
    t, _ = tariff_problems([{"from": "00:00", "price": 1, "name": "a"},
                            {"from": "07:10", "price": 2, "name": "b"}], ("t",), BERLIN)
    assert t is not None
    assert t.period_at(utc("2026-11-03T07:00+01:00")).name == "a"  # 07:00-07:15 starts in a
    assert t.period_at(utc("2026-11-03T07:15+01:00")).name == "b"


def test_step_list_wraps_midnight_like_charge_plan() -> None:
    t, _ = tariff_problems([{"from": "07:00", "price": 0.3}, {"from": "22:00", "price": 0.1}],
                           ("t",), BERLIN)
    assert t is not None
    assert t.period_at(utc("2026-11-03T03:00+01:00")).price == Decimal("0.1")
    assert t.period_at(utc("2026-11-03T03:00+01:00")).name == "22:00-07:00"


def test_site_file_problems_name_file_line_and_path() -> None:
    text = SITE_HEAD + textwrap.dedent("""\
        billing:
          timezone: Mars/Olympus
          interval: 7m
          tariff:
            seasons:
              - name: winter
                from: "10-01"
                to: "03-31"
                weekdays:
                  - {from: "00:00", to: "06:00", price: 0.2}
                  - {from: "05:00", to: "20:00", price: 0.4}
              - name: summer
                from: "04-02"
                to: "09-30"
                weekdays: [{from: "00:00", price: x}]
        """)
    with pytest.raises(ConfigError) as caught:
        parse_site_config(text, "site.yaml")
    got = {(i.line, i.path, i.message.split(" (")[0]) for i in caught.value.issues}
    assert (10, "billing.timezone", "unknown time zone 'Mars/Olympus'") in got
    assert any(i.path == "billing.interval" and i.line == 11 for i in caught.value.issues)


def test_site_file_tariff_semantics_are_checked_in_the_same_pass() -> None:
    text = SITE_HEAD + textwrap.dedent("""\
        billing:
          timezone: Europe/Berlin
          tariff:
            seasons:
              - name: winter
                from: "10-01"
                to: "03-31"
                weekdays:
                  - {from: "00:00", to: "06:00", price: 0.2}
                  - {from: "05:00", to: "20:00", price: 0.4}
              - name: summer
                from: "04-02"
                to: "09-30"
                weekdays: [{from: "00:00", price: 0.3}]
        """)
    with pytest.raises(ConfigError) as caught:
        parse_site_config(text, "site.yaml")
    lines = [str(i) for i in caught.value.issues]
    assert lines == [
        "site.yaml:12: billing.tariff.seasons: no season covers 04-01",
        "site.yaml:16: billing.tariff.seasons[0].weekdays: no period covers 20:00–24:00",
        "site.yaml:18: billing.tariff.seasons[0].weekdays[1]: overlaps step 0 at 05:00",
    ]


def test_overlapping_seasons() -> None:
    raw = {"seasons": [{"from": "01-01", "to": "06-30", "weekdays": [{"from": 0, "price": 1}]},
                       {"from": "06-01", "to": "12-31", "weekdays": [{"from": 0, "price": 1}]}]}
    _, problems = tariff_problems(raw, ("tariff",), BERLIN)
    assert problems == [(("tariff", "seasons", 1), "overlaps season 0 on 06-01")]


def test_a_good_block_loads(tmp_path: Path) -> None:
    text = SITE_HEAD + "billing:\n  timezone: Europe/Berlin\n  interval: 30\n  tariff:\n" \
        "    - {from: \"00:00\", price: 0.3}\n"
    site = tmp_path / "site.yaml"
    site.write_text(text)
    billing = billing_of(load_site_config(site))
    assert billing.spec.interval_s == 1800 and billing.tariff is not None


def test_tariff_file_is_the_charge_plan_format(tmp_path: Path) -> None:
    (tmp_path / "tariff.yaml").write_text(
        'tariff:\n  - {from: "00:00", price: 0.1}\n  - {from: "07:00", price: 0.3}\n')
    site = tmp_path / "site.yaml"
    site.write_text(SITE_HEAD + "billing:\n  tariff_file: tariff.yaml\n")
    billing = billing_of(load_site_config(site))
    assert billing.tariff is not None
    assert billing.tariff.period_at(utc("2026-11-03T08:00+00:00")).price == Decimal("0.3")
    # and charge-plan reads the same file
    from gridshare.cli.plan_charge_cmds import load_tariff
    assert load_tariff(tmp_path / "tariff.yaml", start_h=6.0, periods=2, period_h=1.0) \
        == [0.1, 0.3]


def test_bad_tariff_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "tariff.yaml"
    path.write_text('tariff:\n  - {from: "00:00", price: 0.1}\n  - {from: "25:00", price: 1}\n')
    with pytest.raises(ConfigError) as caught:
        load_tariff_file(path, BERLIN)
    assert [str(i) for i in caught.value.issues] == [
        f"{path}:3: tariff[1].from: must be a time of day like \"07:00\" (got '25:00')"]


def test_missing_tariff_file_is_a_site_problem(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE_HEAD + "billing:\n  tariff_file: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"billing\.tariff_file: no such file"):
        load_site_config(site)


@pytest.mark.parametrize(("day", "quarters"), [("2026-03-29", 92), ("2026-10-25", 100),
                                               ("2026-11-01", 96)])
def test_a_local_day_bills_its_real_length(day: str, quarters: int) -> None:
    """A constant 4 kW load over a whole Berlin day: 92 / 100 quarter hours of 1 kWh on the
    DST days, each priced by the local time it starts at."""
    start = datetime.fromisoformat(f"{day}T00:00").replace(tzinfo=BERLIN.zone)
    end = (start + timedelta(days=1)).replace(tzinfo=BERLIN.zone)  # local midnight
    start_us, end_us = int(start.timestamp()) * US, int(end.timestamp()) * US
    readings = [Reading(t, (t - start_us) // (900 * US) * 1_000_000)
                for t in range(start_us, end_us + 1, 900 * US)]
    lines, totals = bill_all({"m": [readings]}, start_us, end_us, IntervalSettings(), tariff())
    assert len(lines) == quarters
    assert all(x.energy_mwh == 1_000_000 for x in lines)
    assert totals[0].energy_mwh == quarters * 1_000_000
    # all three are Sundays: every quarter hour at the weekend price
    assert {x.tariff_period for x in lines} == {"weekend"}
    assert totals[0].cost == quarters * Decimal("0.25")  # exact


def test_check_reads_the_tariff_file_too(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text('tariff:\n  - {from: "00:00", to: "06:00", price: 1}\n')
    site = tmp_path / "site.yaml"
    site.write_text(SITE_HEAD + "billing:\n  tariff_file: t.yaml\n")
    with pytest.raises(ConfigError) as caught:
        load_site_config(site)
    assert [str(i) for i in caught.value.issues] == [
        f"{tmp_path / 't.yaml'}:1: tariff: no period covers 06:00–24:00"]


def test_uncovered_days_are_named_inclusively() -> None:
    raw = {"seasons": [{"from": "01-01", "to": "03-31", "weekdays": [{"from": 0, "price": 1}]},
                       {"from": "05-01", "to": "12-30", "weekdays": [{"from": 0, "price": 1}]}]}
    _, problems = tariff_problems(raw, ("tariff",), BERLIN)
    assert problems == [(("tariff", "seasons"), "no season covers 04-01–04-30, 12-31")]


def test_prices_are_exact_decimals_as_written() -> None:
    """A YAML number is the decimal written (0.1, not the float's binary noise); a quoted
    decimal keeps every digit; anything else is a problem at the price's path."""
    text = SITE_HEAD + textwrap.dedent("""\
        billing:
          tariff:
            - {from: "00:00", price: 0.1, name: a}
            - {from: "07:00", price: "0.1234567890123456789", name: b}
            - {from: "12:00", price: -0.07, name: c}
        """)
    billing = billing_of(parse_site_config(text, "site.yaml"))
    assert billing.tariff is not None
    got = [p.price for p in billing.tariff.seasons[0].weekdays.periods]
    assert got == [Decimal("0.1"), Decimal("0.1234567890123456789"), Decimal("-0.07")]
    for bad in ('"NaN"', '"1e3"', '"0,2"', ".inf", "true"):
        broken = text.replace('"0.1234567890123456789"', bad)
        with pytest.raises(ConfigError) as caught:
            parse_site_config(broken, "site.yaml")
        assert [(i.line, i.path) for i in caught.value.issues] == \
            [(12, "billing.tariff[1].price")], bad


def test_export_price_per_step_exact_and_kept_across_midnight() -> None:
    t, problems = tariff_problems([{"from": "07:00", "price": 0.3, "export_price": 0.08},
                                   {"from": "22:00", "price": 0.1,
                                    "export_price": "-0.0123456789012"}], ("t",), BERLIN)
    assert problems == [] and t is not None
    night = t.period_at(utc("2026-11-03T03:00+01:00"))  # the wrapped step before 07:00
    assert (night.price, night.export_price) == (Decimal("0.1"), Decimal("-0.0123456789012"))
    assert t.period_at(utc("2026-11-03T08:00+01:00")).export_price == Decimal("0.08")
    plain, _ = tariff_problems([{"from": "00:00", "price": 0.3}], ("t",), BERLIN)
    assert plain is not None and plain.seasons[0].weekdays.periods[0].export_price is None


@pytest.mark.parametrize(("raw", "expected"), [
    ([{"from": "00:00", "price": 0.3, "export_price": 0.1}, {"from": "07:00", "price": 0.4}],
     [(("t", 1, "export_price"), "required: every step has an export_price once one has")]),
    ([{"from": "00:00", "price": 0.3, "export_price": "NaN"}],
     [(("t", 0, "export_price"), "must be a number, or a decimal in quotes like \"0.08\" "
                                 "(got 'NaN')")]),
    ({"weekdays": [{"from": "00:00", "price": 0.3, "export_price": 0.1}],
      "weekends": [{"from": "00:00", "price": 0.2}]},
     [(("t",), "export_price: give it on every step of every day, or on none")]),
], ids=["one-step-missing", "not-a-number", "one-day-missing"])
def test_export_price_on_every_step_or_none(raw: object, expected: list[object]) -> None:
    t, problems = tariff_problems(raw, ("t",), BERLIN)
    assert t is None and problems == expected
