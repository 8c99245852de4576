"""The store end to end on SQLite and on PostgreSQL: every record kind, session updates,
DR event upserts, times back with their offset, and ``insert_now``'s promise (committed
on return, duplicates ignored)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from stores import ONE_OF_EACH_COUNTS, record_one_of_each, started_store, table_counts

from gridshare.events import MeterReading
from gridshare.store import Store, ami_readings, events

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    async with started_store(db_url) as s:
        yield s


async def test_every_kind_of_record_lands(store: Store) -> None:
    record_one_of_each(store, t)
    await store.flush()
    assert store.failed_batches == 0
    assert await table_counts(store) == ONE_OF_EACH_COUNTS
    (session,) = await store.sessions()
    assert (session["started_at"], session["stopped_at"], session["energy_wh"]) == \
        (t(1), t(3), 800.0)
    (cmd,) = await store.commands()
    assert (cmd["at"], cmd["result"], cmd["latency_ms"]) == \
        (t(1), "accepted", pytest.approx(12.0))
    (alarm,) = await store.alarms(since=t(5))
    assert alarm["message"] == "over"
    assert await store.alarms(since=t(6)) == []
    limit = (await store.rows("events"))[0]
    assert json.loads(limit["payload"])["max_current"] == 50.0


def dr_row(signal_id: str, compliance: str | None, at: datetime) -> dict[str, object]:
    return {"signal_id": signal_id, "zone_id": "z1", "signal": "{}",
            "compliance": compliance, "updated_at": at}


async def test_dr_events_are_upserted_by_signal_id(store: Store) -> None:
    # Within one batch the latest state wins; across batches the stored row is replaced.
    store.record_dr_event(dr_row("s1", "a", t(0)))
    store.record_dr_event(dr_row("s1", "b", t(1)))
    store.record_dr_event(dr_row("s2", None, t(2)))
    await store.flush()
    store.record_dr_event({**dr_row("s1", "c", t(3)), "ended_at": t(3)})
    await store.flush()
    assert store.failed_batches == 0
    rows = {r["signal_id"]: r for r in await store.dr_events()}
    assert set(rows) == {"s1", "s2"}
    assert (rows["s1"]["compliance"], rows["s1"]["ended_at"], rows["s1"]["updated_at"]) == \
        ("c", t(3), t(3))
    assert rows["s2"]["compliance"] is None


def ami(meter: str, second: int, power_w: float = 1000.0) -> dict[str, object]:
    return {"meter_id": meter, "ts": t(second), "received_at": t(second),
            "power_w": power_w}


async def test_insert_now_is_committed_when_it_returns(store: Store, db_url: str) -> None:
    await store.insert_now(ami_readings, [ami("m-1", 0), ami("m-1", 15)])
    # Another store (another connection, another process in real life) sees it at once.
    async with started_store(db_url) as other:
        assert await other.count("ami_readings") == 2


async def test_insert_now_ignores_duplicates(store: Store) -> None:
    await store.insert_now(ami_readings, [ami("m-1", 0), ami("m-2", 0)])
    # A redelivery (same meter, same ts) is skipped, within a call and across calls; the
    # first value is kept.
    await store.insert_now(ami_readings, [ami("m-1", 0, 5.0), ami("m-1", 15),
                                          ami("m-1", 15, 7.0)])
    rows = await store.rows("ami_readings")
    assert sorted((r["meter_id"], r["power_w"]) for r in rows) == \
        [("m-1", 1000.0), ("m-1", 1000.0), ("m-2", 1000.0)]


async def test_insert_now_of_nothing_and_of_a_table_without_unique_key(store: Store) -> None:
    await store.insert_now(events, [])
    row = {"at": t(0), "kind": "X", "payload": "{}"}
    await store.insert_now(events, [row, row])  # no unique key: both are rows
    assert await store.count("events") == 2


async def test_insert_now_raises_when_the_database_refuses(store: Store) -> None:
    with pytest.raises(Exception, match=r"(?i)null"):
        await store.insert_now(ami_readings, [{"meter_id": "m-1", "ts": t(0)}])
    assert await store.count("ami_readings") == 0


async def test_insert_now_stores_what_sqlalchemy_would(tmp_path: Path) -> None:
    """On SQLite, insert_now hands its rows to the driver with the columns' own bind
    processors: the stored text must be SQLAlchemy's, byte for byte (the unique key
    (meter_id, ts) compares it: a different format would store a redelivery twice)."""
    from sqlalchemy.dialects import sqlite as sqlite_dialect

    db = tmp_path / "same.db"
    async with started_store(f"sqlite:///{db}") as store:
        row = {**ami("m-1", 0, 12.5), "ts": T0 + timedelta(microseconds=7),
               "energy_wh": None, "current_l1_a": 3.0}
        await store.insert_now(ami_readings, [row])  # the driver path
        engine = store._engine
        assert engine is not None
        async with engine.begin() as conn:  # SQLAlchemy's own path, for the same values
            await conn.execute(sqlite_dialect.insert(ami_readings),
                               [{**row, "meter_id": "m-2"}])
        # Rows with different keys take SQLAlchemy's path; the duplicate is skipped.
        await store.insert_now(ami_readings, [ami("m-3", 0), {**row, "power_w": 1.0}])
    with sqlite3.connect(db) as raw:
        stored = raw.execute("select meter_id, ts, received_at, power_w, energy_wh, "
                             "current_l1_a from ami_readings order by meter_id").fetchall()
    assert [r[0] for r in stored] == ["m-1", "m-2", "m-3"]
    assert stored[0][1:] == stored[1][1:]
    assert stored[0][1:4] == ("2026-03-29 00:30:00.000007", "2026-03-29 00:30:00.000000",
                              12.5)


async def test_insert_now_needs_a_started_store(db_url: str) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        await Store(db_url).insert_now(ami_readings, [ami("m-1", 0)])


@pytest.mark.parametrize(("url", "expected"), [
    ("postgres://gs@db/grid", "postgresql+asyncpg://gs@db/grid"),
    ("postgresql://gs:pw@db:5433/grid", "postgresql+asyncpg://gs:pw@db:5433/grid"),
    ("postgresql+asyncpg://gs@db/grid", "postgresql+asyncpg://gs@db/grid"),
])
def test_postgres_urls_pick_asyncpg(url: str, expected: str) -> None:
    from gridshare.store import normalise_url

    assert normalise_url(url) == expected


async def test_acknowledged_and_batched_writes_side_by_side(store: Store) -> None:
    """The writer's batches and insert_now's commits share the database (on SQLite: two
    connections, one write lock): neither fails, nothing is lost."""
    import asyncio

    async def acknowledged() -> None:
        for i in range(100):
            await store.insert_now(ami_readings, [ami("m-1", i), ami("m-2", i)])

    async def batched() -> None:
        for i in range(10_000):
            store.record_event(MeterReading("cp-1", 1, t(i), current_a=(1.0, 1.0, 1.0)))
            if i % 500 == 0:
                await asyncio.sleep(0.005)  # let batches go while acknowledged writes run

    await asyncio.gather(acknowledged(), batched())
    await store.flush(strict=True)
    assert (store.failed_batches, store.dropped) == (0, 0)
    assert await store.count("ami_readings") == 200
    assert await store.count("meter_readings") == 10_000


async def test_export_register_is_stored_by_both_writers(store: Store) -> None:
    """The batched writer and the durable (acknowledged) writer both keep the export
    register next to the import register; a reading without one stores null, not 0."""
    from gridshare.store import DurableWriter

    store.record_event(MeterReading("cp-1", 1, t(1), energy_wh=100.0, energy_export_wh=40.5))
    store.record_event(MeterReading("cp-1", 1, t(2), energy_wh=101.0))
    await store.flush(strict=True)
    await DurableWriter(store).write([MeterReading("cp-2", 1, t(3), energy_wh=7.0,
                                                   energy_export_wh=2.25)])
    rows = await store.rows("meter_readings")
    assert sorted((r["charger"], r["energy_wh"], r["energy_export_wh"]) for r in rows) == [
        ("cp-1", 100.0, 40.5), ("cp-1", 101.0, None), ("cp-2", 7.0, 2.25)]
