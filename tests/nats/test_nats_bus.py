"""NatsBus against a real nats-server -js: order, durability across a subscriber restart,
a broker restart, de-duplication and bad messages."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import nats as nats_client
import pytest
from natsserver import NatsServer
from waits import eventually

from gridshare.adapters.nats.bus import NatsBus, NatsBusSettings
from gridshare.bus import BusError, open_bus
from gridshare.events import ChargerOnline, Event, MeterSample

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
FAST = NatsBusSettings(ack_wait_s=2.0, fetch_timeout_s=0.3, retry_max_s=0.5)


def sample(i: int, meter: str = "m-1") -> MeterSample:
    return MeterSample(meter, T0 + timedelta(seconds=i), (float(i), 0.0, 0.0))


async def take(sub: object, n: int, timeout_s: float = 20.0) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(timeout_s):
        async for event in sub:  # type: ignore[attr-defined]
            out.append(event)
            if len(out) == n:
                break
    return out


def test_open_bus_names_nats() -> None:
    bus = open_bus("nats://127.0.0.1:4222?ack_wait_s=5", site="s1")
    assert isinstance(bus, NatsBus)
    assert bus.settings.ack_wait_s == 5.0 and bus.site == "s1"
    assert bus.url == "nats://127.0.0.1:4222"
    with pytest.raises(BusError, match="option 'bogus' is unknown"):
        open_bus("nats://127.0.0.1:4222?bogus=1")
    with pytest.raises(BusError, match="must be above 0"):
        open_bus("nats://127.0.0.1:4222?max_pending=0")
    with pytest.raises(BusError, match="needs a host"):
        open_bus("nats://")


async def test_order_per_subject_and_sites_apart(nats: NatsServer) -> None:
    a = NatsBus(nats.url, site="a", settings=FAST)
    b = NatsBus(nats.url, site="b", settings=FAST)
    sub = a.subscribe("controller")
    for i in range(500):
        a.publish(sample(i, "m-1"))
        a.publish(sample(i, "m-2"))
        b.publish(sample(i, "m-1"))
    a.publish(ChargerOnline("c1", T0))
    await a.flush(20)
    await b.flush(20)
    got = await take(sub, 1001)
    for meter in ("m-1", "m-2"):
        times = [e.at for e in got if isinstance(e, MeterSample) and e.meter == meter]
        assert times == [T0 + timedelta(seconds=i) for i in range(500)]
    assert got[-1] == ChargerOnline("c1", T0)
    assert a.published == 1001 and a.dropped == 0
    await a.close()
    await b.close()


async def test_durable_subscriber_resumes_after_last_ack(nats: NatsServer) -> None:
    # ack_wait 60 s: what the first subscriber did not process comes back at once only
    # because closing it handed those events back (nak).
    slow = NatsBusSettings(ack_wait_s=60.0, fetch_timeout_s=0.3)
    bus = NatsBus(nats.url, site="s", settings=slow)
    for i in range(10):
        bus.publish(sample(i))
    await bus.flush(10)
    sub = bus.subscribe("store")
    first = await take(sub, 4)  # the 4th is returned, not yet acknowledged
    sub.close()
    await bus.close()
    assert [e.at for e in first] == [sample(i).at for i in range(4)]

    again = NatsBus(nats.url, site="s", settings=slow)
    sub2 = again.subscribe("store")
    rest = await take(sub2, 7, timeout_s=15)  # the unacknowledged 4th comes again
    assert [e.at for e in rest] == [sample(i).at for i in range(3, 10)]
    await again.close()


async def test_broker_restart_loses_nothing(nats: NatsServer) -> None:
    bus = NatsBus(nats.url, site="s", settings=FAST)
    sub = bus.subscribe("controller")
    for i in range(100):
        bus.publish(sample(i))
    await bus.flush(10)
    nats.stop()  # a crash: events published now wait in the queue
    for i in range(100, 200):
        bus.publish(sample(i))
    await asyncio.sleep(0.5)
    assert bus.pending == 100 and not bus.connected
    nats.start()
    await bus.flush(30)
    got = await take(sub, 200, timeout_s=40)
    assert sorted({e.at for e in got}) == [sample(i).at for i in range(200)]
    assert bus.dropped == 0
    await bus.close()


async def test_same_reading_twice_is_stored_once(nats: NatsServer) -> None:
    bus = NatsBus(nats.url, site="s", settings=FAST)
    bus.publish(sample(1))
    bus.publish(MeterSample("m-1", sample(1).at, (9.0, 9.0, 9.0)))  # same meter, same time
    await bus.flush(10)
    assert bus.published == 2 and bus.duplicates == 1
    nc = await nats_client.connect(nats.url)
    info = await nc.jetstream().stream_info("GRIDSHARE")
    assert info.state.messages == 1
    await nc.close()
    await bus.close()


async def test_bad_message_is_refused_not_fatal(nats: NatsServer) -> None:
    bus = NatsBus(nats.url, site="s", settings=FAST)
    sub = bus.subscribe("controller")
    bus.publish(sample(1))
    await bus.flush(10)
    nc = await nats_client.connect(nats.url)
    await nc.jetstream().publish("gridshare.s.readings.meter_sample.m-1", b'{"t":"Nope"}')
    await nc.close()
    bus.publish(sample(2))
    await bus.flush(10)
    got = await take(sub, 2)
    assert [e.at for e in got] == [sample(1).at, sample(2).at]
    await eventually(lambda: sub.rejected == 1)
    await bus.close()


async def test_full_queue_drops_and_counts(tmp_path: object) -> None:
    # No server at all: events queue up to max_pending, then are dropped and counted.
    bus = NatsBus("nats://127.0.0.1:1", site="s",
                  settings=NatsBusSettings(max_pending=5, retry_max_s=0.2))
    for i in range(8):
        bus.publish(sample(i))
    assert bus.pending == 5 and bus.dropped == 3
    await bus.close(flush_timeout_s=0.2)
