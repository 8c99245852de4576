"""OCPP wire adapters for :class:`~gridshare.sim.charger.SimCharger`.

One ``ocpp`` ChargePoint object per connection, subclassing ``ocpp.v16.ChargePoint`` or
``ocpp.v201.ChargePoint``. They translate the charger's version-neutral outbox items into
OCPP messages and incoming CSMS requests into calls on the charger. Frames are validated
against the official schemas by :mod:`gridshare.sim._schema` (the package's own, slower
validation is switched off per call and per handler).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ocpp.charge_point import (
    ChargePoint as BaseChargePoint,
)
from ocpp.charge_point import (
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallError, CallResult, unpack
from ocpp.routing import on
from ocpp.v16 import ChargePoint as V16ChargePoint
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as V201ChargePoint
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201

from gridshare.sim import _schema
from gridshare.sim.profiles import (
    Purpose,
    format_time,
    profile_from_v16,
    profile_from_v201,
)

if TYPE_CHECKING:
    from gridshare.sim.charger import MeterSample, Outgoing, SimCharger

_F = TypeVar("_F", bound=Callable[..., Any])

WIRE_LOG = logging.getLogger("gridshare.sim.wire")
"""Frame log of the simulated chargers (INFO: every frame), separate from the ``ocpp``
logger a CSMS in the same process uses."""


def _handler(action: Any) -> Callable[[_F], _F]:
    """``ocpp.routing.on`` with the package's validation off (we validate faster)."""
    return cast("Callable[[_F], _F]", on(action, skip_schema_validation=True))


class SimPoint(BaseChargePoint):  # type: ignore[misc]
    """Common part: fast validation, a ``send`` helper, the outbox interface."""

    _ocpp_version: str

    def __init__(self, sim: SimCharger, connection: Any) -> None:
        super().__init__(
            sim.id, connection, response_timeout=sim.response_timeout_s, logger=WIRE_LOG
        )
        self.sim = sim
        self._pending_action: str | None = None

    async def route_message(self, raw_msg: str | bytes) -> None:
        try:
            msg = unpack(raw_msg)
        except OCPPError:
            await super().route_message(raw_msg)  # the package logs it
            return
        if isinstance(msg, Call):
            handlers = self.route_map.get(msg.action)
            if handlers is not None and "_on_action" in handlers:
                try:
                    _schema.validate(self._ocpp_version, msg.action, msg.payload, response=False)
                except OCPPError as e:
                    self.sim._event(f"invalid {msg.action} from CSMS: {e.code}")
                    await self._send(msg.create_call_error(e).to_json())
                    return
        elif isinstance(msg, CallResult) and self._pending_action is not None:
            try:
                _schema.validate(
                    self._ocpp_version, self._pending_action, msg.payload, response=True
                )
            except OCPPError as e:
                self.sim._event(f"invalid {self._pending_action} response from CSMS")
                self._response_queue.put_nowait(
                    CallError(msg.unique_id, e.code, e.description, e.details)
                )
                return
        await super().route_message(raw_msg)

    async def send(self, payload: Any) -> Any:
        """Validate ``payload`` (a call dataclass) and send it; raise OCPPError on a
        CallError answer and TimeoutError when the CSMS does not answer."""
        action = type(payload).__name__
        body = remove_nones(snake_to_camel_case(serialize_as_dict(payload)))
        _schema.validate(self._ocpp_version, action, body, response=False)
        self._pending_action = action
        try:
            return await self.call(payload, suppress=False, skip_schema_validation=True)
        finally:
            self._pending_action = None

    async def boot(self) -> tuple[str, int]:
        raise NotImplementedError

    async def deliver(self, item: Outgoing) -> None:
        raise NotImplementedError


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _status_reason(reason: str) -> dict[str, Any] | None:
    return {"reason_code": reason[:20]} if reason else None


# ---------------------------------------------------------------------------- OCPP 1.6


