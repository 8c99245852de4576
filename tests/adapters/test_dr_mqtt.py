"""DR signals over MQTT against a real Mosquitto: stored like REST's, idempotent, refusals
answered on ``…/dr/signals/rejected``, the DR service's alerts on ``…/dr/alerts``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiomqtt
import pytest
from api.test_dr_api import FakeDr, signal
from brokers import Mosquitto
from waits import eventually

from gridshare.adapters.dr.mqtt import DrMqtt, topics
from gridshare.adapters.meters.mqtt import SetupError
from gridshare.clock import FakeClock
from gridshare.config import MqttSpec

T0 = datetime(2026, 11, 30, 16, 0, tzinfo=UTC)
SIGNALS, REJECTED, ALERTS = topics("plaza")




class Listener:
    """A client of the broker: publishes signals, collects what gridshare answers."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.arrived = asyncio.Event()

    async def read(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            self.got.append((message.topic.value, json.loads(message.payload)))
            self.arrived.set()

    async def next(self, topic: str, timeout_s: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while True:
                for i, (t, body) in enumerate(self.got):
                    if t == topic:
                        del self.got[i]
                        return body
                self.arrived.clear()
                await self.arrived.wait()

    async def send(self, body: Any) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(SIGNALS, raw, qos=1)


@pytest.fixture
def dr() -> FakeDr:
    return FakeDr(("Z1", "Z2"), FakeClock(T0))


@pytest.fixture
async def link(broker: Mosquitto, dr: FakeDr) -> AsyncIterator[DrMqtt]:
    adapter = DrMqtt(MqttSpec(url=broker.url, client_id="gs-test"), "plaza", dr, dr.clock)
    await adapter.start()
    try:
        await eventually(lambda: adapter.connected)
        yield adapter
    finally:
        await adapter.stop()


@pytest.fixture
async def peer(broker: Mosquitto) -> AsyncIterator[Listener]:
    async with aiomqtt.Client(broker.host, broker.port, identifier="utility") as client:
        await client.subscribe(f"{SIGNALS}/rejected", qos=1)
        await client.subscribe(ALERTS, qos=1)
        listener = Listener(client)
        reader = asyncio.create_task(listener.read())
        try:
            yield listener
        finally:
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader


def test_the_topics_are_the_issues() -> None:
    assert (SIGNALS, REJECTED, ALERTS) == ("gridshare/plaza/dr/signals",
                                           "gridshare/plaza/dr/signals/rejected",
                                           "gridshare/plaza/dr/alerts")


async def test_a_signal_on_the_topic_is_stored_and_a_redelivery_changes_nothing(
        link: DrMqtt, peer: Listener, dr: FakeDr) -> None:
    await peer.send(signal())
    await eventually(lambda: link.accepted == 1)
    await peer.send(signal(received_ts="2026-11-30T16:00:09Z"))
    await eventually(lambda: link.redelivered == 1)
    assert len(dr.book) == 1
    stored = dr.book.events()[0].signal
    assert (stored.signal_id, stored.zone_id, stored.target_reduction_kw, stored.source) == (
        "grid-017", "Z1", 90.0, "mqtt")
    assert link.rejected == 0


@pytest.mark.parametrize(("body", "signal_id", "reason"), [
    (signal(zone_id="Z9"), "grid-017", "zone_id: unknown zone 'Z9' (zones: Z1, Z2)"),
    (signal(end_ts="2026-11-30T16:00:00Z"), "grid-017", "end_ts: must be after start_ts"),
    (signal(target_reduction_kw=-1), "grid-017", "target_reduction_kw: must not be negative"),
    (b"curtail 90 kW please", None, "not valid JSON"),
    (b"[]", None, "expected a JSON object"),
    (b"[" * 60_000, None, "not valid JSON: nested too deeply"),
], ids=["unknown-zone", "end-not-after-start", "negative-target", "not-json", "array",
        "deep"])
async def test_an_invalid_signal_is_refused_logged_counted_and_answered(
        link: DrMqtt, peer: Listener, dr: FakeDr, caplog: pytest.LogCaptureFixture,
        body: Any, signal_id: str | None, reason: str) -> None:
    caplog.set_level(logging.WARNING, "gridshare.dr.mqtt")
    await peer.send(body)
    answer = await peer.next(REJECTED)
    assert answer["signal_id"] == signal_id
    assert answer["reason"].startswith(reason)
    assert link.rejected == 1
    assert len(dr.book) == 0
    assert any(answer["reason"] in r.getMessage() for r in caplog.records)


async def test_the_same_id_with_other_content_is_refused_and_the_first_stays(
        link: DrMqtt, peer: Listener, dr: FakeDr) -> None:
    await peer.send(signal())
    await peer.send(signal(target_reduction_kw=150))
    answer = await peer.next(REJECTED)
    assert answer["signal_id"] == "grid-017"
    assert "already holds a different signal" in answer["reason"]
    assert [e.signal.target_reduction_kw for e in dr.book.events()] == [90.0]


async def test_alerts_are_published(link: DrMqtt, peer: Listener, dr: FakeDr) -> None:
    alert = {"kind": "contract-exceeded", "station": "DC-03", "load_kw": 131.5,
             "contract_max_kw": 120, "at": "2026-11-30T17:02:00Z"}
    dr.alert(alert)
    assert await peer.next(ALERTS) == alert


class GatedDrMqtt(DrMqtt):
    """Connects only while ``gate`` is open, so a test decides when it comes back."""

    gate = True

    def _client(self) -> aiomqtt.Client:
        if not self.gate:
            raise SetupError("held back by the test")
        return super()._client()


async def test_an_alert_raised_while_the_broker_is_down_goes_out_when_it_is_back(
        broker: Mosquitto, dr: FakeDr) -> None:
    link = GatedDrMqtt(MqttSpec(url=broker.url), "plaza", dr, dr.clock)
    await link.start()
    try:
        await eventually(lambda: link.connected)
        link.gate = False
        broker.restart()
        await eventually(lambda: not link.connected)
        dr.alert({"kind": "dr-not-met", "signal_id": "grid-017"})
        async with aiomqtt.Client(broker.host, broker.port, identifier="late") as client:
            await client.subscribe(ALERTS, qos=1)
            link.gate = True
            async with asyncio.timeout(40):  # the link's backoff is at most 30 s
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    assert json.loads(message.payload) == {"kind": "dr-not-met",
                                                           "signal_id": "grid-017"}
                    break
        assert link.connects == 2
        assert link.dropped == 0
    finally:
        await link.stop()


# --- wired in the real app --------------------------------------------------------------

APP_SITE = """
site: plaza
voltage: 230
zones: [{id: Z1}]
groups:
  - {id: main, max_current: 100, chargers: [dc-1]}
chargers:
  - {id: dc-1, max_current: 32, phases: 3, zone: Z1}
"""


async def test_the_app_takes_signals_from_its_broker_and_answers_refusals(
        broker: Mosquitto, peer: Listener) -> None:
    from gridshare.app import ServeOptions, build_app
    from gridshare.config import HomeAssistantSpec, parse_site

    app = build_app(parse_site(APP_SITE), ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none",
        mqtt=MqttSpec(url=broker.url, homeassistant=HomeAssistantSpec(enabled=False))))
    await app.start()
    try:
        assert app.dr is not None and app.dr_mqtt is not None
        link = app.dr_mqtt
        await eventually(lambda: link.connected)
        now = app.clock.now()
        await peer.send(signal(start_ts=now.isoformat(), received_ts=...,
                               end_ts=now.replace(year=now.year + 1).isoformat()))
        await eventually(lambda: app.dr is not None and app.dr.get("grid-017") is not None)
        stored = app.dr.get("grid-017")
        assert stored is not None and stored.signal.source == "mqtt"
        await peer.send(signal(signal_id="grid-018", zone_id="Z2"))
        answer = await peer.next(REJECTED)
        assert answer == {"signal_id": "grid-018",
                          "reason": "zone_id: unknown zone 'Z2' (zones: Z1)"}
    finally:
        await app.stop()
