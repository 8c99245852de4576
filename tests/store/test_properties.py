"""Invariants of the store's two write paths, for any sequence of writes (hypothesis):

- ``insert_now`` keeps the first row of each unique key, however the rows are split
  into calls and however often they repeat (a redelivery never changes or adds a row);
- the batched DR upsert leaves exactly the latest state of each signal, however the
  states fall into batches.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.store import Store, ami_readings

T0 = datetime(2026, 1, 1, tzinfo=UTC)

readings = st.lists(st.tuples(st.sampled_from(["m-1", "m-2", "m-3"]),
                              st.integers(0, 5), st.integers(0, 1000)),
                    min_size=1, max_size=30)


def run_on_fresh_store(body):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(f"sqlite:///{Path(tmp) / 'p.db'}", flush_interval_s=60.0)
            await store.start()
            try:
                return await body(store)
            finally:
                await store.stop()

    return asyncio.run(go())


@settings(max_examples=40, deadline=None)
@given(rows=readings, cuts=st.lists(st.integers(1, 30), max_size=10))
def test_insert_now_keeps_the_first_row_of_each_key(rows: list[tuple[str, int, int]],
                                                    cuts: list[int]) -> None:
    as_rows = [{"meter_id": m, "ts": T0 + timedelta(seconds=15 * s), "received_at": T0,
                "power_w": float(p)} for m, s, p in rows]
    calls: list[list[dict[str, object]]] = []
    rest = as_rows
    for cut in cuts:
        if not rest:
            break
        calls.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        calls.append(rest)

    async def body(store: Store) -> list[dict[str, object]]:
        for call in calls:
            await store.insert_now(ami_readings, call)
        for call in calls:  # everything redelivered: changes nothing
            await store.insert_now(ami_readings, call)
        return await store.rows("ami_readings", limit=1000)

    stored = run_on_fresh_store(body)
    expected: dict[tuple[str, datetime], float] = {}
    for m, s, p in rows:
        expected.setdefault((m, T0 + timedelta(seconds=15 * s)), float(p))
    assert {(r["meter_id"], r["ts"].replace(tzinfo=UTC)): r["power_w"]  # type: ignore[union-attr]
            for r in stored} == expected
    assert len(stored) == len(expected)


@settings(max_examples=40, deadline=None)
@given(states=st.lists(st.tuples(st.sampled_from(["s1", "s2", "s3"]), st.booleans()),
                       min_size=1, max_size=25))
def test_dr_upsert_leaves_the_latest_state(states: list[tuple[str, bool]]) -> None:
    async def body(store: Store) -> dict[str, object]:
        for n, (signal_id, flush_after) in enumerate(states):
            store.record_dr_event({"signal_id": signal_id, "zone_id": "z", "signal": "{}",
                                   "compliance": str(n), "updated_at": T0})
            if flush_after:  # a batch boundary here
                await store.flush()
        await store.flush()
        assert store.failed_batches == 0
        return {r["signal_id"]: r["compliance"] for r in await store.dr_events()}

    latest = {signal_id: str(n) for n, (signal_id, _) in enumerate(states)}
    assert run_on_fresh_store(body) == latest
