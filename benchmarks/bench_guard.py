"""Time the independent safety guard on the 4-level site of bench_allocation.py.

The guard runs once per control cycle (``review``/``enforce``) and once per send step
(``check_plan``), in plain Python loops over the topology, so its cost is part of every
cycle. One command prints p50/p99/max per operation:

    python benchmarks/bench_guard.py [--connectors 10000] [--repeat 200] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_allocation import build_site, draw_snapshot

from gridshare.core import guard
from gridshare.core.allocation import allocate
from gridshare.core.decision import Allocation
from gridshare.core.snapshot import Snapshot


def percentile(sorted_ms: list[float], q: float) -> float:
    return sorted_ms[max(0, -(-len(sorted_ms) * int(q) // 100) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    args = parser.parse_args()

    rng = random.Random(args.seed)
    topo = build_site(args.connectors, rng)
    snaps = [draw_snapshot(topo, rng, r) for r in range(5)]
    allocs = [allocate(topo, s) for s in snaps]
    started = time.perf_counter()
    guard.check(topo, snaps[0], allocs[0].setpoints)
    cold_ms = 1000 * (time.perf_counter() - started)
    violations = [len(guard.check(topo, s, a.setpoints)) for s, a in zip(snaps, allocs,
                                                                         strict=True)]
    # Every charging connector one step over: the substitute path.
    bad = [Allocation({k: (v + 1.0 if v > 0 else v) for k, v in a.setpoints.items()},
                      a.offline, a.groups, a.rotation) for a in allocs]
    counted = dict(allocs[0].setpoints)
    target = allocs[1].setpoints
    after_decreases = {k: min(counted[k], target[k]) for k in counted}
    decreases = {k: v for k, v in target.items() if v < counted[k]}
    increases = {k: v for k, v in target.items() if v > after_decreases[k]}
    plan_snap: Snapshot = snaps[1]

    cases: dict[str, Callable[[int], object]] = {
        "check (correct allocation)": lambda i: guard.check(topo, snaps[i], allocs[i].setpoints),
        "review (passes)": lambda i: guard.review(topo, snaps[i], allocs[i]),
        "review (rejected: substitute)": lambda i: guard.review(topo, snaps[i], bad[i]),
        "check_plan (decreases)": lambda i: guard.check_plan(topo, plan_snap, counted,
                                                             decreases),
        "check_plan (increases that fit)": lambda i: guard.check_plan(
            topo, plan_snap, after_decreases, increases),
        "check_plan (increases refused)": lambda i: guard.check_plan(topo, plan_snap, counted,
                                                                     increases),
    }
    results = []
    for label, fn in cases.items():
        gc.collect()
        times = []
        for i in range(args.repeat):
            t = time.perf_counter()
            fn(i % len(snaps))
            times.append(1000 * (time.perf_counter() - t))
        times.sort()
        results.append({"case": label, "p50_ms": round(percentile(times, 50), 2),
                        "p99_ms": round(percentile(times, 99), 2),
                        "max_ms": round(times[-1], 2)})
    meta = {"connectors": sum(1 for _ in topo.connectors()), "groups": len(topo.groups),
            "repeat": args.repeat, "cold_ms": round(cold_ms, 1),
            "violations_on_allocate": violations, "decreases": len(decreases),
            "increases": len(increases),
            "machine": f"python {platform.python_version()} on {platform.machine()} "
                       f"{platform.system()}"}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return
    print(f"guard: {meta['connectors']:,} connectors, {meta['groups']:,} groups, "
          f"{args.repeat} runs; cold (builds the guard's own view) {cold_ms:.1f} ms; "
          f"violations on allocate(): {violations}; plan: {len(decreases)} decreases, "
          f"{len(increases)} increases; {meta['machine']}")
    for r in results:
        print(f"  {r['case']:<34} p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  "
              f"max {r['max_ms']:6.1f} ms")


if __name__ == "__main__":
    main()
