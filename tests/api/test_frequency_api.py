"""``GET /api/v1/frequency`` and the frequency metrics, through the real app: a real
Mosquitto for the source and the battery, simulated OCPP 1.6 chargers (no V2X: only
curtailed, through a cap the controller folds and the simulated charger then offers)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from brokers import Mosquitto, mosquitto
from e2e.conftest import SITE

from gridshare.app import build_app
from gridshare.config import MqttSpec, parse_site_config

from .conftest import ApiRig

FREQUENCY = """
mqtt: {url: "URL"}
frequency_response:
  nominal_hz: 50
  deadband_mhz: 20
  full_activation_mhz: 200
  safety_window_hz: [49.5, 50.5]
  source: {mqtt_topic: "gridshare/<site>/grid/frequency"}
  units:
    - {charger: e-1, max_discharge_kw: 11, max_charge_kw: 11, capacity_kwh: 60, min_soc: 20}
    - {battery: bess, max_discharge_kw: 30, max_charge_kw: 30, capacity_kwh: 60, min_soc: 10,
       setpoint_topic: "e2e/bess/setpoint", soc_topic: "e2e/bess/soc"}
"""
SOURCE = "gridshare/e2e/grid/frequency"


class FreqRig(ApiRig):
    def __init__(self, data_dir: Path, broker: Mosquitto) -> None:
        text = SITE + FREQUENCY.replace("URL", broker.url)
        super().__init__("ocpp1.6", data_dir, site=text)
        config = parse_site_config(text, "e2e.yaml")
        options = dataclasses.replace(self.app.options, mqtt=MqttSpec(url=broker.url),
                                      frequency_response=config.frequency_response)
        self.app = build_app(self.topology, options)


@pytest.fixture
async def frig(tmp_path: Path) -> AsyncIterator[tuple[FreqRig, Mosquitto]]:
    with mosquitto(tmp_path / "mosquitto") as broker:
        r = FreqRig(tmp_path / "var", broker)
        await r.start()
        try:
            yield r, broker
        finally:
            await r.stop()


async def test_no_block_no_frequency(rig: ApiRig) -> None:
    answer = await rig.client.get("/api/v1/frequency")
    assert answer.status_code == 404
    assert "frequency_response" in answer.json()["detail"]


async def test_status_and_caps_follow_the_samples(frig: tuple[FreqRig, Mosquitto]) -> None:
    rig, broker = frig
    app = rig.app
    assert app.frequency is not None and app.frequency_mqtt is not None
    rig.plug("e-1")
    await rig.settle()
    base_a = rig.offered("e-1")
    assert base_a > 6
    answer = await rig.client.get("/api/v1/frequency")
    assert answer.status_code == 200
    body = answer.json()
    assert body["mode"] == "central" and body["state"] == "safe"  # no sample yet
    assert body["last_sample"] is None
    await rig.wait_until(lambda: app.frequency_mqtt is not None and
                         app.frequency_mqtt.connected)
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("e2e/bess/soc", b"70", qos=1)
        await rig.wait_until(lambda: app.frequency is not None and
                             app.frequency.units["bess"].soc_pct == 70)

        # No sample for stale_after_s (1 s) since start: the source is stale, an alarm.
        # (Waited for: on a quick machine the first sample could come before it.)
        await rig.wait_until(lambda: app.frequency is not None and any(
            "stale" in message for message in app.frequency.active_alarms))
        hz = [49.8]

        async def source() -> None:
            """A live source at 10 Hz (a quiet one would put the units in their safe
            state after stale_after_s)."""
            while True:
                await client.publish(SOURCE, json.dumps({"ts": time.time(), "hz": hz[0]}),
                                     qos=1)
                await asyncio.sleep(0.1)

        feeder = asyncio.create_task(source())
        try:
            await rig.wait_until(lambda: ("e-1", 1) in app.frequency.caps)  # type: ignore[union-attr]
            # the controller folds the cap: the simulated charger offers it
            cap = app.controller.state.cap_sources(("e-1", 1))["frequency"]
            assert cap < base_a
            await rig.wait_until(lambda: rig.offered("e-1") <= cap + 0.01)
            body = (await rig.client.get("/api/v1/frequency")).json()
            assert body["state"] == "responding" and body["last_sample"]["hz"] == 49.8
            assert body["fraction"] == pytest.approx(-1.0)
            units = {u["id"]: u for u in body["units"]}
            e1, bess = units["e-1"], units["bess"]
            assert e1["v2x"] is False and e1["present"] is True
            assert 0 <= e1["setpoint_kw"] < e1["base_kw"]
            assert bess["setpoint_kw"] < 0 and bess["soc"] == 70
            assert body["rejected"] == {}
            # the source was stale until the first sample (an alarm), then it cleared:
            # both in the audit store, as GET /api/v1/alarms shows
            assert app.store is not None
            await app.store.flush()
            alarms = (await rig.client.get("/api/v1/alarms")).json()["alarms"]
            mine = [a for a in alarms if a["kind"] == "frequency"]
            assert [a["cleared"] for a in mine] == [True, False], mine  # newest first
            assert "stale" in mine[1]["message"]
            await client.publish(SOURCE, b"not a number", qos=1)
            await client.publish("e2e/bess/soc", b"NaN", qos=1)
            await rig.wait_until(lambda: app.frequency is not None and
                                 app.frequency.rejected_counts().get("payload") == 1
                                 and app.frequency.soc_rejected["bess"] == 1)
            metrics = (await rig.client.get("/metrics")).text
            assert "gridshare_frequency_hz 49.8" in metrics
            assert 'gridshare_frequency_state{state="responding"} 1.0' in metrics
            assert 'gridshare_frequency_rejected_samples_total{reason="payload"} 1.0' in metrics
            assert 'gridshare_frequency_unit_soc_percent{unit="bess"} 70.0' in metrics
            assert 'gridshare_frequency_rejected_soc_total{unit="bess"} 1.0' in metrics
            # recovery: the cap goes, the car gets its allocation back
            hz[0] = 50.0
            await rig.wait_until(lambda: "frequency" not in
                                 app.controller.state.cap_sources(("e-1", 1)))
            await rig.wait_until(lambda: rig.offered("e-1") >= base_a - 0.01)
            await rig.wait_until(lambda: app.frequency is not None and
                                 app.frequency.status()["state"] == "idle")
            body = (await rig.client.get("/api/v1/frequency")).json()
            assert body["state"] == "idle" and body["caps_a"] == []
            assert body["rejected"] == {"payload": 1}
        finally:
            feeder.cancel()


def test_serve_options_carry_the_block(tmp_path: Path) -> None:
    """``gridshare serve`` builds its options with serve_options: the block must reach the
    app (else the service would silently not run)."""
    from gridshare.app import serve_options

    text = SITE + FREQUENCY.replace("URL", "mqtt://127.0.0.1:1883")
    config = parse_site_config(text, "e2e.yaml")
    options = serve_options(config, ocpp_port=0, api_port=None, db_url="none")
    assert options.frequency_response == config.frequency_response
    assert options.frequency_response is not None
    app = build_app(config.topology, options)
    assert app.frequency is not None and app.frequency_mqtt is not None
    assert app.frequency_mqtt.source_topic == SOURCE
    plain = serve_options(parse_site_config(SITE, "e2e.yaml"), api_port=None, db_url="none")
    assert build_app(config.topology, plain).frequency is None
