"""The per-connection ``ocpp`` ChargePoint objects: thin @on handlers, one class per version.

Handlers only translate keyword arguments and build the response; what an event *means*
(transactions, duplicates, meter validation) lives in :class:`~.connection.Connection`,
the ``sink``. Inbound frames are decoded and schema-checked before they get here (see
frames.py), hence ``skip_schema_validation=True`` everywhere. Handlers never await a call
to the charger: the receive loop waits for them (see protocols.md).

Outbound commands use :meth:`CallMixin.call_raw`: the payload comes from the tested
builders in profiles.py and is serialised once, without the package's dataclass and
jsonschema round trip; the reply is validated against the official response schema.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201

from .frames import InboundError, InboundResult, schema_violation
from .profiles import V16, V201, encode_call, iso_utc

LOG = logging.getLogger("gridshare.ocpp")

_F = TypeVar("_F", bound=Callable[..., Any])


def handles(action: str) -> Callable[[_F], _F]:
    """``@on(action)`` with a type, and without the package's schema validation: frames
    are validated by frames.schema_violation before they are routed."""
    decorator: Callable[[_F], _F] = on(action, skip_schema_validation=True)
    return decorator


class CallErrorReply(Exception):
    """The charger answered our call with a CALLERROR."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class InvalidReply(Exception):
    """The charger's CALLRESULT does not match the official response schema."""


class Sink(Protocol):
    """What the handlers need from the connection that owns them."""

    charger: str

    def now(self) -> datetime: ...
    def heartbeat_interval_s(self) -> int: ...
    def remember_reply(self, unique_id: str, frame: str) -> None: ...
    def on_boot(self, vendor: str, model: str) -> None: ...
    def on_status(self, connector: int, status: str, error_code: str,
                  timestamp: str | None) -> None: ...
    def on_start_v16(self, connector: int, id_tag: str, meter_start_wh: float,
                     timestamp: str) -> int: ...
    def on_stop_v16(self, transaction_id: int, meter_stop_wh: float, timestamp: str,
                    reason: str, transaction_data: list[dict[str, Any]]) -> None: ...
    def on_meter_values(self, connector: int, meter_value: list[dict[str, Any]],
                        transaction_id: str | None) -> None: ...
    def on_transaction_event(self, *, event_type: str, timestamp: str, seq_no: int,
                             transaction_info: dict[str, Any], evse: dict[str, Any] | None,
                             id_token: dict[str, Any] | None,
                             meter_value: list[dict[str, Any]]) -> None: ...
    def on_charging_needs(self, evse_id: int, charging_needs: dict[str, Any]) -> None: ...


class CallMixin:
    """Shared plumbing: cheap outbound calls and response matching.

    Only a response to the one call in flight is accepted; anything else is the caller's
    to count and drop, so stray CALLRESULTs cannot pile up in a queue.
    """

    sink: Sink
    _call_lock: asyncio.Lock
    _connection: Any
    _unique_id_generator: Any
    _reply_for: str | None
    _waiting: tuple[str, asyncio.Future[InboundResult | InboundError]] | None
    protocol: str

    def deliver(self, frame: InboundResult | InboundError) -> bool:
        """Hand a CALLRESULT/CALLERROR to the waiting call; False if nobody waits for it."""
        waiting = self._waiting
        if waiting is None or waiting[0] != frame.unique_id or waiting[1].done():
            return False
        waiting[1].set_result(frame)
        return True

    async def call_raw(self, action: str, payload: dict[str, Any],
                       timeout_s: float) -> dict[str, Any]:
        """Send one CALL and return the reply payload.

        Raises TimeoutError, CallErrorReply, InvalidReply or websockets' ConnectionClosed.
        """
        unique_id = str(self._unique_id_generator())
        frame = encode_call(unique_id, action, payload)
        async with self._call_lock:
            future: asyncio.Future[InboundResult | InboundError] = (
                asyncio.get_running_loop().create_future())
            self._waiting = (unique_id, future)
            try:
                await self._connection.send(frame)
                reply = await asyncio.wait_for(future, timeout_s)
            finally:
                self._waiting = None
        if isinstance(reply, InboundError):
            raise CallErrorReply(reply.code, reply.description)
        violation = schema_violation(self.protocol, action, reply.payload, response=True)
        if violation is not None:
            raise InvalidReply(f"invalid {action} response: {violation[1]}")
        return reply.payload

    async def _send(self, message: str) -> None:
        # The package sends a handler's CALLRESULT/CALLERROR through here: keep a copy so a
        # retransmitted CALL (same message id) gets the same answer without side effects.
        if self._reply_for is not None and message.startswith(("[3", "[4")):
            self.sink.remember_reply(self._reply_for, message)
        await self._connection.send(message)


