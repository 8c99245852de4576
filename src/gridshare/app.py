"""The composition root: configuration → validated models → wired objects, in one place.

Nothing else in gridshare constructs the bus, the CSMS, the controller or the store for a
running system; tests, ``gridshare serve``, ``gridshare demo`` and the benchmarks all go
through :func:`build_app`, so what they exercise is what production runs.

Start order matters: the store and the controller subscribe to the bus *before* the meter
sources read and the CSMS accepts its first charger, so no event is lost; demand response
(when the site has zones) starts right after the controller, so that events in force are
capped before any charger connects; stop order is the reverse, and chargers left without
us fall back to their failsafe profile when their lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gridshare.adapters.ocpp import CentralSystem, ChargerCredentials, CsmsConfig, TlsConfig
from gridshare.adapters.ocpp.meter import OcppMeter
from gridshare.bus import Bus, open_bus
from gridshare.clock import Clock, SystemClock
from gridshare.config import (
    ChargePlanningSpec,
    DemandResponseSpec,
    FrequencyResponseSpec,
    FrequencyUnitSpec,
    MeterSpec,
    MqttSpec,
    OpenEvseSpec,
    RegulationSpec,
    SiteConfig,
    TelemetrySpec,
)
from gridshare.controller.aggregate import LoadService
from gridshare.controller.loop import Controller, ControllerSettings
from gridshare.controller.state import MeterInfo
from gridshare.core.topology import Phase, Topology
from gridshare.core.v2x_book import V2xBook
from gridshare.drivers import ChargerDriver
from gridshare.events import Event
from gridshare.store import Store, default_url, normalise_url

if TYPE_CHECKING:
    from gridshare.adapters.dr.mqtt import DrMqtt
    from gridshare.adapters.dr.openadr import OpenAdrVen
    from gridshare.adapters.frequency.mqtt import FrequencyMqtt
    from gridshare.adapters.homeassistant import HomeAssistantBridge
    from gridshare.adapters.meters import MeterSources
    from gridshare.adapters.openevse import OpenEvseDriver
    from gridshare.api.server import ApiServer
    from gridshare.controller.dr import DrService
    from gridshare.controller.frequency import FrequencyService
    from gridshare.controller.planning import PlanService
    from gridshare.controller.regulation import RegulationService
    from gridshare.controller.telemetry import TelemetryService

log = logging.getLogger("gridshare")

NO_DB = ("none", "off", "")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "0.0.0.0"
    ocpp_port: int = 9000
    """0 picks a free port."""
    api_port: int | None = 8080
    """The REST API, the dashboard and ``GET /status``; None disables it, 0 picks a free
    port."""
    api_tokens: tuple[str, ...] = ()
    """Bearer tokens that may change things through the API (none: changes are refused)."""
    api_read_token: bool = False
    """Reads need a token too (the site file's ``api: {read_token: true}``)."""
    db_url: str | None = None
    """None: SQLite under ``data_dir``; "none": no audit store."""
    bus_url: str = "memory://"
    role: str = "all"
    """all (one process), gateway or controller (separate processes over a nats:// bus:
    :mod:`gridshare.adapters.nats.roles`)."""
    controller_id: str | None = None
    """A controller's name in the site leases (None: host name and process id)."""
    lease_ttl_s: float = 5.0
    """A site lease not renewed for this long expires and another controller takes over."""
    data_dir: Path | None = None
    csms: CsmsConfig | None = None
    """CSMS settings (security profile, TLS, timeouts). Chargers, phases and voltage are
    filled in from the topology; None uses the defaults."""
    controller: ControllerSettings = field(default_factory=ControllerSettings)
    meters: tuple[MeterSpec, ...] = ()
    """The site file's ``meters:`` (a group's ``meter:`` names one of them)."""
    mqtt: MqttSpec | None = None
    """The site file's ``mqtt:`` broker, for mqtt meters."""
    demand_response: DemandResponseSpec = field(default_factory=DemandResponseSpec)
    """The site file's ``demand_response:`` (used when the site declares zones)."""
    charge_planning: ChargePlanningSpec | None = None
    """The site file's ``charge_planning:`` (live planning when enabled)."""
    regulation: RegulationSpec | None = None
    """The site file's ``regulation:`` (area regulation from the meters)."""
    regulation_units: tuple[FrequencyUnitSpec, ...] = ()
    """``frequency_response.units`` (the batteries regulation may dispatch)."""
    frequency_topic: str | None = None
    """``frequency_response.source.mqtt_topic`` (regulation's frequency, by default)."""
    frequency_response: FrequencyResponseSpec | None = None
    """The site file's ``frequency_response:`` (None: no frequency response)."""
    telemetry: TelemetrySpec | None = None
    """The site file's ``telemetry:`` (AMI and station topics, demand windows)."""
    ami_meters: tuple[MeterSpec, ...] = ()
    """The site file's AMI meters (``meters:`` entries with a feeder/substation/region)."""
    openevse: dict[str, OpenEvseSpec] = field(default_factory=dict)
    """Charger id -> its OpenEVSE box (``driver: openevse``); the others speak OCPP."""
    site_path: Path | None = None
    """The site file this runs (``POST /api/v1/chargers`` adds chargers to it); None: the
    site was not read from a file the operator owns (``gridshare demo``), so it is never
    written."""


def csms_settings(config: SiteConfig) -> CsmsConfig:
    """The site file's ``ocpp:`` section as the central system's settings.

    The one place where validated site settings become the CSMS's: the section was
    checked once, by pydantic, when the file was read (:class:`gridshare.config.OcppSpec`);
    TLS paths are already resolved against the site file's folder.
    """
    ocpp = config.ocpp
    tls = None if ocpp.tls is None else TlsConfig(ocpp.tls.certfile, ocpp.tls.keyfile,
                                                  ocpp.tls.cafile)
    return CsmsConfig(
        security_profile=ocpp.security_profile, allow_auto_register=ocpp.allow_auto_register,
        pending_unknown=ocpp.pending_unknown,
        tls=tls, heartbeat_interval_s=ocpp.heartbeat_interval,
        command_timeout_s=ocpp.command_timeout, command_retries=ocpp.command_retries,
        no_subprotocol=ocpp.no_subprotocol, lease_s=ocpp.lease,
        chargers={cid: ChargerCredentials(config.passwords.get(cid))
                  for cid in config.topology.chargers},
        v2x=frozenset(c.id for c in config.topology.chargers.values() if c.v2x))


def serve_options(config: SiteConfig, *, host: str = "0.0.0.0", ocpp_port: int = 9000,
                  api_port: int | None = 8080, db_url: str | None = None,
                  bus_url: str = "memory://", data_dir: Path | None = None,
                  api_tokens: tuple[str, ...] = (),
                  site_path: Path | None = None, role: str = "all",
                  controller_id: str | None = None) -> ServeOptions:
    """How to run a site read from its file: where to listen and store and the API's
    tokens (from the command line), the CSMS settings and the controller's lease (from the
    file's ``ocpp:``), whether reads need a token (its ``api:``)."""
    return ServeOptions(host=host, ocpp_port=ocpp_port, api_port=api_port, db_url=db_url,
                        api_tokens=api_tokens, api_read_token=config.api.read_token,
                        bus_url=bus_url, role=role, controller_id=controller_id,
                        data_dir=data_dir, csms=csms_settings(config),
                        controller=ControllerSettings(lease_s=config.ocpp.lease),
                        meters=config.meters, mqtt=config.mqtt,
                        demand_response=config.demand_response, site_path=site_path,
                        charge_planning=config.charge_planning,
                        regulation=config.regulation if config.regulation is None
                        or config.regulation.nominal_hz is not None
                        or config.frequency_response is None
                        else config.regulation.model_copy(
                            update={"nominal_hz": config.frequency_response.nominal_hz}),
                        regulation_units=tuple(config.frequency_response.units)
                        if config.frequency_response is not None else (),
                        frequency_topic=config.frequency_response.source.mqtt_topic
                        if config.frequency_response is not None else None,
                        frequency_response=config.frequency_response,
                        telemetry=config.telemetry, ami_meters=config.ami_meters,
                        openevse=config.openevse)


def meter_where(spec: MeterSpec) -> str:
    """Where a meter's readings come from, as alarms and ``/status`` name it."""
    if spec.source == "mqtt":
        return f"mqtt {spec.topic}"
    if spec.source == "http":
        from gridshare.adapters.meters.http import public_url

        return f"http {public_url(spec.url or '')}"
    return f"ocpp {spec.charger} connector {spec.connector}"


def meter_phases(topology: Topology, meters: tuple[MeterSpec, ...]) -> dict[str, int]:
    """Meter id -> phases of the groups that follow it (3 if any is 3-phase or none is)."""
    out: dict[str, int] = {}
    for group in topology.groups.values():
        if group.meter is not None:
            out[group.meter] = max(out.get(group.meter, 1), group.phases)
    return {m.id: out.get(m.id, 3) for m in meters}


def meter_lines(topology: Topology, meters: tuple[MeterSpec, ...]) -> dict[str, Phase]:
    """Meter id -> the line of the 1-phase group(s) that follow it: their chargers' line
    (the site file is checked to give a 1-phase group one line). A meter of a 3-phase group,
    or of one without chargers, has none: its 1-phase reading counts on every phase."""
    phases = meter_phases(topology, meters)
    out: dict[str, Phase] = {}
    for gid, group in topology.groups.items():
        if group.meter is None or phases.get(group.meter) != 1:
            continue
        for cid in topology.subtree_chargers(gid):
            line = topology.chargers[cid].phase
            if line is not None:
                out[group.meter] = line
                break
    return out


def ocpp_meters(topology: Topology, meters: tuple[MeterSpec, ...]) -> list[OcppMeter]:
    """The meters read from MeterValues; an id that is no charger is a dedicated meter."""
    phases = meter_phases(topology, meters)
    return [OcppMeter(m.id, m.charger, m.connector, phases[m.id],
                      dedicated=m.charger not in topology.chargers)
            for m in meters if m.source == "ocpp" and m.charger is not None]


def csms_config(topology: Topology, base: CsmsConfig | None,
                settings: ControllerSettings) -> CsmsConfig:
    """The CSMS knows exactly the site's chargers, their phases and the site voltage."""
    base = base or CsmsConfig()
    chargers = {cid: base.chargers.get(cid, ChargerCredentials()) for cid in topology.chargers}
    phases = {cid: ch.phases for cid, ch in topology.chargers.items()}
    v2x = base.v2x | {cid for cid, ch in topology.chargers.items() if ch.v2x}
    return replace(base, chargers=chargers, phases={**phases, **base.phases},
                   voltage_v=topology.voltage, lease_s=settings.lease_s, v2x=frozenset(v2x))


def build_csms(topology: Topology, options: ServeOptions, publish: Callable[[Event], None],
               clock: Clock, *,
               durable: Callable[[Sequence[Event]], Awaitable[None]] | None = None,
               ) -> CentralSystem:
    """The OCPP central system of a site (one process, or a NATS gateway): its chargers,
    the meters that are OCPP devices of their own (accepted like a charger with the same
    security profile, never given a profile), and not the OpenEVSE boxes (they never
    connect over OCPP)."""
    by_ocpp = ocpp_meters(topology, options.meters)
    csms = csms_config(topology, options.csms, options.controller)
    for meter in by_ocpp:
        if meter.dedicated and meter.charger not in csms.chargers:
            spec = next(m for m in options.meters if m.id == meter.meter)
            csms.chargers[meter.charger] = ChargerCredentials(spec.password_hash)
    for cid in options.openevse:
        csms.chargers.pop(cid, None)
    return CentralSystem(csms, publish, clock=clock.now, meters=by_ocpp, durable=durable)


def build_meter_sources(topology: Topology, options: ServeOptions,
                        publish: Callable[[Event], None], clock: Clock) -> MeterSources | None:
    """The MQTT and HTTP meters of the site (None: every meter is an OCPP device)."""
    if all(m.source == "ocpp" for m in options.meters):
        return None
    from gridshare.adapters.meters import MeterSources

    return MeterSources(options.meters, options.mqtt, publish, clock,
                        voltage=topology.voltage, phases=meter_phases(topology, options.meters),
                        lines=meter_lines(topology, options.meters))


class GridshareApp:
    """One running site: bus, CSMS, controller, audit store and the API."""

    def __init__(self, topology: Topology, options: ServeOptions | None = None, *,
                 clock: Clock | None = None) -> None:
        self.topology = topology
        self.options = options = options or ServeOptions()
        self.clock: Clock = clock or SystemClock()
        self.bus: Bus = open_bus(options.bus_url, site=topology.site)
        url = options.db_url
        if url is None:
            url = default_url(options.data_dir)
        self.store: Store | None = None if url.lower() in NO_DB else Store(normalise_url(url))
        self.csms = build_csms(
            topology, options, self.bus.publish, self.clock,
            # transaction messages and meter values are answered after their rows commit
            durable=None if self.store is None else self.store.durable.write)
        self.openevse: OpenEvseDriver | None = None
        """The OpenEVSE boxes' driver (None: every charger speaks OCPP)."""
        driver: ChargerDriver = self.csms
        if options.openevse:
            from gridshare.adapters.openevse import OpenEvseDriver
            from gridshare.adapters.router import DriverRouter

            self.openevse = OpenEvseDriver(options.openevse, options.mqtt or MqttSpec(),
                                           self.bus.publish, clock=self.clock,
                                           lease_s=options.controller.lease_s)
            driver = DriverRouter(self.csms, dict.fromkeys(options.openevse, self.openevse))
        settings = options.controller
        if options.meters and not settings.state.meters:
            infos = tuple(MeterInfo(m.id, m.source, meter_where(m), m.max_age)
                          for m in options.meters)
            settings = replace(settings, state=replace(settings.state, meters=infos))
        self.controller = Controller(topology, driver, self.clock, settings=settings,
                                     bus=self.bus, audit=self.store)
        if self.store is not None:  # every cycle's decision in the audit log
            self.controller.on_cycle(self.store.record_cycle)
        self.meter_sources = build_meter_sources(topology, options, self.bus.publish,
                                                 self.clock)
        self.homeassistant: HomeAssistantBridge | None = None
        """Home Assistant over the ``mqtt:`` broker (on unless ``homeassistant.enabled``
        is false)."""
        if options.mqtt is not None and options.mqtt.homeassistant.enabled:
            from gridshare.adapters.homeassistant import HomeAssistantBridge

            self.homeassistant = HomeAssistantBridge(
                topology, options.mqtt, self.controller, self.bus.publish, self.clock)
            self.controller.on_cycle(self.homeassistant.changed)
        self.loads = LoadService(topology, self.bus, self.clock)
        """Live load per station and zone (one-minute windows), for every site."""
        self.v2x_book = V2xBook()
        """V2X values that may be in force, shared by every sender (docs/v2g.md)."""
        self.dr: DrService | None = None
        """Demand response (None: the site declares no zones)."""
        if topology.zones:
            from gridshare.controller.dr import DrService

            tick_s = settings.tick_s
            self.dr = DrService(topology, options.demand_response, self.bus, self.clock,
                                store=self.store, state_view=self.controller.state,
                                tick_s=None if tick_s is None else min(1.0, tick_s))
        self.dr_mqtt: DrMqtt | None = None
        """DR signals in (and alerts out) over the ``mqtt:`` broker."""
        if self.dr is not None and options.mqtt is not None:
            from gridshare.adapters.dr.mqtt import DrMqtt

            self.dr_mqtt = DrMqtt(  # PUBACK once the signal is committed
                options.mqtt, topology.site, self.dr, self.clock,
                commit=None if self.store is None else partial(self.store.flush, strict=True))
        self.dr_openadr: OpenAdrVen | None = None
        """The OpenADR 2.0b VEN of ``demand_response: {openadr: ...}``."""
        openadr = options.demand_response.openadr
        if self.dr is not None and openadr is not None:
            from gridshare.adapters.dr.openadr import OpenAdrVen

            self.dr_openadr = OpenAdrVen(openadr, self.dr, self.clock,
                                         zone_kw=self.dr.zone_load_kw)
        self.planning: PlanService | None = None
        """Live charge planning (None: no enabled ``charge_planning:`` block)."""
        if options.charge_planning is not None and options.charge_planning.enabled:
            from gridshare.controller.planning import PlanService, load_tariff_steps

            base = options.site_path.parent if options.site_path is not None else None
            self.planning = PlanService(
                topology, options.charge_planning, self.bus, self.clock,
                state_view=self.controller.state, store=self.store,
                tariff=load_tariff_steps(options.charge_planning, base))
        self.frequency: FrequencyService | None = None
        """Frequency response (None: the site file has no ``frequency_response:``)."""
        self.frequency_mqtt: FrequencyMqtt | None = None
        if options.frequency_response is not None:
            from gridshare.controller.regulation import frequency_without_regulated

            frequency = frequency_without_regulated(
                options.frequency_response,
                options.regulation if options.mqtt is not None else None)
            if frequency is not None:
                self._build_frequency(frequency)
        self.telemetry: TelemetryService | None = None
        """AMI and station telemetry over the ``mqtt:`` broker (docs/telemetry.md): on
        when the site has ``telemetry:`` or AMI meters."""
        if options.mqtt is not None and (options.telemetry is not None or options.ami_meters):
            from gridshare.controller.telemetry import TelemetryService, station_ratings

            self.telemetry = TelemetryService(
                topology.site, options.ami_meters, list(topology.chargers),
                options.telemetry, self.clock, mqtt=options.mqtt, store=self.store,
                publish=self.bus.publish, station_ratings=station_ratings(topology))
        self.regulation: RegulationService | None = None
        """Area regulation from the meters (None: no ``regulation:`` block); its area load
        from MQTT feeder meters, a zone, or an AMI feeder/substation/region of
        ``self.telemetry`` (docs/regulation.md)."""
        if options.regulation is not None and options.mqtt is not None:
            from gridshare.controller.regulation import (
                RegulationService,
                area_source,
                batteries,
            )

            reg = options.regulation
            source = area_source(reg, zone_areas=topology.zones, ami_meters=options.ami_meters,
                                 clock=self.clock, loads=self.loads,
                                 telemetry=self.telemetry)
            self.regulation = RegulationService(
                reg, batteries(options.regulation_units, reg.units), source, self.clock,
                site=topology.site, mqtt=options.mqtt, store=self.store,
                frequency_topic=reg.frequency_topic or options.frequency_topic)
        self.api_server: ApiServer | None = None
        if options.api_port is not None:
            from gridshare.api.app import create_api
            from gridshare.api.server import ApiServer

            self.api_server = ApiServer(create_api(self, options.api_tokens,
                                                   read_token=options.api_read_token))
        self._started = False

    def _build_frequency(self, spec: FrequencyResponseSpec) -> None:
        """The frequency service, its MQTT link (source and batteries) and the CSMS as
        its V2X driver (when the CSMS speaks V2X; else chargers are only curtailed)."""
        from gridshare.adapters.frequency.mqtt import FrequencyMqtt, source_topic
        from gridshare.controller.frequency import FrequencyService, soc_topics, v2x_driver

        if self.options.mqtt is not None:
            self.frequency_mqtt = FrequencyMqtt(
                self.options.mqtt, source_topic(spec.source.mqtt_topic, self.topology.site),
                soc_topics(spec))
        self.frequency = FrequencyService(
            spec, self.topology, self.clock, bus=self.bus, state_view=self.controller.state,
            v2x=v2x_driver(self.csms), batteries=self.frequency_mqtt, store=self.store,
            book=self.v2x_book, counted=self.controller.counted)
        if self.frequency_mqtt is not None:
            self.frequency_mqtt.attach(self.frequency)

    def status(self) -> dict[str, Any]:
        """The controller's status, each meter with its source's error count and last
        error (what ``GET /status`` serves)."""
        out = self.controller.status().to_dict()
        sources = self.meter_sources.status() if self.meter_sources is not None else {}
        for meter in out.get("meters", []):
            found = sources.get(meter["id"])
            meter["errors"] = found.errors if found is not None else 0
            meter["last_error"] = found.last_error if found is not None else None
        if self.openevse is not None:  # per box: heartbeats, bad messages, last error
            out["openevse"] = self.openevse.status()
        if self.regulation is not None:  # area, load and its age, holding, setpoints
            out["regulation"] = self.regulation.status()
        return out

    async def start(self) -> None:
        if self.store is not None:
            await self.store.start()
            self.store.consume(self.bus.subscribe("store"))
        await self.controller.start()
        try:
            await self.loads.start()  # subscribes before any charger connects
            if self.dr is not None:
                # Before the chargers connect: an event in force before a restart is
                # capped again from their first setpoint on.
                await self.dr.start()
            if self.planning is not None:
                await self.planning.start()
            if self.regulation is not None:
                await self.regulation.start()
            for dr_input in (self.dr_mqtt, self.dr_openadr):
                if dr_input is not None:
                    await dr_input.start()  # never raises for a peer that is down
            if self.meter_sources is not None:
                await self.meter_sources.start()
            if self.frequency is not None:
                await self.frequency.start()  # safe state until the first sample
                if self.frequency_mqtt is not None:
                    await self.frequency_mqtt.start()  # never raises for a broker down
            if self.telemetry is not None:
                await self.telemetry.start()  # never raises for a broker that is down
            if self.openevse is not None:
                await self.openevse.start()  # never raises for a box or broker down
            await self.csms.start(self.options.host, self.options.ocpp_port)
            if self.homeassistant is not None:
                await self.homeassistant.start()
            if self.api_server is not None and self.options.api_port is not None:
                await self.api_server.start(self.options.host, self.options.api_port)
        except BaseException:
            await self.stop()
            raise
        self._started = True

    async def stop(self) -> None:
        """Stop accepting, close every charger connection, stop deciding, flush the log."""
        if self.homeassistant is not None:
            with contextlib.suppress(Exception):
                await self.homeassistant.stop()
        if self.api_server is not None:
            await self.api_server.stop()
        with contextlib.suppress(Exception):
            await self.csms.stop()
        if self.openevse is not None:
            with contextlib.suppress(Exception):
                await self.openevse.stop()
        if self.meter_sources is not None:
            with contextlib.suppress(Exception):
                await self.meter_sources.stop()
        if self.frequency_mqtt is not None:
            with contextlib.suppress(Exception):
                await self.frequency_mqtt.stop()
        if self.frequency is not None:
            with contextlib.suppress(Exception):
                await self.frequency.stop()
        if self.telemetry is not None:
            with contextlib.suppress(Exception):
                await self.telemetry.stop()
        for dr_input in (self.dr_openadr, self.dr_mqtt):
            if dr_input is not None:
                with contextlib.suppress(Exception):
                    await dr_input.stop()
        if self.regulation is not None:
            with contextlib.suppress(Exception):
                await self.regulation.stop()
        if self.planning is not None:
            with contextlib.suppress(Exception):
                await self.planning.stop()
        if self.dr is not None:
            with contextlib.suppress(Exception):
                await self.dr.stop()
        await self.loads.stop()
        await self.controller.stop()
        if self.store is not None:
            await self.store.stop()
        await self.bus.close()
        self._started = False

    @property
    def ocpp_port(self) -> int:
        return self.csms.port

    @property
    def api_port(self) -> int | None:
        """The API's port once started (None: no API)."""
        return self.api_server.port if self.api_server is not None else None

    @property
    def ocpp_url(self) -> str:
        scheme = "wss" if (self.csms.config.security_profile >= 2) else "ws"
        return f"{scheme}://{self.options.host}:{self.ocpp_port}"

    def ready_line(self) -> str:
        parts = [f"gridshare ready: site {self.topology.site}", f"OCPP {self.ocpp_url}",
                 f"{len(self.topology.chargers)} chargers configured"]
        if self.api_server is not None:
            parts.append(f"status http://{self.options.host}:{self.api_server.port}/status")
        return ", ".join(parts)


def build_app(topology: Topology, options: ServeOptions | None = None, *,
              clock: Clock | None = None) -> GridshareApp:
    return GridshareApp(topology, options, clock=clock)


async def serve(topology: Topology, options: ServeOptions,
                ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT or SIGTERM; print the ready line once everything listens."""
    if options.role != "all":
        from gridshare.adapters.nats.roles import serve_role

        await serve_role(topology, options, ready)
        return
    app = build_app(topology, options)
    with stop_on_signals() as stop:
        await _serve_until(app, stop, ready)


async def _serve_until(app: GridshareApp, stop: asyncio.Event,
                       ready: asyncio.Event | None) -> None:
    try:
        await app.start()
        # What is alive now (config, topology, libraries) stays for the whole run: out of
        # the collector's reach, a full collection no longer walks it (with 500 frequency
        # units, full collections of the whole heap paused a sample's handling 60-160 ms).
        gc.freeze()
        print(app.ready_line(), flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping: chargers fall back to their failsafe when their lease ends")
    finally:
        await app.stop()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event that SIGINT or SIGTERM sets while inside (where the loop can take signal
    handlers); the handlers are removed on the way out."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
