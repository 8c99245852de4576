"""The simulated charger against a real (test-only) OCPP central system.

The test CSMS uses the ``ocpp`` package with its own jsonschema validation on, so each
exchange here also proves that the simulator's frames and answers are schema-valid.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from ocpp.exceptions import OCPPError
from ocpp.v16 import call as c16
from ocpp.v201 import call as c201
from sim_csms import TestCSMS, eventually

from gridshare.sim import EV, ScaledClock, SimCharger

BOTH = pytest.mark.parametrize("protocol", ["ocpp1.6", "ocpp2.0.1"])
Factory = Callable[..., SimCharger]


def set_profile(
    ch: SimCharger,
    purpose: str,
    limit: float,
    *,
    pid: int = 1,
    connector: int = 1,
    level: int = 0,
    unit: str = "A",
    duration: int | None = None,
    tx: bool = True,
    phases: int | None = None,
) -> Any:
    """A SetChargingProfile request in the charger's OCPP version."""
    period: dict[str, Any] = {"start_period": 0, "limit": limit}
    if phases is not None:
        period["number_phases"] = phases
    sched: dict[str, Any] = {"charging_rate_unit": unit, "charging_schedule_period": [period]}
    if duration is not None:
        sched["duration"] = duration
    txn = ch.transaction(connector) if connector else None
    if ch.protocol == "ocpp1.6":
        prof: dict[str, Any] = {
            "charging_profile_id": pid,
            "stack_level": level,
            "charging_profile_purpose": purpose,
            "charging_profile_kind": "Relative",
            "charging_schedule": sched,
        }
        if tx and purpose == "TxProfile" and txn is not None and txn.id is not None:
            prof["transaction_id"] = int(txn.id)
        return c16.SetChargingProfile(connector_id=connector, cs_charging_profiles=prof)
    if purpose == "ChargePointMaxProfile":
        purpose = "ChargingStationMaxProfile"
    prof = {
        "id": pid,
        "stack_level": level,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": "Relative",
        "charging_schedule": [{"id": pid, **sched}],
    }
    if tx and purpose == "TxProfile" and txn is not None:
        prof["transaction_id"] = txn.id
    return c201.SetChargingProfile(evse_id=connector, charging_profile=prof)


def composite(ch: SimCharger, connector: int, duration: int, unit: str | None = None) -> Any:
    if ch.protocol == "ocpp1.6":
        return c16.GetCompositeSchedule(
            connector_id=connector, duration=duration, charging_rate_unit=unit
        )
    return c201.GetCompositeSchedule(evse_id=connector, duration=duration, charging_rate_unit=unit)


def periods(result: Any) -> list[dict[str, Any]]:
    sched = result.charging_schedule if hasattr(result, "charging_schedule") else result.schedule
    return list(sched["charging_schedule_period"])


def sampled(payload: dict[str, Any]) -> dict[str, list[tuple[str | None, float]]]:
    """measurand → [(phase, value)] from a MeterValues / TransactionEvent payload."""
    out: dict[str, list[tuple[str | None, float]]] = {}
    for mv in payload.get("meter_value") or []:
        for sv in mv["sampled_value"]:
            out.setdefault(sv.get("measurand", "Energy.Active.Import.Register"), []).append(
                (sv.get("phase"), float(sv["value"]))
            )
    return out


def max_offered_within(history: list[tuple[float, float]], now: float, window: float) -> float:
    """Highest current offered at any moment of [now - window, now]."""
    values = [a for t, a in history if t > now - window]
    before = [a for t, a in history if t <= now - window]
    return max(values + before[-1:])


async def plugged(ch: SimCharger, **ev: Any) -> EV:
    ev.setdefault("setpoint_lag_s", 1.0)
    car = EV(capacity_kwh=ev.pop("capacity_kwh", 60), soc=ev.pop("soc", 0.3), **ev)
    tx = await ch.plug(1, car)
    assert tx.id is not None and tx.active
    return car


