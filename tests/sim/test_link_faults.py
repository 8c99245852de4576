"""The simulated charger's link when things go wrong: answers lost after a request was
applied, half-open links, reboots, and the reconnect backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from raw_csms import Connection, RawCSMS
from tenacity import RetryCallState

from gridshare.sim import EV, ScaledClock, SimCharger

BOTH = pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
Factory = Callable[..., SimCharger]


async def charging(
    raw: RawCSMS, make_charger: Factory, protocol: str, **kw: Any
) -> tuple[SimCharger, Connection]:
    """A connected charger with a car charging under a running transaction."""
    ch = make_charger("CP-F", url=raw.url, protocol=protocol, **kw)
    await ch.start(tick_s=0.2)
    conn = await raw.connected()
    assert await ch.wait_connected(5)
    tx = await ch.plug(1, EV(capacity_kwh=60, soc=0.3, setpoint_lag_s=0.1))
    assert tx.active and tx.id is not None
    return ch, conn


def set_profile(ch: SimCharger, purpose: str, limit: float, pid: int) -> dict[str, Any]:
    """SetChargingProfile on the wire; a TxProfile names the running transaction."""
    connector = 0 if purpose == "TxDefaultProfile" else 1
    sched = {
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
    }
    tx = ch.transaction(1)
    assert tx is not None and tx.id is not None
    if ch.protocol == "ocpp1.6":
        prof: dict[str, Any] = {
            "chargingProfileId": pid,
            "stackLevel": 0,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Relative",
            "chargingSchedule": sched,
        }
        if purpose == "TxProfile":
            prof["transactionId"] = int(tx.id)
        return {"connectorId": connector, "csChargingProfiles": prof}
    prof = {
        "id": pid,
        "stackLevel": 0,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Relative",
        "chargingSchedule": [{"id": pid, **sched}],
    }
    if purpose == "TxProfile":
        prof["transactionId"] = tx.id
    return {"evseId": connector, "chargingProfile": prof}


@BOTH
async def test_link_closes_after_applying_and_before_answering(
    protocol: str, raw: RawCSMS, make_charger: Factory
) -> None:
    ch, conn = await charging(raw, make_charger, protocol)
    ch.drop_link_before_answer(1)
    # other actions are answered as usual
    uid = await raw.call(
        conn,
        "GetCompositeSchedule",
        (
            {"connectorId": 1, "duration": 60}
            if protocol == "ocpp1.6"
            else {"evseId": 1, "duration": 60}
        ),
    )
    assert (await raw.answer(conn, uid))[0] == 3
    uid = await raw.call(conn, "SetChargingProfile", set_profile(ch, "TxProfile", 10, 1))
    await asyncio.wait_for(conn.closed.wait(), 5)
    assert conn.answer_to(uid) is None  # the CSMS never learns the outcome ...
    assert ch.offered_a(1) == 10  # ... but the charger applied it
    assert [p.limit for p in (pr.periods[0] for pr in ch.profiles)] == [10]
    # it reconnects, boots again, and only the next answer was lost
    conn2 = await raw.connected(2)
    uid = await raw.call(conn2, "SetChargingProfile", set_profile(ch, "TxProfile", 12, 1))
    assert await raw.answer(conn2, uid) == [3, uid, {"status": "Accepted"}]
    assert ch.offered_a(1) == 12


@BOTH
async def test_half_open_link_loses_the_answer_and_everything_after_it(
    protocol: str, raw: RawCSMS, make_charger: Factory
) -> None:
    raw.interval = 1  # heartbeat every simulated second (0.1 s real)
    ch, conn = await charging(
        raw, make_charger, protocol, clock=ScaledClock(speed=10), response_timeout_s=0.5
    )
    ch.drop_link_before_answer(1, half_open=True)
    uid = await raw.call(conn, "SetChargingProfile", set_profile(ch, "TxDefaultProfile", 8, 3))
    await raw.wait(lambda: ch.offered_a(1) == 8)
    seen = len(conn.frames)
    later = await raw.call(conn, "TriggerMessage", {"requestedMessage": "Heartbeat"})
    await asyncio.wait_for(conn.closed.wait(), 5)  # our heartbeat timed out: link dropped
    assert conn.answer_to(uid) is None and conn.answer_to(later) is None
    assert len(conn.frames) == seen  # nothing got through after the lost answer
    assert ch.offered_a(1) == 8  # the profile stayed in force throughout
    await raw.connected(2)
    assert await ch.wait_connected(5)


@BOTH
async def test_reboot_boots_again_ends_and_restarts_transactions(
    protocol: str, raw: RawCSMS, make_charger: Factory
) -> None:
    ch, conn = await charging(raw, make_charger, protocol)
    for purpose, limit, pid in (("TxDefaultProfile", 6, 1), ("TxProfile", 20, 2)):
        uid = await raw.call(conn, "SetChargingProfile", set_profile(ch, purpose, limit, pid))
        assert (await raw.answer(conn, uid))[2] == {"status": "Accepted"}
    old = ch.transaction(1)
    assert ch.offered_a(1) == 20
    await ch.reboot(reason="RemoteReset")
    await asyncio.wait_for(conn.closed.wait(), 5)
    # the TxProfile went with its transaction; the TxDefault failsafe persists
    assert [p.purpose.value for p in ch.profiles] == ["TxDefaultProfile"]
    assert ch.offered_a(1) == 6
    new = ch.transaction(1)
    assert new is not None and new is not old and new.active and old is not None and old.ended
    conn2 = await raw.connected(2)
    boot = conn2.calls()[0]
    assert boot[2] == "BootNotification"
    if protocol == "ocpp2.0.1":
        assert boot[3]["reason"] == "RemoteReset"
        ended = await raw.wait(
            lambda: [f for f in conn2.calls("TransactionEvent") if f[3]["eventType"] == "Ended"]
        )
        assert ended[0][3]["transactionInfo"]["stoppedReason"] == "Reboot"
        assert ended[0][3]["transactionInfo"]["transactionId"] == old.id
    else:
        stop = await raw.wait(lambda: conn2.calls("StopTransaction"))
        assert stop[0][3]["reason"] == "Reboot"
        assert stop[0][3]["transactionId"] == int(old.id)  # type: ignore[arg-type]
        await raw.wait(lambda: conn2.calls("StartTransaction"))
        actions = [f[2] for f in conn2.calls()]
        assert actions.index("StopTransaction") < actions.index("StartTransaction")
    await raw.wait(lambda: new.id is not None)


def test_reconnect_backoff_doubles_from_the_minimum_with_seeded_jitter() -> None:
    def waits(seed: int) -> list[float]:
        ch = SimCharger(
            "CP-B", "ws://127.0.0.1:1", reconnect_min_s=1.0, reconnect_max_s=8.0, seed=seed
        )
        retrying = ch.link.backoff()
        state = RetryCallState(retrying, None, (), {})
        out = []
        for attempt in range(1, 8):
            state.attempt_number = attempt
            out.append(retrying.wait(state))
        return out

    first = waits(1)
    for attempt, wait in enumerate(first, start=1):
        base = min(8.0, 2.0 ** (attempt - 1))
        assert base <= wait <= base + 1.0
    assert waits(1) == first  # reproducible per seed
    assert waits(2) != first


@BOTH
async def test_reboot_right_after_an_answer_boots_on_a_new_link(
    protocol: str, raw: RawCSMS, make_charger: Factory
) -> None:
    ch, conn = await charging(raw, make_charger, protocol)
    ch.reboot_after_answer(1)
    uid = await raw.call(conn, "SetChargingProfile", set_profile(ch, "TxDefaultProfile", 9, 1))
    await asyncio.wait_for(conn.closed.wait(), 5)
    # the answer is the last thing the charger said on the old link ...
    assert conn.frames[-1] == [3, uid, {"status": "Accepted"}]
    # ... and a BootNotification the first on the new one
    conn2 = await raw.connected(2)
    assert conn2.calls()[0][2] == "BootNotification"
    assert ch.offered_a(1) == 9  # the accepted TxDefault persists across the reboot
    await raw.wait(lambda: ch.transaction(1).id is not None)  # type: ignore[union-attr]
    uid = await raw.call(conn2, "SetChargingProfile", set_profile(ch, "TxDefaultProfile", 7, 1))
    assert await raw.answer(conn2, uid) == [3, uid, {"status": "Accepted"}]
    await asyncio.sleep(0.3)
    assert len(raw.connections) == 2  # only one reboot was asked for


async def test_ocpp201_tx_profile_is_accepted_before_authorization_and_applies_after(
    raw: RawCSMS, make_charger: Factory
) -> None:
    raw.hold = {"Authorize"}
    ch = make_charger("CP-AUTH", url=raw.url, protocol="ocpp2.0.1")
    await ch.start(tick_s=0.2)
    conn = await raw.connected()
    assert await ch.wait_connected(5)
    ch.plug_nowait(1, EV(capacity_kwh=60, soc=0.3, setpoint_lag_s=0.1))
    started = await raw.wait(
        lambda: [f for f in conn.calls("TransactionEvent") if f[3]["eventType"] == "Started"]
    )
    authorize = await raw.wait(lambda: conn.calls("Authorize"))
    uid = await raw.call(conn, "SetChargingProfile", set_profile(ch, "TxProfile", 11, 5))
    assert await raw.answer(conn, uid) == [3, uid, {"status": "Accepted"}]
    assert started[0][3]["transactionInfo"]["transactionId"] == ch.transaction(1).id  # type: ignore[union-attr]
    assert ch.offered_a(1) == 0  # not authorized yet: no energy
    await raw.send(conn, [3, authorize[0][1], {"idTokenInfo": {"status": "Accepted"}}])
    await raw.wait(lambda: ch.offered_a(1) == 11)


@BOTH
async def test_reset_is_answered_then_the_charger_reboots(
    protocol: str, raw: RawCSMS, make_charger: Factory
) -> None:
    ch, conn = await charging(raw, make_charger, protocol)
    old = ch.transaction(1)
    assert old is not None
    kind = "Hard" if protocol == "ocpp1.6" else "Immediate"
    uid = await raw.call(conn, "Reset", {"type": kind})
    await asyncio.wait_for(conn.closed.wait(), 5)
    assert conn.frames[-1] == [3, uid, {"status": "Accepted"}]
    conn2 = await raw.connected(2)
    boot = conn2.calls()[0]
    if protocol == "ocpp1.6":
        stop = await raw.wait(lambda: conn2.calls("StopTransaction"))
        assert stop[0][3]["reason"] == "HardReset"
    else:
        assert boot[3]["reason"] == "RemoteReset"
        ended = await raw.wait(
            lambda: [f for f in conn2.calls("TransactionEvent") if f[3]["eventType"] == "Ended"]
        )
        info = ended[0][3]["transactionInfo"]
        assert (info["transactionId"], info["stoppedReason"]) == (old.id, "ImmediateReset")
        assert ended[0][3]["triggerReason"] == "ResetCommand"


async def test_ocpp201_reset_on_idle_waits_for_the_transaction_to_end(
    raw: RawCSMS, make_charger: Factory
) -> None:
    ch, conn = await charging(raw, make_charger, "ocpp2.0.1")
    uid = await raw.call(conn, "Reset", {"type": "OnIdle", "evseId": 1})
    assert (await raw.answer(conn, uid))[2]["status"] == "Rejected"  # no per-EVSE reset
    uid = await raw.call(conn, "Reset", {"type": "OnIdle"})
    assert (await raw.answer(conn, uid))[2] == {"status": "Scheduled"}
    await asyncio.sleep(0.3)
    assert not conn.closed.is_set() and ch.connected
    ch.unplug_nowait(1)  # the last transaction ends: now the reset runs
    await asyncio.wait_for(conn.closed.wait(), 5)
    conn2 = await raw.connected(2)
    assert conn2.calls()[0][3]["reason"] == "RemoteReset"
