"""``gridshare bill`` end to end on a SQLite file seeded with readings: the JSON and CSV
contracts, sums that match the registers, the three sources, bad usage."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from gridshare.billing_store import billing_intervals
from gridshare.cli import app
from gridshare.migrations import upgrade as migrate
from gridshare.store import ami_readings, meter_readings, sessions

runner = CliRunner()
SITE = """\
site: home
groups:
  - id: house
    max_current: 40
    chargers: [cp-1]
chargers:
  - id: cp-1
    max_current: 16
    connectors: 2
billing:
  timezone: Europe/Berlin
  currency: EUR
  tariff:
    - {from: "00:00", price: 0.20, name: night}
    - {from: "07:00", price: 0.40, name: day}
    - {from: "22:00", price: 0.20, name: night}
"""
# Tuesday 2026-11-03 in Berlin is UTC+1
T0 = datetime(2026, 11, 3, 5, 0, tzinfo=UTC)  # 06:00 local
Q = timedelta(minutes=15)


def at(quarters: float) -> datetime:
    return T0 + quarters * Q


async def _seed(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(migrate)  # the database serve makes
        rows: list[dict[str, Any]] = []
        # m-1: 250 Wh every quarter hour from 05:00 to 09:00 local
        rows += [{"meter_id": "m-1", "ts": at(q), "received_at": at(q), "power_w": 1000.0,
                  "energy_wh": 10_000.0 + 250 * (q + 4)} for q in range(-4, 13)]
        # m-2: replaced at 06:30 local (its successor starts at 0), then silent for an hour
        rows += [{"meter_id": "m-2", "ts": at(q), "received_at": at(q), "power_w": 0.0,
                  "energy_wh": wh} for q, wh in ((0, 500.0), (1, 600.0), (2, 30.0),
                                                  (6, 430.0), (7, 530.0), (8, 630.0))]
        # m-3: no register, 2 kW
        rows += [{"meter_id": "m-3", "ts": at(q), "received_at": at(q), "power_w": 2000.0,
                  "energy_wh": None} for q in range(0, 9)]
        await conn.execute(insert(ami_readings), rows)
        # cp-1: connector 1 draws 100 Wh, connector 2 300 Wh per quarter hour
        mr = [{"at": at(q), "charger": "cp-1", "connector": c, "transaction_id": None,
               "power_w": None, "energy_wh": e0 + step * q}
              for q in range(0, 9) for c, e0, step in ((1, 1000.0, 100), (2, 5000.0, 300))]
        # a session on connector 2: started 06:10, values at 06:30 and 07:00, stopped 07:20
        mr += [{"at": at(q), "charger": "cp-1", "connector": 2, "transaction_id": "tx-9",
                "power_w": 7000.0, "energy_wh": wh} for q, wh in ((2, 1500.0), (4, 2800.0))]
        await conn.execute(insert(meter_readings), mr)
        await conn.execute(insert(sessions), [{
            "charger": "cp-1", "connector": 2, "transaction_id": "tx-9",
            "started_at": T0 + timedelta(minutes=10), "stopped_at": T0 + timedelta(minutes=80),
            "meter_start_wh": 1000.0, "meter_stop_wh": 3333.0}])
    await engine.dispose()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, str]:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    url = f"sqlite:///{tmp_path / 'gridshare.db'}"
    asyncio.run(_seed(url.replace("sqlite://", "sqlite+aiosqlite://")))
    return site, url


def bill(setup: tuple[Path, str], *args: str) -> tuple[int, str, str]:
    site, url = setup
    result = runner.invoke(app, ["bill", str(site), "--db", url, *args])
    return result.exit_code, result.stdout, result.stderr


def bill_json(setup: tuple[Path, str], *args: str) -> dict[str, Any]:
    code, out, err = bill(setup, *args, "--format", "json")
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def of(data: dict[str, Any], id_: str) -> list[dict[str, Any]]:
    return [i for i in data["intervals"] if i["id"] == id_]


def test_meter_json_contract_and_tariff(setup: tuple[Path, str]) -> None:
    data = bill_json(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T08:00+01:00")
    assert set(data) >= {"intervals", "totals"}
    first = of(data, "m-1")[0]
    assert list(first) == ["id", "start", "end", "energy_kwh", "cost", "tariff_period",
                           "flags"]
    assert first == {"id": "m-1", "start": "2026-11-03T06:00:00+01:00",
                     "end": "2026-11-03T06:15:00+01:00", "energy_kwh": 0.25,
                     "cost": 0.05, "tariff_period": "night", "flags": []}
    m1 = of(data, "m-1")
    assert len(m1) == 8
    assert [i["tariff_period"] for i in m1] == ["night"] * 4 + ["day"] * 4
    totals = {t["id"]: t for t in data["totals"]}
    assert list(totals["m-1"]) == ["id", "energy_kwh", "cost"]
    assert totals["m-1"]["energy_kwh"] == 2.0
    assert totals["m-1"]["cost"] == pytest.approx(4 * 0.25 * 0.2 + 4 * 0.25 * 0.4)


def test_reset_and_gap_are_flagged_and_still_printed(setup: tuple[Path, str]) -> None:
    data = bill_json(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T08:00")
    m2 = of(data, "m-2")
    assert [i["energy_kwh"] for i in m2] == [0.1, 0.03, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert m2[0]["flags"] == []
    assert m2[1]["flags"] == ["register_reset"]
    assert all(i["flags"] == ["estimated", "gap"] for i in m2[2:6])
    assert {t["id"]: t["energy_kwh"] for t in data["totals"]}["m-2"] == 0.73
    m3 = of(data, "m-3")
    assert [i["energy_kwh"] for i in m3] == [0.5] * 8
    assert all(i["flags"] == ["from_power"] for i in m3)


def test_by_charger_sums_connectors(setup: tuple[Path, str]) -> None:
    data = bill_json(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T07:00",
                     "--by", "charger")
    assert [t["id"] for t in data["totals"]] == ["cp-1"]
    assert [i["energy_kwh"] for i in data["intervals"]] == [0.4] * 4
    assert data["totals"][0]["energy_kwh"] == 1.6


def test_by_session_sums_to_stop_minus_start(setup: tuple[Path, str]) -> None:
    data = bill_json(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T08:00",
                     "--by", "session")
    assert [t["id"] for t in data["totals"]] == ["cp-1/tx-9"]
    assert data["totals"][0]["energy_kwh"] == 2.333  # 3333 Wh - 1000 Wh, exactly
    got = [i["energy_kwh"] for i in data["intervals"]]
    # 06:10-06:15: 1/4 of 500 Wh from 06:10 to 06:30 -> 125 Wh; then 375, then 650, 650
    # (1500 -> 2800 Wh over 06:30-07:00), then 07:00-07:20 533 Wh in 15 and 5 minutes
    # (the intervals after the session are not listed: it was over, not missing data)
    assert got == [0.125, 0.375, 0.65, 0.65, 0.39975, 0.13325]
    assert data["intervals"][0]["flags"] == ["partial"]
    assert data["intervals"][-1]["flags"] == ["partial"]


def test_a_session_known_only_from_its_meter_values_is_billed(
        setup: tuple[Path, str]) -> None:
    # A station that does not speak OCPP sends session_id with its values (MQTT, docs/
    # telemetry.md) and no start or stop: no `sessions` row, so its session was missing
    # from --by session although its energy was in --by charger.
    _, url = setup

    async def add() -> None:
        engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://"))
        async with engine.begin() as conn:
            await conn.execute(insert(meter_readings), [
                {"at": at(q), "charger": "st-1", "connector": 1, "transaction_id": "s-5",
                 "power_w": 7400.0, "energy_wh": wh}
                for q, wh in ((0, 3250.0), (1, 3750.0), (2, 4500.0))])
        await engine.dispose()

    asyncio.run(add())
    data = bill_json(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T08:00",
                     "--by", "session")
    assert [t["id"] for t in data["totals"]] == ["cp-1/tx-9", "st-1/s-5"]
    assert [(i["energy_kwh"], i["flags"]) for i in of(data, "st-1/s-5")] == [
        (0.5, []), (0.75, [])]
    assert data["totals"][1]["energy_kwh"] == 1.25
    assert data["totals"][0]["energy_kwh"] == 2.333  # the OCPP session as before


def test_splitting_the_range_gives_the_same_intervals(setup: tuple[Path, str]) -> None:
    whole = bill_json(setup, "--from", "2026-11-03T05:00", "--to", "2026-11-03T09:00")
    a = bill_json(setup, "--from", "2026-11-03T05:00", "--to", "2026-11-03T06:45")
    b = bill_json(setup, "--from", "2026-11-03T06:45", "--to", "2026-11-03T09:00")
    for id_ in ("m-1", "m-2", "m-3"):
        assert of(whole, id_) == of(a, id_) + of(b, id_)


def test_csv_has_a_header_intervals_then_totals(setup: tuple[Path, str]) -> None:
    code, out, err = bill(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T06:30",
                          "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["kind", "id", "start", "end", "energy_kwh", "cost", "tariff_period",
                       "flags"]
    assert rows[1] == ["interval", "m-1", "2026-11-03T06:00:00+01:00",
                       "2026-11-03T06:15:00+01:00", "0.25", "0.05", "night", ""]
    assert ["interval", "m-2", "2026-11-03T06:15:00+01:00", "2026-11-03T06:30:00+01:00",
            "0.03", "0.006", "night", "register_reset"] in rows
    kinds = [r[0] for r in rows[1:]]
    assert kinds == ["interval"] * 6 + ["total"] * 3
    assert rows[-3] == ["total", "m-1", "2026-11-03T06:00:00+01:00",
                        "2026-11-03T06:30:00+01:00", "0.5", "0.1", "", ""]


def test_intervals_are_stored_and_a_rerun_replaces_them(setup: tuple[Path, str]) -> None:
    for _ in range(2):
        bill_json(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T07:00")

    async def rows() -> list[Any]:
        engine = create_async_engine(setup[1].replace("sqlite://", "sqlite+aiosqlite://"))
        async with engine.connect() as conn:
            got = list(await conn.execute(select(billing_intervals).order_by(
                billing_intervals.c.subject, billing_intervals.c.interval_start)))
        await engine.dispose()
        return got

    stored = asyncio.run(rows())
    assert len(stored) == 12  # 3 meters x 4 intervals, once
    assert (stored[0].by, stored[0].subject, stored[0].energy_mwh, stored[0].tariff_period) \
        == ("meter", "m-1", 250_000, "night")
    assert stored[5].flags == "register_reset"


@pytest.mark.parametrize(("args", "message"), [
    (["--from", "yesterday", "--to", "2026-11-03T07:00"], "--from: not an ISO date"),
    (["--from", "2026-11-03T06:05", "--to", "2026-11-03T07:00"],
     "not on a 15-minute interval boundary"),
    (["--from", "2026-11-03T07:00", "--to", "2026-11-03T07:00"], "is not after --from"),
])
def test_bad_usage_exits_2_with_a_clear_message(setup: tuple[Path, str], args: list[str],
                                                message: str) -> None:
    code, _, err = bill(setup, *args)
    assert code == 2
    assert message in err


def test_a_missing_database_file_is_a_usage_error(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    result = runner.invoke(app, ["bill", str(site), "--from", "2026-11-03", "--to",
                                 "2026-11-04", "--db", f"sqlite:///{tmp_path / 'none.db'}",
                                 "--format", "json"])
    assert result.exit_code == 2
    assert "no database file" in result.stderr
    assert json.loads(result.stdout)["error"] == "usage"
    assert not (tmp_path / "none.db").exists()


def test_ids_without_readings_in_the_range_are_left_out(setup: tuple[Path, str]) -> None:
    # 04:00-05:00 local: m-1 has readings in it; nothing else has any yet
    data = bill_json(setup, "--from", "2026-11-03T04:00", "--to", "2026-11-03T05:00")
    assert [t["id"] for t in data["totals"]] == ["m-1"]
    empty = bill_json(setup, "--from", "2020-01-01T00:00", "--to", "2020-01-01T01:00")
    assert empty["intervals"] == [] and empty["totals"] == []


def test_a_gap_across_the_whole_range_is_billed_as_estimated(setup: tuple[Path, str]) -> None:
    # m-2 reads at 06:30 and 07:30 local only: 07:00-07:15 lies inside its gap
    data = bill_json(setup, "--from", "2026-11-03T07:00", "--to", "2026-11-03T07:15")
    (m2,) = of(data, "m-2")
    assert m2["energy_kwh"] == 0.1 and m2["flags"] == ["estimated", "gap"]


def test_the_household_example_splits_the_bill_by_charger(tmp_path: Path) -> None:
    """docs/billing.md's example: two flats' chargers, the shipped time-of-use tariff."""
    site = Path(__file__).resolve().parents[2] / "src/gridshare/examples/home-billing.yaml"
    url = f"sqlite:///{tmp_path / 'gridshare.db'}"

    async def seed() -> None:
        engine = create_async_engine(url.replace("sqlite://", "sqlite+aiosqlite://"))
        async with engine.begin() as conn:
            await conn.run_sync(migrate)  # the database serve makes
            # flat-a charges 2 kWh per quarter hour from 18:00 to 19:00 local (peak),
            # flat-b 1 kWh per quarter hour from 23:00 to 24:00 (night), Tuesday 3 Nov
            rows = []
            for charger, first in (("flat-a", 17), ("flat-b", 22)):  # UTC hours
                for q in range(5):
                    t = datetime(2026, 11, 3, first, tzinfo=UTC) + q * Q
                    rows.append({"at": t, "charger": charger, "connector": 1,
                                 "energy_wh": 10_000.0 + q * (2000 if charger == "flat-a"
                                                               else 1000)})
            await conn.execute(insert(meter_readings), rows)
        await engine.dispose()

    asyncio.run(seed())
    result = runner.invoke(app, ["bill", str(site), "--from", "2026-11-03", "--to",
                                 "2026-11-04", "--by", "charger", "--db", url,
                                 "--format", "csv"])
    assert result.exit_code == 0, result.stderr
    totals = [r for r in csv.reader(io.StringIO(result.stdout)) if r[0] == "total"]
    assert totals == [
        ["total", "flat-a", "2026-11-03T00:00:00+01:00", "2026-11-04T00:00:00+01:00", "8.0",
         str(round(8 * 0.42, 6)), "", ""],
        ["total", "flat-b", "2026-11-03T00:00:00+01:00", "2026-11-04T00:00:00+01:00", "4.0",
         str(round(4 * 0.22, 6)), "", ""]]


def test_more_than_a_year_is_refused(setup: tuple[Path, str]) -> None:
    code, _, err = bill(setup, "--from", "2026-01-01", "--to", "2027-01-03")
    assert code == 2 and "at most 366 days" in err


def test_a_database_that_cannot_be_reached_exits_1(tmp_path: Path) -> None:
    from brokers import free_port

    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    result = runner.invoke(app, [
        "bill", str(site), "--from", "2026-11-03", "--to", "2026-11-04", "--db",
        f"postgresql://someone:secret@127.0.0.1:{free_port()}/gridshare", "--format", "json"])
    assert result.exit_code == 1
    assert "cannot be used" in result.stderr and "secret" not in result.stderr
    assert json.loads(result.stdout)["error"] == "database"


def test_a_database_of_a_newer_version_is_not_saved_into(setup: tuple[Path, str]) -> None:
    """A schema revision this version does not know: exit 1 naming it, nothing written;
    ``--no-save`` still prints the bill (it only reads)."""
    import sqlite3

    with sqlite3.connect(setup[1].removeprefix("sqlite:///")) as db:
        db.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    code, out, err = bill(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T07:00",
                          "--format", "json")
    assert code == 1 and "0099_from_the_future" in err and "migrat" in err, err
    assert json.loads(out)["error"] == "database"
    code, out, err = bill(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T07:00",
                          "--format", "json", "--no-save")
    assert code == 0, err
    assert of(json.loads(out), "m-1")
    with sqlite3.connect(setup[1].removeprefix("sqlite:///")) as db:
        assert db.execute("SELECT count(*) FROM billing_intervals").fetchone() == (0,)


def test_a_chargers_own_meter_is_not_added_to_its_connectors(setup: tuple[Path, str]) -> None:
    async def add_connector_0() -> None:
        engine = create_async_engine(setup[1].replace("sqlite://", "sqlite+aiosqlite://"))
        async with engine.begin() as conn:
            await conn.execute(insert(meter_readings), [
                {"at": at(q), "charger": "cp-1", "connector": 0, "energy_wh": 90_000.0 + 450 * q}
                for q in range(0, 9)])
        await engine.dispose()

    asyncio.run(add_connector_0())
    data = bill_json(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T07:00",
                     "--by", "charger")
    # 450 Wh per quarter hour from the charger's meter (its connectors draw 400 in all)
    assert [i["energy_kwh"] for i in data["intervals"]] == [0.45] * 4


def test_a_long_bill_on_a_terminal_shows_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    from gridshare.cli import bill_cmds

    shown = io.StringIO()
    shown.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(bill_cmds.sys, "stderr", shown)
    with bill_cmds._progress(bill_cmds.PROGRESS_AFTER) as tick:
        assert tick is not None
        tick(bill_cmds.PROGRESS_AFTER)
    with bill_cmds._progress(bill_cmds.PROGRESS_AFTER - 1) as tick:
        assert tick is None  # short: no bar
    monkeypatch.setattr(shown, "isatty", lambda: False)
    with bill_cmds._progress(10 * bill_cmds.PROGRESS_AFTER) as tick:
        assert tick is None  # not a terminal: no bar


EXACT_SITE = SITE.replace("  currency: EUR\n", "  currency: EUR\n  cost_decimals: 2\n").replace(
    """    - {from: "00:00", price: 0.20, name: night}
    - {from: "07:00", price: 0.40, name: day}
    - {from: "22:00", price: 0.20, name: night}