@BOTH
async def test_boot_heartbeat_and_status_sequence(
    protocol: str, csms: TestCSMS, make_charger: Factory
) -> None:
    csms.heartbeat_interval = 1
    ch = make_charger("CP-SEQ", protocol=protocol, clock=ScaledClock(speed=5))
    await ch.start(tick_s=0.5)
    assert await ch.wait_connected(5)
    await csms.wait_for("Heartbeat", "CP-SEQ", count=3, timeout_s=5)
    assert ch.heartbeat_interval_s == 1
    actions = [m.action for m in csms.messages]
    assert actions[0] == "BootNotification"
    first_statuses = [m.payload for m in csms.messages[1:4] if m.action == "StatusNotification"]
    if protocol == "ocpp1.6":
        assert [(s["connector_id"], s["status"]) for s in first_statuses[:2]] == [
            (0, "Available"),
            (1, "Available"),
        ]
    else:
        assert (first_statuses[0]["evse_id"], first_statuses[0]["connector_status"]) == (
            1,
            "Available",
        )
    await plugged(ch, max_current_a=16)
    await eventually(lambda: ch.status(1).value == "Charging", 5)
    await csms.wait_for(
        "StatusNotification" if protocol == "ocpp1.6" else "TransactionEvent",
        "CP-SEQ",
        lambda p: (
            p.get("status") == "Charging"
            or p.get("transaction_info", {}).get("charging_state") == "Charging"
        ),
    )
    await ch.unplug(1)
    if protocol == "ocpp1.6":
        await csms.wait_for(
            "StatusNotification", "CP-SEQ", lambda p: p["status"] == "Available", count=3
        )
        statuses = [m.payload["status"] for m in csms.of("StatusNotification")]
        assert statuses == [
            "Available",
            "Available",
            "Preparing",
            "Charging",
            "Finishing",
            "Available",
        ]
        assert [
            m.action
            for m in csms.messages
            if m.action in ("Authorize", "StartTransaction", "StopTransaction")
        ] == ["Authorize", "StartTransaction", "StopTransaction"]
    else:
        await csms.wait_for(
            "StatusNotification", "CP-SEQ", lambda p: p["connector_status"] == "Available", count=2
        )
        statuses = [m.payload["connector_status"] for m in csms.of("StatusNotification")]
        assert statuses == ["Available", "Occupied", "Available"]
        events = [
            (m.payload["event_type"], m.payload["trigger_reason"])
            for m in csms.of("TransactionEvent")
            if m.payload["trigger_reason"] != "MeterValuePeriodic"
        ]
        assert events[:3] == [
            ("Started", "CablePluggedIn"),
            ("Updated", "Authorized"),
            ("Updated", "ChargingStateChanged"),
        ]
        assert events[-1] == ("Ended", "EVCommunicationLost")
        seq = [m.payload["seq_no"] for m in csms.of("TransactionEvent")]
        assert seq == list(range(len(seq)))


