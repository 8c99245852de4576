"""The telemetry subscription: QoS 1, a persistent session, acknowledged after commit.

The broker keeps our session (fixed client id, ``clean_session`` false) while we are away
and redelivers every QoS 1 message we did not acknowledge. We turn paho's automatic
acknowledgement off (``manual_ack_set``, reached through aiomqtt's paho client: aiomqtt
2.5 has no option of its own) and send each PUBACK only after the batch holding the
message was committed by ``commit``. So a crash (kill -9) at any moment loses nothing
the broker was told we have: what was not yet committed is redelivered, and what was
committed but not yet acknowledged comes again as a duplicate, which the store's unique
key (meter, ts) and the windows ignore.

When ``commit`` fails (database down), the batch is not acknowledged and the connection
is dropped on purpose: the broker redelivers the unacknowledged messages on the next
connection (MQTT redelivers only then), which :func:`keep_connected` makes with backoff.

Connection handling (backoff, outage logged once, TLS, password file) is the meter
path's: :func:`~gridshare.adapters.meters.mqtt.keep_connected` and its helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt

from gridshare.adapters.meters.mqtt import BrokerAddress, keep_connected, make_client
from gridshare.config import MqttSpec
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.telemetry")

Commit = Callable[[Sequence[tuple[str, bytes]]], Awaitable[None]]


class CommitFailed(aiomqtt.MqttError):
    """The batch could not be committed: reconnect so the broker redelivers it."""


def _payload(message: aiomqtt.Message) -> bytes:
    payload = message.payload
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return b"" if payload is None else str(payload).encode("ascii")


class TelemetryLink:
    """Subscribes to ``topics``; hands messages to ``commit`` in batches (at most
    ``batch_rows``, at least every ``batch_interval_s``), acknowledging them after it."""

    def __init__(self, spec: MqttSpec, topics: Sequence[str], commit: Commit, *,
                 client_id: str, qos: int = 1, batch_rows: int = 1000,
                 batch_interval_s: float = 0.05,
                 on_outage: Callable[[str], None] | None = None) -> None:
        self._spec = spec
        self._address = BrokerAddress.parse(spec.url)
        self._topics = tuple(dict.fromkeys(topics))
        self._commit = commit
        self._client_id = client_id
        self._qos = qos
        self._batch_rows = batch_rows
        self._interval = batch_interval_s
        self._on_outage = on_outage
        self.connected = False
        self.connects = 0
        self.received = 0
        self.acked = 0
        self.batches = 0
        self.commit_failures = 0

    @property
    def address(self) -> BrokerAddress:
        return self._address

    def _client(self) -> aiomqtt.Client:
        client = make_client(self._spec, self._address, logger=log,
                             identifier=self._client_id, clean_session=False)
        client._client.manual_ack_set(True)
        return client

    async def run(self) -> None:
        """Connect, subscribe, commit and acknowledge; reconnect on any failure."""
        await keep_connected(self, self._client, self._subscribe, self._serve,
                             label=f"telemetry mqtt {self._address}",
                             on_outage=self._on_outage)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        for topic in self._topics:
            await client.subscribe(topic, qos=self._qos)

    async def _serve(self, client: aiomqtt.Client) -> None:
        batch: list[aiomqtt.Message] = []
        full = asyncio.Event()

        async def read() -> None:
            async for message in client.messages:
                batch.append(message)
                self.received += 1
                if len(batch) >= self._batch_rows:
                    full.set()

        async def flush() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await full.wait()
                full.clear()
                if not batch:
                    continue
                taken = batch[:]
                batch.clear()
                try:
                    await self._commit([(m.topic.value, _payload(m)) for m in taken])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.commit_failures += 1
                    log.exception("telemetry: committing %d messages failed; reconnecting "
                                  "so the broker redelivers them", len(taken))
                    raise CommitFailed(f"commit failed: {type(exc).__name__}") from exc
                self.batches += 1
                paho = client._client
                for message in taken:  # in arrival order, as MQTT wants
                    if message.qos > 0:
                        paho.ack(message.mid, message.qos)
                        self.acked += 1

        tasks = [asyncio.create_task(read(), name="telemetry-read"),
                 asyncio.create_task(flush(), name="telemetry-commit")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(tasks, swallow_errors=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
