"""Prometheus metrics of a running site at ``GET /metrics`` (text exposition format, or
OpenMetrics when the scraper asks for it).

Two kinds of metric, each where it is honest:

- **State**, read from the controller at scrape time by :class:`SiteCollector` (a custom
  collector: nothing is copied into gauges that could go stale): limits, load and
  setpoints per group and phase, connectors, connected chargers, meters, alarms and
  errors by kind (the controller's and the OCPP adapter's own counters), bus backlog.
- **Events**, counted as they happen through the controller's hooks
  (:meth:`~gridshare.controller.loop.Controller.on_command`, ``on_event``, ``on_cycle``):
  the command latency histogram, commands by kind and result, retries, rejected profiles,
  meter samples received per meter, cycle compute time.

Names carry the ``gridshare_`` prefix and their unit (``_amperes``, ``_watts``,
``_seconds``, ``_total``); labels are ``group``, ``phase`` (L1..L3), ``charger``,
``connector``, ``meter`` and ``kind``. A value that does not exist is left out, never
faked: a group limited only in kW has no ``gridshare_group_limit_amperes`` sample, and
``gridshare_dr_compliance_ratio`` has a sample per demand-response event only once it has
started (its zone is in the ``group`` label). docs/metrics.md lists every family.

Each app has its own registry (several apps in one process, as in tests, do not mix).
A scrape reads everything on the event loop, so the controller's state is never read
mid-update, then formats the text in a thread (the slow part, at thousands of series).
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING

from fastapi import Request, Response
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from gridshare import __version__
from gridshare.controller.audit import CommandRecord
from gridshare.drivers import CommandResult
from gridshare.events import Event, MeterSample

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gridshare.app import GridshareApp
    from gridshare.controller.loop import CycleReport
    from gridshare.controller.views import ControllerStatus

# No ``*_created`` series beside every counter and histogram child: they would double the
# series per charger and nothing here reads them (rate() and increase() do not need them).
disable_created_metrics()  # type: ignore[no-untyped-call]

PHASES = ("L1", "L2", "L3")
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Command answers: milliseconds on a LAN, up to the command timeout (10 s by default)."""
CYCLE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
ALARM_KINDS = ("limit", "guard", "violation", "rejected", "plan", "command", "meter",
               "internal")
"""Exported at 0 before the first one, so ``increase()`` sees the first alarm of a kind."""
DR_RATIO_KEPT = timedelta(hours=1)
"""An event's compliance ratio is exported this long after it ended (its final value)."""
CONTROLLER_ERRORS = {"event_errors": "event_error", "task_crashes": "task_crash"}
"""Controller counters that are errors, and their ``kind`` label."""


