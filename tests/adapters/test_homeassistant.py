"""Home Assistant over MQTT against a real Mosquitto: the real app (CSMS + controller) with
simulated OCPP chargers publishes discovery configs, availability and states (retained),
and takes a group-limit override on the command topic with the API's validation."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from brokers import Mosquitto
from waits import eventually

from gridshare.adapters.homeassistant import (
    Refused,
    Topics,
    discovery,
    object_id,
    parse_limit_command,
)
from gridshare.api.models import LimitOverride
from gridshare.app import GridshareApp, ServeOptions, build_app
from gridshare.config import HomeAssistantSpec, MqttSpec, parse_site
from gridshare.controller.loop import ControllerSettings
from gridshare.events import LimitChanged
from gridshare.sim import EV, SimCharger
from gridshare.sim.site import SimSite

SITE = """
site: home
voltage: 230
groups:
  - id: service
    max_current: 40
    groups:
      - {id: left, max_current: 25, chargers: [h-1, h-2]}
      - {id: right, max_current: 16, phases: 1, chargers: [h-3]}
chargers:
  - {id: h-1, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: h-2, max_current: 32, phases: 3, failsafe_current: 0}
  - {id: h-3, max_current: 16, phases: 1, phase: L2, failsafe_current: 0}
"""

# What Home Assistant's MQTT discovery needs of every entity we publish.
REQUIRED = {"name", "unique_id", "state_topic", "device", "availability"}




@dataclass
class Listener:
    """A separate MQTT client recording every message (and whether it came retained)."""

    broker: Mosquitto
    filters: tuple[str, ...] = ("homeassistant/#", "gridshare/#")
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)
    client: aiomqtt.Client | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ready = asyncio.Event()

        async def run() -> None:
            async with aiomqtt.Client("127.0.0.1", self.broker.port) as client:
                self.client = client
                for f in self.filters:
                    await client.subscribe(f, qos=1)
                ready.set()
                async for m in client.messages:
                    payload = m.payload if isinstance(m.payload, bytes) else \
                        str(m.payload).encode()
                    self.messages.append((m.topic.value, payload, m.retain))

        self._task = asyncio.create_task(run())
        await asyncio.wait_for(ready.wait(), 5.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def last(self, topic: str) -> bytes | None:
        found = [p for t, p, _ in self.messages if t == topic]
        return found[-1] if found else None

    def last_json(self, topic: str) -> Any:
        raw = self.last(topic)
        return None if raw is None else json.loads(raw)

    def count(self, topic: str) -> int:
        return sum(1 for t, _, _ in self.messages if t == topic)

    async def publish(self, topic: str, payload: str) -> None:
        assert self.client is not None
        await self.client.publish(topic, payload, qos=1)


class Site:
    def __init__(self, broker: Mosquitto, db_url: str = "none") -> None:
        self.topology = parse_site(SITE, "home")
        settings = ControllerSettings(lease_s=60.0, settle_s=1.0, debounce_s=0.02,
                                      tick_s=0.25, retry_backoff_s=0.2)
        self.app: GridshareApp = build_app(self.topology, ServeOptions(
            host="127.0.0.1", ocpp_port=0, api_port=None, db_url=db_url,
            controller=settings, mqtt=MqttSpec(url=broker.url)))
        self.sim = SimSite(tick_s=0.1)
        self.topics = Topics("home")

    async def start(self) -> None:
        await self.app.start()
        url = f"ws://127.0.0.1:{self.app.ocpp_port}"
        for cid, ch in self.topology.chargers.items():
            self.sim.add_charger(SimCharger(
                cid, url, protocol="ocpp1.6", phases=ch.phases,
                phase=ch.phase.name if ch.phase is not None else "L1",
                max_current_a=ch.max_current, min_current_a=ch.min_current,
                meter_interval_s=2.0))
        assert await self.sim.start(wait_connected_s=10.0) == len(self.topology.chargers)
        await eventually(lambda: self.app.controller.state.online_count() == 3)

    async def stop(self) -> None:
        await self.sim.stop()
        await self.app.stop()

    def plug(self, charger: str) -> None:
        ev = EV(capacity_kwh=60.0, soc=0.3, max_current_a=32.0, setpoint_lag_s=0.2)
        self.sim.chargers[charger].plug_nowait(1, ev)

    def offered(self, charger: str) -> float:
        return self.sim.chargers[charger].offered_a(1)

    def limit(self, group: str) -> float | None:
        return next(g.limit_a for g in self.app.controller.status().groups if g.id == group)


@pytest.fixture
async def site(broker: Mosquitto) -> AsyncIterator[Site]:
    s = Site(broker)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def listener(broker: Mosquitto, site: Site) -> AsyncIterator[Listener]:
    bridge = site.app.homeassistant
    assert bridge is not None
    await eventually(lambda: bridge.connected)
    # The discovery and state messages are retained: a client that comes later gets them.
    await eventually(lambda: bridge.published >= 6)  # 3 groups, 3 chargers
    await asyncio.sleep(0.3)  # written is not yet read by the broker
    found = Listener(broker)
    await found.start()
    try:
        yield found
    finally:
        await found.stop()


# --- against the broker ------------------------------------------------------------------


async def test_discovery_configs_are_retained_with_what_home_assistant_needs(
        site: Site, listener: Listener) -> None:
    expected = discovery(site.topology, site.topics)
    await eventually(lambda: all(listener.last(t) is not None for t, _ in expected))
    configs = {t: json.loads(p) for t, p, retained in listener.messages
               if t.startswith("homeassistant/") and retained}
    assert set(configs) == {t for t, _ in expected}
    for topic, config in configs.items():
        assert set(config) >= REQUIRED, (topic, REQUIRED - set(config))
        assert config["device"]["identifiers"] == ["gridshare_home"]
        assert config["availability"] == [{"topic": "gridshare/home/status",
                                           "payload_available": "online",
                                           "payload_not_available": "offline"}]
    # A sensor per phase of each group's load, its limit; the 1-phase group on L2 only.
    for name in ("service_l1", "service_l2", "service_l3", "service_limit", "left_l1",
                 "right_l2", "right_limit", "charger_h-1_state", "charger_h-1_setpoint",
                 "charger_h-1_current"):
        assert f"homeassistant/sensor/gridshare_home_{name}/config" in configs, name
    assert "homeassistant/sensor/gridshare_home_right_l1/config" not in configs
    load = configs["homeassistant/sensor/gridshare_home_left_l1/config"]
    assert load["state_topic"] == "gridshare/home/group/left/state"
    assert load["unit_of_measurement"] == "A"
    assert load["device_class"] == "current"
    number = configs["homeassistant/number/gridshare_home_left_limit_override/config"]
    assert number["command_topic"] == "gridshare/home/group/left/limit/set"
    assert number["max"] == 25
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    # Availability: online, retained.
    assert (("gridshare/home/status", b"online", True) in listener.messages)
    # Every state topic is there at once (retained).
    for topic in ("gridshare/home/group/service/state", "gridshare/home/group/left/state",
                  "gridshare/home/charger/h-3/state"):
        await eventually(lambda t=topic: listener.last(t) is not None)  # type: ignore[misc]
    assert any(t == "gridshare/home/group/left/state" and retained
               for t, _, retained in listener.messages)
    left = listener.last_json("gridshare/home/group/left/state")
    assert left["limit"] == 25.0
    assert left["static_limit"] == 25.0


async def test_states_follow_changes(site: Site, listener: Listener) -> None:
    topic = site.topics.charger_state("h-1")
    group = site.topics.group_state("left")
    await eventually(lambda: listener.last(topic) is not None)
    # No change, no message: quiet seconds (no car) publish nothing new.
    n = listener.count(group), listener.count(topic)
    await asyncio.sleep(1.5)
    assert (listener.count(group), listener.count(topic)) == n
    site.plug("h-1")
    await eventually(lambda: site.offered("h-1") == 25.0, 15.0)
    # The charger's state topic says what the controller holds in force.
    # The status follows the car a moment after the setpoint (Preparing, then Charging).
    await eventually(lambda: (listener.last_json(topic) or {}).get("setpoint") == 25.0
                     and (listener.last_json(topic) or {}).get("status") == "Charging")
    state = listener.last_json(topic)
    assert state["status"] == "Charging"
    assert state["online"] is True
    in_force = site.app.controller.in_force()[("h-1", 1)]
    assert state["setpoint"] == in_force == 25.0
    assert state["connectors"][0]["connector"] == 1
    await eventually(lambda: (listener.last_json(group) or {}).get("l1") == 25.0)
    assert listener.last_json(group)["load"] == [25.0, 25.0, 25.0]


async def test_override_on_the_command_topic_lowers_the_setpoints(
        site: Site, listener: Listener) -> None:
    site.plug("h-1")
    site.plug("h-2")
    await eventually(lambda: site.offered("h-1") == site.offered("h-2") == 12.5, 15.0)
    await listener.publish("gridshare/home/group/left/limit/set", "10")
    await eventually(lambda: site.offered("h-1") == site.offered("h-2") == 5.0 or
                     site.offered("h-1") + site.offered("h-2") <= 10.0, 15.0)
    assert site.offered("h-1") + site.offered("h-2") <= 10.0
    assert site.limit("left") == 10.0
    group = site.topics.group_state("left")
    await eventually(lambda: (listener.last_json(group) or {}).get("limit") == 10.0)
    assert listener.last_json(group)["override"] == {"max_current": 10.0, "max_power": None,
                                                     "until": None}
    # The API's body works too, and null everywhere removes the override.
    await listener.publish("gridshare/home/group/left/limit/set",
                           json.dumps({"max_current": 20, "max_power": None, "until": None}))
    await eventually(lambda: site.limit("left") == 20.0)
    await eventually(lambda: site.offered("h-1") == site.offered("h-2") == 10.0, 15.0)
    await listener.publish("gridshare/home/group/left/limit/set",
                           json.dumps({"max_current": None, "max_power": None, "until": None}))
    await eventually(lambda: site.limit("left") == 25.0)
    await eventually(lambda: site.offered("h-1") == site.offered("h-2") == 12.5, 15.0)
    await eventually(lambda: listener.last_json(group)["override"] is None)
    bridge = site.app.homeassistant
    assert bridge is not None
    assert bridge.commands == 3
    assert bridge.refused == 0


async def test_an_override_is_recorded_in_the_audit_log(broker: Mosquitto,
                                                       tmp_path: Path) -> None:
    s = Site(broker, db_url=f"sqlite:///{tmp_path / 'audit.db'}")
    await s.start()
    try:
        bridge = s.app.homeassistant
        assert bridge is not None and s.app.store is not None
        await eventually(lambda: bridge.connected)
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.publish("gridshare/home/group/left/limit/set",
                                 '{"max_current": 12, "until": "2099-01-01T00:00:00Z"}', qos=1)
        await eventually(lambda: s.limit("left") == 12.0)
        await s.app.store.flush()
        rows = [r for r in await s.app.store.rows("events", limit=1000)
                if r["kind"] == "LimitChanged"]
        assert len(rows) == 1
        assert rows[0]["group_id"] == "left"
        payload = json.loads(rows[0]["payload"])
        assert payload["source"] == "operator"
        assert payload["max_current"] == 12
        assert payload["reason"] == "operator override (Home Assistant)"
        assert payload["until"].startswith("2099-01-01T00:00:00")
    finally:
        await s.stop()


@pytest.mark.parametrize("topic, payload, error", [
    ("gridshare/home/group/left/limit/set", '{"max_current": -5}', "invalid limit override"),
    ("gridshare/home/group/left/limit/set", '{"max_current": 10, "bogus": 1}',
     "invalid limit override"),
    ("gridshare/home/group/left/limit/set", "-1", "invalid limit override"),
    ("gridshare/home/group/left/limit/set", "ten amps", "not JSON"),
    ("gridshare/home/group/left/limit/set", "[10]", "expected a number"),
    ("gridshare/home/group/left/limit/set",
     '{"max_current": 10, "until": "2020-01-01T00:00:00Z"}', "is not in the future"),
    ("gridshare/home/group/nowhere/limit/set", "10", "unknown group 'nowhere'"),
], ids=["negative", "unknown-field", "negative-number", "not-json", "list", "past-until",
        "unknown-group"])
async def test_an_invalid_override_is_refused_and_changes_nothing(
        site: Site, listener: Listener, topic: str, payload: str, error: str,
        caplog: pytest.LogCaptureFixture) -> None:
    site.plug("h-1")
    await eventually(lambda: site.offered("h-1") == 25.0, 15.0)
    events: list[object] = []
    site.app.controller.on_event(events.append)
    await listener.publish(topic, payload)
    await eventually(lambda: listener.last("gridshare/home/error") is not None)
    body = listener.last_json("gridshare/home/error")
    assert error in body["error"]
    assert body["topic"] == topic
    assert not any(isinstance(e, LimitChanged) for e in events)
    assert site.limit("left") == 25.0
    await asyncio.sleep(0.3)
    assert site.offered("h-1") == 25.0
    assert f"refused the command on {topic}" in caplog.text
    bridge = site.app.homeassistant
    assert bridge is not None
    assert (bridge.refused, bridge.commands) == (1, 0)


async def test_a_retained_command_replayed_on_connect_is_ignored(broker: Mosquitto) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        await client.publish("gridshare/home/group/left/limit/set", "5", qos=1, retain=True)
    s = Site(broker)
    await s.start()
    try:
        bridge = s.app.homeassistant
        assert bridge is not None
        await eventually(lambda: bridge.connected and bridge.published > 0)
        await asyncio.sleep(0.3)
        assert bridge.commands == 0
        assert s.limit("left") == 25.0
    finally:
        await s.stop()


async def test_offline_on_stop_and_disabled_publishes_nothing(broker: Mosquitto) -> None:
    s = Site(broker)
    await s.start()
    bridge = s.app.homeassistant
    assert bridge is not None
    await eventually(lambda: bridge.connected)
    await s.stop()
    seen = Listener(broker, filters=("gridshare/#", "homeassistant/#"))
    await seen.start()
    await eventually(lambda: seen.last("gridshare/home/status") is not None)
    assert seen.last("gridshare/home/status") == b"offline"
    await seen.stop()
    off = build_app(s.topology, ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none",
        mqtt=MqttSpec(url=broker.url, homeassistant=HomeAssistantSpec(enabled=False))))
    assert off.homeassistant is None


class Proxy:
    """A TCP relay to the broker whose connections the test can cut (no DISCONNECT sent:
    the broker sees the client vanish and publishes its will)."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker.port)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)),
                     asyncio.create_task(pipe(up_reader, writer))):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_the_last_will_says_offline_when_the_link_dies(broker: Mosquitto) -> None:
    proxy = Proxy(broker)
    await proxy.start()
    topology = parse_site(SITE, "home")
    app = build_app(topology, ServeOptions(
        host="127.0.0.1", ocpp_port=0, api_port=None, db_url="none",
        mqtt=MqttSpec(url=f"mqtt://127.0.0.1:{proxy.port}")))
    await app.start()
    seen = Listener(broker, filters=("gridshare/home/status",))
    try:
        bridge = app.homeassistant
        assert bridge is not None
        await eventually(lambda: bridge.connected)
        await seen.start()
        await eventually(lambda: seen.last("gridshare/home/status") == b"online")
        n = len(seen.messages)
        proxy.cut()  # the link dies under the client: the broker publishes the will
        await eventually(lambda: b"offline" in [p for _, p, _ in seen.messages[n:]])
        # It reconnects (backoff from 0.5 s) and says online again.
        await eventually(lambda: bridge.connects >= 2, 15.0)
        await eventually(lambda: seen.last("gridshare/home/status") == b"online")
    finally:
        await seen.stop()
        await app.stop()
        await proxy.stop()


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("payload, expected", [
    (b"16", LimitOverride(max_current=16)),
    (b"16.5", LimitOverride(max_current=16.5)),
    (b'{"max_power": 7.4}', LimitOverride(max_power=7.4)),
    (b'{"max_current": null, "max_power": null, "until": null}', LimitOverride()),
    (b"{}", LimitOverride()),
], ids=["int", "float", "power", "remove", "empty"])
def test_parse_limit_command_accepts(payload: bytes, expected: LimitOverride) -> None:
    assert parse_limit_command(payload) == expected


