"""A batch whose commit fails is not acknowledged: the link reconnects and the broker
redelivers it, so the reading is stored once the database is back."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiomqtt
from brokers import Mosquitto
from sqlalchemy import Table
from waits import eventually

from gridshare.clock import SystemClock
from gridshare.config import MeterSpec, MqttSpec, TelemetrySpec
from gridshare.controller.telemetry import TelemetryService
from gridshare.store import Store


async def test_failed_commit_is_redelivered(tmp_path: Path, broker: Mosquitto) -> None:
    store = Store(f"sqlite:///{tmp_path / 't.db'}")
    await store.start()
    real = store.insert_now
    failures = [1]

    async def flaky(table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError("disk unplugged")
        await real(table, rows)

    store.insert_now = flaky  # type: ignore[method-assign]
    service = TelemetryService(
        "t", [MeterSpec(id="m-1", feeder="F1")], [], TelemetrySpec(), SystemClock(),
        mqtt=MqttSpec(url=broker.url), store=store)
    await service.start()
    try:
        link = service.link
        assert link is not None
        await eventually(lambda: link.connected, 10)
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish("gridshare/t/ami/m-1", json.dumps(
                {"meter_id": "m-1", "ts": time.time() - 1, "power_w": 10.0,
                 "energy_wh": 5.0}), qos=1)
        await eventually(lambda: service.counts["ami"].accepted == 1, 20)
        assert link.commit_failures == 1
        assert link.connects == 2  # dropped on purpose, connected again
        assert await store.count("ami_readings") == 1
        assert service.counts["ami"].duplicates == 0
    finally:
        await service.stop()
        await store.stop()
