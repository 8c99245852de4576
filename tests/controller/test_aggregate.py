"""The load service: bus events folded into each station's windows, closed by the fake
clock a grace behind now, zone sums and the JSON the API serves."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from gridshare.bus import MemoryBus
from gridshare.clock import FakeClock
from gridshare.config import parse_site
from gridshare.controller.aggregate import LoadService, UnknownId, reading_kw
from gridshare.core.topology import Topology
from gridshare.events import MeterReading, SessionStarted, SessionStopped, StatusChanged

from .conftest import T0, t

SITE = """
site: loads
voltage: 230
zones:
  - {id: Z1, capacity_kw: 200}
  - {id: Z2}
groups:
  - id: main
    max_current: 400
    chargers: [dc1, dc2, ac1, ac2]
chargers:
  - id: dc1
    max_power: 150
    zone: Z1
    connectors: [{type: CCS, max_power: 150}, {type: CHAdeMO, max_power: 50}]
  - {id: dc2, max_current: 250, phases: 3, zone: Z1}
  - {id: ac1, max_current: 16, phases: 1, phase: L2, zone: Z2}
  - {id: ac2, max_current: 32, phases: 3}
"""

NO_ZONES = """
site: plain
voltage: 230
groups:
  - {id: main, max_current: 63, chargers: [a1]}
chargers:
  - {id: a1, max_current: 32, phases: 3}
