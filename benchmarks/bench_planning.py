"""Charge planning at scale: 500 cars x 96 periods of 15 minutes under a 3-level tree.

site -> 4 feeders -> 5 circuits each -> 25 chargers per circuit (a third of them 1-phase),
one car per charger arriving over the first 15 hours, staying 2-20 h and needing 5-60 kWh,
under a time-of-use tariff (night cheap, evening peak) with limits that bind. Each run is
``plan_charging`` from the topology and the cars to the plan (LP built and solved with
HiGHS). Prints wall time p50/max (goal: p50 <= 5 s), the LP's size, the shortfall, and
memory: the Python heap's peak (tracemalloc) and the process's peak RSS, which also holds
HiGHS's own C++ allocations.

    python benchmarks/bench_planning.py [--cars 500] [--periods 96] [--repeat 5] [--seed 1] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import sys
import time
import tracemalloc

from gridshare.cli.plan_charge_cmds import solver_banner_hidden
from gridshare.core.planning import CarNeed, ChargePlan, plan_charging
from gridshare.core.topology import Charger, Connector, Group, Phase, Policy, Topology

GOAL_P50_S = 5.0
VOLTAGE = 230.0
FEEDERS = 4
CIRCUITS = 5


def build_site(cars: int, rng: random.Random) -> Topology:
    """site -> feeders -> circuits -> chargers, one connector each; limits at 60-70 %
    of what the chargers below could draw, so they bind in the evening."""
    circuits = [f"c{f}.{c}" for f in range(FEEDERS) for c in range(CIRCUITS)]
    members: dict[str, list[str]] = {c: [] for c in circuits}
    chargers: dict[str, Charger] = {}
    for i in range(cars):
        circuit = circuits[i % len(circuits)]
        cid = f"cp{i}"
        three = rng.random() < 2 / 3
        top = float(rng.choice((16, 32)))
        chargers[cid] = Charger(
            id=cid, phases=3 if three else 1, phase=None if three else Phase(i % 3),
            max_current=top, min_current=6.0, failsafe_current=0.0, priority=0,
            connectors=(Connector(cid, 1, top, 6.0),), group=circuit)
        members[circuit].append(cid)
    groups: dict[str, Group] = {}
    feeder_limits: list[float] = []
    for f in range(FEEDERS):
        kids = []
        total = 0.0
        for c in range(CIRCUITS):
            gid = f"c{f}.{c}"
            per_phase = sum(chargers[x].max_current for x in members[gid]) / 2
            limit = max(32.0, round(0.7 * per_phase))
            groups[gid] = Group(gid, limit, None, 3, Policy.EQUAL, f"f{f}",
                                chargers=tuple(members[gid]))
            kids.append(gid)
            total += limit
        limit = round(0.7 * total)
        kw = round(0.9 * 3 * VOLTAGE * limit / 1000, 1) if f % 2 == 0 else None
        groups[f"f{f}"] = Group(f"f{f}", limit, kw, 3, Policy.EQUAL, "site",
                                groups=tuple(kids))
        feeder_limits.append(limit)
    groups["site"] = Group("site", round(0.7 * sum(feeder_limits)), None, 3, Policy.EQUAL,
                           None, groups=tuple(f"f{f}" for f in range(FEEDERS)))
    return Topology(site="bench", voltage=VOLTAGE, policy=Policy.EQUAL, groups=groups,
                    chargers=chargers, roots=("site",))


def draw_cars(topology: Topology, periods: int, rng: random.Random) -> list[CarNeed]:
    out = []
    for cid in topology.chargers:
        arrival = rng.randrange(0, max(1, periods * 15 // 24))
        departure = min(periods + 8, arrival + rng.randint(8, 80))
        out.append(CarNeed((cid, 1), arrival, departure, round(rng.uniform(5, 60), 1)))
    return out


def tariff(periods: int) -> list[float]:
    """Per kWh by hour of day from 18:00: peak 18-21, day 0.25, night 0.10 from 23-06."""
    out = []
    for t in range(periods):
        hour = (18 + t * 24 / periods) % 24
        out.append(0.40 if 18 <= hour < 21 else 0.10 if hour >= 23 or hour < 6 else 0.25)
    return out


def one_run(topology: Topology, cars: list[CarNeed], periods: int,
            prices: list[float]) -> tuple[float, ChargePlan]:
    gc.collect()
    start = time.perf_counter()
    with solver_banner_hidden():  # HiGHS's banner on fd 1 would break --json
        plan = plan_charging(topology, cars, periods=periods, period_h=24 / periods,
                             prices=prices)
    return time.perf_counter() - start, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cars", type=int, default=500)
    parser.add_argument("--periods", type=int, default=96)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="One JSON object on stdout.")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    topology = build_site(args.cars, rng)
    prices = tariff(args.periods)
    runs = [draw_cars(topology, args.periods, rng) for _ in range(args.repeat)]
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times: list[float] = []
    plans: list[ChargePlan] = []
    for cars in runs:
        took, plan = one_run(topology, cars, args.periods, prices)
        times.append(took)
        plans.append(plan)
    rss_peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    one_run(topology, runs[0], args.periods, prices)
    _, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    p50 = statistics.median(times)
    present = sum(min(c.departure, args.periods) - c.arrival for c in runs[0])
    result = {
        "cars": args.cars, "periods": args.periods, "groups": len(topology.groups),
        "repeat": args.repeat, "lp_current_columns": present,
        "p50_s": round(p50, 3), "max_s": round(max(times), 3), "goal_p50_s": GOAL_P50_S,
        "python_heap_peak_mib": round(heap_peak / 2**20, 1),
        "process_peak_rss_mib": round(rss_peak_mib, 1),
        "rss_before_mib": round(rss0 / 1024, 1),
        "cars_short": [sum(not c.met for c in p.cars) for p in plans],
        "shortfall_kwh": [round(p.shortfall_kwh, 1) for p in plans],
        "met_goal": p50 <= GOAL_P50_S,
    }
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    sys.stdout.write(
        f"charge plan: {args.cars} cars x {args.periods} periods, {len(topology.groups)} "
        f"groups in 3 levels, {present} current columns\n"
        f"  wall time p50 {p50:.3f} s, max {max(times):.3f} s over {args.repeat} runs "
        f"(goal p50 <= {GOAL_P50_S:g} s: {'met' if p50 <= GOAL_P50_S else 'MISSED'})\n"
        f"  memory: Python heap peak {heap_peak / 2**20:.1f} MiB, process peak RSS "
        f"{rss_peak_mib:.1f} MiB (before planning {rss0 / 1024:.1f} MiB)\n"
        f"  cars short: {result['cars_short']}, shortfall kWh: {result['shortfall_kwh']}\n")


if __name__ == "__main__":
    main()
