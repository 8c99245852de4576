"""Regulation fed from the telemetry ingest's demand windows (AMI feeders, substations,
regions), on a fake clock: only closed windows in which enough meters reported are used
(scaled to all of them), the age is real so a stalled stream holds the safe state, and the
site file names the area with ``area_level`` (checked with file and line)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridshare.clock import FakeClock
from gridshare.config import (
    ConfigError,
    MeterSpec,
    RegulationSpec,
    TelemetrySpec,
    parse_site_config,
)
from gridshare.controller.regulation import (
    Battery,
    MqttAreaLoad,
    RegulationService,
    TelemetryAreaLoad,
    ZoneLoad,
    area_source,
    frequency_without_regulated,
)
from gridshare.controller.telemetry import TelemetryService

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
N = 10
UNITS = [Battery("b1", "site/b1/setpoint", "site/b1/soc", 50, 50, 10)]


def ingest(n: int = N) -> tuple[TelemetryService, FakeClock]:
    clock = FakeClock(T0)
    meters = [MeterSpec(id=f"m{i}", feeder="F1", substation="S1", region="north")
              for i in range(n)] + [MeterSpec(id="x", feeder="F2", substation="S1")]
    return TelemetryService("s1", meters, [], TelemetrySpec(window=1, lateness=0.5),
                            clock), clock


def feed(service: TelemetryService, at_s: float, kw: dict[str, float]) -> None:
    """Readings with event time T0 + at_s (the clock moved there first)."""
    clock = service.clock
    assert isinstance(clock, FakeClock)
    clock.set(T0 + timedelta(seconds=at_s))
    ts = (T0 + timedelta(seconds=at_s)).timestamp()
    asyncio.run(service.commit([
        (f"gridshare/s1/ami/{m}", json.dumps({"meter_id": m, "ts": ts, "power_w": v * 1000,
                                              "energy_wh": 1.0}).encode())
        for m, v in kw.items()]))


def everyone(kw: float, n: int = N) -> dict[str, float]:
    return {f"m{i}": kw for i in range(n)}


def test_closed_window_with_every_meter_and_its_real_age() -> None:
    service, clock = ingest()
    area = TelemetryAreaLoad(service, "feeder")
    with pytest.raises(LookupError, match="no closed demand window yet"):
        area.area_load_kw("F1")
    feed(service, 0.2, everyone(2.0))
    with pytest.raises(LookupError):  # the open window is never used (it is partial)
        area.area_load_kw("F1")
    feed(service, 1.6, everyone(3.0))  # watermark 1.6 ≥ 1 + 0.5: [0, 1) closes
    kw, age = area.area_load_kw("F1")
    assert kw == pytest.approx(20.0) and age == pytest.approx(0.6)
    clock.advance(2.0)
    assert area.area_load_kw("F1")[1] == pytest.approx(2.6)  # ages with the clock


def test_a_window_with_too_few_meters_is_skipped_and_a_nearly_full_one_completed() -> None:
    service, _ = ingest()
    area = TelemetryAreaLoad(service, "feeder", min_reporting=0.9)
    feed(service, 0.2, everyone(2.0))
    feed(service, 1.2, {f"m{i}": 3.0 for i in range(8)})  # 8 of 10: the stream stalls
    feed(service, 2.2, {f"m{i}": 4.0 for i in range(9)})  # 9 of 10
    feed(service, 3.6, {"m0": 1.0})  # closes [1, 2) and [2, 3)
    kw, age = area.area_load_kw("F1")
    assert kw == pytest.approx(38.0)  # 9 × 4 kW + m9 carried from [0, 1) at 2 kW
    assert age == pytest.approx(0.6)
    assert area.skipped == 0
    service2, _ = ingest()
    area2 = TelemetryAreaLoad(service2, "feeder", min_reporting=0.9)
    feed(service2, 0.2, everyone(2.0))
    feed(service2, 1.2, {f"m{i}": 3.0 for i in range(8)})
    feed(service2, 2.6, {"m0": 1.0})  # closes [1, 2) only: 8 of 10, skipped
    kw, age = area2.area_load_kw("F1")
    assert kw == pytest.approx(20.0) and age == pytest.approx(1.6)  # the older full one
    assert area2.skipped == 1


def test_a_meter_missing_from_a_window_counts_at_its_last_demand_not_the_mean() -> None:
    """A battery's meter (−20 kW) among 9 meters of 10 kW: when its reading falls past a
    window's edge, the area is not read 110 kW above the truth (the mean of the others)
    but at the battery's last demand; a meter never seen yet still counts at the mean."""
    service, _ = ingest()
    area = TelemetryAreaLoad(service, "feeder", min_reporting=0.9)
    loads = {f"m{i}": 10.0 for i in range(9)}
    feed(service, 0.2, {**loads, "m9": -20.0})
    feed(service, 1.2, loads)  # m9 lost in [1, 2)
    feed(service, 2.6, {"x": 1.0})  # closes [1, 2)
    kw, _ = area.area_load_kw("F1")
    assert kw == pytest.approx(70.0)  # 9 × 10 − 20, not 9 × 10 × 10 / 9
    fresh, _ = ingest()
    first = TelemetryAreaLoad(fresh, "feeder", min_reporting=0.9)
    feed(fresh, 0.2, loads)
    feed(fresh, 1.6, {"x": 1.0})
    assert first.area_load_kw("F1")[0] == pytest.approx(100.0)  # never seen: the mean


