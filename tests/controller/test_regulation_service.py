"""The regulation service on a fake clock: the correction shared across the batteries and
published in the frequency service's JSON shape; stale inputs and late steps hold the safe
state with an alarm; the site file's block."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gridshare.clock import FakeClock
from gridshare.config import ConfigError, RegulationSpec, parse_site_config
from gridshare.controller.audit import AlarmRecord
from gridshare.controller.regulation import (
    Battery,
    MqttAreaLoad,
    RegulationService,
    share,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LOAD = "site/feeder/kw"
FREQ = "gridshare/s1/grid/frequency"
UNITS = [Battery("b1", "site/b1/setpoint", "site/b1/soc", 50, 40, 10),
         Battery("b2", "site/b2/setpoint", "site/b2/soc", 150, 120, 10)]


class Sink:
    def __init__(self) -> None:
        self.records: list[AlarmRecord] = []

    def record_alarm(self, record: AlarmRecord) -> None:
        self.records.append(record)


def service(**spec: object) -> tuple[RegulationService, FakeClock, list[tuple[str, dict]],
                                      MqttAreaLoad, Sink]:
    clock = FakeClock(T0)
    sent: list[tuple[str, dict]] = []
    load = MqttAreaLoad({"A1": [LOAD]}, clock)
    sink = Sink()
    settings = RegulationSpec.model_validate({"area": "A1", "scheduled_kw": 1000,
                                              "bias_kw_per_hz": -100, "kp": 0.5, "ki": 0.0,
                                              **spec})
    svc = RegulationService(settings, UNITS, load, clock, site="s1", store=sink,
                            publish=lambda t, b: sent.append((t, json.loads(b))),
                            run_worker=False)
    svc.on_soc("b1", b'{"soc": 50}')
    svc.on_soc("b2", b"60")
    return svc, clock, sent, load, sink


def test_correction_shared_in_proportion_and_published_in_the_setpoint_shape() -> None:
    svc, clock, sent, _, _ = service()
    svc.on_message(LOAD, b'{"ts": "x", "kw": 1100}')
    svc.on_message(FREQ, b'{"ts": "x", "hz": 50.0}')
    out = svc.step()
    assert not out.hold and out.ace_kw == pytest.approx(100)
    assert out.correction_kw == pytest.approx(50)  # kp 0.5, no integral
    by_topic = dict(sent)
    # discharge 50 kW: 1/4 and 3/4 by max_discharge (50, 150); + = charging on the topic
    assert by_topic["site/b1/setpoint"]["setpoint_kw"] == pytest.approx(-12.5)
    assert by_topic["site/b2/setpoint"]["setpoint_kw"] == pytest.approx(-37.5)
    assert set(by_topic["site/b1/setpoint"]) == {"ts", "setpoint_kw", "valid_s", "source"}
    assert by_topic["site/b1/setpoint"]["source"] == "regulation"
    # low frequency with B = −100 kW/Hz adds to the error
    svc.on_message(FREQ, b'{"hz": 49.9}')
    clock.advance(1)
    assert svc.step().ace_kw == pytest.approx(110)


def test_share_respects_soc_floor_fullness_and_unknown_soc() -> None:
    soc = {"b1": 10.0, "b2": 60.0}
    assert share(100, UNITS, soc) == {"b1": 0.0, "b2": 100.0}  # b1 at its floor
    assert share(500, UNITS, soc) == {"b1": 0.0, "b2": 150.0}  # never above a limit
    assert share(-80, UNITS, {"b1": 100.0, "b2": 60.0}) == {"b1": 0.0, "b2": -80.0}
    assert share(100, UNITS, {"b2": 60.0})["b1"] == 0.0  # unknown SoC: not discharged
    assert share(0, UNITS, soc) == {"b1": 0.0, "b2": 0.0}


def test_stale_load_holds_the_safe_state_with_one_alarm_then_clears() -> None:
    svc, clock, _, _, sink = service(deadline_s=5)
    svc.on_message(LOAD, b'{"kw": 1100}')
    svc.on_message(FREQ, b'{"hz": 50}')
    svc.step()
    assert svc.setpoints["b2"] < 0
    for _ in range(6):
        clock.advance(1)
        svc.on_message(FREQ, b'{"hz": 50}')  # the frequency keeps coming, the load not
        out = svc.step()
    assert out.hold and "area load is 6.0 s old" in (out.reason or "")
    assert svc.setpoints == {"b1": 0.0, "b2": 0.0}
    assert [r.kind for r in sink.records] == ["regulation"]  # once per episode
    clock.advance(1)
    svc.on_message(LOAD, b'{"kw": 1000}')
    svc.on_message(FREQ, b'{"hz": 50}')
    assert not svc.step().hold
    assert sink.records[-1].cleared and svc.holding is None


def test_a_late_step_and_missing_inputs_hold() -> None:
    svc, clock, _, _, sink = service(deadline_s=2)
    out = svc.step()
    assert out.hold and "no reading yet on site/feeder/kw" in (out.reason or "")
    svc.on_message(LOAD, b'{"kw": 1000}')
    svc.on_message(FREQ, b'{"hz": 50}')
    clock.advance(0.5)
    assert not svc.step().hold
    clock.advance(3)
    svc.on_message(LOAD, b'{"kw": 1000}')
    svc.on_message(FREQ, b'{"hz": 50}')
    out = svc.step()
    assert out.hold and "deadline" in (out.reason or "")
    assert len(sink.records) == 3  # held, cleared, held again


def test_bad_payloads_are_counted_not_used() -> None:
    svc, _, _, load, _ = service()
    svc.on_message(FREQ, b'{"hz": NaN}')
    svc.on_message(FREQ, b"not json")
    svc.on_message(LOAD, b'{"kw": "many"}')
    svc.on_soc("b1", b'{"soc": 140}')
    assert svc.counters["bad_frequency"] == 2 and load.rejected == 1
    assert svc.counters["bad_soc"] == 1 and svc.soc["b1"] == 50


SITE = """
site: s1
mqtt: {url: "mqtt://127.0.0.1:1883"}
groups: [{id: main, max_current: 32, chargers: [c1]}]
chargers: [{id: c1, max_current: 32}]
frequency_response:
  nominal_hz: 50
  deadband_mhz: 20
  full_activation_mhz: 200
  safety_window_hz: [49.5, 50.5]
  source: {mqtt_topic: "gridshare/s1/grid/frequency"}
  units:
    - {battery: bess-1, max_discharge_kw: 50, max_charge_kw: 50, capacity_kwh: 100,
       min_soc: 10, setpoint_topic: "site/bess-1/setpoint", soc_topic: "site/bess-1/soc"}
