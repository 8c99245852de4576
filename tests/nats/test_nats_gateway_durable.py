"""A NATS gateway (no store) answers OCPP transaction messages and meter values only once
JetStream has acknowledged their events: a raw OCPP 1.6 charger finds each one in the
stream as soon as it is answered, stored once; with NATS away it gets a CallError
InternalError, and its resend after NATS is back is accepted, the event still stored once;
a gateway killed with SIGKILL mid-stream loses no answered message and stores none twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats as nats_client
import pytest
from natsserver import NatsServer
from store.test_ocpp_crash import killed_rounds
from store.test_ocpp_durable import Charger
from waits import eventually
from websockets.asyncio.client import connect

from gridshare.adapters.nats import codec
from gridshare.adapters.nats.bus import STREAM, NatsBus, NatsBusSettings, NotAcknowledged
from gridshare.adapters.nats.roles import GatewayProcess
from gridshare.events import MeterReading, MeterSample, SessionStarted, SessionStopped

SITE = """
site: gwd
groups:
  - id: main
    max_current: 32
    chargers: [cp-1]
chargers:
  - {id: cp-1, max_current: 16, phases: 3}
"""
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
READINGS = "gridshare.gwd.readings.meter_reading.cp-1_1"


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def meter(tx: int | None, at: datetime, wh: float) -> dict[str, Any]:
    payload: dict[str, Any] = {"connectorId": 1, "meterValue": [{
        "timestamp": iso(at), "sampledValue": [{
            "value": f"{wh:.1f}", "unit": "Wh",
            "measurand": "Energy.Active.Import.Register"}]}]}
    if tx is not None:
        payload["transactionId"] = tx
    return payload


async def start_gateway(nats: NatsServer, query: str = "") -> GatewayProcess:
    from gridshare.app import serve_options
    from gridshare.config import parse_site_config

    config = parse_site_config(SITE)
    options = serve_options(config, host="127.0.0.1", ocpp_port=0, api_port=None,
                            db_url="none", bus_url=nats.url + query, role="gateway")
    gateway = GatewayProcess(config.topology, options)
    await gateway.start()
    return gateway


@pytest.fixture
async def stream(nats: NatsServer) -> AsyncIterator[Any]:
    """A JetStream context of our own, to read what the gateway stored."""
    nc = await nats_client.connect(nats.url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def counts(js: Any) -> dict[str, int]:
    """Messages stored per subject of the site."""
    info = await js.stream_info(STREAM, subjects_filter="gridshare.gwd.>")
    return dict(info.state.subjects or {})


async def boot_and_start(charger: Charger) -> int:
    """Boot, then a transaction from 100 Wh at BASE: its id (both calls answered)."""
    assert (await charger.call("BootNotification", {
        "chargePointVendor": "t", "chargePointModel": "m"}))[0] == 3
    start = await charger.call("StartTransaction", {
        "connectorId": 1, "idTag": "T", "meterStart": 100, "timestamp": iso(BASE)})
    assert start[0] == 3
    return int(start[2]["transactionId"])


async def last(js: Any, subject: str) -> Any:
    return codec.decode((await js.get_last_msg(STREAM, subject)).data)


async def test_answered_only_once_in_the_stream_and_stored_once(
        nats: NatsServer, stream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await start_gateway(nats)
    try:
        async with connect(f"ws://127.0.0.1:{gateway.csms.port}/cp-1",
                           subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            charger = Charger(ws)
            tx = await boot_and_start(charger)
            # In the stream when answered: no flush, no waiting.
            started = await last(stream, "gridshare.gwd.events.session_started")
            assert isinstance(started, SessionStarted)
            assert (started.charger, started.transaction_id) == ("cp-1", str(tx))
            # JetStream's acknowledgement of the first reading is held back: no answer.
            real_send = gateway.bus._send
            held, release = asyncio.Event(), asyncio.Event()

            async def gated(js: Any, window: list[tuple[str, bytes, str]]) -> int:
                if not release.is_set() and any(s == READINGS for s, _, _ in window):
                    held.set()
                    await release.wait()
                return await real_send(js, window)

            monkeypatch.setattr(gateway.bus, "_send", gated)
            charger.seq += 1
            await ws.send(json.dumps([2, f"m{charger.seq}", "MeterValues",
                                      meter(tx, BASE + timedelta(seconds=1), 101)]))
            async with asyncio.timeout(30):
                await held.wait()
            with pytest.raises(TimeoutError):  # (a loaded machine could only hide a bug)
                await asyncio.wait_for(ws.recv(), 0.5)
            assert READINGS not in await counts(stream)
            release.set()
            answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert answer[:2] == [3, f"m{charger.seq}"]
            for i in range(1, 4):
                if i > 1:
                    answer = await charger.call(
                        "MeterValues", meter(tx, BASE + timedelta(seconds=i), 100 + i))
                    assert answer[0] == 3
                reading = await last(stream, READINGS)
                assert isinstance(reading, MeterReading)
                assert (reading.at, reading.energy_wh) == (BASE + timedelta(seconds=i),
                                                           100 + i)
            stop = await charger.call("StopTransaction", {
                "transactionId": tx, "meterStop": 104,
                "timestamp": iso(BASE + timedelta(seconds=10)), "reason": "Local"})
            assert stop[0] == 3
            stopped = await last(stream, "gridshare.gwd.events.session_stopped")
            assert isinstance(stopped, SessionStopped) and stopped.meter_stop_wh == 104
        await gateway.bus.flush(30)
        # The session published the same events after answering: found already queued,
        # not sent again (JetStream reported no duplicate), each stored once.
        assert gateway.bus.duplicates == 0
        stored = await counts(stream)
        assert stored[READINGS] == 3
        assert stored["gridshare.gwd.events.session_started"] == 1
        assert stored["gridshare.gwd.events.session_stopped"] == 1
        assert gateway.bus.durable_failures == 0
    finally:
        await gateway.stop()


async def test_nats_away_is_a_call_error_and_the_resend_is_stored_once(
        nats: NatsServer, stream: Any) -> None:
    gateway = await start_gateway(nats, "?retry_max_s=0.5&durable_timeout_s=60")
    try:
        async with connect(f"ws://127.0.0.1:{gateway.csms.port}/cp-1",
                           subprotocols=["ocpp1.6"]) as ws:  # type: ignore[list-item]
            charger = Charger(ws)
            tx = await boot_and_start(charger)
            nats.stop()
            await eventually(lambda: not gateway.bus.connected)
            values = meter(tx, BASE + timedelta(seconds=1), 150)
            refused = await charger.call("MeterValues", values)
            assert refused[0] == 4 and refused[2] == "InternalError", refused
            assert gateway.bus.durable_failures == 1
            assert gateway.csms.counters.rejected["store_failed"] == 1
            nats.start()
            await eventually(lambda: gateway.bus.connected, timeout_s=30)
            # The charger resends (OCPP 1.6 §4.10): the same reading, a new message id.
            assert (await charger.call("MeterValues", values))[0] == 3
            reading = await last(stream, READINGS)
            assert isinstance(reading, MeterReading) and reading.energy_wh == 150
        await gateway.bus.flush(30)
        # Queued while NATS was away, sent when it was back; the resend waited for that
        # copy instead of adding one (and any copy re-sent after a lost ack is dropped by
        # its Nats-Msg-Id): once in the stream.
        assert (await counts(stream))[READINGS] == 1
    finally:
        await gateway.stop()


async def test_no_acknowledgement_in_time_raises_and_keeps_the_event(nats: NatsServer,
                                                                     monkeypatch: Any) -> None:
    bus = NatsBus(nats.url, site="gwd", settings=NatsBusSettings(durable_timeout_s=0.3))
    await bus.connect()
    hold = asyncio.Event()

    async def no_ack(*_args: Any) -> int:
        await hold.wait()
        return 0

    monkeypatch.setattr(bus, "_send", no_ack)
    sample = MeterSample("m-1", BASE, (1.0, 0.0, 0.0))
    try:
        with pytest.raises(NotAcknowledged, match="did not acknowledge"):
            await bus.durable([sample])
        assert bus.pending == 1 and bus.durable_failures == 1
        bus.publish(sample)  # what the session publishes after its refused answer
        assert bus.pending == 1  # already queued: not a second time
    finally:
        await bus.close(flush_timeout_s=0.1)


# --- kill -9: every answered message is in the stream, once --------------------------------

GATEWAY_READY = re.compile(r"^gridshare ready: site crash, role gateway, OCPP "
                           r"ws://127\.0\.0\.1:(\d+),")


async def stored_events(js: Any, subjects: str) -> list[Any]:
    """Every event stored on ``subjects``, in stream order."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    info = await js.stream_info(STREAM, subjects_filter=subjects)
    total = sum((info.state.subjects or {}).values())
    psub = await js.pull_subscribe(subjects, stream=STREAM, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL))
    out: list[Any] = []
    try:
        async with asyncio.timeout(60):
            while len(out) < total:
                with contextlib.suppress(nats_client.errors.TimeoutError, TimeoutError):
                    out += [codec.decode(m.data) for m in await psub.fetch(500, timeout=1)]
    finally:
        await psub.unsubscribe()
    return out


