"""Run a simulated site against a CSMS.

    python -m gridshare.sim --url ws://127.0.0.1:9000 \\
        --ids-from src/gridshare/examples/carport.yaml --protocol mixed --duration 60

``--ids-from SITE.yaml`` simulates the chargers of a site file (ids, phases, maximum and
minimum currents, connectors, failsafe currents; CCS / CHAdeMO stations as DC stations
whose cars ramp), so they connect to a ``gridshare serve`` of that file; without it the
chargers are ``--prefix``0001… with the options' ratings.
Prints one summary line per report interval (connections, cars, currents, and the events
since the last line); ``--json`` prints the same as one JSON object per line, ``--events``
also prints every event as it happens. Exits 1 when no charger connected within
``--connect-timeout`` (naming why: refused with which HTTP status, or no answer), 2 on a
bad site file or bad options.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridshare.sim.charger import PROTOCOLS, SimCharger
from gridshare.sim.clock import ScaledClock, SimClock
from gridshare.sim.connector import Status
from gridshare.sim.dc import DcConnector, DcStation, a_to_kw, is_dc
from gridshare.sim.site import Scenario, SimSite, SwitchingLoad, raise_fd_limit

if TYPE_CHECKING:
    from gridshare.core.topology import Topology

_DEFAULT_CHARGERS = 20
_RATINGS = {  # options a site file gives instead (--ids-from), and their defaults
    "max_current": 32.0,
    "connectors": 1,
    "three_phase_share": 0.75,
    "failsafe_current": None,
    "prefix": "SIM",
}
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_HINTS = {
    "404": "the CSMS does not know these ids (use --ids-from with its site file)",
    "401": "wrong or missing password (--password)",
    "403": "refused (client certificate or path)",
}
_SHOWN_IDS = 5
_EXIT_CODES = """exit codes:
  0  ran for --duration (chargers that did not connect are named on stderr)
  1  no charger connected within --connect-timeout (why, on stderr)
  2  bad options or a bad --ids-from site file"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gridshare.sim",
        description=__doc__.split("\n")[0],
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", required=True, help="CSMS websocket URL; chargers append /<id>")
    p.add_argument(
        "--ids-from",
        type=Path,
        metavar="SITE.yaml",
        help="simulate the chargers of this site file (ids, phases, currents, connectors, "
        "failsafe)",
    )
    p.add_argument(
        "--chargers",
        type=int,
        default=None,
        help=f"how many (default {_DEFAULT_CHARGERS}; with --ids-from: all, or the first N)",
    )
    p.add_argument(
        "--protocol", choices=["ocpp1.6", "ocpp2.0.1", "ocpp2.1", "mixed"], default="ocpp1.6"
    )
    p.add_argument(
        "--grid-hz",
        type=float,
        default=None,
        help="grid frequency the V2G chargers (v2x: true in --ids-from) measure for "
        "LocalFrequency (default: none, they hold 0 W in that mode)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds")
    p.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    p.add_argument("--tick", type=float, default=1.0, help="physics step, simulated seconds")
    p.add_argument("--meter-interval", type=float, default=10.0)
    p.add_argument("--max-current", type=float, default=None, help="A (default 32)")
    p.add_argument("--connectors", type=int, default=None, help="per charger (default 1)")
    p.add_argument("--three-phase-share", type=float, default=None, help="0..1 (default 0.75)")
    p.add_argument("--password", default=None, help="basic-auth password (user = charger id)")
    p.add_argument("--prefix", default=None, help="charger ids <prefix>0001... (default SIM)")
    p.add_argument("--arrivals-per-hour", type=float, default=0.5)
    p.add_argument("--dwell-hours", type=float, default=3.0)
    p.add_argument("--initial-occupancy", type=float, default=0.5)
    p.add_argument(
        "--failsafe-current", type=float, default=None, help="A (default: the full rating)"
    )
    p.add_argument(
        "--aircon-a", type=float, default=0.0, help="add a switching 3-phase load of this many A"
    )
    p.add_argument("--report-every", type=float, default=5.0, help="simulated seconds")
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="real seconds to wait for the chargers to connect (0: do not wait)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--events", action="store_true", help="also print every event")
    return p


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options, with the ratings a site file gives refused next to ``--ids-from`` (the file
    would silently win otherwise)."""
    p = _parser()
    args = p.parse_args(argv)
    if args.ids_from is not None:
        for name in _RATINGS:
            if getattr(args, name) is not None:
                flag = "--" + name.replace("_", "-")
                p.error(f"{flag} cannot be used with --ids-from (the site file gives it)")
    if args.chargers is not None and args.chargers < 1:
        p.error("--chargers must be at least 1")
    return _with_defaults(args)


def _with_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The ratings' defaults, for options left out (they are None in the parser so that
    ``--ids-from`` can tell them from given ones)."""
    for name, default in _RATINGS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def _site_from_file(
    args: argparse.Namespace, topology: Topology, clock: SimClock, scenario: Scenario
) -> SimSite:
    """One simulated charger per charger of the site file, rated as the file says; a
    3-phase charger with CCS or CHAdeMO connectors is a DC station (kW-limited outlets, DC
    cars that ramp)."""
    site = SimSite(clock=clock, tick_s=args.tick, scenario=scenario)
    chargers = list(topology.chargers.values())[: args.chargers]
    for i, ch in enumerate(chargers):
        if is_dc(ch):
            site.add_charger(DcStation(
                ch.id, args.url,
                protocol=PROTOCOLS[i % 2] if args.protocol == "mixed" else args.protocol,
                max_kw=a_to_kw(ch.max_current, topology.voltage),
                outlets=tuple(DcConnector(str(c.type or "CCS"),
                                          a_to_kw(c.max_current, topology.voltage))
                              for c in ch.connectors),
                voltage_v=topology.voltage, min_current_a=ch.min_current,
                meter_interval_s=args.meter_interval, failsafe_current_a=ch.failsafe_current,
                password=args.password, clock=site.clock, seed=args.seed, events_maxlen=16))
            continue
        grid_hz: Callable[[], float] | None = None
        if ch.v2x and args.grid_hz is not None:
            grid_hz = functools.partial(float, args.grid_hz)
        site.add_charger(
            SimCharger(
                ch.id,
                args.url,
                # a charger declared v2x: true is a V2G charger: OCPP 2.1, a power stage
                # that discharges, a meter every second at most (docs/v2g.md)
                protocol="ocpp2.1"
                if ch.v2x
                else PROTOCOLS[i % 2]
                if args.protocol == "mixed"
                else args.protocol,
                v2x=ch.v2x,
                grid_hz=grid_hz,
                phases=ch.phases,
                phase=ch.phase.name if ch.phase is not None else "L1",
                max_current_a=ch.max_current,
                min_current_a=ch.min_current,
                connectors=len(ch.connectors),
                voltage_v=topology.voltage,
                meter_interval_s=min(args.meter_interval, 1.0) if ch.v2x else args.meter_interval,
                failsafe_current_a=ch.failsafe_current,
                password=args.password,
                clock=site.clock,
                seed=args.seed,
                events_maxlen=16,
            )
        )
    return site


