"""Time ``allocate`` on a large four-level site, per policy.

    python benchmarks/bench_allocation.py [--connectors 10000] [--repeat 50] [--seed 1] [--json]

The site: one root → 10 feeders → 10 panels each → 10 circuits each → chargers (70 %
1-phase spread over L1/L2/L3, 30 % 3-phase, about one in seven with two connectors), with
limits tighter at every level than the sum below them, some panels also limited in kW,
some with uncontrolled load. Every run draws a new demand snapshot (about 70 % of the
connectors active, some with EV limits, priorities, deadlines, 2 % of chargers offline)
in which demand exceeds supply; every policy is timed on the same snapshots. The same
seed gives the same site and the same snapshots.

Reported per policy: p50, p99 and max wall time of one ``allocate`` call over the runs
(nearest-rank percentiles), the cold first call (which builds the topology's array form),
and the peak memory one call allocates (tracemalloc, measured on a separate call so that
tracing does not slow the timed ones).

Then the controller's usual cycle: on a site already allocated, one car arrives or one
leaves (alternately), five seconds later, and ``allocate`` runs again with the rotation
state it returned. The next snapshot keeps every other connector's demand object, as a
controller that rebuilds only what changed does. Reported the same way, per policy, with
how many setpoints each such cycle changes (what an incremental re-solve would have to
touch).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import sys
import time
import tracemalloc
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from gridshare.core.allocation import allocate
from gridshare.core.decision import Allocation
from gridshare.core.snapshot import (
    ConnectorDemand,
    GroupConditions,
    GroupLimit,
    LimitSource,
    Snapshot,
)
from gridshare.core.topology import (
    Charger,
    Connector,
    ConnectorKey,
    Group,
    Phase,
    Policy,
    Topology,
)

POLICIES = (Policy.EQUAL, Policy.PRIORITY, Policy.PROPORTIONAL, Policy.DEADLINE)
FANOUT = 10
VOLTAGE = 230.0
NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


# -- the site --------------------------------------------------------------------------------


def build_site(connectors: int, rng: random.Random) -> Topology:
    """site → 10 feeders → 10 panels → 10 circuits → chargers, ``connectors`` in all."""
    circuits = [f"c{f}.{p}.{c}" for f in range(FANOUT) for p in range(FANOUT)
                for c in range(FANOUT)]
    members: dict[str, list[str]] = {c: [] for c in circuits}
    chargers: dict[str, Charger] = {}
    made = 0
    i = 0
    while made < connectors:
        circuit = circuits[i % len(circuits)]
        cid = f"cp{i}"
        n_conn = 2 if rng.random() < 0.15 and connectors - made >= 2 else 1
        three = rng.random() < 0.3
        top = float(rng.choice((16, 32, 32)))
        chargers[cid] = Charger(
            id=cid, phases=3 if three else 1,
            phase=None if three else Phase(i % 3), max_current=top, min_current=6.0,
            failsafe_current=rng.choice((0.0, 0.0, 6.0)) if n_conn == 1 else 0.0,
            priority=rng.randint(0, 3),
            connectors=tuple(Connector(cid, n, top, 6.0) for n in range(1, n_conn + 1)),
            group=circuit)
        members[circuit].append(cid)
        made += n_conn
        i += 1

    groups: dict[str, Group] = {}
    policy = Policy.EQUAL

    def phase_sum(ids: list[str]) -> float:
        """The most any phase could carry if every charger ran flat out."""
        per = [0.0, 0.0, 0.0]
        for cid in ids:
            ch = chargers[cid]
            for p in range(3):
                if ch.phase_vector[p]:
                    per[p] += ch.max_current
        return max(per)

    panel_limits: dict[str, float] = {}
    for f in range(FANOUT):
        feeder = f"f{f}"
        feeder_sum = 0.0
        for p in range(FANOUT):
            panel = f"p{f}.{p}"
            panel_sum = 0.0
            kids = []
            for c in range(FANOUT):
                cid = f"c{f}.{p}.{c}"
                limit = max(16.0, round(0.6 * phase_sum(members[cid])))
                groups[cid] = Group(cid, limit, None, 3, policy, panel,
                                    chargers=tuple(members[cid]))
                panel_sum += limit
                kids.append(cid)
            panel_limit = round(0.7 * panel_sum)
            kw = round(0.8 * 3 * VOLTAGE * panel_limit / 1000, 1) if p % 3 == 0 else None
            groups[panel] = Group(panel, panel_limit, kw, 3, policy, feeder,
                                  groups=tuple(kids))
            panel_limits[panel] = panel_limit
            feeder_sum += panel_limit
        groups[feeder] = Group(feeder, round(0.7 * feeder_sum), None, 3, policy, "site",
                               groups=tuple(f"p{f}.{p}" for p in range(FANOUT)))
    site_limit = round(0.7 * sum(groups[f"f{f}"].max_current or 0 for f in range(FANOUT)))
    groups["site"] = Group("site", site_limit, None, 3, policy, None,
                           groups=tuple(f"f{f}" for f in range(FANOUT)))
    return Topology(site="bench", voltage=VOLTAGE, policy=policy, groups=groups,
                    chargers=chargers, roots=("site",), rotation_interval_s=900.0,
                    resolution_a=0.1)


def draw_snapshot(topology: Topology, rng: random.Random, run: int) -> Snapshot:
    """About 70 % of connectors active; 2 % of chargers offline; some EV limits,
    priorities, deadlines; uncontrolled load and a demand-response cut on a few groups."""
    now = NOW + timedelta(minutes=run)
    demands: dict[ConnectorKey, ConnectorDemand] = {}
    for charger in topology.chargers.values():
        online = rng.random() >= 0.02
        for conn in charger.connectors:
            active = rng.random() < 0.7
            if not active and online:
                continue
            deadline = active and rng.random() < 0.4
            demands[conn.key] = ConnectorDemand(
                charger=charger.id, connector=conn.number, active=active,
                max_current=rng.choice((None, None, None, 10.0, 16.0)) if active else None,
                priority=rng.randint(0, 5) if active and rng.random() < 0.2 else None,
                arrival=now - timedelta(seconds=rng.randint(0, 8 * 3600)) if active else None,
                online=online,
                energy_needed_kwh=round(rng.uniform(5, 60), 1) if deadline else None,
                departure=now + timedelta(seconds=rng.randint(3600, 12 * 3600))
                if deadline else None,
            )
    conditions: dict[str, GroupConditions] = {}
    for gid, group in topology.groups.items():
        if gid.startswith("p") and rng.random() < 0.2:
            unc = tuple(round(rng.uniform(0, 0.2) * (group.max_current or 0), 1)
                        for _ in range(3))
            conditions[gid] = GroupConditions(uncontrolled=(unc[0], unc[1], unc[2]))
        elif gid.startswith("f") and rng.random() < 0.1:
            cut = round(0.8 * (group.max_current or 0))
            conditions[gid] = GroupConditions(
                limits=(GroupLimit(LimitSource.DEMAND_RESPONSE, max_current=cut),))
    return Snapshot(now=now, connectors=demands, groups=conditions)


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Figures:
    times_ms: list[float]
    cold_ms: float = math.nan
    peak_mib: float = math.nan
    charging: int = 0
    paused: int = 0
    guarded: int = 0
    changed: int = 0
    """Setpoints that differ from the previous allocation, summed over the runs (the
    one-car cycles only: how much of the site one arrival or departure moves)."""

    def percentile(self, q: float) -> float:
        """Nearest rank: the smallest sample with at least q % of samples at or below."""
        ordered = sorted(self.times_ms)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1]

    def summary(self) -> dict[str, float | int]:
        return {
            "runs": len(self.times_ms),
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
            "max_ms": round(max(self.times_ms), 3),
            "cold_ms": round(self.cold_ms, 3),
            "peak_mib": round(self.peak_mib, 2),
            "mean_charging": round(self.charging / len(self.times_ms)),
            "mean_paused": round(self.paused / len(self.times_ms)),
            "guarded_runs": self.guarded,
            "mean_changed": round(self.changed / len(self.times_ms)),
        }


def count(snapshot: Snapshot, alloc: Allocation) -> tuple[int, int]:
    """(connectors charging, active online connectors paused)."""
    on = sum(1 for v in alloc.setpoints.values() if v > 0)
    paused = sum(1 for k, d in snapshot.connectors.items()
                 if d.active and d.online and alloc.setpoints[k] == 0)
    return on, paused


def demand_over_supply(topology: Topology, snapshot: Snapshot) -> float:
    """Flat-out demand of the active online connectors on the site's busiest phase, over
    the site limit: above 1 means not every car can get its maximum."""
    per = [0.0, 0.0, 0.0]
    for key, d in snapshot.connectors.items():
        if d.active and d.online:
            charger = topology.chargers[key[0]]
            top = min(charger.max_current, topology.connector(key).max_current,
                      d.max_current if d.max_current is not None else math.inf)
            for p in range(3):
                per[p] += top * charger.phase_vector[p]
    root = topology.groups[topology.roots[0]]
    return max(per) / (root.max_current or math.inf)


def peak_memory_mib(topology: Topology, snapshot: Snapshot, policy: Policy) -> float:
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    allocate(topology, snapshot, policy=policy)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (peak - base) / 2**20


def next_snapshot(topology: Topology, snapshot: Snapshot, rng: random.Random,
                  step: int) -> Snapshot:
    """``snapshot`` five seconds later with one car arrived (even steps) or gone (odd)."""
    now = snapshot.now + timedelta(seconds=5)
    connectors = dict(snapshot.connectors)
    if step % 2 == 0:
        idle = [c.key for c in topology.connectors()
                if c.key not in connectors or not connectors[c.key].active]
        key = rng.choice(idle)
        old = connectors.get(key)
        if old is not None and not old.online:
            return Snapshot(now, connectors, snapshot.groups)
        connectors[key] = ConnectorDemand(key[0], key[1], active=True, arrival=now)
    else:
        active = [k for k, d in connectors.items() if d.active and d.online]
        key = rng.choice(active)
        del connectors[key]
    return Snapshot(now, connectors, snapshot.groups)


def run_cycles(topology: Topology, first: Snapshot, repeat: int, seed: int,
               progress: Progress) -> dict[Policy, Figures]:
    """One car arriving or leaving per call, on an allocated site, for every policy."""
    figures = {p: Figures([]) for p in POLICIES}
    task = progress.add_task("one car arrives or leaves", total=repeat * len(POLICIES))
    for policy in POLICIES:
        rng = random.Random(seed)
        # A copy without the array form cached on it: the first cycle then starts from it.
        snapshot = Snapshot(first.now, dict(first.connectors), first.groups)
        previous = allocate(topology, snapshot, policy=policy)
        rotation = previous.rotation
        for n in range(repeat):
            progress.update(task, description=f"one car, cycle {n + 1}/{repeat}: {policy.value}")
            snapshot = next_snapshot(topology, snapshot, rng, n)
            gc.collect()
            t0 = time.perf_counter()
            alloc = allocate(topology, snapshot, policy=policy, rotation=rotation)
            figures[policy].times_ms.append((time.perf_counter() - t0) * 1000)
            rotation = alloc.rotation
            on, paused = count(snapshot, alloc)
            figures[policy].charging += on
            figures[policy].paused += paused
            figures[policy].changed += sum(
                1 for k, v in alloc.setpoints.items() if previous.setpoints.get(k) != v)
            previous = alloc
            progress.advance(task)
    return figures


def run(connectors: int, repeat: int, seed: int, console: Console) -> dict[str, object]:
    rng = random.Random(seed)
    started = time.perf_counter()
    topology = build_site(connectors, rng)
    build_s = time.perf_counter() - started
    figures = {p: Figures([]) for p in POLICIES}
    first_snapshot: Snapshot | None = None
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task(f"allocate × {connectors:,} connectors",
                                 total=repeat * len(POLICIES))
        for n in range(repeat):
            snapshot = draw_snapshot(topology, random.Random(seed * 1_000_003 + n), n)
            if first_snapshot is None:
                first_snapshot = snapshot
            for policy in POLICIES:
                progress.update(task, description=f"run {n + 1}/{repeat}: {policy.value}")
                gc.collect()
                t0 = time.perf_counter()
                alloc = allocate(topology, snapshot, policy=policy)
                elapsed = (time.perf_counter() - t0) * 1000
                fig = figures[policy]
                if n == 0 and math.isnan(fig.cold_ms):
                    fig.cold_ms = elapsed  # first call builds and caches the array form
                    t0 = time.perf_counter()
                    alloc = allocate(topology, snapshot, policy=policy)
                    elapsed = (time.perf_counter() - t0) * 1000
                fig.times_ms.append(elapsed)
                on, paused = count(snapshot, alloc)
                fig.charging += on
                fig.paused += paused
                fig.guarded += int(alloc.guarded)
                progress.advance(task)
        assert first_snapshot is not None
        for policy in POLICIES:
            progress.update(task, description=f"peak memory: {policy.value}")
            figures[policy].peak_mib = peak_memory_mib(topology, first_snapshot, policy)
        cycles = run_cycles(topology, first_snapshot, repeat, seed, progress)
    n_conn = sum(len(c.connectors) for c in topology.chargers.values())
    return {
        "connectors": n_conn,
        "chargers": len(topology.chargers),
        "groups": len(topology.groups),
        "repeat": repeat,
        "seed": seed,
        "build_site_s": round(build_s, 3),
        "demand_over_supply": round(demand_over_supply(topology, first_snapshot), 2),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "policies": {p.value: figures[p].summary() for p in POLICIES},
        "one_car": {p.value: cycles[p].summary() for p in POLICIES},
    }


def render(result: dict[str, object], console: Console) -> None:
    table = Table(title=(f"allocate: {result['connectors']:,} connectors, "
                         f"{result['chargers']:,} chargers, {result['groups']:,} groups, "
                         f"{result['repeat']} runs, seed {result['seed']}"))
    for col in ("policy", "p50 ms", "p99 ms", "max ms", "cold ms", "peak MiB", "charging",
                "paused", "guarded"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    policies = result["policies"]
    assert isinstance(policies, dict)
    for name, s in policies.items():
        table.add_row(name, f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['max_ms']:.1f}",
                      f"{s['cold_ms']:.1f}", f"{s['peak_mib']:.1f}", f"{s['mean_charging']:,}",
                      f"{s['mean_paused']:,}", str(s["guarded_runs"]))
    console.print(table)
    cycles = Table(title="one car arrives or leaves on the allocated site (the controller's "
                         "usual cycle)")
    for col in ("policy", "p50 ms", "p99 ms", "max ms", "charging", "paused",
                "setpoints changed"):
        cycles.add_column(col, justify="left" if col == "policy" else "right")
    one_car = result["one_car"]
    assert isinstance(one_car, dict)
    for name, s in one_car.items():
        cycles.add_row(name, f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}", f"{s['max_ms']:.1f}",
                       f"{s['mean_charging']:,}", f"{s['mean_paused']:,}",
                       f"{s['mean_changed']:,}")
    console.print(cycles)
    console.print(f"python {result['python']} on {result['machine']}; site built in "
                  f"{result['build_site_s']} s; flat-out demand / site limit (busiest phase, "
                  f"first run) {result['demand_over_supply']}; charging/paused are means per "
                  f"run, setpoints changed the mean per cycle against the one before")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connectors", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    args = parser.parse_args(argv)
    if args.connectors < 1 or args.repeat < 1:
        parser.error("--connectors and --repeat must be at least 1")
    stream = sys.stderr if args.json else sys.stdout
    console = Console(stderr=args.json, width=None if stream.isatty() else 120)
    result = run(args.connectors, args.repeat, args.seed, console)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(result, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())
