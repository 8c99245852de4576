"""Property: the group-commit writer resolves a write only once its rows are committed,
and atomically per group — whatever the interleaving of concurrent writes and refused
transactions, the stored rows are exactly those of the writes that returned, each once;
a write that raised left nothing (and the batched path never adds what it owns)."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridshare.events import MeterReading
from gridshare.store import Store

T0 = datetime(2026, 11, 30, 12, tzinfo=UTC)

writes_st = st.lists(
    st.tuples(st.integers(1, 4),  # readings in the write
              st.integers(0, 3),  # loop passes before it is sent
              st.booleans()),  # poisoned: the database refuses a group holding it
    min_size=1, max_size=25)


async def scenario(url: str, writes: list[tuple[int, int, bool]], window_s: float) -> None:
    store = Store(url)
    store.durable.max_delay_s = window_s
    await store.start()
    real = store.durable._commit

    async def commit(items: Any) -> None:
        if any(e.charger.startswith("poison") for e in items):
            raise RuntimeError("refused")
        await real(items)

    store.durable._commit = commit  # type: ignore[method-assign]
    try:
        clock = iter(range(10_000))

        async def one(i: int, n: int, delay: int, poison: bool) -> list[MeterReading]:
            for _ in range(delay):
                await asyncio.sleep(0)
            name = f"poison-{i}" if poison else f"cp-{i}"
            items = [MeterReading(name, 1, T0 + timedelta(seconds=next(clock)),
                                  energy_wh=float(i)) for _ in range(n)]
            await store.durable.write(items)
            for item in items:
                store.record_event(item)  # the bus's copy: must be skipped
            return items

        results = await asyncio.gather(*(one(i, *w) for i, w in enumerate(writes)),
                                       return_exceptions=True)
        await store.flush()
        rows = await store.rows("meter_readings", limit=100_000)
    finally:
        await store.stop()
    stored = sorted((r["charger"], r["at"].replace(tzinfo=UTC)) for r in rows)
    expected = sorted((e.charger, e.at) for r in results if isinstance(r, list) for e in r)
    assert stored == expected
    for (_, _, poison), result in zip(writes, results, strict=True):
        if poison:
            assert isinstance(result, RuntimeError)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=writes_st, window_ms=st.sampled_from([0.0, 2.0]))
def test_stored_rows_are_exactly_those_of_returned_writes(
        writes: list[tuple[int, int, bool]], window_ms: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(f"sqlite:///{Path(tmp) / 'gs.db'}", writes, window_ms / 1000))