class V16Point(SimPoint, V16ChargePoint):  # type: ignore[misc]
    async def boot(self) -> tuple[str, int]:
        res = await self.send(
            call16.BootNotification(
                charge_point_model=self.sim.model,
                charge_point_vendor=self.sim.vendor,
                firmware_version="gridshare-sim",
            )
        )
        return str(res.status), int(res.interval)

    def _meter_value(self, s: MeterSample) -> dict[str, Any]:
        ctx = s.context
        sv: list[dict[str, Any]] = [
            {
                "value": str(round(s.energy_wh)),
                "context": ctx,
                "measurand": "Energy.Active.Import.Register",
                "unit": "Wh",
            },
            {
                "value": _fmt(s.power_w),
                "context": ctx,
                "measurand": "Power.Active.Import",
                "unit": "W",
            },
        ]
        for phase, a in zip(s.phases, s.current_a, strict=True):
            sv.append(
                {
                    "value": _fmt(a),
                    "context": ctx,
                    "measurand": "Current.Import",
                    "phase": phase,
                    "unit": "A",
                }
            )
        sv.append(
            {
                "value": _fmt(s.offered_a),
                "context": ctx,
                "measurand": "Current.Offered",
                "unit": "A",
            }
        )
        sv.append(
            {
                "value": _fmt(s.voltage_v),
                "context": ctx,
                "measurand": "Voltage",
                "phase": f"{s.phases[0]}-N",
                "unit": "V",
            }
        )
        if s.soc_pct is not None:
            sv.append(
                {
                    "value": _fmt(s.soc_pct),
                    "context": ctx,
                    "measurand": "SoC",
                    "location": "EV",
                    "unit": "Percent",
                }
            )
        return {"timestamp": format_time(s.timestamp), "sampled_value": sv}

    async def deliver(self, item: Outgoing) -> None:
        sim, tx = self.sim, item.tx
        kind = item.kind
        if kind == "status":
            assert item.status is not None
            await self.send(
                call16.StatusNotification(
                    connector_id=item.connector,
                    error_code="NoError",
                    status=item.status.value,
                    timestamp=format_time(item.at),
                )
            )
        elif kind == "heartbeat":
            await self.send(call16.Heartbeat())
        elif kind in ("plugged", "needs"):
            return
        elif kind == "authorize":
            assert tx is not None
            res = await self.send(call16.Authorize(id_tag=tx.id_tag))
            sim._authorized(tx, res.id_tag_info.get("status") == "Accepted")
        elif kind == "started":
            assert tx is not None
            res = await self.send(
                call16.StartTransaction(
                    connector_id=item.connector,
                    id_tag=tx.id_tag,
                    meter_start=round(tx.meter_start_wh),
                    timestamp=format_time(item.at),
                )
            )
            tx.id = str(res.transaction_id)
            sim._event(f"tx_id c{item.connector} = {tx.id}")
            if res.id_tag_info.get("status") != "Accepted" and not tx.ended:
                sim._authorized(tx, False)
        elif kind == "meter":
            assert item.sample is not None
            await self.send(
                call16.MeterValues(
                    connector_id=item.connector,
                    transaction_id=int(tx.id) if tx is not None and tx.id is not None else None,
                    meter_value=[self._meter_value(item.sample)],
                )
            )
        elif kind == "stopped":
            assert tx is not None and item.sample is not None
            if tx.id is None:
                sim._event(f"cannot stop c{item.connector}: CSMS never gave a transaction id")
                return
            await self.send(
                call16.StopTransaction(
                    meter_stop=round(item.sample.energy_wh),
                    timestamp=format_time(item.at),
                    transaction_id=int(tx.id),
                    reason=tx.stop_reason,
                    id_tag=tx.id_tag,
                )
            )

    # -- requests from the CSMS

    @_handler(Action16.set_charging_profile)
    def _sim_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> Any:
        profile = profile_from_v16(connector_id, cs_charging_profiles, self.sim.clock.now())
        ok, reason = self.sim.install_profile(profile)
        if not ok:
            self.sim._event(f"profile rejected: {reason}")
        return result16.SetChargingProfile(status="Accepted" if ok else "Rejected")

    @_handler(Action16.clear_charging_profile)
    def _sim_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> Any:
        n = self.sim.clear_profiles(
            profile_id=id,
            connector=connector_id,
            purpose=Purpose.parse(charging_profile_purpose) if charging_profile_purpose else None,
            stack_level=stack_level,
        )
        return result16.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @_handler(Action16.get_composite_schedule)
    def _sim_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        if connector_id < 0 or connector_id > self.sim.connectors:
            return result16.GetCompositeSchedule(status="Rejected")
        start, unit, periods = self.sim.composite_schedule(
            connector_id, duration, charging_rate_unit
        )
        return result16.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=format_time(start),
            charging_schedule={
                "duration": duration,
                "start_schedule": format_time(start),
                "charging_rate_unit": unit,
                "charging_schedule_period": [
                    remove_nones(
                        {
                            "start_period": p.start_s,
                            "limit": p.limit,
                            "number_phases": p.number_phases,
                        }
                    )
                    for p in periods
                ],
            },
        )

    @_handler(Action16.get_configuration)
    def _sim_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        items = self.sim.config_items()
        wanted = key or list(items)
        known = [
            {"key": k, "readonly": items[k][1], "value": items[k][0]} for k in wanted if k in items
        ]
        unknown = [k for k in wanted if k not in items]
        return result16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @_handler(Action16.change_configuration)
    def _sim_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        return result16.ChangeConfiguration(status=self.sim.set_config(key, value))

    @_handler(Action16.remote_stop_transaction)
    def _sim_remote_stop_transaction(self, transaction_id: int, **_: Any) -> Any:
        ok = self.sim.remote_stop(str(transaction_id))
        return result16.RemoteStopTransaction(status="Accepted" if ok else "Rejected")

    @_handler(Action16.trigger_message)
    def _sim_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> Any:
        if connector_id is not None and not 0 <= connector_id <= self.sim.connectors:
            return result16.TriggerMessage(status="Rejected")
        ok = self.sim.trigger(requested_message, connector_id or None)
        return result16.TriggerMessage(status="Accepted" if ok else "NotImplemented")


