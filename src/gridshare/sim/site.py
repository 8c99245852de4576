"""Many simulated chargers in one process, cars coming and going, and a site meter.

A :class:`SimSite` owns one clock and one physics loop (``tick_s``) that advances every
charger and car; each charger only adds its websocket and two tasks (link, RPC reader).
A seeded :class:`Scenario` makes cars arrive (Poisson per free connector), stay (log-normal
dwell) and leave; :meth:`SimSite.meter_a` sums the per-phase current of any set of chargers
plus uncontrolled loads, which is what a group meter of the real site would read.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import resource
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from gridshare.sim.charger import PROTOCOLS, SimCharger
from gridshare.sim.clock import ManualClock, ScaledClock, SimClock
from gridshare.sim.dc import DcEV, DcStation
from gridshare.sim.ev import EV
from gridshare.tasks import cancel_and_wait

PhaseCurrents = tuple[float, float, float]


class LoadProfile(Protocol):
    """An uncontrolled load: per-phase current (A) at simulated UNIX time ``t``."""

    def __call__(self, t: float) -> PhaseCurrents: ...


@dataclass(frozen=True, slots=True)
class ConstantLoad:
    current_a: PhaseCurrents

    def __call__(self, t: float) -> PhaseCurrents:
        return self.current_a


@dataclass(frozen=True, slots=True)
class SwitchingLoad:
    """A load cycling on and off, e.g. an air conditioner's compressor."""

    current_a: PhaseCurrents
    on_s: float = 600.0
    off_s: float = 900.0
    offset_s: float = 0.0

    def __call__(self, t: float) -> PhaseCurrents:
        cycle = self.on_s + self.off_s
        if cycle <= 0:
            return self.current_a
        return self.current_a if (t + self.offset_s) % cycle < self.on_s else (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Scenario:
    """Seeded arrivals and departures of cars."""

    seed: int = 1
    arrivals_per_hour: float = 0.5
    """Poisson rate of arrivals at each free connector."""
    dwell_mean_h: float = 3.0
    dwell_sigma: float = 0.5
    """Sigma of the log-normal dwell time."""
    min_dwell_s: float = 600.0
    initial_occupancy: float = 0.5
    """Share of connectors with a car already there when the site starts."""
    soc_range: tuple[float, float] = (0.1, 0.6)
    target_soc_range: tuple[float, float] = (0.8, 1.0)
    capacities_kwh: tuple[float, ...] = (40.0, 58.0, 77.0, 100.0)
    max_currents_a: tuple[float, ...] = (16.0, 32.0)
    three_phase_share: float = 0.8
    lag_range_s: tuple[float, float] = (1.0, 5.0)


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards ``wanted`` (each charger needs one socket,
    two when the CSMS runs in the same process); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


class SimSite:
    """A set of simulated chargers sharing a clock, a physics loop and a meter."""

    def __init__(
        self,
        chargers: Iterable[SimCharger] = (),
        *,
        clock: SimClock | None = None,
        tick_s: float = 1.0,
        scenario: Scenario | None = None,
        connect_concurrency: int = 100,
        recent_events: int = 1000,
    ) -> None:
        self.clock: SimClock = clock or ScaledClock()
        self.tick_s = tick_s
        self.scenario = scenario
        self.chargers: dict[str, SimCharger] = {}
        self.loads: dict[str, LoadProfile] = {}
        self.event_counts: Counter[str] = Counter()
        self.recent: deque[tuple[datetime, str, str]] = deque(maxlen=recent_events)
        """Latest (time, charger id, what) across all chargers."""
        self.listeners: list[Callable[[SimCharger, datetime, str], None]] = []
        self._gate = asyncio.Semaphore(connect_concurrency)
        self._rng = random.Random(scenario.seed if scenario else 0)
        self._next_arrival: dict[tuple[str, int], float] = {}
        self._tick_task: asyncio.Task[None] | None = None
        self._started = False
        self._seeded = False
        self._connection_change = asyncio.Event()
        self.ticks = 0
        self.ev_count = 0
        for ch in chargers:
            self.add_charger(ch)

    # ------------------------------------------------------------------ building

    def add_charger(self, charger: SimCharger) -> SimCharger:
        if charger.id in self.chargers:
            raise ValueError(f"duplicate charger id {charger.id}")
        charger.clock = self.clock
        charger.listener = self._on_event
        charger.connect_gate = self._gate
        self.chargers[charger.id] = charger
        return charger

    def add_load(self, name: str, load: LoadProfile) -> None:
        self.loads[name] = load

    @classmethod
    def build(
        cls,
        url: str,
        count: int,
        *,
        protocol: str = "ocpp1.6",
        seed: int = 1,
        prefix: str = "SIM",
        three_phase_share: float = 0.75,
        max_current_a: float = 32.0,
        connectors: int = 1,
        meter_interval_s: float = 10.0,
        clock: SimClock | None = None,
        tick_s: float = 1.0,
        scenario: Scenario | None = None,
        connect_concurrency: int = 100,
        **charger_kwargs: Any,
    ) -> SimSite:
        """``count`` chargers named ``<prefix>0001``…; ``protocol="mixed"`` alternates
        1.6 and 2.0.1; 1-phase chargers are spread over L1, L2, L3 in turn. V2G chargers:
        ``protocol="ocpp2.1", v2x=True`` (and ``grid_hz``) in ``charger_kwargs``."""
        if protocol != "mixed" and protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be mixed or one of {PROTOCOLS}")
        rng = random.Random(seed)
        charger_kwargs.setdefault("events_maxlen", 16)  # the site keeps its own log
        site = cls(
            clock=clock,
            tick_s=tick_s,
            scenario=scenario,
            connect_concurrency=connect_concurrency,
        )
        width = max(4, len(str(count)))
        single = 0
        for i in range(count):
            proto = PROTOCOLS[i % 2] if protocol == "mixed" else protocol
            three = rng.random() < three_phase_share
            phase = "L1"
            if not three:
                phase = ("L1", "L2", "L3")[single % 3]
                single += 1
            site.add_charger(
                SimCharger(
                    f"{prefix}{i + 1:0{width}d}",
                    url,
                    protocol=proto,
                    phases=3 if three else 1,
                    phase=phase,
                    max_current_a=max_current_a,
                    connectors=connectors,
                    meter_interval_s=meter_interval_s,
                    clock=site.clock,
                    seed=seed,
                    **charger_kwargs,
                )
            )
        return site

    # ------------------------------------------------------------------ running

    async def start(self, *, wait_connected_s: float | None = 30.0) -> int:
        """Start connecting every charger and the physics loop. Waits (up to
        ``wait_connected_s`` real seconds, None: not at all) for the chargers to connect
        before cars start arriving; returns how many are connected."""
        if self._started:
            return self.connected_count
        self._started = True
        for ch in self.chargers.values():
            await ch.start(physics=False)
        connected = self.connected_count
        if wait_connected_s:
            connected = await self.wait_connected(timeout_s=wait_connected_s)
        if self.scenario is not None and not self._seeded:
            self._seed_scenario()
        if not isinstance(self.clock, ManualClock):
            self._tick_task = asyncio.create_task(self._tick_loop(), name="sim-site-ticks")
        return connected

    async def stop(self) -> None:
        if self._tick_task is not None:
            await cancel_and_wait([self._tick_task])
            self._tick_task = None
        await asyncio.gather(*(ch.stop() for ch in self.chargers.values()))
        self._started = False

    async def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (starting the site if needed). With a
        :class:`ManualClock` the physics is stepped directly, as fast as possible."""
        if not self._started:
            await self.start()
        if isinstance(self.clock, ManualClock):
            self.advance(seconds)
            await asyncio.sleep(0)
        else:
            await self.clock.sleep(seconds)

    def advance(self, seconds: float) -> None:
        """Step the physics by ``seconds`` (ManualClock only)."""
        clock = self.clock
        if not isinstance(clock, ManualClock):
            raise TypeError("advance() needs a ManualClock")
        if self.scenario is not None and not self._seeded:
            self._seed_scenario()
        steps = max(1, round(seconds / self.tick_s))
        for _ in range(steps):
            clock.advance(self.tick_s)
            self.tick(self.tick_s)

    async def wait_connected(self, count: int | None = None, timeout_s: float = 30.0) -> int:
        """Wait until ``count`` (default all) chargers are connected; return how many are."""
        want = len(self.chargers) if count is None else count
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.connected_count < want:
            left = deadline - loop.time()
            if left <= 0:
                break
            self._connection_change.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connection_change.wait(), left)
        return self.connected_count

    @property
    def connected_count(self) -> int:
        return sum(1 for ch in self.chargers.values() if ch.connected)

    async def _tick_loop(self) -> None:
        dt = self.tick_s
        next_t = self.clock.time()
        while True:
            next_t += dt
            delay = next_t - self.clock.time()
            if delay > 0:
                await self.clock.sleep(delay)
            else:
                await asyncio.sleep(0)  # behind schedule: catch up, but let I/O run
            self.tick(dt)

    def tick(self, dt: float) -> None:
        """One physics step of ``dt`` simulated seconds for every charger and car (and the
        scenario's arrivals and departures), at the clock's current time."""
        now = self.clock.time()
        if self.scenario is not None:
            self._scenario_step(now)
        for ch in self.chargers.values():
            ch.step(dt, now)
        self.ticks += 1

    # ------------------------------------------------------------------ scenario

    def _dwell_s(self) -> float:
        sc = self.scenario
        assert sc is not None
        mu = math.log(max(sc.dwell_mean_h, 1e-6) * 3600) - sc.dwell_sigma**2 / 2
        return max(sc.min_dwell_s, self._rng.lognormvariate(mu, sc.dwell_sigma))

    def _gap_s(self) -> float:
        sc = self.scenario
        assert sc is not None
        if sc.arrivals_per_hour <= 0:
            return math.inf
        return self._rng.expovariate(sc.arrivals_per_hour / 3600)

    def _new_ev(self, now: datetime, charger: SimCharger | None = None) -> EV:
        """A car of the scenario; at a DC station a DC car (it ramps, in kW)."""
        sc = self.scenario
        assert sc is not None
        self.ev_count += 1
        if isinstance(charger, DcStation):
            return DcEV.random_dc(self._rng, arrival=now, dwell_s=self._dwell_s(),
                                  lag_range_s=sc.lag_range_s,
                                  nominal_voltage_v=charger.voltage_v, id=f"EV{self.ev_count}")
        return EV.random(
            self._rng,
            arrival=now,
            dwell_s=self._dwell_s(),
            soc_range=sc.soc_range,
            target_soc_range=sc.target_soc_range,
            capacities_kwh=sc.capacities_kwh,
            max_currents_a=sc.max_currents_a,
            three_phase_share=sc.three_phase_share,
            lag_range_s=sc.lag_range_s,
            id=f"EV{self.ev_count}",
        )

    def _seed_scenario(self) -> None:
        sc = self.scenario
        assert sc is not None
        self._seeded = True
        now_ts = self.clock.time()
        now = self.clock.now()
        for ch in self.chargers.values():
            for c in range(1, ch.connectors + 1):
                if ch.ev(c) is None and self._rng.random() < sc.initial_occupancy:
                    ev = self._new_ev(now, ch)
                    # already there for a while: shorten the remaining stay
                    if ev.departure is not None:
                        left = (ev.departure - now) * self._rng.random()
                        ev.departure = now + max(left, timedelta(seconds=sc.min_dwell_s))
                    ch.plug_nowait(c, ev)
                else:
                    self._next_arrival[(ch.id, c)] = now_ts + self._gap_s()

    def _scenario_step(self, now_ts: float) -> None:
        now: datetime | None = None
        for ch in self.chargers.values():
            for c in range(1, ch.connectors + 1):
                ev = ch.ev(c)
                if ev is not None:
                    dep = ev.departure
                    if dep is not None and dep.timestamp() <= now_ts:
                        ch.unplug_nowait(c)
                        self._next_arrival[(ch.id, c)] = now_ts + self._gap_s()
                    continue
                due = self._next_arrival.get((ch.id, c))
                if due is None:
                    self._next_arrival[(ch.id, c)] = now_ts + self._gap_s()
                elif due <= now_ts:
                    now = now or self.clock.now()
                    ch.plug_nowait(c, self._new_ev(now, ch))
                    del self._next_arrival[(ch.id, c)]

    # ------------------------------------------------------------------ observation

    def _on_event(self, charger: SimCharger, at: datetime, what: str) -> None:
        kind = what.split(" ", 1)[0]
        self.event_counts[kind] += 1
        if kind in ("connected", "disconnected"):
            self._connection_change.set()
        self.recent.append((at, charger.id, what))
        for fn in self.listeners:
            fn(charger, at, what)

    def meter_a(self, chargers: Iterable[str], loads: Iterable[str] | None = None) -> PhaseCurrents:
        """Per-phase current of the named chargers plus uncontrolled loads (``None``: all
        loads of the site; ``()``: none) — what a meter on their common feed reads."""
        l1 = l2 = l3 = 0.0
        for cid in chargers:
            a, b, c = self.chargers[cid].meter_a()
            l1 += a
            l2 += b
            l3 += c
        t = self.clock.time()
        for name in self.loads if loads is None else loads:
            a, b, c = self.loads[name](t)
            l1 += a
            l2 += b
            l3 += c
        return (l1, l2, l3)

    def snapshot(self) -> dict[str, Any]:
        """Every charger's connection, status, offered and drawn current (JSON-ready)."""
        out: dict[str, Any] = {}
        for ch in self.chargers.values():
            conns = []
            for c in range(1, ch.connectors + 1):
                ev = ch.ev(c)
                conns.append(
                    {
                        "connector": c,
                        "status": ch.status(c).value,
                        "offered_a": ch.offered_a(c),
                        "drawn_a": [round(x, 2) for x in ch.drawn_a(c)],
                        "soc": round(ev.soc, 4) if ev is not None else None,
                        "energy_wh": round(ch.energy_wh(c), 1),
                    }
                )
            out[ch.id] = {
                "connected": ch.connected,
                "protocol": ch.protocol,
                "phases": ch.phases,
                "connectors": conns,
            }
        total = self.meter_a(self.chargers, loads=())
        return {
            "time": self.clock.now().isoformat(),
            "connected": self.connected_count,
            "chargers": out,
            "chargers_total_a": [round(x, 2) for x in total],
            "site_total_a": [round(x, 2) for x in self.meter_a(self.chargers)],
        }
