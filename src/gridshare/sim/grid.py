"""A single-area grid model for the simulator: imbalance moves the frequency.

The swing equation of one area, aggregated (all machines as one), with ``Δf = f − f0``::

    (2H / f0) · dΔf/dt = (P_gen + P_storage − P_load0 − D·Δf) / S_base

- ``H`` (s): the inertia constant (kinetic energy at f0 over ``S_base``);
- ``S_base`` (kW): the area's base power;
- ``P_gen`` (kW): scheduled generation, less what a ``trip`` removed;
- ``P_storage`` (kW, + = discharging into the area): the storage units' power, taken in
  from their MQTT power topics, so the regulation's response closes the loop;
- ``P_load0`` (kW): the load at nominal frequency: measured loads (from simulated meters
  and chargers, ``set_load``) plus scheduled steps (``load_step``) plus seeded noise;
- ``D`` (kW/Hz): load damping: the load falls by ``D`` kW per Hz below nominal. A meter
  therefore reads ``P_load0 + D·Δf``.

For a constant imbalance ``ΔP = P_load0 − P_gen − P_storage`` the response is first order:
``Δf(t) = Δf_ss + (Δf(0) − Δf_ss)·exp(−t/τ)`` with ``Δf_ss = −ΔP/D`` and
``τ = 2H·S_base/(f0·D)`` (in per unit, ``D_pu = D·f0/S_base``: ``τ = 2H/D_pu``). The model
integrates at a fixed step (10 ms by default) with that exact solution over each step,
inputs held for the step, so it matches the analytic response to rounding; with ``D = 0``
the frequency ramps at ``f0·ΔP/(2H·S_base)`` Hz/s.

:class:`GridModel` is pure and deterministic (a seed for the noise); :class:`GridSim` runs
it in real time against an MQTT broker: it publishes the frequency on
``gridshare/<site>/grid/frequency`` (JSON ``{"ts", "hz"}``, 10–100 Hz) and the area's net
load as a feeder meter (``{"ts", "kw"}``: ``P_load0 + D·Δf − P_storage``: the storage is
behind the area's meters), and reads each storage unit's power (``{"ts", "kw"}``, + =
charging, as the battery setpoints) and optional measured-load topics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.sim.grid")


@dataclass(frozen=True, slots=True)
class GridParams:
    nominal_hz: float = 50.0
    inertia_s: float = 5.0
    """H, seconds."""
    base_kw: float = 1000.0
    """S_base, kW."""
    damping_kw_per_hz: float = 100.0
    """D, kW/Hz."""
    step_s: float = 0.01
    noise_kw: float = 0.0
    """Standard deviation of a random load term, redrawn every step (seeded)."""

    def __post_init__(self) -> None:
        if not (self.inertia_s > 0 and self.base_kw > 0 and self.nominal_hz > 0
                and self.step_s > 0 and self.damping_kw_per_hz >= 0 and self.noise_kw >= 0):
            raise ValueError("grid: H, S_base, f0 and the step must be > 0; D and noise >= 0")

    @property
    def time_constant_s(self) -> float:
        """τ = 2H·S_base/(f0·D) (inf without damping)."""
        if self.damping_kw_per_hz == 0:
            return math.inf
        return 2 * self.inertia_s * self.base_kw / (self.nominal_hz * self.damping_kw_per_hz)


@dataclass(slots=True)
class GridModel:
    """The area's state, advanced in fixed steps."""

    params: GridParams
    scheduled_kw: float
    seed: int = 0
    t: float = 0.0
    """Model seconds since the start."""
    delta_hz: float = 0.0
    loads: dict[str, float] = field(default_factory=dict)
    """Measured loads at nominal frequency, kW, by name."""
    storage: dict[str, float] = field(default_factory=dict)
    """Storage units' power, kW, + = discharging into the area."""
    trips: list[tuple[float, float]] = field(default_factory=list)
    """(at s, kW of generation lost)."""
    steps: list[tuple[float, float]] = field(default_factory=list)
    """(at s, kW of load added)."""
    _rng: random.Random = field(init=False)
    _noise: float = 0.0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def hz(self) -> float:
        return self.params.nominal_hz + self.delta_hz

    def trip(self, at_s: float, kw: float) -> None:
        """Lose ``kw`` of generation at model time ``at_s``."""
        self.trips.append((at_s, kw))

    def load_step(self, at_s: float, kw: float) -> None:
        """Add ``kw`` of load at model time ``at_s``."""
        self.steps.append((at_s, kw))

    def set_load(self, name: str, kw: float) -> None:
        if math.isfinite(kw):
            self.loads[name] = kw

    def set_storage(self, name: str, discharge_kw: float) -> None:
        if math.isfinite(discharge_kw):
            self.storage[name] = discharge_kw

    def generation_kw(self, t: float | None = None) -> float:
        at = self.t if t is None else t
        return self.scheduled_kw - sum(kw for when, kw in self.trips if when <= at)

    def load0_kw(self, t: float | None = None) -> float:
        """Load at nominal frequency (measured + steps + noise)."""
        at = self.t if t is None else t
        return sum(self.loads.values()) + sum(kw for when, kw in self.steps if when <= at) \
            + self._noise

    def load_kw(self) -> float:
        """What a meter of the whole load reads: with load damping."""
        return self.load0_kw() + self.params.damping_kw_per_hz * self.delta_hz

    def net_load_kw(self) -> float:
        """The area's feeder meters: load less what the storage behind them gives."""
        return self.load_kw() - sum(self.storage.values())

    def imbalance_kw(self) -> float:
        """ΔP = P_load0 − P_gen − P_storage (> 0: short of generation)."""
        return self.load0_kw() - self.generation_kw() - sum(self.storage.values())

    def step(self) -> None:
        """One fixed step; inputs held over it (the exact first-order solution)."""
        p = self.params
        dt = p.step_s
        if p.noise_kw > 0:
            self._noise = self._rng.gauss(0.0, p.noise_kw)
        surplus = -self.imbalance_kw()
        if p.damping_kw_per_hz > 0:
            steady = surplus / p.damping_kw_per_hz
            self.delta_hz = steady + (self.delta_hz - steady) * math.exp(
                -dt / p.time_constant_s)
        else:
            self.delta_hz += p.nominal_hz * surplus / (2 * p.inertia_s * p.base_kw) * dt
        self.t = round(self.t + dt, 9)

    def advance(self, seconds: float) -> None:
        for _ in range(round(seconds / self.params.step_s)):
            self.step()


