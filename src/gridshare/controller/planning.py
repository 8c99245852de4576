"""Charge planning followed live: needs in, a least-cost plan, per-connector caps out.

The planner (:func:`gridshare.core.planning.plan_charging`) is pure and keeps no state;
this service keeps what it needs between plans and re-plans:

- **needs** come from OCPP 2.0.1 ``NotifyEVChargingNeeds`` (:class:`~gridshare.events.
  ChargingNeeds` on the bus) or from the API (``PUT /api/v1/chargers/{id}/connectors/{n}/
  need``, for 1.6 chargers and drivers). A need is the energy still wanted *from the moment
  it was given*; what the connector's meter counts afterwards is taken off. A car that gave
  none is planned with ``default_need_kwh`` (leaving ``default_stay`` after it arrived), or
  not at all when there is no default (it then charges at the plain allocation, no cap);
- **re-plans** (the LP runs in a worker thread, never on the event loop) when a car arrives
  or leaves, a need changes, a limit changes, and at every period boundary; a burst within
  ``replan_min_interval_s`` is one re-plan;
- **caps**: each planned car present now gets its plan's current for the current period as
  a cap (``ConnectorCapsChanged(source="charge_plan")``). The controller folds it as one
  more limit (tightest wins) so the guard, decreases-first and minimums are unchanged. A
  planned current between 0 and the connector's minimum is raised to the minimum (a cap
  below it would pause the car and starve the plan).

Staleness (how a car is never held below its need by an old plan): a plan covers the
periods from the one it was made in; after a boundary, the old plan's column for the new
period is followed until the re-plan lands. If none has landed ``late_after_s`` after the
period began, or the solver failed, every cap of this source is lifted (the cars charge at
the plain allocation, which is never below the plan's) and an alarm is raised; the next
plan that lands clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from zoneinfo import ZoneInfo

from gridshare.bus import Bus, Subscription
from gridshare.clock import Clock
from gridshare.controller.audit import AlarmRecord
from gridshare.controller.caps import CapPublisher
from gridshare.core.planning import CarNeed, ChargePlan, plan_charging
from gridshare.core.topology import ConnectorKey, Topology
from gridshare.events import (
    ChargerOffline,
    ChargingNeeds,
    LimitChanged,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    from gridshare.config import ChargePlanningSpec
    from gridshare.controller.state import SessionInfo

log = logging.getLogger("gridshare.planning")

SOURCE = "charge_plan"
"""The limit source of the caps (the controller folds every source's caps)."""
MAX_ALARMS = 100
RETRY_S = 30.0
"""After a failed plan (caps lifted) the worker tries again this soon."""
WAKE_ON = (SessionStarted, SessionStopped, StatusChanged, ChargerOffline, LimitChanged,
           ChargingNeeds)

Solver = Callable[..., ChargePlan]


class StateView(Protocol):
    """What the service reads of the controller's live state (``SiteState``)."""

    def active(self, key: ConnectorKey) -> bool: ...

    def session_info(self, key: ConnectorKey) -> SessionInfo: ...


class AlarmSink(Protocol):
    def record_alarm(self, record: AlarmRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class Need:
    """A car's need as given: kWh wanted from ``at`` on, and its departure."""

    energy_kwh: float
    departure: datetime | None
    at: datetime
    base_wh: float
    """The session's energy (Wh) when the need was given: what it draws after counts."""
    source: str


@dataclass(frozen=True, slots=True)
class Planned:
    """A plan and what it was made from."""

    plan: ChargePlan
    start: datetime
    """Start of its period 0 (a period boundary)."""
    made_at: datetime
    needs: dict[ConnectorKey, tuple[float, datetime, str]]
    """Car -> (remaining kWh, departure, source of the need)."""


def tariff_table(steps: Sequence[tuple[float, float]]) -> list[float]:
    """Price per minute of the day from ``(hour, price)`` steps in increasing time; before
    the first step the last one's price holds (from the day before)."""
    table = []
    for minute in range(24 * 60):
        hour = minute / 60
        price = steps[-1][1]
        for at, value in steps:
            if at <= hour + 1e-9:
                price = value
        table.append(price)
    return table


def load_tariff_steps(spec: ChargePlanningSpec,
                      base_dir: Path | None = None) -> list[tuple[float, float]] | None:
    """The block's tariff as ``(hour, price)`` steps: inline, or read from a tariff file
    (``gridshare charge-plan --tariff``'s format; ConfigError naming file and line)."""
    from gridshare.config import clock_h

    if spec.tariff is None:
        return None
    if isinstance(spec.tariff, list):
        return [(clock_h(s.start) or 0.0, s.price) for s in spec.tariff]
    from gridshare.cli.plan_charge_cmds import load_tariff

    path = Path(spec.tariff)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    per_minute = load_tariff(path, start_h=0.0, periods=24 * 60, period_h=1 / 60)
    steps: list[tuple[float, float]] = []
    for minute, price in enumerate(per_minute):
        if not steps or steps[-1][1] != price:
            steps.append((minute / 60, price))
    return steps


def _hide_solver_banner() -> None:
    """HiGHS prints a banner on stdout the first time a solver is made: make that one
    now, with stdout muted, rather than in the middle of a server's output."""
    import highspy

    from gridshare.cli.core_cmds import solver_banner_hidden

    with solver_banner_hidden():
        highspy.Highs()  # type: ignore[no-untyped-call]  # highspy: untyped __init__


class PlanService:
    """Live charge planning for one site (``app.planning``)."""

    def __init__(self, topology: Topology, settings: ChargePlanningSpec, bus: Bus | None,
                 clock: Clock, *, state_view: StateView, store: AlarmSink | None = None,
                 tariff: Sequence[tuple[float, float]] | None = None,
                 solver: Solver = plan_charging, run_worker: bool = True) -> None:
        """``tariff``: ``(hour of day, price)`` steps (:func:`load_tariff_steps`);
        ``solver``: the planner (tests inject a failing one); ``run_worker`` False: no
        background task, tests call :meth:`replan` and :meth:`check` on a fake clock."""
        self.topology = topology
        self.settings = settings
        self.clock = clock
        self._bus = bus
        self._state = state_view
        self._store = store
        self._solver = solver
        self._run_worker = run_worker
        self._tz = ZoneInfo(settings.timezone)
        self._prices = tariff_table(tariff) if tariff else None
        self.period = timedelta(hours=settings.period_h)
        self._keys = [c.key for ch in topology.chargers.values() for c in ch.connectors]
        self._min_a = {c.key: c.min_current for ch in topology.chargers.values()
                       for c in ch.connectors}
        self._needs: dict[ConnectorKey, Need] = {}
        self._planned: Planned | None = None
        self._failed: str | None = None
        """Why the caps are lifted (None: following the plan)."""
        self._alarms: deque[dict[str, Any]] = deque(maxlen=MAX_ALARMS)
        self._told_short: dict[ConnectorKey, float] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Subscription | None = None
        self._last_plan_at: datetime | None = None
        self.counters: Counter[str] = Counter()
        self._publisher = CapPublisher(SOURCE, bus, self.counters, logger=log,
                                       log_format="charge plan caps: %s")

    # --- inputs ---------------------------------------------------------------------------

    def set_need(self, key: ConnectorKey, energy_kwh: float, departure: datetime | None, *,
                 source: str = "api", at: datetime | None = None) -> None:
        """Record what a car needs from now on (kWh) and when it leaves; re-plan soon.
        ValueError for an unknown connector or a need that is not a finite number >= 0."""
        if key not in self._min_a:
            raise ValueError(f"unknown connector {key[0]}/{key[1]}")
        if not (math.isfinite(energy_kwh) and energy_kwh >= 0):
            raise ValueError(f"energy_kwh: must be a number >= 0 (got {energy_kwh})")
        now = at or self.clock.now()
        self._needs[key] = Need(float(energy_kwh), departure, now, self._session_wh(key),
                                source)
        self.counters["needs"] += 1
        log.info("plan: need %s/%s %.2f kWh by %s (%s)", key[0], key[1], energy_kwh,
                 departure.isoformat() if departure else "no departure", source)
        self._wake.set()

    def need_of(self, key: ConnectorKey) -> Need | None:
        return self._needs.get(key)

    def _session_wh(self, key: ConnectorKey) -> float:
        info = self._state.session_info(key)
        return info.energy_wh or 0.0

    def period_start(self, now: datetime) -> datetime:
        """The start of the period ``now`` falls in (periods are aligned on the epoch)."""
        step = self.period.total_seconds()
        epoch = now.timestamp()
        return datetime.fromtimestamp(math.floor(epoch / step + 1e-9) * step, UTC)

    def cars(self, now: datetime) -> tuple[list[CarNeed], dict[ConnectorKey,
                                                             tuple[float, datetime, str]]]:
        """The planner's input: every car plugged in now with a need (its own or the
        default), what it still needs and its departure period."""
        start = self.period_start(now)
        periods = self.settings.periods
        out: list[CarNeed] = []
        needs: dict[ConnectorKey, tuple[float, datetime, str]] = {}
        for key in self._keys:
            if not self._state.active(key):
                continue
            info = self._state.session_info(key)
            need = self._needs.get(key)
            if need is not None:
                drawn_kwh = max((info.energy_wh or 0.0) - need.base_wh, 0.0) / 1000.0
                remaining = max(need.energy_kwh - drawn_kwh, 0.0)
                arrival = info.arrival or need.at
                departure = need.departure or arrival + timedelta(
                    hours=self.settings.default_stay_h)
                source = need.source
            elif self.settings.default_need_kwh is not None:
                drawn_kwh = (info.energy_wh or 0.0) / 1000.0
                remaining = max(self.settings.default_need_kwh - drawn_kwh, 0.0)
                arrival = info.arrival or now
                departure = arrival + timedelta(hours=self.settings.default_stay_h)
                source = "default"
            else:
                continue
            # Planned in whole periods up to the one it leaves in; a car past its
            # departure (still plugged in) gets the current period to catch up.
            stop = math.floor((departure - start) / self.period + 1e-9)
            stop = min(max(stop, 1), periods)
            out.append(CarNeed(key, 0, stop, remaining))
            needs[key] = (remaining, departure, source)
        return out, needs

    def taken_a(self, now: datetime) -> dict[str, list[list[float]]]:
        """Per group, A per phase the plan cannot use: the uncontrolled load its meter
        shows (when it follows one) and what a run-time limit (DR, operator) takes below the
        site file's ``max_current``. Held over the whole horizon (what is known now)."""
        out: dict[str, list[list[float]]] = {}
        group_meter = getattr(self._state, "group_meter", None)
        uncontrolled = getattr(self._state, "metered_uncontrolled", None)
        limits_of = getattr(self._state, "limits_of", None)
        for gid, group in self.topology.groups.items():
            amps = [0.0, 0.0, 0.0]
            if group_meter is not None and uncontrolled is not None and \
                    group_meter(gid) is not None:
                amps = [max(a, 0.0) for a in uncontrolled(gid)]
            if limits_of is not None and group.max_current is not None:
                extra = [lim.max_current for lim, _ in limits_of(gid, now).values()
                         if lim.max_current is not None]
                if extra and min(extra) < group.max_current:
                    cut = group.max_current - max(min(extra), 0.0)
                    amps = [a + cut for a in amps]
            if any(a > 0 for a in amps):
                out[gid] = [amps]
        return out

    def prices(self, start: datetime) -> list[float] | None:
        """Price per period from ``start`` (time of day in the block's timezone)."""
        if self._prices is None:
            return None
        local = start.astimezone(self._tz)
        minute0 = local.hour * 60 + local.minute
        step = self.settings.period_h * 60
        return [self._prices[int(minute0 + t * step) % (24 * 60)]
                for t in range(self.settings.periods)]

    # --- planning -------------------------------------------------------------------------

    async def replan(self, reason: str = "") -> Planned | None:
        """Plan now (the LP in a worker thread) and follow it; on failure lift the caps and
        raise an alarm. Returns the plan in force (None when it failed)."""
        async with self._lock:
            now = self.clock.now()
            start = self.period_start(now)
            cars, needs = self.cars(now)
            prices = self.prices(start)
            taken = self.taken_a(now)
            self.counters["plans"] += 1
            try:
                async with asyncio.timeout(self.settings.late_after_s):
                    plan = await asyncio.to_thread(
                        self._solver, self.topology, cars, periods=self.settings.periods,
                        period_h=self.settings.period_h, prices=prices,
                        uncontrolled_a=taken or None)
            except Exception as exc:  # TimeoutError too: a plan that is late is no plan
                self.counters["plan_failures"] += 1
                log.exception("charge plan failed")
                self._planned = None
                self._fail(f"charge plan failed ({type(exc).__name__}: {exc}): caps lifted, "
                           "cars charge at the plain allocation")
                return None
            done = self.clock.now()
            self._last_plan_at = done
            self._planned = Planned(plan, start, done, needs)
            if self._failed is not None:
                self._clear_alarm(done)
            log.info("charge plan (%s): %d cars, cost %.2f, short %.2f kWh", reason or "re-plan",
                     len(plan.cars), plan.cost, plan.shortfall_kwh)
            self._report_short(plan)
            self._publisher.publish(self._follow(done), done)
            return self._planned

    def check(self, now: datetime | None = None) -> None:
        """Follow the plan's column for the current period; lift the caps and raise an
        alarm when no plan covers it ``late_after_s`` after it began."""
        at = now or self.clock.now()
        planned = self._planned
        if planned is None:
            return
        start = self.period_start(at)
        late = start > planned.start and \
            (at - start).total_seconds() > self.settings.late_after_s
        if late:
            if self._failed is None:
                self.counters["plans_late"] += 1
                self._fail(f"charge plan late: none for the period from {start.isoformat()} "
                           f"{self.settings.late_after_s:g} s after it began: caps lifted")
            return
        if self._failed is None:
            self._publisher.publish(self._follow(at), at)

    def _follow(self, now: datetime) -> dict[ConnectorKey, float]:
        """The caps of the current period: each planned car still plugged in."""
        planned = self._planned
        if planned is None:
            return {}
        index = round((self.period_start(now) - planned.start) / self.period)
        if not 0 <= index < planned.plan.periods:
            return {}
        caps: dict[ConnectorKey, float] = {}
        for car in planned.plan.cars:
            if not self._state.active(car.key) or not car.first <= index < car.stop:
                continue
            amps = car.current_a[index]
            floor = math.floor(amps * 100 + 1e-6) / 100  # to 0.01 A, never above the plan
            if 0 < amps < self._min_a[car.key]:
                floor = self._min_a[car.key]  # a cap below the minimum would pause it
            if amps > 0 and floor <= 0:
                floor = 0.01
            caps[car.key] = floor
        return caps

    def _fail(self, why: str) -> None:
        now = self.clock.now()
        self._failed = why
        self._publisher.publish({}, now)
        self._alarm(now, why)

    def _clear_alarm(self, now: datetime) -> None:
        message = "charge plan in force again: the cars follow it"
        log.info("%s", message)
        self._failed = None
        if self._store is not None:
            self._store.record_alarm(AlarmRecord(now, "charge_plan", "", None, 0.0, 0.0,
                                                 f"cleared: {message}", cleared=True))

    def _alarm(self, now: datetime, message: str) -> None:
        self._alarms.append({"at": now.isoformat(), "kind": "charge_plan",
                             "message": message})
        self.counters["alarms"] += 1
        log.warning("PLAN ALARM: %s", message)
        if self._store is not None:
            self._store.record_alarm(AlarmRecord(now, "charge_plan", "", None, 0.0, 0.0,
                                                 message))

    def _report_short(self, plan: ChargePlan) -> None:
        """Log each car whose need cannot be met, once per change of its shortfall."""
        short = {c.key: c.shortfall_kwh for c in plan.cars if not c.met}
        for key, kwh in short.items():
            if abs(self._told_short.get(key, -1.0) - kwh) > 0.01:
                log.warning("charge plan: %s/%s cannot be met, %.2f kWh short by its "
                            "departure", key[0], key[1], kwh)
        self._told_short = short

    # --- views ----------------------------------------------------------------------------

    @property
    def caps(self) -> dict[ConnectorKey, float]:
        return dict(self._publisher.caps)

    @property
    def failed(self) -> str | None:
        return self._failed

    def alarms(self) -> list[dict[str, Any]]:
        return list(self._alarms)

    def to_json(self) -> dict[str, Any]:
        """``GET /api/v1/plan``: the plan in force, each car's need and shortfall."""
        planned = self._planned
        base: dict[str, Any] = {
            "enabled": True, "status": "none" if planned is None else "ok",
            "period_minutes": round(self.settings.period_h * 60, 6),
            "periods": self.settings.periods, "planned_at": None, "start": None,
            "cost": None, "shortfall_kwh": 0.0, "cars_short": 0, "cars": [],
            "caps": [{"charger": k[0], "connector": k[1], "current": a}
                     for k, a in sorted(self._publisher.caps.items())],
            "alarm": self._failed, "alarms": self.alarms()}
        if self._failed is not None:
            base["status"] = "failed"
        if planned is None:
            return base
        plan = planned.plan
        base.update({"planned_at": planned.made_at.isoformat(),
                     "start": planned.start.isoformat(),
                     "cost": None if self._prices is None else round(plan.cost, 6),
                     "shortfall_kwh": round(plan.shortfall_kwh, 6),
                     "cars_short": sum(not c.met for c in plan.cars)})
        cars = []
        for car in plan.cars:
            _, departure, source = planned.needs.get(car.key, (car.need_kwh, planned.start,
                                                               ""))
            cars.append({"charger": car.key[0], "connector": car.key[1],
                         "need_kwh": round(car.need_kwh, 6),
                         "planned_kwh": round(car.planned_kwh, 6),
                         "shortfall_kwh": round(car.shortfall_kwh, 6), "met": car.met,
                         "departure": departure.isoformat(), "need_source": source,
                         "cap_a": self._publisher.caps.get(car.key),
                         "current": [round(a, 3) for a in car.current_a]})
        base["cars"] = cars
        return base

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        _hide_solver_banner()
        if self._bus is not None:
            self._subscription = self._bus.subscribe("planning")
            self._tasks.append(asyncio.create_task(self._consume(),
                                                   name="gridshare-plan-events"))
        if self._run_worker:
            self._tasks.append(asyncio.create_task(self._work(), name="gridshare-plan"))

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        await cancel_and_wait(self._tasks, swallow_errors=True)
        self._tasks.clear()

    async def _consume(self) -> None:
        assert self._subscription is not None
        async for event in self._subscription:
            if isinstance(event, ChargingNeeds) and event.energy_needed_kwh is not None:
                key = (event.charger, event.connector)
                with contextlib.suppress(ValueError):
                    self.set_need(key, event.energy_needed_kwh, event.departure,
                                  source="ocpp", at=event.at)
            elif isinstance(event, SessionStopped):
                self._needs.pop((event.charger, event.connector), None)
            if isinstance(event, WAKE_ON):
                self._wake.set()

    async def _work(self) -> None:
        await asyncio.sleep(0)
        with contextlib.suppress(Exception):
            await self.replan("start")
        while True:
            now = self.clock.now()
            boundary = self.period_start(now) + self.period
            delay = max((boundary - now).total_seconds(), 0.0) + 0.01
            if self._planned is not None and self._failed is None:
                delay = min(delay, self.settings.late_after_s)
            elif self._failed is not None:
                delay = min(delay, RETRY_S)  # caps lifted: try again soon
            woke = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
                    woke = True
            if woke and self._last_plan_at is not None:
                since = (self.clock.now() - self._last_plan_at).total_seconds()
                wait = self.settings.replan_min_interval_s - since
                if wait > 0:
                    await asyncio.sleep(wait)
            self._wake.clear()
            try:
                if woke or self._failed is not None or \
                        self.period_start(self.clock.now()) != (
                            self._planned.start if self._planned else None):
                    await self.replan("change" if woke else "period boundary")
                self.check()
            except Exception:
                self.counters["cycle_errors"] += 1
                log.exception("charge plan cycle failed")
                await asyncio.sleep(1.0)