@BOTH
async def test_transaction_and_meter_values_are_plausible(
    protocol: str, csms: TestCSMS, make_charger: Factory
) -> None:
    ch = make_charger("CP-MV", protocol=protocol, meter_interval_s=2, clock=ScaledClock(speed=10))
    await ch.start(tick_s=0.5)
    assert await ch.wait_connected(5)
    car = await plugged(ch, max_current_a=16, setpoint_lag_s=0.5)
    if protocol == "ocpp1.6":
        start = (await csms.wait_for("StartTransaction", "CP-MV"))[0].payload
        assert start["connector_id"] == 1 and start["meter_start"] == 0
        mvs = await csms.wait_for("MeterValues", "CP-MV", count=5, timeout_s=5)
        payloads = [m.payload for m in mvs]
        assert all(p["transaction_id"] == int(ch.transaction(1).id) for p in payloads)  # type: ignore[arg-type,union-attr]
    else:
        tes = await csms.wait_for(
            "TransactionEvent",
            "CP-MV",
            lambda p: p["trigger_reason"] == "MeterValuePeriodic",
            count=5,
            timeout_s=5,
        )
        payloads = [m.payload for m in tes]
        assert {p["transaction_info"]["transaction_id"] for p in payloads} == {
            ch.transaction(1).id  # type: ignore[union-attr]
        }
    energies = [sampled(p)["Energy.Active.Import.Register"][0][1] for p in payloads]
    assert energies == sorted(energies) and energies[-1] > energies[0]
    last = sampled(payloads[-1])
    currents = [v for _, v in last["Current.Import"]]
    assert [ph for ph, _ in last["Current.Import"]] == ["L1", "L2", "L3"]
    assert currents == pytest.approx([16, 16, 16])
    assert last["Power.Active.Import"][0][1] == pytest.approx(sum(currents) * 230, rel=0.01)
    assert last["Current.Offered"][0][1] == 32
    assert last["Voltage"][0][1] == 230
    assert 30 <= last["SoC"][0][1] <= 100
    ev = await ch.unplug(1)
    assert ev is car
    if protocol == "ocpp1.6":
        stop = (await csms.wait_for("StopTransaction", "CP-MV"))[0].payload
        assert stop["meter_stop"] - start["meter_start"] == pytest.approx(
            car.energy_charged_wh, abs=1
        )
        assert stop["reason"] == "EVDisconnected"
    else:
        end = (
            await csms.wait_for("TransactionEvent", "CP-MV", lambda p: p["event_type"] == "Ended")
        )[0].payload
        assert end["transaction_info"]["stopped_reason"] == "EVDisconnected"
        final = sampled(end)["Energy.Active.Import.Register"][0][1]
        assert final == pytest.approx(car.energy_charged_wh, abs=0.1)


@BOTH
async def test_tx_profile_limits_the_car_after_its_lag(
    protocol: str, csms: TestCSMS, make_charger: Factory
) -> None:
    clock = ScaledClock(speed=10)
    ch = make_charger("CP-TX", protocol=protocol, clock=clock)
    await ch.start(tick_s=0.2)
    assert await ch.wait_connected(5)
    history: list[tuple[float, float]] = []
    ch.on_setpoint(lambda c, a: history.append((clock.time(), a)))
    await plugged(ch, max_current_a=32, setpoint_lag_s=3.0)
    await eventually(lambda: ch.drawn_a(1)[0] == 32, 5)
    res = await csms.call("CP-TX", set_profile(ch, "TxProfile", 10))
    assert res.status == "Accepted"
    changed = clock.time()
    assert ch.offered_a(1) == 10
    assert [p.purpose.value for p in ch.profiles] == ["TxProfile"]
    # never more than what was offered within the car's lag; 10 A once the lag is over
    while clock.time() < changed + 5:
        now = clock.time()
        drawn = max(ch.drawn_a(1))
        assert drawn <= max_offered_within(history, now, 3.0 + 0.2) + 1e-9
        await asyncio.sleep(0.02)
    assert ch.drawn_a(1) == (10.0, 10.0, 10.0)
    assert history[-1][1] == 10


