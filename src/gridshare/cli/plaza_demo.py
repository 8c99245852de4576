"""``gridshare demo --site plaza``: a DC plaza and one demand-response event, end to end.

Twenty simulated 150 kW DC stations (``examples/plaza.yaml``, zone ``Z1``, 3 MW) speak
real OCPP to the real central system, controller and DR service; the REST API and the
dashboard are served. Cars are charging when the demo starts and two more arrive. After
about 20 s a CURTAIL signal (900 kW for 2 minutes) is submitted to the app's DR service by
the same path as ``POST /api/v1/dr/signals``: the stations get their caps as TxProfiles
in W, the cars follow after their lag and ramp down, the meter values confirm the
reduction (the compliance verdict), and when the event ends the caps are lifted and the
cars ramp back up. The terminal and the dashboard show each step.

Imported by the ``demo`` command only when ``--site plaza`` is asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridshare.sim.dc import CCS_150, CHADEMO_50, DcConnector, DcEV, DcStation, a_to_kw
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    from rich.console import Console, Group

    from gridshare.app import GridshareApp
    from gridshare.controller.dr import DrService
    from gridshare.sim.site import SimSite

ZONE = "Z1"
SIGNAL_ID = "plaza-demo-1"
TARGET_KW = 900.0
"""The CURTAIL the utility asks for (when the zone draws enough to make it)."""
EVENT_AT_S = 20.0
EVENT_S = 120.0
METER_S = 2.0
OCCUPANCY = 0.8
"""Share of the stations with a car already charging at the start."""


def plaza_site_text() -> str:
    """The shipped plaza site file."""
    return resources.files("gridshare").joinpath("examples/plaza.yaml").read_text(
        encoding="utf-8")


@dataclass(frozen=True, slots=True)
class EventPlan:
    """When the demo's DR event starts and how long it lasts (seconds into the demo)."""

    at_s: float
    length_s: float

    @classmethod
    def for_duration(cls, duration_s: float) -> EventPlan:
        """20 s in, for 2 minutes, in a run of 3 minutes or more; a shorter run keeps the
        same shape (an eighth in, a quarter left at the end for the restore)."""
        at = min(EVENT_AT_S, duration_s / 8)
        margin = min(40.0, duration_s / 4)
        return cls(at, max(1.0, min(EVENT_S, duration_s - at - margin)))


@dataclass
class PlazaStats:
    """What the demo saw of its event, for the closing summary (and the tests)."""

    signal_id: str = SIGNAL_ID
    target_kw: float | None = None
    length_s: float | None = None
    signalled_at_s: float | None = None
    baseline_kw: float | None = None
    met_after_s: float | None = None
    escalations: int = 0
    verdict: str = "not sent"
    verdict_told: bool = False
    ended_at_s: float | None = None
    restored_at_s: float | None = None
    zone_kw_end: float = 0.0
    cars: int = 0
    alerts: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Car:
    """Where a demo car charges."""

    station: str
    connector: int
    ev: DcEV


def _cars(stations: dict[str, DcStation], seed: int) -> tuple[list[Car], list[Car]]:
    """(already charging, arriving later): a seeded draw of cars over the stations, most
    on the CCS outlet, some on CHAdeMO."""
    rng = random.Random(seed)
    now: list[Car] = []
    later: list[Car] = []
    for n, (cid, station) in enumerate(stations.items(), start=1):
        connector = 1 if rng.random() < 0.8 else 2
        if station.outlet(connector).type == "CHAdeMO":
            powers: tuple[float, ...] = (50.0,)
        else:
            powers = (100.0, 150.0, 150.0)
        ev = DcEV.random_dc(rng, max_powers_kw=powers, id=f"car-{n:02d}")
        if rng.random() < OCCUPANCY:
            now.append(Car(cid, connector, ev))
        elif len(later) < 2:
            later.append(Car(cid, connector, ev))
    return now, later


