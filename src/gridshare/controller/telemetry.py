"""The telemetry service: validate, commit, aggregate, publish; counted and reported.

One batch of MQTT messages (from :class:`~gridshare.adapters.telemetry.link.TelemetryLink`,
or handed in directly by a benchmark) goes through :meth:`TelemetryService.commit`:

1. each message is validated (``adapters/telemetry/parse.py``); a bad one is counted per
   source (``ami``, ``stations``) and reason, logged once per (source, reason), and
   dropped: never stored, never fatal;
2. AMI readings are inserted into ``ami_readings`` and committed (duplicates skipped by
   the unique key) before anything else happens, so the link may acknowledge them;
3. they are counted into the demand windows (``core/telemetry/aggregate.py``); windows
   that close are written to ``demand_windows`` and kept in memory for the API and
   :meth:`TelemetryService.area_load_kw`;
4. station meter values become :class:`~gridshare.events.MeterReading` events on the bus
   (load sharing, zone load and the store see them as OCPP meter values); the batch
   waits for the store to have written them.

Windows also close by the clock (every second), so a feeder whose meters all went quiet
still gets its last window written.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from gridshare.adapters.telemetry.parse import (
    AmiReading,
    Invalid,
    StationReading,
    beyond_rating,
    parse_ami,
    parse_station,
    topic_id,
)
from gridshare.clock import Clock
from gridshare.config import MeterSpec, MqttSpec, TelemetrySpec
from gridshare.core.telemetry.aggregate import (
    ADDED,
    DUPLICATE,
    LATE,
    LEVELS,
    Aggregator,
    DemandWindow,
    Placement,
)
from gridshare.core.topology import Topology
from gridshare.events import Event, MeterReading
from gridshare.store import Store, ami_readings, demand_windows
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.telemetry")

SOURCES = ("ami", "stations")
KEPT_WINDOWS = 60
"""Closed windows kept in memory per level key (an hour of one-minute windows)."""
TICK_S = 1.0


@dataclass(slots=True)
class SourceCounts:
    """What one source (``ami`` or ``stations``) delivered."""

    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    """Accepted and stored, but after their window closed: not in the demand."""
    rejected: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_ts: float | None = None
    """Event time of the newest reading accepted."""
    lag_s: float | None = None
    """Receive time minus event time of the last batch's newest reading."""
    max_lag_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "late": self.late,
                "rejected": dict(sorted(self.rejected.items())),
                "rejected_total": sum(self.rejected.values()),
                "last_error": self.last_error,
                "last_ts": None if self.last_ts is None else _iso(self.last_ts),
                "lag_s": self.lag_s, "max_lag_s": self.max_lag_s}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def placements(meters: Sequence[MeterSpec]) -> list[Placement]:
    return [Placement(m.id, m.feeder, m.substation, m.region) for m in meters]