@BOTH
async def test_profile_duration_expires_to_tx_default(
    protocol: str, csms: TestCSMS, make_charger: Factory
) -> None:
    clock = ScaledClock(speed=10)
    ch = make_charger("CP-EXP", protocol=protocol, clock=clock)
    await ch.start(tick_s=0.2)
    assert await ch.wait_connected(5)
    await plugged(ch, setpoint_lag_s=0.5)
    assert (
        await csms.call("CP-EXP", set_profile(ch, "TxDefaultProfile", 8, pid=1, connector=0))
    ).status == "Accepted"
    assert ch.offered_a(1) == 8
    tx = ch.transaction(1)
    assert tx is not None and tx.started_at is not None
    elapsed = clock.time() - tx.started_at.timestamp()
    duration = int(elapsed) + 10  # relative to the transaction start: ~10 s from now
    res = await csms.call("CP-EXP", set_profile(ch, "TxProfile", 16, pid=2, duration=duration))
    assert res.status == "Accepted"
    assert ch.offered_a(1) == 16
    end = tx.started_at.timestamp() + duration
    await eventually(lambda: clock.time() > end - 1, 5)
    assert ch.offered_a(1) == 16
    await eventually(lambda: ch.offered_a(1) == 8, 2)
    assert clock.time() >= end - 1e-6
    await eventually(lambda: ch.drawn_a(1)[0] == 8, 2)


@BOTH
async def test_connection_loss_keeps_tx_profile_then_tx_default_failsafe(
    protocol: str, csms: TestCSMS, make_charger: Factory
) -> None:
    clock = ScaledClock(speed=10)
    ch = make_charger("CP-LOSS", protocol=protocol, clock=clock, failsafe_current_a=0)
    await ch.start(tick_s=0.2)
    assert await ch.wait_connected(5)
    await plugged(ch, setpoint_lag_s=0.5, max_current_a=32)
    await csms.call("CP-LOSS", set_profile(ch, "TxDefaultProfile", 6, pid=1, connector=0))
    tx = ch.transaction(1)
    assert tx is not None and tx.started_at is not None
    duration = int(clock.time() - tx.started_at.timestamp()) + 15
    await csms.call("CP-LOSS", set_profile(ch, "TxProfile", 20, pid=2, duration=duration))
    await ch.disconnect()
    assert not ch.connected
    assert ch.offered_a(1) == 20  # the live TxProfile keeps applying while offline
    await eventually(lambda: ch.drawn_a(1)[0] == 20, 2)
    await eventually(lambda: ch.offered_a(1) == 6, 3)  # ran out: TxDefault failsafe
    assert not ch.connected
    assert clock.time() >= tx.started_at.timestamp() + duration - 1e-6
    await eventually(lambda: ch.drawn_a(1)[0] == 6, 2)
    boots = len(csms.of("BootNotification", "CP-LOSS"))
    await ch.connect()
    assert await ch.wait_connected(5)
    await csms.wait_for("BootNotification", "CP-LOSS", count=boots + 1)
    assert ch.offered_a(1) == 6  # profiles survive the reconnect


@BOTH
async def test_without_any_profile_offline_uses_configured_failsafe(
    protocol: str, csms: TestCSMS, make_charger: Factory
) -> None:
    ch = make_charger(
        "CP-FS", protocol=protocol, failsafe_current_a=10, clock=ScaledClock(speed=10)
    )
    await ch.start(tick_s=0.2)
    assert await ch.wait_connected(5)
    await plugged(ch)
    assert ch.offered_a(1) == 32
    await csms.drop("CP-FS")  # the CSMS goes away
    await eventually(lambda: not ch.connected, 3)
    assert ch.offered_a(1) == 10
    # auto-reconnect with backoff, boot again, back to no limit
    await eventually(lambda: ch.connected, 5)
    assert ch.boot_count == 2
    assert ch.offered_a(1) == 32


