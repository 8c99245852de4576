"""The site's mqtt and http meters as one object: readings in, :class:`MeterSample` out.

Every accepted reading is published at once, stamped with the injected clock's now at
receipt. A rejected one is counted, kept as ``last_error`` (meter, what, where) and logged
at most once a minute per meter, and never published: the groups that follow the meter go
stale and fail closed rather than follow garbage. ``ocpp`` meters are read by the OCPP
adapter and are not handled here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Literal

import aiomqtt
import httpx

from gridshare.adapters.meters.http import HttpPoller, public_url
from gridshare.adapters.meters.mqtt import MqttLink, valid_filter
from gridshare.adapters.meters.parse import Amps3, Decoder, PhaseName, Rejected
from gridshare.clock import Clock
from gridshare.config import MeterSpec, MqttSpec
from gridshare.core.topology import Phase
from gridshare.events import MeterSample
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.meters")

LOG_EVERY_S = 60.0
"""A meter's bad input is logged at most this often (it is counted every time)."""


@dataclass(frozen=True, slots=True)
class MeterStatus:
    """What ``/status`` shows of one meter: its last good value and what went wrong."""

    meter: str
    source: str
    """``mqtt`` or ``http``."""
    where: str
    """``mqtt home/meter/state`` or ``http <url>`` (a password in the url is masked)."""
    current_a: Amps3 | None
    """The last accepted reading, A per phase (None before the first one)."""
    at: datetime | None
    """When it was received (the clock's now)."""
    errors: int
    """Rejected payloads and failed polls or connections so far."""
    last_error: str | None


class _Track:
    """One meter's mutable state: how to decode, what was last seen, when it last logged."""

    __slots__ = ("at", "current_a", "decoder", "down", "errors", "last_error", "logged_at",
                 "spec", "where")

    def __init__(self, spec: MeterSpec, decoder: Decoder, where: str) -> None:
        self.spec = spec
        self.decoder = decoder
        self.where = where
        self.current_a: Amps3 | None = None
        self.at: datetime | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.logged_at: datetime | None = None
        self.down = False
        """Its endpoint is failing (logged when that began; logged again when it ends)."""