async def test_kill_9_gateway_loses_no_answered_message(tmp_path: Path, nats: NatsServer,
                                                        stream: Any) -> None:
    seed = random.randrange(1 << 30)
    total = await killed_rounds(["--role", "gateway", "--bus", nats.url], GATEWAY_READY,
                                tmp_path, seed)
    starts: dict[tuple[str, str], int] = {}
    stops: dict[tuple[str, str], list[float | None]] = {}
    readings: dict[tuple[str, datetime], list[float | None]] = {}
    last_at: dict[str, datetime] = {}
    for event in await stored_events(stream, codec.site_subjects("crash")):
        if isinstance(event, SessionStarted | SessionStopped | MeterReading):
            # one charger's events reach the stream in the order they happened
            assert event.at >= last_at.get(event.charger, event.at), f"seed {seed}: {event}"
            last_at[event.charger] = event.at
        if isinstance(event, SessionStarted):
            key = (event.charger, event.transaction_id)
            starts[key] = starts.get(key, 0) + 1
        elif isinstance(event, SessionStopped):
            stops.setdefault((event.charger, event.transaction_id), []).append(
                event.meter_stop_wh)
        elif isinstance(event, MeterReading):
            readings.setdefault((event.charger, event.at), []).append(event.energy_wh)
    # Answered: stored once. Not answered (killed before the answer): at most once.
    for key in total.starts:
        assert starts.get(key) == 1, f"seed {seed}: start {key} stored {starts.get(key)}x"
    assert all(n == 1 for n in starts.values()), f"seed {seed}: a start stored twice"
    for key, register in total.stops.items():
        assert stops.get(key) == [register], f"seed {seed}: stop {key}: {stops.get(key)}"
    assert all(len(v) == 1 for v in stops.values()), f"seed {seed}: a stop stored twice"
    for key, register in total.readings.items():
        assert readings.get(key) == [register], \
            f"seed {seed}: reading {key}: {readings.get(key)} != [{register}]"
    assert all(len(v) == 1 for v in readings.values()), f"seed {seed}: a reading twice"