def test_substation_and_region_levels() -> None:
    service, _ = ingest()
    feed(service, 0.2, {**everyone(1.0), "x": 5.0})
    feed(service, 1.6, {"x": 5.0})
    assert TelemetryAreaLoad(service, "substation").area_load_kw("S1")[0] == \
        pytest.approx(15.0)
    assert TelemetryAreaLoad(service, "region").area_load_kw("north")[0] == \
        pytest.approx(10.0)


def test_a_stalled_stream_holds_the_safe_state_within_the_deadline() -> None:
    service, clock = ingest()
    spec = RegulationSpec.model_validate({"area": "F1", "area_level": "feeder",
                                          "scheduled_kw": 10, "kp": 0.5, "ki": 0.0})
    sent: list[tuple[str, dict[str, object]]] = []
    reg = RegulationService(spec, UNITS, TelemetryAreaLoad(service, "feeder"), clock,
                            site="s1", publish=lambda t, b: sent.append((t, json.loads(b))),
                            run_worker=False)
    reg.on_soc("b1", b"50")
    first = reg.step()
    assert first.hold and reg.holding is not None and "no closed demand window" in reg.holding
    for s in range(4):
        feed(service, s + 0.2, everyone(2.0))  # 20 kW against 10 scheduled
    step = reg.step()
    assert not step.hold and step.correction_kw == pytest.approx(5.0)
    assert sent[-1][1]["setpoint_kw"] == -5.0 and reg.holding is None
    # the stream stops after 3.2 s: the newest closed window is [1, 2) ([2, 3) closes at
    # 3.5 s by event time; no reading and no ticker here); at 6.9 s it is 4.9 s old
    clock.set(T0 + timedelta(seconds=6.9))
    assert not reg.step().hold
    clock.set(T0 + timedelta(seconds=7.1))  # 5.1 s: held
    held = reg.step()
    assert held.hold and "area load is 5.1 s old" in (held.reason or "")
    assert sent[-1][1]["setpoint_kw"] == 0.0
    assert [a["kind"] for a in reg.alarms()] == ["regulation", "regulation"]


@settings(max_examples=40, deadline=None)
@given(kw=st.floats(0.0, 50.0), reporting=st.sets(st.integers(0, N - 1), min_size=1),
       min_reporting=st.floats(0.05, 1.0))
def test_property_a_used_window_has_enough_meters_and_equal_meters_read_true(
        kw: float, reporting: set[int], min_reporting: float) -> None:
    """Meters that all draw the same: whichever subset reported, the area reads N × kW
    when enough of them did, and no window at all (LookupError) when too few did."""
    service, _ = ingest()
    area = TelemetryAreaLoad(service, "feeder", min_reporting)
    feed(service, 0.2, {f"m{i}": kw for i in sorted(reporting)})
    feed(service, 1.6, {"x": 1.0})
    enough = len(reporting) >= min_reporting * N - 1e-9
    if enough:
        got, age = area.area_load_kw("F1")
        assert got == pytest.approx(N * kw, abs=1e-6) and age == pytest.approx(0.6)
    else:
        with pytest.raises(LookupError):
            area.area_load_kw("F1")


def test_telemetry_running_window_age_is_its_start() -> None:
    service, clock = ingest()
    feed(service, 0.3, everyone(1.0))
    clock.advance(0.4)
    kw, age = service.area_load_kw("F1")
    assert kw == pytest.approx(10.0) and age == pytest.approx(0.7)


SITE = """
site: s1
mqtt: {url: "mqtt://127.0.0.1:1883"}
telemetry: {window: 1, lateness: 0.5}
groups: [{id: main, max_current: 32, chargers: [c1]}]
chargers: [{id: c1, max_current: 32, zone: Z1}]
zones: [{id: Z1}]
meters:
  - {id: m1, feeder: F1, substation: S1, region: north}
frequency_response:
  nominal_hz: 50
  deadband_mhz: 20
  full_activation_mhz: 200
  safety_window_hz: [49.5, 50.5]
  source: {mqtt_topic: "gridshare/s1/grid/frequency"}
  units:
    - {battery: bess-1, max_discharge_kw: 50, max_charge_kw: 50, capacity_kwh: 100,
       min_soc: 10, setpoint_topic: "site/bess-1/setpoint", soc_topic: "site/bess-1/soc"}
    - {battery: bess-2, max_discharge_kw: 50, max_charge_kw: 50, capacity_kwh: 100,
       min_soc: 10, setpoint_topic: "site/bess-2/setpoint", soc_topic: "site/bess-2/soc"}
"""


