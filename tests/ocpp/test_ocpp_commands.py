"""CSMS → charger: setpoints, failsafe, cap, clear, composite schedule; every outcome
(accepted, rejected, timeout, lost, offline, superseded), answer numbering, batching and
concurrency, against real ``ocpp`` client ChargePoints."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest
from csms_helpers import Behaviour, CsmsFactory, Msgs, charger, eventually, now_iso, raw_socket
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from gridshare.drivers import CommandResult, SetpointRequest
from gridshare.events import ChargerBooted, ProfileRejected


async def start_session(cp: object, msgs: Msgs, connector: int = 1) -> str:
    """Start a transaction on ``connector`` the version's way; return its id."""
    if msgs.v16:
        reply = await cp.call(call16.StartTransaction(  # type: ignore[attr-defined]
            connector_id=connector, id_tag="T", meter_start=0, timestamp=now_iso()))
        return str(reply.transaction_id)
    await cp.call(call201.TransactionEvent(  # type: ignore[attr-defined]
        event_type="Started", timestamp=now_iso(), trigger_reason="Authorized", seq_no=0,
        transaction_info={"transaction_id": f"tx-{connector}"},
        evse={"id": connector, "connector_id": 1}))
    return f"tx-{connector}"


def profile_of(payload: dict, v16: bool) -> dict:
    return payload["csChargingProfiles"] if v16 else payload["chargingProfile"]


def limit_of(payload: dict, v16: bool) -> float:
    profile = profile_of(payload, v16)
    schedule = profile["chargingSchedule"] if v16 else profile["chargingSchedule"][0]
    return float(schedule["chargingSchedulePeriod"][0]["limit"])


async def test_setpoint_goes_to_running_transaction(csms: tuple, version: str,
                                                    msgs: Msgs) -> None:
    server, _ = csms
    async with charger(server, "CP-1", version) as cp:
        tx = await start_session(cp, msgs)
        outcome = await server.apply_setpoint("CP-1", 1, 13.37, 120)
        assert outcome.result is CommandResult.ACCEPTED and outcome.sent
        assert outcome.answer_seq is not None and outcome.valid_to is not None
        (payload,) = cp.calls("SetChargingProfile")
    profile = profile_of(payload, msgs.v16)
    assert profile["chargingProfilePurpose"] == "TxProfile"
    assert str(profile["transactionId"]) == tx
    assert limit_of(payload, msgs.v16) == 13.3
    assert (payload["connectorId"] if msgs.v16 else payload["evseId"]) == 1
    schedule = profile["chargingSchedule"] if msgs.v16 else profile["chargingSchedule"][0]
    assert schedule["duration"] == 120 and schedule["chargingRateUnit"] == "A"
    stats = server.stats()
    assert stats["calls_sent"] == 1 and stats["calls_failed"] == 0
    assert stats["connections"] == 1 and stats["latency_mean_ms"] > 0


async def test_setpoint_without_transaction_uses_connector_default(csms: tuple, version: str,
                                                                   msgs: Msgs) -> None:
    server, _ = csms
    async with charger(server, "CP-2", version) as cp:
        await cp.call(msgs.heartbeat())
        assert (await server.apply_setpoint("CP-2", 2, 10, None)).result is CommandResult.ACCEPTED
        (payload,) = cp.calls("SetChargingProfile")
    profile = profile_of(payload, msgs.v16)
    assert profile["chargingProfilePurpose"] == "TxDefaultProfile"
    assert "transactionId" not in profile
    schedule = profile["chargingSchedule"] if msgs.v16 else profile["chargingSchedule"][0]
    assert schedule["duration"] == 180  # config.lease_s


async def test_watt_unit_per_charger(make_csms: CsmsFactory, version: str) -> None:
    csms, _ = await make_csms(rate_unit={"CP-W": "W"}, phases={"CP-W": 1})
    v16 = version == "ocpp1.6"
    async with charger(csms, "CP-W", version) as cp:
        assert (await csms.apply_setpoint("CP-W", 1, 16, 60)).result is CommandResult.ACCEPTED
        (payload,) = cp.calls("SetChargingProfile")
    profile = profile_of(payload, v16)
    schedule = profile["chargingSchedule"] if v16 else profile["chargingSchedule"][0]
    assert schedule["chargingRateUnit"] == "W"
    assert schedule["chargingSchedulePeriod"][0] == {"startPeriod": 0, "limit": 3680.0,
                                                     "numberPhases": 1}


