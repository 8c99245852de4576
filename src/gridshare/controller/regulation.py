"""Area regulation from the meters: the area's load against its scheduled generation, each
step, becomes a power target for the storage units (docs/regulation.md).

Each ``step_s`` the service reads the area's net load (an :class:`AreaLoadSource`: MQTT
feeder/substation meters, the live zone aggregation, or an AMI feeder/substation/region of
the telemetry ingest, :class:`TelemetryAreaLoad`), the last frequency sample, and steps the
pure regulator
(:mod:`gridshare.core.regulation`). The correction (kW, + = discharge) is shared across the
batteries of ``frequency_response.units`` in proportion to their limits (a battery at its
SoC floor is not discharged, a full one not charged; one whose SoC is unknown is not
discharged: fail closed) and published on each one's ``setpoint_topic`` with the frequency
service's JSON shape ``{"ts", "setpoint_kw", "valid_s", "source": "regulation"}``
(``setpoint_kw`` + = charging).

Deadline: inputs older than ``deadline_s``, a step later than ``deadline_s`` after the
previous one, or a step whose own computation took longer than ``deadline_s`` hold the safe
state: every unit gets ``setpoint_kw: 0`` and an alarm says why (log, :meth:`alarms`, the
store's alarm records, kind ``regulation``), once per episode; regulating again clears it.
A unit that hears nothing falls back by itself when ``valid_s`` runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from gridshare.clock import Clock
from gridshare.controller.audit import AlarmRecord
from gridshare.core.regulation import RegulationSettings, RegulationStep, Regulator
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    import aiomqtt

    from gridshare.config import (
        FrequencyResponseSpec,
        FrequencyUnitSpec,
        MeterSpec,
        MqttSpec,
        RegulationSpec,
    )
    from gridshare.controller.aggregate import LoadService
    from gridshare.controller.telemetry import TelemetryService

log = logging.getLogger("gridshare.regulation")

SOURCE = "regulation"
MAX_ALARMS = 100


class AreaLoadSource(Protocol):
    """Where an area's net load comes from (the feeder/substation aggregation, the zone
    aggregation, MQTT meters)."""

    def area_load_kw(self, area: str) -> tuple[float, float]:
        """(kW, age in s of the data behind it); LookupError when there is none."""
        ...


class AlarmSink(Protocol):
    def record_alarm(self, record: AlarmRecord) -> None: ...


def _payload_number(payload: bytes, *keys: str) -> float | None:
    """A finite number: a JSON number, or the first of ``keys`` in a JSON object."""
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=lambda _: None)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = doc
    if isinstance(doc, dict):
        value = next((doc[k] for k in keys if k in doc), None)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class MqttAreaLoad:
    """An area's net load from its meters' MQTT topics (``{"ts", "kw"}`` or a number of
    kW): the sum of each topic's last value, as old as the oldest of them."""

    def __init__(self, areas: Mapping[str, Iterable[str]], clock: Clock) -> None:
        self.areas = {a: tuple(t) for a, t in areas.items()}
        self.clock = clock
        self._last: dict[str, tuple[float, datetime]] = {}
        self.rejected = 0

    @property
    def topics(self) -> set[str]:
        return {t for ts in self.areas.values() for t in ts}

    def on_message(self, topic: str, payload: bytes) -> None:
        kw = _payload_number(payload, "kw", "power_kw")
        if kw is None:
            self.rejected += 1
            log.warning("regulation: %s: not a kW reading, ignored", topic)
            return
        self._last[topic] = (kw, self.clock.now())

    def area_load_kw(self, area: str) -> tuple[float, float]:
        topics = self.areas.get(area)
        if topics is None:
            raise LookupError(f"unknown area {area!r}")
        now = self.clock.now()
        total, age = 0.0, 0.0
        for topic in topics:
            found = self._last.get(topic)
            if found is None:
                raise LookupError(f"no reading yet on {topic}")
            total += found[0]
            age = max(age, (now - found[1]).total_seconds())
        return total, age


class ZoneLoad:
    """A zone of the live load aggregation as an area. Its age is 0: the aggregation
    holds a meter value up to 5 minutes and does not say how old it is."""

    def __init__(self, loads: LoadService) -> None:
        self.loads = loads

    def area_load_kw(self, area: str) -> tuple[float, float]:
        try:
            return self.loads.zone_kw(area), 0.0
        except Exception as exc:
            raise LookupError(str(exc)) from exc