def _init(cp: Any, sink: Sink, protocol: str) -> None:
    cp.sink = sink
    cp.protocol = protocol
    cp._reply_for = None
    cp._waiting = None


class ChargePointV16(CallMixin, ChargePoint16):  # type: ignore[misc]
    """OCPP 1.6J central-system side of one connection."""

    def __init__(self, sink: Sink, connection: Any, timeout_s: float) -> None:
        ChargePoint16.__init__(self, sink.charger, connection, response_timeout=timeout_s,
                               logger=LOG)
        _init(self, sink, V16)

    @handles("BootNotification")
    def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str,
                             **_: Any) -> Any:
        self.sink.on_boot(charge_point_vendor, charge_point_model)
        return result16.BootNotification(current_time=iso_utc(self.sink.now()),
                                         interval=self.sink.heartbeat_interval_s(),
                                         status="Accepted")

    @handles("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return result16.Heartbeat(current_time=iso_utc(self.sink.now()))

    @handles("StatusNotification")
    def on_status_notification(self, connector_id: int, error_code: str, status: str,
                               timestamp: str | None = None, **_: Any) -> Any:
        self.sink.on_status(connector_id, status, "" if error_code == "NoError" else error_code,
                            timestamp)
        return result16.StatusNotification()

    @handles("Authorize")
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @handles("StartTransaction")
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int,
                             timestamp: str, **_: Any) -> Any:
        tx = self.sink.on_start_v16(connector_id, id_tag, float(meter_start), timestamp)
        return result16.StartTransaction(transaction_id=tx, id_tag_info={"status": "Accepted"})

    @handles("StopTransaction")
    def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int,
                            reason: str = "", id_tag: str | None = None,
                            transaction_data: list[dict[str, Any]] | None = None,
                            **_: Any) -> Any:
        self.sink.on_stop_v16(transaction_id, float(meter_stop), timestamp, reason,
                              transaction_data or [])
        info = {"status": "Accepted"} if id_tag is not None else None
        return result16.StopTransaction(id_tag_info=info)

    @handles("MeterValues")
    def on_meter_values(self, connector_id: int, meter_value: list[dict[str, Any]],
                        transaction_id: int | None = None, **_: Any) -> Any:
        self.sink.on_meter_values(connector_id, meter_value,
                                  None if transaction_id is None else str(transaction_id))
        return result16.MeterValues()

    @handles("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return result16.DataTransfer(status="UnknownVendorId")

    @handles("DiagnosticsStatusNotification")
    def on_diagnostics_status(self, **_: Any) -> Any:
        return result16.DiagnosticsStatusNotification()

    @handles("FirmwareStatusNotification")
    def on_firmware_status(self, **_: Any) -> Any:
        return result16.FirmwareStatusNotification()

    @handles("SecurityEventNotification")
    def on_security_event(self, **_: Any) -> Any:
        return result16.SecurityEventNotification()

    @handles("LogStatusNotification")
    def on_log_status(self, **_: Any) -> Any:
        return result16.LogStatusNotification()

    @handles("SignedFirmwareStatusNotification")
    def on_signed_firmware_status(self, **_: Any) -> Any:
        return result16.SignedFirmwareStatusNotification()


class ChargePointV201(CallMixin, ChargePoint201):  # type: ignore[misc]
    """OCPP 2.0.1 CSMS side of one connection."""

    def __init__(self, sink: Sink, connection: Any, timeout_s: float) -> None:
        ChargePoint201.__init__(self, sink.charger, connection, response_timeout=timeout_s,
                                logger=LOG)
        _init(self, sink, V201)

    @handles("BootNotification")
    def on_boot_notification(self, charging_station: dict[str, Any], **_: Any) -> Any:
        self.sink.on_boot(str(charging_station.get("vendor_name", "")),
                          str(charging_station.get("model", "")))
        return result201.BootNotification(current_time=iso_utc(self.sink.now()),
                                          interval=self.sink.heartbeat_interval_s(),
                                          status="Accepted")

    @handles("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return result201.Heartbeat(current_time=iso_utc(self.sink.now()))

    @handles("StatusNotification")
    def on_status_notification(self, timestamp: str, connector_status: str, evse_id: int,
                               **_: Any) -> Any:
        self.sink.on_status(evse_id, connector_status, "", timestamp)
        return result201.StatusNotification()

    @handles("Authorize")
    def on_authorize(self, **_: Any) -> Any:
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @handles("TransactionEvent")
    def on_transaction_event(self, event_type: str, timestamp: str, seq_no: int,
                             transaction_info: dict[str, Any],
                             evse: dict[str, Any] | None = None,
                             id_token: dict[str, Any] | None = None,
                             meter_value: list[dict[str, Any]] | None = None,
                             **_: Any) -> Any:
        self.sink.on_transaction_event(event_type=event_type, timestamp=timestamp,
                                       seq_no=seq_no, transaction_info=transaction_info,
                                       evse=evse, id_token=id_token,
                                       meter_value=meter_value or [])
        info = {"status": "Accepted"} if id_token is not None else None
        return result201.TransactionEvent(id_token_info=info)

    @handles("MeterValues")
    def on_meter_values(self, evse_id: int, meter_value: list[dict[str, Any]],
                        **_: Any) -> Any:
        self.sink.on_meter_values(evse_id, meter_value, None)
        return result201.MeterValues()

    @handles("NotifyEVChargingNeeds")
    def on_notify_ev_charging_needs(self, charging_needs: dict[str, Any], evse_id: int,
                                    **_: Any) -> Any:
        self.sink.on_charging_needs(evse_id, charging_needs)
        return result201.NotifyEVChargingNeeds(status="Accepted")

    @handles("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return result201.DataTransfer(status="UnknownVendorId")

    # Notifications whose answer is an empty object: acknowledge, nothing to act on yet.
    @handles("FirmwareStatusNotification")
    def on_firmware_status(self, **_: Any) -> Any:
        return result201.FirmwareStatusNotification()

    @handles("LogStatusNotification")
    def on_log_status(self, **_: Any) -> Any:
        return result201.LogStatusNotification()

    @handles("SecurityEventNotification")
    def on_security_event(self, **_: Any) -> Any:
        return result201.SecurityEventNotification()

    @handles("NotifyEvent")
    def on_notify_event(self, **_: Any) -> Any:
        return result201.NotifyEvent()

    @handles("NotifyReport")
    def on_notify_report(self, **_: Any) -> Any:
        return result201.NotifyReport()

    @handles("NotifyMonitoringReport")
    def on_notify_monitoring_report(self, **_: Any) -> Any:
        return result201.NotifyMonitoringReport()

    @handles("NotifyChargingLimit")
    def on_notify_charging_limit(self, **_: Any) -> Any:
        return result201.NotifyChargingLimit()

    @handles("ClearedChargingLimit")
    def on_cleared_charging_limit(self, **_: Any) -> Any:
        return result201.ClearedChargingLimit()

    @handles("ReportChargingProfiles")
    def on_report_charging_profiles(self, **_: Any) -> Any:
        return result201.ReportChargingProfiles()

    @handles("NotifyCustomerInformation")
    def on_notify_customer_information(self, **_: Any) -> Any:
        return result201.NotifyCustomerInformation()

    @handles("NotifyDisplayMessages")
    def on_notify_display_messages(self, **_: Any) -> Any:
        return result201.NotifyDisplayMessages()

    @handles("ReservationStatusUpdate")
    def on_reservation_status_update(self, **_: Any) -> Any:
        return result201.ReservationStatusUpdate()

    @handles("PublishFirmwareStatusNotification")
    def on_publish_firmware_status(self, **_: Any) -> Any:
        return result201.PublishFirmwareStatusNotification()
