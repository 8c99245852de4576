"""The OCPP central system (CSMS): one WebSocket port for OCPP 1.6J and 2.0.1 chargers.

It listens (the handshake is :class:`~.server.Gatekeeper`'s), runs one
:class:`~.session.Session` per charger, publishes typed events from gridshare.events
through a plain callback, and implements the ChargerDriver protocol with charging profiles:
every command ends in a :class:`~gridshare.drivers.CommandOutcome`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from gridshare.core.v2x_offer import V2xOffer, discharge_cap_w, offer_refusal
from gridshare.drivers import CommandOutcome, CommandResult, SetpointRequest
from gridshare.events import (
    ChargerBooted,
    ChargerOffline,
    ChargerOnline,
    Event,
    EventCounters,
    MeterReading,
    ProfileRejected,
)
from gridshare.ocpp_version import OcppVersion
from gridshare.tasks import cancel_and_wait

from . import profiles, v2x
from .auth import charger_id_from_path, server_ssl_context
from .config import ChargerCredentials, CsmsConfig
from .meter import OcppMeter, meter_sample
from .pending import PendingCharger, PendingRegistry
from .rpc import Deadlines, FrameWriter
from .server import Gatekeeper
from .session import ChargerState, Command, Session, SessionContext
from .stats import CsmsStats

LOG = logging.getLogger("gridshare.ocpp")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _not_connected() -> asyncio.Future[CommandOutcome]:
    future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
    future.set_result(CommandOutcome(CommandResult.OFFLINE, sent=False, detail="not connected"))
    return future


def _refused_meter() -> asyncio.Future[CommandOutcome]:
    """A dedicated meter is never sent a profile, whoever asks."""
    future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
    future.set_result(CommandOutcome(CommandResult.REJECTED, sent=False,
                                     detail="a meter, not a charger"))
    return future


def _refused_pending() -> asyncio.Future[CommandOutcome]:
    """A charger that is not declared is never sent a profile or a command."""
    future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
    future.set_result(CommandOutcome(CommandResult.REJECTED, sent=False,
                                     detail="not declared (pending)"))
    return future


class CentralSystem:
    """OCPP CSMS and ChargerDriver. See the package docstring for the whole picture."""

    def __init__(self, config: CsmsConfig, publish: Callable[[Event], None],
                 clock: Callable[[], datetime] | None = None, *,
                 meters: Sequence[OcppMeter] = (),
                 durable: Callable[[Sequence[Event]], Awaitable[None]] | None = None) -> None:
        """``meters``: site meters read from MeterValues; a dedicated one's id must be in
        ``config.chargers`` to be accepted (same security rules as a charger)."""
        self.config = config
        self._meters = {(m.charger, m.connector): m for m in meters}
        self._meter_only = frozenset(m.charger for m in meters if m.dedicated)
        self._publish = publish
        self._clock = clock or _utcnow
        self.counters = EventCounters()
        self.metrics = CsmsStats()
        self.pending = PendingRegistry(config.pending_max)
        """Chargers connected or seen without being declared (``config.pending_unknown``)."""
        self._gatekeeper = Gatekeeper(
            config, self.counters,
            pending_room=self.pending.has_room if config.pending_unknown else None)
        self._sessions: dict[str, Session] = {}
        self._states: dict[str, ChargerState] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: Server | None = None
        # Transaction ids survive a restart unambiguously enough: seeded from the clock.
        self._tx_ids = itertools.count(int(self._clock().timestamp()) % 1_000_000_000 + 1)
        self._context = SessionContext(
            config=config, counters=self.counters, metrics=self.metrics,
            writer=FrameWriter(self.spawn), deadlines=Deadlines(), now=self.now,
            emit=self.emit, spawn=self.spawn,
            charger_state=self.charger_state, next_transaction_id=lambda: next(self._tx_ids),
            command_done=self._command_done, pending_event=self._pending_event,
            durable=durable)

    # --- plumbing shared with the sessions ----------------------------------------------

    def now(self) -> datetime:
        return self._clock()

    def emit(self, event: Event) -> None:
        """Publish a session's event; a meter's MeterValues also as its MeterSample, and
        nothing else of a dedicated meter (it is no charger to the controller)."""
        for out in self._outgoing(event, count=True):
            self._send(out)

    def published_as(self, events: Sequence[Event]) -> list[Event]:
        """What :meth:`emit` publishes for ``events``, in order (counting nothing): a NATS
        gateway waits for exactly these to be acknowledged before it answers."""
        return [out for event in events for out in self._outgoing(event, count=False)]

    def _outgoing(self, event: Event, *, count: bool) -> list[Event]:
        out: list[Event] = []
        if self._meters and isinstance(event, MeterReading):
            meter = self._meters.get((event.charger, event.connector))
            if meter is not None:
                sample = meter_sample(event, meter, voltage_v=self.config.voltage_v)
                if sample is not None:
                    out.append(sample)
                elif count:
                    self.counters.reject("meter_no_current_or_power")
        charger = getattr(event, "charger", None)
        if charger is None or charger not in self._meter_only:
            out.append(event)
        return out

    def _pending_event(self, charger: str, event: Event) -> None:
        """A pending charger's event: what it says of itself is remembered, and nothing
        reaches the controller (it is never controlled, never counted)."""
        self.counters.reject("pending_event")
        if isinstance(event, ChargerBooted):
            self.pending.booted(charger, event.vendor, event.model, event.at)
            LOG.info("pending charger %s booted (%s %s, %s): declare it to accept it",
                     charger, event.vendor, event.model, event.protocol,
                     extra={"charger": charger})
        else:
            self.pending.seen(charger, event.at)

    def declared(self, charger: str) -> bool:
        """Whether ``charger`` is declared (or auto-registered); a connection of one that
        is not is pending. Without ``config.pending_unknown`` every charger that got past
        the handshake is."""
        return not self.config.pending_unknown or self._gatekeeper.declared(charger)

    def declare(self, charger: str, credentials: ChargerCredentials | None = None, *,
                phases: int = 3, v2x: bool = False) -> str:
        """Accept ``charger`` from now on (an operator adopted it into the site file).

        If it is connected as pending: with basic auth (profiles 1, 2) its password was
        never checked, so the connection is closed and it must come back with the declared
        one; otherwise it is asked to boot again now (TriggerMessage), and that boot, like
        any later one, is answered Accepted. Returns what happened: ``"reconnect"``,
        ``"triggered"``, ``"not connected"`` or ``"already accepted"``."""
        if phases not in (1, 2, 3):
            raise ValueError(f"phases must be 1..3, got {phases}")
        self._gatekeeper.credentials[charger] = credentials or ChargerCredentials()
        self.config.phases[charger] = phases
        if v2x:  # declared bidirectional (docs/v2g.md)
            self.config.v2x = self.config.v2x | {charger}
        self.pending.forget(charger)
        session = self._sessions.get(charger)
        if session is None or session.closing:
            return "not connected"
        if not session.pending:
            return "already accepted"
        if self.config.security_profile in (1, 2):
            # It stays pending until it is gone: nothing it says now is trusted.
            session.closing = True
            self.spawn(session.close("declared: reconnect with the declared password"),
                       f"ocpp-close-{charger}")
            return "reconnect"
        session.pending = False
        outcome = session.submit(session.trigger_boot_command())
        # Until that boot the controller counts it offline, at its failsafe.
        outcome.add_done_callback(lambda f: self._triggered(charger, f))
        return "triggered"

    def _triggered(self, charger: str, future: asyncio.Future[CommandOutcome]) -> None:
        if future.cancelled():
            return
        outcome = future.result()
        if outcome.result is not CommandResult.ACCEPTED:
            LOG.info("%s: TriggerMessage(BootNotification) %s (%s): accepted at its next "
                     "boot", charger, outcome.result.value, outcome.detail)

    def pending_chargers(self) -> list[PendingCharger]:
        """Every undeclared charger remembered, oldest first, with the latest time a
        connected one was heard from."""
        for entry in self.pending.all():
            session = self._sessions.get(entry.id)
            if entry.connected and session is not None:
                self.pending.seen(entry.id, session.last_seen)
        return self.pending.all()

    def _send(self, event: Event) -> None:
        try:
            self._publish(event)
        except Exception:  # a subscriber's bug must not break the charger's connection
            LOG.exception("publish failed for %r", event)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Every background task is kept and its failure logged: nothing fire-and-forget."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            LOG.error("task %s failed", task.get_name(), exc_info=task.exception())

    def charger_state(self, charger: str) -> ChargerState:
        state = self._states.get(charger)
        if state is None:
            state = self._states[charger] = ChargerState()
        return state

    def _command_done(self, charger: str, command: Command, outcome: CommandOutcome) -> None:
        state = self.charger_state(charger)
        if outcome.result is CommandResult.ACCEPTED:
            state.rejected.pop(command.key, None)
        elif outcome.result is CommandResult.REJECTED:
            state.rejected[command.key] = outcome.detail
            LOG.warning("%s: %s rejected: %s", charger, command.action, outcome.detail)
            if command.profile:
                self.emit(ProfileRejected(charger, command.connector, self.now(),
                                          outcome.detail))

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 9000) -> None:
        """Listen on ``host:port`` (port 0 picks a free one, see :attr:`port`)."""
        if self._server is not None:
            raise RuntimeError("already started")
        cfg = self.config
        ssl_context = None
        if cfg.security_profile >= 2 and cfg.tls is not None:
            ssl_context = server_ssl_context(cfg.tls,
                                             require_client_cert=cfg.security_profile == 3)
        # Above our own limit, so an oversized frame reaches us and can be answered; frames
        # beyond this are a flood and websockets closes the connection (1009).
        max_size = max(4 * cfg.max_message_bytes, cfg.max_message_bytes + 65536)
        gate = self._gatekeeper
        self._server = await serve(
            self._handle, host, port,
            subprotocols=[Subprotocol(p) for p in cfg.subprotocols],
            select_subprotocol=gate.select_subprotocol,
            process_request=gate.process_request,
            ssl=ssl_context, max_size=max_size,
            compression="deflate" if cfg.compression else None,
            server_header="gridshare",
        )
        self.spawn(self._watchdog(), "ocpp-watchdog")
        LOG.info("OCPP CSMS listening on %s:%s (security profile %s)", host, self.port,
                 cfg.security_profile)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        """Close every connection cleanly (1001 going away), then cancel all our tasks."""
        server, self._server = self._server, None
        if server is not None:
            server.close(close_connections=True)
            await server.wait_closed()
        await cancel_and_wait(list(self._tasks), swallow_errors=True)

    # --- connections ----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        charger = charger_id_from_path(ws.request.path if ws.request else "")
        version = self._gatekeeper.version_of(ws)
        if charger is None or version is None:
            self.counters.reject("no_subprotocol")
            LOG.warning("closing connection without a supported OCPP subprotocol from %s",
                        ws.remote_address)
            await ws.close(1002, "no supported OCPP subprotocol")
            return
        session = self.open_session(ws, charger, version)
        if session.pending:
            peer = ws.remote_address
            where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
            self.pending.connected(charger, version.value, where, self.now())
            LOG.warning("charger %r from %s is not declared: held pending", charger, where,
                        extra={"charger": charger, "reason": "pending"})
        else:
            self.emit(ChargerOnline(charger, self.now()))
        try:
            await session.run()
        finally:
            if self._sessions.get(charger) is session:
                del self._sessions[charger]
                if charger in self.pending:
                    self.pending.disconnected(charger, self.now())
            if not session.replaced:
                self._offline(session, f"connection closed ({ws.close_code})")

    def open_session(self, ws: ServerConnection, charger: str,
                     version: OcppVersion) -> Session:
        """The session of a connection that passed the handshake, registered as the
        charger's current one (an older connection of the same charger is closed)."""
        session = Session(self._context, ws, charger, version)
        session.pending = not self.declared(charger)
        previous = self._sessions.get(charger)
        if previous is not None:
            previous.replaced = True
            self.spawn(previous.close("replaced by a new connection"), f"ocpp-close-{charger}")
        self._sessions[charger] = session
        return session

    def _offline(self, session: Session, reason: str) -> None:
        if session.offline_published or session.pending:
            return  # a pending connection never went online for the controller
        session.offline_published = True
        self.emit(ChargerOffline(session.charger, self.now(), reason))

    async def _watchdog(self) -> None:
        """Declare chargers silent for longer than the heartbeat allowance offline."""
        allowance = self.config.offline_after
        interval = min(max(allowance / 5, 0.02), 5.0)
        while True:
            await asyncio.sleep(interval)
            now = self.now()
            for session in list(self._sessions.values()):
                if session.closing or session.offline_published:
                    continue
                if (now - session.last_seen).total_seconds() > allowance:
                    LOG.warning("%s: silent for more than %.1f s, closing", session.charger,
                                allowance)
                    self._offline(session, "silent past heartbeat allowance")
                    session.closing = True
                    self.spawn(session.close("heartbeat timeout"),
                               f"ocpp-close-{session.charger}")

    # --- queries --------------------------------------------------------------------------

    def connected(self) -> frozenset[str]:
        return frozenset(self._sessions)

    def protocol_of(self, charger: str) -> str | None:
        session = self._sessions.get(charger)
        return session.protocol.value if session else None

    def transaction_of(self, charger: str, connector: int) -> str | None:
        """The running transaction on a connector as we know it (None: none)."""
        state = self._states.get(charger)
        return state.tx_by_connector.get(connector) if state else None

    def rejected_profiles(self) -> dict[str, str]:
        """Charger → detail of its latest command rejection still unresolved."""
        return {charger: next(reversed(state.rejected.values()))
                for charger, state in self._states.items() if state.rejected}

    def stats(self) -> dict[str, float | int]:
        """connections, calls_sent, calls_failed, coalesced, latency_mean_ms, latency_p99_ms."""
        return self.metrics.summary(len(self._sessions))

    # --- ChargerDriver ----------------------------------------------------------------------

    def _submit(self, charger: str, make: Callable[[Session], Command],
                ) -> asyncio.Future[CommandOutcome]:
        session = self._sessions.get(charger)
        if charger in self._meter_only:
            return _refused_meter()
        if session is None or session.closing:
            return _not_connected()
        if session.pending:
            return _refused_pending()
        return session.submit(make(session))

    @staticmethod
    def _check_current(current_a: float) -> None:
        if not (isinstance(current_a, int | float) and math.isfinite(current_a)
                and current_a >= 0):
            raise ValueError(f"current must be a finite, non-negative number, got {current_a}")

    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[Awaitable[CommandOutcome]]:
        """Queue every setpoint at once; the i-th awaitable resolves with the i-th outcome.

        Frames of chargers with nothing in flight are built here and written by one writer
        task on the next loop pass (no task and no lock per charger). Every request is
        checked before any is queued, so a bad one (ValueError) queues nothing.
        """
        for request in requests:
            self._check_current(request.current_a)
            profiles.lease_seconds(request.lease_s)
            if request.connector < 1:
                raise ValueError("a setpoint needs a connector >= 1")
        outcomes: list[Awaitable[CommandOutcome]] = []
        for request in requests:
            session = self._sessions.get(request.charger)
            if request.charger in self._meter_only:
                outcomes.append(_refused_meter())
                continue
            if session is None or session.closing:
                outcomes.append(_not_connected())
                continue
            if session.pending:
                outcomes.append(_refused_pending())
                continue
            outcomes.append(session.submit(session.setpoint_command(
                request.connector, request.current_a, request.lease_s)))
        return outcomes

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float | None = None) -> CommandOutcome:
        """Live setpoint (A per phase) for ``connector``, valid for ``lease_s`` seconds
        (default ``config.lease_s``): a TxProfile for the running transaction, else a
        TxDefaultProfile on that connector. A newer setpoint supersedes a queued one."""
        lease = self.config.lease_s if lease_s is None else lease_s
        (outcome,) = self.submit_setpoints([SetpointRequest(charger, connector, current_a,
                                                            lease)])
        return await outcome

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        """TxDefaultProfile on connector 0. Remembered and re-sent after every (re)connect,
        so OFFLINE here still means it will be installed when the charger comes back."""
        self._check_current(current_a)
        self.charger_state(charger).failsafe_a = current_a
        return await self._submit(charger, lambda s: s.failsafe_command(current_a))

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        """ChargePointMaxProfile on connector 0; None lifts it (ClearChargingProfile by id).
        Remembered and re-sent on reconnect like the failsafe."""
        if current_a is not None:
            self._check_current(current_a)
        self.charger_state(charger).cap_a = current_a
        return await self._submit(charger, lambda s: s.cap_command(current_a))

    # --- V2X (OCPP 2.1): the API the frequency service and `gridshare v2g test` use -------

    def v2x_capable(self, charger: str, connector: int | None = None) -> bool:
        """Whether ``charger`` may be asked to discharge now: declared bidirectional
        (``v2x: true`` in the site file, :attr:`CsmsConfig.v2x`) *and* connected, accepted,
        over ``ocpp2.1``. Declared rather than discovered: a car that can discharge behind
        a charger that says so is a safety decision for the operator, not for a boot
        message. A 1.6 or 2.0.1 connection is never V2X (those have no discharge). With
        ``connector``, also the car there: one whose 2.1 charging needs offer no BPT mode
        may not (see :meth:`v2x_offer`)."""
        return self.v2x_refusal(charger, connector) is None

    def v2x_refusal(self, charger: str, connector: int | None = None) -> str | None:
        """Why ``charger`` (and the car on ``connector``, when given) may not be asked to
        discharge now (None: it may)."""
        if charger not in self.config.v2x:
            return f"{charger} is not declared v2x: true"
        session = self._sessions.get(charger)
        if session is None or session.closing:
            return f"{charger} is not connected"
        if session.pending:
            return f"{charger} is not declared (pending)"
        if session.protocol is not OcppVersion.V21:
            return f"{charger} is connected over {session.protocol.value}, not ocpp2.1"
        if connector is not None:
            return offer_refusal(charger, connector, session.v2x_offer(connector))
        return None

    def v2x_offer(self, charger: str, connector: int) -> V2xOffer | None:
        """What the car on ``connector`` offered in its OCPP 2.1 NotifyEVChargingNeeds
        (modes, maxDischargePower, ...), while it is plugged in on this connection; None
        when it said nothing (then the site file decides, docs/v2g.md)."""
        session = self._sessions.get(charger)
        return None if session is None or session.closing else session.v2x_offer(connector)

    def _v2x_session(self, charger: str, connector: int, lowest_w: float) -> Session:
        """The session to send a V2X command to, or V2xRefused: not capable, the car
        offers no BPT, or ``lowest_w`` (its most discharging point, W) asks more than the
        car's maxDischargePower (the senders clip to it first: this is the last check)."""
        why = self.v2x_refusal(charger, connector)
        if why is not None:
            raise v2x.V2xRefused(why)
        session = self._sessions[charger]
        offer = session.v2x_offer(connector)
        most = discharge_cap_w(math.inf, offer)
        if -lowest_w > most + v2x.OFFER_TOLERANCE_W:
            raise v2x.V2xRefused(
                f"{charger} connector {connector}: a discharge of {-lowest_w:g} W is more "
                f"than the car offers (maxDischargePower {most:g} W)")
        return session

    async def send_v2x_setpoint(self, charger: str, connector: int, setpoint_w: float,
                                *, valid_s: float) -> CommandOutcome:
        """CentralSetpoint of ``setpoint_w`` W (negative = discharge) on ``connector``'s
        running transaction for ``valid_s`` seconds (then the charger falls back to the
        controller's setpoint). Raises :class:`~.v2x.V2xRefused` (nothing sent) unless
        :meth:`v2x_capable` for that connector, or when it discharges more than the car
        offered. The outcome follows the setpoint rules: one attempt, a newer
        V2X command supersedes a queued one, TIMEOUT/LOST carry ``valid_to`` (count it at
        the larger of old and new until then). Passing the guard
        (:func:`gridshare.core.guard.check_v2x`) is the caller's job."""
        period = v2x.central_setpoint(setpoint_w)
        session = self._v2x_session(charger, connector, period.discharge_limit_w)
        return await session.submit(session.v2x_command(connector, period, valid_s))

    async def send_v2x_local_frequency(self, charger: str, connector: int,
                                       curve: Sequence[tuple[float, float]],
                                       *, valid_s: float) -> CommandOutcome:
        """LocalFrequency with ``curve`` [(Hz, W), …] (+ = charge; build it with
        :func:`~.v2x.freq_watt_curve`) for ``valid_s`` seconds; otherwise as
        :meth:`send_v2x_setpoint`."""
        period = v2x.local_frequency(curve)
        session = self._v2x_session(charger, connector, period.discharge_limit_w)
        return await session.submit(session.v2x_command(connector, period, valid_s))

    async def clear_v2x(self, charger: str, connector: int) -> CommandOutcome:
        """Remove the V2X profile of ``connector`` (ClearChargingProfile by its id): the
        controller's own setpoint applies again at once."""
        why = self.v2x_refusal(charger)  # a clear is always allowed to a capable charger
        if why is not None:
            raise v2x.V2xRefused(why)
        session = self._sessions[charger]
        return await session.submit(session.v2x_clear_command(connector))

    async def clear_profile(self, charger: str, connector: int, purpose: str,
                            ) -> CommandOutcome:
        """ClearChargingProfile for every profile of ``purpose`` (either version's name, or
        "max"/"tx_default"/"tx") on ``connector``."""
        neutral = profiles.purpose_of(purpose)
        return await self._submit(charger, lambda s: s.clear_command(connector, neutral))

    async def get_composite_schedule(self, charger: str, connector: int,
                                     duration_s: int) -> list[tuple[float, float]] | None:
        """What the charger will actually apply: [(start_offset_s, limit_a_per_phase)], or
        None when it is offline, does not answer or refuses."""
        session = self._sessions.get(charger)
        if session is None or session.closing or charger in self._meter_only or \
                session.pending:
            return None
        command = session.composite_command(connector, int(duration_s))
        outcome = await session.submit(command)
        if outcome.result is not CommandResult.ACCEPTED or command.reply is None:
            return None
        return profiles.parse_composite_schedule(session.protocol, command.reply,
                                                 voltage_v=self.config.voltage_v,
                                                 phases=self.config.phases_of(charger))


__all__ = ["CentralSystem", "CsmsStats"]
