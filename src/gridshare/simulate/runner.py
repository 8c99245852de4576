"""Running a scenario: the real central system and controller, simulated chargers, cars
and meters, all on one virtual clock.

:func:`run_scenario` builds the site with :func:`gridshare.app.build_app` (the CSMS on a
loopback port, the controller, the in-process bus), connects one
:class:`~gridshare.sim.SimCharger` per charger of the site over OCPP websockets, a
simulated OCPP meter per dedicated group meter, and drives cars and uncontrolled loads
from the scenario. Setpoints reach the cars only as charging profiles the controller sent
over OCPP. It runs on a :class:`~gridshare.simulate.vloop.VirtualTimeLoop`, so a day
passes as fast as the code handling it runs.

Every physics step the load of each group (what a meter on its feed would read: its
chargers and the uncontrolled loads below it) is compared with the limit in force — the
static limit and any scheduled change from its ``at`` on — and anything above it is
counted as a violation (time, largest excess, ampere-seconds).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from gridshare.clock import Clock
from gridshare.core.topology import Policy, Topology
from gridshare.events import LimitChanged
from gridshare.sim.charger import SimCharger
from gridshare.sim.ev import EV
from gridshare.sim.site import SimSite
from gridshare.sim.site_meter import SimSiteMeter
from gridshare.simulate.scenario import (
    LoadSpec,
    Scenario,
    ScenarioSpec,
    clock_hours,
    when_hours,
)
from gridshare.simulate.vloop import VirtualClock
from gridshare.tasks import cancel_and_wait

PhaseCurrents = tuple[float, float, float]
EXCESS_A = 1e-6
"""A above a limit that counts as a violation (floating-point noise below it)."""


# --- the load: cars and uncontrolled loads ----------------------------------------------


@dataclass(frozen=True, slots=True)
class CarPlan:
    id: str
    arrival_s: float
    """Seconds after the start."""
    departure_s: float
    energy_kwh: float
    """What the car needs (already capped by what its battery can take)."""
    capacity_kwh: float
    soc: float
    max_current: float
    phases: int
    lag_s: float
    charger: str | None = None


def plan_cars(spec: ScenarioSpec, hours: float, start_h: float = 0.0) -> list[CarPlan]:
    """Every car of the run (times in seconds since the start, whose time of day is
    ``start_h``), drawn from the scenario's seed: the same list whatever the policy, so
    policies are compared on the same load."""
    rng = random.Random(spec.seed)
    cars = spec.cars
    end_s = hours * 3600
    raw: list[tuple[float, dict[str, Any]]] = []
    days = math.ceil(hours / 24) + 2
    for window in cars.arrivals:
        a, b = clock_hours(window.from_), clock_hours(window.to)
        span = (b - a) % 24 or 24.0
        if window.per_hour <= 0:
            continue
        for day in range(-1, days):
            t = (day * 24 + a - start_h) * 3600
            stop = t + span * 3600
            while True:
                t += rng.expovariate(window.per_hour / 3600)
                if t >= stop or t >= end_s:
                    break
                if t >= 0:
                    raw.append((t, {}))
    for car in cars.list_:
        raw.append((when_hours(car.at, start_h) * 3600, {"car": car}))
    raw.sort(key=lambda item: item[0])
    out: list[CarPlan] = []
    for n, (t, extra) in enumerate(raw, start=1):
        given = extra.get("car")
        capacity = (given.capacity_kwh if given is not None and given.capacity_kwh
                    else rng.choice(cars.capacity_kwh))
        soc = rng.uniform(*cars.initial_soc)
        energy = given.energy_kwh if given is not None else rng.uniform(*cars.energy_kwh)
        energy = min(energy, (1.0 - soc) * capacity)
        if given is not None and given.departure is not None:
            # a time of day: the next one after the arrival
            departure = when_hours(given.departure, start_h, t / 3600 + 1 / 60) * 3600
        elif given is not None and given.dwell_hours is not None:
            departure = t + given.dwell_hours * 3600
        else:
            departure = t + rng.uniform(*cars.dwell_hours) * 3600
        max_a = (given.max_current if given is not None and given.max_current
                 else rng.choice(cars.max_current))
        phases = (given.phases if given is not None and given.phases
                  else 3 if rng.random() < cars.three_phase_share else 1)
        out.append(CarPlan(
            id=(given.id if given is not None and given.id else f"car-{n}"), arrival_s=t,
            departure_s=max(departure, t + 60), energy_kwh=energy, capacity_kwh=capacity,
            soc=soc, max_current=max_a, phases=phases, lag_s=rng.uniform(*cars.setpoint_lag_s),
            charger=given.charger if given is not None else None))
    return out


@dataclass(frozen=True, slots=True)
class UncontrolledLoad:
    """A load the controller does not drive, as A per phase at simulated UNIX time t."""

    spec: LoadSpec
    day0: float
    """UNIX time of the first simulated midnight."""

    def _vector(self, amps: float) -> PhaseCurrents:
        if self.spec.phases == 3:
            return (amps, amps, amps)
        idx = ("L1", "L2", "L3").index(self.spec.phase)
        vec = [0.0, 0.0, 0.0]
        vec[idx] = amps
        return (vec[0], vec[1], vec[2])

    def amps(self, t: float) -> float:
        spec = self.spec
        if spec.profile is not None:
            # linear between the points of the day, round midnight from the last to the first
            hour = ((t - self.day0) / 3600) % 24
            points = sorted((clock_hours(w), a) for w, a in spec.profile)
            i = bisect_right([p[0] for p in points], hour) - 1
            h0, a0 = points[i] if i >= 0 else (points[-1][0] - 24, points[-1][1])
            h1, a1 = points[i + 1] if i + 1 < len(points) else (points[0][0] + 24, points[0][1])
            return a0 if h1 <= h0 else a0 + (a1 - a0) * (hour - h0) / (h1 - h0)
        assert spec.current is not None
        cycle = spec.cycle
        if cycle is None:
            return spec.current
        on_s, period = cycle.on_minutes * 60, (cycle.on_minutes + cycle.off_minutes) * 60
        into = (t - self.day0 - cycle.offset_minutes * 60) % period if period else 0.0
        if into >= on_s:
            return 0.0
        if spec.ramp_s > 0 and into < spec.ramp_s:
            return spec.current * into / spec.ramp_s
        return spec.current

    def __call__(self, t: float) -> PhaseCurrents:
        return self._vector(self.amps(t))


class _ClockedMeter(SimSiteMeter):
    """The simulator's OCPP site meter, its readings stamped with the run's clock."""

    def __init__(self, clock: Clock, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def _meter_values(self) -> dict[str, object]:
        out = super()._meter_values()
        stamp = self._clock.now().isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for value in out["meterValue"]:  # type: ignore[attr-defined]
            value["timestamp"] = stamp
        return out


# --- what is measured --------------------------------------------------------------------


@dataclass
class GroupTrace:
    id: str
    static_limit_a: float | None
    static_limit_kw: float | None
    t_h: list[float] = field(default_factory=list)
    load_a: list[float] = field(default_factory=list)
    """Highest phase current at each sample."""
    limit_a: list[float | None] = field(default_factory=list)
    """The limit in force at each sample (A per phase; None: a kW limit only)."""
    peak_a: float = 0.0
    peak_kw: float = 0.0
    violation_s: float = 0.0
    violation_max_a: float = 0.0
    violation_as: float = 0.0
    """Ampere-seconds above the limit."""
    violation_max_at_h: float | None = None
    """Hours after the start of the largest excess."""


@dataclass
class CarResult:
    id: str
    charger: str
    connector: int
    arrival: str
    departure: str
    needed_kwh: float
    delivered_kwh: float
    left: bool
    """Left before the end of the run (else still plugged in at the end)."""

    @property
    def unmet_kwh(self) -> float:
        return max(0.0, self.needed_kwh - self.delivered_kwh)

    @property
    def satisfied(self) -> bool:
        return self.unmet_kwh <= 0.01


@dataclass
class RunResult:
    policy: str
    hours: float
    groups: dict[str, GroupTrace]
    cars: list[CarResult]
    turned_away: list[str]
    meter_energy_kwh: float
    """The sum of every simulated charger's energy register: what their meters delivered."""
    limit_events: list[dict[str, Any]]
    wall_s: float
    ocpp: dict[str, int]
    controller: dict[str, int]
    alarms: list[str] = field(default_factory=list)
    """The controller's alarms raised during the run (time, kind, message)."""

    def summary(self) -> dict[str, Any]:
        left = [c for c in self.cars if c.left]
        staying = [c for c in self.cars if not c.left]
        return {
            "policy": self.policy,
            "hours": self.hours,
            "energy_delivered_kwh": round(self.meter_energy_kwh, 3),
            "energy_needed_kwh": round(sum(c.needed_kwh for c in self.cars), 3),
            "unmet_demand_kwh": round(sum(c.unmet_kwh for c in left), 3),
            "unmet_at_end_kwh": round(sum(c.unmet_kwh for c in staying), 3),
            "cars": len(self.cars),
            "cars_left": len(left),
            "cars_left_unsatisfied": sum(1 for c in left if not c.satisfied),
            "cars_turned_away": len(self.turned_away),
            "peak_a": {g.id: round(g.peak_a, 2) for g in self.groups.values()},
            "peak_kw": {g.id: round(g.peak_kw, 2) for g in self.groups.values()},
            "limit_violations": {
                g.id: {"seconds": round(g.violation_s, 3), "max_a": round(g.violation_max_a, 3),
                       "ampere_seconds": round(g.violation_as, 3),
                       "max_at_h": None if g.violation_max_at_h is None
                       else round(g.violation_max_at_h, 4)}
                for g in self.groups.values()},
            "violation_seconds_total": round(sum(g.violation_s for g in self.groups.values()), 3),
            "limit_events": self.limit_events,
            "alarms": len(self.alarms),
            "alarm_messages": self.alarms[:50],
            "ocpp": self.ocpp,
            "controller": self.controller,
            "wall_s": round(self.wall_s, 3),
        }