@BOTH
async def test_watt_profile_and_composite_schedule(
    protocol: str, csms: TestCSMS, make_charger: Factory
) -> None:
    ch = make_charger("CP-W", protocol=protocol, clock=ScaledClock(speed=1))
    await ch.start(tick_s=0.5)
    assert await ch.wait_connected(5)
    await plugged(ch)
    res = await csms.call("CP-W", set_profile(ch, "TxDefaultProfile", 11040, unit="W", connector=0))
    assert res.status == "Accepted"
    assert ch.offered_a(1) == 16.0  # 11040 W / (3 × 230 V)
    await csms.call("CP-W", set_profile(ch, "TxProfile", 10, pid=2, duration=600))
    await csms.call("CP-W", set_profile(ch, "ChargePointMaxProfile", 25, pid=3, connector=0))
    amps = await csms.call("CP-W", composite(ch, 1, 3600, "A"))
    assert amps.status == "Accepted"
    ps = periods(amps)
    assert float(ps[0]["limit"]) == ch.offered_a(1) == 10
    assert [float(p["limit"]) for p in ps] == [10, 16]
    assert 590 <= ps[1]["start_period"] <= 600
    watts = await csms.call("CP-W", composite(ch, 1, 3600, "W"))
    assert [float(p["limit"]) for p in periods(watts)] == [6900, 11040]
    station = await csms.call("CP-W", composite(ch, 0, 60))
    assert [float(p["limit"]) for p in periods(station)] == [25]
    single = make_charger("CP-W1", protocol=protocol, phases=1, phase="L3")
    await single.start(tick_s=0.5)
    assert await single.wait_connected(5)
    await plugged(single)
    await csms.call("CP-W1", set_profile(single, "TxProfile", 3680, unit="W"))
    assert single.offered_a(1) == 16.0
    await eventually(lambda: single.drawn_a(1) == (0.0, 0.0, 16.0), 5)


@BOTH
async def test_rejections_clear_configuration_and_unknown_actions(
    protocol: str, csms: TestCSMS, make_charger: Factory
) -> None:
    ch = make_charger("CP-CFG", protocol=protocol)
    await ch.start(tick_s=0.5)
    assert await ch.wait_connected(5)
    # no transaction yet: a TxProfile is rejected; a Max profile only on connector 0
    assert (await csms.call("CP-CFG", set_profile(ch, "TxProfile", 10))).status == "Rejected"
    bad_max = set_profile(ch, "ChargePointMaxProfile", 10, connector=1)
    assert (await csms.call("CP-CFG", bad_max)).status == "Rejected"
    ok = set_profile(ch, "TxDefaultProfile", 10, pid=7, connector=0)
    assert (await csms.call("CP-CFG", ok)).status == "Accepted"
    if protocol == "ocpp1.6":
        res = await csms.call("CP-CFG", c16.ClearChargingProfile(id=7))
        assert res.status == "Accepted" and ch.profiles == ()
        res = await csms.call("CP-CFG", c16.ClearChargingProfile(id=7))
        assert res.status == "Unknown"
        conf = await csms.call("CP-CFG", c16.GetConfiguration(key=["HeartbeatInterval", "Nope"]))
        assert conf.configuration_key[0]["key"] == "HeartbeatInterval"
        assert conf.unknown_key == ["Nope"]
        res = await csms.call(
            "CP-CFG", c16.ChangeConfiguration(key="MeterValueSampleInterval", value="5")
        )
        assert res.status == "Accepted" and ch.meter_interval_s == 5
        res = await csms.call(
            "CP-CFG", c16.ChangeConfiguration(key="NumberOfConnectors", value="5")
        )
        assert res.status == "Rejected"
        unhandled: Any = c16.UnlockConnector(connector_id=1)
    else:
        res = await csms.call(
            "CP-CFG",
            c201.ClearChargingProfile(
                charging_profile_criteria={"charging_profile_purpose": "TxDefaultProfile"}
            ),
        )
        assert res.status == "Accepted" and ch.profiles == ()
        res = await csms.call(
            "CP-CFG",
            c201.SetVariables(
                set_variable_data=[
                    {
                        "attribute_value": "5",
                        "component": {"name": "SampledDataCtrlr"},
                        "variable": {"name": "TxUpdatedInterval"},
                    },
                    {
                        "attribute_value": "1",
                        "component": {"name": "Nope"},
                        "variable": {"name": "X"},
                    },
                ]
            ),
        )
        assert [r["attribute_status"] for r in res.set_variable_result] == [
            "Accepted",
            "UnknownComponent",
        ]
        assert ch.meter_interval_s == 5
        got = await csms.call(
            "CP-CFG",
            c201.GetVariables(
                get_variable_data=[
                    {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "RateUnit"}},
                    {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "Nope"}},
                ]
            ),
        )
        assert [
            (r["attribute_status"], r.get("attribute_value")) for r in got.get_variable_result
        ] == [("Accepted", "A,W"), ("UnknownVariable", None)]
        unhandled = c201.UnlockConnector(evse_id=1, connector_id=1)
    # an OCPP action the charger does not handle: NotSupported (unknown ones: test_rpc.py)
    with pytest.raises(OCPPError) as err:
        await csms.call("CP-CFG", unhandled)
    assert err.value.code == "NotSupported"