class Instruments:
    """What is counted as it happens, fed by the controller's hooks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.command_latency = Histogram(
            "gridshare_command_latency_seconds",
            "Time from handing a command to the driver until its outcome (answer, refusal, "
            "timeout or lost link), by command kind.", ["kind"], buckets=LATENCY_BUCKETS_S,
            registry=registry)
        self.commands = Counter(
            "gridshare_commands", "Commands whose outcome came back, by kind and result.",
            ["kind", "result"], registry=registry)
        self.retries = Counter(
            "gridshare_command_retries",
            "Setpoints sent again after a refusal or an unknown outcome (kind=retry), and "
            "failsafe profiles re-installed after a failure.", ["kind"], registry=registry)
        self.rejected = Counter(
            "gridshare_profiles_rejected",
            "Charging profiles a charger refused (the profile in force before stays).",
            ["charger", "kind"], registry=registry)
        self.cycle = Histogram(
            "gridshare_cycle_seconds",
            "Compute time of one allocation cycle (allocate, guard, decide, check).",
            buckets=CYCLE_BUCKETS_S, registry=registry)
        self.meter_samples: Tally[str] = Tally()
        """Meter id -> samples the controller received (every source)."""
        self.events_by_kind: Tally[str] = Tally()
        """Event type -> events the controller received."""
        self._failsafe_failed: set[str] = set()

    def command(self, record: CommandRecord) -> None:
        kind = record.kind
        result = record.result.value
        self.command_latency.labels(kind).observe(record.latency_s)
        self.commands.labels(kind, result).inc()
        if kind == "retry":
            self.retries.labels("setpoint").inc()
        if record.result is CommandResult.REJECTED:
            self.rejected.labels(record.charger, "failsafe" if kind == "failsafe"
                                 else "setpoint").inc()
        if kind == "failsafe":
            # A failsafe sent again after one that failed is its retry.
            if record.charger in self._failsafe_failed:
                self.retries.labels("failsafe").inc()
            if record.result in (CommandResult.ACCEPTED, CommandResult.OFFLINE,
                                 CommandResult.SUPERSEDED):
                self._failsafe_failed.discard(record.charger)
            else:
                self._failsafe_failed.add(record.charger)

    def event(self, event: Event) -> None:
        self.events_by_kind[type(event).__name__] += 1
        if isinstance(event, MeterSample):
            self.meter_samples[event.meter] += 1

    def cycle_done(self, report: CycleReport) -> None:
        self.cycle.observe(report.compute_s)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class SiteCollector(Collector):
    """Reads the site's state at scrape time."""

    def __init__(self, app: GridshareApp, instruments: Instruments) -> None:
        self._app = app
        self._instruments = instruments

    def describe(self) -> Iterable[Metric]:
        return ()  # nothing to check against: every name here is ours

    def collect(self) -> Iterator[Metric]:
        app = self._app
        controller = app.controller
        status = controller.status()
        topology = controller.topology

        info = GaugeMetricFamily("gridshare_site_info", "The site this gridshare runs.",
                                 labels=["site", "version"])
        info.add_metric([status.site, __version__], 1.0)
        yield info

        yield from self._groups(status)
        yield from self._connectors(status)

        connected = GaugeMetricFamily(
            "gridshare_chargers_connected",
            "Chargers the controller hears from (online); the others count at their "
            "failsafe current.", value=status.chargers_online)
        yield connected
        yield GaugeMetricFamily("gridshare_chargers_configured",
                                "Chargers declared in the site file.",
                                value=status.chargers_configured)
        pending = app.csms.pending.all()
        yield GaugeMetricFamily(
            "gridshare_chargers_pending",
            "Chargers connected without being declared, held Pending (ocpp.pending_unknown) "
            "until adopted.", value=sum(1 for p in pending if p.connected))
        online = GaugeMetricFamily("gridshare_charger_online",
                                   "1 while the charger is online, else 0.",
                                   labels=["charger"])
        for cid in topology.chargers:
            online.add_metric([cid], 1.0 if controller.state.online(cid) else 0.0)
        yield online
        yield GaugeMetricFamily(
            "gridshare_commands_in_flight",
            "Commands submitted whose outcome has not come back yet.",
            value=controller.commands_in_flight)

        alarms = CounterMetricFamily("gridshare_alarms", "Alarms raised, by kind.",
                                     labels=["kind"])
        seen = {key.removeprefix("alarms_"): n for key, n in status.counters.items()
                if key.startswith("alarms_")}
        for kind in sorted(set(ALARM_KINDS) | set(seen)):
            alarms.add_metric([kind], seen.get(kind, 0))
        yield alarms

        yield self._dr_compliance()
        frequency = getattr(app, "frequency", None)
        if frequency is not None:
            from gridshare.api.frequency import metrics as frequency_metrics

            yield from frequency_metrics(frequency)

        yield from self._errors(status.counters)
        yield from self._ingest(status)
        yield from self._telemetry()
        yield from self._plumbing()

    def _dr_compliance(self) -> Metric:
        """Each demand-response event that started (and, once over, for an hour after):
        the reduction its zone's meters show over the one asked. The ``group`` label
        carries the zone."""
        ratio = GaugeMetricFamily(
            "gridshare_dr_compliance_ratio",
            "Demand response: measured load reduction (the zone's draw when the event "
            "began minus its draw now, from the meter values) over the requested one, per "
            "zone (label group) and event; 1 is met. No samples until an event started.",
            labels=["group", "event"])
        dr = self._app.dr
        if dr is None:
            return ratio
        now = self._app.clock.now()
        for event in dr.events():
            signal = event.signal
            record = dr.record(signal.signal_id)
            if record is None or record.target_kw <= 0 or \
                    now - event.ends_at() > DR_RATIO_KEPT:
                continue
            achieved = record.achieved_kw()
            if achieved is not None:
                ratio.add_metric([signal.zone_id, signal.signal_id],
                                 achieved / record.target_kw)
        return ratio

    def _groups(self, status: ControllerStatus) -> Iterator[Metric]:
        limit = GaugeMetricFamily(
            "gridshare_group_limit_amperes",
            "Tightest limit in force per phase (site file, operator overrides, demand "
            "response); absent for a group limited only in kW.", labels=["group", "phase"])
        load = GaugeMetricFamily(
            "gridshare_group_load_amperes",
            "Load the limit is checked against: uncontrolled load plus every charger below "
            "at its worst case (in force or failsafe, in flight, unknown outcomes).",
            labels=["group", "phase"])
        chargers = GaugeMetricFamily(
            "gridshare_group_chargers_amperes",
            "Chargers below the group at their worst case (what every limit counts them at).",
            labels=["group", "phase"])
        allocated = GaugeMetricFamily(
            "gridshare_group_setpoints_amperes",
            "Sum of the last allocation's setpoints below the group.",
            labels=["group", "phase"])
        uncontrolled = GaugeMetricFamily(
            "gridshare_group_uncontrolled_amperes",
            "Load that is not ours (from the group's meter, net of our chargers).",
            labels=["group", "phase"])
        available = GaugeMetricFamily(
            "gridshare_group_available_amperes",
            "Left for our chargers after the uncontrolled load (0 with a stale meter).",
            labels=["group", "phase"])
        measured = GaugeMetricFamily(
            "gridshare_group_measured_amperes",
            "Sum of the chargers' own meter readings below the group.",
            labels=["group", "phase"])
        meter = GaugeMetricFamily(
            "gridshare_group_meter_amperes",
            "The group meter's last reading (groups that follow a meter).",
            labels=["group", "phase"])
        stale = GaugeMetricFamily(
            "gridshare_group_meter_stale",
            "1 while the group's meter is stale (the group fails closed: no headroom).",
            labels=["group"])
        power = GaugeMetricFamily("gridshare_group_power_watts",
                                  "Power of the last allocation below the group.",
                                  labels=["group"])
        power_limit = GaugeMetricFamily(
            "gridshare_group_power_limit_watts",
            "Tightest power limit in force; absent when the group has none.", labels=["group"])
        for g in status.groups:
            amps = _finite(g.limit_a)
            for i, phase in enumerate(PHASES):
                labels = [g.id, phase]
                if amps is not None:
                    limit.add_metric(labels, amps)
                load.add_metric(labels, g.counted_a[i] + g.uncontrolled_a[i])
                chargers.add_metric(labels, g.counted_a[i])
                allocated.add_metric(labels, g.allocated_a[i])
                uncontrolled.add_metric(labels, g.uncontrolled_a[i])
                available.add_metric(labels, g.available_a[i])
                measured.add_metric(labels, g.measured_a[i])
                if g.meter_a is not None:
                    meter.add_metric(labels, g.meter_a[i])
            if self._app.topology.groups[g.id].meter is not None:
                stale.add_metric([g.id], 1.0 if g.meter_stale else 0.0)
            power.add_metric([g.id], g.power_kw * 1000.0)
            kw = _finite(g.limit_power_kw)
            if kw is not None:
                power_limit.add_metric([g.id], kw * 1000.0)
        yield from (limit, load, chargers, allocated, uncontrolled, available, measured, meter,
                    stale, power, power_limit)

    @staticmethod
    def _connectors(status: ControllerStatus) -> Iterator[Metric]:
        labels = ["charger", "connector"]
        setpoint = GaugeMetricFamily(
            "gridshare_connector_setpoint_amperes",
            "Accepted setpoint in force, A per phase (absent: the charger's failsafe "
            "default applies).", labels=labels)
        target = GaugeMetricFamily("gridshare_connector_target_amperes",
                                   "What the last allocation wants, A per phase.",
                                   labels=labels)
        counted = GaugeMetricFamily(
            "gridshare_connector_counted_amperes",
            "What every limit counts the connector at now (its worst case).", labels=labels)
        drawn = GaugeMetricFamily(
            "gridshare_connector_drawn_amperes",
            "Highest per-phase current of its last meter reading (absent: none recent).",
            labels=labels)
        active = GaugeMetricFamily("gridshare_connector_active",
                                   "1 while a car is plugged in and may want power.",
                                   labels=labels)
        violator = GaugeMetricFamily(
            "gridshare_connector_violator",
            "1 while it draws above its setpoint (counted at what it draws, paused).",
            labels=labels)
        for c in status.connectors:
            key = [c.charger, str(c.connector)]
            if c.setpoint_a is not None:
                setpoint.add_metric(key, c.setpoint_a)
            if c.target_a is not None:
                target.add_metric(key, c.target_a)
            counted.add_metric(key, c.counted_a)
            if c.drawn_a is not None:
                drawn.add_metric(key, c.drawn_a)
            active.add_metric(key, 1.0 if c.active else 0.0)
            violator.add_metric(key, 1.0 if c.violator else 0.0)
        yield from (setpoint, target, counted, drawn, active, violator)

    def _errors(self, counters: Mapping[str, int]) -> Iterator[Metric]:
        errors = CounterMetricFamily(
            "gridshare_errors",
            "Bad input and internal errors, by component and kind: events the controller "
            "refused (unknown charger, connector or group), frames and connections the OCPP "
            "adapter refused (invalid JSON, schema, unknown charger id, ...), events that "
            "could not be handled, crashed tasks.", labels=["component", "kind"])
        app = self._app
        for kind, n in sorted(app.controller.state.counters.rejected.items()):
            errors.add_metric(["controller", kind], n)
        for key, kind in CONTROLLER_ERRORS.items():
            errors.add_metric(["controller", kind], counters.get(key, 0))
        for kind, n in sorted(app.csms.counters.rejected.items()):
            errors.add_metric(["ocpp", kind], n)
        yield errors
        refused = CounterMetricFamily(
            "gridshare_plan_steps_refused",
            "Command steps the safety check refused to send (an alarm each).")
        refused.add_metric([], counters.get("steps_refused", 0))
        yield refused
        cycles = CounterMetricFamily("gridshare_cycles", "Allocation cycles run.")
        cycles.add_metric([], counters.get("cycles", 0))
        yield cycles

    def _ingest(self, status: ControllerStatus) -> Iterator[Metric]:
        app = self._app
        counts = self._instruments
        samples = CounterMetricFamily(
            "gridshare_meter_samples",
            "Meter samples received, per meter and source (mqtt, http, ocpp).",
            labels=["meter", "source"])
        errors = CounterMetricFamily(
            "gridshare_meter_errors",
            "Meter readings rejected and failed polls or connections (mqtt and http "
            "meters; an ocpp meter's bad readings count in gridshare_errors_total).",
            labels=["meter", "source"])
        current = GaugeMetricFamily("gridshare_meter_current_amperes",
                                    "A meter's last reading, A per phase.",
                                    labels=["meter", "phase"])
        age = GaugeMetricFamily("gridshare_meter_age_seconds",
                                "Age of a meter's last reading.", labels=["meter"])
        stale = GaugeMetricFamily("gridshare_meter_stale",
                                  "1 while a meter is stale (its groups have no headroom).",
                                  labels=["meter"])
        sources = app.meter_sources.status() if app.meter_sources is not None else {}
        for m in status.meters:
            samples.add_metric([m.id, m.source], counts.meter_samples.get(m.id, 0))
            found = sources.get(m.id)
            if found is not None:
                errors.add_metric([m.id, m.source], found.errors)
            if m.current is not None:
                for i, phase in enumerate(PHASES):
                    current.add_metric([m.id, phase], m.current[i])
            if m.age_s is not None:
                age.add_metric([m.id], m.age_s)
            stale.add_metric([m.id], 1.0 if m.stale else 0.0)
        yield from (samples, errors, current, age, stale)
        events = CounterMetricFamily(
            "gridshare_events",
            "Events the controller received, by kind (MeterReading: the chargers' own "
            "meter values; MeterSample: site meters).", labels=["kind"])
        for kind, n in sorted(counts.events_by_kind.items()):
            events.add_metric([kind], n)
        yield events

    def _telemetry(self) -> Iterator[Metric]:
        """AMI and station telemetry (docs/telemetry.md): per source, every reason shown."""
        service = getattr(self._app, "telemetry", None)
        if service is None:
            return
        from gridshare.adapters.telemetry.parse import REASONS

        accepted = CounterMetricFamily("gridshare_telemetry_accepted",
                                       "Valid telemetry readings, per source.",
                                       labels=["source"])
        duplicates = CounterMetricFamily(
            "gridshare_telemetry_duplicates",
            "Readings of a meter with a ts already counted (ignored), per source.",
            labels=["source"])
        late = CounterMetricFamily(
            "gridshare_telemetry_late",
            "Readings stored after their window closed (not in the demand).",
            labels=["source"])
        rejected = CounterMetricFamily(
            "gridshare_telemetry_rejected",
            "Malformed telemetry messages (never stored), per source and reason.",
            labels=["source", "reason"])
        lag = GaugeMetricFamily(
            "gridshare_telemetry_lag_seconds",
            "Receive time minus event time of the last batch's newest reading.",
            labels=["source"])
        for source, counts in service.counts.items():
            accepted.add_metric([source], counts.accepted)
            duplicates.add_metric([source], counts.duplicates)
            late.add_metric([source], counts.late)
            for reason in sorted(set(REASONS) | set(counts.rejected)):
                rejected.add_metric([source, reason], counts.rejected.get(reason, 0))
            if counts.lag_s is not None:
                lag.add_metric([source], counts.lag_s)
        yield from (accepted, duplicates, late, rejected, lag)
        yield CounterMetricFamily("gridshare_telemetry_windows_closed",
                                  "Demand windows closed and written (all levels).",
                                  value=service.windows_closed)

    def _plumbing(self) -> Iterator[Metric]:
        app = self._app
        stats = app.csms.metrics
        calls = CounterMetricFamily("gridshare_ocpp_calls",
                                    "OCPP calls sent to chargers.")
        calls.add_metric([], stats.calls_sent)
        failed = CounterMetricFamily(
            "gridshare_ocpp_calls_failed",
            "OCPP calls that failed (CallError, timeout or lost link).")
        failed.add_metric([], stats.calls_failed)
        coalesced = CounterMetricFamily(
            "gridshare_ocpp_commands_coalesced",
            "Queued commands replaced by a newer one for the same target before sending.")
        coalesced.add_metric([], stats.coalesced)
        yield from (calls, failed, coalesced)
        backlog = GaugeMetricFamily("gridshare_bus_backlog",
                                    "Events waiting for a bus subscriber.",
                                    labels=["subscriber"])
        for sub in getattr(app.bus, "subscribers", ()):
            backlog.add_metric([sub.name], sub.backlog)
        yield backlog
        if app.store is not None:
            dropped = CounterMetricFamily(
                "gridshare_store_rows_dropped",
                "Audit rows dropped because the database could not keep up.")
            dropped.add_metric([], app.store.dropped)
            yield dropped