class MeterSources:
    """Reads every mqtt and http meter of the site and publishes their samples."""

    def __init__(self, meters: Sequence[MeterSpec], mqtt: MqttSpec | None,
                 publish: Callable[[MeterSample], None], clock: Clock, *, voltage: float,
                 phases: Mapping[str, int],
                 lines: Mapping[str, Phase | PhaseName] | None = None) -> None:
        """``phases``: meter id -> phases of the group it feeds (1 or 3; 3 if absent).
        ``lines``: meter id -> the line a 1-phase group is on (its chargers'), when known; a
        1-phase reading without it counts on all three phases (see ``parse``)."""
        self._publish = publish
        self._clock = clock
        self._mqtt_spec = mqtt or MqttSpec()
        self._tracks: dict[str, _Track] = {}
        self._by_topic: dict[str, list[_Track]] = {}
        for spec in meters:
            if spec.source == "ocpp":
                continue
            decoder = Decoder.build(spec.fields, spec.field, spec.unit,
                                    phases=phases.get(spec.id, 3), voltage=voltage,
                                    line=(lines or {}).get(spec.id))
            where = (f"mqtt {spec.topic}" if spec.source == "mqtt"
                     else f"http {public_url(spec.url or '')}")
            track = _Track(spec, decoder, where)
            self._tracks[spec.id] = track
            if spec.source == "mqtt" and spec.topic is not None:
                if valid_filter(spec.topic):
                    self._by_topic.setdefault(spec.topic, []).append(track)
                else:
                    self._fail(track, "not a valid MQTT topic: it is never subscribed")
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None
        self.link: MqttLink | None = None
        """The broker connection (None without mqtt meters)."""
        self.pollers: dict[str, HttpPoller] = {}

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start reading; never raises because a broker or an endpoint is down."""
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        if self._by_topic:
            try:
                self.link = MqttLink(self._mqtt_spec, self._by_topic, self._on_mqtt,
                                     self._on_mqtt_outage)
            except ValueError as exc:  # config validation should have caught it
                log.error("mqtt: %s: no mqtt meter is read", exc)
                self._on_mqtt_outage(f"mqtt.url: {exc}")
            else:
                self._tasks.append(loop.create_task(self.link.run(), name="meters-mqtt"))
        http_tracks = [t for t in self._tracks.values() if t.spec.source == "http"]
        if http_tracks:
            self._http = httpx.AsyncClient(follow_redirects=False)
            for track in http_tracks:
                poller = HttpPoller(track.spec.url or "", track.spec.interval, self._http,
                                    on_body=partial(self._accept, track),
                                    on_error=partial(self._fail, track, log_as="outage"))
                self.pollers[track.spec.id] = poller
                self._tasks.append(loop.create_task(poller.run(),
                                                    name=f"meters-http-{track.spec.id}"))
        for task in self._tasks:
            task.add_done_callback(self._task_done)

    async def stop(self) -> None:
        """Cancel every task, wait for them, close the HTTP client: nothing is left behind."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.remove_done_callback(self._task_done)
        await cancel_and_wait(tasks)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A reader ended by itself: only a bug does that; say so (its meters go stale)."""
        if not task.cancelled() and task.exception() is not None:
            log.error("meter reader %s stopped: %r", task.get_name(), task.exception())

    # --- status ----------------------------------------------------------------------

    def status(self) -> dict[str, MeterStatus]:
        """Each mqtt/http meter's last value, when it came, and its errors."""
        return {mid: MeterStatus(mid, t.spec.source, t.where, t.current_a, t.at, t.errors,
                                 t.last_error)
                for mid, t in self._tracks.items()}

    # --- input -----------------------------------------------------------------------

    def _on_mqtt(self, topic: str, payload: bytes) -> None:
        for filter_, tracks in self._by_topic.items():
            if topic == filter_ or aiomqtt.Topic(topic).matches(filter_):
                for track in tracks:
                    self._accept(track, payload)

    def _on_mqtt_outage(self, reason: str) -> None:
        for tracks in self._by_topic.values():
            for track in tracks:
                self._fail(track, reason, log_as="none")  # the link logged the outage

    def _accept(self, track: _Track, payload: bytes) -> bool:
        """Decode and publish one payload; False (counted, not published) if it is bad."""
        reading = track.decoder.decode(payload)
        if isinstance(reading, Rejected):
            self._fail(track, reading.reason)
            return False
        now = self._clock.now()
        track.current_a, track.at = reading, now
        if track.down:
            track.down = False
            log.info("meter %s: reading again (%s)", track.spec.id, track.where)
        try:
            self._publish(MeterSample(track.spec.id, now, reading))
        except Exception:  # the consumer's bug: the reading itself was fine
            log.exception("meter %s: publishing a sample failed", track.spec.id)
        return True

    def _fail(self, track: _Track, reason: str,
              log_as: Literal["rate", "outage", "none"] = "rate") -> None:
        """Count a failure; log an outage when it begins, bad input once a minute at most."""
        track.errors += 1
        track.last_error = f"meter {track.spec.id}: {reason} ({track.where})"
        if log_as == "none":
            return
        if log_as == "outage":
            if not track.down:
                track.down = True
                log.warning("%s; retrying with backoff", track.last_error)
            return
        now = self._clock.now()
        if track.logged_at is None or (now - track.logged_at).total_seconds() >= LOG_EVERY_S:
            track.logged_at = now
            log.warning("%s%s", track.last_error,
                        f" [{track.errors} errors so far]" if track.errors > 1 else "")


__all__ = ["MeterSources", "MeterStatus"]
