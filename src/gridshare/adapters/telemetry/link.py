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
import paho.mqtt.client as paho

from gridshare.adapters.meters.mqtt import BrokerAddress, keep_connected, make_client
from gridshare.adapters.telemetry import bulkread
from gridshare.config import MqttSpec
from gridshare.tasks import cancel_and_wait

log = logging.getLogger("gridshare.telemetry")

Commit = Callable[[Sequence[tuple[str, bytes]]], Awaitable[None]]


class CommitFailed(aiomqtt.MqttError):
    """The batch could not be committed: reconnect so the broker redelivers it."""


class _Inbox:
    """What paho delivered on one connection and is not yet committed, in arrival order:
    ``(topic, payload)`` for the commit and, one per message, ``(mid, qos)`` to
    acknowledge after it (QoS 0: nothing to send).

    The bulk reader (and paho's ``on_message``, for what paho parses) append here
    directly: aiomqtt's queue cost an aiomqtt Message, an asyncio queue item and a task
    per message, about a tenth of the ingest's profile."""

    __slots__ = ("_rows", "acks", "error", "full", "messages", "received")

    def __init__(self, batch_rows: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: list[tuple[int, int]] = []
        self.full = asyncio.Event()
        self.error: BaseException | None = None
        self.received = 0
        self._rows = batch_rows

    def on_message(self, _client: paho.Client, _userdata: object,
                   message: paho.MQTTMessage) -> None:
        """paho's callback, for the messages paho parses itself (see bulkread)."""
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers refuse these; if one comes, reject it (bad_topic)
            topic = "\ufffd"
        payload = message.payload  # bytes from paho's decoder; typed bytes | bytearray
        self.add(topic, payload if isinstance(payload, bytes) else bytes(payload),
                 message.mid, message.qos)

    def add(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        self.messages.append((topic, payload))
        self.acks.append((mid, qos))  # one per message, QoS 0 too
        self.received += 1
        if len(self.messages) >= self._rows:
            self.full.set()

    def broken(self, exc: BaseException) -> None:
        """The bulk reader failed outside aiomqtt's reader: end the connection."""
        self.error = exc
        self.full.set()

    def take(self) -> tuple[list[tuple[str, bytes]], list[tuple[int, int]]]:
        """The oldest ``batch_rows`` messages (or all) and the acknowledgements they owe;
        ``full`` stays set when another whole batch is already waiting."""
        messages, acks, rows = self.messages, self.acks, self._rows
        if len(messages) <= rows:
            self.messages, self.acks = [], []
            return messages, acks
        self.messages, self.acks = messages[rows:], acks[rows:]
        if len(self.messages) >= rows:
            self.full.set()
        return messages[:rows], acks[:rows]


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
        self._received = 0
        self._inbox: _Inbox | None = None
        self.acked = 0
        self.batches = 0
        self.commit_failures = 0

    @property
    def address(self) -> BrokerAddress:
        return self._address

    @property
    def received(self) -> int:
        """Messages received over every connection so far."""
        return self._received + (self._inbox.received if self._inbox is not None else 0)

    def _client(self) -> aiomqtt.Client:
        client = make_client(self._spec, self._address, logger=log,
                             identifier=self._client_id, clean_session=False)
        if self._inbox is not None:
            self._received += self._inbox.received
        inbox = self._inbox = _Inbox(self._batch_rows)
        # Before connecting: a persistent session's queued messages come right after
        # CONNACK. aiomqtt's queue stays empty from now on; its iterator only tells us
        # when the connection ends.
        client._client.manual_ack_set(True)
        client._client.on_message = inbox.on_message
        bulkread.install(client._client, asyncio.get_running_loop(), inbox.broken,
                         inbox.add)
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
        inbox = self._inbox
        assert inbox is not None  # made with the client

        async def until_closed() -> None:
            async for _ in client.messages:  # nothing is queued (see _client)
                pass

        async def flush() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await inbox.full.wait()
                inbox.full.clear()
                if inbox.error is not None:
                    raise aiomqtt.MqttError(f"reading failed: {inbox.error!r}") \
                        from inbox.error
                if not inbox.messages:
                    continue
                messages, acks = inbox.take()
                try:
                    await self._commit(messages)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.commit_failures += 1
                    log.exception("telemetry: committing %d messages failed; reconnecting "
                                  "so the broker redelivers them", len(messages))
                    raise CommitFailed(f"commit failed: {type(exc).__name__}") from exc
                self.batches += 1
                # in arrival order, as MQTT wants
                self.acked += bulkread.queue_acks(client._client, acks)

        tasks = [asyncio.create_task(until_closed(), name="telemetry-read"),
                 asyncio.create_task(flush(), name="telemetry-commit")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(tasks, swallow_errors=True)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
