"""Live charge planning: from a car's arrival to the caps published, at scale.

The PlanService over ``bench_planning``'s 3-level site (site -> 4 feeders -> 5 circuits ->
chargers), ``--cars`` cars plugged in with needs and departures over the next 2-20 h, a
time-of-use tariff; each run is one re-plan as the worker does it (inputs gathered, the LP
in a worker thread, the current period's caps published on the bus). Prints p50/max of
``--repeat`` runs and the peak RSS.

    python benchmarks/bench_plan_live.py [--cars 500] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_planning import build_site

from gridshare.bus import MemoryBus
from gridshare.clock import FakeClock
from gridshare.config import ChargePlanningSpec
from gridshare.controller.planning import (
    PlanService,
    _hide_solver_banner,
    load_tariff_steps,
)
from gridshare.core.topology import ConnectorKey


@dataclass
class Info:
    arrival: datetime
    energy_wh: float = 0.0


class AllPlugged:
    """Every connector has a car (the SiteState view the service reads)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def active(self, key: ConnectorKey) -> bool:
        return True

    def session_info(self, key: ConnectorKey) -> Info:  # type: ignore[override]
        return Info(self.now)


async def run(cars: int, repeat: int) -> dict[str, float]:
    rng = random.Random(1)
    topology = build_site(cars, rng)
    now = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)
    clock = FakeClock(now)
    spec = ChargePlanningSpec.model_validate({
        "tariff": [{"from": "07:00", "price": 0.3}, {"from": "17:00", "price": 0.45},
                   {"from": "21:00", "price": 0.3}, {"from": "23:00", "price": 0.12}],
        "late_after_s": 120})
    bus = MemoryBus()
    sub = bus.subscribe("bench")
    svc = PlanService(topology, spec, bus, clock, state_view=AllPlugged(now),
                      tariff=load_tariff_steps(spec), run_worker=False)
    for cid in topology.chargers:
        svc.set_need((cid, 1), rng.uniform(5, 60), now + timedelta(hours=rng.uniform(2, 20)))
    times = []
    for i in range(repeat):
        clock.advance(0.001)
        t0 = time.perf_counter()
        planned = await svc.replan(f"bench {i}")
        times.append(time.perf_counter() - t0)
        assert planned is not None
    caps = svc.caps
    while sub.get_nowait() is not None:
        pass
    plan = svc.to_json()
    return {"cars": cars, "periods": spec.periods, "p50_s": statistics.median(times),
            "max_s": max(times), "capped": len(caps), "cars_short": plan["cars_short"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cars", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    logging.getLogger("gridshare").setLevel(logging.ERROR)  # one line per car short
    _hide_solver_banner()
    out = asyncio.run(run(args.cars, args.repeat))
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"live re-plan, {out['cars']} cars x {out['periods']} periods: p50 "
          f"{out['p50_s'] * 1000:.0f} ms, max {out['max_s'] * 1000:.0f} ms (arrival -> caps "
          f"on the bus); {out['capped']} caps, {out['cars_short']} cars short; peak RSS "
          f"{out['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
