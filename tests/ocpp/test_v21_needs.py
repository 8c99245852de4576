"""The car's V2X offer at the CSMS (OCPP 2.1 NotifyEVChargingNeeds), raw frames on the
wire, every frame we send as the charger checked against the official 2.1 schema: a car
without BPT is never asked to discharge (V2xRefused naming charger, connector and modes),
a BPT car is refused a discharge beyond its maxDischargePower, and the offer is forgotten
when the transaction ends, the EVSE is Available, or the connection goes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from csms_helpers import CsmsFactory, Recorder, now_iso, raw_socket
from websockets.asyncio.client import ClientConnection

from gridshare.adapters.ocpp.v2x import V2xRefused, freq_watt_curve
from gridshare.core.frequency import FrequencySettings
from gridshare.drivers import CommandResult
from gridshare.events import ChargerBooted, ChargerOffline, ChargingNeeds, SessionStarted
from gridshare.ocpp_version import OcppVersion
from gridshare.sim.schema import checker

V21 = "ocpp2.1"
CP = "cp-needs"
AC = {"energyAmount": 20000, "evMinCurrent": 6, "evMaxCurrent": 16, "evMaxVoltage": 230}
NO_BPT = {"requestedEnergyTransfer": "AC_three_phase",
          "availableEnergyTransfer": ["AC_three_phase"], "acChargingParameters": AC}
BPT_3KW = {"requestedEnergyTransfer": "AC_BPT",
           "availableEnergyTransfer": ["AC_three_phase", "AC_BPT"],
           "controlMode": "DynamicControl", "acChargingParameters": AC,
           "v2xChargingParameters": {"maxChargePower": 11000, "maxDischargePower": 3000}}


async def call(ws: ClientConnection, uid: str, action: str, payload: dict[str, Any]) -> Any:
    """Send a schema-valid CALL as the charger; answer (Accepted) whatever the CSMS asks
    meanwhile; return our CALL's result payload."""
    checker(OcppVersion.V21, action, False)(payload)
    await ws.send(json.dumps([2, uid, action, payload]))
    async with asyncio.timeout(5):
        while True:
            frame = json.loads(await ws.recv())
            if frame[0] == 2:
                await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
            elif frame[1] == uid:
                assert frame[0] == 3, frame
                return frame[2]


async def start(ws: ClientConnection, recorder: Recorder, tx: str = "tx-1") -> None:
    await call(ws, "b1", "BootNotification", {
        "chargingStation": {"model": "Bidi", "vendorName": "Acme"}, "reason": "PowerUp"})
    await recorder.wait_kind(ChargerBooted, CP)
    await call(ws, f"s-{tx}", "TransactionEvent", {
        "eventType": "Started", "timestamp": now_iso(), "triggerReason": "CablePluggedIn",
        "seqNo": 0, "transactionInfo": {"transactionId": tx, "chargingState": "EVConnected"},
        "evse": {"id": 1, "connectorId": 1}})
    await recorder.wait_kind(SessionStarted, CP)


async def needs(ws: ClientConnection, recorder: Recorder, body: dict[str, Any],
                count: int = 1) -> ChargingNeeds:
    answer = await call(ws, f"n{count}", "NotifyEVChargingNeeds",
                        {"evseId": 1, "chargingNeeds": body})
    assert answer == {"status": "Accepted"}
    found = await recorder.wait_kind(ChargingNeeds, CP, count=count)
    return found[-1]  # type: ignore[no-any-return]


