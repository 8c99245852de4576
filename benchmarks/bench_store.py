"""Time the store: acknowledged writes (``insert_now``: commit, then return) and the
batched audit path (``record_*``: append to a queue, one transaction per batch).

Prints, for the database given (SQLite in a temporary file by default, both
``synchronous=FULL`` and ``NORMAL``; ``--postgres`` starts a throwaway PostgreSQL cluster
like the tests do; ``--db URL`` uses yours):

- insert_now latency p50/p99 and rows/s, one row per call and 100 rows per call;
- batched: the cost of one ``record_event`` call on the hot path and the rows/s the
  writer sustains (recording as fast as it can, then flushing);
- the process's peak RSS.

    python benchmarks/bench_store.py [--calls 2000] [--rows 200000] [--postgres | --db URL] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gridshare.events import MeterReading
from gridshare.store import SqliteSync, Store, ami_readings

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def acknowledged(store: Store, calls: int, per_call: int, base: int) -> dict[str, Any]:
    latencies = []
    started = time.perf_counter()
    for i in range(calls):
        at = T0 + timedelta(seconds=base + i)
        rows = [{"meter_id": f"m-{k}", "ts": at, "received_at": at, "power_w": 1.0}
                for k in range(per_call)]
        t = time.perf_counter()
        await store.insert_now(ami_readings, rows)
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return {"rows_per_call": per_call, "calls": calls,
            "p50_ms": statistics.median(latencies) * 1e3, "p99_ms": pct(latencies, 0.99) * 1e3,
            "rows_per_s": calls * per_call / wall}


async def batched(store: Store, rows: int) -> dict[str, Any]:
    readings = [MeterReading(f"cp-{i % 500}", 1, T0 + timedelta(seconds=i), "tx",
                             power_w=7000.0, current_a=(10.0, 10.0, 10.0), energy_wh=float(i))
                for i in range(rows)]
    started = time.perf_counter()
    for reading in readings:
        store.record_event(reading)
    recorded = time.perf_counter() - started
    await store.flush()
    wall = time.perf_counter() - started
    return {"rows": rows, "record_call_us": recorded / rows * 1e6, "rows_per_s": rows / wall,
            "dropped": store.dropped, "failed_batches": store.failed_batches}


async def run(url: str, sync: SqliteSync, calls: int, rows: int) -> dict[str, Any]:
    store = Store(url, sqlite_synchronous=sync, max_queue=max(rows, 200_000))
    await store.start()
    try:
        one = await acknowledged(store, calls, 1, 0)
        hundred = await acknowledged(store, max(1, calls // 10), 100, 10 * calls)
        many = await batched(store, rows)
    finally:
        await store.stop()
    return {"url": url.rsplit("@", maxsplit=1)[-1],
            "sqlite_synchronous": sync if "sqlite" in url else None,
            "insert_now_1": one, "insert_now_100": hundred, "batched": many}


@contextlib.contextmanager
def databases(args: argparse.Namespace) -> Iterator[list[tuple[str, SqliteSync]]]:
    if args.db:
        yield [(args.db, "FULL")]
    elif args.postgres:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from pg import postgres_cluster

        with postgres_cluster() as cluster:
            yield [(cluster.create_db("bench"), "FULL")]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield [(f"sqlite:///{tmp}/full.db", "FULL"), (f"sqlite:///{tmp}/normal.db", "NORMAL")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000,
                        help="insert_now calls of one row (a tenth as many of 100 rows)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows through record_event")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--postgres", action="store_true",
                       help="a throwaway PostgreSQL cluster (initdb, as the tests do)")
    where.add_argument("--db", metavar="URL", help="this database (it gets the tables)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with databases(args) as targets:
        results = [asyncio.run(run(url, sync, args.calls, args.rows)) for url, sync in targets]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        print(json.dumps({"results": results, "peak_rss_mb": peak_mb}, indent=2))
        return
    print(f"store benchmark on {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}")
    for r in results:
        sync = r["sqlite_synchronous"]
        label = f"SQLite (WAL, synchronous={sync})" if sync else f"PostgreSQL {r['url']}"
        print(f"\n{label}")
        for key in ("insert_now_1", "insert_now_100"):
            a = r[key]
            print(f"  insert_now, {a['rows_per_call']:>3} rows/call: p50 {a['p50_ms']:.2f} ms, "
                  f"p99 {a['p99_ms']:.2f} ms, {a['rows_per_s']:,.0f} rows/s ({a['calls']} calls)")
        b = r["batched"]
        print(f"  batched record_event: {b['record_call_us']:.2f} µs/call on the hot path, "
              f"{b['rows_per_s']:,.0f} rows/s written ({b['rows']:,} rows, "
              f"{b['dropped']} dropped, {b['failed_batches']} failed batches)")
    print(f"\npeak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
