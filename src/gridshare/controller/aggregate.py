"""Live load per station and per zone: the bus's meter values and sessions folded into
tumbling windows (the pure arithmetic is :mod:`gridshare.core.dr.aggregate`).

Built by the app for every site (``app.loads``): a site without zones still aggregates its
stations, it just lists no zone. A reading's power is its ``Power.Active.Import`` when
the charger sends one, else its currents at the site voltage (as the controller counts
them); a session's stop is also a 0 kW sample (the car left). Windows close by the
reading's own timestamps and, once a second, by the injected clock ``grace_s`` behind
now, so meter values a little late in flight still count in their window.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from gridshare.bus import Bus, Subscription
from gridshare.clock import Clock
from gridshare.core.dr.aggregate import (
    DEFAULT_KEEP,
    DEFAULT_WINDOW_S,
    StationNow,
    StationWindow,
    StationWindows,
    ZoneWindow,
    utilisation_pct,
    window_length,
    window_start,
    zone_window,
)
from gridshare.core.dr.signals import iso
from gridshare.core.topology import Charger, Topology
from gridshare.events import Event, MeterReading, SessionStarted, SessionStopped
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.loads")

HOLD_S = 300.0
"""A meter value stands for at most this long without a newer one (a silent charger is
not assumed to draw forever)."""
GRACE_S = 5.0
"""How far behind the clock windows are closed: meter values in flight still count."""


def reading_kw(reading: MeterReading, charger: Charger, voltage: float) -> float | None:
    """The kW a reading says the connector draws (None: it carries neither power nor
    current). Power wins; else the currents at the site voltage, a missing phase of a
    3-phase charger counted as its largest (the controller's rule)."""
    if reading.power_w is not None and math.isfinite(reading.power_w):
        return max(0.0, reading.power_w) / 1000.0
    values = [v for v in reading.current_a if v is not None and math.isfinite(v)]
    if not values:
        return None
    top = max(0.0, *values)
    if charger.phases == 1:
        amps = top
    else:
        amps = sum(top if v is None or not math.isfinite(v) else max(0.0, v)
                   for v in reading.current_a)
    return amps * voltage / 1000.0


class UnknownId(KeyError):
    """A station or zone the site does not declare."""

    def __init__(self, kind: str, ident: str, known: list[str]) -> None:
        super().__init__(ident)
        self.kind = kind
        self.ident = ident
        shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        self.message = f"unknown {kind} {ident!r} ({kind}s: {shown or 'none'})"

    def __str__(self) -> str:
        return self.message


class LoadService:
    """Per-station windows for every charger of the site, zone sums on demand."""

    def __init__(self, topology: Topology, bus: Bus | None, clock: Clock, *,
                 window_s: float = DEFAULT_WINDOW_S, keep: int = DEFAULT_KEEP,
                 hold_s: float | None = HOLD_S, grace_s: float = GRACE_S,
                 tick_s: float | None = 1.0) -> None:
        if not (math.isfinite(grace_s) and grace_s >= 0):
            raise ValueError(f"grace: {grace_s!r} s must be >= 0")
        self.topology = topology
        self.clock = clock
        self._bus = bus
        self.keep = keep
        self._hold_s = hold_s
        self.grace = timedelta(seconds=grace_s)
        self.tick_s = tick_s
        self.length = window_length(window_s)  # refused here, named, when it is bad
        self.stations: dict[str, StationWindows] = {
            cid: StationWindows(cid, [c.number for c in ch.connectors], window_s=window_s,
                                keep=keep, hold_s=hold_s)
            for cid, ch in topology.chargers.items()}
        self.counters: Counter[str] = Counter()
        """accepted, late, ignored (no power/current, connector 0, unknown charger or
        connector), full (the window's sample bound)."""
        self._stopped: dict[tuple[str, int], str] = {}
        self._subscription: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def add_stations(self, topology: Topology, chargers: Iterable[str]) -> None:
        """Aggregate ``chargers`` of ``topology`` too (adopted live; none is in a zone)."""
        self.topology = topology
        for cid in chargers:
            self.stations[cid] = StationWindows(
                cid, [c.number for c in topology.chargers[cid].connectors],
                window_s=self.length.total_seconds(), keep=self.keep, hold_s=self._hold_s)

    # --- input ----------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        """Fold one bus event in (others are ignored)."""
        if isinstance(event, MeterReading):
            self._reading(event)
        elif isinstance(event, SessionStarted):
            self._session(event.charger, event.connector, event.at, event.transaction_id)
        elif isinstance(event, SessionStopped):
            windows = self._station_of(event.charger, event.connector)
            if windows is not None:
                self._stopped[(event.charger, event.connector)] = event.transaction_id
                self._count(windows.add_power(event.connector, event.at, 0.0))
                self._session(event.charger, event.connector, event.at, None)

    def _station_of(self, charger: str, connector: int) -> StationWindows | None:
        windows = self.stations.get(charger)
        if windows is None or connector not in windows.connectors:
            self.counters["ignored"] += 1
            return None
        return windows

    def _reading(self, event: MeterReading) -> None:
        windows = self._station_of(event.charger, event.connector)
        if windows is None:
            return
        kw = reading_kw(event, self.topology.chargers[event.charger], self.topology.voltage)
        if kw is None:
            self.counters["ignored"] += 1
            return
        self._count(windows.add_power(event.connector, event.at, kw))
        tx = event.transaction_id
        key = (event.charger, event.connector)
        if tx and self._stopped.get(key) != tx and \
                windows.session_at(event.connector, event.at) is None:
            # A session we never saw start (we started after it): in progress now.
            windows.add_session(event.connector, event.at, tx)

    def _session(self, charger: str, connector: int, at: datetime, tx: str | None) -> None:
        windows = self._station_of(charger, connector)
        if windows is not None and not windows.add_session(connector, at, tx):
            self._count(False)

    def _count(self, accepted: bool) -> None:
        if accepted:
            self.counters["accepted"] += 1
        else:  # the station counts which: late, or its window full
            self.counters["late"] = sum(w.late for w in self.stations.values())
            self.counters["full"] = sum(w.dropped for w in self.stations.values())

    def tick(self, now: datetime | None = None) -> list[StationWindow]:
        """Close the windows that ended ``grace_s`` before now; returns them."""
        at = (now or self.clock.now()) - self.grace
        out: list[StationWindow] = []
        for windows in self.stations.values():
            out.extend(windows.close_until(at))
        return out

    # --- reads ----------------------------------------------------------------------------

    def station_ids(self) -> list[str]:
        return list(self.stations)

    def _station(self, station: str) -> StationWindows:
        windows = self.stations.get(station)
        if windows is None:
            raise UnknownId("station", station, list(self.stations))
        return windows

    def _zone(self, zone: str) -> None:
        if zone not in self.topology.zones:
            raise UnknownId("zone", zone, list(self.topology.zones))

    def station_now(self, station: str, now: datetime | None = None) -> StationNow:
        return self._station(station).now(now or self.clock.now())

    def zone_kw(self, zone: str, now: datetime | None = None) -> float:
        """The zone's draw now: its stations' last meter values still in force."""
        self._zone(zone)
        at = now or self.clock.now()
        return sum(self.stations[cid].now(at).kw for cid in self.topology.zone_chargers(zone))

    def station_json(self, station: str, windows: int | None = None) -> dict[str, Any]:
        """``{station, zone, window_s, now: {...}, windows: [closed, oldest first],
        current: open window | None}``; UnknownId for a station the site lacks."""
        sw = self._station(station)
        now = self.clock.now()
        self.tick(now)
        current = sw.current(now)
        return {"station": station, "zone": self.topology.chargers[station].zone,
                "window_s": int(self.length.total_seconds()),
                "now": _now_json(sw.now(now)),
                "windows": [w.to_json() for w in sw.history(windows)],
                "current": None if current is None else current.to_json(),
                "late": sw.late}

    def zones_json(self) -> list[dict[str, Any]]:
        """Every declared zone: live totals and the last closed window."""
        now = self.clock.now()
        self.tick(now)
        return [self._zone_json(zone, now) for zone in self.topology.zones]

    def zone_json(self, zone: str) -> dict[str, Any]:
        """One zone with its stations (each: now, open window, last closed window)."""
        self._zone(zone)
        now = self.clock.now()
        self.tick(now)
        out = self._zone_json(zone, now)
        last = self._last_closed_start(now)
        stations = []
        for cid in self.topology.zone_chargers(zone):
            sw = self.stations[cid]
            current = sw.current(now)
            closed = _window_of(sw, last)
            stations.append({"id": cid, "now": _now_json(sw.now(now)),
                             "current": None if current is None else current.to_json(),
                             "last_window": None if closed is None else closed.to_json()})
        out["station_loads"] = stations
        return out

    def _last_closed_start(self, now: datetime) -> datetime:
        """The start of the last window every station has closed at ``now``."""
        return window_start(now - self.grace, self.length) - self.length

    def zone_last_window(self, zone: str, now: datetime | None = None) -> ZoneWindow | None:
        """The zone's last closed window (None before its stations closed one)."""
        self._zone(zone)
        at = now or self.clock.now()
        start = self._last_closed_start(at)
        found = [w for cid in self.topology.zone_chargers(zone)
                 if (w := _window_of(self.stations[cid], start)) is not None]
        if not found:
            return None
        return zone_window(zone, self.topology.zones[zone].capacity_kw, found)

    def _zone_json(self, zone: str, now: datetime) -> dict[str, Any]:
        cids = self.topology.zone_chargers(zone)
        capacity = self.topology.zones[zone].capacity_kw
        nows = [self.stations[cid].now(now) for cid in cids]
        total = sum(n.kw for n in nows)
        pct = utilisation_pct(total, capacity)
        last = self.zone_last_window(zone, now)
        return {"id": zone, "capacity_kw": capacity, "stations": cids,
                "live": {"at": iso(now), "total_kw": _r(total),
                         "utilisation_pct": None if pct is None else _r(pct, 2),
                         "active_stations": sum(1 for n in nows if n.active),
                         "active_connectors": sum(n.active_connectors for n in nows),
                         "active_sessions": sum(n.active_sessions for n in nows)},
                "last_window": None if last is None else last.to_json()}

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to the bus (before the chargers connect: nothing is missed) and close
        windows once a second by the clock."""
        if self._tasks:
            return
        self.tick()
        if self._bus is not None:
            self._subscription = self._bus.subscribe("loads")
            self._tasks.append(asyncio.create_task(self._consume(), name="gridshare-loads"))
        if self.tick_s is not None:
            self._tasks.append(asyncio.create_task(self._ticks(), name="gridshare-loads-tick"))

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        await cancel_and_wait(self._tasks, swallow_errors=True)
        self._tasks.clear()

    async def _consume(self) -> None:
        assert self._subscription is not None
        async for event in self._subscription:
            try:
                self.handle(event)
            except ValueError:
                # Bad values were filtered by the adapters; one that slips through is
                # counted and logged, it must not end the aggregation.
                self.counters["errors"] += 1
                log.exception("load aggregation: event refused: %r", event)

    async def _ticks(self) -> None:
        assert self.tick_s is not None
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                self.tick()
            except Exception:  # one bad tick must not end the aggregation
                self.counters["errors"] += 1
                log.exception("load aggregation: closing windows failed")


def _window_of(windows: StationWindows, start: datetime) -> StationWindow | None:
    for window in reversed(windows.closed):
        if window.start == start:
            return window
        if window.start < start:
            break
    return None


def _now_json(now: StationNow) -> dict[str, Any]:
    return {"at": iso(now.at), "kw": _r(now.kw), "active_connectors": now.active_connectors,
            "active_sessions": now.active_sessions,
            "connectors": [{"connector": n, "kw": _r(kw)} for n, kw in now.connectors_kw]}


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits) + 0.0