class TelemetryAreaLoad:
    """An AMI feeder, substation or region as an area: the demand of the newest *closed*
    window of the telemetry ingest (docs/telemetry.md) in which at least ``min_reporting``
    of the area's meters reported, completed for the rest: a missing meter counted at its
    demand in the newest earlier window it reported in (a battery's meter near 0 kW among
    10 kW loads must not count as 10 kW), one never seen yet at the others' mean. Its age
    is now minus that window's end. Carried meters never count as reporting: a stalled
    stream still ages out.

    The open window is never used: it holds only the meters that reported so far, and
    would read as a load drop. A window in which too few meters reported (the stream
    stalling part way through it, a feeder losing its backhaul) is skipped, so the
    value does not jump; when the stream stops, the age grows until the deadline holds the
    safe state."""

    def __init__(self, telemetry: TelemetryService, level: str,
                 min_reporting: float = 0.9) -> None:
        self.telemetry = telemetry
        self.level = level
        self.min_reporting = min_reporting
        self.skipped = 0
        """Windows passed over because too few meters reported in them."""

    def area_load_kw(self, area: str) -> tuple[float, float]:
        kept = self.telemetry.recent.get((self.level, area))
        now = self.telemetry.clock.now().timestamp()
        for w in reversed(kept or ()):
            if w.meters_reporting >= math.ceil(self.min_reporting * w.meters_expected - 1e-9):
                unknown = w.meters_expected - w.meters_reporting - w.meters_carried
                mean = w.demand_kw / w.meters_reporting
                return (w.demand_kw + w.carried_kw + unknown * mean,
                        max(0.0, now - w.window_end))
            self.skipped += 1
        if kept:
            raise LookupError(f"{self.level} {area}: no closed demand window with "
                              f"{self.min_reporting:.0%} of its meters reporting")
        raise LookupError(f"{self.level} {area}: no closed demand window yet")


def area_source(spec: RegulationSpec, *, zone_areas: Iterable[str | None],
                ami_meters: Iterable[MeterSpec], clock: Clock,
                loads: LoadService | None, telemetry: TelemetryService | None
                ) -> AreaLoadSource:
    """The area load source a ``regulation:`` block asks for: its ``load_topics`` on
    MQTT, a zone of the live load aggregation, or an AMI feeder/substation/region of the
    telemetry ingest."""
    from gridshare.config import regulation_area_level

    if spec.load_topics is not None:
        return MqttAreaLoad({spec.area: spec.load_topics}, clock)
    level = regulation_area_level(spec, zone_areas, ami_meters)
    if level in (None, "zone"):
        if loads is None:
            raise ValueError(f"regulation: area {spec.area!r} needs the load aggregation")
        return ZoneLoad(loads)
    if telemetry is None:
        raise ValueError(f"regulation: {level} {spec.area!r} needs the telemetry ingest")
    return TelemetryAreaLoad(telemetry, level, spec.min_reporting)


@dataclass(frozen=True, slots=True)
class Battery:
    id: str
    setpoint_topic: str
    soc_topic: str | None
    max_discharge_kw: float
    max_charge_kw: float
    min_soc: float

    @classmethod
    def of(cls, unit: FrequencyUnitSpec) -> Battery:
        assert unit.battery is not None and unit.setpoint_topic is not None
        floor = max(unit.min_soc, 100.0 - unit.max_dod)
        return cls(unit.battery, unit.setpoint_topic, unit.soc_topic, unit.max_discharge_kw,
                   unit.max_charge_kw, floor)


def share(correction_kw: float, units: Iterable[Battery],
          soc: Mapping[str, float]) -> dict[str, float]:
    """Each unit's part of the correction (+ = discharge), in proportion to its limit
    among the units able to move that way, none above its limit."""
    units = list(units)
    if correction_kw > 0:
        able = {u.id: u.max_discharge_kw for u in units
                if u.id in soc and soc[u.id] > u.min_soc}
    elif correction_kw < 0:
        able = {u.id: u.max_charge_kw for u in units if soc.get(u.id, 0.0) < 100.0}
    else:
        able = {}
    total = sum(able.values())
    out = dict.fromkeys((u.id for u in units), 0.0)
    if total <= 0:
        return out
    for uid, cap in able.items():
        out[uid] = math.copysign(min(abs(correction_kw) * cap / total, cap), correction_kw)
    return out


Publish = Callable[[str, str], None]


