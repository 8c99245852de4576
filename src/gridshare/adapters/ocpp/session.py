"""One charger's connection: its receive loop, what its messages mean, and its command queue.

Inbound frames are handled strictly in arrival order: a CALLRESULT settles its command
before the next frame (say, a BootNotification) is looked at, and every frame gets a
per-charger sequence number that keeps increasing across reconnects, so the controller can
order a boot after every answer that came before it. The events a call causes are published
only once its answer has been written: a SessionStarted reaches the controller when the
charger already knows its transaction id, so the first TxProfile is not refused. With a
store, transaction messages and meter values are answered only once their rows are
committed (``SessionContext.durable``, a group commit; a CallError if the database
refused them) — on a NATS gateway, once JetStream acknowledged their events — so a crash
never loses what a charger was told is taken.
Bad input never closes the connection: it is answered with the right CallError (or dropped
when unanswerable) and counted.

Outbound: one command in flight per charger, as OCPP-J requires, one attempt each (the
controller owns retries). Commands wait in a small keyed queue; a newer command with the
same key (the same connector's setpoint, the failsafe, the cap) replaces a queued one, which
is then reported SUPERSEDED; a command already in flight always reports its real outcome.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tenacity import AsyncRetrying, retry_if_result, stop_after_attempt, wait_exponential
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gridshare.core.v2x_offer import V2xOffer
from gridshare.drivers import CommandOutcome, CommandResult
from gridshare.events import (
    ChargerBooted,
    ChargingNeeds,
    ConnectorStatus,
    Event,
    EventCounters,
    MeterReading,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)
from gridshare.ocpp_version import OcppVersion

from . import profiles, v2x
from .config import CsmsConfig
from .frames import (
    BadFrame,
    InboundCall,
    InboundError,
    InboundResult,
    call_error_frame,
    call_frame_from_json,
    call_result_frame,
    decode_frame,
    payload_json,
)
from .meter import FUTURE_TOLERANCE, energy_register_wh, parse_meter_values, parse_timestamp
from .needs import parse_charging_needs
from .rpc import Deadlines, FrameWriter, Outgoing, PendingCall, Refusal, route, write_next
from .schemas import schema_violation
from .stats import CsmsStats

LOG = logging.getLogger("gridshare.ocpp")

_REPLY_CACHE = 32
_ENDED_MEMORY = 256
_STATUSES = {s.value for s in ConnectorStatus}
_BACKED_UP_BYTES = 64 * 1024
"""Bytes waiting in a socket's write buffer above which it drains in a task of its own."""


