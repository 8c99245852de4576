"""One charger's WebSocket connection: receive loop, meaning of its messages, command queue.

Inbound: every frame is decoded (frames.py), schema-checked, then routed to the version's
ChargePoint handlers, which call back into this class to turn messages into events.
Bad input never closes the connection: it is answered with the right CallError (or dropped
when unanswerable) and counted.

Outbound: one command in flight per charger, as OCPP-J requires. Commands wait in a small
keyed queue; a newer command with the same key (the same connector's setpoint, the
failsafe, the cap) replaces a queued or retrying older one, whose caller then gets the
newer command's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ocpp.exceptions import OCPPError
from ocpp.messages import Call
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gridshare.drivers import CommandResult
from gridshare.events import (
    ChargerBooted,
    ChargingNeeds,
    ConnectorStatus,
    MeterReading,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)

from . import profiles
from .frames import (
    ERROR_CODES,
    BadFrame,
    InboundCall,
    call_error_frame,
    decode_frame,
    schema_violation,
)
from .handlers import CallErrorReply, ChargePointV16, ChargePointV201, InvalidReply
from .meter import FUTURE_TOLERANCE, energy_register_wh, parse_meter_values, parse_timestamp

if TYPE_CHECKING:
    from .central import CentralSystem

LOG = logging.getLogger("gridshare.ocpp")

_REPLY_CACHE = 32
_ENDED_MEMORY = 256
_STATUSES = {s.value for s in ConnectorStatus}


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


@dataclass(frozen=True, slots=True)
class Outcome:
    result: CommandResult
    payload: dict[str, Any] | None = None
    detail: str = ""


@dataclass(eq=False, slots=True)
class Command:
    key: Hashable
    action: str
    build: Callable[[datetime], dict[str, Any]]
    """Called at send time, so a setpoint uses the transaction and clock of that moment."""
    ok_statuses: frozenset[str]
    connector: int
    future: asyncio.Future[Outcome]
    profile: bool = False
    """A SetChargingProfile: a refusal is reported as ProfileRejected."""
    replaced_by: Command | None = None
    """A newer command with the same key arrived while this one was in flight: do not retry."""


_ACCEPTED = frozenset({"Accepted"})
_CLEARED = frozenset({"Accepted", "Unknown"})
"""ClearChargingProfile "Unknown" means nothing matched: the goal is reached."""


class Connection:
    """A live charger connection (see module docstring). Created and run by CentralSystem."""

    def __init__(self, central: CentralSystem, ws: ServerConnection, charger: str,
                 protocol: str) -> None:
        self.central = central
        self.ws = ws
        self.charger = charger
        self.protocol = protocol
        self.state = central.charger_state(charger)
        timeout = central.config.command_timeout_s
        cp_cls = ChargePointV16 if protocol == profiles.V16 else ChargePointV201
        self.cp: ChargePointV16 | ChargePointV201 = cp_cls(self, ws, timeout)
        self.last_seen = central.now()
        self.closing = False
        self.replaced = False
        self.offline_published = False
        self._pending: OrderedDict[Hashable, Command] = OrderedDict()
        self._inflight: Command | None = None
        self._wake = asyncio.Event()
        self._replies: OrderedDict[str, str] = OrderedDict()
        self._greeted = False
        self._provision_due = False
        self._worker: asyncio.Task[None] | None = None
        self._unique_keys = 0

    # --- receive loop -------------------------------------------------------------------

    async def run(self) -> None:
        self._worker = self.central.spawn(self._work(), f"ocpp-commands-{self.charger}")
        try:
            async for raw in self.ws:
                self.last_seen = self.central.now()
                await self._on_message(raw)
                if self._provision_due:
                    self._provision_due = False
                    self.central.spawn(self._provision(), f"ocpp-provision-{self.charger}")
        except ConnectionClosed:
            pass
        finally:
            self.shutdown()

    async def _send(self, frame: str) -> None:
        await self.ws.send(frame)

    def _reject(self, reason: str, detail: str = "") -> None:
        self.central.counters.reject(reason)
        LOG.info("%s: rejected input (%s) %s", self.charger, reason, detail[:200])

    async def _on_message(self, raw: str | bytes) -> None:
        try:
            frame = decode_frame(raw, protocol=self.protocol,
                                 max_bytes=self.central.config.max_message_bytes)
            if isinstance(frame, BadFrame):
                self._reject(frame.reason, frame.description)
                if frame.reply_id is not None:
                    await self._send(call_error_frame(frame.reply_id, frame.code(self.protocol),
                                                      frame.description))
            elif isinstance(frame, InboundCall):
                if not self._greeted:
                    self._greeted = True
                    self._provision_due = True
                cached = self._replies.get(frame.unique_id)
                if cached is not None:
                    self._reject("duplicate_message", frame.unique_id)
                    await self._send(cached)
                else:
                    await self._dispatch(frame)
            elif not self.cp.deliver(frame):
                self._reject("unsolicited_response", frame.unique_id)
        except ConnectionClosed:
            raise
        except Exception:  # a bug of ours must not drop the charger
            self.central.counters.reject("internal_error")
            LOG.exception("%s: failed to handle a message", self.charger)

    async def _dispatch(self, call: InboundCall) -> None:
        handlers = self.cp.route_map.get(call.action)
        if handlers is not None and "_on_action" in handlers:
            violation = schema_violation(self.protocol, call.action, call.payload)
            if violation is not None:
                kind, description = violation
                code = ERROR_CODES[self.protocol][kind]
                self._reject(f"schema_{kind}", f"{call.action}: {description}")
                frame = call_error_frame(call.unique_id, code, description)
                self.remember_reply(call.unique_id, frame)
                await self._send(frame)
                return
        self.cp._reply_for = call.unique_id
        try:
            await self.cp._handle_call(Call(call.unique_id, call.action, call.payload))
        except OCPPError as error:  # no handler: NotImplemented / NotSupported
            self._reject(f"call_{error.code}", call.action)
            frame = call_error_frame(call.unique_id, error.code, error.description,
                                     error.details)
            self.remember_reply(call.unique_id, frame)
            await self._send(frame)
        finally:
            self.cp._reply_for = None
        reply = self._replies.get(call.unique_id, "")
        if reply.startswith("[4,") and '"InternalError"' in reply[:200]:
            self.central.counters.reject("handler_error")

    # --- sink for the handlers ----------------------------------------------------------

    def now(self) -> datetime:
        return self.central.now()

    def heartbeat_interval_s(self) -> int:
        return self.central.config.heartbeat_interval_s

    def remember_reply(self, unique_id: str, frame: str) -> None:
        _bounded_add(self._replies, unique_id, frame, _REPLY_CACHE)

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
        self.central.emit(ChargerBooted(self.charger, self.now(), self.protocol, vendor, model))
        self._provision_due = True

    def on_status(self, connector: int, status: str, error_code: str,
                  timestamp: str | None) -> None:
        if status not in _STATUSES or connector < 0:
            self._reject("status_unknown", f"{connector} {status}")
            return
        self.central.emit(StatusChanged(self.charger, connector, ConnectorStatus(status),
                                        self._event_time(timestamp), error_code))

    def _start(self, connector: int, tx: str, at: datetime, id_tag: str,
               meter_start_wh: float) -> None:
        st = self.state
        old = st.tx_by_connector.get(connector)
        if old is not None and old != tx:
            # The previous session's stop was lost; close it so the controller stays sane.
            self._reject("tx_replaced", old)
            self._end(old, at, None, "Replaced")
        st.tx_by_connector[connector] = tx
        st.connector_by_tx[tx] = connector
        self.central.emit(SessionStarted(self.charger, connector, tx, at, id_tag,
                                         meter_start_wh))

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
        self.central.emit(SessionStopped(self.charger, connector, tx, at, meter_stop_wh, reason))

    def on_start_v16(self, connector: int, id_tag: str, meter_start_wh: float,
                     timestamp: str) -> int:
        key = (connector, id_tag, timestamp, meter_start_wh)
        known = self.state.v16_starts.get(key)
        if known is not None:  # the charger repeats a start whose answer it lost
            self._reject("tx_duplicate_start", known)
            return int(known)
        tx = str(self.central.next_transaction_id())
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
            self.central.emit(reading)
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
            self._start(connector, tx, at, id_tag, meter_start or 0.0)
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
        ac = charging_needs.get("ac_charging_parameters") or {}
        dc = charging_needs.get("dc_charging_parameters") or {}

        def number(value: Any, name: str) -> float | None:
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    math.isfinite(value) and value >= 0):
                self._reject("needs_bad_value", name)
                return None
            return float(value)

        energy_wh = number(ac.get("energy_amount", dc.get("energy_amount")), "energyAmount")
        max_current = number(ac.get("ev_max_current"), "evMaxCurrent")
        departure_raw = charging_needs.get("departure_time")
        departure = parse_timestamp(departure_raw)
        if departure_raw is not None and departure is None:
            self._reject("needs_bad_value", "departureTime")
        self.central.emit(ChargingNeeds(
            self.charger, evse_id, self.now(),
            energy_needed_kwh=None if energy_wh is None else energy_wh / 1000.0,
            departure=departure, max_current=max_current))

    # --- commands -----------------------------------------------------------------------

    def _limit(self, current_a: float) -> profiles.ScheduleLimit:
        cfg = self.central.config
        return profiles.limit_for(current_a, unit=cfg.unit_of(self.charger),
                                  voltage_v=cfg.voltage_v, phases=cfg.phases_of(self.charger))

    def _command(self, key: Hashable, action: str, build: Callable[[datetime], dict[str, Any]],
                 ok: frozenset[str], connector: int, *, profile: bool = False) -> Command:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        return Command(key, action, build, ok, connector, future, profile)

    def _unique_key(self, name: str) -> tuple[str, int]:
        self._unique_keys += 1
        return (name, self._unique_keys)

    def setpoint_command(self, connector: int, current_a: float, lease_s: float) -> Command:
        limit = self._limit(current_a)
        profiles.lease_seconds(lease_s)  # fail now, in the caller, not in the worker

        def build(now: datetime) -> dict[str, Any]:
            tx = self.state.tx_by_connector.get(connector)
            if tx is not None and self.protocol == profiles.V16 and not tx.isdigit():
                tx = None  # a 2.0.1 id from before a firmware change: 1.6 needs an integer
            return profiles.setpoint_request(self.protocol, connector=connector, limit=limit,
                                             lease_s=lease_s, now=now, transaction_id=tx)

        return self._command(("setpoint", connector), "SetChargingProfile", build, _ACCEPTED,
                             connector, profile=True)

    def failsafe_command(self, current_a: float) -> Command:
        limit = self._limit(current_a)
        return self._command(("failsafe",), "SetChargingProfile",
                             lambda now: profiles.failsafe_request(self.protocol, limit=limit,
                                                                   now=now),
                             _ACCEPTED, 0, profile=True)

    def cap_command(self, current_a: float | None) -> Command:
        if current_a is None:
            payload = profiles.clear_by_id_request(self.protocol, profiles.CAP_PROFILE_ID)
            return self._command(("cap",), "ClearChargingProfile", lambda now: payload,
                                 _CLEARED, 0)
        limit = self._limit(current_a)
        return self._command(("cap",), "SetChargingProfile",
                             lambda now: profiles.cap_request(self.protocol, limit=limit,
                                                              now=now),
                             _ACCEPTED, 0, profile=True)

    def clear_command(self, connector: int, purpose: profiles.Purpose) -> Command:
        payload = profiles.clear_request(self.protocol, connector=connector, purpose=purpose)
        return self._command(self._unique_key("clear"), "ClearChargingProfile",
                             lambda now: payload, _CLEARED, connector)

    def composite_command(self, connector: int, duration_s: int) -> Command:
        payload = profiles.composite_schedule_request(self.protocol, connector=connector,
                                                      duration_s=duration_s)
        return self._command(self._unique_key("composite"), "GetCompositeSchedule",
                             lambda now: payload, _ACCEPTED, connector)

    def _follow(self, old: Command, new: Command) -> None:
        """``old`` is dropped in favour of ``new``: its caller gets ``new``'s outcome."""
        self.central.metrics.coalesced += 1

        def copy(done: asyncio.Future[Outcome]) -> None:
            if old.future.done():
                return
            if done.cancelled():
                old.future.cancel()
            else:
                old.future.set_result(done.result())

        new.future.add_done_callback(copy)

    def submit(self, command: Command) -> asyncio.Future[Outcome]:
        if self.closing:
            command.future.set_result(Outcome(CommandResult.OFFLINE, detail="disconnected"))
            return command.future
        queued = self._pending.pop(command.key, None)
        if queued is not None:
            self._follow(queued, command)
        inflight = self._inflight
        if inflight is not None and inflight.key == command.key:
            inflight.replaced_by = command
        self._pending[command.key] = command
        self._wake.set()
        return command.future

    async def _work(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            _, command = self._pending.popitem(last=False)
            if command.future.done():  # the caller gave up
                continue
            self._inflight = command
            try:
                outcome = await self._execute(command)
            finally:
                self._inflight = None
            if outcome is None:  # replaced while waiting to retry: the newer one reports
                continue
            if not command.future.done():
                command.future.set_result(outcome)
            self.central.command_done(self, command, outcome)

    async def _execute(self, command: Command) -> Outcome | None:
        cfg = self.central.config
        stats = self.central.metrics
        attempts = cfg.command_retries + 1
        for attempt in range(attempts):
            if command.replaced_by is not None:
                self._follow(command, command.replaced_by)
                return None
            try:
                payload = command.build(self.now())
            except Exception as error:  # a builder bug must not kill this charger's queue
                LOG.exception("%s: cannot build %s", self.charger, command.action)
                return Outcome(CommandResult.REJECTED, detail=f"not sent: {error}")
            started = time.perf_counter()
            stats.calls_sent += 1
            try:
                reply = await self.cp.call_raw(command.action, payload, cfg.command_timeout_s)
            except TimeoutError:
                stats.calls_failed += 1
                if attempt + 1 < attempts:
                    await asyncio.sleep(cfg.command_backoff_s * 2**attempt)
                    continue
                return Outcome(CommandResult.TIMEOUT, detail=f"no answer after {attempts} "
                               f"attempts of {cfg.command_timeout_s} s")
            except CallErrorReply as error:
                stats.calls_failed += 1
                return Outcome(CommandResult.REJECTED, detail=f"CallError {error}")
            except InvalidReply as error:
                stats.calls_failed += 1
                return Outcome(CommandResult.REJECTED, detail=str(error))
            except ConnectionClosed:
                stats.calls_failed += 1
                return Outcome(CommandResult.OFFLINE, detail="connection closed")
            stats.record_latency(time.perf_counter() - started)
            status = reply.get("status")
            if status in command.ok_statuses:
                return Outcome(CommandResult.ACCEPTED, payload=reply)
            detail = f"{command.action} status {status}"
            info = reply.get("statusInfo")
            if isinstance(info, dict) and info.get("reasonCode"):
                detail += f" ({info['reasonCode']})"
            return Outcome(CommandResult.REJECTED, payload=reply, detail=detail)
        raise AssertionError("unreachable")

    async def _provision(self) -> None:
        """(Re)install the remembered failsafe and cap: a charger that just booted may have
        lost them, and the failsafe is what protects the fuse when it loses us."""
        futures: list[asyncio.Future[Outcome]] = []
        if self.state.failsafe_a is not None:
            futures.append(self.submit(self.failsafe_command(self.state.failsafe_a)))
        if self.state.cap_a is not None:
            futures.append(self.submit(self.cap_command(self.state.cap_a)))
        for future in futures:
            outcome = await future
            if outcome.result is not CommandResult.ACCEPTED:
                LOG.warning("%s: provisioning failed: %s %s", self.charger,
                            outcome.result.value, outcome.detail)

    def shutdown(self) -> None:
        """Stop the command worker; everything not yet answered is OFFLINE."""
        self.closing = True
        if self._worker is not None:
            self._worker.cancel()
        offline = Outcome(CommandResult.OFFLINE, detail="disconnected")
        commands = list(self._pending.values())
        if self._inflight is not None:
            commands.append(self._inflight)
        self._pending.clear()
        for command in commands:
            if not command.future.done():
                command.future.set_result(offline)

    async def close(self, reason: str, code: int = 1000) -> None:
        try:
            await self.ws.close(code, reason)
        except Exception:  # closing a dying socket: nothing left to protect
            LOG.debug("%s: close failed", self.charger, exc_info=True)