def problems(regulation: str, site: str = SITE) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_site_config(site + regulation, "s.yaml")
    return str(exc.value)


def test_site_file_names_the_area_and_the_app_picks_its_source() -> None:
    for block, level in (("{area: F1, scheduled_kw: 5}", "feeder"),
                         ("{area: S1, scheduled_kw: 5}", "substation"),
                         ("{area: north, area_level: region, scheduled_kw: 5}", "region")):
        config = parse_site_config(SITE + f"regulation: {block}\n", "s.yaml")
        assert config.regulation is not None
        service, clock = ingest()
        source = area_source(config.regulation, zone_areas=["Z1"],
                             ami_meters=config.ami_meters, clock=clock, loads=None,
                             telemetry=service)
        assert isinstance(source, TelemetryAreaLoad) and source.level == level
    zone = parse_site_config(SITE + "regulation: {area: Z1, scheduled_kw: 5}\n", "s.yaml")
    assert zone.regulation is not None
    with pytest.raises(ValueError, match="load aggregation"):
        area_source(zone.regulation, zone_areas=["Z1"], ami_meters=zone.ami_meters,
                    clock=FakeClock(T0), loads=None, telemetry=None)
    topics = parse_site_config(SITE + "regulation: {area: A, scheduled_kw: 5, "
                               "load_topics: [x/kw]}\n", "s.yaml")
    assert topics.regulation is not None
    assert isinstance(area_source(topics.regulation, zone_areas=[], ami_meters=(),
                                  clock=FakeClock(T0), loads=None, telemetry=None),
                      MqttAreaLoad)
    assert ZoneLoad is not None


def test_site_file_area_problems_name_file_and_line() -> None:
    text = problems("regulation: {area: F9, scheduled_kw: 5}\n")
    assert "s.yaml:" in text and "regulation.area" in text
    assert "area 'F9' is no zone of the site nor a feeder, substation or region" in text
    assert "feeders: F1" in text and "zones: Z1" in text
    text = problems("regulation: {area: Z1, area_level: feeder, scheduled_kw: 5}\n")
    assert "area 'Z1' is no feeder of the site's AMI meters" in text
    text = problems("regulation: {area: F1, area_level: zone, scheduled_kw: 5}\n")
    assert "area 'F1' is no zone of the site" in text
    text = problems("regulation: {area: F1, area_level: feeder, scheduled_kw: 5, "
                    "load_topics: [x]}\n")
    assert "load_topics" in text and "area_level" in text and "not both" in text
    slow = SITE.replace("telemetry: {window: 1, lateness: 0.5}\n", "")
    text = problems("regulation: {area: F1, scheduled_kw: 5}\n", slow)
    assert "close 60 + 30 s (telemetry window + lateness)" in text
    assert "deadline_s 5 s" in text and "s.yaml:" in text


def test_one_master_per_battery() -> None:
    config = parse_site_config(SITE + "regulation: {area: F1, scheduled_kw: 5, "
                               "units: [bess-2]}\n", "s.yaml")
    assert config.frequency_response is not None
    left = frequency_without_regulated(config.frequency_response, config.regulation)
    assert left is not None and [u.battery for u in left.units] == ["bess-1"]
    assert frequency_without_regulated(config.frequency_response, None) is \
        config.frequency_response
    every = parse_site_config(SITE + "regulation: {area: F1, scheduled_kw: 5}\n", "s.yaml")
    assert every.frequency_response is not None
    assert frequency_without_regulated(every.frequency_response, every.regulation) is None


def test_the_app_wires_the_source_and_leaves_the_rest_to_frequency_response() -> None:
    from gridshare.app import GridshareApp, build_app, serve_options

    def app_of(block: str) -> GridshareApp:
        config = parse_site_config(SITE + f"regulation: {block}\n", "s.yaml")
        return build_app(config.topology, serve_options(config, host="127.0.0.1",
                                                        ocpp_port=0, api_port=None,
                                                        db_url="none"))

    zone = app_of("{area: Z1, scheduled_kw: 5, units: [bess-2]}")
    assert zone.regulation is not None and isinstance(zone.regulation.load_source, ZoneLoad)
    assert zone.frequency is not None  # bess-1 stays with the frequency response
    assert [u.battery for u in zone.frequency.spec.units] == ["bess-1"]
    feeder = app_of("{area: F1, scheduled_kw: 5}")
    assert feeder.regulation is not None and feeder.telemetry is not None
    assert isinstance(feeder.regulation.load_source, TelemetryAreaLoad)
    assert feeder.regulation.load_source.telemetry is feeder.telemetry
    assert feeder.frequency is None  # both batteries are regulation's
    assert feeder.status()["regulation"]["source"] == "TelemetryAreaLoad"
