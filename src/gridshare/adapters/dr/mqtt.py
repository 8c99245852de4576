"""Demand-response signals over MQTT, and DR alerts back out, on the site's ``mqtt:`` broker.

Topics (``<site>`` is the site file's ``site:``):

- ``gridshare/<site>/dr/signals`` (subscribed, QoS 1): one signal per message, the same JSON
  as ``POST /api/v1/dr/signals``. It is validated and stored exactly as over REST
  (:func:`gridshare.adapters.dr.submit_json`); a redelivery (same id, same content) is
  idempotent. A retained signal the broker replays on subscribing is taken like any other:
  it is idempotent, and an event already over is stored as ended.
- ``gridshare/<site>/dr/signals/rejected`` (published, QoS 1): ``{"signal_id", "reason"}``
  for every signal refused (``signal_id`` null when the message had none readable); the
  refusal is also logged with the reason and counted (:attr:`DrMqtt.rejected`).
- ``gridshare/<site>/dr/alerts`` (published, QoS 1): every alert of the DR service
  (:meth:`DrService.on_alert`), as JSON. Alerts raised while the broker is away wait in a
  bounded queue (the oldest dropped first, counted) and go out on reconnection.

One connection of its own (client id ``<client_id>-dr``), kept up by the meters' loop
(:func:`gridshare.adapters.meters.mqtt.keep_connected`): capped backoff, one log line per
outage, never raises because the broker is down.

Acknowledged after commit (with a ``commit``, as ``gridshare serve`` gives it the store's
``flush(strict=True)``): like the telemetry ingest (:mod:`gridshare.adapters.telemetry.link`)
the session is persistent (``clean_session`` false, a fixed client id: ``<client_id>-dr``,
else ``gridshare-<site>-dr``) and paho's automatic PUBACK is off; a signal's PUBACK goes
out only once its event is committed, so a ``kill -9`` before the commit leaves it
unacknowledged and the broker redelivers it (idempotent: same id, same content). A refused
signal is acknowledged at once (there is nothing to store; it is answered on the rejected
topic). If the commit fails the connection is dropped on purpose, so the broker redelivers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from gridshare.adapters.dr import DrInput, submit_json
from gridshare.adapters.meters.mqtt import (
    BrokerAddress,
    keep_connected,
    make_client,
    read_while_sending,
)
from gridshare.clock import Clock
from gridshare.config import MqttSpec
from gridshare.core.dr.book import SignalConflict, Submitted
from gridshare.core.dr.signals import SignalInvalid
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.dr.mqtt")

MAX_PAYLOAD = 64 * 1024
"""Bytes: a signal is a few hundred; a larger message is refused unread."""
OUTBOX_MAX = 256
"""Rejections and alerts waiting for the broker; beyond it the oldest are dropped."""


def topics(site: str) -> tuple[str, str, str]:
    """The signals, rejected and alerts topics of ``site``."""
    base = f"gridshare/{site}/dr"
    return f"{base}/signals", f"{base}/signals/rejected", f"{base}/alerts"


class DrMqtt:
    """Takes DR signals from the broker into ``dr`` and publishes its alerts."""

    def __init__(self, spec: MqttSpec, site: str, dr: DrInput, clock: Clock, *,
                 commit: Callable[[], Awaitable[None]] | None = None) -> None:
        """``commit``: waits until the stored signal is committed (raises if it was not);
        None: no store, the client acknowledges on arrival."""
        self._spec = spec
        self._site = site
        self._commit = commit
        self._address = BrokerAddress.parse(spec.url)
        self.signals_topic, self.rejected_topic, self.alerts_topic = topics(site)
        self._dr = dr
        self._clock = clock
        self._outbox: deque[tuple[str, str]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.connects = 0
        self.received = 0
        """Messages on the signals topic."""
        self.accepted = 0
        """New signals stored."""
        self.redelivered = 0
        """Identical redeliveries (nothing changed)."""
        self.rejected = 0
        """Signals refused (invalid or conflicting)."""
        self.dropped = 0
        """Rejections and alerts dropped because the outbox was full."""
        self.acked = 0
        """Signals acknowledged after their commit (with ``commit``)."""
        self.commit_failures = 0
        dr.on_alert(self.alert)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect in the background; never raises because the broker is down."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="dr-mqtt")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait([task])

    def _client(self) -> aiomqtt.Client:
        if self._commit is None:
            return make_client(self._spec, self._address, suffix="dr", logger=log)
        # A persistent session (a fixed id) so that the broker keeps what we did not
        # acknowledge yet: PUBACK only after the commit (_read).
        identifier = (f"{self._spec.client_id}-dr" if self._spec.client_id is not None
                      else f"gridshare-{self._site}-dr")
        client = make_client(self._spec, self._address, logger=log, identifier=identifier,
                             clean_session=False)
        client._client.manual_ack_set(True)
        return client

    async def _run(self) -> None:
        await keep_connected(self, self._client, self._subscribe, self._serve,
                             label=f"dr: mqtt {self._address}")

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        await client.subscribe(self.signals_topic, qos=1)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Read signals while sending the outbox; return or raise when the link ends."""

        async def send_pending() -> bool:
            sent = bool(self._outbox)
            while self._outbox:
                topic, payload = self._outbox[0]
                await client.publish(topic, payload, qos=1)
                self._outbox.popleft()  # only once sent: a broken link keeps it
            return sent

        await read_while_sending(self._read(client), self._wake, send_pending,
                                 name="dr-mqtt-signals")

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            data = payload if isinstance(payload, bytes | bytearray) else (
                str(payload).encode() if payload is not None else b"")
            stored = False
            try:
                stored = self.handle(bytes(data))
            except Exception:  # a bug must not take the broker link down
                log.exception("dr: handling a signal on %s failed", self.signals_topic)
            if self._commit is None:
                continue
            if stored:
                try:
                    await self._commit()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.commit_failures += 1
                    log.warning("dr: signal not stored (%s); reconnecting so the broker "
                                "redelivers it", exc)
                    raise aiomqtt.MqttError(f"dr signal not stored: {exc}") from exc
                self.acked += 1
            if message.qos > 0:
                client._client.ack(message.mid, message.qos)

    # --- signals in, rejections and alerts out -----------------------------------------------

    def handle(self, payload: bytes) -> bool:
        """One message of the signals topic: stored (True: the DR service took it, new or
        redelivered), or refused with a reason (False)."""
        self.received += 1
        data: Any = None
        try:
            if len(payload) > MAX_PAYLOAD:
                raise SignalInvalid(None, f"message of {len(payload)} bytes, above the limit "
                                          f"of {MAX_PAYLOAD}")
            try:
                data = json.loads(payload)
            except (ValueError, UnicodeDecodeError) as exc:
                raise SignalInvalid(None, f"not valid JSON: {exc}") from None
            except RecursionError:
                raise SignalInvalid(None, "not valid JSON: nested too deeply") from None
            outcome, event = submit_json(self._dr, data, now=self._clock.now(), source="mqtt")
        except (SignalInvalid, SignalConflict) as exc:
            self._reject(data, str(exc))
            return False
        if outcome is Submitted.CREATED:
            self.accepted += 1
            log.warning("dr: signal %s from mqtt stored: %s %g kW in zone %s",
                        event.signal.signal_id, event.signal.signal_type.value,
                        event.signal.target_reduction_kw, event.signal.zone_id)
        else:
            self.redelivered += 1
            log.info("dr: signal %s from mqtt redelivered (same content, nothing changed)",
                     event.signal.signal_id)
        return True

    def _reject(self, data: Any, reason: str) -> None:
        self.rejected += 1
        signal_id = data.get("signal_id") if isinstance(data, dict) else None
        if not isinstance(signal_id, str):
            signal_id = None
        log.warning("dr: refused a signal on %s (signal_id %s): %s", self.signals_topic,
                    signal_id, reason)
        self._send(self.rejected_topic, {"signal_id": signal_id, "reason": reason})

    def alert(self, alert: dict[str, Any]) -> None:
        """A DR alert (from :meth:`DrService.on_alert`): published on the alerts topic."""
        self._send(self.alerts_topic, alert)

    def _send(self, topic: str, body: dict[str, Any]) -> None:
        if len(self._outbox) >= OUTBOX_MAX:
            self._outbox.popleft()
            self.dropped += 1
        self._outbox.append((topic, json.dumps(body, default=str)))
        self._wake.set()
