"""Home Assistant over MQTT: the site's groups and chargers as entities, and a group-limit
override on a command topic.

When the site file has ``mqtt:`` (and ``mqtt.homeassistant.enabled`` is not false), one
MQTT connection — the same broker settings and helpers as the meters'
(:mod:`gridshare.adapters.meters.mqtt`) — publishes, all retained:

- MQTT discovery configs under ``<discovery_prefix>/<component>/<object id>/config``: one
  device per site; per group a load sensor per phase (``gridshare_<site>_<group>_l1``…), a
  limit sensor (``…_limit``) and a ``number`` for the operator override (``…_limit_override``);
  per charger its state, setpoint and current (``gridshare_<site>_charger_<id>_state``…);
- ``gridshare/<site>/status``: ``online``, and ``offline`` as the connection's last will
  (and on a clean stop) — every entity's availability;
- ``gridshare/<site>/group/<id>/state`` and ``gridshare/<site>/charger/<id>/state``: JSON,
  published when it changes (looked for after every allocation cycle, at most every 0.5 s,
  and otherwise every 1.5 s; on a large site so that reading the controller takes at most
  a fifth of the event loop) and all of them at least every 30 s.

It subscribes to ``gridshare/<site>/group/+/limit/set``: the body of ``PUT
/api/v1/groups/{id}/limit`` (``{"max_current", "max_power", "until"}``) or a plain number
(= ``max_current``), validated by the API's own model
(:class:`gridshare.api.models.LimitOverride`). A valid one becomes the operator's limit
source of that group (a :class:`~gridshare.events.LimitChanged` on the bus, which the
controller applies and the audit store records, exactly as the API's); anything else is
refused with a log line and a JSON error on ``gridshare/<site>/error``, and nothing
changes. A retained command replayed by the broker on subscribing is ignored: its age is
unknown, and an old override must not come back after a restart.

The broker may be down or restart: the connection is retried with the meters' capped
backoff and never raises; it logs an outage once and the recovery once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiomqtt
from pydantic import ValidationError

from gridshare import __version__
from gridshare.adapters.meters.mqtt import BrokerAddress, keep_connected, make_client
from gridshare.api.models import LimitOverride
from gridshare.clock import Clock
from gridshare.config import HomeAssistantSpec, MqttSpec
from gridshare.controller.views import ConnectorView, ControllerStatus, GroupView
from gridshare.core.snapshot import GroupLimit
from gridshare.core.topology import Topology
from gridshare.events import Event, LimitChanged
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    from gridshare.controller.loop import Controller

log = logging.getLogger("gridshare.homeassistant")

REFRESH_S = 30.0
"""Every state topic is published at least this often, changed or not."""
POLL_S = 1.0
"""Changes are looked for at least this often (and after every allocation cycle)."""
MIN_INTERVAL_S = 0.5
"""At most this often: a burst of cycles is one publication."""
PACE = 5.0
"""And no more often than this many times what reading the controller took."""
ONLINE, OFFLINE = "online", "offline"
OVERRIDE_SOURCE = "operator"
"""The API's limit source: an override from either replaces the other's."""
PHASE_NAMES = ("L1", "L2", "L3")
PUBLISH_BATCH = 10
"""Messages in flight at once (the client warns above ten pending)."""
_OBJECT_ID = re.compile(r"[^a-zA-Z0-9_-]")


def object_id(*parts: str) -> str:
    """A discovery object id (``[a-zA-Z0-9_-]``) from ids that may hold ``.`` or ``:``; a
    changed id gets a short hash of the original, so ``a.b`` and ``a_b`` stay apart."""
    raw = "_".join(parts)
    clean = _OBJECT_ID.sub("_", raw)
    if clean != raw:
        clean += "_" + hashlib.sha1(raw.encode("utf-8")).hexdigest()[:6]
    return clean


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic of one site."""

    site: str
    discovery_prefix: str = "homeassistant"

    @property
    def base(self) -> str:
        return f"gridshare/{self.site}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def error(self) -> str:
        return f"{self.base}/error"

    def group_state(self, group: str) -> str:
        return f"{self.base}/group/{group}/state"

    def charger_state(self, charger: str) -> str:
        return f"{self.base}/charger/{charger}/state"

    def limit_set(self, group: str) -> str:
        return f"{self.base}/group/{group}/limit/set"

    @property
    def limit_set_filter(self) -> str:
        return f"{self.base}/group/+/limit/set"

    def group_of_command(self, topic: str) -> str | None:
        """The group id in a ``…/group/<id>/limit/set`` topic (None: not one)."""
        head, tail = f"{self.base}/group/", "/limit/set"
        if topic.startswith(head) and topic.endswith(tail) and len(topic) > len(head + tail):
            return topic[len(head):-len(tail)]
        return None

    def config(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{object_id}/config"


def group_lines(topology: Topology, group_id: str) -> tuple[int, ...]:
    """Phase indices a group's load sensors show: all three for a 3-phase group, the lines
    its chargers are on for a 1-phase one."""
    if topology.groups[group_id].phases == 3:
        return (0, 1, 2)
    used = [False, False, False]
    for cid in topology.subtree_chargers(group_id):
        for i, on in enumerate(topology.chargers[cid].phase_vector):
            used[i] = used[i] or bool(on)
    return tuple(i for i in range(3) if used[i]) or (0,)


def discovery(topology: Topology, topics: Topics) -> list[tuple[str, dict[str, Any]]]:
    """Every discovery config of the site: (config topic, payload)."""
    site = topology.site
    device = {"identifiers": [object_id("gridshare", site)], "name": f"gridshare {site}",
              "manufacturer": "gridshare", "model": "EV load management",
              "sw_version": __version__}
    common = {"device": device,
              "availability": [{"topic": topics.status, "payload_available": ONLINE,
                                "payload_not_available": OFFLINE}],
              "origin": {"name": "gridshare", "sw_version": __version__}}
    amps = {"device_class": "current", "unit_of_measurement": "A",
            "state_class": "measurement"}
    out: list[tuple[str, dict[str, Any]]] = []

    def add(component: str, oid: str, payload: dict[str, Any]) -> None:
        out.append((topics.config(component, oid),
                    {**payload, "unique_id": oid, **common}))

    for gid, group in topology.groups.items():
        state = topics.group_state(gid)
        for i in group_lines(topology, gid):
            name = PHASE_NAMES[i]
            add("sensor", object_id("gridshare", site, gid, name.lower()),
                {"name": f"{gid} load {name}", "state_topic": state,
                 "value_template": f"{{{{ value_json.{name.lower()} }}}}", **amps})
        add("sensor", object_id("gridshare", site, gid, "limit"),
            {"name": f"{gid} limit", "state_topic": state,
             "value_template": "{{ value_json.limit }}", **amps})
        static = group.max_current
        add("number", object_id("gridshare", site, gid, "limit_override"),
            {"name": f"{gid} limit override", "state_topic": state,
             "value_template": "{{ value_json.limit }}",
             "command_topic": topics.limit_set(gid), "min": 0,
             "max": static if static is not None else 1000, "step": 1, "mode": "box",
             "device_class": "current", "unit_of_measurement": "A"})
    for cid in topology.chargers:
        state = topics.charger_state(cid)
        add("sensor", object_id("gridshare", site, "charger", cid, "state"),
            {"name": f"{cid} state", "state_topic": state,
             "value_template": "{{ value_json.status }}", "json_attributes_topic": state})
        add("sensor", object_id("gridshare", site, "charger", cid, "setpoint"),
            {"name": f"{cid} setpoint", "state_topic": state,
             "value_template": "{{ value_json.setpoint }}", **amps})
        add("sensor", object_id("gridshare", site, "charger", cid, "current"),
            {"name": f"{cid} current", "state_topic": state,
             "value_template": "{{ value_json.current }}", **amps})
    return out


def _amps(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 2)


def group_state(group: GroupView, static_limit: float | None,
                override: tuple[GroupLimit, datetime | None] | None = None) -> dict[str, Any]:
    """A group's state topic: load per phase (uncontrolled load plus our chargers at their
    worst case: what the limit is checked against), the limit in force and the operator's
    override (null: none)."""
    load = [_amps(c + u) for c, u in zip(group.counted_a, group.uncontrolled_a, strict=True)]
    return {"l1": load[0], "l2": load[1], "l3": load[2], "load": load,
            "limit": _amps(group.limit_a), "static_limit": _amps(static_limit),
            "override": None if override is None else {
                "max_current": _amps(override[0].max_current),
                "max_power": _amps(override[0].max_power_kw),
                "until": override[1].isoformat() if override[1] is not None else None},
            "measured": [_amps(a) for a in group.measured_a],
            "limit_power": _amps(group.limit_power_kw), "power": _amps(group.power_kw),
            "available": [_amps(a) for a in group.available_a],
            "chargers": [_amps(a) for a in group.counted_a],
            "uncontrolled": [_amps(a) for a in group.uncontrolled_a],
            "meter_stale": group.meter_stale}


_SHOWN_FIRST = ("Charging", "SuspendedEV", "SuspendedEVSE", "Preparing", "Finishing",
                "Faulted")


def charger_state(online: bool, connectors: list[ConnectorView]) -> dict[str, Any]:
    """A charger's state topic: its status (the busiest connector's; ``Offline`` when we
    cannot hear it), setpoint in force and current drawn (summed over its connectors; null
    when none is in force or measured) and each connector."""
    statuses = [c.status for c in connectors if c.status is not None]
    status = "Offline" if not online else next(
        (s for s in _SHOWN_FIRST if s in statuses), statuses[0] if statuses else "Unknown")
    setpoints = [c.setpoint_a for c in connectors if c.setpoint_a is not None]
    drawn = [c.drawn_a for c in connectors if c.drawn_a is not None]
    targets = [c.target_a for c in connectors if c.target_a is not None]
    return {"status": status, "online": online,
            "setpoint": _amps(sum(setpoints)) if setpoints else None,
            "target": _amps(sum(targets)) if targets else None,
            "current": _amps(sum(drawn)) if drawn else None,
            "counted": _amps(sum(c.counted_a for c in connectors)),
            "connectors": [{"connector": c.connector, "status": c.status,
                            "active": c.active, "setpoint": _amps(c.setpoint_a),
                            "target": _amps(c.target_a), "current": _amps(c.drawn_a)}
                           for c in connectors]}


def states(topology: Topology, topics: Topics, status: ControllerStatus,
           overrides: Mapping[str, tuple[GroupLimit, datetime | None]] | None = None,
           ) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every state topic and its payload, from one view of the controller (and the
    operator overrides in force: group id -> limit and end)."""
    overrides = overrides or {}
    for g in status.groups:
        yield topics.group_state(g.id), group_state(g, topology.groups[g.id].max_current,
                                                    overrides.get(g.id))
    by_charger: dict[str, list[ConnectorView]] = {}
    for c in status.connectors:
        by_charger.setdefault(c.charger, []).append(c)
    for cid, conns in by_charger.items():
        yield topics.charger_state(cid), charger_state(conns[0].online, conns)


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a command was refused, as published on the error topic."""

    error: str
    errors: tuple[dict[str, Any], ...] = ()


def parse_limit_command(payload: bytes) -> LimitOverride | Refused:
    """The body of a ``…/limit/set`` message: the API's JSON object or a plain number."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Refused(f"not JSON: {exc}")
    if isinstance(data, int | float) and not isinstance(data, bool):
        data = {"max_current": data}
    if not isinstance(data, dict):
        return Refused("expected a number (max_current in A) or an object "
                       '{"max_current", "max_power", "until"}')
    try:
        return LimitOverride.model_validate(data)
    except ValidationError as exc:
        errors = tuple({"loc": [str(p) for p in e["loc"]], "msg": e["msg"],
                        "type": e["type"]} for e in exc.errors(include_url=False))
        return Refused("invalid limit override", errors)


async def _publish_all(client: aiomqtt.Client, messages: list[tuple[str, str]], *,
                       qos: int) -> None:
    """Publish retained, a few at a time: a whole site at once would queue thousands of
    calls in the client (a warning each past ten)."""
    for i in range(0, len(messages), PUBLISH_BATCH):
        await asyncio.gather(*(client.publish(topic, text, qos=qos, retain=True)
                               for topic, text in messages[i:i + PUBLISH_BATCH]))


class HomeAssistantBridge:
    """Publishes the site for Home Assistant and takes its group-limit overrides."""

    def __init__(self, topology: Topology, spec: MqttSpec, controller: Controller,
                 publish: Callable[[Event], None], clock: Clock, *,
                 ha: HomeAssistantSpec | None = None, refresh_s: float = REFRESH_S,
                 poll_s: float = POLL_S) -> None:
        """``controller``: read for the states; ``publish``: the bus (a valid override goes
        there as a LimitChanged, as the API's)."""
        self._topology = topology
        self._spec = spec
        self._address = BrokerAddress.parse(spec.url)
        self.topics = Topics(topology.site, (ha or spec.homeassistant).discovery_prefix)
        self._controller = controller
        self._publish = publish
        self._clock = clock
        self._refresh_s = refresh_s
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._last: dict[str, str] = {}
        """State topic -> the payload last published on it."""
        self.connected = False
        self.connects = 0
        self.published = 0
        """State messages published so far."""
        self.commands = 0
        """Overrides applied."""
        self.refused = 0
        """Commands refused."""
        self._rediscover = False
        """Chargers were added since the discovery configs went out."""

    def set_topology(self, topology: Topology) -> None:
        """Chargers were added to the running site (adopted): their discovery configs go
        out now when connected (and with every later connect)."""
        self._topology = topology
        self._rediscover = True
        self._wake.set()

    def changed(self, *_: object) -> None:
        """Something changed in the controller: look for changed states soon."""
        self._wake.set()

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start publishing; never raises because the broker is down."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="homeassistant-mqtt")

    async def stop(self) -> None:
        """Say ``offline`` (retained) while still connected, then disconnect."""
        task, self._task = self._task, None
        if task is None:
            return
        client = self._client
        if client is not None and self.connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
        await cancel_and_wait([task])

    def _make_client(self) -> aiomqtt.Client:
        return make_client(self._spec, self._address, suffix="homeassistant", logger=log,
                           will=aiomqtt.Will(self.topics.status, OFFLINE, qos=1, retain=True))

    async def _run(self) -> None:
        await keep_connected(self, self._make_client, self._connected, self._serve,
                             label=f"homeassistant: mqtt {self._address}",
                             on_closed=self._closed)

    def _closed(self) -> None:
        self._client = None

    async def _connected(self, client: aiomqtt.Client) -> None:
        """Availability, discovery, then the command topic; every state is sent anew."""
        self._client = client
        await client.publish(self.topics.status, ONLINE, qos=1, retain=True)
        # QoS 0 like the states: TCP delivers them, and after a broken link all are sent
        # again (QoS 1 waits for an ack each, about 7 times slower here).
        await _publish_all(client, [(topic, json.dumps(payload)) for topic, payload
                                    in discovery(self._topology, self.topics)], qos=0)
        await client.subscribe(self.topics.limit_set_filter, qos=1)
        self._last.clear()
        self._rediscover = False

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Read commands while publishing states; return or raise when the link ends."""
        reader = asyncio.create_task(self._read(client), name="homeassistant-commands")
        try:
            full_at = -math.inf
            while not reader.done():
                if self._rediscover:
                    self._rediscover = False
                    await _publish_all(client, [(topic, json.dumps(payload)) for topic, payload
                                                in discovery(self._topology, self.topics)],
                                       qos=0)
                now = time.monotonic()
                full = now - full_at >= self._refresh_s
                self._wake.clear()
                spent_s = await self._publish_states(client, full=full)
                if full:
                    full_at = now
                # Reading the controller takes the event loop (~70 ms at 1,000 chargers):
                # at most a fifth of it goes to Home Assistant.
                await asyncio.sleep(max(MIN_INTERVAL_S, PACE * spent_s))
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({waiter, reader}, timeout=self._poll_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
            reader.result()  # the reader's error ends the connection (and reconnects)
        finally:
            await cancel_and_wait([reader], absorb=(aiomqtt.MqttError,))

    async def _publish_states(self, client: aiomqtt.Client, *, full: bool) -> float:
        """Publish the states that changed (all of them when ``full``); return how long
        the event loop spent reading the controller."""
        started = time.perf_counter()
        status = self._controller.status()
        state = self._controller.state
        overrides = {}
        for gid in self._topology.groups:
            found = state.limits_of(gid, status.at).get(OVERRIDE_SOURCE)
            if found is not None:
                overrides[gid] = found
        spent_s = time.perf_counter() - started
        # The view is frozen: encoding and comparing it can leave the loop.
        todo = await asyncio.to_thread(self._changed, status, overrides, full)
        if todo:
            await _publish_all(client, todo, qos=0)
            for topic, text in todo:
                self._last[topic] = text
            self.published += len(todo)
        return spent_s

    def _changed(self, status: ControllerStatus,
                 overrides: Mapping[str, tuple[GroupLimit, datetime | None]],
                 full: bool) -> list[tuple[str, str]]:
        todo = []
        for topic, payload in states(self._topology, self.topics, status, overrides):
            text = json.dumps(payload, sort_keys=True)
            if full or self._last.get(topic) != text:
                todo.append((topic, text))
        return todo

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            if message.retain:
                log.warning("homeassistant: ignored a retained command on %s (replayed by "
                            "the broker; its age is unknown)", topic)
                continue
            payload = message.payload
            data = payload if isinstance(payload, bytes) else \
                bytes(payload) if isinstance(payload, bytearray) else \
                str(payload if payload is not None else "").encode("utf-8")
            refused = self.command(topic, data)
            if refused is not None:
                body = {"topic": topic, "error": refused.error, "errors": list(refused.errors),
                        "at": self._clock.now().isoformat()}
                await client.publish(self.topics.error, json.dumps(body), qos=1)

    # --- commands ------------------------------------------------------------------------

    def command(self, topic: str, payload: bytes) -> Refused | None:
        """Apply one ``…/limit/set`` message; a refusal is logged and returned, and
        changes nothing."""
        group = self.topics.group_of_command(topic)
        if group is None or group not in self._topology.groups:
            return self._refuse(topic, Refused(f"unknown group {group!r}"))
        parsed = parse_limit_command(payload)
        if isinstance(parsed, Refused):
            return self._refuse(topic, parsed)
        now = self._clock.now()
        problem = parsed.problem_at(now)
        if problem is not None:
            return self._refuse(topic, Refused(problem))
        self._publish(LimitChanged(group, now, OVERRIDE_SOURCE,
                                   max_current=parsed.max_current,
                                   max_power_kw=parsed.max_power, until=parsed.until,
                                   reason="operator override (Home Assistant)"))
        self.commands += 1
        if parsed.removes:
            log.info("homeassistant: operator override of group %s removed", group)
        else:
            log.info("homeassistant: operator override of group %s: max_current %s A, "
                     "max_power %s kW, until %s", group, parsed.max_current, parsed.max_power,
                     parsed.until.isoformat() if parsed.until is not None else "removed by hand")
        self._wake.set()
        return None

    def _refuse(self, topic: str, refused: Refused) -> Refused:
        self.refused += 1
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in refused.errors)
        log.warning("homeassistant: refused the command on %s: %s%s", topic, refused.error,
                    f" ({detail})" if detail else "")
        return refused


__all__ = ["HomeAssistantBridge", "Topics", "discovery", "parse_limit_command"]