def _kw(payload: bytes) -> float | None:
    """``{"kw": x}`` (or ``{"power_kw": x}``) or a plain number; None if neither."""
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=lambda _: None)
    except (ValueError, UnicodeDecodeError):
        return None
    value = doc.get("kw", doc.get("power_kw")) if isinstance(doc, dict) else doc
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class GridSim:
    """The model in real time on an MQTT broker (see the module docstring)."""

    def __init__(self, model: GridModel, broker_host: str, broker_port: int, *, site: str,
                 storage_topics: Mapping[str, str] | None = None,
                 load_topics: Mapping[str, str] | None = None,
                 frequency_topic: str | None = None, meter_topic: str | None = None,
                 publish_hz: float = 20.0, meter_period_s: float = 0.5,
                 load_readers: Mapping[str, Callable[[], float]] | None = None) -> None:
        """``storage_topics``: unit -> its power topic (+ = charging); ``load_topics``:
        name -> a measured load's topic (kW); ``load_readers``: name -> a function giving
        a simulated load's kW now (e.g. :func:`chargers_kw` of a SimSite), read every
        meter period."""
        if not 10.0 <= publish_hz <= 100.0:
            raise ValueError("publish_hz: 10 to 100")
        self.model = model
        self.host, self.port = broker_host, broker_port
        self.frequency_topic = frequency_topic or f"gridshare/{site}/grid/frequency"
        self.meter_topic = meter_topic or f"gridshare/{site}/grid/area_load"
        self.storage_topics = dict(storage_topics or {})
        self.load_topics = dict(load_topics or {})
        self.load_readers = dict(load_readers or {})
        self.publish_hz = publish_hz
        self.meter_period_s = meter_period_s
        self.paused_meter = False
        """True: the feeder meter stops publishing (a stalled input, for tests)."""
        self.published = 0
        self.history: list[tuple[float, float]] = []
        """(model s, Hz) at each publication."""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gridshare-sim-grid")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

    async def _run(self) -> None:
        import aiomqtt

        by_topic = {t: ("storage", n) for n, t in self.storage_topics.items()}
        by_topic.update({t: ("load", n) for n, t in self.load_topics.items()})
        async with aiomqtt.Client(self.host, self.port,
                                  identifier=f"gridsim-{id(self)}") as client:
            for topic in by_topic:
                await client.subscribe(topic)

            async def read() -> None:
                async for message in client.messages:
                    kind, name = by_topic.get(message.topic.value, ("", ""))
                    payload = message.payload
                    kw = _kw(payload if isinstance(payload, bytes) else str(payload).encode())
                    if kw is None:
                        continue
                    if kind == "storage":
                        self.model.set_storage(name, -kw)  # + = charging on the topic
                    elif kind == "load":
                        self.model.set_load(name, kw)

            reader = asyncio.create_task(read())
            try:
                await self._clock(client)
            finally:
                await cancel_and_wait([reader])

    async def _clock(self, client: object) -> None:
        model = self.model
        step = model.params.step_s
        period = 1.0 / self.publish_hz
        start = time.monotonic() - model.t
        next_pub = next_meter = time.monotonic()
        while True:
            now = time.monotonic()
            while model.t + step <= now - start:
                model.step()
            ts = datetime.now(UTC).isoformat()
            if now >= next_pub:
                next_pub += period
                await client.publish(self.frequency_topic,  # type: ignore[attr-defined]
                                     json.dumps({"ts": ts, "hz": round(model.hz, 6)}))
                self.published += 1
                self.history.append((model.t, model.hz))
            if now >= next_meter:
                next_meter += self.meter_period_s
                for name, read in self.load_readers.items():
                    try:
                        model.set_load(name, float(read()))
                    except Exception:  # a simulated load that fails is left as it was
                        log.exception("grid: reading load %s failed", name)
                if not self.paused_meter:
                    await client.publish(self.meter_topic,  # type: ignore[attr-defined]
                                         json.dumps({"ts": ts,
                                                     "kw": round(model.net_load_kw(), 4)}))
            await asyncio.sleep(max(min(next_pub, next_meter) - time.monotonic(), 0.001))


def chargers_kw(site: Any, voltage: float = 230.0) -> Callable[[], float]:
    """A load reader for a :class:`~gridshare.sim.site.SimSite`: what its simulated
    chargers draw now, kW (the sum of every connector's phase currents × voltage)."""

    def read() -> float:
        total = 0.0
        for charger in site.chargers.values():
            for n in range(1, charger.connectors + 1):
                total += sum(charger.drawn_a(n))
        return total * voltage / 1000.0

    return read


def units_power_topics(units: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Unit id -> its power topic, ``<setpoint_topic>/power`` (what sim.battery publishes)."""
    return {uid: f"{topic}/power" for uid, topic in units}