@BOTH
async def test_remote_stop_and_trigger_message(
    protocol: str, csms: TestCSMS, make_charger: Factory
) -> None:
    ch = make_charger("CP-RS", protocol=protocol)
    await ch.start(tick_s=0.5)
    assert await ch.wait_connected(5)
    await plugged(ch)
    tx = ch.transaction(1)
    assert tx is not None and tx.id is not None
    if protocol == "ocpp1.6":
        trig = await csms.call(
            "CP-RS", c16.TriggerMessage(requested_message="MeterValues", connector_id=1)
        )
        assert trig.status == "Accepted"
        await csms.wait_for("MeterValues", "CP-RS")
        res = await csms.call("CP-RS", c16.RemoteStopTransaction(transaction_id=int(tx.id)))
    else:
        trig = await csms.call(
            "CP-RS", c201.TriggerMessage(requested_message="MeterValues", evse={"id": 1})
        )
        assert trig.status == "Accepted"
        await csms.wait_for("TransactionEvent", "CP-RS", lambda p: p["trigger_reason"] == "Trigger")
        res = await csms.call("CP-RS", c201.RequestStopTransaction(transaction_id=tx.id))
    assert res.status == "Accepted"
    assert tx.ended and ch.offered_a(1) == 0 and ch.status(1).value == "Finishing"
    await csms.wait_for(
        "StopTransaction" if protocol == "ocpp1.6" else "TransactionEvent",
        "CP-RS",
        lambda p: (
            p.get("reason") == "Remote"
            or p.get("transaction_info", {}).get("stopped_reason") == "Remote"
        ),
    )


async def test_basic_auth_and_offline_start(make_charger: Factory) -> None:
    csms = await TestCSMS(password="s3cret-password-16").start()
    try:
        bad = make_charger(
            "CP-BAD", url=csms.url, password="wrong-password-123", auto_reconnect=False
        )
        await bad.start(physics=False)
        assert not await bad.wait_connected(1)
        ch = make_charger("CP-AUTH", url=csms.url, password="s3cret-password-16")
        # a car plugged before the CSMS is reachable starts charging offline ...
        ch.plug_nowait(1, EV(capacity_kwh=50, soc=0.5, setpoint_lag_s=0.1))
        assert ch.transaction(1).active  # type: ignore[union-attr]
        assert ch.offered_a(1) == 32
        await ch.start(tick_s=0.5)
        assert await ch.wait_connected(5)
        assert csms.auth_headers["CP-AUTH"] is not None
        # ... and the transaction is reported once connected
        start = await csms.wait_for("StartTransaction", "CP-AUTH")
        assert start[0].payload["connector_id"] == 1
        await eventually(lambda: ch.transaction(1).id is not None, 3)  # type: ignore[union-attr]
        assert csms.of("Authorize", "CP-AUTH") == []
    finally:
        await csms.stop()


