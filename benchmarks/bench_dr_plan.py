"""Time ``gridshare dr-plan``'s solver on a building of 1,000 resources (issue 10: ≤ 200 ms).

Each run draws a new mix (40 % on/off, 30 % variable, 10 % fixed, 20 % V2G cars and
batteries, some charging, priorities 1-20) and a request between 10 % and 90 % of what
can be cut, plus a tenth of the runs asking for more than can be had (the shortfall
path). One command prints p50/p99/max of :func:`gridshare.core.dr.plan.plan`:

    python benchmarks/bench_dr_plan.py [--resources 1000] [--repeat 50] [--json]

``--run N`` plans only the N-th building of the seed's sequence (counted from 0, drawn as
in the full run), ``--repeat`` times, and ``--profile`` prints where its time goes
(cProfile, by cumulative time): seed 4, run 31 was the slowest of the five seeds.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import random
import time

from gridshare.core.dr.plan import Kind, Resource, plan, storage_range


def draw(n: int, rng: random.Random) -> list[Resource]:
    out: list[Resource] = []
    for i in range(n):
        u = rng.random()
        prio = rng.randint(1, 20)
        if u < 0.4:
            out.append(Resource(f"L{i}", Kind.ON_OFF, rng.choice([60, 300, 800, 1500, 2000]),
                                prio))
        elif u < 0.7:
            power = rng.uniform(200, 5000)
            out.append(Resource(f"V{i}", Kind.VARIABLE, power, prio,
                                min_power=power * rng.choice([0, 0.2, 0.5])))
        elif u < 0.8:
            out.append(Resource(f"F{i}", Kind.FIXED, rng.uniform(50, 3000)))
        else:
            cap = rng.choice([10_000.0, 40_000.0, 60_000.0, 100_000.0])
            max_w = rng.choice([3700.0, 7400.0, 11_000.0])
            out.append(Resource(
                f"S{i}", rng.choice([Kind.V2G, Kind.STORAGE]),
                rng.choice([0.0, max_w, max_w / 2]), energy=cap * rng.uniform(0.2, 0.9),
                capacity=cap, min_energy=cap * 0.1, max_charge=max_w, max_discharge=max_w,
                charge_priority=rng.randint(1, 20), discharge_priority=rng.randint(1, 20)))
    return out


def most(resources: list[Resource], hours: float) -> float:
    """W the resources can give at most (storage at its lowest setpoint)."""
    total = 0.0
    for r in resources:
        if r.kind is Kind.ON_OFF:
            total += r.power
        elif r.kind is Kind.VARIABLE:
            total += r.power - r.min_power
        elif r.is_storage:
            total += r.power - storage_range(r, hours)[0]
    return total


def building(run: int, n: int, rng: random.Random
             ) -> tuple[list[Resource], float, float]:
    """The ``run``-th building of a sequence: resources, W requested, hours."""
    resources = draw(n, rng)
    hours = rng.choice([0.25, 1.0, 2.0])
    top = most(resources, hours)
    requested = top * (1.2 if run % 10 == 9 else rng.uniform(0.1, 0.9))
    return resources, requested, hours


def percentile(sorted_ms: list[float], q: int) -> float:
    return sorted_ms[max(0, -(-len(sorted_ms) * q // 100) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resources", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    parser.add_argument("--run", type=int, default=None,
                        help="plan only this building of the sequence (from 0), --repeat times")
    parser.add_argument("--profile", action="store_true",
                        help="with --run: print a cProfile of one more plan of it")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    times: list[float] = []
    short = 0
    plan(draw(10, rng), 100.0, 1.0)  # load highspy before timing
    buildings = (building(run, args.resources, rng)
                 for run in range(args.repeat if args.run is None else args.run + 1))
    if args.run is not None:
        *_, only = buildings
        buildings = (only for _ in range(args.repeat))
    for resources, requested, hours in buildings:
        started = time.perf_counter()
        result = plan(resources, requested, hours)
        times.append(1000 * (time.perf_counter() - started))
        short += result.shortfall > 0
    if args.run is not None and args.profile:
        profile = cProfile.Profile()
        profile.runcall(plan, resources, requested, hours)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(20)
    times.sort()
    figures = {"resources": args.resources, "runs": args.repeat, "short_runs": short,
               "p50_ms": round(percentile(times, 50), 1),
               "p99_ms": round(percentile(times, 99), 1), "max_ms": round(times[-1], 1),
               "goal_ms": 200, "python": platform.python_version(),
               "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"dr-plan, {args.resources} resources, {args.repeat} runs "
              f"({short} short of the request): p50 {figures['p50_ms']} ms, "
              f"p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms (goal ≤ 200 ms)")


if __name__ == "__main__":
    main()
