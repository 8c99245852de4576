"""The service without a broker: commit batches directly; restart keeps open windows;
area_load_kw; the API routes without telemetry and without a database."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gridshare.clock import FakeClock
from gridshare.config import MeterSpec, TelemetrySpec
from gridshare.controller.telemetry import TelemetryService
from gridshare.store import Store

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
METERS = [MeterSpec(id="m-1", feeder="F1", substation="S1"),
          MeterSpec(id="m-2", feeder="F1", substation="S1"),
          MeterSpec(id="m-3", feeder="F2", substation="S1", region="north")]


def msg(meter: str, offset: float, power: float) -> tuple[str, bytes]:
    return (f"gridshare/s/ami/{meter}", json.dumps(
        {"meter_id": meter, "ts": T0.timestamp() + offset, "power_w": power,
         "energy_wh": 1.0}).encode())


def service(clock: FakeClock, store: Store | None) -> TelemetryService:
    return TelemetryService("s", METERS, ["cp-1"], TelemetrySpec(window=60, lateness=10),
                            clock, store=store)


async def test_restart_refills_open_windows(tmp_path: Path) -> None:
    clock = FakeClock(T0 + timedelta(seconds=40))
    store = Store(f"sqlite:///{tmp_path / 'r.db'}")
    await store.start()
    try:
        first = service(clock, store)
        await first.commit([msg("m-1", 5, 1000), msg("m-2", 20, 3000), msg("m-1", -30, 10)])
        # The reading at -30 s moved nothing; the one at +20 s closed [T0-60, T0): the
        # latest closed window is F1's, 40 s old by the clock.
        assert first.area_load_kw("F1") == (pytest.approx(0.01), pytest.approx(40.0))
        assert first.area_load_kw("F2") == (0.0, math.inf)
        # A restart (same database): the window [T0, T0+60) is still open.
        second = service(clock, store)
        assert await second.restore() == 3
        await second.commit([msg("m-3", 30, 500), msg("m-1", 5, 1000)])  # one duplicate
        assert second.counts["ami"].duplicates == 1
        await second.commit([msg("m-1", 75, 0)])  # event time moves on: T0 window closes
        clock.set(T0 + timedelta(seconds=71))
        await second._close(clock.now().timestamp())
        demand, age = second.area_load_kw("S1")
        assert demand == pytest.approx(4.5) and age == pytest.approx(11.0)
        body = await second.demand_json("feeder", None, None, None)
        assert [(w["key"], w["demand_kw"]) for w in body["windows"]
                if w["start"] == "2026-11-30T12:00:00Z"] == [
            ("F1", pytest.approx(4.0)), ("F2", pytest.approx(0.5))]
        assert await store.count("demand_windows") >= 4
    finally:
        await store.stop()


async def test_ami_export_register_is_stored(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    await store.start()
    try:
        svc = service(FakeClock(T0 + timedelta(seconds=40)), store)
        topic, payload = msg("m-1", 5, -2000)
        exported = json.dumps({**json.loads(payload), "energy_export_wh": 812.5}).encode()
        await svc.commit([(topic, exported), msg("m-2", 5, 100)])
        rows = await store.rows("ami_readings")
        assert sorted((r["meter_id"], r["energy_export_wh"]) for r in rows) == [
            ("m-1", 812.5), ("m-2", None)]
    finally:
        await store.stop()


async def test_area_load_without_store_and_unknown_area() -> None:
    clock = FakeClock(T0 + timedelta(seconds=80))
    svc = service(clock, None)
    assert svc.area_load_kw("feeder:F2") == (0.0, math.inf)
    await svc.commit([msg("m-3", 10, 2000), msg("m-3", 20, 4000)])
    assert svc.area_load_kw("north") == (pytest.approx(3.0), pytest.approx(80.0))
    clock.set(T0 + timedelta(seconds=75))
    await svc._close(clock.now().timestamp())
    assert svc.area_load_kw("region:north") == (pytest.approx(3.0), pytest.approx(15.0))
    body = await svc.demand_json("region", "north", T0, T0 + timedelta(minutes=1))
    assert [w["demand_kw"] for w in body["windows"]] == [pytest.approx(3.0)]
    with pytest.raises(KeyError):
        svc.area_load_kw("F9")
    with pytest.raises(KeyError):
        svc.area_load_kw("feeder:north")
    with pytest.raises(KeyError):
        await svc.demand_json("feeder", "F9", None, None)


async def test_a_station_value_in_the_wrong_unit_is_refused_not_published() -> None:
    # power_kw 7400 from a 22 kW station (W sent as kW) read as 10,700 A drawn on a 32 A
    # charger, in a 63 A group: refused and counted, never on the bus nor stored
    from gridshare.bus import MemoryBus
    from gridshare.config import parse_site
    from gridshare.controller.telemetry import station_ratings

    topology = parse_site("""
site: s
voltage: 230
groups: [{id: g, max_current: 63, chargers: [cp-1]}]
chargers: [{id: cp-1, max_current: 32, phases: 3}]
""", "s.yaml")
    assert station_ratings(topology) == {"cp-1": (22_080.0, 32.0)}
    bus = MemoryBus()
    sub = bus.subscribe("t")
    svc = TelemetryService("s", METERS, ["cp-1"], TelemetrySpec(), FakeClock(T0),
                           publish=bus.publish, station_ratings=station_ratings(topology))

    def value(power_kw: float) -> tuple[str, bytes]:
        return ("gridshare/s/stations/cp-1", json.dumps(
            {"station_id": "cp-1", "connector_id": 1, "power_kw": power_kw,
             "event_ts": T0.timestamp()}).encode())

    await svc.commit([value(7400.0), value(7.4)])
    assert svc.counts["stations"].rejected == {"out_of_range": 1}
    assert svc.counts["stations"].accepted == 1
    published = []
    while (event := sub.get_nowait()) is not None:
        published.append(event)
    assert [e.power_w for e in published] == [7400.0]


async def test_bad_topic_and_station_counts() -> None:
    svc = service(FakeClock(T0), None)
    await svc.commit([("gridshare/s/ami/m-1/extra", b"{}"),
                      ("gridshare/s/stations/cp-1", b'{"station_id": "cp-1"}')])
    assert svc.counts["ami"].rejected == {"bad_topic": 1}
    assert svc.counts["stations"].rejected == {"missing_field": 1}
    assert svc.ingest_json()["sources"]["stations"]["rejected_total"] == 1
