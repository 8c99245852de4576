"""OCPP 2.0.1 (and 2.1, whose messages for all this are the same) on the wire for a
simulated charger: its outbox items as CALLs (a
transaction is a series of TransactionEvents), and the CSMS's requests as calls on the
charger. Device-model variables map onto the 1.6-style configuration keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gridshare.ocpp_version import OcppVersion
from gridshare.sim.meter import MeterSample
from gridshare.sim.outbox import Outgoing
from gridshare.sim.profiles import Purpose, format_time, profile_from_v201
from gridshare.sim.rpc import Handler, Payload, RpcConnection
from gridshare.sim.schema import actions
from gridshare.sim.v2g import v2x_needs

if TYPE_CHECKING:
    from gridshare.sim.charger import SimCharger

KNOWN_ACTIONS = actions("ocpp2.0.1")

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
    "Reboot": "ResetCommand",
    "ImmediateReset": "ResetCommand",
}
# (component, variable) in lower case → 1.6 configuration key, or "=value" for a constant
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


def meter_value(s: MeterSample) -> Payload:
    """One 2.0.1 MeterValue (sampled values are numbers in 2.0.1)."""
    ctx = s.context
    sv: list[Payload] = [
        {
            "value": round(s.energy_wh, 1),
            "context": ctx,
            "measurand": "Energy.Active.Import.Register",
            "unitOfMeasure": {"unit": "Wh"},
        },
        {
            "value": round(s.power_w, 1),
            "context": ctx,
            "measurand": "Power.Active.Import",
            "unitOfMeasure": {"unit": "W"},
        },
    ]
    sv.extend(
        {
            "value": round(a, 2),
            "context": ctx,
            "measurand": "Current.Import",
            "phase": phase,
            "unitOfMeasure": {"unit": "A"},
        }
        for phase, a in zip(s.phases, s.current_a, strict=True)
    )
    sv.append(
        {
            "value": round(s.offered_a, 1),
            "context": ctx,
            "measurand": "Current.Offered",
            "unitOfMeasure": {"unit": "A"},
        }
    )
    sv.append(
        {
            "value": round(s.voltage_v, 1),
            "context": ctx,
            "measurand": "Voltage",
            "phase": f"{s.phases[0]}-N",
            "unitOfMeasure": {"unit": "V"},
        }
    )
    if s.power_export_w is not None:  # a V2G charger: what it feeds back, W and Wh
        sv.append(
            {
                "value": round(s.power_export_w, 1),
                "context": ctx,
                "measurand": "Power.Active.Export",
                "unitOfMeasure": {"unit": "W"},
            }
        )
        sv.append(
            {
                "value": round(s.energy_export_wh or 0.0, 1),
                "context": ctx,
                "measurand": "Energy.Active.Export.Register",
                "unitOfMeasure": {"unit": "Wh"},
            }
        )
    if s.soc_pct is not None:
        sv.append(
            {
                "value": s.soc_pct,
                "context": ctx,
                "measurand": "SoC",
                "location": "EV",
                "unitOfMeasure": {"unit": "Percent"},
            }
        )
    return {"timestamp": format_time(s.timestamp), "sampledValue": sv}


def _lookup(component: Payload, variable: Payload) -> tuple[str, str | None]:
    comp = str(component.get("name", "")).lower()
    var = str(variable.get("name", "")).lower()
    if comp not in _COMPONENTS:
        return "UnknownComponent", None
    key = _VARIABLES.get((comp, var))
    if key is None:
        return "UnknownVariable", None
    return "Accepted", key


def _echo(d: Payload, status: str, **extra: Any) -> Payload:
    out: Payload = {
        "attributeStatus": status,
        "component": d["component"],
        "variable": d["variable"],
        **extra,
    }
    if "attributeType" in d:
        out["attributeType"] = d["attributeType"]
    return out


class Ocpp201Wire:
    """One connection's OCPP 2.0.1 translation for ``charger``."""

    version: OcppVersion = OcppVersion.V201
    known_actions = KNOWN_ACTIONS

    def __init__(self, charger: SimCharger) -> None:
        self.charger = charger
        if charger.protocol == OcppVersion.V21:  # 2.1: the 2.0.1 messages, its own schemas
            self.version = OcppVersion.V21
            self.known_actions = actions(OcppVersion.V21)
        self._sent_status: dict[int, str] = {}
        """Connector status last sent on this connection (2.0.1 has only Available /
        Occupied; the rest travels in TransactionEvents)."""

    # ------------------------------------------------------------------ to the CSMS

    async def boot(self, rpc: RpcConnection, reason: str) -> tuple[str, float]:
        """BootNotification with ``reason`` (PowerUp, RemoteReset, ...); returns
        (status, interval)."""
        res = await rpc.call(
            "BootNotification",
            {
                "chargingStation": {
                    "model": self.charger.model,
                    "vendorName": self.charger.vendor,
                    "firmwareVersion": "gridshare-sim",
                },
                "reason": reason,
            },
        )
        return str(res["status"]), float(res["interval"])

    async def heartbeat(self, rpc: RpcConnection) -> None:
        await rpc.call("Heartbeat", {})

    async def _tx_event(
        self,
        rpc: RpcConnection,
        item: Outgoing,
        event_type: str,
        trigger: str,
        info: Payload,
        **extra: Any,
    ) -> Payload:
        tx = item.tx
        assert tx is not None
        seq = tx.seq_no
        tx.seq_no += 1
        payload: Payload = {
            "eventType": event_type,
            "timestamp": format_time(item.at),
            "triggerReason": trigger,
            "seqNo": seq,
            "transactionInfo": {"transactionId": tx.local_id, **info},
            **extra,
        }
        if item.offline:
            payload["offline"] = True
        return await rpc.call("TransactionEvent", payload)

    async def deliver(self, rpc: RpcConnection, item: Outgoing) -> None:
        charger, tx = self.charger, item.tx
        kind = item.kind
        if kind == "status":
            assert item.status is not None
            conn_status = "Available" if item.status.value == "Available" else "Occupied"
            if self._sent_status.get(item.connector) != conn_status:
                await rpc.call(
                    "StatusNotification",
                    {
                        "timestamp": format_time(item.at),
                        "connectorStatus": conn_status,
                        "evseId": item.connector,
                        "connectorId": 1,
                    },
                )
                self._sent_status[item.connector] = conn_status
            state = _CHARGING_STATE.get(item.status.value)
            if (
                tx is not None
                and not tx.ended
                and tx.seq_no > 0
                and state
                and (tx.wire_state != state)
            ):
                tx.wire_state = state
                await self._tx_event(
                    rpc, item, "Updated", "ChargingStateChanged", {"chargingState": state}
                )
        elif kind == "heartbeat":
            await self.heartbeat(rpc)
        elif kind == "plugged":
            assert tx is not None
            tx.wire_state = "EVConnected"
            await self._tx_event(
                rpc,
                item,
                "Started",
                "CablePluggedIn",
                {"chargingState": "EVConnected"},
                evse={"id": item.connector, "connectorId": 1},
            )
        elif kind == "authorize":
            assert tx is not None
            res = await rpc.call(
                "Authorize", {"idToken": {"idToken": tx.id_tag, "type": "ISO14443"}}
            )
            charger.transaction_authorized(tx, res["idTokenInfo"]["status"] == "Accepted")
        elif kind == "started":
            assert tx is not None
            await self._tx_event(
                rpc,
                item,
                "Updated",
                "Authorized",
                {},
                idToken={"idToken": tx.id_tag, "type": "ISO14443"},
            )
        elif kind == "needs":
            await self._charging_needs(rpc, item)
        elif kind == "meter":
            assert tx is not None and item.sample is not None
            trigger = "Trigger" if item.sample.context == "Trigger" else "MeterValuePeriodic"
            info = {"chargingState": tx.wire_state} if tx.wire_state else {}
            await self._tx_event(
                rpc, item, "Updated", trigger, info, meterValue=[meter_value(item.sample)]
            )
        elif kind == "stopped":
            assert tx is not None and item.sample is not None
            reason = tx.stop_reason or "Other"
            await self._tx_event(
                rpc,
                item,
                "Ended",
                _STOP_TRIGGER.get(reason, "AbnormalCondition"),
                {
                    "chargingState": "Idle" if reason == "EVDisconnected" else "EVConnected",
                    "stoppedReason": reason,
                },
                meterValue=[meter_value(item.sample)],
            )

    async def _charging_needs(self, rpc: RpcConnection, item: Outgoing) -> None:
        """NotifyEVChargingNeeds, as an ISO 15118 car would send it once authorized."""
        charger, tx = self.charger, item.tx
        ev = charger.ev(item.connector)
        if ev is None or tx is None or tx.ended:
            return
        phases = ev.phases_used(charger.phases)
        needs: Payload = {
            "requestedEnergyTransfer": "AC_three_phase" if phases == 3 else "AC_single_phase",
            "acChargingParameters": {
                "energyAmount": round(ev.energy_needed_kwh * 1000),
                "evMinCurrent": round(ev.min_current_a),
                "evMaxCurrent": round(ev.max_current_a),
                "evMaxVoltage": round(charger.voltage_v),
            },
        }
        if ev.departure is not None:
            needs["departureTime"] = format_time(ev.departure)
        if charger.protocol == "ocpp2.1":
            needs.update(v2x_needs(ev, charger.v2g, phases))
        res = await rpc.call(
            "NotifyEVChargingNeeds", {"evseId": item.connector, "chargingNeeds": needs}
        )
        charger.log_event(f"needs c{item.connector} {res['status']}")

    # ------------------------------------------------------------------ from the CSMS

    def handlers(self) -> dict[str, Handler]:
        return {
            "SetChargingProfile": self.set_charging_profile,
            "ClearChargingProfile": self.clear_charging_profile,
            "GetCompositeSchedule": self.get_composite_schedule,
            "GetVariables": self.get_variables,
            "SetVariables": self.set_variables,
            "RequestStopTransaction": self.request_stop_transaction,
            "TriggerMessage": self.trigger_message,
            "Reset": self.reset,
        }

    def reset(self, req: Payload) -> Payload:
        """Immediate: stop transactions and reboot now; OnIdle: once none is ongoing.
        Resetting a single EVSE is not supported."""
        if req.get("evseId"):
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnsupportedRequest"}}
        when_idle = req["type"] == "OnIdle"
        return {"status": self.charger.reset(when_idle=when_idle, stop_reason="ImmediateReset")}

    def set_charging_profile(self, req: Payload) -> Payload:
        charger = self.charger
        profile = profile_from_v201(req["evseId"], req["chargingProfile"], charger.clock.now())
        ok, reason = charger.install_profile(profile)
        result: Payload = {"status": "Accepted" if ok else "Rejected"}
        if reason:
            result["statusInfo"] = {"reasonCode": reason[:20]}
        return result

    def clear_charging_profile(self, req: Payload) -> Payload:
        crit = req.get("chargingProfileCriteria") or {}
        purpose = crit.get("chargingProfilePurpose")
        n = self.charger.clear_profiles(
            profile_id=req.get("chargingProfileId"),
            connector=crit.get("evseId"),
            purpose=Purpose.parse(purpose) if purpose else None,
            stack_level=crit.get("stackLevel"),
        )
        return {"status": "Accepted" if n else "Unknown"}

    def get_composite_schedule(self, req: Payload) -> Payload:
        evse_id, duration = req["evseId"], req["duration"]
        if not 0 <= evse_id <= self.charger.connectors:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEVSE"}}
        start, unit, periods = self.charger.composite_schedule(
            evse_id, duration, req.get("chargingRateUnit")
        )
        out_periods = []
        for p in periods:
            period: Payload = {"startPeriod": p.start_s, "limit": p.limit}
            if p.number_phases is not None:
                period["numberPhases"] = p.number_phases
            out_periods.append(period)
        return {
            "status": "Accepted",
            "schedule": {
                "evseId": evse_id,
                "duration": duration,
                "scheduleStart": format_time(start),
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": out_periods,
            },
        }

    def get_variables(self, req: Payload) -> Payload:
        items = self.charger.config.items()
        out = []
        for d in req["getVariableData"]:
            status, key = _lookup(d["component"], d["variable"])
            if key is None:
                out.append(_echo(d, status))
            else:
                value = key[1:] if key.startswith("=") else items[key][0]
                out.append(_echo(d, status, attributeValue=value))
        return {"getVariableResult": out}

    def set_variables(self, req: Payload) -> Payload:
        out = []
        for d in req["setVariableData"]:
            status, key = _lookup(d["component"], d["variable"])
            if key is not None:
                if key.startswith("="):
                    status = "Rejected"
                else:
                    changed = self.charger.set_config(key, str(d["attributeValue"]))
                    status = "Accepted" if changed == "Accepted" else "Rejected"
            out.append(_echo(d, status))
        return {"setVariableResult": out}

    def request_stop_transaction(self, req: Payload) -> Payload:
        ok = self.charger.remote_stop(req["transactionId"])
        return {"status": "Accepted" if ok else "Rejected"}

    def trigger_message(self, req: Payload) -> Payload:
        evse = req.get("evse")
        connector = int(evse["id"]) if evse else None
        if connector is not None and not 0 <= connector <= self.charger.connectors:
            return {"status": "Rejected"}
        ok = self.charger.trigger(req["requestedMessage"], connector or None)
        return {"status": "Accepted" if ok else "NotImplemented"}