"""


@pytest.fixture
def topo() -> Topology:
    return parse_site(SITE, "loads-site")


@pytest.fixture
def loads(topo: Topology, clock: FakeClock) -> LoadService:
    service = LoadService(topo, None, clock, tick_s=None)
    service.tick()
    return service


def kw(charger: str, connector: int, seconds: float, power_kw: float,
       tx: str | None = None) -> MeterReading:
    return MeterReading(charger, connector, t(seconds), tx, power_w=power_kw * 1000)


def test_power_wins_else_currents_at_the_site_voltage(topo: Topology) -> None:
    dc, ac = topo.chargers["dc2"], topo.chargers["ac1"]
    assert reading_kw(MeterReading("dc2", 1, T0, power_w=50_000, current_a=(1.0,) * 3),
                      dc, 230) == 50
    assert reading_kw(MeterReading("dc2", 1, T0, current_a=(10.0, 10.0, 10.0)),
                      dc, 230) == pytest.approx(6.9)
    # A missing phase of a 3-phase charger counts as its largest (the controller's rule).
    assert reading_kw(MeterReading("dc2", 1, T0, current_a=(10.0, None, 4.0)),
                      dc, 230) == pytest.approx(24 * 0.23)
    # A 1-phase charger: its one current, whichever phase it reports it on.
    assert reading_kw(MeterReading("ac1", 1, T0, current_a=(None, 16.0, None)),
                      ac, 230) == pytest.approx(3.68)
    assert reading_kw(MeterReading("ac1", 1, T0, energy_wh=10.0), ac, 230) is None
    assert reading_kw(MeterReading("dc2", 1, T0, power_w=-5.0), dc, 230) == 0


def test_windows_close_a_grace_behind_the_clock(loads: LoadService, clock: FakeClock) -> None:
    loads.handle(kw("dc1", 1, 0, 100))
    loads.handle(kw("dc1", 2, 30, 40))
    clock.set(t(63))
    assert [w for w in loads.tick() if w.start == T0] == []
    # Stamped in the first minute, arriving 3 s into the next: still counted there.
    loads.handle(kw("dc1", 1, 58, 0))
    clock.set(t(65))
    assert {w.station for w in loads.tick() if w.start == T0} == set(loads.stations)
    window = loads.stations["dc1"].history()[-1]
    assert window.start == T0 and window.closed
    assert window.avg_kw == pytest.approx((100 * 58 + 40 * 30) / 60)
    assert window.max_kw == 140 and window.last_kw == 40
    assert [c.max_kw for c in window.connectors] == [100, 40]
    # Now the first minute is closed: a reading stamped in it is late and dropped.
    loads.handle(kw("dc1", 1, 59, 500))
    assert loads.counters["late"] == 1
    assert loads.stations["dc1"].history()[-1] == window


def test_sessions_from_the_bus_and_a_stop_ends_the_draw(loads: LoadService,
                                                        clock: FakeClock) -> None:
    loads.handle(SessionStarted("dc2", 1, "tx1", t(1)))
    loads.handle(kw("dc2", 1, 2, 120, "tx1"))
    now = loads.station_now("dc2", t(10))
    assert (now.kw, now.active_sessions, now.active_connectors) == (120, 1, 1)
    loads.handle(SessionStopped("dc2", 1, "tx1", t(20)))
    now = loads.station_now("dc2", t(21))
    assert (now.kw, now.active_sessions, now.active_connectors) == (0, 0, 0)
    # A reading of the stopped transaction does not start it again.
    loads.handle(kw("dc2", 1, 19, 120, "tx1"))
    assert loads.station_now("dc2", t(21)).active_sessions == 0
    clock.set(t(66))
    loads.tick()
    window = loads.stations["dc2"].history()[-1]
    assert window.active_sessions == 1 and window.active_connectors == 1
    assert window.avg_kw == pytest.approx(120 * 18 / 60)


def test_a_session_begun_before_we_started_counts_from_its_readings(
        loads: LoadService) -> None:
    loads.handle(kw("dc2", 1, 5, 60, "tx-old"))
    assert loads.station_now("dc2", t(6)).active_sessions == 1


def test_what_is_not_a_station_connector_is_ignored_and_counted(loads: LoadService) -> None:
    for event in (kw("house-meter", 1, 1, 9), kw("dc2", 0, 1, 9), kw("dc2", 7, 1, 9),
                  MeterReading("dc2", 1, t(1), energy_wh=5.0),
                  StatusChanged("dc2", 1, "Charging", t(1))):  # type: ignore[arg-type]
        loads.handle(event)
    assert loads.counters["ignored"] == 4 and loads.counters["accepted"] == 0
    assert loads.station_now("dc2", t(2)).kw == 0


def test_a_silent_charger_stops_counting_after_the_hold(topo: Topology,
                                                        clock: FakeClock) -> None:
    loads = LoadService(topo, None, clock, hold_s=30, tick_s=None)
    loads.handle(kw("dc2", 1, 0, 80))
    assert loads.zone_kw("Z1", t(29)) == 80
    assert loads.zone_kw("Z1", t(30)) == 0


def test_zone_json_live_totals_and_the_last_closed_window(loads: LoadService,
                                                          clock: FakeClock) -> None:
    loads.handle(kw("dc1", 1, 0, 100))
    loads.handle(kw("dc2", 1, 30, 50))
    loads.handle(SessionStarted("ac1", 1, "tx9", t(10)))
    clock.set(t(40))
    z1, z2 = loads.zones_json()
    assert z1["id"] == "Z1" and z1["capacity_kw"] == 200 and z1["stations"] == ["dc1", "dc2"]
    assert z1["live"]["total_kw"] == 150 and z1["live"]["utilisation_pct"] == 75
    assert z1["live"]["active_stations"] == 2
    # The service started at 11:59:55 (the grace behind T0): that minute is empty.
    assert z1["last_window"]["start"] == "2025-03-01T11:59:00Z"
    assert z1["last_window"]["avg_kw"] == 0
    assert z2["live"]["utilisation_pct"] is None and z2["live"]["active_stations"] == 1
    clock.set(t(70))
    z1 = loads.zones_json()[0]
    last = z1["last_window"]
    assert last["start"] == "2025-03-01T12:00:00Z" and last["closed"]
    assert last["avg_kw"] == pytest.approx(100 + 50 * 30 / 60, abs=1e-3)
    assert last["utilisation_pct"] == pytest.approx(62.5)
    assert last["active_stations"] == 2 and last["stations"] == 2
    one = loads.zone_json("Z1")
    assert [s["id"] for s in one["station_loads"]] == ["dc1", "dc2"]
    dc1 = one["station_loads"][0]
    assert dc1["now"]["kw"] == 100 and dc1["last_window"]["avg_kw"] == 100
    assert dc1["current"]["closed"] is False


def test_station_json_history_and_current(loads: LoadService, clock: FakeClock) -> None:
    for minute in range(5):
        loads.handle(kw("ac2", 1, 60 * minute, 10 * minute))
    clock.set(t(4 * 60 + 30))
    out = loads.station_json("ac2", windows=2)
    assert out["station"] == "ac2" and out["zone"] is None and out["window_s"] == 60
    assert [w["avg_kw"] for w in out["windows"]] == [20, 30]
    assert out["current"]["start"] == "2025-03-01T12:04:00Z"
    assert out["current"]["until"] == "2025-03-01T12:04:30Z"
    assert out["now"]["kw"] == 40
    assert len(loads.station_json("ac2")["windows"]) == 5  # 11:59 (empty) to 12:03


def test_unknown_ids_name_what_is_known(loads: LoadService) -> None:
    with pytest.raises(UnknownId, match=r"unknown station 'x9'.*dc1"):
        loads.station_json("x9")
    with pytest.raises(UnknownId, match=r"unknown zone 'Z9' \(zones: Z1, Z2\)"):
        loads.zone_json("Z9")


def test_a_site_without_zones_aggregates_its_stations(clock: FakeClock) -> None:
    loads = LoadService(parse_site(NO_ZONES, "plain"), None, clock, tick_s=None)
    loads.handle(kw("a1", 1, 0, 11))
    assert loads.zones_json() == []
    assert loads.station_json("a1")["now"]["kw"] == 11


def test_a_configurable_window_length(topo: Topology, clock: FakeClock) -> None:
    loads = LoadService(topo, None, clock, window_s=15, tick_s=None)
    loads.handle(kw("dc2", 1, 0, 10))
    clock.set(t(40))
    out = loads.station_json("dc2")
    assert out["window_s"] == 15 and len(out["windows"]) == 2
    with pytest.raises(ValueError, match="window"):
        LoadService(topo, None, clock, window_s=7)


async def test_fed_by_the_bus_and_ticked_by_the_clock(topo: Topology,
                                                      clock: FakeClock) -> None:
    bus = MemoryBus()
    loads = LoadService(topo, bus, clock, tick_s=0.01)
    await loads.start()
    try:
        bus.publish(kw("dc1", 1, 1, 75))
        for _ in range(500):
            if loads.counters["accepted"]:
                break
            await asyncio.sleep(0.002)
        assert loads.zone_kw("Z1", t(2)) == 75
        clock.advance(66)
        for _ in range(500):  # the ticker closes the minute on its own
            if loads.stations["dc1"].history()[-1].start == T0:
                break
            await asyncio.sleep(0.002)
        assert loads.stations["dc1"].history()[-1].start == T0
    finally:
        await loads.stop()
    assert bus.subscribers == ()
    assert clock.now() - T0 == timedelta(seconds=66)


def test_a_flood_is_counted_apart_from_late_values(loads: LoadService,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gridshare.core.dr import aggregate

    monkeypatch.setattr(aggregate, "MAX_SAMPLES_PER_WINDOW", 2)
    for second in range(4):
        loads.handle(kw("dc2", 1, second, 10))
    assert (loads.counters["accepted"], loads.counters["full"], loads.counters["late"]) \
        == (2, 2, 0)
