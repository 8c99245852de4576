"""``gridshare serve --role gateway|controller``: one site's work split across processes.

- **gateway**: the OCPP central system and the meter sources. Publishes every charger
  event and reading to JetStream and executes the setpoint commands it receives on
  ``gridshare.<site>.cmd`` (:class:`~gridshare.adapters.nats.driver.CommandServer`).
  Transaction messages and meter values are answered only once JetStream acknowledged
  the events they caused (:meth:`~gridshare.adapters.nats.bus.NatsBus.durable`): the
  stream is the gateway's durable storage.
- **controller**: waits for the site's lease (:mod:`~gridshare.adapters.nats.lease`),
  rebuilds its state from the events its predecessor acknowledged, then runs the
  controller (with :class:`~gridshare.adapters.nats.driver.NatsChargerDriver`),
  the audit store and the exactly-once reading recorder, each resuming its durable
  consumer. Losing the lease stops it (exit code 3): a supervisor restarts it as a
  standby, and whoever takes the lease resumes from the same consumers.

``all`` (one process, the default) stays :class:`gridshare.app.GridshareApp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from gridshare.adapters.nats.bus import NatsBus
from gridshare.adapters.nats.driver import CommandServer, NatsChargerDriver
from gridshare.adapters.nats.lease import SiteLease, default_controller_id
from gridshare.adapters.nats.recorder import ReadingRecorder
from gridshare.bus import BusError, open_bus
from gridshare.clock import Clock, SystemClock
from gridshare.controller.loop import Controller
from gridshare.controller.state import MeterInfo
from gridshare.core.topology import Topology
from gridshare.store import Store, default_url, normalise_url
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    from gridshare.adapters.meters import MeterSources
    from gridshare.adapters.nats.bus import NatsSubscription
    from gridshare.app import ServeOptions
    from gridshare.events import Event

log = logging.getLogger("gridshare")

ROLES = ("all", "gateway", "controller")
LEASE_LOST_EXIT = 3


class LeaseLost(RuntimeError):
    """This controller no longer holds its site: it stopped running it."""


def _nats_bus(options: ServeOptions, site: str) -> NatsBus:
    bus = open_bus(options.bus_url, site=site)
    if not isinstance(bus, NatsBus):
        raise BusError(f"--role {options.role} needs a nats:// --bus (got {options.bus_url!r})")
    return bus


class GatewayProcess:
    """The OCPP side of a site: chargers in, events and readings out to JetStream."""

    def __init__(self, topology: Topology, options: ServeOptions, *,
                 clock: Clock | None = None) -> None:
        from gridshare.app import build_csms, build_meter_sources

        self.topology = topology
        self.options = options
        self.clock: Clock = clock or SystemClock()
        self.bus = _nats_bus(options, topology.site)
        self.csms = build_csms(topology, options, self.bus.publish, self.clock,
                               durable=self._durable)
        self.commands = CommandServer(self.bus, self.csms)
        self.meter_sources: MeterSources | None = build_meter_sources(
            topology, options, self.bus.publish, self.clock)
        self.finished: asyncio.Event = asyncio.Event()
        """Never set: a gateway runs until it is stopped."""

    async def _durable(self, events: Sequence[Event]) -> None:
        """In JetStream before the charger is answered: exactly what the central system
        will publish for these events (a dedicated meter's reading as its MeterSample), so
        that publish finds them already queued and sends nothing twice."""
        await self.bus.durable(self.csms.published_as(events))

    async def start(self) -> None:
        try:
            await self.bus.connect()
            await self.commands.start()
            if self.meter_sources is not None:
                await self.meter_sources.start()
            await self.csms.start(self.options.host, self.options.ocpp_port)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.csms.stop()
        if self.meter_sources is not None:
            with contextlib.suppress(Exception):
                await self.meter_sources.stop()
        await self.commands.stop()
        await self.bus.close()

    def ready_line(self) -> str:
        return (f"gridshare ready: site {self.topology.site}, role gateway, OCPP "
                f"ws://{self.options.host}:{self.csms.port}, bus {self.bus.url}, "
                f"{len(self.topology.chargers)} chargers configured")


class ControllerProcess:
    """The deciding side of a site, run only while this process holds the site's lease."""

    def __init__(self, topology: Topology, options: ServeOptions, *,
                 clock: Clock | None = None) -> None:
        from gridshare.app import NO_DB, meter_where

        self.topology = topology
        self.options = options
        self.clock: Clock = clock or SystemClock()
        self.controller_id = options.controller_id or default_controller_id()
        self.bus = _nats_bus(options, topology.site)
        url = options.db_url if options.db_url is not None else default_url(options.data_dir)
        self.db_url: str | None = None if url.lower() in NO_DB else normalise_url(url)
        self.store: Store | None = None if self.db_url is None else Store(self.db_url)
        self.driver = NatsChargerDriver(self.bus)
        settings = options.controller
        if options.meters and not settings.state.meters:
            infos = tuple(MeterInfo(m.id, m.source, meter_where(m), m.max_age)
                          for m in options.meters)
            settings = replace(settings, state=replace(settings.state, meters=infos))
        self.controller = Controller(topology, self.driver, self.clock, settings=settings,
                                     bus=self.bus, audit=self.store)
        self.recorder: ReadingRecorder | None = None if self.db_url is None else \
            ReadingRecorder(self.bus, self.db_url, controller_id=self.controller_id)
        self.lease = SiteLease(self.bus, topology.site, self.controller_id,
                               ttl_s=options.lease_ttl_s)
        self.finished = self.lease.lost
        """Set when the lease is lost: the process must stop running the site."""
        self._store_task: asyncio.Task[None] | None = None
        self.replayed = 0
        """Events folded into the state at takeover (see :func:`replay_state`)."""

    async def start(self) -> None:
        """Wait for the lease (a standby waits here), then start every part."""
        try:
            await self.bus.connect()
            await self.lease.acquire()
            self.replayed = await replay_state(self.bus, self.controller)
            if self.store is not None:
                await self.store.start()
                self._store_task = asyncio.create_task(
                    committed_audit(self.store, self.bus.subscribe("store", only=(
                        "events" if self.recorder is not None else None))),
                    name="gridshare-nats-store")
            await self.controller.start()
            if self.recorder is not None:
                await self.recorder.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.recorder is not None:
            await self.recorder.stop()
        await self.controller.stop()
        if self._store_task is not None:
            await cancel_and_wait([self._store_task], swallow_errors=True)
        if self.store is not None:
            with contextlib.suppress(Exception):
                await self.store.stop()
        await self.lease.release()
        await self.bus.close()

    def ready_line(self) -> str:
        return (f"gridshare ready: site {self.topology.site}, role controller "
                f"{self.controller_id} holds the lease, bus {self.bus.url}")


async def replay_state(bus: NatsBus, controller: Controller, *, durable: str = "controller",
                       timeout_s: float = 30.0) -> int:
    """Rebuild a taking-over controller's state from the site's *events* that the
    previous holder had already acknowledged on ``<site>_<durable>`` (stream sequence up
    to the consumer's ack floor): statuses, sessions, limits, caps and priorities are
    latest-value state, so folding them again in order gives what the previous controller
    knew. Readings are not replayed (the next one replaces a stale one). The durable
    consumer then continues after its ack floor. Returns how many events were folded;
    0 when the consumer is new (it delivers everything from the start anyway)."""
    import nats.js.errors
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    from gridshare.adapters.nats import codec
    from gridshare.adapters.nats.bus import durable_name

    js = await bus.connect()
    try:
        info = await js.consumer_info(bus.settings.stream, durable_name(bus.site, durable))
    except nats.js.errors.NotFoundError:
        return 0
    upto = int(info.ack_floor.stream_seq or 0) if info.ack_floor is not None else 0
    if upto == 0:
        return 0
    subject = f"{codec.SUBJECT_PREFIX}.{codec.token(bus.site)}.events.>"
    psub = await js.pull_subscribe(subject, stream=bus.settings.stream, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=60.0))
    folded = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    msgs = await psub.fetch(256, timeout=1.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    break  # nothing more on the events subjects
                done = False
                for msg in msgs:
                    meta = msg.metadata
                    if meta.sequence.stream > upto:
                        done = True
                        break
                    try:
                        controller.state.apply(codec.decode(msg.data))
                        folded += 1
                    except Exception as exc:  # a bad or unfoldable event: skip it
                        log.warning("replay: event at stream seq %d skipped: %s",
                                    meta.sequence.stream, exc)
                    if meta.num_pending == 0:
                        done = True
                if done:
                    break
    except TimeoutError:
        log.error("replay: site %s: stopped after %.0f s with %d events folded", bus.site,
                  timeout_s, folded)
    finally:
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
    log.info("replay: site %s: %d events folded into the state (up to stream seq %d)",
             bus.site, folded, upto)
    return folded


async def committed_audit(store: Store, sub: NatsSubscription) -> None:
    """The audit log from a durable consumer: a batch is acknowledged once the store has
    written it (at least once: a batch redelivered after a crash may be logged twice).
    Readings are not in it when the recorder runs: they are exactly once in
    ``bus_readings``, written once, not twice."""
    while True:
        try:
            batch = await sub.fetch_batch(500)
        except StopAsyncIteration:
            return
        for _, item in batch:
            try:
                store.record_event(item)
            except Exception:
                store.failed_events += 1
                log.exception("store: event %s could not be recorded", type(item).__name__)
        await store.flush()
        for msg, _ in batch:
            with contextlib.suppress(Exception):
                await msg.ack()


def build_role(topology: Topology, options: ServeOptions, *,
               clock: Clock | None = None) -> GatewayProcess | ControllerProcess:
    if options.role == "gateway":
        return GatewayProcess(topology, options, clock=clock)
    if options.role == "controller":
        return ControllerProcess(topology, options, clock=clock)
    raise ValueError(f"role {options.role!r}: one of {', '.join(ROLES)}")


async def serve_role(topology: Topology, options: ServeOptions,
                     ready: asyncio.Event | None = None) -> None:
    """Run a gateway or a controller until SIGINT/SIGTERM; LeaseLost when a controller
    lost its site (the caller exits with :data:`LEASE_LOST_EXIT`)."""
    app = build_role(topology, options)
    from gridshare.app import stop_on_signals

    with stop_on_signals() as stop:
        lost = await _serve_until(app, stop, ready)
    if lost:
        raise LeaseLost(f"controller lost the lease of site {topology.site}")


async def _serve_until(app: GatewayProcess | ControllerProcess, stop: asyncio.Event,
                       ready: asyncio.Event | None) -> bool:
    """Run ``app`` until ``stop``; whether it ended by losing its lease."""
    if isinstance(app, ControllerProcess):
        print(f"gridshare standby: site {app.topology.site}, controller {app.controller_id} "
              f"waits for the lease", flush=True)
    lost = False
    try:
        starting = asyncio.ensure_future(app.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while waiting for the lease
            await cancel_and_wait([starting], swallow_errors=True)
            return False
        stopping.cancel()
        starting.result()
        print(app.ready_line(), flush=True)
        if ready is not None:
            ready.set()
        finished = asyncio.ensure_future(app.finished.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({finished, stopping}, return_when=asyncio.FIRST_COMPLETED)
        lost = finished.done()
        finished.cancel()
        stopping.cancel()
    finally:
        await app.stop()
    return lost