class SiteMetrics:
    """One app's registry: the collector, the instruments and the hooks feeding them."""

    def __init__(self, app: GridshareApp) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.instruments = Instruments(self.registry)
        self.registry.register(SiteCollector(app, self.instruments))
        controller = app.controller
        controller.on_command(self.instruments.command)
        controller.on_event(self.instruments.event)
        controller.on_cycle(self.instruments.cycle_done)

    def collect(self) -> CollectorRegistry:
        """Every family now, read at once (on the event loop: a consistent view), in a
        registry of its own that can be formatted anywhere."""
        frozen = CollectorRegistry(auto_describe=False)
        frozen.register(_Frozen(list(self.registry.collect())))
        return frozen

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (OpenMetrics if ``accept`` asks for it) and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.collect()), content_type

    async def render_async(self, accept: str = "") -> tuple[bytes, str]:
        """As :meth:`render`, formatted in a thread: reading the state takes the loop for
        the controller's view (tens of ms at 1,000 chargers); turning thousands of samples
        into text, several times that, does not hold up the chargers."""
        encoder, content_type = choose_encoder(accept)
        frozen = self.collect()
        return await asyncio.to_thread(encoder, frozen), content_type


class _Frozen(Collector):
    """Families already read."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        return self._families


_BY_APP: weakref.WeakKeyDictionary[GridshareApp, SiteMetrics] = weakref.WeakKeyDictionary()


def site_metrics(app: GridshareApp) -> SiteMetrics:
    """The app's metrics, made (and hooked to its controller) once however many APIs
    are built for it."""
    found = _BY_APP.get(app)
    if found is None:
        found = _BY_APP[app] = SiteMetrics(app)
    return found


def register(api: FastAPI, app: GridshareApp) -> None:
    """Add ``GET /metrics`` to ``api``: the Prometheus exposition of ``app``."""
    metrics = site_metrics(app)
    api.state.metrics = metrics
    auth = getattr(api.state, "auth", None)
    """The API's token check (create_api's): reads need a token with api.read_token."""

    async def get_metrics(request: Request) -> Response:
        if auth is not None:
            auth.require_read(request)
        body, content_type = await metrics.render_async(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    api.add_api_route(
        "/metrics", get_metrics, methods=["GET"], tags=["metrics"],
        summary="Prometheus metrics",
        description="Limits, load and setpoints per group and phase, connectors, command "
        "latency, retries, rejected profiles, alarms and errors by kind, meter ingest "
        "(text exposition format 0.0.4; OpenMetrics when asked for in Accept).",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