def _dr(app: GridshareApp) -> DrService:
    dr = app.dr
    if dr is None:  # the plaza declares a zone: the app always builds its DR service
        raise RuntimeError("the plaza site has no demand-response service")
    return dr


def zone_kw(sim: SimSite) -> float:
    """What the plaza's stations draw now (the simulated truth the meters sample)."""
    return sum(ch.power_kw() for ch in sim.chargers.values() if isinstance(ch, DcStation))


def _event_line(app: GridshareApp, sim: SimSite, plan: EventPlan, elapsed: float) -> str:
    dr = _dr(app)
    capacity = app.topology.zones[ZONE].capacity_kw or 0.0
    draw = zone_kw(sim)
    pct = f" ({100 * draw / capacity:.0f} %)" if capacity else ""
    head = f"t={elapsed:4.0f}s  {ZONE} {draw:5.0f}/{capacity:g} kW{pct}"
    event = dr.get(SIGNAL_ID)
    if event is None:
        return f"{head}  no DR event yet (CURTAIL at t={plan.at_s:.0f}s)"
    body = dr.event_json(event)
    record = body.get("compliance") or {}
    achieved = record.get("achieved_kw")
    achieved_text = "—" if achieved is None else f"{achieved:.0f} kW"
    return (f"{head}  event {SIGNAL_ID} {body['signal_type']} "
            f"{body['target_reduction_kw']:g} kW {body['state']}: achieved {achieved_text}, "
            f"verdict {_verdict(record)}")


def _verdict(record: dict[str, Any]) -> str:
    """The record's verdict; while the event runs, whether the meters confirmed it yet."""
    verdict = str(record.get("verdict", "pending"))
    if verdict == "pending" and record.get("met_at") is not None:
        return "pending (target met)"
    return verdict


def _tables(app: GridshareApp, sim: SimSite, plan: EventPlan, elapsed: float,
            duration_s: float) -> Group:
    from rich.console import Group
    from rich.table import Table

    dr = _dr(app)
    caps = dr.caps
    voltage = app.topology.voltage
    head = Table(title=f"{app.topology.site}: demand response, t = {elapsed:.0f} / "
                       f"{duration_s:.0f} s", title_justify="left")
    for col in ("zone", "draw kW", "capacity kW", "event", "target kW", "achieved kW",
                "verdict"):
        head.add_column(col, justify="left" if col in ("zone", "event", "verdict")
                        else "right")
    capacity = app.topology.zones[ZONE].capacity_kw
    event = dr.get(SIGNAL_ID)
    if event is None:
        head.add_row(ZONE, f"{zone_kw(sim):.0f}", f"{capacity or 0:g}",
                     f"CURTAIL {TARGET_KW:g} kW at t={plan.at_s:.0f}s", "—", "—", "—")
    else:
        body = dr.event_json(event)
        record = body.get("compliance") or {}
        achieved = record.get("achieved_kw")
        verdict = _verdict(record)
        colour = {"met": "green", "not met": "red", "pending (target met)": "green"}.get(
            verdict, "yellow")
        head.add_row(ZONE, f"{zone_kw(sim):.0f}", f"{capacity or 0:g}",
                     f"{SIGNAL_ID} ({body['state']})", f"{body['target_reduction_kw']:g}",
                     "—" if achieved is None else f"{achieved:.0f}",
                     f"[{colour}]{verdict}[/]")
    stations = Table(title="stations with a car (kW)", title_justify="left")
    for col in ("station", "OCPP", "outlet", "status", "DR cap", "offered", "drawn", "SoC %"):
        stations.add_column(col, justify="right" if col in ("DR cap", "offered", "drawn",
                                                             "SoC %") else "left")
    for cid, ch in sim.chargers.items():
        if not isinstance(ch, DcStation):
            continue
        for connector in range(1, ch.connectors + 1):
            ev = ch.ev(connector)
            if ev is None:
                continue
            cap = caps.get((cid, connector))
            cap_text = "—" if cap is None else f"{a_to_kw(cap, voltage):.0f}"
            stations.add_row(cid, ch.ocpp_version, ch.outlet(connector).type,
                             ch.status(connector).value if ch.connected else "[red]offline",
                             cap_text, f"{ch.offered_kw(connector):.0f}",
                             f"{ch.power_kw(connector):.0f}", f"{ev.soc * 100:.0f}")
    return Group(head, stations)