class RegulationService:
    """Area regulation for one site (``app.regulation``)."""

    def __init__(self, spec: RegulationSpec, units: Iterable[Battery],
                 load_source: AreaLoadSource, clock: Clock, *, site: str,
                 mqtt: MqttSpec | None = None, frequency_topic: str | None = None,
                 store: AlarmSink | None = None, publish: Publish | None = None,
                 run_worker: bool = True) -> None:
        """``publish``: where setpoints go (default: the ``mqtt`` broker); ``run_worker``
        False: tests call :meth:`step` on a fake clock."""
        self.spec = spec
        self.units = tuple(units)
        self.load_source = load_source
        self.clock = clock
        self.mqtt = mqtt
        self.frequency_topic = (frequency_topic or spec.frequency_topic or
                                f"gridshare/{site}/grid/frequency").replace("<site>", site)
        self._store = store
        self._publish_to = publish
        self._run_worker = run_worker
        self.settings = RegulationSettings(
            scheduled_kw=spec.scheduled_kw, bias_kw_per_hz=spec.bias_kw_per_hz, kp=spec.kp,
            ki=spec.ki, max_discharge_kw=sum(u.max_discharge_kw for u in self.units),
            max_charge_kw=sum(u.max_charge_kw for u in self.units),
            nominal_hz=float(spec.nominal_hz or 50), deadline_s=spec.deadline_s)
        self.regulator = Regulator(self.settings)
        self._hz: tuple[float, datetime] | None = None
        self.soc: dict[str, float] = {}
        self._soc_topics = {u.soc_topic: u.id for u in self.units if u.soc_topic}
        self._last_step: datetime | None = None
        self.last: RegulationStep | None = None
        self.last_load: tuple[float | None, float | None] = (None, None)
        """The last step's area load (kW) and its age (s); None: there was none."""
        self.holding: str | None = None
        self.setpoints: dict[str, float] = {}
        self._alarms: deque[dict[str, Any]] = deque(maxlen=MAX_ALARMS)
        self._outbox: asyncio.Queue[tuple[str, str]] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.counters: Counter[str] = Counter()
        self.connected = False
        self.connects = 0

    # --- inputs ---------------------------------------------------------------------------

    def on_frequency(self, payload: bytes) -> None:
        hz = _payload_number(payload, "hz")
        if hz is None or not 0 < hz < 1000:
            self.counters["bad_frequency"] += 1
            return
        self._hz = (hz, self.clock.now())

    def on_soc(self, unit: str, payload: bytes) -> None:
        soc = _payload_number(payload, "soc", "soc_percent")
        if soc is None or not 0 <= soc <= 100:
            self.counters["bad_soc"] += 1
            return
        self.soc[unit] = soc

    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == self.frequency_topic:
            self.on_frequency(payload)
        elif topic in self._soc_topics:
            self.on_soc(self._soc_topics[topic], payload)
        elif isinstance(self.load_source, MqttAreaLoad) and topic in self.load_source.topics:
            self.load_source.on_message(topic, payload)

    # --- the step -------------------------------------------------------------------------

    def step(self, now: datetime | None = None) -> RegulationStep:
        """One step: the correction, shared and published (or the safe state + alarm)."""
        at = now or self.clock.now()
        started = time.perf_counter()
        dt = self.spec.step_s if self._last_step is None else \
            (at - self._last_step).total_seconds()
        self._last_step = at
        try:
            load_kw: float | None
            load_kw, load_age = self.load_source.area_load_kw(self.spec.area)
        except LookupError as exc:
            load_kw, load_age = None, None
            self.counters["no_load"] += 1
            why = str(exc)
        else:
            why = ""
        self.last_load = (load_kw, load_age)
        hz, hz_age = (None, None) if self._hz is None else \
            (self._hz[0], (at - self._hz[1]).total_seconds())
        result = self.regulator.step(load_kw=load_kw, load_age_s=load_age, hz=hz,
                                     hz_age_s=hz_age, dt_s=dt)
        if result.hold and why and result.reason == "no area load":
            result = RegulationStep(0.0, None, True, f"no area load: {why}")
        took = time.perf_counter() - started
        if not result.hold and took > self.spec.deadline_s:
            self.regulator.reset()
            result = RegulationStep(0.0, result.ace_kw, True,
                                    f"step took {took:.2f} s (deadline "
                                    f"{self.spec.deadline_s:g} s)")
        self.last = result
        self.counters["steps"] += 1
        if result.hold:
            self._safe(at, result.reason or "hold")
        else:
            if self.holding is not None:
                self._cleared(at)
            self._dispatch(at, result.correction_kw)
        return result

    def _dispatch(self, at: datetime, correction_kw: float) -> None:
        parts = share(correction_kw, self.units, self.soc)
        for unit in self.units:
            self._send(at, unit, -parts[unit.id])

    def _safe(self, at: datetime, reason: str) -> None:
        for unit in self.units:
            self._send(at, unit, 0.0)
        if self.holding is None:
            self.holding = reason
            self.counters["holds"] += 1
            self._alarm(at, f"regulation holds the safe state: {reason}")

    def _send(self, at: datetime, unit: Battery, setpoint_kw: float) -> None:
        value = round(setpoint_kw, 4) + 0.0
        self.setpoints[unit.id] = value
        body = json.dumps({"ts": at.isoformat(), "setpoint_kw": value,
                           "valid_s": self.spec.valid_s, "source": SOURCE})
        self.counters["published"] += 1
        if self._publish_to is not None:
            self._publish_to(unit.setpoint_topic, body)
        elif self._outbox is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._outbox.put_nowait((unit.setpoint_topic, body))

    def _alarm(self, at: datetime, message: str) -> None:
        self._alarms.append({"at": at.isoformat(), "kind": "regulation", "message": message})
        log.warning("REGULATION ALARM: %s", message)
        if self._store is not None:
            self._store.record_alarm(AlarmRecord(at, "regulation", self.spec.area, None,
                                                 0.0, 0.0, message))

    def _cleared(self, at: datetime) -> None:
        message = f"regulation resumed (was holding: {self.holding})"
        self.holding = None
        log.info("%s", message)
        if self._store is not None:
            self._store.record_alarm(AlarmRecord(at, "regulation", self.spec.area, None,
                                                 0.0, 0.0, f"cleared: {message}",
                                                 cleared=True))

    def alarms(self) -> list[dict[str, Any]]:
        return list(self._alarms)

    def status(self) -> dict[str, Any]:
        last = self.last
        load_kw, load_age = self.last_load
        age = round(load_age, 3) if load_age is not None and math.isfinite(load_age) \
            else None
        return {"area": self.spec.area, "source": type(self.load_source).__name__,
                "load_kw": load_kw, "load_age_s": age,
                "holding": self.holding,
                "ace_kw": None if last is None else last.ace_kw,
                "correction_kw": None if last is None else last.correction_kw,
                "setpoints": dict(self.setpoints), "alarms": self.alarms()}

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        if self._publish_to is None and self.mqtt is not None:
            self._outbox = asyncio.Queue(maxsize=1000)
            self._tasks.append(asyncio.create_task(self._link(), name="gridshare-reg-mqtt"))
        if self._run_worker:
            self._tasks.append(asyncio.create_task(self._work(), name="gridshare-regulation"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks, swallow_errors=True)
        self._tasks.clear()

    async def _work(self) -> None:
        while True:
            try:
                self.step()
            except Exception:
                self.counters["step_errors"] += 1
                log.exception("regulation step failed")
            await asyncio.sleep(self.spec.step_s)

    async def _link(self) -> None:
        from gridshare.adapters.meters.mqtt import MqttLink, keep_connected

        assert self.mqtt is not None and self._outbox is not None
        topics = {self.frequency_topic, *self._soc_topics}
        if isinstance(self.load_source, MqttAreaLoad):
            topics |= self.load_source.topics
        link = MqttLink(self.mqtt, sorted(topics), self.on_message, lambda why: None)
        outbox = self._outbox

        async def prepare(client: aiomqtt.Client) -> None:
            for topic in sorted(topics):
                await client.subscribe(topic)

        async def serve(client: aiomqtt.Client) -> None:
            async def read() -> None:
                async for message in client.messages:
                    payload = message.payload
                    if isinstance(payload, bytes) and not message.retain:
                        self.on_message(message.topic.value, payload)

            reader = asyncio.create_task(read())
            try:
                while not reader.done():
                    topic, body = await outbox.get()
                    await client.publish(topic, body)
            finally:
                await cancel_and_wait([reader], swallow_errors=True)

        await keep_connected(self, link._client, prepare, serve,
                             label=f"regulation mqtt {link.address}")


def batteries(frequency_units: Iterable[FrequencyUnitSpec],
              chosen: Iterable[str] | None) -> list[Battery]:
    """The batteries of ``frequency_response.units`` to dispatch (``regulation.units``,
    or all of them)."""
    wanted = set(chosen) if chosen is not None else None
    return [Battery.of(u) for u in frequency_units
            if u.battery is not None and (wanted is None or u.battery in wanted)]


def frequency_without_regulated(frequency: FrequencyResponseSpec,
                                regulation: RegulationSpec | None
                                ) -> FrequencyResponseSpec | None:
    """One master per battery: the frequency response without the batteries regulation
    dispatches (it would renew its own setpoint, 0 kW inside the dead band, on the same
    topic every few seconds); None when no unit is left to it."""
    if regulation is None:
        return frequency
    taken = set(regulation.units) if regulation.units is not None else \
        {u.battery for u in frequency.units if u.battery is not None}
    left = [u for u in frequency.units if u.battery is None or u.battery not in taken]
    if len(left) == len(frequency.units):
        return frequency
    if not left:
        log.info("frequency response: every unit is dispatched by regulation; none left")
        return None
    return frequency.model_copy(update={"units": left})