@pytest.mark.parametrize("payload", [
    b"-3", b"NaN", b"Infinity", b"true", b"null", b'"16"', b'{"max_current": "a lot"}',
    b'{"max_current": 10, "until": "2030-01-01T00:00:00"}',  # naive time
    b'{"until": "2030-01-01T00:00:00Z"}',  # an end without a limit
    b"\xff",
], ids=["negative", "nan", "inf", "bool", "null", "string", "text-value", "naive-until",
        "until-only", "not-utf8"])
def test_parse_limit_command_refuses(payload: bytes) -> None:
    assert isinstance(parse_limit_command(payload), Refused)


def test_topics_and_object_ids() -> None:
    topics = Topics("home")
    assert topics.group_of_command("gridshare/home/group/left/limit/set") == "left"
    assert topics.group_of_command("gridshare/home/group/a.b:c/limit/set") == "a.b:c"
    assert topics.group_of_command("gridshare/home/group//limit/set") is None
    assert topics.group_of_command("gridshare/other/group/left/limit/set") is None
    assert object_id("gridshare", "home", "left") == "gridshare_home_left"
    dotted, underscored = object_id("gridshare", "a.b"), object_id("gridshare", "a_b")
    assert dotted != underscored
    assert dotted.startswith("gridshare_a_b_")
    assert all(c.isalnum() or c in "_-" for c in dotted)


async def test_an_adopted_charger_is_discovered_without_a_restart(
        site: Site, listener: Listener) -> None:
    from gridshare.api.adopt import apply_additions
    from gridshare.config import parse_site_config

    adopted = SITE.replace("[h-1, h-2]", "[h-1, h-2, h-4]") + \
        "  - {id: h-4, max_current: 16, phases: 3, failsafe_current: 0}\n"
    assert apply_additions(site.app, parse_site_config(adopted)) == {"h-4": "not connected"}
    topic = "homeassistant/sensor/gridshare_home_charger_h-4_state/config"
    await eventually(lambda: listener.last(topic) is not None)
    config = listener.last_json(topic)
    assert config["state_topic"] == "gridshare/home/charger/h-4/state"
    await eventually(lambda: listener.last("gridshare/home/charger/h-4/state") is not None)