async def _plug(station: DcStation, car: Car, *, settle: bool, wait_s: float = 10.0) -> bool:
    """Plug ``car`` in; with ``settle`` it draws its power at once (it was charging before
    the demo began) as soon as the controller's profile lets it. False when it could not
    charge within ``wait_s``."""
    await station.plug(car.connector, car.ev)
    if not settle:
        return True
    from gridshare.sim.profiles import Purpose

    def ready() -> bool:
        tx = station.transaction(car.connector)
        # the controller's setpoint is on the connector (a TxProfile, or a TxDefaultProfile
        # while a 1.6 transaction id is not known yet); connector 0 holds the failsafe
        return (tx is not None and tx.active and station.offered_kw(car.connector) > 0
                and any(p.connector == car.connector
                        and p.purpose in (Purpose.TX, Purpose.TX_DEFAULT)
                        for p in station.profiles))

    deadline = time.monotonic() + wait_s
    while not ready():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    station.settle(car.connector)
    return True


def _full_offer(sim: SimSite) -> bool:
    """Every car is offered what its outlet and cabinet allow: no cap holds it back."""
    for ch in sim.chargers.values():
        if not isinstance(ch, DcStation):
            continue
        cars = [c for c in range(1, ch.connectors + 1) if ch.ev(c) is not None]
        if not cars:
            continue
        share = ch.max_kw / len(cars)
        for c in cars:
            wanted = min(ch.outlet(c).max_kw, share)
            if ch.offered_kw(c) < wanted - 0.5:
                return False
    return True


