"""The demand-response service beside the controller: signals in, connector caps out,
confirmed by the meters.

It keeps the event book (persisted in the store, loaded at start: events survive a
restart) and, every cycle — on each signal, on the zone's meter values and at least once a
second while an event is scheduled or in force — works out each zone's curtailment:

1. the zone's *baseline* is what its stations drew (their MeterValues) when its
   curtailment began; the split is made from it and not from the live draw, which is
   already curtailed (splitting that again every cycle would curtail again and again);
2. the pure core splits the target (plus what escalations added) across the stations by
   the site's policy and turns each station's allowance into connector caps in kW, then A;
3. the caps of every zone go to the controller as ONE ``ConnectorCapsChanged`` (source
   ``demand_response``) when they change: a cap is one more limit, the tightest wins, a
   lowered one is sent first, and lifting them (the event over) ramps back like any raise;
4. the zone's live draw is fed to each in-force event's compliance tracker; when the
   target is not met in time, it sheds the shortfall on top (the next stations by the same
   policy) and raises an alert. A station whose meter shows it above its cap at that
   moment is not counted on any more: it keeps the cap it ignores (the controller pauses it
   as a violator too) and the others shed what it was asked to.

Loads are kW from each connector's last MeterValues (currents x voltage, or its power); a car's
connector with no reading yet counts at what it may draw (its worst case in the command
ledger): never at 0, so no reduction is assumed that no meter saw. (Live load per station
and zone for the API is :mod:`gridshare.controller.aggregate`'s.)

Alerts (an event not met; a station above its ``contract_max_kw``) go to the log once per
condition, to :meth:`DrService.alerts`, to the ``on_alert`` callbacks (MQTT topic, SSE)
and to the store's alarm records. Nothing here decides without the injected clock; the
arithmetic is the pure core's (:mod:`gridshare.core.dr`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from gridshare.bus import Bus, Subscription
from gridshare.clock import Clock
from gridshare.controller.audit import AlarmRecord
from gridshare.controller.caps import CapPublisher
from gridshare.core.dr import (
    ComplianceRecord,
    ComplianceTracker,
    ConnectorLoad,
    CurtailPolicy,
    DrEvent,
    DrSignal,
    Escalation,
    EventBook,
    EventState,
    StationLoad,
    Submitted,
    connector_caps,
    split_reduction,
    station_kw_to_amps,
)
from gridshare.core.dr.signals import iso, parse_time
from gridshare.core.snapshot import PhaseCurrents
from gridshare.core.topology import Charger, ConnectorKey, Topology, amps_to_kw
from gridshare.events import (
    ChargerOffline,
    MeterReading,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    from gridshare.config import DemandResponseSpec

log = logging.getLogger("gridshare.dr")

SOURCE = "demand_response"
"""The limit source of the caps (the controller folds every source's caps: tightest wins)."""
MAX_ALERTS = 200
PERSIST_EVERY_S = 10.0
"""An active event's record (its samples) is written at most this often, and at once on
every change of state (start, met, escalation, end)."""
WAKE_ON = (MeterReading, StatusChanged, SessionStarted, SessionStopped, ChargerOffline)
"""Events about a zone's station that call for a cycle (a new draw to check)."""

AlertCallback = Callable[[dict[str, Any]], None]


class StateView(Protocol):
    """What the service reads of the controller's live state (``SiteState``)."""

    def measured_a(self, key: ConnectorKey, now: datetime) -> PhaseCurrents | None: ...

    def active(self, key: ConnectorKey) -> bool: ...

    def believed_a(self, key: ConnectorKey, now: datetime | None = None) -> float: ...

    def priority_of(self, charger_id: str) -> int: ...


class DrStore(Protocol):
    """Where events, their records and the alerts are kept (``gridshare.store.Store``)."""

    def record_dr_event(self, row: dict[str, Any]) -> None: ...

    def record_alarm(self, record: AlarmRecord) -> None: ...

    async def dr_events(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Baseline:
    """What a zone's connectors drew (kW) when its curtailment began."""

    at: datetime
    loads: Mapping[ConnectorKey, float]

    @property
    def kw(self) -> float:
        return sum(self.loads.values())

    def to_json(self) -> dict[str, Any]:
        return {"at": iso(self.at),
                "loads": [[k[0], k[1], kw] for k, kw in sorted(self.loads.items())]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Baseline:
        """ValueError when ``data`` is not a baseline :meth:`to_json` wrote."""
        try:
            loads = {(str(c), int(n)): float(kw) for c, n, kw in data["loads"]}
            return cls(parse_time(data["at"], "at"), loads)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a DR baseline: {exc}") from exc


def connector_kw(amps: PhaseCurrents, voltage: float) -> float:
    """kW of a connector drawing ``amps`` on the site's phases (phase-to-neutral volts)."""
    return (amps[0] + amps[1] + amps[2]) * voltage / 1000.0


def _cap_amps(charger: Charger, kw: float, voltage: float) -> float:
    """A kW cap in A per phase, rounded down to 0.01 A (never above the kW)."""
    if kw <= 0:
        return 0.0
    return math.floor(station_kw_to_amps(charger, kw, voltage) * 100 + 1e-6) / 100


class DrService:
    """Demand response for one site. Built by the app when the site declares zones."""

    def __init__(self, topology: Topology, settings: DemandResponseSpec, bus: Bus | None,
                 clock: Clock, *, store: DrStore | None = None, state_view: StateView,
                 tick_s: float | None = 1.0, debounce_s: float = 0.05) -> None:
        """``tick_s``: the cycle period while an event is scheduled or in force (None:
        cycles only on the bus's events and signals; tests move a fake clock and call
        :meth:`cycle`); ``debounce_s``: a burst of meter values becomes one cycle."""
        self.topology = topology
        self.settings = settings
        self.clock = clock
        self.tick_s = tick_s
        self.debounce_s = debounce_s
        self.zones: tuple[str, ...] = tuple(topology.zones)
        """Declared zone ids (signals for any other are refused)."""
        self.policy = CurtailPolicy(settings.policy)
        self._bus = bus
        self._store = store
        self._state = state_view
        self._voltage = topology.voltage
        self._zone_keys: dict[str, tuple[ConnectorKey, ...]] = {
            zone: tuple(c.key for cid in topology.zone_chargers(zone)
                        for c in topology.chargers[cid].connectors)
            for zone in self.zones}
        self._watched = {cid for cid, ch in topology.chargers.items()
                         if ch.zone is not None or ch.contract_max_kw is not None}
        self._book = EventBook()
        self._trackers: dict[str, ComplianceTracker] = {}
        """Events started and not yet finished."""
        self._records: dict[str, ComplianceRecord] = {}
        """Finished events' records."""
        self._baselines: dict[str, Baseline] = {}
        """Zone -> its baseline while it is curtailed."""
        self._event_baselines: dict[str, Baseline] = {}
        """Signal id -> the baseline it started from (persisted with it)."""
        self._persisted: dict[str, datetime] = {}
        self._unfollowed: dict[str, dict[str, tuple[dict[ConnectorKey, float], float]]] = {}
        """Zone -> station -> (the caps it ignores, the kW it was asked to shed): stations
        found above their caps at an escalation, no longer counted on."""
        self._alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ALERTS)
        self._listeners: list[AlertCallback] = []
        self._over_contract: set[str] = set()
        self._exhausted: set[str] = set()
        """Events whose last not-met alert found nothing more to shed (said once)."""
        self._alerted: set[str] = set()
        """Events in force that raised a not-met alert (their verdict needs no other)."""
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Subscription | None = None
        self.counters: Counter[str] = Counter()
        self.last_cycle_at: datetime | None = None
        self._publisher = CapPublisher(SOURCE, bus, self.counters, logger=log,
                                       log_format="DR caps: %s")

    # --- the interface of the API, MQTT, OpenADR and the CLI ------------------------------

    def submit(self, signal: DrSignal) -> tuple[Submitted, DrEvent]:
        """Store a validated signal and act on it at once (the caps go out before this
        returns). The same signal again is a redelivery (nothing changes); another one
        under a known id raises :class:`~gridshare.core.dr.SignalConflict` and nothing
        changes. A signal for a zone the site does not declare is a ValueError."""
        if signal.zone_id not in self.zones:
            raise ValueError(f"zone_id: unknown zone {signal.zone_id!r} "
                             f"(declared: {', '.join(self.zones) or 'none'})")
        now = self.clock.now()
        zone_events = self._book.events(signal.zone_id)
        ended_before = {e.signal.signal_id: e.ended_at for e in zone_events}
        outcome, event = self._book.submit(signal, now)
        if outcome is Submitted.REDELIVERED:
            self.counters["redelivered"] += 1
            return outcome, event
        self.counters["signals"] += 1
        log.info("DR signal %s (%s): %s zone %s %.1f kW, %s to %s, priority %d",
                 signal.signal_id, signal.source, signal.signal_type.value,
                 signal.zone_id, signal.target_reduction_kw, iso(signal.start_ts),
                 iso(signal.end_ts), int(signal.priority))
        self._persist(event, now)
        for other in zone_events:
            if other.ended_at != ended_before[other.signal.signal_id]:
                log.info("DR event %s ends at %s (RESTORE %s)", other.signal.signal_id,
                         iso(other.ends_at()), signal.signal_id)
                self._persist(other, now)
        try:
            self.cycle(now)
        except Exception:
            # Stored is stored: the worker's next cycle acts on it (and logs again).
            self.counters["cycle_errors"] += 1
            log.exception("DR cycle after signal %s failed", signal.signal_id)
        self._wake.set()  # the loop's next wake-up may have moved
        return outcome, event

    def events(self, zone: str | None = None) -> list[DrEvent]:
        """Stored events (RESTOREs too), by start time."""
        return self._book.events(zone)

    def get(self, signal_id: str) -> DrEvent | None:
        return self._book.get(signal_id)

    def record(self, signal_id: str) -> ComplianceRecord | None:
        """The event's compliance record (None until it started)."""
        tracker = self._trackers.get(signal_id)
        return tracker.record if tracker is not None else self._records.get(signal_id)

    def event_json(self, event: DrEvent) -> dict[str, Any]:
        """The API's representation of a stored event: its signal, ``id``, ``state``,
        ``target_kw``, ``ended_at`` and ``compliance`` (the record, or None)."""
        signal = event.signal
        record = self.record(signal.signal_id)
        return {**signal.to_json(), "source": signal.source, "id": signal.signal_id,
                "state": event.state(self.clock.now()).value,
                "target_kw": signal.target_reduction_kw,
                "target": signal.target_reduction_kw,
                "ended_at": None if event.ended_at is None else iso(event.ended_at),
                "compliance": None if record is None else record.to_json()}

    def alerts(self) -> list[dict[str, Any]]:
        """Recent alerts, oldest first: ``{at, kind, message, zone, station, signal_id,
        value_kw, limit_kw}`` (kind ``dr_not_met`` or ``contract``)."""
        return list(self._alerts)

    def on_alert(self, callback: AlertCallback) -> None:
        """Call ``callback(alert)`` with each new alert (quick; must not block)."""
        self._listeners.append(callback)

    @property
    def caps(self) -> dict[ConnectorKey, float]:
        """The caps last published, A per phase."""
        return dict(self._publisher.caps)

    @property
    def caps_published_at(self) -> datetime | None:
        """When the caps last changed (None: never)."""
        return self._publisher.published_at

    def baseline(self, zone: str) -> Baseline | None:
        return self._baselines.get(zone)

    def zone_load_kw(self, zone: str, now: datetime | None = None) -> float:
        """The zone's draw now, from its stations' meter values."""
        at = now or self.clock.now()
        return sum(self._connector_load(key, at) for key in self._zone_keys[zone])

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the stored events (active ones are resumed), subscribe, act at once."""
        if self._tasks:
            return
        await self._load()
        if self._bus is not None:
            self._subscription = self._bus.subscribe("dr")
            self._tasks.append(asyncio.create_task(self._consume(), name="gridshare-dr-events"))
        self._tasks.append(asyncio.create_task(self._work(), name="gridshare-dr"))
        self.cycle()

    async def stop(self) -> None:
        """Stop cycling; write every event's latest state (the store stops after us)."""
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        await cancel_and_wait(self._tasks, swallow_errors=True)
        self._tasks.clear()
        now = self.clock.now()
        for signal_id in self._trackers:
            event = self._book.get(signal_id)
            if event is not None:
                self._persist(event, now)

    async def _load(self) -> None:
        """The stored events, their baselines and records; a damaged row refuses the start
        with the row and what is wrong (never half-loaded)."""
        if self._store is None:
            return
        rows = await self._store.dr_events()
        if not rows:
            return
        signals: list[dict[str, Any]] = []
        baselines: dict[str, Baseline] = {}
        records: dict[str, ComplianceRecord] = {}
        for row in rows:
            signal_id = row.get("signal_id")
            try:
                data = json.loads(row["signal"])
                if not isinstance(data, dict):
                    raise ValueError("signal is not a JSON object")
                ended = row.get("ended_at")
                data["ended_at"] = None if ended is None else iso(ended)
                signals.append(data)
                if row.get("baseline"):
                    baselines[str(signal_id)] = Baseline.from_json(json.loads(row["baseline"]))
                if row.get("compliance"):
                    records[str(signal_id)] = ComplianceRecord.from_json(
                        json.loads(row["compliance"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"dr_events row {signal_id!r}: {exc}") from exc
        book = EventBook.from_json(signals)
        now = self.clock.now()
        self._book = book
        self._event_baselines.update(baselines)
        for signal_id, record in records.items():
            if record.finished_at is not None:
                self._records[signal_id] = record
            else:
                self._trackers[signal_id] = self._tracker_of(record)
        resumed = [s for s in self._trackers
                   if (e := book.get(s)) is not None and e.state(now) is EventState.ACTIVE]
        log.info("DR: %d events loaded, %d in force resumed%s", len(book), len(resumed),
                 f" ({', '.join(resumed)})" if resumed else "")

    def _tracker_of(self, record: ComplianceRecord) -> ComplianceTracker:
        return ComplianceTracker.from_record(
            record, confirm_within_s=self.settings.confirm_within,
            tolerance_kw=self.settings.tolerance_kw)

    async def _consume(self) -> None:
        assert self._subscription is not None
        async for event in self._subscription:
            if isinstance(event, WAKE_ON) and event.charger in self._watched:
                self._wake.set()

    async def _work(self) -> None:
        while True:
            delay = self._delay(self.clock.now())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            if self._wake.is_set() and self.debounce_s > 0:
                await asyncio.sleep(self.debounce_s)
            self._wake.clear()
            try:
                self.cycle()
            except Exception:
                # One bad cycle must not end demand response: log, count, go on.
                self.counters["cycle_errors"] += 1
                log.exception("DR cycle failed")
                await asyncio.sleep(self.tick_s or 1.0)

    def _delay(self, now: datetime) -> float | None:
        """Seconds until the next cycle is due by time alone (None: only events wake it)."""
        if self.tick_s is None:
            return None
        change = self._book.next_change(now)
        if not self._trackers and not self._baselines and change is None:
            return None
        delay = self.tick_s
        if change is not None:
            delay = min(delay, max(0.0, (change - now).total_seconds()) + 0.001)
        return delay

    # --- the cycle ------------------------------------------------------------------------

    def cycle(self, now: datetime | None = None) -> dict[ConnectorKey, float]:
        """One pass: contracts, each zone's demand, compliance, caps (published when they
        changed). Returns the caps (A per phase)."""
        at = now or self.clock.now()
        self.last_cycle_at = at
        self.counters["cycles"] += 1
        self._check_contracts(at)
        caps: dict[ConnectorKey, float] = {}
        for zone in self.zones:
            caps.update(self._zone_cycle(zone, at))
        self._finish_ended(at)
        self._publisher.publish(caps, at)
        return caps

    def _zone_cycle(self, zone: str, now: datetime) -> dict[ConnectorKey, float]:
        demand = self._book.zone_demand(zone, now)
        if demand is None:
            self._unfollowed.pop(zone, None)
            if self._baselines.pop(zone, None) is not None:
                log.info("DR zone %s: no event in force, caps lifted", zone)
            return {}
        baseline = self._baselines.get(zone)
        if baseline is None:
            baseline = self._restored_baseline(demand.events)
            if baseline is None:
                baseline = Baseline(now, {key: self._connector_load(key, now)
                                          for key in self._zone_keys[zone]})
            self._baselines[zone] = baseline
            log.info("DR zone %s: curtailment begins from %.1f kW", zone, baseline.kw)
        zone_kw = self.zone_load_kw(zone, now)
        extra = 0.0
        escalations: list[tuple[DrEvent, ComplianceTracker, Escalation]] = []
        for event in demand.events:
            signal_id = event.signal.signal_id
            tracker = self._trackers.get(signal_id)
            if tracker is None:
                tracker = self._trackers[signal_id] = ComplianceTracker(
                    signal_id, event.signal.target_reduction_kw,
                    confirm_within_s=self.settings.confirm_within,
                    tolerance_kw=self.settings.tolerance_kw)
            changed = False
            if not tracker.started:
                tracker.start(baseline.kw, now)
                self._event_baselines[signal_id] = baseline
                changed = True
                log.info("DR event %s active: zone %s from %.1f kW, target %.1f kW",
                         signal_id, zone, baseline.kw, event.signal.target_reduction_kw)
            was_met = tracker.record.met_at
            escalation = tracker.observe(zone_kw, now)
            if escalation is not None:
                escalations.append((event, tracker, escalation))
                changed = True
            elif was_met is None and tracker.record.met_at is not None:
                changed = True
                log.info("DR event %s met: zone %s fell %.1f kW of %.1f kW", signal_id, zone,
                         baseline.kw - zone_kw, event.signal.target_reduction_kw)
            extra = max(extra, tracker.record.extra_kw)
            self._persist(event, now, force=changed)
        if escalations:
            self._mark_unfollowed(zone, baseline, now)
        caps = self._zone_caps(zone, baseline, demand.target_kw + extra, shed=demand.shed)
        for event, tracker, escalation in escalations:
            self._not_met(event, tracker, escalation, zone_kw, caps)
        return caps

    def _mark_unfollowed(self, zone: str, baseline: Baseline, now: datetime) -> None:
        """At an escalation: the stations whose meters show them above their caps are not
        counted on any more. They keep the caps they ignore (the controller pauses them as
        violators too), and the reduction they were asked for is left to the others."""
        unfollowed = self._unfollowed.setdefault(zone, {})
        tolerance = self.settings.tolerance_kw
        published = self._publisher.caps
        for cid in self.topology.zone_chargers(zone):
            if cid in unfollowed:
                continue
            keys = [c.key for c in self.topology.chargers[cid].connectors]
            if not all(k in published for k in keys):
                continue
            charger = self.topology.chargers[cid]
            capped_kw = sum(amps_to_kw(charger, published[k], self._voltage) for k in keys)
            drawn_kw = sum(self._connector_load(k, now) for k in keys)
            if drawn_kw > capped_kw + tolerance:
                asked_kw = max(0.0, sum(baseline.loads.get(k, 0.0) for k in keys) - capped_kw)
                unfollowed[cid] = ({k: published[k] for k in keys}, asked_kw)
                log.warning("DR zone %s: station %s draws %.1f kW above its cap %.1f kW; the "
                            "others shed its %.1f kW", zone, cid, drawn_kw, capped_kw,
                            asked_kw)

    def _zone_caps(self, zone: str, baseline: Baseline, target_kw: float, *,
                   shed: bool) -> dict[ConnectorKey, float]:
        """Caps (A) of the zone's connectors that shed ``target_kw`` from the baseline:
        split by the policy among the stations that follow their caps, for what those
        that do not were asked and did not do (escalations added it to the target)."""
        unfollowed = self._unfollowed.get(zone, {})
        caps: dict[ConnectorKey, float] = {}
        for station_caps, _ in unfollowed.values():
            caps.update(station_caps)
        target = max(0.0, target_kw - sum(asked for _, asked in unfollowed.values()))
        stations = [s for s in self._station_loads(zone, baseline)
                    if s.station not in unfollowed]
        allowed = split_reduction(stations, target, self.policy, shed=shed)
        for station in stations:
            charger = self.topology.chargers[station.station]
            kw_caps = connector_caps(station, allowed.get(station.station, 0.0))
            for key, kw in kw_caps.items():
                caps[key] = _cap_amps(charger, kw, self._voltage)
        return caps

    def _station_loads(self, zone: str, baseline: Baseline) -> list[StationLoad]:
        out = []
        for cid in self.topology.zone_chargers(zone):
            charger = self.topology.chargers[cid]
            conns = []
            for c in charger.connectors:
                max_kw = amps_to_kw(charger, c.max_current, self._voltage)
                if charger.max_power_kw is not None:
                    max_kw = min(max_kw, charger.max_power_kw)
                conns.append(ConnectorLoad(c.key, baseline.loads.get(c.key, 0.0),
                                           min(amps_to_kw(charger, c.min_current, self._voltage),
                                               max_kw), max_kw))
            out.append(StationLoad(cid, sum(x.load_kw for x in conns),
                                   self._state.priority_of(cid), tuple(conns),
                                   charger.max_station_kw))
        return out

    def _restored_baseline(self, events: tuple[DrEvent, ...]) -> Baseline | None:
        """After a restart: the baseline an in-force event started from (the live draw is
        curtailed already and would be a wrong one)."""
        found = [self._event_baselines[e.signal.signal_id] for e in events
                 if e.signal.signal_id in self._event_baselines]
        return min(found, key=lambda b: b.at) if found else None

    def _connector_load(self, key: ConnectorKey, now: datetime) -> float:
        """kW from the connector's last meter value while a car is there (one that left
        draws nothing, whatever its last reading said); a car's connector not read yet
        counts at what it may draw (its worst case), never at 0: no reduction is assumed
        that no meter saw."""
        if not self._state.active(key):
            return 0.0
        measured = self._state.measured_a(key, now)
        charger = self.topology.chargers[key[0]]
        if measured is not None:
            return connector_kw(measured, self._voltage)
        amps = self._state.believed_a(key, now)
        return amps_to_kw(charger, amps, self._voltage)

    def _finish_ended(self, now: datetime) -> None:
        for signal_id in list(self._trackers):
            event = self._book.get(signal_id)
            if event is not None and event.state(now) is not EventState.ENDED:
                continue
            tracker = self._trackers.pop(signal_id)
            at = event.ends_at() if event is not None and tracker.started else now
            record = tracker.finish(max(at, tracker.record.started_at or at))
            self._records[signal_id] = record
            self._exhausted.discard(signal_id)
            achieved = record.achieved_kw()
            log.info("DR event %s over: %s (reduction %s of %.1f kW, %d escalations)",
                     signal_id, record.verdict,
                     "unknown" if achieved is None else f"{achieved:.1f} kW",
                     record.target_kw, record.escalations)
            if record.verdict == "not met" and signal_id not in self._alerted and \
                    event is not None:
                # Over before any escalation said so (shorter than confirm_within, or it
                # ended in a stretch without compliance): the verdict is the alert.
                fell = "no meter value" if achieved is None else f"fell {achieved:.1f} kW"
                self._alert("dr_not_met", f"dr event {signal_id} not met: zone "
                            f"{event.signal.zone_id} {fell} of {record.target_kw:.1f} kW by "
                            f"its end", zone=event.signal.zone_id, signal_id=signal_id,
                            value_kw=achieved or 0.0, limit_kw=record.target_kw,
                            group=event.signal.zone_id)
            self._alerted.discard(signal_id)
            if event is not None:
                self._persist(event, now, force=True)

    # --- alerts ---------------------------------------------------------------------------

    def _not_met(self, event: DrEvent, tracker: ComplianceTracker, escalation: Escalation,
                 zone_kw: float, caps: Mapping[ConnectorKey, float]) -> None:
        signal = event.signal
        record = tracker.record
        fell = (record.baseline_kw or 0.0) - zone_kw
        nothing_left = all(a <= 0 for a in caps.values())
        if nothing_left and signal.signal_id in self._exhausted:
            return  # said already: every station is paused, there is nothing more to shed
        if nothing_left:
            self._exhausted.add(signal.signal_id)
        self._alerted.add(signal.signal_id)
        more = f"shedding {escalation.extra_kw:.1f} kW more" if not nothing_left else \
            "every station is paused already"
        self._alert(
            "dr_not_met",
            f"dr event {signal.signal_id} not met: zone {signal.zone_id} fell {fell:.1f} kW "
            f"of {record.target_kw:.1f} kW after {self.settings.confirm_within:g} s — {more}",
            zone=signal.zone_id, signal_id=signal.signal_id, value_kw=fell,
            limit_kw=record.target_kw, group=signal.zone_id)

    def _check_contracts(self, now: datetime) -> None:
        tolerance = self.settings.tolerance_kw
        for cid, charger in self.topology.chargers.items():
            limit = charger.contract_max_kw
            if limit is None:
                continue
            drawn = 0.0
            for c in charger.connectors:
                measured = self._state.measured_a(c.key, now)
                if measured is not None and self._state.active(c.key):
                    drawn += connector_kw(measured, self._voltage)
            if drawn > limit + tolerance:
                if cid not in self._over_contract:
                    self._over_contract.add(cid)
                    self._alert("contract", f"station {cid} draws {drawn:.1f} kW above its "
                                f"contract {limit:.1f} kW", zone=charger.zone, station=cid,
                                value_kw=drawn, limit_kw=limit, group=charger.group)
            elif cid in self._over_contract and drawn <= limit:
                self._over_contract.discard(cid)
                message = f"station {cid} is back within its contract {limit:.1f} kW " \
                    f"({drawn:.1f} kW)"
                log.info("%s", message)
                if self._store is not None:
                    self._store.record_alarm(AlarmRecord(now, "contract", charger.group,
                                                         None, drawn, limit,
                                                         f"cleared: {message}", cleared=True))

    def _alert(self, kind: str, message: str, *, zone: str | None = None,
               station: str | None = None, signal_id: str | None = None,
               value_kw: float = 0.0, limit_kw: float = 0.0, group: str = "") -> None:
        at = self.clock.now()
        alert = {"at": iso(at), "kind": kind, "message": message, "zone": zone,
                 "station": station, "signal_id": signal_id, "value_kw": round(value_kw, 3),
                 "limit_kw": round(limit_kw, 3)}
        self._alerts.append(alert)
        self.counters[f"alerts_{kind}"] += 1
        log.warning("DR ALERT %s: %s", kind, message)
        if self._store is not None:
            self._store.record_alarm(AlarmRecord(at, kind, group, None, value_kw, limit_kw,
                                                 message))
        for listener in tuple(self._listeners):
            try:
                listener(dict(alert))
            except Exception:
                log.exception("DR alert listener %r failed", listener)

    # --- persistence ----------------------------------------------------------------------

    def _persist(self, event: DrEvent, now: datetime, *, force: bool = True) -> None:
        """Write the event's latest state (at most every PERSIST_EVERY_S unless forced)."""
        if self._store is None:
            return
        signal_id = event.signal.signal_id
        last = self._persisted.get(signal_id)
        if not force and last is not None and \
                now - last < timedelta(seconds=PERSIST_EVERY_S):
            return
        self._persisted[signal_id] = now
        signal = event.signal
        record = self.record(signal_id)
        baseline = self._event_baselines.get(signal_id)
        self._store.record_dr_event({
            "signal_id": signal_id, "zone_id": signal.zone_id,
            "signal": json.dumps({**signal.to_json(), "source": signal.source}),
            "ended_at": event.ended_at,
            "compliance": None if record is None else json.dumps(record.to_json()),
            "baseline": None if baseline is None else json.dumps(baseline.to_json()),
            "updated_at": now})
