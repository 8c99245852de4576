"""Demand response at scale: a utility's signal → profiles on the wire → meters confirming.

200 simulated 150 kW DC stations (OCPP 1.6J and 2.0.1 alternating, profiles in W), one
zone, a car charging on each: cars that follow a new limit after a lag of 1–5 s and then
ramp (down at 40–80 kW/s), metering every second. The simulator runs in a subprocess (its
own CPU, as real stations would be); the app is wired by the composition root exactly as
``gridshare serve`` does. Then 20 DR events one after another, each a CURTAIL of 10–30 %
of the zone's draw submitted to the app's DR service by the path REST signals take
(validated, stored, caps split by the site's policy), and each ended by a RESTORE once the
meters confirmed it and the cars were back at full power. Per event:

- *signal → last profile sent*: from the submit to the moment the last SetChargingProfile
  frame of the event has been written to its socket (goal: p99 ≤ 150 ms);
- *signal → measured compliance*: the DR service's record, ``met_at − received_ts``: the
  first meter values that show the zone's draw down by the target (goal: p99 ≤ 10 s when
  the cars react within 5 s).

    python benchmarks/bench_dr.py [--chargers 200] [--events 20] [--meter-interval 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bench_control import (  # a sibling script, not a package
    percentile,
    raise_fd_limit,
    start_sim_subprocess,
    stop_sim_subprocess,
    summary,
    summary_s,
    wait_for,
)

GOAL_PROFILES_P99_MS = 150.0
GOAL_COMPLIANCE_P99_S = 10.0
STATION_KW = 150.0
VOLTAGE = 230.0
LAG_S = (1.0, 5.0)
"""The cars react within 5 s: the lag before they follow a new limit."""
SCRIPT = os.path.abspath(__file__)


def station_ids(count: int) -> list[str]:
    width = max(3, len(str(count)))
    return [f"dc-{i + 1:0{width}d}" for i in range(count)]


def site_yaml(count: int) -> str:
    """``count`` 150 kW DC stations (CCS 150 kW + CHAdeMO 50 kW) in one zone and one
    group that never binds: only demand response limits them."""
    ids = station_ids(count)
    total = count * STATION_KW
    lines = ["site: bench-dr", "voltage: 230", "zones:", f"  - {{id: Z1, capacity_kw: {total:g}}}",
             "demand_response: {policy: proportional, confirm_within: 30, tolerance_kw: 0.5}",
             "groups:", "  - id: plaza", f"    max_power: {total:g}",
             f"    chargers: [{', '.join(ids)}]", "chargers:"]
    lines.extend(f"  - {{id: {cid}, max_power: {STATION_KW:g}, failsafe_current: 0, zone: Z1, "
                 f"max_station_kw: {STATION_KW:g}, connectors: [{{type: CCS, max_power: 150}}, "
                 f"{{type: CHAdeMO, max_power: 50}}]}}" for cid in ids)
    return "\n".join(lines) + "\n"


# --- the simulator side (subprocess) ----------------------------------------------------


async def sim_worker(url: str, count: int, meter_s: float, seed: int) -> None:
    """Connect ``count`` DC stations, plug a car charging at full power into each once the
    controller's profile lets it, report, idle until stdin closes."""
    from gridshare.sim.dc import DcEV, DcStation
    from gridshare.sim.profiles import Purpose
    from gridshare.sim.site import SimSite

    raise_fd_limit(count + 1024)
    rng = random.Random(seed)
    site = SimSite(tick_s=0.1, connect_concurrency=200)
    for i, cid in enumerate(station_ids(count)):
        site.add_charger(DcStation(cid, url, protocol=("ocpp1.6", "ocpp2.0.1")[i % 2],
                                   voltage_v=VOLTAGE, meter_interval_s=meter_s,
                                   default_heartbeat_s=300.0, response_timeout_s=60.0,
                                   events_maxlen=16, seed=seed))
    started = time.perf_counter()
    connected = await site.start(wait_connected_s=120.0)
    connect_s = time.perf_counter() - started
    stations = [ch for ch in site.chargers.values() if isinstance(ch, DcStation)]
    for ch in stations:
        up = rng.uniform(10.0, 20.0)
        ch.plug_nowait(1, DcEV(capacity_kwh=100.0, soc=rng.uniform(0.1, 0.2),
                               max_power_kw=STATION_KW, ramp_up_kw_s=up,
                               ramp_down_kw_s=4 * up, setpoint_lag_s=rng.uniform(*LAG_S)))

    def ready(ch: DcStation) -> bool:
        tx = ch.transaction(1)
        # the controller's setpoint is on the connector (a TxProfile, or a TxDefaultProfile
        # while a 1.6 transaction id is not known yet); connector 0 holds the failsafe
        return (tx is not None and tx.active and ch.offered_kw(1) > 0
                and any(p.connector == 1 and p.purpose in (Purpose.TX, Purpose.TX_DEFAULT)
                        for p in ch.profiles))

    waiting = set(stations)
    ready_s = float(os.environ.get("BENCH_DR_READY_S", "120"))
    deadline = time.monotonic() + ready_s
    while waiting and time.monotonic() < deadline:
        for ch in [c for c in waiting if ready(c)]:
            ch.settle(1)  # already charging: the benchmark starts at full power
            waiting.discard(ch)
        await asyncio.sleep(0.05)
    for ch in waiting:  # say why on stderr: the report counts them as not charging
        tx = ch.transaction(1)
        print(f"{ch.id}: not charging after {ready_s:g} s (transaction active "
              f"{tx is not None and tx.active}, offered {ch.offered_kw(1):.1f} kW, profiles "
              f"{[(p.purpose.value, p.connector) for p in ch.profiles]}, status "
              f"{ch.status(1).value}, events {list(ch.events)[-6:]})", file=sys.stderr)
    print(json.dumps({"connected": connected, "connect_s": connect_s,
                      "charging": len(stations) - len(waiting)}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await site.stop()


# --- the server side ---------------------------------------------------------------------


@dataclass
class FrameProbe:
    """When SetChargingProfile frames were written, and to which station."""

    armed: bool = False
    written: dict[str, float] = field(default_factory=dict)
    """Charger id -> perf_counter of its latest SetChargingProfile frame since armed."""

    def arm(self) -> None:
        self.written.clear()
        self.armed = True


def install_probe(probe: FrameProbe) -> None:
    from websockets.asyncio.server import ServerConnection

    original_send = ServerConnection.send

    async def send(self: ServerConnection, message: Any, *args: Any, **kwargs: Any) -> None:
        await original_send(self, message, *args, **kwargs)
        if probe.armed and isinstance(message, str) and '"SetChargingProfile"' in message:
            path = self.request.path if self.request is not None else ""
            probe.written[path.rsplit("/", 1)[-1]] = time.perf_counter()

    ServerConnection.send = send  # type: ignore[method-assign]


@dataclass
class EventResult:
    target_kw: float
    stations: int
    to_last_profile_ms: float | None
    to_compliance_s: float | None
    escalations: int
    verdict: str


async def run(count: int, events: int, meter_s: float, seed: int,
              progress: Any | None) -> dict[str, Any]:
    from gridshare.adapters.dr import submit_json
    from gridshare.adapters.ocpp.config import CsmsConfig
    from gridshare.app import ServeOptions, build_app
    from gridshare.config import parse_site_config
    from gridshare.controller.loop import ControllerSettings

    raise_fd_limit(2 * count + 1024)
    config = parse_site_config(site_yaml(count), "bench-dr")
    topology = config.topology
    settings = ControllerSettings(lease_s=3600.0, settle_s=1.0)
    app = build_app(topology, ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none", controller=settings,
        csms=CsmsConfig(rate_unit=dict.fromkeys(topology.chargers, "W")),
        demand_response=config.demand_response))
    await app.start()
    dr = app.dr
    assert dr is not None
    url = f"ws://127.0.0.1:{app.ocpp_port}"
    proc, info = await start_sim_subprocess(
        url, count, script=SCRIPT, extra=["--meter-interval", str(meter_s), "--seed", str(seed)])
    rng = random.Random(seed)
    results: list[EventResult] = []
    try:
        full_kw = count * STATION_KW
        # The meters must show every station at full power: that is the zone's baseline.
        if not await wait_for(lambda: dr.zone_load_kw("Z1") > 0.99 * full_kw, 60):
            raise RuntimeError(f"the zone draws {dr.zone_load_kw('Z1'):.0f} of {full_kw:.0f} "
                               f"kW by its meters after 60 s")
        probe = FrameProbe()
        install_probe(probe)
        task = progress.add_task("DR events", total=events) if progress is not None else None
        for n in range(1, events + 1):
            await wait_for(lambda: app.controller.idle, 30)
            await asyncio.sleep(0.2)
            load = dr.zone_load_kw("Z1")
            target = round(load * rng.uniform(0.1, 0.3))
            now = app.clock.now()
            body = {"signal_id": f"bench-{n}", "zone_id": "Z1", "signal_type": "CURTAIL",
                    "target_reduction_kw": target, "start_ts": now.isoformat(),
                    "end_ts": (now + timedelta(minutes=10)).isoformat(), "priority": 2,
                    "received_ts": now.isoformat()}
            probe.arm()
            signalled = time.perf_counter()
            submit_json(dr, body, now=now, source="bench")
            capped = {key[0] for key in dr.caps}
            await wait_for(lambda capped=capped: capped <= set(probe.written), 5)
            sent = [probe.written[c] for c in capped if c in probe.written]
            to_profiles = ((max(sent) - signalled) * 1000
                           if sent and len(sent) == len(capped) else None)
            signal_id = f"bench-{n}"
            await wait_for(lambda sid=signal_id: (r := dr.record(sid)) is not None
                           and r.met_at is not None, 40)
            probe.armed = False
            record = dr.record(f"bench-{n}")
            assert record is not None
            event = dr.get(f"bench-{n}")
            assert event is not None
            to_met = (None if record.met_at is None
                      else (record.met_at - event.signal.received_ts).total_seconds())
            # RESTORE, and back to full power before the next signal.
            now = app.clock.now()
            submit_json(dr, {"signal_id": f"bench-{n}-restore", "zone_id": "Z1",
                             "signal_type": "RESTORE", "target_reduction_kw": 0,
                             "start_ts": now.isoformat(),
                             "end_ts": (now + timedelta(seconds=60)).isoformat(),
                             "priority": 2, "received_ts": now.isoformat()},
                        now=now, source="bench")
            await wait_for(lambda load=load: not dr.caps
                           and dr.zone_load_kw("Z1") > 0.99 * load, 60)
            final = dr.record(f"bench-{n}")
            results.append(EventResult(target, len(capped), to_profiles, to_met,
                                       record.escalations,
                                       final.verdict if final is not None else "?"))
            if progress is not None and task is not None:
                progress.advance(task)
    finally:
        await stop_sim_subprocess(proc)
        await app.stop()
    profiles = [r.to_last_profile_ms for r in results if r.to_last_profile_ms is not None]
    met = [r.to_compliance_s for r in results if r.to_compliance_s is not None]
    return {
        "chargers": count, "connected": info["connected"], "charging": info["charging"],
        "connect_s": round(info["connect_s"], 2), "events": len(results),
        "simulator": "subprocess", "meter_interval_s": meter_s,
        "car_lag_s": list(LAG_S), "car_ramp_down_kw_s": [40.0, 80.0],
        "signal_to_last_profile_ms": summary(profiles),
        "signal_to_compliance_s": summary_s(met),
        "profiles_missing": sum(r.to_last_profile_ms is None for r in results),
        "not_confirmed": sum(r.to_compliance_s is None for r in results),
        "escalations": sum(r.escalations for r in results),
        "verdicts": {v: sum(r.verdict == v for r in results)
                     for v in sorted({r.verdict for r in results})},
        "stations_per_event": summary([float(r.stations) for r in results]),
        "goal_profiles_p99_ms": GOAL_PROFILES_P99_MS,
        "goal_profiles_met": bool(profiles) and len(profiles) == len(results)
        and percentile(profiles, 0.99) <= GOAL_PROFILES_P99_MS,
        "goal_compliance_p99_s": GOAL_COMPLIANCE_P99_S,
        "goal_compliance_met": bool(met) and len(met) == len(results)
        and percentile(met, 0.99) <= GOAL_COMPLIANCE_P99_S,
        "per_event": [r.__dict__ for r in results],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=200)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--meter-interval", type=float, default=1.0, metavar="S",
                        help="the stations' MeterValueSampleInterval (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # startup races are retried; keep output clean
    if args.worker:
        asyncio.run(sim_worker(args.worker, args.chargers, args.meter_interval, args.seed))
        return
    if args.json:
        result = asyncio.run(run(args.chargers, args.events, args.meter_interval, args.seed,
                                 None))
        print(json.dumps(result, indent=2))
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn()) as progress:
        result = asyncio.run(run(args.chargers, args.events, args.meter_interval, args.seed,
                                 progress))
    lp, mc = result["signal_to_last_profile_ms"], result["signal_to_compliance_s"]
    print(f"{result['chargers']} DC stations of {STATION_KW:g} kW (OCPP 1.6J + 2.0.1, "
          f"profiles in W, simulator subprocess), {result['charging']} cars charging, "
          f"connected in {result['connect_s']} s; {result['events']} DR events "
          f"(CURTAIL 10-30 % of the zone, then RESTORE); cars lag {LAG_S[0]:g}-{LAG_S[1]:g} s "
          f"and ramp down at 40-80 kW/s; meter values every {result['meter_interval_s']:g} s")
    print(f"  signal → last SetChargingProfile written: p50 {lp.get('p50')} ms, "
          f"p99 {lp.get('p99')} ms, max {lp.get('max')} ms "
          f"({result['stations_per_event'].get('p50')} stations per event; goal p99 ≤ "
          f"{GOAL_PROFILES_P99_MS:g} ms: {'met' if result['goal_profiles_met'] else 'NOT met'})")
    print(f"  signal → compliance measured (met_at − received): p50 {mc.get('p50')} s, "
          f"p99 {mc.get('p99')} s, max {mc.get('max')} s (goal p99 ≤ "
          f"{GOAL_COMPLIANCE_P99_S:g} s: {'met' if result['goal_compliance_met'] else 'NOT met'})")
    print(f"  verdicts {result['verdicts']}, escalations {result['escalations']}, profiles "
          f"missing {result['profiles_missing']}, not confirmed {result['not_confirmed']}")


if __name__ == "__main__":
    main()
