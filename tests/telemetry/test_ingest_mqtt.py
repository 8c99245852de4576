"""Telemetry through a real Mosquitto into the real app: publish → rows in SQLite →
windows closed → API and metrics; bad messages counted per source and reason, never
stored; station values become MeterReading events on the bus."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from brokers import Mosquitto
from waits import eventually

from gridshare.app import build_app, serve_options
from gridshare.clock import FakeClock
from gridshare.config import parse_site_config
from gridshare.events import MeterReading
from gridshare.store import Store

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SITE = """
site: grid
mqtt: {{url: "{url}"}}
telemetry: {{window: 60, lateness: 20, clock_skew: 30}}
groups:
  - {{id: main, max_current: 100, chargers: [cp-1]}}
chargers:
  - {{id: cp-1, max_current: 32}}
meters:
  - {{id: m-1, feeder: F1, substation: S1, region: north}}
  - {{id: m-2, feeder: F1, substation: S1, region: north}}
  - {{id: m-3, feeder: F2, substation: S1, region: north}}
"""


async def publish(broker: Mosquitto, items: list[tuple[str, Any]]) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, body in items:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            await client.publish(topic, payload, qos=1)


def reading(meter: str, offset_s: float, power_w: float, **extra: Any) -> tuple[str, Any]:
    return (f"gridshare/grid/ami/{meter}",
            {"meter_id": meter, "ts": T0.timestamp() + offset_s, "power_w": power_w,
             "energy_wh": 1000.0 + offset_s, **extra})


class Rig:
    def __init__(self, tmp_path: Path, broker: Mosquitto) -> None:
        config = parse_site_config(SITE.format(url=broker.url))
        self.clock = FakeClock(T0 + timedelta(seconds=75))  # readings up to T0+70 s
        self.db = f"sqlite:///{tmp_path / 'gs.db'}"
        options = serve_options(config, host="127.0.0.1", ocpp_port=0, api_port=0,
                                db_url=self.db)
        self.app = build_app(config.topology, options, clock=self.clock)
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        await self.app.start()
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.app.api_port}")
        link = self.app.telemetry.link if self.app.telemetry else None
        assert link is not None
        await eventually(lambda: link.connected, 10)

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        await self.app.stop()

    async def get(self, path: str, **params: Any) -> Any:
        assert self.client is not None
        r = await self.client.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
async def rig(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Rig]:
    started = Rig(tmp_path, broker)
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def stored(db: str, table: str) -> int:
    store = Store(db)
    await store.start()
    try:
        return await store.count(table)
    finally:
        await store.stop()


async def test_publish_to_rows_windows_and_api(rig: Rig, broker: Mosquitto) -> None:
    service = rig.app.telemetry
    assert service is not None
    good = [reading("m-1", 0, 1000, current_a=[1.0, 2.0, 3.0]), reading("m-1", 30, 3000),
            reading("m-2", 10, 500), reading("m-3", 59, 4000),
            reading("m-1", 30, 9999),  # duplicate: same meter, same ts
            reading("m-1", 70, 1000)]  # next window
    bad = [("gridshare/grid/ami/m-1", b"{oops"),
           ("gridshare/grid/ami/m-2", {"meter_id": "m-2", "ts": T0.timestamp() + 5,
                                       "power_w": 5,
                                       "energy_wh": -1}),
           ("gridshare/grid/ami/m-1", {"meter_id": "m-2", "ts": T0.timestamp(),
                                       "power_w": 1, "energy_wh": 1}),
           ("gridshare/grid/ami/m-9", {"meter_id": "m-9", "ts": T0.timestamp(),
                                       "power_w": 1, "energy_wh": 1}),
           ("gridshare/grid/ami/m-3", {"meter_id": "m-3", "ts": T0.timestamp() + 3600,
                                       "power_w": 1, "energy_wh": 1}),
           ("gridshare/grid/ami/m-3", {"meter_id": "m-3", "ts": T0.timestamp(),
                                       "energy_wh": 1}),
           ("gridshare/grid/ami/m-3", {"meter_id": "m-3", "ts": T0.timestamp() + 1,
                                       "power_w": 1, "energy_wh": 1,
                                       "current_a": [1, 2]})]
    await publish(broker, good + bad)
    counts = service.counts["ami"]
    await eventually(lambda: counts.accepted + counts.duplicates
                     + sum(counts.rejected.values()) == len(good) + len(bad))
    assert counts.accepted == 5 and counts.duplicates == 1
    assert counts.rejected == {"bad_json": 1, "out_of_range": 1, "id_mismatch": 1,
                               "unknown_meter": 1, "future_timestamp": 1,
                               "missing_field": 1, "bad_phases": 1}
    assert await stored(rig.db, "ami_readings") == 5  # bad ones never stored
    # The first window [T0, T0+60) closes once the clock passes its end + lateness (20 s).
    rig.clock.set(T0 + timedelta(seconds=81))
    await eventually(lambda: service.windows_closed >= 4, 10)
    body = await rig.get("/api/v1/demand", level="feeder", key="F1")
    (f1,) = body["windows"]
    assert f1["start"] == "2026-11-30T12:00:00Z" and f1["end"] == "2026-11-30T12:01:00Z"
    assert f1["demand_kw"] == pytest.approx(2.5)  # m-1 mean 2 kW + m-2 0.5 kW
    assert (f1["meters_reporting"], f1["meters_expected"], f1["readings"]) == (2, 2, 3)
    assert [w["key"] for w in body["running"]] == ["F1"]  # m-1's reading at +70 s
    sub = await rig.get("/api/v1/demand", level="substation", key="S1",
                        **{"from": "2026-11-30T12:00:00Z", "to": "2026-11-30T12:00:30Z"})
    assert [w["demand_kw"] for w in sub["windows"]] == [pytest.approx(6.5)]
    empty = await rig.get("/api/v1/demand", level="region",
                          **{"from": "2026-11-30T13:00:00+00:00"})
    assert empty["windows"] == []
    assert await stored(rig.db, "demand_windows") == 4  # F1, F2, S1, north
    assert service.area_load_kw("F2") == (pytest.approx(4.0), pytest.approx(21.0))
    ingest = await rig.get("/api/v1/ingest")
    assert ingest["enabled"] is True
    assert ingest["sources"]["ami"]["rejected"]["bad_json"] == 1
    assert ingest["sources"]["ami"]["accepted"] == 5
    assert ingest["sources"]["ami"]["duplicates"] == 1
    assert rig.client is not None
    missing = await rig.client.get("/api/v1/demand", params={"level": "feeder", "key": "F9"})
    assert missing.status_code == 404
    metrics = (await rig.client.get("/metrics")).text
    assert 'gridshare_telemetry_rejected_total{reason="bad_json",source="ami"} 1.0' in metrics
    assert 'gridshare_telemetry_accepted_total{source="ami"} 5.0' in metrics
    assert 'gridshare_telemetry_rejected_total{reason="unknown_station",source="stations"}' \
        in metrics


async def test_late_reading_is_stored_but_not_aggregated(rig: Rig, broker: Mosquitto) -> None:
    service = rig.app.telemetry
    assert service is not None
    rig.clock.set(datetime.fromtimestamp(T0.timestamp() + 200, UTC))
    await eventually(lambda: service.aggregator.closed_until >= T0.timestamp() + 120, 10)
    await publish(broker, [reading("m-1", 10, 1000)])
    counts = service.counts["ami"]
    await eventually(lambda: counts.accepted == 1)
    assert counts.late == 1
    assert service.aggregator.open_windows() == 0
    assert await stored(rig.db, "ami_readings") == 1


async def test_station_values_become_meter_readings(rig: Rig, broker: Mosquitto) -> None:
    seen: list[MeterReading] = []
    sub = rig.app.bus.subscribe("test-stations")

    async def collect() -> None:
        async for event in sub:
            if isinstance(event, MeterReading):
                seen.append(event)

    task = asyncio.create_task(collect())
    try:
        ts = T0.timestamp() + 74  # the clock is at T0 + 75 s
        await publish(broker, [
            ("gridshare/grid/stations/cp-1",
             {"station_id": "cp-1", "connector_id": 1, "session_id": "tx-1",
              "connector_type": "Type2", "power_kw": 7.4, "current_a": [10.7, 10.7, 10.7],
              "voltage_v": 230, "energy_kwh": 3.25, "soc_percent": 55, "event_ts": ts}),
            ("gridshare/grid/stations/cp-9",
             {"station_id": "cp-9", "connector_id": 1, "power_kw": 1, "event_ts": ts}),
        ])
        await eventually(lambda: len(seen) == 1)
        (event,) = seen
        assert (event.charger, event.connector, event.transaction_id) == ("cp-1", 1, "tx-1")
        assert event.power_w == pytest.approx(7400.0)
        assert event.energy_wh == pytest.approx(3250.0)
        assert event.soc_percent == 55 and event.voltage_v == 230
        assert event.at == datetime.fromtimestamp(ts, UTC)
        service = rig.app.telemetry
        assert service is not None
        await eventually(lambda: service.counts["stations"].rejected.get(
            "unknown_station") == 1)
        assert service.counts["stations"].accepted == 1
        # The zone/station load service sees it as it sees an OCPP meter value.
        await eventually(lambda: rig.app.loads.station_json("cp-1")["now"]["kw"] > 7)
    finally:
        task.cancel()
        sub.close()