""", """    - {from: "00:00", price: 0.1, name: night}
    - {from: "07:00", price: "0.333333333333333333333333", name: day}
""")


def test_lines_add_up_to_the_totals_exactly_as_printed(setup: tuple[Path, str]) -> None:
    """The costs printed are exact decimals, rounded once per line (to cost_decimals,
    half-even), and each total is the sum of its printed lines to the last digit, in JSON,
    CSV and the stored rows."""
    setup[0].write_text(EXACT_SITE)
    code, out, err = bill(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T08:00",
                          "--format", "json")
    assert code == 0, err
    data = json.loads(out, parse_float=Decimal)
    m1 = of(data, "m-1")
    # 0.25 kWh at 0.1 = 0.025 -> 0.02 (a tie, to even); at 0.333... = 0.0833... -> 0.08
    assert [i["cost"] for i in m1] == [Decimal("0.02")] * 4 + [Decimal("0.08")] * 4
    totals = {t["id"]: t for t in data["totals"]}
    # 0.40, where rounding the unrounded sum (0.1 + 0.3333...) would print 0.43
    assert totals["m-1"]["cost"] == Decimal("0.4")
    assert '"cost": 0.4}' in out  # the digits themselves, not a float's
    for id_, total in totals.items():
        assert sum(i["cost"] for i in of(data, id_)) == total["cost"]
        assert sum(i["energy_kwh"] for i in of(data, id_)) == total["energy_kwh"]
    code, out_csv, err = bill(setup, "--from", "2026-11-03T06:00", "--to",
                              "2026-11-03T08:00", "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out_csv)))[1:]
    assert [r[5] for r in rows if r[0] == "interval"] == \
        [str(i["cost"]) for i in data["intervals"]]
    for id_, total in totals.items():
        assert sum(Decimal(r[5]) for r in rows if r[:2] == ["interval", id_]) \
            == Decimal(next(r[5] for r in rows if r[:2] == ["total", id_])) == total["cost"]

    async def stored() -> list[Any]:
        engine = create_async_engine(setup[1].replace("sqlite://", "sqlite+aiosqlite://"))
        async with engine.connect() as conn:
            got = list(await conn.execute(select(
                billing_intervals.c.subject, billing_intervals.c.cost,
                billing_intervals.c.cost_decimal).order_by(
                billing_intervals.c.subject, billing_intervals.c.interval_start)))
        await engine.dispose()
        return got

    rows_db = asyncio.run(stored())
    assert [Decimal(r.cost_decimal) for r in rows_db] == [i["cost"] for i in data["intervals"]]
    assert all(r.cost == float(r.cost_decimal) for r in rows_db)


@pytest.mark.parametrize(("billing", "message"), [
    ("  cost_decimals: 13\n", "billing.cost_decimals"),
    ("  cost_decimals: -1\n", "billing.cost_decimals"),
    ("  cost_decimals: \"2\"\n", "billing.cost_decimals"),
])
def test_cost_decimals_is_checked(setup: tuple[Path, str], billing: str,
                                  message: str) -> None:
    setup[0].write_text(SITE.replace("  currency: EUR\n", "  currency: EUR\n" + billing))
    code, _, err = bill(setup, "--from", "2026-11-03T06:00", "--to", "2026-11-03T07:00")
    assert code == 2
    assert message in err


V2G_SITE = SITE.replace("price: 0.20,", "price: 0.20, export_price: 0.05,").replace(
    "price: 0.40,", 'price: 0.40, export_price: "0.125",')


async def _seed_v2g(url: str) -> None:
    """cp-v2g's session v-1 (06:00-07:00 local): charges 1 kWh in the first quarter hour,
    then discharges 0.5 kWh per quarter hour, 250 Wh of it after 06:45, by its
    Energy.Active.Export.Register; its meter sent no export value at 06:30. After the
    session (07:00-07:15, no transaction) the charger feeds back 250 Wh more."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        rows = [{"at": at(q), "charger": "cp-v2g", "connector": 1, "transaction_id": "v-1",
                 "power_w": p, "energy_wh": imp, "energy_export_wh": exp}
                for q, p, imp, exp in ((0, 4000.0, 2000.0, 700.0),
                                       (1, -2000.0, 3000.0, 700.0),
                                       (2, -2000.0, 3000.0, None),
                                       (3, -2000.0, 3000.0, 1700.0),
                                       (4, 0.0, 3000.0, 1950.0))]
        # after the session: 250 Wh more fed back from 07:00 (the day's export price)
        rows.append({"at": at(5), "charger": "cp-v2g", "connector": 1,
                     "transaction_id": None, "power_w": -1000.0, "energy_wh": 3000.0,
                     "energy_export_wh": 2200.0})
        await conn.execute(insert(meter_readings), rows)
        await conn.execute(insert(sessions), [{
            "charger": "cp-v2g", "connector": 1, "transaction_id": "v-1", "started_at": at(0),
            "stopped_at": at(4), "meter_start_wh": 2000.0, "meter_stop_wh": 3000.0}])
    await engine.dispose()


