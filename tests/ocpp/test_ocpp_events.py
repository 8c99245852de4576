"""Charger → CSMS: every message becomes the right typed event, over real WebSockets,
for OCPP 1.6J and 2.0.1 (parametrised where the check is the same)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from csms_helpers import CsmsFactory, Msgs, charger, exchange, now_iso, raw_socket
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.charge_point import camel_to_snake_case
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gridshare.adapters.ocpp import CsmsConfig
from gridshare.adapters.ocpp.rpc import snake_keys
from gridshare.events import (
    ChargerBooted,
    ChargerOffline,
    ChargerOnline,
    ChargingNeeds,
    ConnectorStatus,
    MeterReading,
    SessionStarted,
    SessionStopped,
    StatusChanged,
)


async def test_boot_heartbeat_and_status(make_csms: CsmsFactory, version: str,
                                         msgs: Msgs) -> None:
    csms, events = await make_csms(heartbeat_interval_s=42)
    async with charger(csms, "CP-1", version) as cp:
        await events.wait_kind(ChargerOnline, "CP-1")
        boot = await cp.call(msgs.boot("Acme", "Wallbox"))
        assert boot.status == "Accepted" and boot.interval == 42
        booted = (await events.wait_kind(ChargerBooted, "CP-1"))[0]
        assert (booted.protocol, booted.vendor, booted.model) == (version, "Acme", "Wallbox")
        assert csms.protocol_of("CP-1") == version
        assert csms.connected() == frozenset({"CP-1"})
        beat = await cp.call(msgs.heartbeat())
        assert abs(datetime.fromisoformat(beat.current_time) - datetime.now(UTC)) < timedelta(
            seconds=5)
        status = "Charging" if msgs.v16 else "Occupied"
        await cp.call(msgs.status(1, status, "2024-05-01T12:00:00Z"))
        changed = (await events.wait_kind(StatusChanged, "CP-1"))[0]
        assert changed == StatusChanged("CP-1", 1, ConnectorStatus(status),
                                        datetime(2024, 5, 1, 12, tzinfo=UTC), "")
    offline = (await events.wait_kind(ChargerOffline, "CP-1"))[0]
    assert "closed" in offline.reason
    assert csms.connected() == frozenset()


async def test_authorize_accepted(csms: tuple, version: str, msgs: Msgs) -> None:
    server, _ = csms
    async with charger(server, "CP-A", version) as cp:
        if msgs.v16:
            reply = await cp.call(call16.Authorize(id_tag="TAG"))
            assert reply.id_tag_info == {"status": "Accepted"}
        else:
            reply = await cp.call(call201.Authorize(id_token={"id_token": "TAG",
                                                              "type": "ISO14443"}))
            assert reply.id_token_info == {"status": "Accepted"}


async def test_meter_values_one_reading_per_timestamp(csms: tuple, version: str,
                                                      msgs: Msgs) -> None:
    server, events = csms
    t1, t2 = now_iso(-20), now_iso(-10)
    async with charger(server, "CP-M", version) as cp:
        await cp.call(msgs.meter_values(1, [
            (t1, [msgs.sampled("Power.Active.Import", 7.2, "kW"),
                  msgs.sampled("Current.Import", 10.0, "A", "L1"),
                  msgs.sampled("Current.Import", 11.0, "A", "L2"),
                  msgs.sampled("Current.Import", 12.0, "A", "L3")]),
            (t2, [msgs.sampled("Energy.Active.Import.Register", 1.5, "kWh"),
                  msgs.sampled("SoC", 40.0, "Percent")]),
        ]))
        first, second = await events.wait_kind(MeterReading, "CP-M", count=2)
    assert first.power_w == 7200.0 and first.current_a == (10.0, 11.0, 12.0)
    assert second.energy_wh == 1500.0 and second.soc_percent == 40.0
    assert first.at < second.at and first.connector == 1


async def test_v16_session_start_stop_and_duplicates(csms: tuple) -> None:
    server, events = csms
    msgs = Msgs("ocpp1.6")
    async with charger(server, "CP-S", "ocpp1.6") as cp:
        start = call16.StartTransaction(connector_id=2, id_tag="TAG1", meter_start=1000,
                                        timestamp=now_iso(-5))
        first = await cp.call(start)
        again = await cp.call(start)  # the charger lost our answer and repeats the start
        assert first.transaction_id == again.transaction_id
        assert server.transaction_of("CP-S", 2) == str(first.transaction_id)
        await cp.call(msgs.meter_values(2, [(now_iso(-1), [
            msgs.sampled("Energy.Active.Import.Register", 1500.0, "Wh")])]))
        stop = call16.StopTransaction(
            meter_stop=2500, timestamp=now_iso(), reason="EVDisconnected",
            transaction_id=first.transaction_id, id_tag="TAG1",
            transaction_data=[{"timestamp": now_iso(), "sampled_value": [
                {"value": "2.5", "unit": "kWh", "context": "Transaction.End"}]}])
        reply = await cp.call(stop)
        assert reply.id_tag_info == {"status": "Accepted"}
        await cp.call(stop)  # duplicate stop: answered, not republished
        await events.wait_kind(SessionStopped, "CP-S")
    started = events.of(SessionStarted, "CP-S")
    assert len(started) == 1
    assert (started[0].connector, started[0].id_tag, started[0].meter_start_wh) == (2, "TAG1",
                                                                                   1000.0)
    (stopped,) = events.of(SessionStopped, "CP-S")
    assert stopped.transaction_id == str(first.transaction_id)
    assert (stopped.connector, stopped.meter_stop_wh, stopped.reason) == (2, 2500.0,
                                                                          "EVDisconnected")
    periodic, final = events.of(MeterReading, "CP-S")
    assert periodic.transaction_id == final.transaction_id == str(first.transaction_id)
    assert (periodic.energy_wh, final.energy_wh) == (1500.0, 2500.0)
    assert events.events.index(final) < events.events.index(stopped)
    assert server.counters.rejected["tx_duplicate_start"] == 1
    assert server.counters.rejected["tx_duplicate_stop"] == 1
    assert server.transaction_of("CP-S", 2) is None


def _tx_event(event_type: str, seq_no: int, *, energy_wh: float | None = None,
              evse: bool = True, **extra: object) -> call201.TransactionEvent:
    meter = None
    if energy_wh is not None:
        meter = [{"timestamp": now_iso(seq_no - 10), "sampled_value": [
            {"value": energy_wh, "measurand": "Energy.Active.Import.Register"},
            {"value": 16.0, "measurand": "Current.Import", "phase": "L1",
             "unitOfMeasure": {"unit": "A"}}]}]
    return call201.TransactionEvent(
        event_type=event_type, timestamp=now_iso(seq_no - 10), trigger_reason="Authorized",
        seq_no=seq_no, transaction_info={"transaction_id": "tx-A", **extra},
        evse={"id": 1, "connector_id": 1} if evse else None, meter_value=meter,
        id_token={"id_token": "TAG2", "type": "ISO14443"} if event_type == "Started" else None)


async def test_v201_transaction_events(csms: tuple) -> None:
    server, events = csms
    async with charger(server, "CP-T", "ocpp2.0.1") as cp:
        reply = await cp.call(_tx_event("Started", 0, energy_wh=100.0))
        assert reply.id_token_info == {"status": "Accepted"}
        await cp.call(_tx_event("Started", 0, energy_wh=100.0))  # duplicate seqNo
        await cp.call(_tx_event("Updated", 1, energy_wh=600.0, evse=False))
        await cp.call(_tx_event("Ended", 2, energy_wh=900.0, evse=False,
                                stopped_reason="EVDisconnected"))
        await cp.call(_tx_event("Updated", 3, energy_wh=950.0))  # after the end: ignored
        await events.wait_kind(SessionStopped, "CP-T")
    (started,) = events.of(SessionStarted, "CP-T")
    assert (started.connector, started.transaction_id, started.id_tag,
            started.meter_start_wh) == (1, "tx-A", "TAG2", 100.0)
    readings = events.of(MeterReading, "CP-T")
    assert [r.energy_wh for r in readings] == [100.0, 600.0, 900.0]
    assert all(r.transaction_id == "tx-A" and r.connector == 1 for r in readings)
    assert readings[0].current_a == (16.0, None, None)
    (stopped,) = events.of(SessionStopped, "CP-T")
    assert (stopped.meter_stop_wh, stopped.reason) == (900.0, "EVDisconnected")
    assert server.counters.rejected["tx_event_duplicate"] == 1
    assert server.counters.rejected["tx_event_after_end"] == 1


async def test_v201_started_without_a_register_has_no_meter_start(csms: tuple) -> None:
    # A Started event need not carry a meter value (2.0.1 E02): the start register is then
    # unknown (None), not 0 Wh -- 0 made `gridshare bill --by session` count the whole
    # register (from 0 to the first meter value) as the session's energy.
    server, events = csms
    async with charger(server, "CP-S", "ocpp2.0.1") as cp:
        await cp.call(_tx_event("Started", 0))
        await cp.call(_tx_event("Updated", 1, energy_wh=1000.0, evse=False))
        (started,) = await events.wait_kind(SessionStarted, "CP-S")
    assert started.transaction_id == "tx-A" and started.meter_start_wh is None


async def test_v201_update_for_unknown_transaction_starts_it(csms: tuple) -> None:
    server, events = csms
    async with charger(server, "CP-U", "ocpp2.0.1") as cp:
        await cp.call(_tx_event("Updated", 5, energy_wh=10.0))
        (started,) = await events.wait_kind(SessionStarted, "CP-U")
    assert started.transaction_id == "tx-A"
    assert server.counters.rejected["tx_implicit_start"] == 1


async def test_v201_ev_charging_needs(csms: tuple) -> None:
    server, events = csms
    async with charger(server, "CP-N", "ocpp2.0.1") as cp:
        reply = await cp.call(call201.NotifyEVChargingNeeds(evse_id=1, charging_needs={
            "requested_energy_transfer": "AC_three_phase",
            "departure_time": "2030-01-01T08:00:00Z",
            "ac_charging_parameters": {"energy_amount": 20000, "ev_min_current": 6,
                                       "ev_max_current": 16, "ev_max_voltage": 400}}))
        assert reply.status == "Accepted"
        (needs,) = await events.wait_kind(ChargingNeeds, "CP-N")
    assert needs.connector == 1
    assert needs.energy_needed_kwh == 20.0
    assert needs.max_current == 16.0
    assert needs.departure == datetime(2030, 1, 1, 8, tzinfo=UTC)


async def test_other_actions_answered_correctly(csms: tuple, version: str) -> None:
    server, _ = csms
    async with raw_socket(server, "CP-X", version) as ws:
        # OCPP-J 1.6 §4.2.3, 2.0.1 part 4 §4.3: a CSMS→charger action sent the wrong way is
        # known to the version but not supported; an action no version defines is not
        # implemented (the ocpp package 2.1.0 swaps the two).
        action = "GetConfiguration" if version == "ocpp1.6" else "GetVariables"
        await ws.send(f'[2,"a","{action}",{{}}]')
        assert await asyncio.wait_for(ws.recv(), 5) == (
            f'[4,"a","NotSupported","{action} is not supported",{{}}]')
        await ws.send('[2,"b","FlyToTheMoon",{}]')
        assert await asyncio.wait_for(ws.recv(), 5) == (
            '[4,"b","NotImplemented","unknown action \'FlyToTheMoon\'",{}]')
        assert (await exchange(ws, '[2,"c","DataTransfer",{"vendorId":"x"}]')) == [
            3, "c", {"status": "UnknownVendorId"}]
        ok = await exchange(ws, '[2,"d","SecurityEventNotification",{"type":"x",'
                                f'"timestamp":"{now_iso()}"}}]')
        assert ok == [3, "d", {}]
        # The connection is still fine afterwards.
        assert (await exchange(ws, '[2,"e","Heartbeat",{}]'))[:2] == [3, "e"]
    assert server.counters.rejected["call_NotImplemented"] == 1
    assert server.counters.rejected["call_NotSupported"] == 1


async def test_duplicate_message_id_gets_same_answer_without_side_effects(
        csms: tuple) -> None:
    server, events = csms
    frame = json.dumps([2, "dup-1", "StartTransaction", {
        "connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": now_iso()}])
    async with raw_socket(server, "CP-D", "ocpp1.6") as ws:
        first = await exchange(ws, frame)
        second = await exchange(ws, frame)
    assert first == second and first[0] == 3
    assert len(events.of(SessionStarted, "CP-D")) == 1
    assert server.counters.rejected["duplicate_message"] == 1


async def test_client_without_subprotocol_is_served_as_16(csms: tuple) -> None:
    """Many real chargers offer no subprotocol: served as OCPP 1.6 by default, and the
    charger id is the last path segment, percent-decoded, whatever prefix comes before."""
    server, events = csms
    async with connect(f"ws://127.0.0.1:{server.port}/steve/websocket/CP%3A16") as ws:
        assert ws.subprotocol is None
        await ws.send('[2,"b","BootNotification",{"chargePointVendor":"A",'
                      '"chargePointModel":"B"}]')
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer[:2] == [3, "b"] and answer[2]["status"] == "Accepted"
        assert server.protocol_of("CP:16") == "ocpp1.6"
    (booted,) = events.of(ChargerBooted, "CP:16")
    assert booted.protocol == "ocpp1.6"


def test_no_subprotocol_must_be_a_served_version() -> None:
    with pytest.raises(ValueError, match="no_subprotocol"):
        CsmsConfig(subprotocols=("ocpp2.0.1",))
    assert CsmsConfig(subprotocols=("ocpp2.0.1",), no_subprotocol="ocpp2.0.1")
    assert CsmsConfig(subprotocols=("ocpp2.0.1",), no_subprotocol=None)


async def test_client_without_subprotocol_closed_when_configured(
        make_csms: CsmsFactory) -> None:
    server, events = await make_csms(no_subprotocol=None)
    async with connect(f"ws://127.0.0.1:{server.port}/CP-0") as ws:
        assert ws.subprotocol is None
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1002
    async with connect(f"ws://127.0.0.1:{server.port}/CP-0", subprotocols=["ocpp1.5"]) as ws:
        with contextlib.suppress(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1002
    assert server.counters.rejected["no_subprotocol"] == 2
    assert events.of(ChargerOnline) == []


async def test_permessage_deflate_only_when_configured(make_csms: CsmsFactory) -> None:
    plain, _ = await make_csms()
    deflating, _ = await make_csms(compression=True)
    for server, expected in ((plain, None), (deflating, "permessage-deflate")):
        async with connect(f"ws://127.0.0.1:{server.port}/CP-Z", subprotocols=["ocpp1.6"],
                           compression="deflate") as ws:
            assert ws.response is not None
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
            assert (extensions.split(";")[0] if extensions else None) == expected
            assert (await exchange(ws, '[2,"h","Heartbeat",{}]'))[:2] == [3, "h"]


async def test_subprotocol_negotiation_prefers_server_order(csms: tuple) -> None:
    server, _ = csms
    async with connect(f"ws://127.0.0.1:{server.port}/CP-P",
                       subprotocols=["ocpp1.6", "ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp2.0.1"
    async with connect(f"ws://127.0.0.1:{server.port}/a/b/CP%2DQ",
                       subprotocols=["ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
        await exchange(ws, '[2,"h","Heartbeat",{}]')
        assert server.connected() == frozenset({"CP-Q"})


async def test_silent_charger_declared_offline_and_closed(make_csms: CsmsFactory,
                                                          version: str, msgs: Msgs) -> None:
    csms, events = await make_csms(heartbeat_interval_s=1, offline_after_s=0.3)
    async with charger(csms, "CP-Q", version) as cp:
        await cp.call(msgs.boot())
        for _ in range(3):  # talking keeps it alive
            await asyncio.sleep(0.15)
            await cp.call(msgs.heartbeat())
        assert events.of(ChargerOffline) == []
        (offline,) = await events.wait_kind(ChargerOffline, "CP-Q", within_s=3)
        assert "silent" in offline.reason
        await asyncio.wait_for(cp.ws.wait_closed(), 3)
    await asyncio.sleep(0.05)
    assert len(events.of(ChargerOffline, "CP-Q")) == 1
    assert csms.connected() == frozenset()


async def test_offline_follows_the_injected_clock(make_csms: CsmsFactory, msgs: Msgs,
                                                 version: str) -> None:
    fake_now = [datetime(2024, 5, 1, 12, tzinfo=UTC)]
    csms, events = await make_csms(clock=lambda: fake_now[0], heartbeat_interval_s=1,
                                   offline_after_s=0.25)
    async with charger(csms, "CP-C", version) as cp:
        await cp.call(msgs.boot())
        await asyncio.sleep(0.4)  # real time passes, the fake clock does not
        assert events.of(ChargerOffline) == []
        fake_now[0] += timedelta(seconds=1)
        (offline,) = await events.wait_kind(ChargerOffline, "CP-C", within_s=3)
    assert offline.at == datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC)


async def test_new_connection_replaces_old_one(csms: tuple, version: str, msgs: Msgs) -> None:
    server, events = csms
    async with charger(server, "CP-R", version) as old:
        await old.call(msgs.heartbeat())
        async with charger(server, "CP-R", version) as new:
            await new.call(msgs.heartbeat())
            await asyncio.wait_for(old.ws.wait_closed(), 3)
            assert server.connected() == frozenset({"CP-R"})
            assert events.of(ChargerOffline, "CP-R") == []
    await events.wait_kind(ChargerOffline, "CP-R")
    assert len(events.of(ChargerOnline, "CP-R")) == 2


async def test_stop_closes_everything(make_csms: CsmsFactory, version: str,
                                      msgs: Msgs) -> None:
    csms, events = await make_csms()
    async with charger(csms, "CP-Z", version) as cp:
        await cp.call(msgs.heartbeat())
        await csms.stop()
        await asyncio.wait_for(cp.ws.wait_closed(), 3)
        assert cp.ws.close_code == 1001
    (offline,) = events.of(ChargerOffline, "CP-Z")
    assert offline.charger == "CP-Z"


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,12}", fullmatch=True),
                                      inner, max_size=3), max_leaves=12))
def test_snake_keys_spells_like_the_ocpp_package(payload: object) -> None:
    """The handlers read the keys the ocpp package's converter would give them."""
    assert snake_keys(payload) == camel_to_snake_case(payload)