class _MeasuredSite(SimSite):
    """A SimSite that measures every group's load after each physics step."""

    probe: Callable[[float], None] | None = None

    def tick(self, dt: float) -> None:
        super().tick(dt)
        if self.probe is not None:
            self.probe(dt)


def _subtree_groups(topology: Topology, gid: str) -> list[str]:
    out, stack = [], [gid]
    while stack:
        g = stack.pop()
        out.append(g)
        stack.extend(topology.groups[g].groups)
    return out


# --- one run -------------------------------------------------------------------------------


async def run_scenario(scenario: Scenario, *, policy: str | None = None,
                       hours: float | None = None, seed: int | None = None,
                       progress: Callable[[float], None] | None = None) -> RunResult:
    """Run ``scenario`` for ``hours`` simulated hours under ``policy`` (None: the site's
    own policies) on the running (virtual-time) loop."""
    from gridshare.app import ServeOptions, build_app, csms_settings
    from gridshare.controller.loop import ControllerSettings

    spec = scenario.spec
    if seed is not None:
        spec = spec.model_copy(update={"seed": seed})
    hours = spec.hours if hours is None else hours
    site = scenario.site
    topology = site.topology
    start = scenario.start
    clock = VirtualClock(start)
    day0 = start.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    wall0 = time.perf_counter()

    # The central system and controller, as `gridshare serve` builds them; chargers and
    # meters of a simulation need no password or TLS.
    csms = replace(csms_settings(site), security_profile=0, tls=None)
    settings = ControllerSettings(
        lease_s=site.ocpp.lease, tick_s=spec.controller.tick,
        recompute_s=spec.controller.recompute,
        policy=None if policy in (None, "site") else Policy(policy))
    app = build_app(topology, ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none", csms=csms,
        controller=settings, meters=site.meters, mqtt=None), clock=clock)
    await app.start()
    url = f"ws://127.0.0.1:{app.ocpp_port}"
    protocols = ("ocpp1.6", "ocpp2.0.1")
    sims = []
    for i, (cid, ch) in enumerate(topology.chargers.items()):
        proto = protocols[i % 2] if spec.protocol == "mixed" else spec.protocol
        sims.append(SimCharger(
            cid, url, protocol=proto, phases=ch.phases,
            phase=ch.phase.name if ch.phase is not None else "L1",
            max_current_a=ch.max_current, min_current_a=ch.min_current,
            connectors=len(ch.connectors), voltage_v=topology.voltage,
            meter_interval_s=spec.meter_interval, failsafe_current_a=ch.failsafe_current,
            seed=spec.seed, clock=clock, events_maxlen=8,
            charging_needs=spec.charging_needs and proto == "ocpp2.0.1"))
    sim = _MeasuredSite(sims, clock=clock, tick_s=spec.physics_tick)
    loads_of: dict[str, list[str]] = {}
    for load in spec.loads:
        sim.add_load(load.id, UncontrolledLoad(load, day0))
        loads_of.setdefault(load.group, []).append(load.id)

    # What a meter on each group's feed reads: its chargers and the loads below it.
    feeds: dict[str, tuple[list[str], list[str]]] = {}
    for gid in topology.groups:
        below = _subtree_groups(topology, gid)
        feeds[gid] = (topology.subtree_chargers(gid),
                      [lid for g in below for lid in loads_of.get(g, [])])

    def read(gid: str) -> PhaseCurrents:
        chargers, loads = feeds[gid]
        return sim.meter_a(chargers, loads)

    meters = []
    for m in site.meters:
        followers = [g for g, grp in topology.groups.items() if grp.meter == m.id]
        if not followers or m.charger is None:
            continue
        meters.append(_ClockedMeter(clock, m.charger, url,
                                    lambda g=followers[0]: read(g),
                                    interval_s=spec.meter_feed_interval))

    # Scheduled limit changes: told to the controller notice_s ahead, measured from at.
    changes = []
    start_h = scenario.start_h
    for n, change in enumerate(spec.limits):
        at_h = when_hours(change.at, start_h)
        at = at_h * 3600
        until = (when_hours(change.until, start_h, at_h + 1 / 60) * 3600
                 if change.until is not None else math.inf)
        changes.append((n, change, at, until))
    traces = {gid: GroupTrace(gid, g.max_current, g.max_power_kw)
              for gid, g in topology.groups.items()}
    voltage = topology.voltage

    def limits_at(gid: str, elapsed: float) -> tuple[float, float]:
        g = topology.groups[gid]
        amps = g.max_current if g.max_current is not None else math.inf
        kw = g.max_power_kw if g.max_power_kw is not None else math.inf
        for _, change, at, until in changes:
            if change.group == gid and at <= elapsed < until:
                if change.max_current is not None:
                    amps = min(amps, change.max_current)
                if change.max_power is not None:
                    kw = min(kw, change.max_power)
        return amps, kw

    next_sample = [0.0]

    def probe(dt: float) -> None:
        elapsed = clock.elapsed()
        sample = elapsed >= next_sample[0]
        # each charger and load read once per step, summed per group
        now_t = clock.time()
        drawn = {cid: ch.meter_a() for cid, ch in sim.chargers.items()}
        other = {lid: fn(now_t) for lid, fn in sim.loads.items()}
        for gid, trace in traces.items():
            chargers, loads = feeds[gid]
            l1 = l2 = l3 = 0.0
            for vec in [*(drawn[c] for c in chargers), *(other[x] for x in loads)]:
                l1 += vec[0]
                l2 += vec[1]
                l3 += vec[2]
            amps = (l1, l2, l3)
            top = max(amps)
            kw = voltage * sum(amps) / 1000
            limit_a, limit_kw = limits_at(gid, elapsed)
            over = top - limit_a
            if limit_kw < math.inf:
                phases = topology.groups[gid].phases
                over = max(over, (kw - limit_kw) * 1000 / (voltage * phases))
            trace.peak_a = max(trace.peak_a, top)
            trace.peak_kw = max(trace.peak_kw, kw)
            if over > EXCESS_A:
                trace.violation_s += dt
                trace.violation_as += over * dt
                if over > trace.violation_max_a:
                    trace.violation_max_a = over
                    trace.violation_max_at_h = elapsed / 3600
            if sample:
                trace.t_h.append(elapsed / 3600)
                trace.load_a.append(top)
                trace.limit_a.append(limit_a if limit_a < math.inf else None)
        if sample:
            next_sample[0] += spec.sample
            if progress is not None:
                progress(elapsed)

    plans = plan_cars(spec, hours, start_h)
    cars: list[CarResult] = []
    turned_away: list[str] = []
    where: dict[str, tuple[SimCharger, int, CarResult, EV]] = {}

    async def drive() -> None:
        events: list[tuple[float, int, CarPlan]] = []
        for plan in plans:
            events.append((plan.arrival_s, 1, plan))
            events.append((plan.departure_s, 0, plan))  # departures first at a tie
        events.sort(key=lambda e: (e[0], e[1], e[2].id))
        for t, kind, plan in events:
            delay = t - clock.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            if kind == 0:
                found = where.pop(plan.id, None)
                if found is not None:
                    charger, conn, result, ev = found
                    charger.unplug_nowait(conn)
                    result.delivered_kwh = ev.energy_charged_wh / 1000
                    result.left = True
                continue
            free = [(ch, c) for ch in sims for c in range(1, ch.connectors + 1)
                    if ch.ev(c) is None and (plan.charger is None or ch.id == plan.charger)]
            if not free:
                turned_away.append(plan.id)
                continue
            # The same draw for every policy: occupancy depends only on arrivals and
            # departures, which do not depend on the policy.
            charger, conn = random.Random(f"{spec.seed}:{plan.id}").choice(free)
            target = min(1.0, plan.soc + plan.energy_kwh / plan.capacity_kwh)
            ev = EV(capacity_kwh=plan.capacity_kwh, soc=plan.soc, target_soc=target,
                    max_current_a=plan.max_current, phases=plan.phases,
                    arrival=clock.now(), departure=start + timedelta(seconds=plan.departure_s),
                    setpoint_lag_s=plan.lag_s, id=plan.id)
            charger.plug_nowait(conn, ev)
            result = CarResult(plan.id, charger.id, conn, clock.now().isoformat(),
                               ev.departure.isoformat() if ev.departure else "",
                               plan.energy_kwh, 0.0, False)
            cars.append(result)
            where[plan.id] = (charger, conn, result, ev)

    async def schedule() -> None:
        for n, change, at, until in sorted(changes, key=lambda c: c[2] - c[1].notice_s):
            delay = at - change.notice_s - clock.elapsed()
            if delay > 0:
                await asyncio.sleep(delay)
            app.bus.publish(LimitChanged(
                group=change.group, at=clock.now(), source="operator",
                max_current=change.max_current, max_power_kw=change.max_power,
                until=None if until == math.inf else start + timedelta(seconds=until),
                reason=f"{change.reason} (scenario limits[{n}])"))

    tasks: list[asyncio.Task[None]] = []
    try:
        for meter in meters:
            await meter.start()
        connected = await sim.start(wait_connected_s=60.0)
        for meter in meters:
            await asyncio.wait_for(meter.connected.wait(), 60.0)
        if connected < len(sims):
            raise RuntimeError(f"only {connected} of {len(sims)} simulated chargers connected")
        sim.probe = probe
        tasks = [asyncio.create_task(drive(), name="simulate-cars"),
                 asyncio.create_task(schedule(), name="simulate-limits")]
        await asyncio.sleep(hours * 3600 - clock.elapsed())
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        await cancel_and_wait(tasks, swallow_errors=True)
        sim.probe = None
        for _charger, _conn, result, ev in where.values():
            result.delivered_kwh = ev.energy_charged_wh / 1000
        meter_wh = sum(ch.energy_wh(c) for ch in sims for c in range(1, ch.connectors + 1))
        counts = dict(sim.event_counts)
        controller = {k: int(v) for k, v in app.controller.counters.items()}
        alarms = [f"{a.at.isoformat()} {a.kind}: {a.message}"
                  for a in app.controller.recent_alarms if not a.cleared]
        for meter in meters:
            await meter.stop()
        await sim.stop()
        await app.stop()
    events_out = [{"group": c.group, "at_h": round(at / 3600, 4),
                   "until_h": None if until == math.inf else round(until / 3600, 4),
                   "max_current": c.max_current, "max_power": c.max_power,
                   "notice_s": c.notice_s, "reason": c.reason}
                  for _, c, at, until in changes]
    return RunResult(policy=policy or "site", hours=hours, groups=traces, cars=cars,
                     turned_away=turned_away, meter_energy_kwh=meter_wh / 1000,
                     limit_events=events_out, wall_s=time.perf_counter() - wall0,
                     ocpp={k: int(v) for k, v in counts.items()}, controller=controller,
                     alarms=alarms)