async def run_plaza_demo(duration_s: float, seed: int, *, plain: bool, console: Console,
                         stop: asyncio.Event | None = None,
                         api_port: int | None = None) -> PlazaStats:
    """Run the plaza for ``duration_s`` seconds with one DR event (see the module
    docstring); with ``api_port`` (0: a free one) the REST API and the dashboard are served
    on 127.0.0.1, with a one-off token for changes printed at start."""
    from rich.live import Live

    from gridshare.adapters.dr import submit_json
    from gridshare.adapters.ocpp.config import CsmsConfig
    from gridshare.app import ServeOptions
    from gridshare.cli.serve_cmds import start_demo_app
    from gridshare.config import parse_site_config
    from gridshare.controller.loop import ControllerSettings
    from gridshare.sim.site import SimSite

    config = parse_site_config(plaza_site_text(), "plaza.yaml")
    topology = config.topology
    plan = EventPlan.for_duration(duration_s)
    token = secrets.token_urlsafe(12)
    data = tempfile.TemporaryDirectory(prefix="gridshare-plaza-")
    # A DC station's native unit is the watt: its profiles go out in W.
    csms = CsmsConfig(rate_unit=dict.fromkeys(topology.chargers, "W"))

    def options(port: int | None) -> ServeOptions:
        return ServeOptions(host="127.0.0.1", ocpp_port=0, api_port=port,
                            data_dir=Path(data.name), csms=csms,
                            controller=ControllerSettings(lease_s=300.0),
                            demand_response=config.demand_response, api_tokens=(token,))

    app = await start_demo_app(topology, options, api_port, token, console)
    dr = _dr(app)
    url = f"ws://127.0.0.1:{app.ocpp_port}"
    stations: dict[str, DcStation] = {}
    for i, (cid, ch) in enumerate(topology.chargers.items()):
        outlets = tuple(DcConnector(str(c.type or "CCS"), a_to_kw(c.max_current,
                                                                  topology.voltage))
                        for c in ch.connectors) or (CCS_150, CHADEMO_50)
        stations[cid] = DcStation(
            cid, url, protocol=("ocpp1.6", "ocpp2.0.1")[i % 2],
            max_kw=ch.max_power_kw or a_to_kw(ch.max_current, topology.voltage),
            outlets=outlets, voltage_v=topology.voltage, min_current_a=ch.min_current,
            meter_interval_s=METER_S, seed=seed)
    sim = SimSite(stations.values(), tick_s=0.25)
    stats = PlazaStats()
    started = time.monotonic()

    def say(message: str, live: Live | None = None) -> None:
        line = f"t={time.monotonic() - started:4.0f}s  {message}"
        (live.console if live is not None else console).print(line, highlight=False)

    def on_alert(alert: dict[str, Any]) -> None:
        stats.alerts.append(str(alert.get("message", alert)))

    dr.on_alert(on_alert)
    now_cars, later = _cars(stations, seed)
    stats.cars = len(now_cars) + len(later)
    helpers: list[asyncio.Task[Any]] = []
    stop = stop or asyncio.Event()
    live: Live | None = None
    seen_alerts = 0
    try:
        connected = await sim.start(wait_connected_s=15.0)
        if connected < len(stations):
            console.print(f"[yellow]{connected} of {len(stations)} stations connected[/]")
        ok = await asyncio.gather(*(_plug(stations[c.station], c, settle=True)
                                    for c in now_cars))
        if not all(ok):
            console.print(f"[yellow]{ok.count(False)} car(s) could not start charging[/]")
        await asyncio.sleep(2 * sim.tick_s)  # one physics step: the cars draw
        started = time.monotonic()
        say(f"{len(now_cars)} cars charging at {len(stations)} DC stations "
            f"({zone_kw(sim):.0f} kW); {len(later)} more arriving, a CURTAIL of up to "
            f"{TARGET_KW:g} kW at t={plan.at_s:.0f}s for {plan.length_s:.0f} s")
        if not (plain or not console.is_terminal):
            live = Live(_tables(app, sim, plan, 0.0, duration_s), console=console,
                        refresh_per_second=2)
            live.start()
        next_line = 0.0
        arrive_at = plan.at_s / 3
        while (elapsed := time.monotonic() - started) < duration_s and not stop.is_set():
            if later and elapsed >= arrive_at:
                for car in later:
                    helpers.append(asyncio.create_task(
                        _plug(stations[car.station], car, settle=False)))
                    say(f"{car.ev.id} arrives at {car.station} "
                        f"({stations[car.station].outlet(car.connector).type}, up to "
                        f"{car.ev.max_power_kw:g} kW): it ramps up", live)
                later = []
            if stats.signalled_at_s is None and elapsed >= plan.at_s:
                _signal(app, stats, plan, elapsed, submit_json, say, live)
            _follow(app, sim, stats, elapsed, say, live)
            while seen_alerts < len(stats.alerts):
                say(f"alert: {stats.alerts[seen_alerts]}", live)
                seen_alerts += 1
            if live is not None:
                live.update(_tables(app, sim, plan, elapsed, duration_s))
            elif elapsed >= next_line:
                console.print(_event_line(app, sim, plan, elapsed), highlight=False)
                next_line += 5.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.25):
                    await stop.wait()
        stats.zone_kw_end = zone_kw(sim)
        record = dr.record(SIGNAL_ID)
        if record is not None:
            stats.verdict = record.verdict
            stats.escalations = record.escalations
    finally:
        if live is not None:
            live.stop()
        await cancel_and_wait(helpers)
        await sim.stop()
        await app.stop()
        data.cleanup()
    return stats


