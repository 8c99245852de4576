"""The frequency service's MQTT link: the frequency source and the batteries.

One connection of its own to the site's ``mqtt:`` broker (client id ``<client_id>-freq``),
kept up by the meters' loop (:func:`gridshare.adapters.meters.mqtt.keep_connected`: capped
backoff, one log line per outage, never raises because the broker is down). It

- subscribes to the source topic (``frequency_response.source.mqtt_topic``, ``<site>``
  replaced by the site id) and to every battery's ``soc_topic`` (QoS 0: a sample is worth
  something only now), hands each parsed message to the :class:`FrequencySink`, and each
  bad one with why (counted there, never fatal);
- publishes battery setpoints (QoS 1) from an outbox keyed by topic: a newer setpoint for a
  battery replaces one not yet sent (the newest wins, nothing queues up behind a slow
  broker); the whole outbox goes out concurrently.

Retained messages replayed on subscribing are dropped, as for the meters: their age is
unknown, and a dead source must not look alive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Protocol

import aiomqtt

from gridshare.adapters.frequency import (
    Rejected,
    SocReading,
    iso,
    parse_sample,
    parse_soc,
    setpoint_json,
)
from gridshare.adapters.meters.mqtt import (
    BrokerAddress,
    keep_connected,
    make_client,
    read_while_sending,
)
from gridshare.config import MqttSpec
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.frequency.mqtt")

MAX_INFLIGHT = 1000
"""QoS 1 setpoints awaiting the broker's ack at once (paho's default of 20 would make 500
batteries wait on 25 round trips)."""


def source_topic(template: str, site: str) -> str:
    """The source topic with ``<site>`` replaced by the site id."""
    return template.replace("<site>", site)


class FrequencySink(Protocol):
    """What the link hands its messages to (the frequency service)."""

    def on_sample(self, ts: float | None, hz: float) -> object: ...

    def on_sample_rejected(self, why: str) -> None: ...

    def on_soc(self, battery: str, reading: SocReading) -> None: ...

    def on_soc_rejected(self, battery: str, why: str) -> None: ...


class FrequencyMqtt:
    """Samples and SoC readings in, battery setpoints out, over one broker connection."""

    def __init__(self, spec: MqttSpec, source: str, soc_topics: Mapping[str, str]) -> None:
        """``soc_topics``: topic -> battery id."""
        self._spec = spec
        self._address = BrokerAddress.parse(spec.url)
        self.source_topic = source
        self._soc_topics = dict(soc_topics)
        self._sink: FrequencySink | None = None
        self._outbox: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.connects = 0
        self.received = 0
        """Messages on the source topic."""
        self.published = 0
        """Setpoints handed to the broker."""
        self.replaced = 0
        """Setpoints replaced in the outbox by a newer one before they went out."""
        self.replayed = 0
        """Retained messages dropped on subscribing."""
        self.errors = 0
        """Messages whose handling raised (a bug): counted, logged once per 1,000."""
        self.last_published_at: float | None = None
        """``time.perf_counter()`` when the last outbox batch was handed to the broker
        (the benchmark's 'last written')."""
        self.outage: str | None = None
        self._stamp_key: tuple[float, float] | None = None
        self._stamp = ("", "")

    def attach(self, sink: FrequencySink) -> None:
        self._sink = sink

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background; never raises because the broker is down."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="frequency-mqtt")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait([task])

    def _client(self) -> aiomqtt.Client:
        client = make_client(self._spec, self._address, suffix="freq", logger=log,
                             max_inflight_messages=MAX_INFLIGHT)
        client.pending_calls_threshold = MAX_INFLIGHT  # a batch of setpoints is expected
        return client

    async def _run(self) -> None:
        def outage(why: str) -> None:
            self.outage = why

        await keep_connected(self, self._client, self._subscribe, self._serve,
                             label=f"frequency: mqtt {self._address}", on_outage=outage)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.source_topic, qos=0)
        for topic in self._soc_topics:
            await client.subscribe(topic, qos=0)
        self.outage = None

    # --- setpoints out -------------------------------------------------------------------

    def send_setpoint(self, topic: str, kw: float, at: float, valid_s: float,
                      mode: str) -> None:
        """Queue a battery setpoint (kW, + = charging) stamped ``at`` (epoch seconds)."""
        if self._stamp_key != (at, valid_s):
            self._stamp_key = (at, valid_s)
            self._stamp = (iso(at), iso(at + valid_s))
        self.publish(topic, setpoint_json(kw, self._stamp[0], self._stamp[1], valid_s, mode))

    def publish(self, topic: str, payload: bytes) -> None:
        """Queue a setpoint; one still waiting for ``topic`` is replaced (newest wins)."""
        if topic in self._outbox:
            self.replaced += 1
        self._outbox[topic] = payload
        self._wake.set()

    @property
    def waiting(self) -> int:
        """Setpoints in the outbox."""
        return len(self._outbox)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Read while sending the outbox; return or raise when the link ends."""

        async def send_pending() -> bool:
            if not self._outbox:
                return False
            batch, self._outbox = self._outbox, {}
            try:
                await asyncio.gather(*(client.publish(topic, payload, qos=1)
                                       for topic, payload in batch.items()))
            except BaseException:
                for topic, payload in batch.items():  # a broken link keeps them
                    self._outbox.setdefault(topic, payload)
                raise
            self.published += len(batch)
            self.last_published_at = time.perf_counter()
            return True

        await read_while_sending(self._read(client), self._wake, send_pending,
                                 name="frequency-mqtt-read")

    # --- samples and SoC in --------------------------------------------------------------

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.retain:
                self.replayed += 1
                continue
            payload = message.payload
            data = payload if isinstance(payload, bytes | bytearray) else (
                str(payload).encode() if payload is not None else b"")
            try:
                self.handle(message.topic.value, bytes(data))
            except Exception:  # a bug must not take the broker link down (nor flood the log)
                self.errors += 1
                if self.errors % 1000 == 1:
                    log.exception("frequency: handling a message on %s failed (%d so far)",
                                  message.topic.value, self.errors)

    def handle(self, topic: str, payload: bytes) -> None:
        """One message from the broker (public: tests feed it directly too)."""
        sink = self._sink
        if sink is None:
            return
        if topic == self.source_topic:
            self.received += 1
            got = parse_sample(payload)
            if isinstance(got, Rejected):
                sink.on_sample_rejected(got.reason)
            else:
                sink.on_sample(*got)
            return
        battery = self._soc_topics.get(topic)
        if battery is None:
            return
        reading = parse_soc(payload)
        if isinstance(reading, Rejected):
            sink.on_soc_rejected(battery, reading.reason)
        else:
            sink.on_soc(battery, reading)