def _build_site(args: argparse.Namespace, topology: Topology | None) -> SimSite:
    clock = ScaledClock(speed=args.speed)
    scenario = Scenario(
        seed=args.seed,
        arrivals_per_hour=args.arrivals_per_hour,
        dwell_mean_h=args.dwell_hours,
        initial_occupancy=args.initial_occupancy,
    )
    if topology is not None:
        return _site_from_file(args, topology, clock, scenario)
    return SimSite.build(
        args.url,
        args.chargers or _DEFAULT_CHARGERS,
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


class _LastErrors:
    """Why each charger that is not connected is not: its last connection error."""

    def __init__(self) -> None:
        self.error: dict[str, str] = {}

    def __call__(self, ch: SimCharger, at: datetime, what: str) -> None:
        if what.startswith("connection error: "):
            self.error[ch.id] = what.removeprefix("connection error: ")
        elif what == "connected":
            self.error.pop(ch.id, None)

    def reasons(self, site: SimSite) -> dict[str, list[str]]:
        """Not connected chargers by reason: ``HTTP 404`` for a refusal, else the error."""
        out: dict[str, list[str]] = {}
        for ch in site.chargers.values():
            if ch.connected:
                continue
            error = self.error.get(ch.id)
            status = _HTTP_STATUS.search(error) if error else None
            why = f"HTTP {status.group(1)}" if status else (error or "no answer yet")[:120]
            out.setdefault(why, []).append(ch.id)
        return out


def _reason_lines(reasons: dict[str, list[str]]) -> list[str]:
    lines = []
    for why, ids in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(ids[:_SHOWN_IDS])
        if len(ids) > _SHOWN_IDS:
            shown += f", … and {len(ids) - _SHOWN_IDS} more"
        status = why.removeprefix("HTTP ")
        if why.startswith("HTTP "):
            hint = _HINTS.get(status, "refused by the CSMS")
            lines.append(f"  {len(ids)} refused with {why}: {shown} — {hint}")
        else:
            lines.append(f"  {len(ids)} not connected ({why}): {shown}")
    return lines


async def run(args: argparse.Namespace, topology: Topology | None = None) -> int:
    """Connect, run ``--duration`` and report; ``topology``: the ``--ids-from`` site."""
    site = _build_site(_with_defaults(args), topology)
    raise_fd_limit(len(site.chargers) * args.connectors + 256)
    if args.aircon_a > 0:
        a = args.aircon_a
        site.add_load("aircon", SwitchingLoad((a, a, a), on_s=600, off_s=900))
    since: Counter[str] = Counter()
    last_errors = _LastErrors()

    def on_event(ch: SimCharger, at: datetime, what: str) -> None:
        since[what.split(" ", 1)[0]] += 1
        last_errors(ch, at, what)
        if args.events:
            if args.json:
                print(json.dumps({"event": what, "charger": ch.id, "at": at.isoformat()}))
            else:
                print(f"{at:%H:%M:%S} {ch.id} {what}")

    site.listeners.append(on_event)
    clock = site.clock
    t0 = clock.time()
    started = time.monotonic()
    connected = await site.start(wait_connected_s=args.connect_timeout)
    connect_s = time.monotonic() - started
    reasons = last_errors.reasons(site) if args.connect_timeout > 0 else {}
    hello = {
        "started": True,
        "connected": connected,
        "chargers": len(site.chargers),
        "connect_s": round(connect_s, 2),
        "not_connected": reasons,
    }
    print(
        json.dumps(hello)
        if args.json
        else f"connected {connected}/{len(site.chargers)} in {connect_s:.1f}s",
        flush=True,
    )
    if reasons:
        head = (
            f"error: no charger connected within {args.connect_timeout:g} s "
            f"(--connect-timeout) to {args.url}"
            if connected == 0
            else f"warning: {len(site.chargers) - connected} of {len(site.chargers)} "
            f"chargers not connected within {args.connect_timeout:g} s"
        )
        print("\n".join([head, *_reason_lines(reasons)]), file=sys.stderr, flush=True)
        if connected == 0:
            await site.stop()
            return 1
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
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    topology = None
    if args.ids_from is not None:
        # only --ids-from needs the config stack (pydantic, yaml): imported here
        from gridshare.config import load_site_config

        try:
            topology = load_site_config(args.ids_from).topology
        except ValueError as exc:  # ConfigError, and whatever a bad file raises
            print(exc, file=sys.stderr)
            return 2
    try:
        return asyncio.run(run(args, topology))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