class TelemetryService:
    """AMI and station telemetry of one site (see the module docstring)."""

    def __init__(self, site: str, ami_meters: Sequence[MeterSpec], stations: Sequence[str],
                 spec: TelemetrySpec | None, clock: Clock, *, mqtt: MqttSpec | None = None,
                 store: Store | None = None,
                 publish: Callable[[Event], None] | None = None,
                 station_ratings: Mapping[str, tuple[float, float]] | None = None) -> None:
        """``station_ratings``: per station, its charger's rating from the site file (W,
        A per phase); a value far above it is refused as a unit mistake
        (:func:`~gridshare.adapters.telemetry.parse.beyond_rating`)."""
        self.spec = spec = spec or TelemetrySpec()
        self.site = site
        self.clock = clock
        self.store = store
        self.publish = publish
        self.ami_prefix = spec.ami_topic_prefix(site)
        self.stations_prefix = spec.stations_topic_prefix(site)
        self.meters = frozenset(m.id for m in ami_meters)
        self.stations = frozenset(stations)
        self.station_ratings = dict(station_ratings or {})
        self.aggregator = Aggregator(placements(ami_meters), window_s=spec.window,
                                     lateness_s=spec.lateness)
        self.counts = {source: SourceCounts() for source in SOURCES}
        self.windows_closed = 0
        self.restored = 0
        """Readings counted back into the open windows at start (see :meth:`restore`)."""
        self.recent: dict[tuple[str, str], deque[DemandWindow]] = {}
        self._logged: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self.link = None
        if mqtt is not None:
            from gridshare.adapters.telemetry.link import TelemetryLink

            self.link = TelemetryLink(
                mqtt, [f"{self.ami_prefix}/+", f"{self.stations_prefix}/+"], self.commit,
                client_id=spec.session_client_id(site), qos=spec.qos,
                batch_rows=spec.batch_rows, batch_interval_s=spec.batch_interval)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self.store is not None:
            await self.restore()
        self._tasks.append(asyncio.create_task(self._ticker(), name="telemetry-windows"))
        if self.link is not None:
            self._tasks.append(asyncio.create_task(self.link.run(), name="telemetry-mqtt"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks, swallow_errors=True)
        self._tasks.clear()

    async def restore(self) -> int:
        """Refill the windows that may still be open from ``ami_readings`` (a restart
        must not close them with only the readings that come after it); returns how many
        readings were counted back in."""
        assert self.store is not None
        engine = self.store._engine  # read-only query; the store owns the engine
        if engine is None:
            return 0
        now = self.clock.now().timestamp()
        since = self.aggregator.window_of(now - self.spec.lateness) - self.spec.window
        t = ami_readings
        query = select(t.c.meter_id, t.c.ts, t.c.power_w).where(t.c.ts >= _dt(since)) \
            .order_by(t.c.id)
        add = self.aggregator.add
        count = 0
        async with engine.connect() as conn:
            result = await conn.stream(query)
            async for meter_id, ts, power_w in result:
                when = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
                if add(meter_id, when.timestamp(), power_w) == ADDED:
                    count += 1
        self.restored = count
        if count:
            log.info("telemetry: %d readings of the open windows read back from the "
                     "database", count)
        await self._close(now)
        return count

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                async with self._lock:
                    await self._close(self.clock.now().timestamp())
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be away: try again next tick
                log.exception("telemetry: closing windows failed")

    # --- one batch ------------------------------------------------------------------------

    async def commit(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Validate, store (committed), aggregate and publish one batch; raises only when
        the store cannot commit (the link then leaves the batch unacknowledged)."""
        async with self._lock:
            await self._commit(messages)

    async def _commit(self, messages: Sequence[tuple[str, bytes]]) -> None:
        received = self.clock.now().timestamp()
        ami, stations, rejected = self.validate(messages, received)
        if ami and self.store is not None:
            at = _dt(received)
            await self.store.insert_now(ami_readings, [_ami_row(r, at) for r in ami])
        for source, reason, detail in rejected:
            self._reject(source, reason, detail)
        self.aggregate(ami, received)
        if stations:
            self._stations(stations, received)
            if self.store is not None:
                await self.store.flush()
        await self._close(None)

    def validate(self, messages: Sequence[tuple[str, bytes]], now: float
                 ) -> tuple[list[AmiReading], list[StationReading], list[tuple[str, str, str]]]:
        """Split a batch into good AMI readings, good station values and rejections."""
        ami: list[AmiReading] = []
        stations: list[StationReading] = []
        rejected: list[tuple[str, str, str]] = []
        skew = self.spec.clock_skew
        ami_prefix, stations_prefix = self.ami_prefix, self.stations_prefix
        for topic, payload in messages:
            ident = topic_id(topic, ami_prefix)
            if ident is not None:
                got: AmiReading | StationReading | Invalid = parse_ami(
                    ident, payload, now=now, skew=skew, known=self.meters)
                source = "ami"
            else:
                ident = topic_id(topic, stations_prefix)
                if ident is None:
                    rejected.append(("ami" if topic.startswith(ami_prefix) else "stations",
                                     "bad_topic", f"topic {topic!r}"))
                    continue
                got = parse_station(ident, payload, now=now, skew=skew, known=self.stations)
                source = "stations"
            if isinstance(got, AmiReading):
                ami.append(got)
            elif isinstance(got, StationReading):
                rating = self.station_ratings.get(got.station_id)
                bad = None if rating is None else beyond_rating(got, *rating)
                if bad is None:
                    stations.append(got)
                else:
                    rejected.append((source, bad.reason, f"{topic}: {bad.detail}"))
            else:
                rejected.append((source, got.reason, f"{topic}: {got.detail}"))
        return ami, stations, rejected

    def aggregate(self, readings: Sequence[AmiReading], received: float) -> None:
        """Count readings into their windows (committed already, or no store)."""
        counts = self.counts["ami"]
        add = self.aggregator.add
        newest = -math.inf
        for r in readings:
            outcome = add(r.meter_id, r.ts, r.power_w)
            if outcome == ADDED:
                counts.accepted += 1
                newest = max(newest, r.ts)
            elif outcome == DUPLICATE:
                counts.duplicates += 1
            elif outcome == LATE:
                counts.accepted += 1
                counts.late += 1
        if newest > -math.inf:
            self._lag(counts, newest, received)

    def _lag(self, counts: SourceCounts, newest: float, received: float) -> None:
        counts.last_ts = newest if counts.last_ts is None else max(counts.last_ts, newest)
        counts.lag_s = max(0.0, received - newest)
        counts.max_lag_s = max(counts.max_lag_s, counts.lag_s)

    def _stations(self, readings: Sequence[StationReading], received: float) -> None:
        counts = self.counts["stations"]
        for r in readings:
            counts.accepted += 1
            if self.publish is not None:
                self.publish(station_event(r))
        self._lag(counts, max(r.event_ts for r in readings), received)

    def _reject(self, source: str, reason: str, detail: str) -> None:
        counts = self.counts[source]
        counts.rejected[reason] = counts.rejected.get(reason, 0) + 1
        counts.last_error = detail
        if (source, reason) not in self._logged:
            self._logged.add((source, reason))
            log.warning("telemetry %s: rejected (%s): %s; further ones are counted, not "
                        "logged (GET /api/v1/ingest)", source, reason, detail)

    async def _close(self, now: float | None) -> None:
        closed = self.aggregator.advance(now)
        if not closed:
            return
        if self.store is not None:
            at = self.clock.now()
            await self.store.insert_now(demand_windows, [
                {**w.as_row(), "window_start": _dt(w.window_start),
                 "window_end": _dt(w.window_end), "closed_at": at} for w in closed])
        self.windows_closed += len(closed)
        for w in closed:
            kept = self.recent.get((w.level, w.key))
            if kept is None:
                kept = self.recent[(w.level, w.key)] = deque(maxlen=KEPT_WINDOWS)
            kept.append(w)

    # --- reading --------------------------------------------------------------------------

    def area_load_kw(self, area: str) -> tuple[float, float]:
        """Demand (kW) of a feeder, substation or region and its age (s): the latest
        closed window (age: now minus its end), else the open window so far (age: now
        minus its start, the oldest reading it may hold), else (0.0, inf). ``area`` is
        ``level:key`` or a key (feeder, then substation, then region); an area the site
        does not place a meter in raises KeyError."""
        level_name, key = self._area(area)
        now = self.clock.now().timestamp()
        kept = self.recent.get((level_name, key))
        if kept:
            last = kept[-1]
            return last.demand_kw, max(0.0, now - last.window_end)
        for w in reversed(self.aggregator.running()):
            if w.level == level_name and w.key == key:
                return w.demand_kw, max(0.0, now - w.window_start)
        return 0.0, math.inf

    def _area(self, area: str) -> tuple[str, str]:
        level_name, sep, key = area.partition(":")
        if sep and level_name in LEVELS:
            if key in self.aggregator.level(level_name).index:
                return level_name, key
            raise KeyError(area)
        for level in self.aggregator.levels:
            if area in level.index:
                return level.name, area
        raise KeyError(area)

    def keys(self, level: str) -> list[str]:
        return list(self.aggregator.level(level).keys)

    def ingest_json(self) -> dict[str, Any]:
        link = self.link
        return {
            "sources": {s: c.as_json() for s, c in self.counts.items()},
            "topics": {"ami": f"{self.ami_prefix}/<meter id>",
                       "stations": f"{self.stations_prefix}/<station id>"},
            "meters": len(self.meters), "stations": len(self.stations),
            "window_s": self.spec.window, "lateness_s": self.spec.lateness,
            "open_windows": self.aggregator.open_windows(),
            "windows_closed": self.windows_closed, "restored": self.restored,
            "mqtt": None if link is None else {
                "connected": link.connected, "connects": link.connects,
                "received": link.received, "acknowledged": link.acked,
                "batches": link.batches, "commit_failures": link.commit_failures},
        }

    async def demand_json(self, level: str, key: str | None, since: datetime | None,
                          until: datetime | None, limit: int = 10_000) -> dict[str, Any]:
        """Closed windows of ``level`` (one key, or every key) that start in
        [since, until), oldest first: from the database when there is one, else from the
        windows kept in memory. Raises KeyError for a key the level does not have."""
        if key is not None and key not in self.aggregator.level(level).index:
            raise KeyError(key)
        lo = -math.inf if since is None else since.timestamp()
        hi = math.inf if until is None else until.timestamp()
        if self.store is not None:
            rows = await self._stored(level, key, since, until, limit)
        else:
            kept = sorted((w for (lv, k), ws in self.recent.items()
                           if lv == level and (key is None or k == key) for w in ws
                           if lo <= w.window_start < hi),
                          key=lambda w: (w.window_start, w.key))[:limit]
            rows = [_window_json(w.as_row()) for w in kept]
        running = [_window_json(w.as_row()) for w in self.aggregator.running()
                   if w.level == level and (key is None or w.key == key)]
        return {"level": level, "key": key, "window_s": self.spec.window,
                "lateness_s": self.spec.lateness, "windows": rows, "running": running}

    async def _stored(self, level: str, key: str | None, since: datetime | None,
                      until: datetime | None, limit: int) -> list[dict[str, Any]]:
        assert self.store is not None
        engine = self.store._engine  # read-only query; the store owns the engine
        if engine is None:
            return []
        t = demand_windows
        query = select(t).where(t.c.level == level)
        if key is not None:
            query = query.where(t.c.key == key)
        if since is not None:
            query = query.where(t.c.window_start >= since.astimezone(UTC))
        if until is not None:
            query = query.where(t.c.window_start < until.astimezone(UTC))
        query = query.order_by(t.c.window_start, t.c.key).limit(limit)
        async with engine.connect() as conn:
            return [_window_json(dict(r._mapping)) for r in await conn.execute(query)]


def _window_json(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in ("level", "key", "demand_kw", "max_meter_kw",
                               "meters_reporting", "meters_expected", "readings")}
    for name, col in (("start", "window_start"), ("end", "window_end")):
        value = row[col]
        if isinstance(value, datetime):
            value = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        out[name] = _iso(float(value))
    return out


def _ami_row(r: AmiReading, received: datetime) -> dict[str, Any]:
    cur = r.current_a or (None, None, None)
    volt = r.voltage_v or (None, None, None)
    return {"meter_id": r.meter_id, "ts": _dt(r.ts), "received_at": received,
            "power_w": r.power_w, "energy_wh": r.energy_wh,
            "energy_export_wh": r.energy_export_wh, "current_l1_a": cur[0],
            "current_l2_a": cur[1], "current_l3_a": cur[2], "voltage_l1_v": volt[0],
            "voltage_l2_v": volt[1], "voltage_l3_v": volt[2]}


def station_ratings(topology: Topology) -> dict[str, tuple[float, float]]:
    """Per charger of the site file, its rating (W, A per phase): ``max_current`` x
    voltage x phases, or ``max_power`` when larger; what a station's values are checked
    against for unit mistakes (the larger: a lenient bound refuses no real value)."""
    out = {}
    for c in topology.chargers.values():
        watts = c.max_current * topology.voltage * c.phases
        if c.max_power_kw is not None:
            watts = max(watts, c.max_power_kw * 1000.0)
        out[c.id] = (watts, c.max_current)
    return out


def station_event(r: StationReading) -> MeterReading:
    """A station's meter value as the bus carries an OCPP one."""
    return MeterReading(
        charger=r.station_id, connector=r.connector_id, at=_dt(r.event_ts),
        transaction_id=r.session_id,
        power_w=None if r.power_kw is None else r.power_kw * 1000.0,
        current_a=r.current_a, voltage_v=r.voltage_v,
        energy_wh=None if r.energy_kwh is None else r.energy_kwh * 1000.0,
        soc_percent=r.soc_percent)