async def test_failsafe_remembered_and_sent_on_every_connect(csms: tuple, version: str,
                                                             msgs: Msgs) -> None:
    server, _ = csms
    assert (await server.apply_failsafe("CP-F", 6.0)).result is CommandResult.OFFLINE
    assert (await server.apply_charger_cap("CP-F", 32.0)).result is CommandResult.OFFLINE
    for _ in range(2):  # connect, reconnect
        async with charger(server, "CP-F", version) as cp:
            await cp.call(msgs.boot())
            await eventually(lambda: len(cp.calls("SetChargingProfile")) >= 2)
            failsafe, cap = cp.calls("SetChargingProfile")
        assert (failsafe["connectorId"] if msgs.v16 else failsafe["evseId"]) == 0
        assert profile_of(failsafe, msgs.v16)["chargingProfilePurpose"] == "TxDefaultProfile"
        assert profile_of(failsafe, msgs.v16)["stackLevel"] == 0
        assert limit_of(failsafe, msgs.v16) == 6.0
        assert profile_of(cap, msgs.v16)["chargingProfilePurpose"] in (
            "ChargePointMaxProfile", "ChargingStationMaxProfile")
        assert limit_of(cap, msgs.v16) == 32.0
        # The boot answer went out before our first call (OCPP: nothing before acceptance).
        assert cp.frames[0].startswith("[3,")


async def test_cap_set_and_lifted(csms: tuple, version: str) -> None:
    server, _ = csms
    async with charger(server, "CP-C", version) as cp:
        assert (await server.apply_charger_cap("CP-C", 20)).result is CommandResult.ACCEPTED
        assert (await server.apply_charger_cap("CP-C", None)).result is CommandResult.ACCEPTED
        (clear,) = cp.calls("ClearChargingProfile")
    assert clear == ({"id": 1} if version == "ocpp1.6" else {"chargingProfileId": 1})


async def test_clear_profile_and_composite_schedule(csms: tuple, version: str) -> None:
    server, _ = csms
    v16 = version == "ocpp1.6"
    schedule = {"chargingRateUnit": "A", "chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": 16.0}, {"startPeriod": 300, "limit": 8.5}]}
    async with charger(server, "CP-G", version, Behaviour(schedule=schedule)) as cp:
        assert (await server.clear_profile("CP-G", 1, "TxProfile")).result is CommandResult.ACCEPTED
        periods = await server.get_composite_schedule("CP-G", 1, 600)
        (clear,) = cp.calls("ClearChargingProfile")
        (query,) = cp.calls("GetCompositeSchedule")
    assert periods == [(0.0, 16.0), (300.0, 8.5)]
    if v16:
        assert clear == {"connectorId": 1, "chargingProfilePurpose": "TxProfile"}
        assert query == {"connectorId": 1, "duration": 600, "chargingRateUnit": "A"}
    else:
        assert clear == {"chargingProfileCriteria": {"evseId": 1,
                                                     "chargingProfilePurpose": "TxProfile"}}
        assert query == {"duration": 600, "chargingRateUnit": "A", "evseId": 1}
    assert await server.get_composite_schedule("nobody", 1, 60) is None


@pytest.mark.parametrize("refusal", [{"status": "Rejected"}, {"call_error": True}],
                         ids=["status", "callerror"])
async def test_rejection_is_marked_and_published(csms: tuple, version: str,
                                                 refusal: dict) -> None:
    server, events = csms
    behaviour = Behaviour(**refusal)
    async with charger(server, "CP-J", version, behaviour) as cp:
        assert (await server.apply_setpoint("CP-J", 1, 16, 60)).result is CommandResult.REJECTED
        (rejected,) = events.of(ProfileRejected, "CP-J")
        assert rejected.connector == 1
        # A refusal is an answer; a CallError is a failed call.
        assert server.stats()["calls_failed"] == (1 if behaviour.call_error else 0)
        assert "CP-J" in server.rejected_profiles()
        assert ("GenericError" if behaviour.call_error else "Rejected") in (
            server.rejected_profiles()["CP-J"])
        behaviour.status, behaviour.call_error = "Accepted", False
        assert (await server.apply_setpoint("CP-J", 1, 16, 60)).result is CommandResult.ACCEPTED
        assert "CP-J" not in server.rejected_profiles()
        assert len(cp.calls("SetChargingProfile")) == 2


async def test_silent_charger_times_out_after_one_attempt(make_csms: CsmsFactory,
                                                          version: str) -> None:
    """No retries of setpoints in the adapter: one attempt, then TIMEOUT (unknown outcome,
    counted by the controller until the profile's validTo)."""
    csms, _ = await make_csms(command_timeout_s=0.1, command_retries=2, command_backoff_s=0.05)
    async with charger(csms, "CP-H", version, Behaviour(hang=True)) as cp:
        outcome = await csms.apply_setpoint("CP-H", 1, 10, 60)
        assert outcome.result is CommandResult.TIMEOUT and outcome.unknown
        assert outcome.answer_seq is None and outcome.valid_to is not None
        assert len(cp.calls("SetChargingProfile")) == 1
        assert csms.stats()["calls_sent"] == 1 and csms.stats()["calls_failed"] == 1
        assert csms.connected() == frozenset({"CP-H"})  # a silent charger is not dropped


