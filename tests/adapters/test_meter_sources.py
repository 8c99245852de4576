"""Meter sources against a real Mosquitto and a real local HTTP server.

Payloads are the ones real devices send: a Shelly Pro 3EM's ``EM.GetStatus``, IoTaWatt's
``/query`` rows, an evcc-style ``{"power": W}``, Tasmota's ``{"ENERGY": {"Power": W}}``
telemetry, and a plain number. A bad payload is counted and never published.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from brokers import Mosquitto, free_port

from gridshare.adapters.meters import MeterSources, MeterStatus
from gridshare.adapters.meters.parse import ECHO_MAX, PAYLOAD_MAX, Decoder, Rejected
from gridshare.clock import FakeClock
from gridshare.config import MeterSpec, MqttSpec
from gridshare.core.topology import Phase
from gridshare.events import MeterSample

V = 230.0
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

SHELLY_PRO_3EM = {  # EM.GetStatus?id=0 of a Shelly Pro 3EM (firmware 1.x)
    "id": 0, "a_current": 4.029, "a_voltage": 236.1, "a_act_power": 951.2,
    "a_aprt_power": 951.9, "a_pf": 1, "a_freq": 50, "b_current": 4.027, "b_voltage": 236.2,
    "b_act_power": -951.1, "b_aprt_power": 951.8, "b_pf": 1, "b_freq": 50,
    "c_current": 3.03, "c_voltage": 236.4, "c_act_power": 715.0, "c_aprt_power": 716.2,
    "c_pf": 1, "c_freq": 50, "n_current": None, "total_current": 11.086,
    "total_act_power": 715.1, "total_aprt_power": 2619.9, "user_calibrated_phase": [],
}
SHELLY_FIELDS = {"L1": "a_current", "L2": "b_current", "L3": "c_current"}
IOTAWATT_QUERY = [["2026-05-01T12:00:00", 12.31, 8.02, 4.5]]
"""/query?select=[time.iso,Grid_L1.amps.d2,Grid_L2.amps.d2,Grid_L3.amps.d2]&begin=s-5s
&end=s&group=all&format=json"""
TASMOTA_SENSOR = {
    "Time": "2026-05-01T12:00:00", "ENERGY": {
        "TotalStartTime": "2025-01-01T00:00:00", "Total": 1234.567, "Yesterday": 9.1,
        "Today": 3.2, "Period": 12, "Power": 3450, "ApparentPower": 3480,
        "ReactivePower": 120, "Factor": 0.99, "Voltage": 231, "Current": 15.06}}
EVCC_GRID = {"power": 6900.0, "energy": 12345.6, "currents": [10.0, 10.0, 10.0]}


def mqtt_meter(mid: str, topic: str, **kw: Any) -> MeterSpec:
    return MeterSpec(id=mid, source="mqtt", topic=topic, **kw)


def http_meter(mid: str, url: str, **kw: Any) -> MeterSpec:
    return MeterSpec(id=mid, source="http", url=url, **kw)


def decode(payload: object, *, phases: int = 3, line: Any = None, **kw: Any) -> object:
    spec = mqtt_meter("m", "t", **kw)
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Decoder.build(spec.fields, spec.field, spec.unit, phases=phases, voltage=V,
                         line=line).decode(raw)


def approx3(a: float, b: float, c: float) -> Any:
    return pytest.approx((a, b, c), abs=1e-9)


# --- decoding: table tests ----------------------------------------------------------------

GOOD = [
    pytest.param(SHELLY_PRO_3EM, {"fields": SHELLY_FIELDS}, 3, (4.029, 4.027, 3.03),
                 id="shelly-pro-3em-currents"),
    pytest.param(SHELLY_PRO_3EM, {"field": "total_act_power", "unit": "W"}, 3,
                 (715.1 / 690,) * 3, id="shelly-pro-3em-total-power"),
    pytest.param(IOTAWATT_QUERY, {"fields": {"L1": "0.1", "L2": "0.2", "L3": "0.3"}}, 3,
                 (12.31, 8.02, 4.5), id="iotawatt-query-rows"),
    pytest.param(EVCC_GRID, {"field": "power", "unit": "W"}, 3, (10.0, 10.0, 10.0),
                 id="evcc-power-3-phase"),
    pytest.param(EVCC_GRID, {"field": "power", "unit": "W", "line": "L1"}, 1,
                 (30.0, 0.0, 0.0), id="evcc-power-1-phase-on-L1"),
    pytest.param(EVCC_GRID, {"field": "power", "unit": "W", "line": "L2"}, 1,
                 (0.0, 30.0, 0.0), id="evcc-power-1-phase-on-L2"),
    pytest.param(EVCC_GRID, {"field": "power", "unit": "W"}, 1, (30.0, 30.0, 30.0),
                 id="1-phase-line-unknown-counts-on-every-phase"),
    pytest.param(EVCC_GRID, {"field": "power", "unit": "W", "line": Phase.L3}, 1,
                 (0.0, 0.0, 30.0), id="line-as-topology-phase"),
    pytest.param(EVCC_GRID, {"field": "power", "unit": "W", "line": "L2"}, 3,
                 (10.0, 10.0, 10.0), id="a-line-means-nothing-for-a-3-phase-group"),
    pytest.param(EVCC_GRID, {"fields": {"L1": "currents.0", "L3": "currents.2"}}, 3,
                 (10.0, 0.0, 10.0), id="phase-absent-from-fields-is-0"),
    pytest.param(TASMOTA_SENSOR, {"field": "ENERGY.Power", "unit": "W", "line": "L1"}, 1,
                 (15.0, 0, 0), id="tasmota-energy-power"),
    pytest.param({"p": 6.9}, {"field": "p", "unit": "kW"}, 3, (10.0, 10.0, 10.0),
                 id="kw-total"),
    pytest.param({"power": -4200}, {"field": "power", "unit": "W"}, 3, (0.0, 0.0, 0.0),
                 id="export-counts-as-0"),
    pytest.param(b"2300", {"unit": "W", "line": "L3"}, 1, (0.0, 0.0, 10.0),
                 id="plain-watts-1-phase"),
    pytest.param(b" 6.9\n", {"unit": "kW"}, 3, (10.0, 10.0, 10.0), id="plain-kw-3-phase"),
    pytest.param(b"12.5", {"unit": "A", "line": "L1"}, 1, (12.5, 0.0, 0.0),
                 id="plain-amps-1-phase-L1"),
    pytest.param(b"12.5", {"unit": "A"}, 1, (12.5, 12.5, 12.5),
                 id="plain-amps-1-phase-line-unknown"),
    pytest.param(b"12.5", {"unit": "A"}, 3, (12.5, 12.5, 12.5),
                 id="plain-amps-3-phase-on-every-phase"),
]


@pytest.mark.parametrize(("payload", "spec", "phases", "want"), GOOD)
def test_decode_real_payloads(payload: object, spec: dict[str, Any], phases: int,
                              want: tuple[float, float, float]) -> None:
    assert decode(payload, phases=phases, **spec) == approx3(*want)


BAD = [
    pytest.param(b"{not json", {"fields": SHELLY_FIELDS}, "payload is not JSON: '{not json'",
                 id="not-json"),
    pytest.param(b"\xff\xfe\x00", {"fields": SHELLY_FIELDS}, "payload is not UTF-8",
                 id="not-utf8"),
    pytest.param({"a_current": 1, "c_current": 2}, {"fields": SHELLY_FIELDS},
                 "L2 path b_current missing", id="path-missing"),
    pytest.param({"emeters": [{"current": 1}]}, {"fields": {"L1": "emeters.1.current"}},
                 "L1 path emeters.1.current missing", id="index-out-of-range"),
    pytest.param({"a": {"b": 1}}, {"fields": {"L1": "a.b.c"}}, "L1 path a.b.c missing",
                 id="path-through-a-number"),
    pytest.param({"a_current": "4.1", "b_current": 1, "c_current": 1},
                 {"fields": SHELLY_FIELDS}, "L1 path a_current: not a number: '4.1'",
                 id="numeric-string"),
    pytest.param({"a_current": True, "b_current": 1, "c_current": 1},
                 {"fields": SHELLY_FIELDS}, "L1 path a_current: not a number: true",
                 id="bool"),
    pytest.param({"power": None}, {"field": "power", "unit": "W"},
                 "path power: not a number: null", id="null"),
    pytest.param(b'{"power": NaN}', {"field": "power", "unit": "W"}, "payload is not JSON",
                 id="nan"),
    pytest.param(b'{"power": -Infinity}', {"field": "power", "unit": "W"},
                 "payload is not JSON", id="infinity"),
    pytest.param(b'{"power": 1e999}', {"field": "power", "unit": "W"},
                 "path power: not a finite number: Infinity", id="overflow"),
    pytest.param({"a_current": 1, "b_current": -0.5, "c_current": 1},
                 {"fields": SHELLY_FIELDS}, "L2 path b_current: negative current -0.5 A",
                 id="negative-current"),
    pytest.param(b"-3", {"unit": "A"}, "negative current -3.0 A", id="negative-plain-amps"),
    pytest.param(EVCC_GRID, {"unit": "W"},
                 "plain payload (no field/fields configured): not a number: {",
                 id="json-where-a-plain-number-is-expected"),
    pytest.param(b"1234 W", {"unit": "W"}, "payload is not JSON: '1234 W'",
                 id="number-with-unit-text"),
    pytest.param(b"", {"unit": "W"}, "payload is not JSON: ''", id="empty"),
]


@pytest.mark.parametrize(("payload", "spec", "reason"), BAD)
def test_decode_rejects_bad_input(payload: object, spec: dict[str, Any], reason: str) -> None:
    result = decode(payload, **spec)
    assert isinstance(result, Rejected)
    assert result.reason.startswith(reason)


def test_echoed_values_are_cut_to_80_characters() -> None:
    result = decode({"a_current": "x" * 10_000}, fields={"L1": "a_current"})
    assert isinstance(result, Rejected)
    echoed = result.reason.split("not a number: ", 1)[1]
    assert len(echoed) == ECHO_MAX and echoed.endswith("…")
    not_json = decode(b"<html>" + b"y" * 5000, fields={"L1": "a"})
    assert isinstance(not_json, Rejected) and len(not_json.reason) < 120


def test_oversized_payload_is_refused_unparsed() -> None:
    result = decode(b"[" + b"1," * PAYLOAD_MAX + b"1]", fields={"L1": "0"})
    assert isinstance(result, Rejected) and "more than" in result.reason


def test_deeply_nested_json_is_refused() -> None:
    result = decode(b"[" * 100_000 + b"]" * 100_000, fields={"L1": "0"})
    assert isinstance(result, Rejected) and "not JSON" in result.reason


# --- helpers for the live tests -----------------------------------------------------------

async def until(pred: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    """Wait (polling) until ``pred()`` holds; fail with ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.02)