"""


def test_site_file_block() -> None:
    good = parse_site_config(SITE + "regulation: {area: A1, scheduled_kw: 500, "
                             "load_topics: [site/feeder]}\n", "s.yaml")
    assert good.regulation is not None and good.regulation.deadline_s == 5.0
    with pytest.raises(ConfigError) as exc:
        parse_site_config(SITE + "regulation: {area: A1, scheduled_kw: 500, "
                          "units: [nope]}\n", "s.yaml")
    text = str(exc.value)
    assert "regulation.units[0]: unknown battery 'nope'" in text
    assert "area 'A1' is no zone of the site" in text
    with pytest.raises(ConfigError) as exc:
        parse_site_config(SITE + "regulation: {area: A1, scheduled_kw: 500, "
                          "bias_kw_per_hz: 10, load_topics: [x]}\n", "s.yaml")
    assert "s.yaml:" in str(exc.value) and "bias_kw_per_hz" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        parse_site_config(SITE + "regulation: {area: A1, scheduled_kw: 500, "
                          "nominal_hz: 60, load_topics: [x]}\n", "s.yaml")
    assert "frequency_response.nominal_hz is 50" in str(exc.value)


def test_nominal_frequency_defaults_to_the_frequency_response() -> None:
    from gridshare.app import serve_options

    sixty = SITE.replace("nominal_hz: 50", "nominal_hz: 60").replace(
        "[49.5, 50.5]", "[59.5, 60.5]")
    config = parse_site_config(sixty + "regulation: {area: A1, scheduled_kw: 500, "
                               "load_topics: [x]}\n", "s.yaml")
    reg = serve_options(config).regulation
    assert reg is not None and reg.nominal_hz == 60