async def test_valid_to_is_the_send_time_lease(make_csms: CsmsFactory, version: str) -> None:
    at = datetime(2030, 1, 1, 12, 0, 0, 700000, tzinfo=UTC)
    csms, _ = await make_csms(clock=lambda: at)
    async with charger(csms, "CP-V", version) as cp:
        outcome = await csms.apply_setpoint("CP-V", 1, 10, 90)
        (payload,) = cp.calls("SetChargingProfile")
    assert outcome.valid_to == datetime(2030, 1, 1, 12, 1, 30, tzinfo=UTC)
    assert profile_of(payload, version == "ocpp1.6")["validTo"] == "2030-01-01T12:01:30Z"
    failsafe = await csms.apply_failsafe("CP-V", 6)
    assert failsafe.result is CommandResult.OFFLINE and not failsafe.sent


async def test_link_dropped_mid_call_is_lost(make_csms: CsmsFactory, version: str) -> None:
    csms, _ = await make_csms(command_timeout_s=5)
    async with charger(csms, "CP-L", version, Behaviour(hang=True)) as cp:
        pending = asyncio.ensure_future(csms.apply_setpoint("CP-L", 1, 10, 60))
        queued = asyncio.ensure_future(csms.apply_failsafe("CP-L", 6))
        await eventually(lambda: len(cp.calls("SetChargingProfile")) == 1)
        await cp.ws.close()
        lost, never_sent = await asyncio.gather(pending, queued)
    assert lost.result is CommandResult.LOST and lost.sent and lost.unknown
    assert lost.valid_to is not None
    assert never_sent.result is CommandResult.OFFLINE and not never_sent.sent


async def test_queued_setpoint_is_superseded_in_flight_one_keeps_its_outcome(
        csms: tuple, version: str) -> None:
    server, _ = csms
    v16 = version == "ocpp1.6"
    async with charger(server, "CP-B", version, Behaviour(delays_s=[0.2])) as cp:
        first = asyncio.ensure_future(server.apply_setpoint("CP-B", 1, 10, 60))
        await eventually(lambda: len(cp.calls("SetChargingProfile")) == 1)
        (second,) = server.submit_setpoints([SetpointRequest("CP-B", 1, 11, 60)])
        third = await server.apply_setpoint("CP-B", 1, 12, 60)
        in_flight = await first  # replaced while in flight: still its own, real outcome
        assert in_flight.result is CommandResult.ACCEPTED
        assert in_flight.answer_seq is not None and third.answer_seq is not None
        assert in_flight.answer_seq < third.answer_seq
        superseded = await second
        assert superseded.result is CommandResult.SUPERSEDED and not superseded.sent
        assert third.result is CommandResult.ACCEPTED
        assert [limit_of(p, v16) for p in cp.calls("SetChargingProfile")] == [10.0, 12.0]
    assert server.stats()["coalesced"] == 1


async def test_submit_setpoints_batch(csms: tuple) -> None:
    server, _ = csms
    async with charger(server, "CP-S1", "ocpp1.6") as one, \
            charger(server, "CP-S2", "ocpp2.0.1") as two:
        awaitables = server.submit_setpoints([
            SetpointRequest("CP-S1", 1, 16, 60), SetpointRequest("ghost", 1, 16, 60),
            SetpointRequest("CP-S2", 2, 8, 60)])
        outcomes = [await a for a in awaitables]
        assert [o.result for o in outcomes] == [CommandResult.ACCEPTED, CommandResult.OFFLINE,
                                                CommandResult.ACCEPTED]
        assert len(one.calls("SetChargingProfile")) == 1
        assert len(two.calls("SetChargingProfile")) == 1
    with pytest.raises(ValueError, match="current"):
        server.submit_setpoints([SetpointRequest("CP-S1", 1, 16, 60),
                                 SetpointRequest("CP-S2", 1, -1, 60)])