@dataclass
class Run:
    """A started MeterSources and what it published."""

    sources: MeterSources
    clock: FakeClock
    samples: list[MeterSample] = field(default_factory=list)

    def of(self, meter: str) -> list[MeterSample]:
        return [s for s in self.samples if s.meter == meter]

    def status(self, meter: str) -> MeterStatus:
        return self.sources.status()[meter]


def make_run(meters: list[MeterSpec], mqtt: MqttSpec | None = None,
             phases: dict[str, int] | None = None, lines: dict[str, Any] | None = None) -> Run:
    clock = FakeClock(T0)
    samples: list[MeterSample] = []
    sources = MeterSources(meters, mqtt, samples.append, clock, voltage=V,
                           phases=phases or {}, lines=lines)
    return Run(sources, clock, samples)


async def publish(broker: Mosquitto, topic: str, payload: bytes | str,
                  **auth: str) -> None:
    async with aiomqtt.Client(broker.host, broker.port, **auth) as client:
        await client.publish(topic, payload)


def ours(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the meter sources logged (not the MQTT or HTTP libraries)."""
    return [r.getMessage() for r in caplog.records if r.name == "gridshare.meters"]


def own_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


# --- MQTT ---------------------------------------------------------------------------------

async def test_mqtt_meters_publish_real_device_payloads(broker: Mosquitto) -> None:
    before = own_tasks()
    run = make_run([
        mqtt_meter("house", "shellies/pro3em/status/em:0", fields=SHELLY_FIELDS),
        mqtt_meter("garage", "tele/garage/SENSOR", field="ENERGY.Power", unit="W"),
        mqtt_meter("plain", "meters/plain", unit="kW"),
        mqtt_meter("any-shelly", "shellies/+/status/em:0", fields={"L1": "a_current"}),
        MeterSpec(id="cp-meter", source="ocpp", charger="cp-1"),
    ], MqttSpec(url=broker.url), phases={"garage": 1, "plain": 3}, lines={"garage": "L2"})
    assert set(run.sources.status()) == {"house", "garage", "plain", "any-shelly"}
    await run.sources.start()
    try:
        link = run.sources.link
        assert link is not None
        await until(lambda: link.connected, what="subscribed")
        run.clock.advance(5)
        await publish(broker, "shellies/pro3em/status/em:0", json.dumps(SHELLY_PRO_3EM))
        await publish(broker, "tele/garage/SENSOR", json.dumps(TASMOTA_SENSOR))
        await publish(broker, "meters/plain", "6.9")
        await until(lambda: len(run.samples) == 4, what="4 samples")
        t5 = T0.replace(second=5)
        assert run.of("house") == [MeterSample("house", t5, approx3(4.029, 4.027, 3.03))]
        assert run.of("any-shelly") == [MeterSample("any-shelly", t5, approx3(4.029, 0, 0))]
        assert run.of("garage") == [MeterSample("garage", t5, approx3(0, 15.0, 0))]
        assert run.of("plain") == [MeterSample("plain", t5, approx3(10.0, 10.0, 10.0))]
        house = run.status("house")
        assert house == MeterStatus("house", "mqtt", "mqtt shellies/pro3em/status/em:0",
                                    approx3(4.029, 4.027, 3.03), t5, 0, None)
    finally:
        await run.sources.stop()
    assert own_tasks() == before, "stop() left a task behind"


async def test_mqtt_bad_payloads_are_counted_logged_once_a_minute_never_published(
        broker: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="gridshare.meters")
    run = make_run([mqtt_meter("house", "home/meter/state", fields=SHELLY_FIELDS)],
                   MqttSpec(url=broker.url))
    await run.sources.start()
    try:
        link = run.sources.link
        assert link is not None
        await until(lambda: link.connected, what="subscribed")
        topic = "home/meter/state"
        await publish(broker, topic, json.dumps({"a_current": 1, "b_current": 2}))
        await publish(broker, topic, b"garbage " * 50)
        await publish(broker, topic, json.dumps({**SHELLY_PRO_3EM, "c_current": -1}))
        await until(lambda: run.status("house").errors == 3, what="3 errors")
        status = run.status("house")
        assert run.samples == [] and status.current_a is None and status.at is None
        assert status.last_error == ("meter house: L3 path c_current: negative current -1 A "
                                     "(mqtt home/meter/state)")
        warned = ours(caplog)
        assert warned == ["meter house: L3 path c_current missing (mqtt home/meter/state)"]

        run.clock.advance(61)
        await publish(broker, topic, "NaN")
        await until(lambda: run.status("house").errors == 4, what="4th error")
        assert len(ours(caplog)) == 2
        assert ours(caplog)[1].startswith("meter house: payload is not JSON")

        await publish(broker, topic, json.dumps(SHELLY_PRO_3EM))
        await until(lambda: len(run.samples) == 1, what="a good reading after bad ones")
        assert run.status("house").errors == 4
    finally:
        await run.sources.stop()


async def test_mqtt_retained_replay_is_not_a_live_reading(broker: Mosquitto) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("home/meter/state", "5", retain=True)  # from a meter long gone
    run = make_run([mqtt_meter("house", "home/meter/state")], MqttSpec(url=broker.url))
    await run.sources.start()
    try:
        link = run.sources.link
        assert link is not None
        await until(lambda: link.replayed == 1, what="the retained message")
        assert run.samples == [] and run.status("house").errors == 0
        async with aiomqtt.Client(broker.host, broker.port) as client:
            await client.publish("home/meter/state", "6", retain=True)  # live, retained
        await until(lambda: len(run.samples) == 1, what="the live reading")
        assert run.samples[0].current_a == (6.0, 6.0, 6.0)
    finally:
        await run.sources.stop()


async def test_mqtt_reconnects_after_the_broker_restarts(broker: Mosquitto) -> None:
    run = make_run([mqtt_meter("house", "home/meter/state", unit="A")],
                   MqttSpec(url=broker.url), phases={"house": 1}, lines={"house": "L1"})
    await run.sources.start()
    try:
        link = run.sources.link
        assert link is not None
        await until(lambda: link.connected, what="first connection")
        await publish(broker, "home/meter/state", "7")
        await until(lambda: len(run.samples) == 1, what="reading before restart")

        await asyncio.to_thread(broker.stop)
        await until(lambda: not link.connected, what="the drop to be seen")
        status = run.status("house")
        assert status.errors == 1
        assert status.last_error is not None and status.last_error.startswith(
            f"meter house: broker mqtt://127.0.0.1:{broker.port}: ")
        await asyncio.sleep(1.0)  # a few failed attempts: still one error per outage
        assert run.status("house").errors == 1

        await asyncio.to_thread(broker.start)
        await until(lambda: link.connects == 2, within=15, what="reconnect")
        await publish(broker, "home/meter/state", "9")
        await until(lambda: len(run.samples) == 2, what="reading after restart")
        assert run.samples[-1].current_a == (9.0, 0.0, 0.0)
    finally:
        await run.sources.stop()


async def test_mqtt_broker_down_at_start_does_not_raise(tmp_path: Path) -> None:
    before = own_tasks()
    run = make_run([mqtt_meter("house", "home/meter/state")],
                   MqttSpec(url=f"mqtt://127.0.0.1:{free_port()}"))
    await run.sources.start()
    await until(lambda: run.status("house").errors == 1, what="the outage to be counted")
    assert "broker mqtt://127.0.0.1:" in (run.status("house").last_error or "")
    await run.sources.stop()
    assert own_tasks() == before


async def test_mqtt_config_the_broker_cannot_take_is_an_error_not_a_crash() -> None:
    run = make_run([mqtt_meter("house", "home/#/state"), mqtt_meter("shed", "shed/power")],
                   MqttSpec(url="mqtt://127.0.0.1:99999"))
    assert run.status("house").last_error == (
        "meter house: not a valid MQTT topic: it is never subscribed (mqtt home/#/state)")
    await run.sources.start()
    await run.sources.stop()
    assert run.sources.link is None
    assert "mqtt.url: not an mqtt://host[:port]" in (run.status("shed").last_error or "")


async def test_mqtt_username_and_password_file(auth_broker: Mosquitto) -> None:
    user = "gs"
    run = make_run([mqtt_meter("house", "home/meter/state", fields=SHELLY_FIELDS)],
                   MqttSpec(url=auth_broker.url, username=user,
                            password_file=auth_broker.password_file(user),
                            client_id="gridshare-test"))
    await run.sources.start()
    try:
        link = run.sources.link
        assert link is not None
        await until(lambda: link.connected, what="authenticated connection")
        await publish(auth_broker, "home/meter/state", json.dumps(SHELLY_PRO_3EM),
                      username=user, password=auth_broker.users[user])
        await until(lambda: len(run.samples) == 1, what="reading")
        assert run.samples[0].current_a == approx3(4.029, 4.027, 3.03)
    finally:
        await run.sources.stop()


async def test_mqtt_wrong_password_is_an_outage_not_a_crash(auth_broker: Mosquitto,
                                                            tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password\n")
    missing = tmp_path / "missing.pw"
    for password_file, expect in ((wrong, "Not authorized"),
                                  (missing, f"password_file {missing}: No such file")):
        run = make_run([mqtt_meter("house", "home/meter/state")],
                       MqttSpec(url=auth_broker.url, username="gs",
                                password_file=password_file))
        await run.sources.start()
        try:
            await until(lambda r=run: r.status("house").errors >= 1, what="refusal counted")
            assert expect in (run.status("house").last_error or "")
            assert run.sources.link is not None and not run.sources.link.connected
        finally:
            await run.sources.stop()


async def test_mqtts_with_the_site_cafile(tls_broker: Mosquitto) -> None:
    run = make_run([mqtt_meter("house", "home/meter/state", field="power", unit="W")],
                   MqttSpec(url=tls_broker.url, cafile=tls_broker.ca_path))
    await run.sources.start()
    try:
        link = run.sources.link
        assert link is not None
        await until(lambda: link.connected, what="TLS connection")
        context = ssl.create_default_context(cafile=str(tls_broker.ca_path))
        async with aiomqtt.Client(tls_broker.host, tls_broker.port,
                                  tls_context=context) as client:
            await client.publish("home/meter/state", json.dumps(EVCC_GRID))
        await until(lambda: len(run.samples) == 1, what="reading over TLS")
        assert run.samples[0].current_a == approx3(10.0, 10.0, 10.0)
    finally:
        await run.sources.stop()


async def test_mqtts_unknown_ca_is_refused_as_an_outage(tls_broker: Mosquitto) -> None:
    run = make_run([mqtt_meter("house", "home/meter/state")],
                   MqttSpec(url=tls_broker.url))  # system CAs: the test CA is not among them
    await run.sources.start()
    try:
        await until(lambda: run.status("house").errors == 1, what="refusal counted")
        assert "CERTIFICATE_VERIFY_FAILED" in (run.status("house").last_error or "")
        assert run.sources.link is not None and not run.sources.link.connected
    finally:
        await run.sources.stop()


# --- HTTP ---------------------------------------------------------------------------------

@dataclass
class Endpoint:
    """What one path answers: a status, a body, and how long it takes."""

    body: bytes
    status: int = 200
    delay: float = 0.0


@dataclass
class FakeDevices:
    """A real HTTP server (stdlib, in a thread) playing several meters at once."""

    routes: dict[str, Endpoint]
    hits: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str) -> Endpoint:
        route = path.split("?", 1)[0]
        with self.lock:
            self.hits[route] = self.hits.get(route, 0) + 1
            self.in_flight[route] = self.in_flight.get(route, 0) + 1
            self.max_in_flight[route] = max(self.max_in_flight.get(route, 0),
                                            self.in_flight[route])
        return self.routes.get(route, Endpoint(b"not found", 404))

    def done(self, path: str) -> None:
        with self.lock:
            self.in_flight[path.split("?", 1)[0]] -= 1


@pytest.fixture
def devices() -> Iterator[FakeDevices]:
    fake = FakeDevices({})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            endpoint = fake.answer(self.path)
            try:
                time.sleep(endpoint.delay)
                self.send_response(endpoint.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(endpoint.body)))
                self.end_headers()
                self.wfile.write(endpoint.body)
            except OSError:
                pass  # the client gave up (timeout test)
            finally:
                fake.done(self.path)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


async def test_http_polls_real_device_payloads(devices: FakeDevices) -> None:
    before = own_tasks()
    devices.routes.update({
        "/rpc/EM.GetStatus": Endpoint(body(SHELLY_PRO_3EM)),
        "/query": Endpoint(body(IOTAWATT_QUERY)),
        "/api/meter": Endpoint(body(EVCC_GRID)),
    })
    run = make_run([
        http_meter("shelly", devices.url("/rpc/EM.GetStatus?id=0"), fields=SHELLY_FIELDS,
                   interval=0.2),
        http_meter("iotawatt", devices.url(
            "/query?select=[time.iso,Grid_L1.amps.d2,Grid_L2.amps.d2,Grid_L3.amps.d2]"
            "&begin=s-5s&end=s&group=all&format=json"),
            fields={"L1": "0.1", "L2": "0.2", "L3": "0.3"}, interval=0.2),
        http_meter("evcc", devices.url("/api/meter"), field="power", unit="W", interval=0.2),
    ], phases={"evcc": 1}, lines={"evcc": "L1"})
    await run.sources.start()
    try:
        await until(lambda: all(run.of(m) for m in ("shelly", "iotawatt", "evcc")),
                    what="one sample of each")
        assert run.of("shelly")[0] == MeterSample("shelly", T0, approx3(4.029, 4.027, 3.03))
        assert run.of("iotawatt")[0].current_a == approx3(12.31, 8.02, 4.5)
        assert run.of("evcc")[0].current_a == approx3(30.0, 0.0, 0.0)
        run.clock.advance(1)
        n = len(run.of("shelly"))
        await until(lambda: len(run.of("shelly")) > n, what="the next poll")
        assert run.of("shelly")[-1].at == T0.replace(second=1)
        status = run.status("evcc")
        assert (status.source, status.where, status.errors) == (
            "http", f"http {devices.url('/api/meter')}", 0)
    finally:
        await run.sources.stop()
    assert own_tasks() == before, "stop() left a task behind"


async def test_http_errors_are_counted_and_never_published(devices: FakeDevices) -> None:
    devices.routes.update({
        "/down": Endpoint(b"internal error", 500),
        "/html": Endpoint(b"<html><body>login required</body></html>"),
        "/slow": Endpoint(body({"power": 1000}), delay=2.0),
    })
    run = make_run([
        http_meter("down", devices.url("/down"), field="power", unit="W", interval=0.2),
        http_meter("html", devices.url("/html"), field="power", unit="W", interval=0.2),
        http_meter("slow", devices.url("/slow"), field="power", unit="W", interval=0.5),
        http_meter("gone", devices.url("/nothing-here"), field="power", unit="W",
                   interval=0.2),
        http_meter("refused", f"http://127.0.0.1:{free_port()}/", field="power", unit="W",
                   interval=0.2),
    ])
    await run.sources.start()
    try:
        await until(lambda: all(s.errors >= 1 for s in run.sources.status().values()),
                    what="an error for every meter")
        errors = {m: s.last_error for m, s in run.sources.status().items()}
        assert errors["down"] == (f"meter down: HTTP 500 Internal Server Error "
                                  f"(http {devices.url('/down')})")
        assert errors["gone"] is not None and "HTTP 404" in errors["gone"]
        assert errors["html"] == ("meter html: payload is not JSON: "
                                  "'<html><body>login required</body></html>' "
                                  f"(http {devices.url('/html')})")
        assert errors["slow"] == f"meter slow: no answer within 1 s (http {devices.url('/slow')})"
        assert errors["refused"] is not None and "ConnectError" in errors["refused"]
        assert run.samples == []
    finally:
        await run.sources.stop()


async def test_http_slow_endpoint_never_piles_up_requests(devices: FakeDevices) -> None:
    devices.routes["/slow"] = Endpoint(body({"power": 2300}), delay=0.6)
    run = make_run([http_meter("slow", devices.url("/slow"), field="power", unit="W",
                               interval=0.1)], phases={"slow": 1})
    await run.sources.start()
    try:
        await until(lambda: len(run.samples) >= 3, what="3 slow answers")
    finally:
        await run.sources.stop()
    assert devices.max_in_flight["/slow"] == 1
    assert devices.hits["/slow"] <= len(run.samples) + 1
    assert run.samples[0].current_a == (10.0, 10.0, 10.0)  # 1-phase, line not given
    assert run.status("slow").errors == 0


async def test_http_recovers_after_an_outage(devices: FakeDevices,
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gridshare.meters")
    devices.routes["/m"] = Endpoint(b"busy", 503)
    run = make_run([http_meter("m", devices.url("/m"), field="p", unit="kW", interval=0.1)])
    await run.sources.start()
    try:
        await until(lambda: run.status("m").errors >= 3, what="several failed polls")
        devices.routes["/m"] = Endpoint(body({"p": 6.9}))
        await until(lambda: len(run.samples) == 1, within=15, what="recovery")
        assert run.samples[0].current_a == approx3(10.0, 10.0, 10.0)
    finally:
        await run.sources.stop()
    messages = ours(caplog)
    assert messages[0].startswith("meter m: HTTP 503 Service Unavailable")
    assert sum("HTTP 503" in m for m in messages) == 1, "one log line per outage"
    assert f"meter m: reading again (http {devices.url('/m')})" in messages


def test_http_status_masks_a_password_in_the_url() -> None:
    run = make_run([http_meter("m", "http://admin:hunter2@192.0.2.20/status", field="p",
                               unit="W")])
    assert run.status("m").where == "http http://admin:***@192.0.2.20/status"


async def test_no_meters_starts_and_stops_nothing() -> None:
    before = own_tasks()
    run = make_run([MeterSpec(id="cp", source="ocpp", charger="cp-1")])
    await run.sources.start()
    assert run.sources.status() == {} and run.sources.link is None
    await run.sources.stop()
    assert own_tasks() == before
