"""The frequency source and the battery topics against a real Mosquitto, and the payload
parsing behind them: samples in (JSON or a bare number), SoC in, setpoints out; bad
payloads refused, counted and reported, never fatal; retained samples dropped."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from brokers import Mosquitto
from waits import eventually

from gridshare.adapters.frequency import (
    Rejected,
    SocReading,
    parse_sample,
    parse_soc,
    setpoint_payload,
)
from gridshare.adapters.frequency.mqtt import FrequencyMqtt, source_topic
from gridshare.clock import SystemClock
from gridshare.config import parse_site_config
from gridshare.controller.frequency import FrequencyOptions, FrequencyService, soc_topics
from gridshare.controller.state import SiteState
from gridshare.events import MeterReading

SITE = """
site: plant
mqtt: {url: "URL", client_id: gs-test}
frequency_response:
  nominal_hz: 50
  deadband_mhz: 20
  full_activation_mhz: 200
  safety_window_hz: [49.5, 50.5]
  source: {mqtt_topic: "gridshare/<site>/grid/frequency"}
  units:
    - {battery: b1, max_discharge_kw: 50, max_charge_kw: 40, capacity_kwh: 100, min_soc: 10,
       setpoint_topic: "site/b1/setpoint", soc_topic: "site/b1/soc"}
    - {battery: b2, max_discharge_kw: 50, max_charge_kw: 40, capacity_kwh: 100, min_soc: 10,
       setpoint_topic: "site/b2/setpoint", soc_topic: "site/b2/soc"}
groups:
  - {id: main, max_current: 63}
