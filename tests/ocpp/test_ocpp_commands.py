"""CSMS → charger: setpoints, failsafe, cap, clear, composite schedule; rejection, timeout,
coalescing and concurrency, against real ``ocpp`` client ChargePoints."""

from __future__ import annotations

import asyncio
import time

import pytest
from csms_helpers import Behaviour, CsmsFactory, Msgs, charger, eventually, now_iso
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from gridshare.drivers import CommandResult
from gridshare.events import ProfileRejected


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
        result = await server.apply_setpoint("CP-1", 1, 13.37, 120)
        assert result is CommandResult.ACCEPTED
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
        assert await server.apply_setpoint("CP-2", 2, 10, None) is CommandResult.ACCEPTED
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
        assert await csms.apply_setpoint("CP-W", 1, 16, 60) is CommandResult.ACCEPTED
        (payload,) = cp.calls("SetChargingProfile")
    profile = profile_of(payload, v16)
    schedule = profile["chargingSchedule"] if v16 else profile["chargingSchedule"][0]
    assert schedule["chargingRateUnit"] == "W"
    assert schedule["chargingSchedulePeriod"][0] == {"startPeriod": 0, "limit": 3680.0,
                                                     "numberPhases": 1}


async def test_failsafe_remembered_and_sent_on_every_connect(csms: tuple, version: str,
                                                             msgs: Msgs) -> None:
    server, _ = csms
    assert await server.apply_failsafe("CP-F", 6.0) is CommandResult.OFFLINE
    assert await server.apply_charger_cap("CP-F", 32.0) is CommandResult.OFFLINE
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
        assert await server.apply_charger_cap("CP-C", 20) is CommandResult.ACCEPTED
        assert await server.apply_charger_cap("CP-C", None) is CommandResult.ACCEPTED
        (clear,) = cp.calls("ClearChargingProfile")
    assert clear == ({"id": 1} if version == "ocpp1.6" else {"chargingProfileId": 1})


async def test_clear_profile_and_composite_schedule(csms: tuple, version: str) -> None:
    server, _ = csms
    v16 = version == "ocpp1.6"
    schedule = {"chargingRateUnit": "A", "chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": 16.0}, {"startPeriod": 300, "limit": 8.5}]}
    async with charger(server, "CP-G", version, Behaviour(schedule=schedule)) as cp:
        assert await server.clear_profile("CP-G", 1, "TxProfile") is CommandResult.ACCEPTED
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
        assert await server.apply_setpoint("CP-J", 1, 16, 60) is CommandResult.REJECTED
        (rejected,) = events.of(ProfileRejected, "CP-J")
        assert rejected.connector == 1
        assert "CP-J" in server.rejected_profiles()
        assert ("GenericError" if behaviour.call_error else "Rejected") in (
            server.rejected_profiles()["CP-J"])
        behaviour.status, behaviour.call_error = "Accepted", False
        assert await server.apply_setpoint("CP-J", 1, 16, 60) is CommandResult.ACCEPTED
        assert "CP-J" not in server.rejected_profiles()
        assert len(cp.calls("SetChargingProfile")) == 2


async def test_silent_charger_times_out_after_retries(make_csms: CsmsFactory,
                                                      version: str) -> None:
    csms, _ = await make_csms(command_timeout_s=0.1, command_retries=2, command_backoff_s=0.05)
    async with charger(csms, "CP-H", version, Behaviour(hang=True)):
        started = time.perf_counter()
        assert await csms.apply_setpoint("CP-H", 1, 10, 60) is CommandResult.TIMEOUT
        elapsed = time.perf_counter() - started
        # 3 attempts of 0.1 s plus backoff 0.05 s and 0.1 s.
        assert 0.45 <= elapsed < 2.0
        assert csms.stats()["calls_sent"] == 3 and csms.stats()["calls_failed"] == 3
        assert csms.connected() == frozenset({"CP-H"})  # a silent charger is not dropped


async def test_setpoint_replaced_during_backoff_is_not_retried(make_csms: CsmsFactory,
                                                              version: str) -> None:
    csms, _ = await make_csms(command_timeout_s=0.1, command_retries=3, command_backoff_s=0.4)
    v16 = version == "ocpp1.6"
    async with charger(csms, "CP-B", version, Behaviour(delays_s=[0.15])) as cp:
        first = asyncio.create_task(csms.apply_setpoint("CP-B", 1, 10, 60))
        await asyncio.sleep(0.2)  # first attempt timed out, now in backoff
        second = await csms.apply_setpoint("CP-B", 1, 12, 60)
        assert second is CommandResult.ACCEPTED
        assert await first is CommandResult.ACCEPTED  # the newer outcome
        assert [limit_of(p, v16) for p in cp.calls("SetChargingProfile")] == [10.0, 12.0]
    assert csms.stats()["coalesced"] == 1


async def test_offline_charger_gets_nothing(csms: tuple) -> None:
    server, _ = csms
    assert await server.apply_setpoint("ghost", 1, 10, 60) is CommandResult.OFFLINE
    with pytest.raises(ValueError, match="current"):
        await server.apply_setpoint("ghost", 1, float("nan"), 60)
    with pytest.raises(ValueError, match="connector"):
        await server.apply_setpoint("ghost", 0, 10, 60)


async def test_stale_setpoint_is_coalesced(csms: tuple, version: str) -> None:
    server, _ = csms
    v16 = version == "ocpp1.6"
    async with charger(server, "CP-K", version, Behaviour(delay_s=0.2)) as cp:
        first = asyncio.create_task(server.apply_setpoint("CP-K", 1, 10, 60))
        await asyncio.sleep(0.05)  # first is in flight now
        queued = [asyncio.create_task(server.apply_setpoint("CP-K", 1, 11 + i, 60))
                  for i in range(5)]
        other = asyncio.create_task(server.apply_setpoint("CP-K", 2, 7, 60))
        results = await asyncio.gather(first, *queued, other)
        sent = cp.calls("SetChargingProfile")
    assert all(r is CommandResult.ACCEPTED for r in results)
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
        assert results == [CommandResult.ACCEPTED] * 50
        assert elapsed < 10 * delay_s  # serial would be 50 × 0.2 s = 10 s
        assert all(len(c.result().calls("SetChargingProfile")) == 1 for c in clients)
    finally:
        for ctx in contexts:
            await ctx.__aexit__(None, None, None)
