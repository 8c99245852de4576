"""DR signals over MQTT acknowledged only after their commit (real Mosquitto): a signal
whose commit failed, or whose process died before the commit, is delivered again by the
broker (persistent session, manual PUBACK) and then stored once."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
from api.test_dr_api import FakeDr, signal
from brokers import Mosquitto
from test_dr_mqtt import SIGNALS, T0
from waits import eventually

from gridshare.adapters.dr.mqtt import DrMqtt
from gridshare.clock import FakeClock
from gridshare.config import MqttSpec


async def publish(broker: Mosquitto, body: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="utility") as client:
        await client.publish(SIGNALS, body, qos=1)


async def test_a_failed_commit_is_not_acknowledged_and_comes_again(broker: Mosquitto) -> None:
    dr = FakeDr(("Z1", "Z2"), FakeClock(T0))
    failures = [RuntimeError("database down")]

    async def commit() -> None:
        if failures:
            raise failures.pop()

    adapter = DrMqtt(MqttSpec(url=broker.url, client_id="gs-durable"), "plaza", dr,
                     dr.clock, commit=commit)
    await adapter.start()
    try:
        await eventually(lambda: adapter.connected)
        await publish(broker, json.dumps(signal()).encode())
        await eventually(lambda: adapter.acked == 1)
        assert adapter.commit_failures == 1
        # the broker delivered it again after the failed commit dropped the link
        assert (adapter.received, adapter.accepted, adapter.redelivered) == (2, 1, 1)
        assert adapter.connects >= 2
        assert len(dr.book) == 1
    finally:
        await adapter.stop()


async def test_a_signal_not_yet_committed_when_the_process_dies_is_delivered_again(
        broker: Mosquitto) -> None:
    spec = MqttSpec(url=broker.url, client_id="gs-durable")
    first = FakeDr(("Z1", "Z2"), FakeClock(T0))
    stuck = asyncio.Event()

    async def never() -> None:  # the commit a kill -9 interrupts
        stuck.set()
        await asyncio.Event().wait()

    dying = DrMqtt(spec, "plaza", first, first.clock, commit=never)
    await dying.start()
    try:
        await eventually(lambda: dying.connected)
        await publish(broker, json.dumps(signal()).encode())
        async with asyncio.timeout(20):
            await stuck.wait()
    finally:
        await dying.stop()  # gone without a PUBACK
    assert dying.acked == 0
    second = FakeDr(("Z1", "Z2"), FakeClock(T0))
    committed: list[int] = []

    async def commit() -> None:
        committed.append(len(second.book))

    restarted = DrMqtt(spec, "plaza", second, second.clock, commit=commit)
    await restarted.start()
    try:
        await eventually(lambda: restarted.acked == 1)
        assert [e.signal.signal_id for e in second.book.events()] == ["grid-017"]
        assert committed == [1]  # committed after the DR service took it, then acked
    finally:
        await restarted.stop()


async def test_without_a_store_a_signal_is_taken_as_before(broker: Mosquitto) -> None:
    dr = FakeDr(("Z1", "Z2"), FakeClock(T0))
    adapter = DrMqtt(MqttSpec(url=broker.url, client_id="gs-plain"), "plaza", dr, dr.clock)
    await adapter.start()
    try:
        await eventually(lambda: adapter.connected)
        await publish(broker, json.dumps(signal()).encode())
        await eventually(lambda: adapter.accepted == 1)
        assert adapter.acked == 0 and len(dr.book) == 1
    finally:
        await adapter.stop()