# ---------------------------------------------------------------------------- OCPP 2.0.1

_CHARGING_STATE = {
    "Preparing": "EVConnected",
    "Charging": "Charging",
    "SuspendedEV": "SuspendedEV",
    "SuspendedEVSE": "SuspendedEVSE",
    "Finishing": "Idle",
}
_STOP_TRIGGER = {
    "EVDisconnected": "EVCommunicationLost",
    "Remote": "RemoteStop",
    "DeAuthorized": "Deauthorized",
    "Local": "StopAuthorized",
}
# (component, variable) in lower case → 1.6 configuration key (or a fixed value)
_VARIABLES: dict[tuple[str, str], str] = {
    ("ocppcommctrlr", "heartbeatinterval"): "HeartbeatInterval",
    ("sampleddatactrlr", "txupdatedinterval"): "MeterValueSampleInterval",
    ("sampleddatactrlr", "txupdatedmeasurands"): "MeterValuesSampledData",
    ("smartchargingctrlr", "profilestacklevel"): "ChargeProfileMaxStackLevel",
    ("smartchargingctrlr", "periodsperschedule"): "ChargingScheduleMaxPeriods",
    ("smartchargingctrlr", "entries"): "MaxChargingProfilesInstalled",
    ("smartchargingctrlr", "rateunit"): "=A,W",
    ("smartchargingctrlr", "enabled"): "=true",
}
_COMPONENTS = {c for c, _ in _VARIABLES}


