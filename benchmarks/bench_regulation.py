"""Regulation and the grid model: the cost of one regulation step and of the simulator.

1. ``RegulationService.step`` (read the area load, PI step, share across the batteries,
   build each unit's setpoint JSON; MQTT publishing excluded: an in-memory sink) for
   ``--units`` batteries, ``--steps`` times: p50/p99/max, against the 5 s deadline;
2. ``GridModel.step`` (one 10 ms swing-equation step): steps per second of CPU, i.e. how
   many times faster than real time the model runs.

    python benchmarks/bench_regulation.py [--units 50] [--steps 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import tracemalloc
from datetime import UTC, datetime

from gridshare.clock import FakeClock
from gridshare.config import RegulationSpec
from gridshare.controller.regulation import Battery, MqttAreaLoad, RegulationService
from gridshare.sim.grid import GridModel, GridParams


def bench_steps(units: int, steps: int) -> dict[str, float]:
    clock = FakeClock(datetime(2026, 11, 30, tzinfo=UTC))
    load = MqttAreaLoad({"A1": ["feeder"]}, clock)
    batteries = [Battery(f"b{i}", f"site/b{i}/setpoint", f"site/b{i}/soc", 50, 50, 10)
                 for i in range(units)]
    spec = RegulationSpec.model_validate({"area": "A1", "scheduled_kw": 1000,
                                          "bias_kw_per_hz": -100, "step_s": 1})
    sent = [0]

    def sink(topic: str, body: str) -> None:
        sent[0] += 1

    svc = RegulationService(spec, batteries, load, clock, site="bench", publish=sink,
                            run_worker=False)
    for b in batteries:
        svc.on_soc(b.id, b"50")
    times = []
    tracemalloc.start()
    for i in range(steps):
        clock.advance(1.0)
        load.on_message("feeder", b'{"kw": %d}' % (1000 + (i % 200) - 100))
        svc.on_frequency(b'{"hz": 49.98}')
        t0 = time.perf_counter()
        out = svc.step()
        times.append(time.perf_counter() - t0)
        assert not out.hold
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    times.sort()
    return {"units": units, "steps": steps, "p50_ms": statistics.median(times) * 1e3,
            "p99_ms": times[int(0.99 * len(times))] * 1e3, "max_ms": times[-1] * 1e3,
            "published": sent[0], "peak_heap_kb": peak / 1024}


def bench_grid(seconds: float) -> dict[str, float]:
    model = GridModel(GridParams(noise_kw=1.0), scheduled_kw=500, loads={"f": 500.0})
    model.load_step(1.0, 20.0)
    t0 = time.perf_counter()
    model.advance(seconds)
    took = time.perf_counter() - t0
    n = round(seconds / model.params.step_s)
    return {"model_s": seconds, "steps": n, "steps_per_s": n / took,
            "faster_than_real_time": seconds / took}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=50)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = {"regulation_step": bench_steps(args.units, args.steps),
           "grid_model": bench_grid(600.0)}
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return
    r, g = out["regulation_step"], out["grid_model"]
    print(f"regulation step, {r['units']} batteries, {r['steps']} steps: p50 "
          f"{r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, max {r['max_ms']:.3f} ms "
          f"(deadline 5000 ms); peak heap {r['peak_heap_kb']:.0f} KiB")
    print(f"grid model: {g['steps_per_s']:,.0f} steps/s of 10 ms = "
          f"{g['faster_than_real_time']:,.0f}x real time")


if __name__ == "__main__":
    main()
