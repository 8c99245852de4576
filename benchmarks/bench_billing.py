"""Time interval billing: readings → exact 15-minute intervals priced by a tariff.

Core: 1,000 meters × 30 days of 15-minute register readings (timestamps jittered by up to
±20 s so every boundary is interpolated; one meter in 50 replaced mid-month, one in 20
with a 2-hour gap) through ``gridshare.core.billing.bill_all`` with a Berlin time-of-use
tariff (seasons, weekends). End to end: ``gridshare bill --by meter --format json`` on a
SQLite file seeded with ``--e2e-meters`` of the same meters (query, compute, write the
intervals back, print), timed as a whole process (start-up included). Prints intervals/s,
per-meter p50/p99 and peak memory (the core's process; the command's).

    python benchmarks/bench_billing.py [--meters 1000] [--days 30] [--e2e-meters 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from gridshare.billing_config import BillingSpec, tariff_problems
from gridshare.core.billing import IntervalSettings, Reading, build_track
from gridshare.core.billing.bill import bill_for
from gridshare.core.billing.intervals import boundaries, intervals
from gridshare.core.billing.tariff import prices_for

START = datetime(2026, 11, 1, tzinfo=ZoneInfo("Europe/Berlin")).astimezone(UTC)
US = 1_000_000
TARIFF = {"seasons": [
    {"name": "winter", "from": "10-01", "to": "03-31",
     "weekdays": [{"from": "00:00", "price": 0.22, "name": "night"},
                  {"from": "07:00", "price": 0.36, "name": "day"},
                  {"from": "17:00", "price": 0.42, "name": "peak"},
                  {"from": "21:00", "price": 0.22, "name": "night"}],
     "weekends": [{"from": "00:00", "price": 0.24, "name": "weekend"}]},
    {"name": "summer", "from": "04-01", "to": "09-30",
     "weekdays": [{"from": "00:00", "price": 0.3}]}]}


def meter_readings(m: int, days: int) -> list[Reading]:
    """A meter's month: jittered 15-minute readings, 0–3 kW per quarter hour."""
    rng = random.Random(m)
    t0 = int(START.timestamp()) * US
    count = days * 96 + 1
    wh = rng.uniform(0, 1e6)
    out = []
    reset_at = count // 2 if m % 50 == 0 else -1
    gap = range(count // 3, count // 3 + 8) if m % 20 == 0 else range(0)
    for q in range(count):
        if q == reset_at:
            wh = 0.0
        if q not in gap:
            jitter = rng.randint(-20, 20) * US if 0 < q < count - 1 else 0
            out.append(Reading(t0 + q * 900 * US + jitter, round(wh * 1000), None))
        wh += rng.uniform(0, 750)
    return out


def core(meters: int, days: int) -> dict[str, float]:
    spec = BillingSpec(timezone="Europe/Berlin")
    tariff, problems = tariff_problems(TARIFF, ("tariff",), spec)
    assert tariff is not None, problems
    settings = IntervalSettings()
    start_us = int(START.timestamp()) * US
    end_us = start_us + days * 86400 * US
    t = time.perf_counter()
    periods = prices_for(tariff, boundaries(start_us, end_us, settings))
    tariff_s = time.perf_counter() - t
    per_meter = []
    total_intervals = 0
    for m in range(meters):
        readings = meter_readings(m, days)
        t = time.perf_counter()
        items = intervals(build_track(readings, settings), start_us, end_us, settings)
        bill_for(f"m-{m}", items, periods)
        per_meter.append(time.perf_counter() - t)
        total_intervals += len(items)
    elapsed = sum(per_meter) + tariff_s
    q = statistics.quantiles(per_meter, n=100)
    return {"meters": meters, "days": days, "intervals": total_intervals,
            "seconds": round(elapsed, 3),
            "intervals_per_s": round(total_intervals / elapsed),
            "readings_per_s": round(meters * (days * 96 + 1) / elapsed),
            "meter_p50_ms": round(q[49] * 1000, 3), "meter_p99_ms": round(q[98] * 1000, 3),
            "tariff_pricing_s": round(tariff_s, 3)}


async def _seed(url: str, meters: int, days: int) -> None:
    from sqlalchemy import insert
    from sqlalchemy.ext.asyncio import create_async_engine

    from gridshare.store import ami_readings, metadata

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        for m in range(meters):
            rows = [{"meter_id": f"m-{m:04d}", "ts": datetime.fromtimestamp(r.ts_us / US, UTC),
                     "received_at": datetime.fromtimestamp(r.ts_us / US, UTC),
                     "power_w": 0.0, "energy_wh": (r.energy_mwh or 0) / 1000}
                    for r in meter_readings(m, days)]
            await conn.execute(insert(ami_readings), rows)
    await engine.dispose()


def end_to_end(meters: int, days: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "gridshare.db"
        asyncio.run(_seed(f"sqlite+aiosqlite:///{db}", meters, days))
        site = Path(tmp) / "site.yaml"
        site.write_text("site: b\ngroups: [{id: g, max_current: 40}]\nbilling:\n"
                        "  timezone: Europe/Berlin\n  tariff:\n"
                        "    - {from: \"00:00\", price: 0.2}\n    - {from: \"07:00\", "
                        "price: 0.4}\n")
        end = START + timedelta(days=days)
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "gridshare", "bill", str(site), "--from", START.isoformat(),
             "--to", end.isoformat(), "--db", f"sqlite:///{db}", "--format", "json"],
            capture_output=True, text=True, check=True)
        elapsed = time.perf_counter() - t
        data = json.loads(done.stdout)
    n = len(data["intervals"])
    return {"meters": meters, "days": days, "intervals": n, "seconds": round(elapsed, 3),
            "intervals_per_s": round(n / elapsed),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                 / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--e2e-meters", type=int, default=100,
                        help="meters for the end-to-end run (0: skip it)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, object] = {"python": platform.python_version(),
                                 "core": core(args.meters, args.days)}
    result["core_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                       / 1024, 1)
    if args.e2e_meters:
        result["end_to_end"] = end_to_end(args.e2e_meters, args.days)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    c = result["core"]
    assert isinstance(c, dict)
    print(f"core: {c['meters']} meters x {c['days']} days = {c['intervals']:,} intervals in "
          f"{c['seconds']} s: {c['intervals_per_s']:,} intervals/s "
          f"({c['readings_per_s']:,} readings/s); per meter p50 {c['meter_p50_ms']} ms, "
          f"p99 {c['meter_p99_ms']} ms; tariff priced once in {c['tariff_pricing_s']} s; "
          f"peak RSS {result['core_peak_rss_mb']} MB")
    e = result.get("end_to_end")
    if isinstance(e, dict):
        print(f"end to end (gridshare bill, SQLite): {e['meters']} meters x {e['days']} "
              f"days = {e['intervals']:,} intervals in {e['seconds']} s: "
              f"{e['intervals_per_s']:,} intervals/s (read, compute, store, print); "
              f"peak RSS of the command {e['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