async def test_subprotocol_not_offered_by_csms_fails_cleanly(make_charger: Factory) -> None:
    import websockets

    async def handler(ws: Any) -> None:
        await ws.close()

    server = await websockets.serve(handler, "127.0.0.1", 0, subprotocols=["ocpp2.0.1"])
    try:
        port = server.sockets[0].getsockname()[1]
        ch = make_charger(
            "CP-OLD", url=f"ws://127.0.0.1:{port}", protocol="ocpp1.6", auto_reconnect=False
        )
        await ch.start(physics=False)
        assert not await ch.wait_connected(1)
        assert any("error" in what or "subprotocol" in what for _, what in ch.events)
    finally:
        server.close()
        await server.wait_closed()


async def test_boot_pending_is_retried_until_accepted(make_charger: Factory) -> None:
    csms = await TestCSMS(boot_status="Pending", heartbeat_interval=1).start()
    try:
        ch = make_charger("CP-PEND", url=csms.url, clock=ScaledClock(speed=5))
        await ch.start(physics=False)
        await csms.wait_for("BootNotification", "CP-PEND", count=2, timeout_s=5)
        assert not ch.connected and csms.of("StatusNotification") == []
        csms.boot_status = "Accepted"
        assert await ch.wait_connected(5)
        await csms.wait_for("StatusNotification", "CP-PEND", count=2)
    finally:
        await csms.stop()


def _self_signed(tmp: Any) -> tuple[str, str]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-csms")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "csms.pem", tmp / "csms.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@BOTH
async def test_tls_with_basic_auth_security_profile_2(
    protocol: str, make_charger: Factory, tmp_path: Any
) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.load_cert_chain(cert, key)
    csms = await TestCSMS(password="a-16-char-password").start(ssl=server_ctx)
    try:
        assert csms.url.startswith("wss://")
        client_ctx = ssl.create_default_context(cafile=cert)
        ch = make_charger(
            "CP-TLS", url=csms.url, protocol=protocol, ssl=client_ctx, password="a-16-char-password"
        )
        await ch.start(physics=False)
        assert await ch.wait_connected(5)
        assert (csms.auth_headers["CP-TLS"] or "").startswith("Basic ")
        untrusted = make_charger(
            "CP-NOCA",
            url=csms.url,
            protocol=protocol,
            password="a-16-char-password",
            auto_reconnect=False,
        )
        await untrusted.start(physics=False)  # default context: self-signed is refused
        assert not await untrusted.wait_connected(1)
    finally:
        await csms.stop()


async def test_offline_queue_is_bounded(make_charger: Factory) -> None:
    ch = make_charger("CP-Q", max_queued=5)  # never started: everything stays queued
    for _ in range(4):
        ch.plug_nowait(1, EV(capacity_kwh=50, soc=0.5))
        ch.unplug_nowait(1)
    assert len(ch.outbox) == 5 and ch.dropped == 7


async def test_ocpp201_charging_needs_carry_departure_and_energy(
    csms: TestCSMS, make_charger: Factory
) -> None:
    from datetime import timedelta

    clock = ScaledClock(speed=1)
    ch = make_charger("CP-NEEDS", protocol="ocpp2.0.1", charging_needs=True, clock=clock)
    await ch.start(physics=False)
    assert await ch.wait_connected(5)
    car = EV(
        capacity_kwh=60,
        soc=0.4,
        target_soc=0.9,
        phases=1,
        max_current_a=32,
        departure=clock.now() + timedelta(hours=3),
    )
    await ch.plug(1, car)
    needs = (await csms.wait_for("NotifyEVChargingNeeds", "CP-NEEDS"))[0].payload
    assert needs["evse_id"] == 1
    cn = needs["charging_needs"]
    assert cn["requested_energy_transfer"] == "AC_single_phase"
    assert cn["ac_charging_parameters"]["energy_amount"] == 30000
    assert cn["ac_charging_parameters"]["ev_max_current"] == 32
    assert cn["departure_time"].startswith(car.departure.strftime("%Y-%m-%dT%H:%M"))  # type: ignore[union-attr]
