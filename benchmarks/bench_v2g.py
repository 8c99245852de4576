"""Time V2X over OCPP 2.1: building a V2X profile, guarding a fleet's discharges, and a
CentralSetpoint step to many simulated V2G chargers at once, end to end.

1. ``build``: one CentralSetpoint SetChargingProfile built and serialised (µs).
2. ``guard``: :func:`gridshare.core.guard.check_v2x` on ``--units`` discharging connectors
   under a three-level tree (ms).
3. ``book``: the shared :class:`~gridshare.core.v2x_book.V2xBook` with an accepted
   discharge in force on each of the ``--units`` connectors: its full ``check`` (four
   ``check_v2x`` passes: what the frequency service reads the alarms from) and ``passes``
   (the same verdict in one pass: what it bisects a refused set with), ms.
4. ``wire``: the real central system (ocpp2.1) and ``--chargers`` simulated V2G chargers
   (each with a car) over WebSockets on this machine; every charger is sent a −5 kW
   CentralSetpoint at once: send → accepted per charger, to the last accepted, and send →
   the simulated power stage at 90 % of the request (1 s ramp, physics every 50 ms).
   A cold round first (both sides compile the 2.1 schemas on first use: its last accept is
   reported apart), then back to 0 W, then the timed step.

    python benchmarks/bench_v2g.py [--units 500] [--chargers 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import statistics
import time
from datetime import UTC, datetime

from gridshare.adapters.ocpp import CentralSystem, CsmsConfig
from gridshare.adapters.ocpp.frames import payload_json
from gridshare.adapters.ocpp.v2x import central_setpoint, v2x_request
from gridshare.core import guard
from gridshare.core.snapshot import Snapshot
from gridshare.core.topology import Charger, Connector, Group, Policy, Topology
from gridshare.core.v2x_book import V2xBook
from gridshare.drivers import CommandOutcome, CommandResult
from gridshare.sim import EV, SimCharger


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def bench_build(n: int = 20_000) -> dict[str, float]:
    now = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        payload_json(v2x_request(connector=1, transaction_id=f"tx-{i}",
                                 period=central_setpoint(-5000.0 - i % 100), valid_s=60,
                                 now=now))
        times.append((time.perf_counter() - t0) * 1e6)
    return {"build_p50_us": round(statistics.median(times), 1),
            "build_p99_us": round(_pct(times, 0.99), 1)}


def tree(units: int) -> Topology:
    """site → 10 feeders → 5 boards each → the V2G chargers, round robin."""
    groups: dict[str, Group] = {"site": Group("site", 2000.0, None, 3, Policy.EQUAL, None,
                                              groups=tuple(f"f{f}" for f in range(10)))}
    members: dict[str, list[str]] = {f"b{f}-{b}": [] for f in range(10) for b in range(5)}
    chargers: dict[str, Charger] = {}
    for i in range(units):
        cid, board = f"v{i}", f"b{i % 10}-{i // 10 % 5}"
        members[board].append(cid)
        chargers[cid] = Charger(id=cid, phases=3, phase=None, max_current=16.0,
                                min_current=6.0, failsafe_current=0.0, priority=0,
                                connectors=(Connector(cid, 1, 16.0, 6.0),), group=board,
                                v2x=True)
    for f in range(10):
        groups[f"f{f}"] = Group(f"f{f}", 400.0, None, 3, Policy.EQUAL, "site",
                                groups=tuple(f"b{f}-{b}" for b in range(5)))
        for b in range(5):
            gid = f"b{f}-{b}"
            groups[gid] = Group(gid, 100.0, None, 3, Policy.EQUAL, f"f{f}",
                                chargers=tuple(members[gid]))
    return Topology(site="bench", voltage=230.0, policy=Policy.EQUAL, groups=groups,
                    chargers=chargers, roots=("site",))


def bench_guard(units: int, runs: int = 300) -> dict[str, float]:
    topology = tree(units)
    snapshot = Snapshot(now=datetime.now(UTC), connectors={}, groups={})
    guard.check_v2x(topology, snapshot, {}, {("v0", 1): -1.0})  # builds the guard's site view
    times = []
    for k in range(runs):
        watts = {(f"v{i}", 1): -1000.0 * (1 + (i + k) % 11) for i in range(units)}
        t0 = time.perf_counter()
        guard.check_v2x(topology, snapshot, {}, watts)
        times.append((time.perf_counter() - t0) * 1000)
    return {"guard_units": units, "guard_p50_ms": round(statistics.median(times), 3),
            "guard_p99_ms": round(_pct(times, 0.99), 3)}


def bench_book(units: int, runs: int = 300) -> dict[str, float]:
    topology = tree(units)
    now = datetime.now(UTC)
    snapshot = Snapshot(now=now, connectors={}, groups={})
    book = V2xBook()
    for i in range(units):
        key = (f"v{i}", 1)
        book.outcome(key, book.sent(key, -2000.0, now, 60.0),
                     CommandOutcome(CommandResult.ACCEPTED))
    counted = {(f"v{i}", 1): 8.0 for i in range(units)}
    full, fast = [], []
    for k in range(runs):
        watts = {(f"v{i}", 1): -1000.0 * (1 + (i + k) % 11) for i in range(units)}
        t0 = time.perf_counter()
        refused = book.check(topology, snapshot, counted, watts)
        t1 = time.perf_counter()
        passed = book.passes(topology, snapshot, lambda: counted, watts)
        t2 = time.perf_counter()
        assert passed is (not refused)
        full.append((t1 - t0) * 1000)
        fast.append((t2 - t1) * 1000)
    return {"book_check_p50_ms": round(statistics.median(full), 3),
            "book_check_p99_ms": round(_pct(full, 0.99), 3),
            "book_passes_p50_ms": round(statistics.median(fast), 3),
            "book_passes_p99_ms": round(_pct(fast, 0.99), 3)}


async def _round(csms: CentralSystem, chargers: list[SimCharger],
                 setpoint_w: float) -> dict[str, float]:
    """Every charger sent ``setpoint_w`` at once; per charger send → accepted, and send →
    its power stage within 10 % of the step (the step is from where it stands)."""
    t0 = time.perf_counter()
    accepted_at: list[float] = []
    reached_at: dict[str, float] = {}
    starts = {c.id: c.v2g.power_w(1) if c.v2g is not None else 0.0 for c in chargers}

    async def one(charger: SimCharger) -> None:
        outcome = await csms.send_v2x_setpoint(charger.id, 1, setpoint_w, valid_s=60)
        assert outcome.result is CommandResult.ACCEPTED, outcome
        accepted_at.append(time.perf_counter() - t0)

    async def watch() -> None:
        while len(reached_at) < len(chargers):
            now = time.perf_counter() - t0
            for charger in chargers:
                stage = charger.v2g
                step = setpoint_w - starts[charger.id]
                if (charger.id not in reached_at and stage is not None
                        and abs(setpoint_w - stage.power_w(1)) <= 0.1 * abs(step) + 1.0):
                    reached_at[charger.id] = now
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(one(c) for c in chargers))
    await asyncio.wait_for(watcher, 30)
    accepted_ms = [t * 1000 for t in accepted_at]
    reached_s = list(reached_at.values())
    return {"accepted_p50_ms": round(statistics.median(accepted_ms), 1),
            "accepted_p99_ms": round(_pct(accepted_ms, 0.99), 1),
            "last_accepted_ms": round(max(accepted_ms), 1),
            "to_90pct_p50_s": round(statistics.median(reached_s), 2),
            "to_90pct_p99_s": round(_pct(reached_s, 0.99), 2)}


async def bench_wire(count: int) -> dict[str, float]:
    ids = [f"V{i:04d}" for i in range(count)]
    csms = CentralSystem(CsmsConfig(allow_auto_register=True, v2x=frozenset(ids)),
                         lambda _event: None)
    await csms.start(port=0)
    url = f"ws://127.0.0.1:{csms.port}"
    chargers = [SimCharger(cid, url, protocol="ocpp2.1", v2x=True, max_current_a=16.0,
                           meter_interval_s=0, reconnect_min_s=0.2) for cid in ids]
    try:
        for charger in chargers:
            await charger.start(physics=True, tick_s=0.05)
        for charger in chargers:
            assert await charger.wait_connected(30), charger.id
            charger.plug_nowait(1, EV(capacity_kwh=60, soc=0.6, max_current_a=16.0))
        deadline = time.monotonic() + 30
        while any(csms.transaction_of(c, 1) is None for c in ids):
            assert time.monotonic() < deadline, "transactions not seen"
            await asyncio.sleep(0.02)
        cold = await _round(csms, chargers, -5000.0)  # first calls compile the 2.1 schemas
        await _round(csms, chargers, 0.0)  # back to 0 W before the timed step
        warm = await _round(csms, chargers, -5000.0)
        return {"chargers": count, "cold_last_accepted_ms": cold["last_accepted_ms"],
                **warm}
    finally:
        for charger in chargers:
            await charger.stop()
        await csms.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--chargers", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result: dict[str, object] = {"machine": platform.machine(),
                                 "python": platform.python_version()}
    result.update(bench_build())
    result.update(bench_guard(args.units))
    result.update(bench_book(args.units))
    result.update(asyncio.run(bench_wire(args.chargers)))
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        print(f"{key:>18}: {value}")


if __name__ == "__main__":
    main()
