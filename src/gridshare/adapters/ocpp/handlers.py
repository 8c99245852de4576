"""What the central system answers to each call a charger makes: one table per version.

A handler translates the call's payload (already schema-valid, keys in snake_case) into a
call on the :class:`Sink` (the session, where an event's *meaning* lives) and returns the
response payload as sent (camelCase, proven valid against the official schemas by the
tests, whose client chargers validate every frame). Handlers never wait for the charger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

from gridshare.ocpp_version import OcppVersion

from .profiles import iso_utc


class Sink(Protocol):
    """What the handlers need from the session that owns the connection."""

    def now(self) -> datetime: ...
    def heartbeat_interval_s(self) -> int: ...
    def boot_answer(self) -> tuple[str, int]:
        """(registration status, interval): ("Accepted", heartbeat) for a declared charger,
        ("Pending", retry) for one that is not declared yet."""
        ...
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


Handler = Callable[[Sink, dict[str, Any]], dict[str, Any]]
"""(session, snake_case payload) → response payload."""

_ACCEPTED = {"status": "Accepted"}


def _empty(sink: Sink, payload: dict[str, Any]) -> dict[str, Any]:
    """Notifications whose answer is an empty object: acknowledged, nothing to act on yet."""
    return {}


def _heartbeat(sink: Sink, payload: dict[str, Any]) -> dict[str, Any]:
    return {"currentTime": iso_utc(sink.now())}


def _boot_answer(sink: Sink) -> dict[str, Any]:
    status, interval = sink.boot_answer()
    return {"currentTime": iso_utc(sink.now()), "interval": interval, "status": status}


def _data_transfer(sink: Sink, payload: dict[str, Any]) -> dict[str, Any]:
    return {"status": "UnknownVendorId"}


# --- OCPP 1.6 -------------------------------------------------------------------------------

def _boot_v16(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    sink.on_boot(p["charge_point_vendor"], p["charge_point_model"])
    return _boot_answer(sink)


def _status_v16(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    error_code = p["error_code"]
    sink.on_status(p["connector_id"], p["status"], "" if error_code == "NoError" else error_code,
                   p.get("timestamp"))
    return {}


def _authorize_v16(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    return {"idTagInfo": _ACCEPTED}


def _start_v16(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    tx = sink.on_start_v16(p["connector_id"], p["id_tag"], float(p["meter_start"]),
                           p["timestamp"])
    return {"transactionId": tx, "idTagInfo": _ACCEPTED}


def _stop_v16(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    sink.on_stop_v16(p["transaction_id"], float(p["meter_stop"]), p["timestamp"],
                     p.get("reason", ""), p.get("transaction_data") or [])
    return {"idTagInfo": _ACCEPTED} if p.get("id_tag") is not None else {}


def _meter_v16(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    tx = p.get("transaction_id")
    sink.on_meter_values(p["connector_id"], p["meter_value"], None if tx is None else str(tx))
    return {}


HANDLERS_V16: Mapping[str, Handler] = {
    "BootNotification": _boot_v16,
    "Heartbeat": _heartbeat,
    "StatusNotification": _status_v16,
    "Authorize": _authorize_v16,
    "StartTransaction": _start_v16,
    "StopTransaction": _stop_v16,
    "MeterValues": _meter_v16,
    "DataTransfer": _data_transfer,
    "DiagnosticsStatusNotification": _empty,
    "FirmwareStatusNotification": _empty,
    "SecurityEventNotification": _empty,
    "LogStatusNotification": _empty,
    "SignedFirmwareStatusNotification": _empty,
}


# --- OCPP 2.0.1 -----------------------------------------------------------------------------

def _boot_v201(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    station = p["charging_station"]
    sink.on_boot(str(station.get("vendor_name", "")), str(station.get("model", "")))
    return _boot_answer(sink)


def _status_v201(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    sink.on_status(p["evse_id"], p["connector_status"], "", p["timestamp"])
    return {}


def _authorize_v201(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    return {"idTokenInfo": _ACCEPTED}


def _transaction_event(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    id_token = p.get("id_token")
    sink.on_transaction_event(event_type=p["event_type"], timestamp=p["timestamp"],
                              seq_no=p["seq_no"], transaction_info=p["transaction_info"],
                              evse=p.get("evse"), id_token=id_token,
                              meter_value=p.get("meter_value") or [])
    return {"idTokenInfo": _ACCEPTED} if id_token is not None else {}


def _meter_v201(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    sink.on_meter_values(p["evse_id"], p["meter_value"], None)
    return {}


def _charging_needs(sink: Sink, p: dict[str, Any]) -> dict[str, Any]:
    sink.on_charging_needs(p["evse_id"], p["charging_needs"])
    return {"status": "Accepted"}


HANDLERS_V201: Mapping[str, Handler] = {
    "BootNotification": _boot_v201,
    "Heartbeat": _heartbeat,
    "StatusNotification": _status_v201,
    "Authorize": _authorize_v201,
    "TransactionEvent": _transaction_event,
    "MeterValues": _meter_v201,
    "NotifyEVChargingNeeds": _charging_needs,
    "DataTransfer": _data_transfer,
    "FirmwareStatusNotification": _empty,
    "LogStatusNotification": _empty,
    "SecurityEventNotification": _empty,
    "NotifyEvent": _empty,
    "NotifyReport": _empty,
    "NotifyMonitoringReport": _empty,
    "NotifyChargingLimit": _empty,
    "ClearedChargingLimit": _empty,
    "ReportChargingProfiles": _empty,
    "NotifyCustomerInformation": _empty,
    "NotifyDisplayMessages": _empty,
    "ReservationStatusUpdate": _empty,
    "PublishFirmwareStatusNotification": _empty,
}

# --- OCPP 2.1 -------------------------------------------------------------------------------
# Every 2.0.1 message we handle is in 2.1 with the fields we read unchanged (checked against
# ocpp/v21/schemas; 2.1 only adds optional fields), so 2.1 reuses the 2.0.1 handlers. New
# 2.1 notifications are acknowledged.

HANDLERS_V21: Mapping[str, Handler] = {
    **HANDLERS_V201,
    "NotifyDERAlarm": _empty,
    "NotifyDERStartStop": _empty,
    "NotifyPriorityCharging": _empty,
    "NotifySettlement": _empty,
    "ReportDERControl": _empty,
    "NotifyWebPaymentStarted": _empty,
    "BatterySwap": _empty,
}

HANDLERS: Mapping[OcppVersion, Mapping[str, Handler]] = {
    OcppVersion.V16: HANDLERS_V16,
    OcppVersion.V201: HANDLERS_V201,
    OcppVersion.V21: HANDLERS_V21,
}