async def answer_next_profile(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            frame = json.loads(await ws.recv())
            if frame[0] == 2:
                await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
                if frame[2] == "SetChargingProfile" and \
                        frame[3]["chargingProfile"]["id"] >= 30_000:
                    return dict(frame[3])


async def test_a_car_without_bpt_is_never_asked_to_discharge(make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms(v2x=frozenset({CP}))
    async with raw_socket(csms, CP, V21) as ws:
        await start(ws, recorder)
        assert csms.v2x_capable(CP, 1)  # nothing said yet: the site file decides
        event = await needs(ws, recorder, NO_BPT)
        assert event.v2x_offer is not None and not event.v2x_offer.bidirectional
        assert event.energy_needed_kwh == 20.0  # the 2.0.1 needs still reach the planner
        why = csms.v2x_refusal(CP, 1)
        assert why is not None and f"{CP} connector 1" in why and "AC_three_phase" in why
        assert not csms.v2x_capable(CP, 1)
        assert csms.v2x_capable(CP)  # the charger itself still is
        with pytest.raises(V2xRefused, match="no bidirectional transfer"):
            await csms.send_v2x_setpoint(CP, 1, -2000.0, valid_s=30)
        settings = FrequencySettings(50.0, 0.02, 0.2, 49.5, 50.5)
        curve = freq_watt_curve(settings, max_charge_w=0, max_discharge_w=3000)
        with pytest.raises(V2xRefused, match="AC_three_phase"):
            await csms.send_v2x_local_frequency(CP, 1, curve, valid_s=30)
        clearing = asyncio.ensure_future(csms.clear_v2x(CP, 1))  # a clear always goes
        async with asyncio.timeout(5):
            while (frame := json.loads(await ws.recv()))[2] != "ClearChargingProfile":
                await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        assert (await clearing).result is CommandResult.ACCEPTED


async def test_a_bpt_car_is_refused_beyond_its_max_discharge(make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms(v2x=frozenset({CP}))
    async with raw_socket(csms, CP, V21) as ws:
        await start(ws, recorder)
        await needs(ws, recorder, BPT_3KW)
        offer = csms.v2x_offer(CP, 1)
        assert offer is not None and offer.max_discharge_w == 3000.0
        with pytest.raises(V2xRefused, match="maxDischargePower 3000 W"):
            await csms.send_v2x_setpoint(CP, 1, -3500.0, valid_s=30)
        sending = asyncio.ensure_future(csms.send_v2x_setpoint(CP, 1, -3000.0, valid_s=30))
        request = await answer_next_profile(ws)
        period = request["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
        assert period["setpoint"] == -3000.0
        assert (await sending).result is CommandResult.ACCEPTED


async def test_the_offer_is_forgotten_when_the_car_leaves(make_csms: CsmsFactory) -> None:
    csms, recorder = await make_csms(v2x=frozenset({CP}))
    async with raw_socket(csms, CP, V21) as ws:
        await start(ws, recorder)
        await needs(ws, recorder, NO_BPT)
        assert not csms.v2x_capable(CP, 1)
        await call(ws, "e1", "TransactionEvent", {
            "eventType": "Ended", "timestamp": now_iso(), "triggerReason": "EVDeparted",
            "seqNo": 1, "transactionInfo": {"transactionId": "tx-1",
                                            "stoppedReason": "EVDisconnected"}})
        assert csms.v2x_offer(CP, 1) is None and csms.v2x_capable(CP, 1)
        # a new car sends its needs; the EVSE reports Available: forgotten again
        await needs(ws, recorder, NO_BPT, count=2)
        assert csms.v2x_offer(CP, 1) is not None
        await call(ws, "st1", "StatusNotification", {
            "timestamp": now_iso(), "connectorStatus": "Available", "evseId": 1,
            "connectorId": 1})
        assert csms.v2x_offer(CP, 1) is None
        await needs(ws, recorder, NO_BPT, count=3)
        assert csms.v2x_offer(CP, 1) is not None
    # the connection goes: so does the offer (a reconnection starts without one)
    await recorder.wait_kind(ChargerOffline, CP)
    assert csms.v2x_offer(CP, 1) is None
    async with raw_socket(csms, CP, V21) as ws:
        await call(ws, "b2", "BootNotification", {
            "chargingStation": {"model": "Bidi", "vendorName": "Acme"}, "reason": "PowerUp"})
        assert csms.v2x_offer(CP, 1) is None

