"""Time frequency response: one grid-frequency sample → setpoints for every unit.

The pure core (`gridshare.core.frequency.FrequencyResponder.sample`) on a mixed fleet of
V2G chargers and batteries with every guard on, fed samples at 100 Hz that sweep both ways
through the dead band into saturation (issue 10's goal: ≤ 20 ms compute for 500 units).

    python benchmarks/bench_frequency.py [--units 500] [--samples 3000] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from gridshare.core.frequency import (
    FrequencyResponder,
    FrequencySettings,
    UnitKind,
    UnitSpec,
    UnitState,
)


def fleet(count: int) -> tuple[list[UnitSpec], dict[str, UnitState]]:
    """Every fifth unit a battery, the rest V2G chargers; sizes, floors and states vary so
    that some units are held back by a guard at every sample."""
    units = [UnitSpec(f"u{i}", UnitKind.CHARGER if i % 5 else UnitKind.BATTERY,
                      10 + i % 7, 11 + i % 5, 60, 20 + i % 30, 90, 2.0) for i in range(count)]
    states = {u.id: UnitState(u.id, base_kw=float(i % 11), soc_pct=30.0 + i % 60,
                              can_discharge=i % 9 != 0) for i, u in enumerate(units)}
    return units, states


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    units, states = fleet(args.units)
    responder = FrequencyResponder(FrequencySettings(60.0, 0.02, 0.2, 59.5, 60.5), units,
                                   at=0.0)
    times_ms = []
    at = 0.0
    for k in range(args.samples):
        at += 0.01  # 100 Hz
        hz = 60.0 + 0.25 * ((k % 200) - 100) / 100  # ±250 mHz: through the band, saturating
        t0 = time.perf_counter()
        responder.sample(at, hz, states)
        times_ms.append((time.perf_counter() - t0) * 1000)
    times_ms.sort()
    n = len(times_ms)
    result = {"units": args.units, "samples": n, "machine": platform.machine(),
              "python": platform.python_version(),
              "p50_ms": round(statistics.median(times_ms), 3),
              "p99_ms": round(times_ms[min(n - 1, int(n * 0.99))], 3),
              "max_ms": round(times_ms[-1], 3), "goal_p99_ms": 20.0}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.units} units, {n} samples: p50 {result['p50_ms']} ms, p99 "
              f"{result['p99_ms']} ms, max {result['max_ms']} ms (goal p99 ≤ 20 ms)")


if __name__ == "__main__":
    main()