class V201Point(SimPoint, V201ChargePoint):  # type: ignore[misc]
    def __init__(self, sim: SimCharger, connection: Any) -> None:
        super().__init__(sim, connection)
        self._sent_status: dict[int, str] = {}

    async def boot(self) -> tuple[str, int]:
        res = await self.send(
            call201.BootNotification(
                charging_station={
                    "model": self.sim.model,
                    "vendor_name": self.sim.vendor,
                    "firmware_version": "gridshare-sim",
                },
                reason="PowerUp",
            )
        )
        return str(res.status), int(res.interval)

    @staticmethod
    def _meter_value(s: MeterSample) -> dict[str, Any]:
        ctx = s.context
        sv: list[dict[str, Any]] = [
            {
                "value": round(s.energy_wh, 1),
                "context": ctx,
                "measurand": "Energy.Active.Import.Register",
                "unit_of_measure": {"unit": "Wh"},
            },
            {
                "value": round(s.power_w, 1),
                "context": ctx,
                "measurand": "Power.Active.Import",
                "unit_of_measure": {"unit": "W"},
            },
        ]
        for phase, a in zip(s.phases, s.current_a, strict=True):
            sv.append(
                {
                    "value": round(a, 2),
                    "context": ctx,
                    "measurand": "Current.Import",
                    "phase": phase,
                    "unit_of_measure": {"unit": "A"},
                }
            )
        sv.append(
            {
                "value": round(s.offered_a, 1),
                "context": ctx,
                "measurand": "Current.Offered",
                "unit_of_measure": {"unit": "A"},
            }
        )
        sv.append(
            {
                "value": round(s.voltage_v, 1),
                "context": ctx,
                "measurand": "Voltage",
                "phase": f"{s.phases[0]}-N",
                "unit_of_measure": {"unit": "V"},
            }
        )
        if s.soc_pct is not None:
            sv.append(
                {
                    "value": s.soc_pct,
                    "context": ctx,
                    "measurand": "SoC",
                    "location": "EV",
                    "unit_of_measure": {"unit": "Percent"},
                }
            )
        return {"timestamp": format_time(s.timestamp), "sampled_value": sv}

    async def _tx_event(
        self,
        item: Outgoing,
        event_type: str,
        trigger: str,
        info: dict[str, Any],
        **extra: Any,
    ) -> Any:
        tx = item.tx
        assert tx is not None
        seq = tx.seq_no
        tx.seq_no += 1
        return await self.send(
            call201.TransactionEvent(
                event_type=event_type,
                timestamp=format_time(item.at),
                trigger_reason=trigger,
                seq_no=seq,
                transaction_info={"transaction_id": tx.local_id, **info},
                offline=True if item.offline else None,
                **extra,
            )
        )

    async def deliver(self, item: Outgoing) -> None:
        sim, tx = self.sim, item.tx
        kind = item.kind
        if kind == "status":
            assert item.status is not None
            conn_status = "Available" if item.status.value == "Available" else "Occupied"
            if self._sent_status.get(item.connector) != conn_status:
                await self.send(
                    call201.StatusNotification(
                        timestamp=format_time(item.at),
                        connector_status=conn_status,
                        evse_id=item.connector,
                        connector_id=1,
                    )
                )
                self._sent_status[item.connector] = conn_status
            state = _CHARGING_STATE.get(item.status.value)
            if (
                tx is not None
                and not tx.ended
                and tx.seq_no > 0
                and state
                and tx.wire_state != state
            ):
                tx.wire_state = state
                await self._tx_event(
                    item, "Updated", "ChargingStateChanged", {"charging_state": state}
                )
        elif kind == "heartbeat":
            await self.send(call201.Heartbeat())
        elif kind == "plugged":
            assert tx is not None
            tx.wire_state = "EVConnected"
            await self._tx_event(
                item,
                "Started",
                "CablePluggedIn",
                {"charging_state": "EVConnected"},
                evse={"id": item.connector, "connector_id": 1},
            )
        elif kind == "authorize":
            assert tx is not None
            res = await self.send(
                call201.Authorize(id_token={"id_token": tx.id_tag, "type": "ISO14443"})
            )
            sim._authorized(tx, res.id_token_info.get("status") == "Accepted")
        elif kind == "started":
            assert tx is not None
            await self._tx_event(
                item,
                "Updated",
                "Authorized",
                {},
                id_token={"id_token": tx.id_tag, "type": "ISO14443"},
            )
        elif kind == "needs":
            ev = sim.ev(item.connector)
            if ev is None or tx is None or tx.ended:
                return
            phases = ev.phases_used(sim.phases)
            params = {
                "energy_amount": round(ev.energy_needed_kwh * 1000),
                "ev_min_current": round(ev.min_current_a),
                "ev_max_current": round(ev.max_current_a),
                "ev_max_voltage": round(sim.voltage_v),
            }
            needs: dict[str, Any] = {
                "requested_energy_transfer": "AC_three_phase" if phases == 3 else "AC_single_phase",
                "ac_charging_parameters": params,
            }
            if ev.departure is not None:
                needs["departure_time"] = format_time(ev.departure)
            res = await self.send(
                call201.NotifyEVChargingNeeds(evse_id=item.connector, charging_needs=needs)
            )
            sim._event(f"needs c{item.connector} {res.status}")
        elif kind == "meter":
            assert tx is not None and item.sample is not None
            trigger = "Trigger" if item.sample.context == "Trigger" else "MeterValuePeriodic"
            info = {"charging_state": tx.wire_state} if tx.wire_state else {}
            await self._tx_event(
                item, "Updated", trigger, info, meter_value=[self._meter_value(item.sample)]
            )
        elif kind == "stopped":
            assert tx is not None and item.sample is not None
            reason = tx.stop_reason or "Other"
            await self._tx_event(
                item,
                "Ended",
                _STOP_TRIGGER.get(reason, "AbnormalCondition"),
                {
                    "charging_state": "Idle" if reason == "EVDisconnected" else "EVConnected",
                    "stopped_reason": reason,
                },
                meter_value=[self._meter_value(item.sample)],
            )

    # -- requests from the CSMS

    @_handler(Action201.set_charging_profile)
    def _sim_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **_: Any
    ) -> Any:
        profile = profile_from_v201(evse_id, charging_profile, self.sim.clock.now())
        ok, reason = self.sim.install_profile(profile)
        if not ok:
            self.sim._event(f"profile rejected: {reason}")
        return result201.SetChargingProfile(
            status="Accepted" if ok else "Rejected", status_info=_status_reason(reason)
        )

    @_handler(Action201.clear_charging_profile)
    def _sim_clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        crit = charging_profile_criteria or {}
        purpose = crit.get("charging_profile_purpose")
        n = self.sim.clear_profiles(
            profile_id=charging_profile_id,
            connector=crit.get("evse_id"),
            purpose=Purpose.parse(purpose) if purpose else None,
            stack_level=crit.get("stack_level"),
        )
        return result201.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @_handler(Action201.get_composite_schedule)
    def _sim_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        if evse_id < 0 or evse_id > self.sim.connectors:
            return result201.GetCompositeSchedule(
                status="Rejected", status_info={"reason_code": "UnknownEVSE"}
            )
        start, unit, periods = self.sim.composite_schedule(evse_id, duration, charging_rate_unit)
        return result201.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evse_id": evse_id,
                "duration": duration,
                "schedule_start": format_time(start),
                "charging_rate_unit": unit,
                "charging_schedule_period": [
                    remove_nones(
                        {
                            "start_period": p.start_s,
                            "limit": p.limit,
                            "number_phases": p.number_phases,
                        }
                    )
                    for p in periods
                ],
            },
        )

    def _lookup(
        self, component: dict[str, Any], variable: dict[str, Any]
    ) -> tuple[str, str | None]:
        comp = str(component.get("name", "")).lower()
        var = str(variable.get("name", "")).lower()
        if comp not in _COMPONENTS:
            return "UnknownComponent", None
        key = _VARIABLES.get((comp, var))
        if key is None:
            return "UnknownVariable", None
        return "Accepted", key

    @_handler(Action201.get_variables)
    def _sim_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        items = self.sim.config_items()
        out = []
        for d in get_variable_data:
            status, key = self._lookup(d["component"], d["variable"])
            value: str | None = None
            if key is not None:
                value = key[1:] if key.startswith("=") else items[key][0]
            out.append(
                remove_nones(
                    {
                        "attribute_status": status,
                        "attribute_value": value,
                        "component": d["component"],
                        "variable": d["variable"],
                        "attribute_type": d.get("attribute_type"),
                    }
                )
            )
        return result201.GetVariables(get_variable_result=out)

    @_handler(Action201.set_variables)
    def _sim_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        out = []
        for d in set_variable_data:
            status, key = self._lookup(d["component"], d["variable"])
            if key is not None:
                if key.startswith("="):
                    status = "Rejected"
                else:
                    res = self.sim.set_config(key, str(d["attribute_value"]))
                    status = "Accepted" if res == "Accepted" else "Rejected"
            out.append(
                remove_nones(
                    {
                        "attribute_status": status,
                        "component": d["component"],
                        "variable": d["variable"],
                        "attribute_type": d.get("attribute_type"),
                    }
                )
            )
        return result201.SetVariables(set_variable_result=out)

    @_handler(Action201.request_stop_transaction)
    def _sim_request_stop_transaction(self, transaction_id: str, **_: Any) -> Any:
        ok = self.sim.remote_stop(transaction_id)
        return result201.RequestStopTransaction(status="Accepted" if ok else "Rejected")

    @_handler(Action201.trigger_message)
    def _sim_trigger_message(
        self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        connector = int(evse["id"]) if evse else None
        if connector is not None and not 0 <= connector <= self.sim.connectors:
            return result201.TriggerMessage(status="Rejected")
        ok = self.sim.trigger(requested_message, connector or None)
        return result201.TriggerMessage(status="Accepted" if ok else "NotImplemented")


def make_point(sim: SimCharger, connection: Any) -> SimPoint:
    cls = V16Point if sim.protocol == "ocpp1.6" else V201Point
    return cls(sim, connection)


__all__ = ["SimPoint", "V16Point", "V201Point", "make_point"]
