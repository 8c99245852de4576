"""The audit store: batched writes off the hot path, one table per kind of record."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from stores import ONE_OF_EACH_COUNTS, record_one_of_each, started_store, table_counts

from gridshare.bus import MemoryBus
from gridshare.events import ChargerBooted, MeterReading
from gridshare.store import Store, StoreError, default_url, normalise_url

from .conftest import t


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with started_store(f"sqlite:///{tmp_path / 'audit.db'}") as s:
        yield s


async def test_every_kind_of_record_lands_in_its_table(store: Store) -> None:
    record_one_of_each(store, t)
    await store.flush()
    assert await table_counts(store) == ONE_OF_EACH_COUNTS
    (session,) = await store.rows("sessions")
    assert (session["transaction_id"], session["meter_start_wh"], session["meter_stop_wh"],
            session["stop_reason"]) == ("42", 100.0, 900.0, "EVDisconnected")
    assert session["stopped_at"] is not None
    limit = (await store.rows("events"))[0]
    assert limit["kind"] == "LimitChanged" and limit["group_id"] == "service"
    assert json.loads(limit["payload"])["max_current"] == 50.0
    (cmd,) = await store.rows("setpoint_commands")
    assert (cmd["result"], cmd["latency_ms"]) == ("accepted", pytest.approx(12.0))
    readings = await store.rows("meter_readings")
    assert {r["charger"] or r["group_id"] for r in readings} == {"cp-1", "service"}


async def test_recording_is_cheap_and_batched(store: Store) -> None:
    started = time.perf_counter()
    for i in range(20_000):
        store.record_event(MeterReading("cp-1", 1, t(i), current_a=(1.0, 1.0, 1.0)))
    per_call_us = (time.perf_counter() - started) / 20_000 * 1e6
    assert per_call_us < 50  # an append, not a database round trip
    await store.flush()
    assert await store.count("meter_readings") == 20_000


async def test_store_consumes_the_bus(store: Store) -> None:
    bus = MemoryBus()
    store.consume(bus.subscribe("store"))
    bus.publish(ChargerBooted("cp-9", t(0), "ocpp2.0.1"))
    await asyncio.sleep(0.01)
    await store.flush()
    assert await store.count("events") == 1


async def test_stop_writes_what_is_queued(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'x.db'}"
    s = Store(url, flush_interval_s=60)
    await s.start()
    s.record_event(ChargerBooted("cp-1", t(0), "ocpp1.6"))
    await s.stop()
    async with started_store(url) as again:
        assert await again.count("events") == 1


@pytest.mark.parametrize(("url", "expected"), [
    ("sqlite:///var/g.db", "sqlite+aiosqlite:///var/g.db"),
    ("sqlite+aiosqlite:////abs/g.db", "sqlite+aiosqlite:////abs/g.db"),
    ("sqlite://", "sqlite+aiosqlite://"),
], ids=["relative", "absolute", "memory"])
def test_normalise_url(url: str, expected: str) -> None:
    assert normalise_url(url) == expected


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://u@h/db", "only SQLite and PostgreSQL"),
    ("not a url", "not valid"),
    ("sqlite+pysqlite:///x.db", "use sqlite://"),
], ids=["mysql", "garbage", "sync-driver"])
def test_unusable_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        normalise_url(url)


def test_default_url_is_under_the_data_dir(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDSHARE_DATA_DIR", str(tmp_path))
    assert default_url() == f"sqlite+aiosqlite:///{tmp_path}/gridshare.db"