@pytest.fixture
def v2g(setup: tuple[Path, str]) -> tuple[Path, str]:
    site, url = setup
    site.write_text(V2G_SITE)
    asyncio.run(_seed_v2g(url.replace("sqlite://", "sqlite+aiosqlite://")))
    return site, url


def test_a_v2g_session_bills_its_export_register(v2g: tuple[Path, str]) -> None:
    data = bill_json(v2g, "--by", "session", "--from", "2026-11-03T06:00",
                     "--to", "2026-11-03T07:15")
    lines = of(data, "cp-v2g/v-1")
    imports = [x for x in lines if "direction" not in x]
    exports = [x for x in lines if x.get("direction") == "export"]
    assert [x["energy_kwh"] for x in imports] == [1.0, 0.0, 0.0, 0.0]
    assert list(exports[0]) == ["id", "start", "end", "energy_kwh", "cost", "tariff_period",
                                "flags", "direction"]
    assert [(x["start"][11:16], x["energy_kwh"], x["cost"], x["tariff_period"])
            for x in exports] == [("06:00", 0.0, 0.0, "night"), ("06:15", 0.5, 0.025, "night"),
                                  ("06:30", 0.5, 0.025, "night"),
                                  ("06:45", 0.25, 0.0125, "night")]
    # 07:00-07:15: after the session's last reading, like its import line: left out
    assert len(imports) == len(exports) == 4
    totals = {t["id"]: t for t in data["totals"]}
    assert totals["cp-v2g/v-1"] == {"id": "cp-v2g/v-1", "energy_kwh": 1.0, "cost": 0.2,
                                    "export_energy_kwh": 1.25, "export_cost": 0.0625}
    # ids without an export register: the totals and lines they always had
    assert list(totals["cp-1/tx-9"]) == ["id", "energy_kwh", "cost"]
    assert all("direction" not in x for x in of(data, "cp-1/tx-9"))
    # stored: both directions, each line beside the other of its interval
    import sqlite3

    with sqlite3.connect(v2g[1].removeprefix("sqlite:///")) as db:
        stored = db.execute("SELECT direction, energy_mwh, cost_decimal FROM "
                            "billing_intervals WHERE subject = 'cp-v2g/v-1' "
                            "ORDER BY direction DESC, interval_start").fetchall()
    assert stored == [("import", 1_000_000, "0.2"), ("import", 0, "0.0"), ("import", 0, "0.0"),
                      ("import", 0, "0.0"), ("export", 0, "0.0"), ("export", 500_000, "0.025"),
                      ("export", 500_000, "0.025"), ("export", 250_000, "0.0125")]
    again = bill_json(v2g, "--by", "session", "--from", "2026-11-03T06:00",
                      "--to", "2026-11-03T07:15")  # a second run replaces, never doubles
    assert again["totals"] == data["totals"]
    with sqlite3.connect(v2g[1].removeprefix("sqlite:///")) as db:
        assert db.execute("SELECT count(*) FROM billing_intervals WHERE subject = "
                          "'cp-v2g/v-1'").fetchone() == (8,)