"""
SOURCE = "gridshare/plant/grid/frequency"


# --- payloads -------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "expected"), [
    (b"49.95", (None, 49.95)),
    (b'{"hz": 50.01}', (None, 50.01)),
    (b'{"ts": 1764518400.25, "hz": 49.9}', (1764518400.25, 49.9)),
    (b'{"ts": "2025-12-01T00:00:00.250Z", "hz": 60.02}', (1764547200.25, 60.02)),
    (b'{"ts": "2025-12-01T01:00:00+01:00", "hz": 50}', (1764547200.0, 50.0)),
])
def test_samples_parse(payload: bytes, expected: tuple[float | None, float]) -> None:
    assert parse_sample(payload) == expected


@pytest.mark.parametrize(("payload", "why"), [
    (b"", "not JSON"), (b"fifty", "not JSON"), (b"NaN", "not JSON"),
    (b'{"hz": NaN}', "not JSON"), (b'{"hz": "50"}', "hz: not a number"),
    (b'{"ts": 1}', "hz missing"), (b'{"hz": true}', "hz: not a number"),
    (b'{"ts": "yesterday", "hz": 50}', "ts: not an ISO"),
    (b'{"ts": "2025-12-01T00:00:00", "hz": 50}', "no UTC offset"),
    (b'{"ts": -5, "hz": 50}', "ts: not a time"), (b"[50]", "not a number"),
    (b"\xff\xfe", "not UTF-8"), (b"1e999", "not a finite number"),
])
def test_bad_samples_are_rejected_with_the_reason(payload: bytes, why: str) -> None:
    got = parse_sample(payload)
    assert isinstance(got, Rejected) and why in got.reason, got


def test_soc_and_setpoint_payloads() -> None:
    assert parse_soc(b"55.5") == SocReading(55.5)
    assert parse_soc(b'{"soc": 20, "power_kw": -3.5, "ts": 100}') == SocReading(20, -3.5,
                                                                              100.0)
    for bad, why in ((b"101", "percentage"), (b"-1", "percentage"), (b'{"x": 1}', "soc "
                     "missing"), (b'{"soc": 5, "power_kw": "x"}', "power_kw")):
        got = parse_soc(bad)
        assert isinstance(got, Rejected) and why in got.reason
    body = json.loads(setpoint_payload(-12.3456, 1764547200.0, 10.0, "central"))
    assert body == {"ts": "2025-12-01T00:00:00.000Z", "setpoint_kw": -12.346,
                    "setpoint_w": -12346, "valid_s": 10.0,
                    "valid_until": "2025-12-01T00:00:10.000Z", "mode": "central"}
    assert source_topic("gridshare/<site>/grid/frequency", "plant") == SOURCE


# --- against the broker ---------------------------------------------------------------


class Rig:
    def __init__(self, broker: Mosquitto) -> None:
        config = parse_site_config(SITE.replace("URL", broker.url), "plant.yaml")
        spec = config.frequency_response
        assert spec is not None and config.mqtt is not None
        self.link = FrequencyMqtt(config.mqtt, source_topic(spec.source.mqtt_topic, "plant"),
                                  soc_topics(spec))
        self.svc = FrequencyService(spec, config.topology, SystemClock(), bus=None,
                                    state_view=SiteState(config.topology),
                                    batteries=self.link,
                                    options=FrequencyOptions(tick_s=0.05))
        self.link.attach(self.svc)
        self.got: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
async def rig(broker: Mosquitto) -> AsyncIterator[Rig]:
    r = Rig(broker)
    await r.svc.start()
    await r.link.start()
    try:
        yield r
    finally:
        await r.link.stop()
        await r.svc.stop()


async def _collect(client: aiomqtt.Client, into: list[tuple[str, dict[str, Any]]]) -> None:
    async for message in client.messages:
        assert isinstance(message.payload, bytes)
        into.append((message.topic.value, json.loads(message.payload)))


def _last(got: list[tuple[str, dict[str, Any]]], topic: str) -> dict[str, Any] | None:
    found = [body for t, body in got if t == topic]
    return found[-1] if found else None


async def test_samples_in_battery_setpoints_out(broker: Mosquitto, rig: Rig) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe("site/+/setpoint", qos=1)
        reader = asyncio.create_task(_collect(client, rig.got))
        try:
            await eventually(lambda: rig.link.connected)
            await client.publish("site/b1/soc", b"80", qos=1)
            await client.publish("site/b2/soc", b'{"soc": 5, "power_kw": 1.5}', qos=1)
            await eventually(lambda: rig.svc.units["b2"].soc_pct == 5)
            await client.publish(SOURCE, json.dumps({"ts": time.time(), "hz": 49.8}))
            await eventually(lambda: (_last(rig.got, "site/b1/setpoint") or {}).get(
                "setpoint_kw") == -50.0)
            b1 = _last(rig.got, "site/b1/setpoint")
            assert b1 is not None and b1["setpoint_w"] == -50000 and b1["valid_s"] == 10.0
            # b2 is at its floor (5 % < min_soc 10 %): held, never discharged
            assert all(body["setpoint_kw"] >= 0 for t, body in rig.got
                       if t == "site/b2/setpoint")
            status = rig.svc.status()
            assert status["state"] == "responding" and status["last_sample"]["hz"] == 49.8
            b2 = next(u for u in status["units"] if u["id"] == "b2")
            assert b2["measured_kw"] == 1.5 and "min_soc" in b2["held"]
            # bad payloads: refused, counted, reported; the link and the service go on
            for bad in (b"garbage", b'{"hz": "49"}', b'{"hz": NaN}'):
                await client.publish(SOURCE, bad)
            await client.publish("site/b1/soc", b"150")
            await eventually(lambda: rig.svc.rejected_counts().get("payload") == 3)
            await eventually(lambda: rig.svc.soc_rejected["b1"] == 1)
            assert "hz: not a number" in str(rig.svc.status()["last_rejected"]) or \
                "not JSON" in str(rig.svc.status()["last_rejected"])
            # a bare number, timed on receipt: back to idle, setpoints back to 0
            await client.publish(SOURCE, b"50.0")
            await eventually(lambda: (_last(rig.got, "site/b1/setpoint") or {}).get(
                "setpoint_kw") == 0.0)
            assert rig.svc.status()["state"] == "idle" and rig.link.connected
            # the source goes quiet: safe state, alarm
            await eventually(lambda: rig.svc.status()["state"] == "safe")
            assert any("stale" in a for a in rig.svc.status()["alarms"])
        finally:
            reader.cancel()


async def test_a_retained_sample_is_not_acted_on(broker: Mosquitto) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish(SOURCE, b"49.7", qos=1, retain=True)
    r = Rig(broker)
    await r.svc.start()
    await r.link.start()
    try:
        await eventually(lambda: r.link.replayed == 1)
        assert r.svc.last_sample is None and r.svc.counters["samples"] == 0
    finally:
        await r.link.stop()
        await r.svc.stop()


async def test_a_broker_down_at_start_is_no_error_and_the_link_connects_later(
        tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    broker = Mosquitto(tmp_path / "m")  # not started yet: nothing listens on its port
    r = Rig(broker)
    await r.svc.start()
    await r.link.start()
    try:
        await eventually(lambda: r.link.outage is not None)
        assert not r.link.connected
        broker.start()
        await eventually(lambda: r.link.connected, timeout_s=30)
    finally:
        await r.link.stop()
        await r.svc.stop()
        broker.stop()


async def test_a_step_reaches_every_v2x_charger_within_two_seconds(broker: Mosquitto) -> None:
    """Issue 10: in central mode, the first sample beyond the dead band → the new setpoint
    accepted by every V2G charger within 2 s end to end: here 40 fake V2X chargers with a
    100 ms ± 50 % round trip, the sample published on the real broker."""
    from controller.test_frequency_service import FakeV2x

    from gridshare.events import ChargerOnline, ConnectorStatus, SessionStarted, StatusChanged

    n = 40
    units = "\n".join(f"    - {{charger: v{i}, max_discharge_kw: 7, max_charge_kw: 7, "
                      f"capacity_kwh: 60, min_soc: 20}}" for i in range(n))
    text = (SITE.replace("URL", broker.url).split("  units:\n")[0] + "  units:\n" + units +
            "\ngroups:\n  - {id: main, max_current: 2000, chargers: [" +
            ", ".join(f"v{i}" for i in range(n)) + "]}\nchargers:\n" +
            "".join(f"  - {{id: v{i}, max_current: 16, phases: 3, v2x: true}}\n" for i in range(n)))
    config = parse_site_config(text, "plant.yaml")
    spec = config.frequency_response
    assert spec is not None and config.mqtt is not None
    clock = SystemClock()
    state = SiteState(config.topology)
    for i in range(n):
        now = clock.now()
        state.apply(ChargerOnline(f"v{i}", now))
        state.apply(StatusChanged(f"v{i}", 1, ConnectorStatus.CHARGING, now))
        state.apply(SessionStarted(f"v{i}", 1, f"tx{i}", now))
    done: dict[str, float] = {}
    v2x = FakeV2x({f"v{i}" for i in range(n)}, rtt_s=0.1)
    original = v2x.send_v2x_setpoint

    async def timed(charger: str, connector: int, setpoint_w: float, *,
                    valid_s: float) -> Any:
        outcome = await original(charger, connector, setpoint_w, valid_s=valid_s)
        if setpoint_w < 0:
            done.setdefault(charger, time.monotonic())
        return outcome

    v2x.send_v2x_setpoint = timed  # type: ignore[method-assign]
    link = FrequencyMqtt(config.mqtt, SOURCE, soc_topics(spec))
    svc = FrequencyService(spec, config.topology, clock, bus=None, state_view=state,
                           v2x=v2x, batteries=link, options=FrequencyOptions(tick_s=0.05))
    link.attach(svc)
    await svc.start()
    await link.start()
    try:
        await eventually(lambda: link.connected)
        async with aiomqtt.Client(broker.host, broker.port) as client:
            for i in range(n):  # SoC 80 % on every car: they may discharge
                state.apply(MeterReading(f"v{i}", 1, clock.now(), f"tx{i}",
                                         soc_percent=80.0))
            await client.publish(SOURCE, b"50.0", qos=1)
            await eventually(lambda: svc.status()["state"] == "idle")
            await asyncio.sleep(0.3)  # the first setpoints answered
            t0 = time.monotonic()
            await client.publish(SOURCE, b"49.97", qos=1)  # past the 20 mHz dead band
            await eventually(lambda: len(done) == n, timeout_s=10)
        slowest = max(done.values()) - t0
        assert slowest < 2.0, f"the last V2X charger accepted after {slowest:.2f} s"
        assert v2x.most_in_flight == 1
    finally:
        await link.stop()
        await svc.stop()