def _bounded_add(store: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > limit:
        store.popitem(last=False)


@dataclass(slots=True)
class ChargerState:
    """What we keep about a charger across its connections."""

    failsafe_a: float | None = None
    cap_a: float | None = None
    tx_by_connector: dict[int, str] = field(default_factory=dict)
    connector_by_tx: dict[str, int] = field(default_factory=dict)
    seq_by_tx: dict[str, int] = field(default_factory=dict)
    ended: OrderedDict[str, None] = field(default_factory=OrderedDict)
    v16_starts: OrderedDict[tuple[Any, ...], str] = field(default_factory=OrderedDict)
    last_sample_at: dict[int, datetime] = field(default_factory=dict)
    rejected: dict[Hashable, str] = field(default_factory=dict)
    """Command key → detail of its last rejection (cleared when that key is accepted)."""
    frame_seq: int = 0
    """Number of the last inbound frame, over every connection of this charger."""
    call_seq: int = 0
    """Number of our last call: message ids stay unique across reconnects."""
    unstored: list[Event] = field(default_factory=list)
    """Events of calls answered with a CallError because their rows could not be
    committed: written before the next transaction message of this charger is answered
    (the charger retries the refused one, which is then a duplicate producing nothing)."""


@dataclass(frozen=True, slots=True)
class Built:
    """A command's payload as built (and serialised) at send time, and its validTo."""

    payload: str
    """JSON text, as it goes into the CALL frame."""
    valid_to: datetime | None = None

    @classmethod
    def of(cls, payload: dict[str, Any]) -> Built:
        return cls(payload_json(payload))


@dataclass(eq=False, slots=True)
class Command:
    key: Hashable
    action: str
    build: Callable[[datetime], Built]
    """Called at send time, so a setpoint uses the transaction and clock of that moment."""
    ok_statuses: frozenset[str]
    connector: int
    future: asyncio.Future[CommandOutcome]
    profile: bool = False
    """A SetChargingProfile: a refusal is reported as ProfileRejected."""
    reply: dict[str, Any] | None = None
    """The answer's payload once it came (GetCompositeSchedule needs it)."""


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What a session needs from the central system, and nothing more."""

    config: CsmsConfig
    counters: EventCounters
    metrics: CsmsStats
    writer: FrameWriter
    deadlines: Deadlines
    now: Callable[[], datetime]
    emit: Callable[[Event], None]
    spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]
    charger_state: Callable[[str], ChargerState]
    next_transaction_id: Callable[[], int]
    command_done: Callable[[str, Command, CommandOutcome], None]
    """Called once per command that was answered, timed out or lost."""
    pending_event: Callable[[str, Event], None] = lambda _charger, _event: None
    """Takes the events of a pending connection instead of ``emit`` (see :mod:`.pending`)."""
    durable: Callable[[Sequence[Event]], Awaitable[None]] | None = None
    """Stores a transaction message's events before it is answered: the store's
    group-commit writer (``--role all``), or a NATS gateway's wait for JetStream's
    acknowledgement (``NatsBus.durable``); raises if they could not be stored. None (no
    database, no JetStream): answer at once."""


DURABLE_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues",
                             "TransactionEvent"})
"""Calls answered only once their rows (sessions, meter readings) are committed: the
charger drops a message once it is answered, so an answer before the commit could be a
lie a crash exposes. Everything else is answered at once."""
_UNSTORED_MAX = 1000


_ACCEPTED = frozenset({"Accepted"})
_CLEARED = frozenset({"Accepted", "Unknown"})
"""ClearChargingProfile "Unknown" means nothing matched: the goal is reached."""


class Session:
    """A live charger connection (see module docstring). Created and run by CentralSystem."""

    def __init__(self, ctx: SessionContext, ws: ServerConnection, charger: str,
                 version: OcppVersion) -> None:
        self.ctx = ctx
        self.ws = ws
        self.charger = charger
        self.protocol = version
        self.state = ctx.charger_state(charger)
        self.last_seen = ctx.now()
        self.closing = False
        self.replaced = False
        self.offline_published = False
        self.pending = False
        """A connection of a charger that is not declared (``pending_unknown``): its boots
        are answered Pending, it is never provisioned, its events go to
        ``ctx.pending_event``. Cleared when the charger is declared and the connection
        may be trusted; a connection whose password was never checked stays pending."""
        self.outbox: deque[Outgoing] = deque()
        self.draining = False
        self._pending: OrderedDict[Hashable, Command] = OrderedDict()
        self._inflight: tuple[PendingCall, Command, Built] | None = None
        self._replies: OrderedDict[str, str] = OrderedDict()
        self._greeted = False
        self._provision_due = False
        self._unique_keys = 0
        self._held_events: list[Event] | None = None
        self._frame_seq: int | None = None
        self.v2x_offers: dict[int, V2xOffer] = {}
        """EVSE → the V2X offer its car sent (2.1 NotifyEVChargingNeeds)."""

    # --- receive loop -------------------------------------------------------------------

    async def run(self) -> None:
        try:
            async for raw in self.ws:
                self.last_seen = self.ctx.now()
                self.state.frame_seq += 1
                self._frame_seq = self.state.frame_seq
                await self._on_message(raw)
                if self._provision_due:
                    self._provision_due = False
                    self.ctx.spawn(self._provision(), f"ocpp-provision-{self.charger}")
        except ConnectionClosed:
            pass
        finally:
            self.shutdown()

    def _reject(self, reason: str, detail: str = "") -> None:
        self.ctx.counters.reject(reason)
        LOG.info("%s: rejected input (%s) %s", self.charger, reason, detail[:200])

    async def _on_message(self, raw: str | bytes) -> None:
        try:
            frame = decode_frame(raw, protocol=self.protocol,
                                 max_bytes=self.ctx.config.max_message_bytes)
            if isinstance(frame, BadFrame):
                self._reject(frame.reason, frame.description)
                if frame.reply_id is not None:
                    await self.ws.send(call_error_frame(frame.reply_id,
                                                        frame.code(self.protocol),
                                                        frame.description))
            elif isinstance(frame, InboundCall):
                if not self._greeted:
                    self._greeted = True
                    self._provision_due = True
                cached = self._replies.get(frame.unique_id)
                if cached is not None:
                    self._reject("duplicate_message", frame.unique_id)
                    await self.ws.send(cached)
                else:
                    await self._answer(frame)
            else:
                self._settle_answer(frame)
        except ConnectionClosed:
            raise
        except Exception:  # a bug of ours must not drop the charger
            self.ctx.counters.reject("internal_error")
            LOG.exception("%s: failed to handle a message", self.charger)

    async def _answer(self, call: InboundCall) -> None:
        """Route, handle, write the answer, and only then publish what the call caused."""
        routed = route(self.protocol, call)
        held: list[Event] = []
        if isinstance(routed, Refusal):
            self._reject(routed.counter, f"{call.action}: {routed.description}")
            frame = call_error_frame(call.unique_id, routed.code, routed.description)
        else:
            self._held_events = held
            handled = False
            try:
                frame = call_result_frame(call.unique_id, routed.handler(self, routed.payload))
                handled = True
            except Exception as error:  # a handler bug: the charger gets InternalError
                self.ctx.counters.reject("handler_error")
                LOG.exception("%s: %s handler failed", self.charger, call.action)
                frame = call_error_frame(call.unique_id, "InternalError",
                                         f"{call.action} failed: {type(error).__name__}")
            finally:
                self._held_events = None
            if handled and call.action in DURABLE_ACTIONS and self.ctx.durable is not None:
                refused = await self._commit_first(call, held)
                if refused is not None:
                    try:  # not cached: the charger's retry must be handled anew
                        await self.ws.send(refused)
                    finally:
                        for event in held:
                            self.ctx.emit(event)
                    return
        _bounded_add(self._replies, call.unique_id, frame, _REPLY_CACHE)
        try:
            await self.ws.send(frame)
        finally:
            for event in held:
                self.ctx.emit(event)

    async def _commit_first(self, call: InboundCall, held: list[Event]) -> str | None:
        """Commit the rows of ``held`` (and of refused calls before) before the answer.
        None: committed (or nothing to store); else the CallError frame to answer instead:
        OCPP 1.6 (§4.10, TransactionMessageAttempts) and 2.x (E, MessageAttempts-
        TransactionEvent) chargers resend a transaction message answered with a CallError,
        which is what we want when the database could not take it."""
        assert self.ctx.durable is not None
        owed = self.state.unstored
        batch = [*owed, *held] if owed else held
        if not batch:
            return None
        try:
            await self.ctx.durable(batch)
        except Exception as error:
            self.state.unstored = batch[-_UNSTORED_MAX:]
            self.ctx.counters.reject("store_failed")
            LOG.warning("%s: %s not stored (%s): answered InternalError so the charger "
                        "sends it again", self.charger, call.action, error)
            return call_error_frame(call.unique_id, "InternalError",
                                    f"{call.action} could not be stored: try again")
        if owed:
            self.state.unstored = []
        return None

    def _emit(self, event: Event) -> None:
        """Publish now, or once the answer to the call being handled has been written; a
        pending connection's events are only remembered, as they come."""
        if self.pending:
            self.ctx.pending_event(self.charger, event)
        elif self._held_events is not None:
            self._held_events.append(event)
        else:
            self.ctx.emit(event)

    # --- what the charger tells us (the handlers' sink) ---------------------------------

    def now(self) -> datetime:
        return self.ctx.now()

    def heartbeat_interval_s(self) -> int:
        return self.ctx.config.heartbeat_interval_s

    def boot_answer(self) -> tuple[str, int]:
        cfg = self.ctx.config
        if not self.pending:
            return "Accepted", cfg.heartbeat_interval_s
        return "Pending", cfg.pending_retry_s or cfg.heartbeat_interval_s

    def trigger_boot_command(self) -> Command:
        """TriggerMessage(BootNotification): a pending charger that was just declared boots
        again now rather than after its retry interval, and is answered Accepted."""
        payload = {"requestedMessage": "BootNotification"}
        return self._command(("trigger-boot",), "TriggerMessage",
                             lambda now: Built.of(payload), _ACCEPTED, 0)

    def _event_time(self, timestamp: str | None) -> datetime:
        """The charger's timestamp if it is readable and not in the future, else ours."""
        now = self.now()
        at = parse_timestamp(timestamp)
        if at is None or at > now + FUTURE_TOLERANCE:
            if timestamp is not None:
                self._reject("bad_timestamp", str(timestamp))
            return now
        return at

    def on_boot(self, vendor: str, model: str) -> None:
        self._emit(ChargerBooted(self.charger, self.now(), self.protocol.value, vendor, model,
                                 frame_seq=self._frame_seq))
        self._provision_due = True

    def on_status(self, connector: int, status: str, error_code: str,
                  timestamp: str | None) -> None:
        if status not in _STATUSES or connector < 0:
            self._reject("status_unknown", f"{connector} {status}")
            return
        if status == ConnectorStatus.AVAILABLE:
            self.v2x_offers.pop(connector, None)  # no car: its offer left with it
        self._emit(StatusChanged(self.charger, connector, ConnectorStatus(status),
                                 self._event_time(timestamp), error_code))

    def _start(self, connector: int, tx: str, at: datetime, id_tag: str,
               meter_start_wh: float | None) -> None:
        st = self.state
        old = st.tx_by_connector.get(connector)
        if old is not None and old != tx:
            # The previous session's stop was lost; close it so the controller stays sane.
            self._reject("tx_replaced", old)
            self._end(old, at, None, "Replaced")
        st.tx_by_connector[connector] = tx
        st.connector_by_tx[tx] = connector
        self._emit(SessionStarted(self.charger, connector, tx, at, id_tag, meter_start_wh))

    def _end(self, tx: str, at: datetime, meter_stop_wh: float | None, reason: str) -> None:
        st = self.state
        connector = st.connector_by_tx.pop(tx, None)
        if connector is None:
            self._reject("tx_unknown", tx)
            connector = 0
        elif st.tx_by_connector.get(connector) == tx:
            del st.tx_by_connector[connector]
        st.seq_by_tx.pop(tx, None)
        _bounded_add(st.ended, tx, None, _ENDED_MEMORY)
        self.v2x_offers.pop(connector, None)
        self._emit(SessionStopped(self.charger, connector, tx, at, meter_stop_wh, reason))

    def on_start_v16(self, connector: int, id_tag: str, meter_start_wh: float,
                     timestamp: str) -> int:
        key = (connector, id_tag, timestamp, meter_start_wh)
        known = self.state.v16_starts.get(key)
        if known is not None:  # the charger repeats a start whose answer it lost
            self._reject("tx_duplicate_start", known)
            return int(known)
        tx = str(self.ctx.next_transaction_id())
        _bounded_add(self.state.v16_starts, key, tx, 64)
        if not math.isfinite(meter_start_wh) or meter_start_wh < 0:
            self._reject("meter_negative", "meterStart")
            meter_start_wh = 0.0
        self._start(connector, tx, self._event_time(timestamp), id_tag, meter_start_wh)
        return int(tx)

    def on_stop_v16(self, transaction_id: int, meter_stop_wh: float, timestamp: str,
                    reason: str, transaction_data: list[dict[str, Any]]) -> None:
        tx = str(transaction_id)
        if tx in self.state.ended:
            self._reject("tx_duplicate_stop", tx)
            return
        connector = self.state.connector_by_tx.get(tx, 0)
        if transaction_data:
            self._publish_meter(connector, transaction_data, tx)
        meter: float | None = meter_stop_wh
        if meter_stop_wh < 0:
            self._reject("meter_negative", "meterStop")
            meter = None
        self._end(tx, self._event_time(timestamp), meter, reason)

    def _publish_meter(self, connector: int, meter_value: list[dict[str, Any]],
                       tx: str | None) -> list[MeterReading]:
        parsed = parse_meter_values(meter_value, protocol=self.protocol, charger=self.charger,
                                    connector=connector, transaction_id=tx, now=self.now())
        for reason in parsed.rejects:
            self._reject(reason, f"connector {connector}")
        published = []
        for reading in parsed.readings:
            last = self.state.last_sample_at.get(connector)
            if last is not None and reading.at <= last:
                self._reject("meter_stale", reading.at.isoformat())
                continue
            self.state.last_sample_at[connector] = reading.at
            self._emit(reading)
            published.append(reading)
        return published

    def on_meter_values(self, connector: int, meter_value: list[dict[str, Any]],
                        transaction_id: str | None) -> None:
        if connector < 0:
            self._reject("meter_bad_connector", str(connector))
            return
        tx = transaction_id or self.state.tx_by_connector.get(connector)
        self._publish_meter(connector, meter_value, tx)

    def on_transaction_event(self, *, event_type: str, timestamp: str, seq_no: int,
                             transaction_info: dict[str, Any], evse: dict[str, Any] | None,
                             id_token: dict[str, Any] | None,
                             meter_value: list[dict[str, Any]]) -> None:
        st = self.state
        tx = str(transaction_info["transaction_id"])
        if tx in st.ended:
            self._reject("tx_event_after_end", f"{tx} {event_type} seq {seq_no}")
            return
        last_seq = st.seq_by_tx.get(tx)
        if last_seq is not None and seq_no <= last_seq:
            self._reject("tx_event_duplicate", f"{tx} seq {seq_no} <= {last_seq}")
            return
        st.seq_by_tx[tx] = seq_no
        connector = evse.get("id") if evse else st.connector_by_tx.get(tx)
        if not isinstance(connector, int) or connector < 0:
            self._reject("tx_unknown_evse", tx)
            connector = 0
        at = self._event_time(timestamp)
        if tx not in st.connector_by_tx:
            if event_type != "Started":
                self._reject("tx_implicit_start", tx)  # we missed its start (restart?)
            meter_start = energy_register_wh(meter_value, protocol=self.protocol,
                                             now=self.now()) if event_type == "Started" else None
            id_tag = str(id_token.get("id_token", "")) if id_token else ""
            # no register in the Started event: unknown (None), not 0 Wh
            self._start(connector, tx, at, id_tag, meter_start)
        elif evse and st.connector_by_tx[tx] != connector:
            st.connector_by_tx[tx] = connector
        published = self._publish_meter(connector, meter_value, tx) if meter_value else []
        if event_type == "Ended":
            meter_stop = None
            for reading in reversed(published):
                if reading.energy_wh is not None:
                    meter_stop = reading.energy_wh
                    break
            self._end(tx, at, meter_stop, str(transaction_info.get("stopped_reason", "")))

    def on_charging_needs(self, evse_id: int, charging_needs: dict[str, Any]) -> None:
        needs = parse_charging_needs(charging_needs, protocol=self.protocol)
        for reason, name in needs.rejects:
            self._reject(reason, name)
        if needs.offer is not None:
            # this connection's car on that EVSE, until it leaves (see v2x_offer)
            self.v2x_offers[evse_id] = needs.offer
        self._emit(ChargingNeeds(
            self.charger, evse_id, self.now(),
            energy_needed_kwh=None if needs.energy_wh is None else needs.energy_wh / 1000.0,
            departure=needs.departure, max_current=needs.max_current_a,
            v2x_offer=needs.offer))

    def v2x_offer(self, connector: int) -> V2xOffer | None:
        """What the car on ``connector`` offered over 2.1 (None: nothing said). Kept per
        connection: forgotten at the end of its transaction, when the EVSE reports
        Available, and with the connection (a new one starts empty)."""
        return self.v2x_offers.get(connector)

    # --- commands: building ---------------------------------------------------------------

    def _limit(self, current_a: float) -> profiles.ScheduleLimit:
        cfg = self.ctx.config
        return profiles.limit_for(current_a, unit=cfg.unit_of(self.charger),
                                  voltage_v=cfg.voltage_v, phases=cfg.phases_of(self.charger))

    def _command(self, key: Hashable, action: str, build: Callable[[datetime], Built],
                 ok: frozenset[str], connector: int, *, profile: bool = False) -> Command:
        future: asyncio.Future[CommandOutcome] = asyncio.get_running_loop().create_future()
        return Command(key, action, build, ok, connector, future, profile)

    def _unique_key(self, name: str) -> tuple[str, int]:
        self._unique_keys += 1
        return (name, self._unique_keys)

    def setpoint_command(self, connector: int, current_a: float, lease_s: float) -> Command:
        limit = self._limit(current_a)
        profiles.lease_seconds(lease_s)  # fail now, in the caller, not at send time
        version = self.protocol
        state = self.state

        def build(now: datetime) -> Built:
            tx = state.tx_by_connector.get(connector)
            if tx is not None and version is OcppVersion.V16 and not (
                    tx.isascii() and tx.isdigit()):
                tx = None  # a 2.0.1 id from before a firmware change: 1.6 needs an integer
            payload = profiles.setpoint_json(version, connector=connector, limit=limit,
                                             lease_s=lease_s, now=now, transaction_id=tx)
            return Built(payload, profiles.lease_valid_to(now, lease_s))

        return self._command(("setpoint", connector), "SetChargingProfile", build, _ACCEPTED,
                             connector, profile=True)

    def v2x_command(self, connector: int, period: v2x.V2xPeriod, valid_s: float) -> Command:
        """A V2X TxProfile (OCPP 2.1) for the running transaction on ``connector``, built at
        send time; with no transaction then it is not sent (REJECTED, ``sent=False``). Its
        key is the connector's V2X slot: a newer one supersedes a queued one."""
        if self.protocol is not OcppVersion.V21:
            raise v2x.V2xRefused(f"{self.charger} speaks {self.protocol.value}, not ocpp2.1")
        profiles.lease_seconds(valid_s)  # fail now, in the caller
        state = self.state
        phases = self.ctx.config.phases_of(self.charger)

        def build(now: datetime) -> Built:
            tx = state.tx_by_connector.get(connector)
            if tx is None:
                raise v2x.V2xRefused(f"no transaction on EVSE {connector}")
            payload = v2x.v2x_request(connector=connector, transaction_id=tx, period=period,
                                      valid_s=valid_s, now=now, number_phases=phases)
            return Built(payload_json(payload), v2x.v2x_valid_to(now, valid_s))

        return self._command(("v2x", connector), "SetChargingProfile", build, _ACCEPTED,
                             connector, profile=True)

    def v2x_clear_command(self, connector: int) -> Command:
        payload = v2x.v2x_clear_request(connector)
        return self._command(("v2x", connector), "ClearChargingProfile",
                             lambda now: Built.of(payload), _CLEARED, connector)

    def failsafe_command(self, current_a: float) -> Command:
        limit = self._limit(current_a)
        version = self.protocol
        return self._command(("failsafe",), "SetChargingProfile",
                             lambda now: Built.of(profiles.failsafe_request(version,
                                                                            limit=limit,
                                                                            now=now)),
                             _ACCEPTED, 0, profile=True)

    def cap_command(self, current_a: float | None) -> Command:
        version = self.protocol
        if current_a is None:
            payload = profiles.clear_by_id_request(version, profiles.CAP_PROFILE_ID)
            return self._command(("cap",), "ClearChargingProfile",
                                 lambda now: Built.of(payload), _CLEARED, 0)
        limit = self._limit(current_a)
        return self._command(("cap",), "SetChargingProfile",
                             lambda now: Built.of(profiles.cap_request(version, limit=limit,
                                                                       now=now)),
                             _ACCEPTED, 0, profile=True)

    def clear_command(self, connector: int, purpose: profiles.Purpose) -> Command:
        payload = profiles.clear_request(self.protocol, connector=connector, purpose=purpose)
        return self._command(self._unique_key("clear"), "ClearChargingProfile",
                             lambda now: Built.of(payload), _CLEARED, connector)

    def composite_command(self, connector: int, duration_s: int) -> Command:
        payload = profiles.composite_schedule_request(self.protocol, connector=connector,
                                                      duration_s=duration_s)
        return self._command(self._unique_key("composite"), "GetCompositeSchedule",
                             lambda now: Built.of(payload), _ACCEPTED, connector)

    # --- commands: queue, send, settle ----------------------------------------------------

    def submit(self, command: Command) -> asyncio.Future[CommandOutcome]:
        """Queue ``command``; its frame is written at once (next loop pass) when nothing is
        in flight. A queued command with the same key is superseded, never sent."""
        if self.closing:
            self._finish(command, CommandOutcome(CommandResult.OFFLINE, sent=False,
                                                 detail="disconnected"))
            return command.future
        queued = self._pending.pop(command.key, None)
        if queued is not None:
            self.ctx.metrics.coalesced += 1
            self._finish(queued, CommandOutcome(CommandResult.SUPERSEDED, sent=False,
                                                detail="replaced before it was sent"))
        self._pending[command.key] = command
        if self._inflight is None:
            self._send_next()
        return command.future

    def _send_next(self) -> None:
        """Start the oldest queued command: build it with the send-time clock, arm its
        timeout, and hand its frame to the shared writer."""
        while self._inflight is None and self._pending and not self.closing:
            _, command = self._pending.popitem(last=False)
            if command.future.done():  # the caller gave up
                continue
            try:
                built = command.build(self.ctx.now())
            except Exception as error:  # a builder bug must not kill this charger's queue
                LOG.exception("%s: cannot build %s", self.charger, command.action)
                self._finish(command, CommandOutcome(CommandResult.REJECTED, sent=False,
                                                     detail=f"not sent: {error}"))
                continue
            self.state.call_seq += 1
            call = PendingCall(str(self.state.call_seq), command.action, time.perf_counter())
            self.ctx.deadlines.call_later(self.ctx.config.command_timeout_s,
                                          functools.partial(self._timed_out, call))
            self._inflight = (call, command, built)
            self.ctx.metrics.calls_sent += 1
            frame = call_frame_from_json(call.unique_id, command.action, built.payload)
            self.outbox.append((frame, call))
            self.ctx.writer.ready(self)

    def _finish(self, command: Command, outcome: CommandOutcome) -> None:
        if not command.future.done():
            command.future.set_result(outcome)

    def _settle(self, outcome: CommandOutcome, *, failed: bool = False) -> None:
        """The command in flight has its outcome: report it and start the next one.
        ``failed``: the call got no usable answer (counted apart from refusals)."""
        assert self._inflight is not None
        _, command, _ = self._inflight
        self._inflight = None
        if failed:
            self.ctx.metrics.calls_failed += 1
        self._finish(command, outcome)
        self.ctx.command_done(self.charger, command, outcome)
        self._send_next()

    def _timed_out(self, call: PendingCall) -> None:
        if self._inflight is None or self._inflight[0] is not call:
            return
        built = self._inflight[2]
        self._settle(CommandOutcome(CommandResult.TIMEOUT, valid_to=built.valid_to,
                                    detail=f"no answer within "
                                           f"{self.ctx.config.command_timeout_s} s"),
                     failed=True)

    def _settle_answer(self, frame: InboundResult | InboundError) -> None:
        """A CALLRESULT/CALLERROR: settle the call it answers (before the next frame)."""
        inflight = self._inflight
        if inflight is None or inflight[0].unique_id != frame.unique_id:
            self._reject("unsolicited_response", frame.unique_id)
            return
        call, command, built = inflight
        seq = self._frame_seq
        if isinstance(frame, InboundError):
            self._settle(CommandOutcome(CommandResult.REJECTED, valid_to=built.valid_to,
                                        answer_seq=seq,
                                        detail=f"CallError {frame.code}: {frame.description}"),
                         failed=True)
            return
        violation = schema_violation(self.protocol, command.action, frame.payload,
                                     response=True)
        if violation is not None:
            # An answer we cannot read: the charger did answer, but what it applied is not
            # known, so it counts as unknown until validTo like an unanswered call.
            self._settle(CommandOutcome(CommandResult.TIMEOUT, valid_to=built.valid_to,
                                        answer_seq=seq,
                                        detail=f"invalid {command.action} response: "
                                               f"{violation[1]}"), failed=True)
            return
        self.ctx.metrics.record_latency(time.perf_counter() - call.sent_at)
        command.reply = frame.payload
        status = frame.payload.get("status")
        if status in command.ok_statuses:
            self._settle(CommandOutcome(CommandResult.ACCEPTED, valid_to=built.valid_to,
                                        answer_seq=seq))
            return
        detail = f"{command.action} status {status}"
        info = frame.payload.get("statusInfo")
        if isinstance(info, dict) and info.get("reasonCode"):
            detail += f" ({info['reasonCode']})"
        self._settle(CommandOutcome(CommandResult.REJECTED, valid_to=built.valid_to,
                                    answer_seq=seq, detail=detail))

    async def _provision(self) -> None:
        """(Re)install the remembered failsafe and cap: a charger that just booted may have
        lost them, and the failsafe is what protects the fuse when it loses us. A pending
        charger gets nothing."""
        if self.pending:
            return
        if self.state.failsafe_a is not None:
            await self._install(lambda: self.failsafe_command(self.state.failsafe_a or 0.0))
        if self.state.cap_a is not None:
            await self._install(lambda: self.cap_command(self.state.cap_a))

    async def _install(self, make: Callable[[], Command]) -> None:
        """One provisioning command; a timed-out attempt is retried with backoff (the only
        retry in the adapter: setpoints are the controller's to retry)."""
        cfg = self.ctx.config
        retrying = AsyncRetrying(
            stop=stop_after_attempt(cfg.command_retries + 1),
            wait=wait_exponential(multiplier=cfg.command_backoff_s),
            retry=retry_if_result(lambda o: o.result is CommandResult.TIMEOUT),
            retry_error_callback=lambda state: state.outcome.result()
            if state.outcome is not None else None,
        )

        async def attempt() -> CommandOutcome:
            return await self.submit(make())

        outcome: CommandOutcome | None = await retrying(attempt)
        # superseded: a newer command of the same key (the controller's) went out instead
        if outcome is not None and outcome.result not in (CommandResult.ACCEPTED,
                                                          CommandResult.SUPERSEDED):
            LOG.warning("%s: provisioning failed: %s %s", self.charger,
                        outcome.result.value, outcome.detail)

    # --- the socket ---------------------------------------------------------------------

    async def send_now(self, frame: str) -> None:
        await self.ws.send(frame)

    def backed_up(self) -> bool:
        return self.ws.transport.get_write_buffer_size() > _BACKED_UP_BYTES

    def spawn_drain(self) -> None:
        self.draining = True
        self.ctx.spawn(self._drain_alone(), f"ocpp-drain-{self.charger}")

    async def _drain_alone(self) -> None:
        try:
            while self.outbox and await write_next(self):
                pass
        finally:
            self.draining = False

    def shutdown(self) -> None:
        """The link is gone: the call in flight is LOST (it may have been applied), every
        queued command OFFLINE (never sent)."""
        self.closing = True
        self.outbox.clear()
        if self._inflight is not None:
            call, _, built = self._inflight
            if call.written:
                self._settle(CommandOutcome(CommandResult.LOST, valid_to=built.valid_to,
                                            detail="connection closed before the answer"),
                             failed=True)
            else:
                self._settle(CommandOutcome(CommandResult.OFFLINE, sent=False,
                                            detail="connection closed before it was sent"),
                             failed=True)
        offline = CommandOutcome(CommandResult.OFFLINE, sent=False, detail="disconnected")
        commands = list(self._pending.values())
        self._pending.clear()
        for command in commands:
            self._finish(command, offline)

    async def close(self, reason: str, code: int = 1000) -> None:
        try:
            await self.ws.close(code, reason)
        except Exception:  # closing a dying socket: nothing left to protect
            LOG.debug("%s: close failed", self.charger, exc_info=True)