def test_export_lines_in_csv_and_the_day_price(v2g: tuple[Path, str]) -> None:
    code, out, err = bill(v2g, "--by", "charger", "--from", "2026-11-03T06:45",
                          "--to", "2026-11-03T07:15", "--format", "csv")
    assert code == 0, err
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["kind", "id", "start", "end", "energy_kwh", "cost", "tariff_period",
                       "flags", "direction"]
    assert {len(r) for r in rows} == {9}
    v2g_rows = [r for r in rows if r[1] == "cp-v2g"]
    assert [(r[0], r[2][11:16], r[4], r[5], r[7], r[8]) for r in v2g_rows] == [
        ("interval", "06:45", "0.0", "0.0", "", "import"),
        ("interval", "07:00", "0.0", "0.0", "", "import"),
        ("interval", "06:45", "0.25", "0.0125", "", "export"),
        ("interval", "07:00", "0.25", "0.03125", "", "export"),
        ("total", "06:45", "0.0", "0.0", "", "import"),
        ("total", "06:45", "0.5", "0.04375", "", "export")]
    assert all(r[8] == "import" for r in rows[1:] if r[1] == "cp-1")


def test_a_database_before_the_export_register_bills_imports(v2g: tuple[Path, str]) -> None:
    import sqlite3

    _, url = v2g
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        db.execute("ALTER TABLE meter_readings DROP COLUMN energy_export_wh")
    data = bill_json(v2g, "--by", "charger", "--from", "2026-11-03T06:00",
                     "--to", "2026-11-03T07:00")
    assert all("direction" not in x for x in data["intervals"])
    totals = {t["id"]: t for t in data["totals"]}
    assert totals["cp-v2g"] == {"id": "cp-v2g", "energy_kwh": 1.0, "cost": 0.2}
