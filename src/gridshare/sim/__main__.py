"""Run a simulated site against a CSMS.

    python -m gridshare.sim --url ws://127.0.0.1:9000 --chargers 20 --protocol mixed \\
        --seed 1 --duration 60

Prints one summary line per report interval (connections, cars, currents, and the events
since the last line); ``--json`` prints the same as one JSON object per line, ``--events``
also prints every event as it happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from datetime import datetime
from typing import Any

from gridshare.sim.charger import SimCharger
from gridshare.sim.clock import ScaledClock
from gridshare.sim.connector import Status
from gridshare.sim.site import Scenario, SimSite, SwitchingLoad, raise_fd_limit


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gridshare.sim", description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="CSMS websocket URL; chargers append /<id>")
    p.add_argument("--chargers", type=int, default=20)
    p.add_argument("--protocol", choices=["ocpp1.6", "ocpp2.0.1", "mixed"], default="ocpp1.6")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--tick", type=float, default=1.0, help="physics step, simulated seconds")
    p.add_argument("--meter-interval", type=float, default=10.0)
    p.add_argument("--max-current", type=float, default=32.0)
    p.add_argument("--connectors", type=int, default=1)
    p.add_argument("--three-phase-share", type=float, default=0.75)
    p.add_argument("--password", default=None, help="basic-auth password (user = charger id)")
    p.add_argument("--prefix", default="SIM")
    p.add_argument("--arrivals-per-hour", type=float, default=0.5)
    p.add_argument("--dwell-hours", type=float, default=3.0)
    p.add_argument("--initial-occupancy", type=float, default=0.5)
    p.add_argument("--failsafe-current", type=float, default=None)
    p.add_argument(
        "--aircon-a", type=float, default=0.0, help="add a switching 3-phase load of this many A"
    )
    p.add_argument("--report-every", type=float, default=5.0, help="simulated seconds")
    p.add_argument("--connect-timeout", type=float, default=30.0, help="real seconds")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--events", action="store_true", help="also print every event")
    return p


def _summary(site: SimSite, since: Counter[str], t0: float) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    offered = 0.0
    for ch in site.chargers.values():
        for c in range(1, ch.connectors + 1):
            statuses[ch.status(c).value] += 1
            offered += ch.offered_a(c)
    total = site.meter_a(site.chargers, loads=())
    meter = site.meter_a(site.chargers)
    return {
        "t_s": round(site.clock.time() - t0, 1),
        "connected": site.connected_count,
        "chargers": len(site.chargers),
        "charging": statuses[Status.CHARGING.value],
        "status": dict(statuses),
        "offered_sum_a": round(offered, 1),
        "drawn_a": [round(x, 1) for x in total],
        "meter_a": [round(x, 1) for x in meter],
        "events": dict(since),
    }


def _line(s: dict[str, Any]) -> str:
    ev = " ".join(f"{k}={v}" for k, v in sorted(s["events"].items()))
    d, m = s["drawn_a"], s["meter_a"]
    return (
        f"t=+{s['t_s']:.0f}s connected={s['connected']}/{s['chargers']} "
        f"charging={s['charging']} offered_sum={s['offered_sum_a']:.0f}A "
        f"drawn={d[0]:.0f}/{d[1]:.0f}/{d[2]:.0f}A meter={m[0]:.0f}/{m[1]:.0f}/{m[2]:.0f}A "
        f"events: {ev or '-'}"
    )


async def run(args: argparse.Namespace) -> int:
    raise_fd_limit(args.chargers * args.connectors + 256)
    clock = ScaledClock(speed=args.speed)
    scenario = Scenario(
        seed=args.seed,
        arrivals_per_hour=args.arrivals_per_hour,
        dwell_mean_h=args.dwell_hours,
        initial_occupancy=args.initial_occupancy,
    )
    site = SimSite.build(
        args.url,
        args.chargers,
        protocol=args.protocol,
        seed=args.seed,
        prefix=args.prefix,
        three_phase_share=args.three_phase_share,
        max_current_a=args.max_current,
        connectors=args.connectors,
        meter_interval_s=args.meter_interval,
        clock=clock,
        tick_s=args.tick,
        scenario=scenario,
        password=args.password,
        failsafe_current_a=args.failsafe_current,
    )
    if args.aircon_a > 0:
        a = args.aircon_a
        site.add_load("aircon", SwitchingLoad((a, a, a), on_s=600, off_s=900))
    since: Counter[str] = Counter()

    def on_event(ch: SimCharger, at: datetime, what: str) -> None:
        since[what.split(" ", 1)[0]] += 1
        if args.events:
            if args.json:
                print(json.dumps({"event": what, "charger": ch.id, "at": at.isoformat()}))
            else:
                print(f"{at:%H:%M:%S} {ch.id} {what}")

    site.listeners.append(on_event)
    t0 = clock.time()
    started = time.monotonic()
    connected = await site.start(wait_connected_s=args.connect_timeout)
    connect_s = time.monotonic() - started
    hello = {
        "started": True,
        "connected": connected,
        "chargers": len(site.chargers),
        "connect_s": round(connect_s, 2),
    }
    print(
        json.dumps(hello)
        if args.json
        else f"connected {connected}/{len(site.chargers)} in {connect_s:.1f}s"
    )
    try:
        elapsed = 0.0
        while elapsed < args.duration - 1e-9:
            step = min(args.report_every, args.duration - elapsed)
            await site.run_for(step)
            elapsed += step
            s = _summary(site, since, t0)
            since.clear()
            print(json.dumps(s) if args.json else _line(s), flush=True)
    finally:
        await site.stop()
    final = {"final": True, "events_total": dict(site.event_counts), "cars": site.ev_count}
    print(
        json.dumps(final)
        if args.json
        else f"done: cars={site.ev_count} "
        + " ".join(f"{k}={v}" for k, v in sorted(site.event_counts.items()))
    )
    return 0 if connected else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
