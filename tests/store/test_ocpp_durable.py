"""The OCPP answer path with the store's group-commit writer, in one process: answers
only after the commit, one transaction shared by many chargers, no row written twice by
the batched path, and a CallError (InternalError) when the database refuses — the
charger's retry then stores what was refused, once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from gridshare.adapters.ocpp import CentralSystem, CsmsConfig
from gridshare.store import Store

BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[Store, CentralSystem]]:
    store = Store(f"sqlite:///{tmp_path / 'gs.db'}")
    await store.start()
    csms = CentralSystem(CsmsConfig(allow_auto_register=True), store.record_event,
                         durable=store.durable.write)
    await csms.start(port=0)
    try:
        yield store, csms
    finally:
        await csms.stop()
        await store.stop()


class Charger:
    """Raw OCPP 1.6 frames, one call at a time; the central system's own calls are
    accepted. Also the NATS gateway tests' charger."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seq = 0

    async def call(self, action: str, payload: dict[str, Any]) -> list[Any]:
        self.seq += 1
        await self.ws.send(json.dumps([2, f"m{self.seq}", action, payload]))
        async with asyncio.timeout(60):
            while True:
                frame = json.loads(await self.ws.recv())
                if frame[0] != 2:
                    assert frame[1] == f"m{self.seq}", frame
                    return list(frame)
                await self.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))


async def open_charger(csms: CentralSystem, cid: str) -> AsyncIterator[Charger]:
    async with connect(f"ws://127.0.0.1:{csms.port}/{cid}",
                       subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
        charger = Charger(ws)
        assert (await charger.call("BootNotification", {
            "chargePointVendor": "t", "chargePointModel": "m"}))[0] == 3
        yield charger


def meter(tx: int, at: datetime, wh: float) -> dict[str, Any]:
    return {"connectorId": 1, "transactionId": tx, "meterValue": [{
        "timestamp": iso(at), "sampledValue": [{
            "value": str(wh), "unit": "Wh", "measurand": "Energy.Active.Import.Register"}]}]}


async def test_the_answer_comes_after_the_commit_and_nothing_is_written_twice(
        site: tuple[Store, CentralSystem]) -> None:
    store, csms = site
    async for charger in open_charger(csms, "cp-1"):
        start = await charger.call("StartTransaction", {
            "connectorId": 1, "idTag": "T", "meterStart": 100, "timestamp": iso(BASE)})
        assert start[0] == 3
        tx = start[2]["transactionId"]
        # committed before the answer: visible at once, without any flush
        assert [(r["transaction_id"], r["stopped_at"]) for r in await store.rows("sessions")] \
            == [(str(tx), None)]
        for i in range(1, 6):
            assert (await charger.call("MeterValues",
                                       meter(tx, BASE + timedelta(seconds=i), 100 + i)))[0] == 3
            assert await store.count("meter_readings") == i
        stop = await charger.call("StopTransaction", {
            "transactionId": tx, "meterStop": 106, "timestamp": iso(BASE + timedelta(10)),
            "reason": "Local"})
        assert stop[0] == 3
        row = (await store.rows("sessions"))[0]
        assert (row["meter_stop_wh"], row["stop_reason"]) == (106.0, "Local")
    await store.flush()  # the batched path has seen every event by now
    assert await store.count("sessions") == 1
    assert await store.count("meter_readings") == 5
    kinds = [r["kind"] for r in await store.rows("events", limit=100)]
    assert kinds.count("SessionStarted") == 1 and kinds.count("SessionStopped") == 1
    assert store.durable.rows == 7


async def test_many_chargers_share_one_commit(site: tuple[Store, CentralSystem]) -> None:
    store, csms = site
    chargers = 40
    gens = [open_charger(csms, f"cp-{i}") for i in range(chargers)]
    opened = [await anext(g) for g in gens]
    try:
        answers = await asyncio.gather(*(c.call("StartTransaction", {
            "connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": iso(BASE)})
            for c in opened))
        assert all(a[0] == 3 for a in answers)
        assert await store.count("sessions") == chargers
        assert store.durable.commits < chargers  # group commit, not one fsync each
    finally:
        for g in gens:
            await g.aclose()


async def test_a_refused_write_is_a_call_error_and_the_retry_stores_it_once(
        site: tuple[Store, CentralSystem], monkeypatch: pytest.MonkeyPatch) -> None:
    store, csms = site
    real = store.durable._commit
    failing = [True]

    async def commit(items: Any) -> None:
        if failing:
            failing.pop()
            raise RuntimeError("disk full")
        await real(items)

    monkeypatch.setattr(store.durable, "_commit", commit)
    async for charger in open_charger(csms, "cp-1"):
        payload = {"connectorId": 1, "idTag": "T", "meterStart": 5, "timestamp": iso(BASE)}
        refused = await charger.call("StartTransaction", payload)
        assert refused[0] == 4 and refused[2] == "InternalError", refused
        assert await store.count("sessions") == 0
        again = await charger.call("StartTransaction", payload)  # the charger's retry
        assert again[0] == 3
        assert await store.count("sessions") == 1
    await store.flush()
    assert await store.count("sessions") == 1  # the batched path did not add it again
    assert csms.counters.rejected.get("store_failed") == 1


async def test_ocpp201_transaction_events_are_committed_before_their_answers(
        site: tuple[Store, CentralSystem]) -> None:
    store, csms = site
    async with connect(f"ws://127.0.0.1:{csms.port}/cp-2",
                       subprotocols=["ocpp2.0.1"]) as ws:  # type: ignore[list-item]
        charger = Charger(ws)
        boot = await charger.call("BootNotification", {
            "chargingStation": {"model": "m", "vendorName": "v"}, "reason": "PowerUp"})
        assert boot[0] == 3

        def event(kind: str, seq: int, wh: float, **info: Any) -> dict[str, Any]:
            at = iso(BASE + timedelta(seconds=seq))
            return {"eventType": kind, "timestamp": at, "triggerReason": "MeterValuePeriodic",
                    "seqNo": seq, "transactionInfo": {"transactionId": "tx-a", **info},
                    "evse": {"id": 1, "connectorId": 1},
                    "meterValue": [{"timestamp": at, "sampledValue": [{
                        "value": wh, "measurand": "Energy.Active.Import.Register"}]}]}

        assert (await charger.call("TransactionEvent", event("Started", 0, 500.0)))[0] == 3
        [row] = await store.rows("sessions")
        assert (row["transaction_id"], row["meter_start_wh"]) == ("tx-a", 500.0)
        assert await store.count("meter_readings") == 1
        assert (await charger.call("TransactionEvent", event("Updated", 1, 700.0)))[0] == 3
        assert await store.count("meter_readings") == 2
        ended = await charger.call("TransactionEvent",
                                   event("Ended", 2, 900.0, stoppedReason="Local"))
        assert ended[0] == 3
        [row] = await store.rows("sessions")
        assert (row["meter_stop_wh"], row["stop_reason"]) == (900.0, "Local")
        assert await store.count("meter_readings") == 3
    await store.flush()
    assert await store.count("sessions") == 1
    assert await store.count("meter_readings") == 3