async def test_answers_and_boots_are_numbered_in_arrival_order(csms: tuple, version: str,
                                                               msgs: Msgs) -> None:
    """A BootNotification written right behind a CALLRESULT is numbered after it, and the
    numbers keep increasing across reconnects."""
    server, events = csms
    seqs: list[int] = []
    for _ in range(2):
        async with raw_socket(server, "CP-Q", version) as ws:
            pending = asyncio.ensure_future(server.apply_setpoint("CP-Q", 1, 10, 60))
            call = json.loads(await asyncio.wait_for(ws.recv(), 5))
            boot_payload = ({"chargePointVendor": "A", "chargePointModel": "B"} if msgs.v16
                            else {"chargingStation": {"model": "B", "vendorName": "A"},
                                  "reason": "PowerUp"})
            await ws.send(json.dumps([3, call[1], {"status": "Accepted"}]))
            await ws.send(json.dumps([2, "boot", "BootNotification", boot_payload]))
            outcome = await pending
            booted = (await events.wait_kind(ChargerBooted, "CP-Q", count=len(seqs) // 2 + 1))[-1]
            assert outcome.answer_seq is not None and booted.frame_seq is not None
            assert booted.frame_seq == outcome.answer_seq + 1
            seqs += [outcome.answer_seq, booted.frame_seq]
    assert seqs == sorted(seqs) and len(set(seqs)) == 4


async def test_failsafe_install_retried_after_timeout(make_csms: CsmsFactory,
                                                      version: str) -> None:
    """Provisioning is the adapter's only retry (tenacity, exponential backoff)."""
    csms, _ = await make_csms(command_timeout_s=0.1, command_retries=2, command_backoff_s=0.01)
    await csms.apply_failsafe("CP-R", 6.0)
    async with raw_socket(csms, "CP-R", version) as ws:
        await ws.send('[2,"hb","Heartbeat",{}]')
        calls = []
        async with asyncio.timeout(5):
            while len(calls) < 3:
                message = json.loads(await ws.recv())
                if message[0] == 2:
                    calls.append(message)
        await ws.send(json.dumps([3, calls[-1][1], {"status": "Accepted"}]))
        await eventually(lambda: csms.stats()["calls_sent"] == 3
                         and len(csms.metrics.latencies_s) == 1)
    assert [c[2] for c in calls] == ["SetChargingProfile"] * 3
    assert len({c[1] for c in calls}) == 3  # a new message id per attempt
    assert csms.stats()["calls_failed"] == 2


async def test_offline_charger_gets_nothing(csms: tuple) -> None:
    server, _ = csms
    assert (await server.apply_setpoint("ghost", 1, 10, 60)).result is CommandResult.OFFLINE
    with pytest.raises(ValueError, match="current"):
        await server.apply_setpoint("ghost", 1, float("nan"), 60)
    with pytest.raises(ValueError, match="connector"):
        await server.apply_setpoint("ghost", 0, 10, 60)


async def test_stale_setpoint_is_coalesced(csms: tuple, version: str) -> None:
    server, _ = csms
    v16 = version == "ocpp1.6"
    async with charger(server, "CP-K", version, Behaviour(delay_s=0.2)) as cp:
        first = asyncio.create_task(server.apply_setpoint("CP-K", 1, 10, 60))
        await eventually(lambda: len(cp.calls("SetChargingProfile")) == 1)  # in flight
        queued = [asyncio.create_task(server.apply_setpoint("CP-K", 1, 11 + i, 60))
                  for i in range(5)]
        other = asyncio.create_task(server.apply_setpoint("CP-K", 2, 7, 60))
        outcomes = await asyncio.gather(first, *queued, other)
        sent = cp.calls("SetChargingProfile")
    assert [o.result for o in outcomes] == [CommandResult.ACCEPTED] + [
        CommandResult.SUPERSEDED] * 4 + [CommandResult.ACCEPTED] * 2
    assert [limit_of(p, v16) for p in sent] == [10.0, 15.0, 7.0]
    assert server.stats()["coalesced"] == 4


async def test_fifty_chargers_are_served_concurrently(csms: tuple) -> None:
    server, _ = csms
    delay_s = 0.2
    async with asyncio.TaskGroup() as group:
        contexts = [charger(server, f"CP-{i:02d}", ("ocpp1.6", "ocpp2.0.1")[i % 2],
                            Behaviour(delay_s=delay_s)) for i in range(50)]
        clients = [group.create_task(ctx.__aenter__()) for ctx in contexts]
    try:
        started = time.perf_counter()
        results = await asyncio.gather(*(server.apply_setpoint(f"CP-{i:02d}", 1, 16, 60)
                                         for i in range(50)))
        elapsed = time.perf_counter() - started
        assert [o.result for o in results] == [CommandResult.ACCEPTED] * 50
        assert elapsed < 10 * delay_s  # serial would be 50 × 0.2 s = 10 s
        assert all(len(c.result().calls("SetChargingProfile")) == 1 for c in clients)
    finally:
        for ctx in contexts:
            await ctx.__aexit__(None, None, None)
