"""OCPP 1.6J on the wire for a simulated charger: its outbox items as CALLs, and the
CSMS's requests as calls on the charger.

Payloads are built and read as the JSON the spec defines (camelCase), and checked against
the official schemas by :class:`~gridshare.sim.rpc.RpcConnection`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gridshare.ocpp_version import OcppVersion
from gridshare.sim.meter import MeterSample
from gridshare.sim.outbox import Outgoing
from gridshare.sim.profiles import Purpose, format_time, profile_from_v16
from gridshare.sim.rpc import Handler, Payload, RpcConnection
from gridshare.sim.schema import actions

if TYPE_CHECKING:
    from gridshare.sim.charger import SimCharger

KNOWN_ACTIONS = actions("ocpp1.6")


def _one_decimal(value: float) -> str:
    return f"{value:.1f}"


def meter_value(s: MeterSample) -> Payload:
    """One 1.6 MeterValue (sampled values are strings in 1.6)."""
    ctx = s.context
    sv: list[Payload] = [
        {
            "value": str(round(s.energy_wh)),
            "context": ctx,
            "measurand": "Energy.Active.Import.Register",
            "unit": "Wh",
        },
        {
            "value": _one_decimal(s.power_w),
            "context": ctx,
            "measurand": "Power.Active.Import",
            "unit": "W",
        },
    ]
    sv.extend(
        {
            "value": _one_decimal(a),
            "context": ctx,
            "measurand": "Current.Import",
            "phase": phase,
            "unit": "A",
        }
        for phase, a in zip(s.phases, s.current_a, strict=True)
    )
    sv.append(
        {
            "value": _one_decimal(s.offered_a),
            "context": ctx,
            "measurand": "Current.Offered",
            "unit": "A",
        }
    )
    sv.append(
        {
            "value": _one_decimal(s.voltage_v),
            "context": ctx,
            "measurand": "Voltage",
            "phase": f"{s.phases[0]}-N",
            "unit": "V",
        }
    )
    if s.soc_pct is not None:
        sv.append(
            {
                "value": _one_decimal(s.soc_pct),
                "context": ctx,
                "measurand": "SoC",
                "location": "EV",
                "unit": "Percent",
            }
        )
    return {"timestamp": format_time(s.timestamp), "sampledValue": sv}


def _periods(periods: Any) -> list[Payload]:
    out = []
    for p in periods:
        period: Payload = {"startPeriod": p.start_s, "limit": p.limit}
        if p.number_phases is not None:
            period["numberPhases"] = p.number_phases
        out.append(period)
    return out


class Ocpp16Wire:
    """One connection's OCPP 1.6J translation for ``charger``."""

    version: OcppVersion = OcppVersion.V16
    known_actions = KNOWN_ACTIONS

    def __init__(self, charger: SimCharger) -> None:
        self.charger = charger

    # ------------------------------------------------------------------ to the CSMS

    async def boot(self, rpc: RpcConnection, reason: str) -> tuple[str, float]:
        """BootNotification (1.6 has no boot reason); returns (status, interval)."""
        res = await rpc.call(
            "BootNotification",
            {
                "chargePointVendor": self.charger.vendor,
                "chargePointModel": self.charger.model,
                "firmwareVersion": "gridshare-sim",
            },
        )
        return str(res["status"]), float(res["interval"])

    async def heartbeat(self, rpc: RpcConnection) -> None:
        await rpc.call("Heartbeat", {})

    async def deliver(self, rpc: RpcConnection, item: Outgoing) -> None:
        charger, tx = self.charger, item.tx
        kind = item.kind
        if kind == "status":
            assert item.status is not None
            await rpc.call(
                "StatusNotification",
                {
                    "connectorId": item.connector,
                    "errorCode": "NoError",
                    "status": item.status.value,
                    "timestamp": format_time(item.at),
                },
            )
        elif kind == "heartbeat":
            await self.heartbeat(rpc)
        elif kind in ("plugged", "needs"):
            return  # 2.0.1 only
        elif kind == "authorize":
            assert tx is not None
            res = await rpc.call("Authorize", {"idTag": tx.id_tag})
            charger.transaction_authorized(tx, res["idTagInfo"]["status"] == "Accepted")
        elif kind == "started":
            assert tx is not None
            res = await rpc.call(
                "StartTransaction",
                {
                    "connectorId": item.connector,
                    "idTag": tx.id_tag,
                    "meterStart": round(tx.meter_start_wh),
                    "timestamp": format_time(item.at),
                },
            )
            tx.id = str(res["transactionId"])
            charger.log_event(f"tx_id c{item.connector} = {tx.id}")
            if res["idTagInfo"]["status"] != "Accepted" and not tx.ended:
                charger.transaction_authorized(tx, False)
        elif kind == "meter":
            assert item.sample is not None
            payload: Payload = {
                "connectorId": item.connector,
                "meterValue": [meter_value(item.sample)],
            }
            if tx is not None and tx.id is not None:
                payload["transactionId"] = int(tx.id)
            await rpc.call("MeterValues", payload)
        elif kind == "stopped":
            assert tx is not None and item.sample is not None
            if tx.id is None:
                charger.log_event(f"cannot stop c{item.connector}: CSMS never gave a tx id")
                return
            stop: Payload = {
                "meterStop": round(item.sample.energy_wh),
                "timestamp": format_time(item.at),
                "transactionId": int(tx.id),
                "idTag": tx.id_tag,
            }
            if tx.stop_reason:
                stop["reason"] = tx.stop_reason
            await rpc.call("StopTransaction", stop)

    # ------------------------------------------------------------------ from the CSMS

    def handlers(self) -> dict[str, Handler]:
        return {
            "SetChargingProfile": self.set_charging_profile,
            "ClearChargingProfile": self.clear_charging_profile,
            "GetCompositeSchedule": self.get_composite_schedule,
            "GetConfiguration": self.get_configuration,
            "ChangeConfiguration": self.change_configuration,
            "RemoteStopTransaction": self.remote_stop_transaction,
            "TriggerMessage": self.trigger_message,
            "Reset": self.reset,
        }

    def reset(self, req: Payload) -> Payload:
        """Hard or Soft: either way the charger stops its transactions and reboots."""
        stop_reason = "HardReset" if req["type"] == "Hard" else "SoftReset"
        return {"status": self.charger.reset(when_idle=False, stop_reason=stop_reason)}

    def set_charging_profile(self, req: Payload) -> Payload:
        charger = self.charger
        profile = profile_from_v16(
            req["connectorId"], req["csChargingProfiles"], charger.clock.now()
        )
        ok, _ = charger.install_profile(profile)
        return {"status": "Accepted" if ok else "Rejected"}

    def clear_charging_profile(self, req: Payload) -> Payload:
        purpose = req.get("chargingProfilePurpose")
        n = self.charger.clear_profiles(
            profile_id=req.get("id"),
            connector=req.get("connectorId"),
            purpose=Purpose.parse(purpose) if purpose else None,
            stack_level=req.get("stackLevel"),
        )
        return {"status": "Accepted" if n else "Unknown"}

    def get_composite_schedule(self, req: Payload) -> Payload:
        connector, duration = req["connectorId"], req["duration"]
        if not 0 <= connector <= self.charger.connectors:
            return {"status": "Rejected"}
        start, unit, periods = self.charger.composite_schedule(
            connector, duration, req.get("chargingRateUnit")
        )
        return {
            "status": "Accepted",
            "connectorId": connector,
            "scheduleStart": format_time(start),
            "chargingSchedule": {
                "duration": duration,
                "startSchedule": format_time(start),
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": _periods(periods),
            },
        }

    def get_configuration(self, req: Payload) -> Payload:
        items = self.charger.config.items()
        wanted = req.get("key") or list(items)
        result: Payload = {
            "configurationKey": [
                {"key": k, "readonly": items[k][1], "value": items[k][0]}
                for k in wanted
                if k in items
            ]
        }
        unknown = [k for k in wanted if k not in items]
        if unknown:
            result["unknownKey"] = unknown
        return result

    def change_configuration(self, req: Payload) -> Payload:
        return {"status": self.charger.set_config(req["key"], req["value"])}

    def remote_stop_transaction(self, req: Payload) -> Payload:
        ok = self.charger.remote_stop(str(req["transactionId"]))
        return {"status": "Accepted" if ok else "Rejected"}

    def trigger_message(self, req: Payload) -> Payload:
        connector = req.get("connectorId")
        if connector is not None and not 0 <= connector <= self.charger.connectors:
            return {"status": "Rejected"}
        ok = self.charger.trigger(req["requestedMessage"], connector or None)
        return {"status": "Accepted" if ok else "NotImplemented"}
