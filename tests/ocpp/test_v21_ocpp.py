"""OCPP 2.1 at the CSMS: raw frames on the wire, and the ``ocpp`` package's own v21
ChargePoint as a client we did not write (it validates every frame we send against the
official 2.1 schemas)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from csms_helpers import CsmsFactory, Recorder, exchange, now_iso, raw_socket
from ocpp.routing import on
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from websockets.asyncio.client import ClientConnection, connect

from gridshare.adapters.ocpp import CentralSystem
from gridshare.adapters.ocpp.v2x import V2xRefused, freq_watt_curve, v2x_profile_id
from gridshare.core.frequency import FrequencySettings
from gridshare.drivers import CommandResult
from gridshare.events import ChargerBooted, MeterReading, SessionStarted

V21 = "ocpp2.1"


async def _boot_raw(ws: ClientConnection) -> list[Any]:
    boot = json.dumps([2, "b1", "BootNotification", {
        "chargingStation": {"model": "Bidi", "vendorName": "Acme"}, "reason": "PowerUp"}])
    return list(await exchange(ws, boot))


async def _start_raw(ws: ClientConnection, tx: str = "tx-21") -> None:
    started = json.dumps([2, "t1", "TransactionEvent", {
        "eventType": "Started", "timestamp": now_iso(), "triggerReason": "CablePluggedIn",
        "seqNo": 0, "transactionInfo": {"transactionId": tx, "chargingState": "EVConnected"},
        "evse": {"id": 1, "connectorId": 1}}])
    answer = await exchange(ws, started)
    assert answer[:2] == [3, "t1"]


async def _next_call(ws: ClientConnection, action: str) -> list[Any]:
    """The next CALL of ``action`` the CSMS sends (failsafe and other calls skipped)."""
    async with asyncio.timeout(5):
        while True:
            frame = json.loads(await ws.recv())
            if frame[0] == 2 and frame[2] == action:
                return list(frame)
            if frame[0] == 2:  # answer what we skip, so the CSMS's queue moves on
                await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))


async def test_handshake_picks_ocpp21_and_boot_is_accepted(make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms()
    async with connect(f"ws://127.0.0.1:{csms.port}/cp21",
                       subprotocols=["ocpp2.1", "ocpp2.0.1", "ocpp1.6"],  # type: ignore[list-item]
                       open_timeout=5) as ws:
        assert ws.subprotocol == "ocpp2.1"
        answer = await _boot_raw(ws)
        assert answer[0:2] == [3, "b1"]
        assert answer[2]["status"] == "Accepted"
        assert answer[2]["interval"] == 60
        [booted] = await recorder.wait_kind(ChargerBooted, "cp21")
        assert booted.protocol == "ocpp2.1"
        assert csms.protocol_of("cp21") == "ocpp2.1"
        # a 2.1-only notification is acknowledged, not refused
        alarm = json.dumps([2, "a1", "NotifyDERAlarm", {
            "controlType": "FreqDroop", "timestamp": now_iso()}])
        assert await exchange(ws, alarm) == [3, "a1", {}]
        # an action no version defines: NotImplemented (2.x error codes)
        unknown = await exchange(ws, json.dumps([2, "u1", "Teleport", {}]))
        assert unknown[0:3] == [4, "u1", "NotImplemented"]


async def test_raw_central_setpoint_discharge_is_sent_and_accepted(
        make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms(v2x=frozenset({"cp21"}))
    async with raw_socket(csms, "cp21", V21) as ws:
        await _boot_raw(ws)
        await _start_raw(ws)
        await recorder.wait_kind(SessionStarted, "cp21")
        assert csms.v2x_capable("cp21")
        sending = asyncio.ensure_future(
            csms.send_v2x_setpoint("cp21", 1, -5000.0, valid_s=60))
        frame = await _next_call(ws, "SetChargingProfile")
        profile = frame[3]["chargingProfile"]
        assert frame[3]["evseId"] == 1
        assert profile["id"] == v2x_profile_id(1)
        assert profile["chargingProfilePurpose"] == "TxProfile"
        assert profile["transactionId"] == "tx-21"
        assert profile["stackLevel"] == 2
        [schedule] = profile["chargingSchedule"]
        assert schedule["chargingRateUnit"] == "W"
        assert schedule["duration"] == 60
        assert schedule["chargingSchedulePeriod"] == [{
            "startPeriod": 0, "limit": 0.0, "numberPhases": 3, "dischargeLimit": -5000.0,
            "setpoint": -5000.0, "operationMode": "CentralSetpoint"}]
        await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        outcome = await sending
        assert outcome.result is CommandResult.ACCEPTED
        assert outcome.valid_to is not None


async def test_rejected_v2x_profile_reports_rejected(make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms(v2x=frozenset({"cp21"}))
    async with raw_socket(csms, "cp21", V21) as ws:
        await _boot_raw(ws)
        await _start_raw(ws)
        await recorder.wait_kind(SessionStarted, "cp21")
        sending = asyncio.ensure_future(csms.send_v2x_setpoint("cp21", 1, -3000, valid_s=30))
        frame = await _next_call(ws, "SetChargingProfile")
        await ws.send(json.dumps([3, frame[1], {"status": "Rejected"}]))
        outcome = await sending
        assert outcome.result is CommandResult.REJECTED


async def test_no_transaction_means_nothing_sent(make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms(v2x=frozenset({"cp21"}))
    async with raw_socket(csms, "cp21", V21) as ws:
        await _boot_raw(ws)
        await recorder.wait_kind(ChargerBooted, "cp21")
        outcome = await csms.send_v2x_setpoint("cp21", 1, -3000, valid_s=30)
        assert outcome.result is CommandResult.REJECTED
        assert not outcome.sent
        assert "no transaction" in outcome.detail


@pytest.mark.parametrize("version", ["ocpp1.6", "ocpp2.0.1"])
async def test_older_versions_are_never_v2x(make_csms: CsmsFactory, version: str) -> None:
    csms, recorder = await make_csms(v2x=frozenset({"old"}))
    async with raw_socket(csms, "old", version) as ws:
        if version == "ocpp1.6":
            boot = [2, "b1", "BootNotification",
                    {"chargePointVendor": "Acme", "chargePointModel": "Old"}]
            await exchange(ws, json.dumps(boot))
        else:
            await _boot_raw(ws)
        await recorder.wait_kind(ChargerBooted, "old")
        assert not csms.v2x_capable("old")
        with pytest.raises(V2xRefused, match=r"not ocpp2\.1"):
            await csms.send_v2x_setpoint("old", 1, -1000, valid_s=30)


async def test_undeclared_or_offline_charger_is_refused(make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms()  # nobody declared v2x
    async with raw_socket(csms, "cp21", V21) as ws:
        await _boot_raw(ws)
        await recorder.wait_kind(ChargerBooted, "cp21")
        assert not csms.v2x_capable("cp21")
        with pytest.raises(V2xRefused, match="not declared v2x"):
            await csms.send_v2x_setpoint("cp21", 1, -1000, valid_s=30)
    csms.config.v2x = frozenset({"gone"})
    with pytest.raises(V2xRefused, match="not connected"):
        await csms.send_v2x_local_frequency("gone", 1, [(49.8, -1000.0), (50.2, 1000.0)],
                                            valid_s=30)


# --- the ocpp package's v21 ChargePoint as the charger ----------------------------------------


class Client21(ChargePoint21):
    """A charger we did not write: the package validates our calls and its answers."""

    def __init__(self, cid: str, ws: ClientConnection) -> None:
        super().__init__(cid, ws, response_timeout=5)
        self.profiles: list[dict[str, Any]] = []
        self.cleared: list[int | None] = []

    @on("SetChargingProfile")
    async def on_set_charging_profile(self, evse_id: int, charging_profile: dict[str, Any],
                                      **_: Any) -> Any:
        self.profiles.append({"evse_id": evse_id, **charging_profile})
        return result21.SetChargingProfile(status="Accepted")

    @on("ClearChargingProfile")
    async def on_clear_charging_profile(self, charging_profile_id: int | None = None,
                                        **_: Any) -> Any:
        self.cleared.append(charging_profile_id)
        return result21.ClearChargingProfile(status="Accepted")


@contextlib.asynccontextmanager
async def client21(csms: CentralSystem, cid: str) -> AsyncIterator[Client21]:
    async with connect(f"ws://127.0.0.1:{csms.port}/{cid}",
                       subprotocols=[V21],  # type: ignore[list-item]
                       open_timeout=5) as ws:
        cp = Client21(cid, ws)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _wait(condition: Any, within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not condition():  # noqa: ASYNC110 - frames a client received
            await asyncio.sleep(0.005)


async def test_package_v21_charger_gets_what_a_201_charger_gets_and_v2x(
        make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms(v2x=frozenset({"pkg21"}))
    async with client21(csms, "pkg21") as cp:
        boot = await cp.call(call21.BootNotification(
            charging_station={"model": "Bidi", "vendor_name": "Acme"}, reason="PowerUp"))
        assert boot.status == "Accepted"
        await cp.call(call21.StatusNotification(timestamp=now_iso(),
                                                connector_status="Occupied", evse_id=1,
                                                connector_id=1))
        # failsafe (TxDefault on EVSE 0), as every 2.0.1 charger gets at (re)connect
        assert (await csms.apply_failsafe("pkg21", 6.0)).result is CommandResult.ACCEPTED
        await cp.call(call21.TransactionEvent(
            event_type="Started", seq_no=0, timestamp=now_iso(),
            transaction_info={"transaction_id": "T1", "charging_state": "EVConnected"},
            trigger_reason="CablePluggedIn", evse={"id": 1, "connector_id": 1}))
        await recorder.wait_kind(SessionStarted, "pkg21")
        # the controller's current setpoint: a TxProfile in A, as for 2.0.1
        assert (await csms.apply_setpoint("pkg21", 1, 16.0, 60)).result is \
            CommandResult.ACCEPTED
        # meter values with signed power: exporting 4 kW
        meter = [{"timestamp": now_iso(), "sampled_value": [
            {"value": 0.0, "measurand": "Power.Active.Import",
             "unit_of_measure": {"unit": "W"}},
            {"value": 4000.0, "measurand": "Power.Active.Export",
             "unit_of_measure": {"unit": "W"}},
            {"value": 61.5, "measurand": "SoC", "unit_of_measure": {"unit": "Percent"}}]}]
        await cp.call(call21.TransactionEvent(
            event_type="Updated", seq_no=1, timestamp=now_iso(),
            transaction_info={"transaction_id": "T1", "charging_state": "Charging"},
            trigger_reason="MeterValuePeriodic", meter_value=meter))
        [reading] = await recorder.wait_kind(MeterReading, "pkg21")
        assert reading.power_w == -4000.0
        assert reading.soc_percent == 61.5
        # V2X: central setpoint, then local frequency, then cleared
        outcome = await csms.send_v2x_setpoint("pkg21", 1, -7000.0, valid_s=120)
        assert outcome.result is CommandResult.ACCEPTED
        settings = FrequencySettings(50.0, 0.02, 0.2, 49.5, 50.5)
        curve = freq_watt_curve(settings, max_charge_w=7000, max_discharge_w=7000)
        outcome = await csms.send_v2x_local_frequency("pkg21", 1, curve, valid_s=120)
        assert outcome.result is CommandResult.ACCEPTED
        assert (await csms.clear_v2x("pkg21", 1)).result is CommandResult.ACCEPTED
        await _wait(lambda: len(cp.profiles) == 4 and cp.cleared == [v2x_profile_id(1)])
        failsafe, setpoint, central, local = cp.profiles
        assert failsafe["charging_profile_purpose"] == "TxDefaultProfile"
        assert setpoint["charging_profile_purpose"] == "TxProfile"
        assert setpoint["charging_schedule"][0]["charging_rate_unit"] == "A"
        central_period = central["charging_schedule"][0]["charging_schedule_period"][0]
        assert central_period["operation_mode"] == "CentralSetpoint"
        assert central_period["setpoint"] == -7000.0
        local_period = local["charging_schedule"][0]["charging_schedule_period"][0]
        assert local_period["operation_mode"] == "LocalFrequency"
        assert local_period["v2x_freq_watt_curve"][0] == {"frequency": 49.8, "power": -7000.0}
        assert local_period["discharge_limit"] == -7000.0


def test_recorder_is_the_publish_callback() -> None:
    """The shared Recorder is what the factory passes (a guard against drift)."""
    assert callable(Recorder())


async def test_a_pending_21_charger_declared_v2x_becomes_capable(
        make_csms: CsmsFactory) -> None:
    csms, _ = await make_csms(allow_auto_register=False, pending_unknown=True)
    async with raw_socket(csms, "new21", V21) as ws:
        answer = await _boot_raw(ws)
        assert answer[2]["status"] == "Pending"
        assert not csms.v2x_capable("new21")
        assert csms.declare("new21", v2x=True) == "triggered"
        trigger = await _next_call(ws, "TriggerMessage")
        await ws.send(json.dumps([3, trigger[1], {"status": "Accepted"}]))
        again = json.dumps([2, "b2", "BootNotification", {
            "chargingStation": {"model": "Bidi", "vendorName": "Acme"},
            "reason": "Triggered"}])
        assert (await exchange(ws, again))[2]["status"] == "Accepted"
        assert csms.v2x_capable("new21")


async def test_bad_21_input_is_answered_and_counted_never_fatal(
        make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms(v2x=frozenset({"cp21"}))
    async with raw_socket(csms, "cp21", V21) as ws:
        await _boot_raw(ws)
        # a 2.1 field of the wrong type: a 2.x error code, the connection stays
        bad = json.dumps([2, "x1", "TransactionEvent", {
            "eventType": "Started", "timestamp": now_iso(), "triggerReason": "CablePluggedIn",
            "seqNo": 0, "transactionInfo": {"transactionId": "T"}, "evseSleep": "yes"}])
        answer = await exchange(ws, bad)
        assert answer[0:3] == [4, "x1", "TypeConstraintViolation"]
        await _start_raw(ws, "T9")
        # an unusable export value is rejected alone; the import next to it is kept
        meter = json.dumps([2, "m1", "MeterValues", {"evseId": 1, "meterValue": [{
            "timestamp": now_iso(), "sampledValue": [
                {"value": 1200.0, "measurand": "Power.Active.Import"},
                {"value": -5.0, "measurand": "Power.Active.Export"},
                {"value": 2.5, "measurand": "Energy.Active.Export.Register",
                 "unitOfMeasure": {"unit": "kWh"}}]}]}])
        assert await exchange(ws, meter) == [3, "m1", {}]
        [reading] = await recorder.wait_kind(MeterReading, "cp21")
        assert reading.power_w == 1200.0
        assert reading.energy_export_wh == 2500.0  # the V2G export register, kept apart
        assert csms.counters.rejected["meter_negative"] == 1
        assert csms.counters.rejected["schema_type"] == 1
        # and the charger is still served
        beat = await exchange(ws, json.dumps([2, "h1", "Heartbeat", {}]))
        assert beat[0:2] == [3, "h1"] and "currentTime" in beat[2]