def _signal(app: GridshareApp, stats: PlazaStats, plan: EventPlan, elapsed: float,
            submit: Any, say: Any, live: Any) -> None:
    """The utility's CURTAIL, through the path REST signals take (validated, stored)."""
    dr = _dr(app)
    now = app.clock.now()
    draw = dr.zone_load_kw(ZONE, now)
    # 900 kW when the zone can make it (a short run may start the event on a light load)
    target = TARGET_KW if draw >= 1.5 * TARGET_KW else max(1.0, round(draw / 2))
    body = {"signal_id": SIGNAL_ID, "zone_id": ZONE, "signal_type": "CURTAIL",
            "target_reduction_kw": target, "start_ts": now.isoformat(),
            "end_ts": (now + timedelta(seconds=plan.length_s)).isoformat(), "priority": 2,
            "received_ts": now.isoformat()}
    outcome, event = submit(dr, body, now=now, source="demo")
    stats.signalled_at_s = elapsed
    stats.target_kw = target
    stats.length_s = plan.length_s
    state = event.state(now).value
    say(f"DR signal {SIGNAL_ID}: CURTAIL {target:g} kW in zone {ZONE} for "
        f"{plan.length_s:.0f} s (priority 2), {outcome.value}, {state}; the zone draws "
        f"{draw:.0f} kW by its meters", live)


def _follow(app: GridshareApp, sim: SimSite, stats: PlazaStats, elapsed: float, say: Any,
            live: Any) -> None:
    """Report the event's moments once each: met, ended, restored."""
    if stats.signalled_at_s is None:
        return
    dr = _dr(app)
    record = dr.record(SIGNAL_ID)
    event = dr.get(SIGNAL_ID)
    if record is None or event is None:
        return
    stats.verdict = record.verdict
    stats.escalations = record.escalations
    if record.baseline_kw is not None:
        stats.baseline_kw = record.baseline_kw
    if stats.met_after_s is None and record.met_at is not None:
        stats.met_after_s = (record.met_at - event.signal.received_ts).total_seconds()
        achieved = record.achieved_kw()
        say(f"compliance met: the meters show {achieved or 0:.0f} kW less than the "
            f"{record.baseline_kw or 0:.0f} kW baseline (target {record.target_kw:g} kW), "
            f"{stats.met_after_s:.1f} s after the signal", live)
    if stats.ended_at_s is None and event.state(app.clock.now()).value == "ended":
        stats.ended_at_s = elapsed
        say(f"DR event {SIGNAL_ID} ended: its caps are lifted", live)
    if stats.ended_at_s is not None and not stats.verdict_told and record.verdict != "pending":
        stats.verdict_told = True
        say(f"compliance verdict: {record.verdict} ({record.escalations} escalation(s), "
            f"target {record.target_kw:g} kW)", live)
    if stats.ended_at_s is not None and stats.restored_at_s is None and not dr.caps \
            and _full_offer(sim):
        stats.restored_at_s = elapsed
        say(f"charging restored: every car is offered its full power again, the cars ramp "
            f"up (zone {zone_kw(sim):.0f} kW now)", live)


def summary(stats: PlazaStats) -> list[str]:
    """The closing lines of the demo."""
    if stats.signalled_at_s is None or stats.target_kw is None:
        return [f"{stats.cars} cars; the run ended before the DR event was sent."]
    met = ("not confirmed" if stats.met_after_s is None
           else f"met {stats.met_after_s:.1f} s after the signal")
    baseline = "—" if stats.baseline_kw is None else f"{stats.baseline_kw:.0f} kW"
    restored = ("charging restored" if stats.restored_at_s is not None
                else "still in force" if stats.ended_at_s is None else "restoring")
    lines = [f"{stats.cars} cars. DR event {stats.signal_id}: CURTAIL {stats.target_kw:g} kW "
             f"for {stats.length_s or 0:.0f} s, baseline {baseline}, {met}, "
             f"{stats.escalations} escalation(s); verdict: {stats.verdict}; {restored} "
             f"(zone {stats.zone_kw_end:.0f} kW at the end)."]
    lines += [f"  alert: {a}" for a in stats.alerts]
    return lines
