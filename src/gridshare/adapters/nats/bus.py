"""The event bus over NATS JetStream: the same :class:`gridshare.bus.Bus` interface, across
processes and machines, durable.

Publishing stays synchronous and never blocks (an adapter's receive loop calls it): the
event is encoded, queued in memory, and one publisher task sends the queue to JetStream
in windows of asynchronous publishes, each with a ``Nats-Msg-Id`` (a reading's key, else
the content hash) so that a message re-sent after a lost acknowledgement is stored once
within the stream's duplicate window. A message leaves the queue only when JetStream has
acknowledged it; what failed is sent again, in order, after a back-off.

When NATS is away, the queue grows: events are kept (never silently dropped), a warning
names the backlog at ``warn_backlog`` and every tenfold after, ``connected`` turns false,
and publishing resumes by itself when the server is back. Only past ``max_pending``
queued events is an event dropped, each one counted in ``dropped`` and logged as an
error: memory is finite, and a gateway that has been cut off that long is an outage the
operator must see.

``durable(events)`` is the other way in, for what must not be answered before it is
stored (an OCPP gateway's transaction messages and meter values): the events join the
same queue, in order behind everything published before them, with the same subjects and
``Nats-Msg-Id``, and the call returns once JetStream has acknowledged them — or raises
:class:`NotAcknowledged` at once when NATS is away, when the connection drops while it
waits, or after ``durable_timeout_s`` (the events stay queued: they are still sent when
NATS is back). Their ids are remembered, so the same events handed to ``publish``
afterwards (the session publishes what a call caused once it answered) are not queued a
second time, and handed to ``durable`` again (the resent call) wait for the copy already
queued instead of adding one.

``subscribe(name)`` is a durable pull consumer ``<site>_<name>`` with explicit
acknowledgement on the site's subjects: a subscriber that restarts (the same process or
another one) resumes after the last event it acknowledged. The iterator acknowledges an
event when the subscriber asks for the next one, i.e. after its loop body *processed* it
(or call :meth:`NatsSubscription.ack` earlier); an event still unacknowledged when the
subscriber dies is delivered again. Exactly-once effects are built on top of that by
idempotent keys (see :mod:`gridshare.adapters.nats.recorder`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    StorageType,
    StreamConfig,
)

from gridshare.adapters.nats import codec
from gridshare.events import Event
from gridshare.tasks import cancel_and_wait

log = logging.getLogger(__name__)

STREAM = "GRIDSHARE"
_OWNED_MAX = 100_000
"""Message ids remembered as queued by :meth:`NatsBus.durable` (their ``publish`` follows
within milliseconds; a resent call within seconds to minutes)."""


class NotAcknowledged(RuntimeError):
    """JetStream has not acknowledged events handed to :meth:`NatsBus.durable` (NATS away,
    or no acknowledgement in time); they stay queued and are sent when it is back."""


@dataclass(frozen=True, slots=True)
class NatsBusSettings:
    stream: str = STREAM
    """The JetStream stream holding every site's events and readings."""
    max_age_s: float = 7 * 86400.0
    """How long the stream keeps a message (a controller down longer loses them)."""
    duplicate_window_s: float = 120.0
    """JetStream drops a message whose ``Nats-Msg-Id`` it stored within this window."""
    max_pending: int = 1_000_000
    """Events queued for JetStream beyond which new ones are dropped and counted."""
    warn_backlog: int = 10_000
    publish_window: int = 512
    """Asynchronous publishes awaiting their acknowledgement at once."""
    publish_timeout_s: float = 5.0
    ack_wait_s: float = 30.0
    """An event a subscriber has not acknowledged in this time is delivered again."""
    max_ack_pending: int = 10_000
    fetch_batch: int = 256
    fetch_timeout_s: float = 1.0
    """How long one pull waits for the first event (then it pulls again)."""
    fill_wait_s: float = 0.02
    """After the first event, how long a pull waits for more to fill its batch."""
    retry_max_s: float = 5.0
    """The longest back-off between attempts while NATS is away."""
    durable_timeout_s: float = 5.0
    """How long :meth:`NatsBus.durable` waits for JetStream's acknowledgement (an OCPP
    charger waits this long for its answer, at most)."""


def settings_from_query(query: str) -> NatsBusSettings:
    """``?ack_wait_s=5&max_pending=100000`` on a ``nats://`` URL: any field of
    :class:`NatsBusSettings` (numbers and the stream name); BusError for anything else."""
    from urllib.parse import parse_qsl

    from gridshare.bus import BusError

    fields = {f.name: f for f in dataclasses.fields(NatsBusSettings)}
    values: dict[str, Any] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        if key not in fields:
            raise BusError(f"bus URL option {key!r} is unknown; known: "
                           + ", ".join(sorted(fields)))
        default = getattr(NatsBusSettings(), key)
        try:
            value: Any = type(default)(raw)
        except ValueError as exc:
            raise BusError(f"bus URL option {key}={raw!r}: {exc}") from exc
        if isinstance(value, int | float) and value <= 0:
            raise BusError(f"bus URL option {key}={raw!r}: must be above 0")
        values[key] = value
    return NatsBusSettings(**values)


class NatsBus:
    """One site's side of the JetStream bus (a process may open one per site)."""

    def __init__(self, url: str, *, site: str, settings: NatsBusSettings | None = None,
                 name: str = "gridshare") -> None:
        self.url = url
        self.site = site
        self.settings = settings or NatsBusSettings()
        self.name = name
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._queue: deque[tuple[str, bytes, str]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._retry_now = asyncio.Event()
        """Set on reconnect: a publisher backing off re-sends at once (a charger waits)."""
        self._publisher: asyncio.Task[None] | None = None
        self._subs: list[NatsSubscription] = []
        self._naks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._next_warn = self.settings.warn_backlog
        self._queued = 0
        """Entries ever put in the queue: an entry's number is this count after it."""
        self._acked = 0
        """Entries ever acknowledged (they leave the queue in order: the first ``_acked``)."""
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        """(entry number, tie-break, future) of ``durable`` calls, a heap."""
        self._tie = itertools.count()
        self._owned: OrderedDict[str, int] = OrderedDict()
        """Message id -> entry number, of what ``durable`` queued."""
        self.durable_failures = 0
        """``durable`` calls that raised :class:`NotAcknowledged`."""
        self.published = 0
        """Events acknowledged by JetStream."""
        self.duplicates = 0
        """Of those, how many JetStream reported as duplicates (already stored)."""
        self.dropped = 0
        self.rejected = 0
        """Events that could not be encoded (NaN, naive time): logged, never sent."""
        self.publish_errors = 0

    # --- connection -----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def connect(self) -> JetStreamContext:
        """Connect (once; every caller waits for the same attempt) and make sure the stream
        exists. Retries with back-off while the server is away, logging each failure."""
        if self._js is not None:
            return self._js
        task = self._connecting
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._connecting = asyncio.create_task(self._connect(),
                                                          name="gridshare-nats-connect")
        await asyncio.shield(task)
        assert self._js is not None
        return self._js

    async def _connect(self) -> None:
        backoff = 0.2
        while True:
            try:
                nc = await nats.connect(
                    self.url, name=self.name, connect_timeout=2, reconnect_time_wait=0.5,
                    max_reconnect_attempts=-1, allow_reconnect=True,
                    error_cb=self._on_error, disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect)
                js = nc.jetstream(timeout=self.settings.publish_timeout_s)
                await ensure_stream(js, self.settings)
            except Exception as exc:
                log.warning("NATS %s: cannot connect (%s); %d events queued; retrying in "
                            "%.1f s", self.url, exc or type(exc).__name__, len(self._queue),
                            backoff)
                with contextlib.suppress(Exception):
                    await nc.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.retry_max_s)
                continue
            self._nc, self._js = nc, js
            return

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS %s: %s", self.url, exc)

    async def _on_disconnect(self) -> None:
        if not self._closed:
            log.warning("NATS %s: disconnected; %d events queued, reconnecting", self.url,
                        len(self._queue))
        self._fail_waiters("NATS disconnected")

    async def _on_reconnect(self) -> None:
        log.info("NATS %s: reconnected", self.url)
        self._retry_now.set()

    # --- publishing -----------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Queue ``event`` for JetStream; never blocks (see the module's outage rules).
        An event :meth:`durable` already queued is not queued again."""
        try:
            payload = codec.encode(event)
        except codec.CodecError as exc:
            self.rejected += 1
            log.error("NATS bus: %s not published: %s", type(event).__name__, exc)
            return
        mid = codec.msg_id(self.site, event, payload)
        if self._owned and mid in self._owned:
            return
        self._enqueue(codec.subject(self.site, event), payload, mid)

    async def durable(self, events: Sequence[Event]) -> None:
        """Queue ``events`` as :meth:`publish` does and return once JetStream has
        acknowledged every one of them (and so everything queued before them).

        Raises :class:`NotAcknowledged` at once when NATS is away or the queue is full,
        when the connection drops while waiting, or after ``durable_timeout_s``. Events
        already queued by an earlier call (a resent OCPP call, or what a refused one
        owed) are waited for where they are, not queued again. An event that cannot be
        encoded is skipped: it can never be stored (``publish`` logs and counts it)."""
        if self._closed:
            raise NotAcknowledged("the bus is closed")
        last = 0
        for event in events:
            try:
                payload = codec.encode(event)
            except codec.CodecError:
                continue
            mid = codec.msg_id(self.site, event, payload)
            number = self._owned.get(mid)
            if number is None:
                number = self._enqueue(codec.subject(self.site, event), payload, mid)
                if number is None:
                    self.durable_failures += 1
                    raise NotAcknowledged(f"{len(self._queue)} events queued for NATS: full")
                self._owned[mid] = number
                while len(self._owned) > _OWNED_MAX:
                    self._owned.popitem(last=False)
            else:
                self._owned.move_to_end(mid)
            last = max(last, number)
        if last <= self._acked:
            return
        if not self.connected:
            self.durable_failures += 1
            raise NotAcknowledged(f"NATS {self.url} is away ({len(self._queue)} events queued)")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (last, next(self._tie), future))
        try:
            async with asyncio.timeout(self.settings.durable_timeout_s):
                await future
        except TimeoutError:
            self.durable_failures += 1
            raise NotAcknowledged(
                f"JetStream did not acknowledge within {self.settings.durable_timeout_s} s "
                f"({len(self._queue)} events queued)") from None
        except NotAcknowledged:
            self.durable_failures += 1
            raise

    def _enqueue(self, subj: str, payload: bytes, mid: str) -> int | None:
        """Append to the queue and wake the publisher; the entry's number, None: dropped."""
        if len(self._queue) >= self.settings.max_pending:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.error("NATS bus: %d events dropped: %d queued for %s (NATS away or too "
                          "slow)", self.dropped, len(self._queue), self.url)
            return None
        self._queue.append((subj, payload, mid))
        self._queued += 1
        if len(self._queue) >= self._next_warn:
            log.warning("NATS bus: %d events queued for %s (NATS away or too slow)",
                        len(self._queue), self.url)
            self._next_warn *= 10
        self._idle.clear()
        self._wake.set()
        if self._publisher is None:
            self._publisher = asyncio.get_running_loop().create_task(
                self._publish_loop(), name="gridshare-nats-publisher")
        return self._queued

    def _wake_waiters(self) -> None:
        """Resume the ``durable`` calls whose last entry has been acknowledged."""
        while self._waiters and self._waiters[0][0] <= self._acked:
            future = heapq.heappop(self._waiters)[2]
            if not future.done():
                future.set_result(None)

    def _fail_waiters(self, why: str) -> None:
        """Every waiting ``durable`` call raises NotAcknowledged (its events stay queued)."""
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(NotAcknowledged(why))
                future.exception()  # a caller that gave up leaves no warning

    @property
    def pending(self) -> int:
        """Events queued, not yet acknowledged by JetStream."""
        return len(self._queue)

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until JetStream has acknowledged everything published so far."""
        async with asyncio.timeout(timeout_s):
            await self._idle.wait()

    async def _publish_loop(self) -> None:
        backoff = 0.1
        while True:
            if not self._queue:
                self._idle.set()
                if len(self._queue) < self.settings.warn_backlog // 2:
                    self._next_warn = self.settings.warn_backlog
                self._wake.clear()
                await self._wake.wait()
                continue
            js = await self.connect()
            window = [self._queue[i] for i in range(min(self.settings.publish_window,
                                                        len(self._queue)))]
            self._retry_now.clear()
            done = await self._send(js, window)
            for _ in range(done):
                self._queue.popleft()
            self._acked += done
            self._wake_waiters()
            if done < len(window):
                self.publish_errors += 1
                log.warning("NATS bus: %d of %d events not acknowledged by JetStream; "
                            "re-sending in %.1f s (%d queued)", len(window) - done,
                            len(window), backoff, len(self._queue))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):
                        await self._retry_now.wait()
                backoff = min(backoff * 2, self.settings.retry_max_s)
            else:
                backoff = 0.1

    async def _send(self, js: JetStreamContext, window: list[tuple[str, bytes, str]]) -> int:
        """Publish ``window`` and wait for its acks: how many from the front were stored
        (the rest are sent again; JetStream drops the copies of any that did land)."""
        futures: list[asyncio.Future[Any]] = []
        try:
            for subj, payload, mid in window:
                # No wait_stall: with one, every publish yields to the loop (a timer
                # task), and the client flushes each message in its own send(); the window
                # stays far below the client's own limit of pending publishes (4,000).
                futures.append(await js.publish_async(subj, payload,
                                                      headers={"Nats-Msg-Id": mid}))
        except Exception as exc:
            log.debug("NATS bus: publish failed: %r", exc)
        if futures:
            await asyncio.wait(futures, timeout=self.settings.publish_timeout_s)
        stored = 0
        for fut in futures:
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                break
            stored += 1
            if getattr(fut.result(), "duplicate", False):
                self.duplicates += 1
        for fut in futures[stored:]:
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" warning
        self.published += stored
        return stored

    # --- subscribing ----------------------------------------------------------------------

    def subscribe(self, name: str = "", *, only: str | None = None) -> NatsSubscription:
        """A durable consumer ``<site>_<name>`` of the site's events and readings, or
        only of one of them (``only="readings"`` or ``"events"``)."""
        if only not in (None, "readings", "events"):
            raise ValueError(f"only={only!r}: readings, events or None")
        subjects = None if only is None else \
            f"{codec.SUBJECT_PREFIX}.{codec.token(self.site)}.{only}.>"
        sub = NatsSubscription(self, name or "sub", subjects=subjects)
        self._subs.append(sub)
        return sub

    def _hand_back(self, msgs: list[Msg]) -> None:
        """``nak`` these messages (before the connection closes: see :meth:`close`)."""
        if not msgs:
            return

        async def nak_all() -> None:
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak()

        with contextlib.suppress(RuntimeError):  # no running loop: ack_wait redelivers
            self._naks.add(asyncio.get_running_loop().create_task(nak_all()))

    def _remove(self, sub: NatsSubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    async def close(self, flush_timeout_s: float = 5.0) -> None:
        """End every subscription, send what is queued (up to ``flush_timeout_s``), close."""
        for sub in list(self._subs):
            sub.close()
        await asyncio.sleep(0)  # let their fetches end before the connection does
        if self._naks:
            await asyncio.wait(self._naks, timeout=2.0)
            self._naks.clear()
            if self._nc is not None:
                with contextlib.suppress(Exception):
                    await self._nc.flush(timeout=2)
        if self._queue and self._publisher is not None:
            try:
                await self.flush(flush_timeout_s)
            except TimeoutError:
                log.error("NATS bus: closing with %d events not acknowledged by JetStream",
                          len(self._queue))
        self._closed = True
        self._fail_waiters("the bus is closed")
        tasks = [t for t in (self._publisher, self._connecting) if t is not None]
        await cancel_and_wait(tasks, swallow_errors=True)
        self._publisher = None
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = self._js = None

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "site": self.site, "connected": self.connected,
                "pending": self.pending, "published": self.published,
                "duplicates": self.duplicates, "dropped": self.dropped,
                "rejected": self.rejected, "publish_errors": self.publish_errors,
                "durable_failures": self.durable_failures}


async def ensure_stream(js: JetStreamContext, settings: NatsBusSettings) -> None:
    """Create the stream, or bring an existing one to these settings."""
    # Events and readings only: ``gridshare.<site>.cmd`` is request/reply, and a stream
    # capturing it would answer the request with its own acknowledgement.
    config = StreamConfig(name=settings.stream, subjects=list(codec.STREAM_SUBJECTS),
                          storage=StorageType.FILE, max_age=settings.max_age_s,
                          duplicate_window=settings.duplicate_window_s)
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError:
        await js.update_stream(config)


def durable_name(site: str, name: str) -> str:
    return codec.token(f"{site}_{name}")


class NatsSubscription:
    """A durable pull consumer of one site's events; acknowledges on the next ``__anext__``.

    Undecodable messages are counted (``rejected``) and terminated (never redelivered),
    never fatal. ``close`` leaves the last event unacknowledged: it is delivered again to
    whoever resumes the consumer (effects must be idempotent, see the recorder).
    """

    def __init__(self, bus: NatsBus, name: str, *,
                 deliver: DeliverPolicy = DeliverPolicy.ALL,
                 subjects: str | None = None) -> None:
        self._bus = bus
        self.name = name
        self.subjects = subjects or codec.site_subjects(bus.site)
        self.durable = durable_name(bus.site, name)
        self._deliver = deliver
        self._psub: Any = None
        self._buffer: deque[tuple[Msg, Event]] = deque()
        self._current: Msg | None = None
        self._closed = asyncio.Event()
        self.delivered = 0
        self.rejected = 0
        self.fetch_errors = 0
        self._error_streak = 0
        self.on_reject: Callable[[Msg, codec.CodecError], None] | None = None

    async def _ensure(self) -> Any:
        if self._psub is None:
            js = await self._bus.connect()
            config = ConsumerConfig(
                durable_name=self.durable, ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=self._deliver, ack_wait=self._bus.settings.ack_wait_s,
                max_ack_pending=self._bus.settings.max_ack_pending)
            self._psub = await js.pull_subscribe(
                self.subjects, durable=self.durable,
                stream=self._bus.settings.stream, config=config)
        return self._psub

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        await self.ack()
        msg, event = await self.next_message()
        self._current = msg
        return event

    async def ack(self) -> None:
        """Acknowledge the event last returned (it was processed); idempotent."""
        msg, self._current = self._current, None
        if msg is not None:
            with contextlib.suppress(Exception):
                await msg.ack()

    def get_nowait(self) -> Event | None:
        """The next already-fetched event, or None (for batching consumers); the previous
        one is acknowledged on the next ``__anext__`` or :meth:`ack`."""
        if self._closed.is_set() or not self._buffer:
            return None
        if self._current is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().create_task(self._current.ack())
        self._current, event = self._buffer.popleft()
        self.delivered += 1
        return event

    async def next_message(self) -> tuple[Msg, Event]:
        """The next (message, event) without acknowledging anything: for consumers that
        acknowledge batches themselves once their effect is committed."""
        while True:
            if self._closed.is_set():
                raise StopAsyncIteration
            if self._buffer:
                self.delivered += 1
                return self._buffer.popleft()
            for msg in await self._fetch():
                try:
                    self._buffer.append((msg, codec.decode(msg.data)))
                except codec.CodecError as exc:
                    self.rejected += 1
                    if self.rejected in (1, 100) or self.rejected % 10_000 == 0:
                        log.error("NATS %s: message on %s refused (%d so far): %s",
                                  self.durable, msg.subject, self.rejected, exc)
                    if self.on_reject is not None:
                        self.on_reject(msg, exc)
                    with contextlib.suppress(Exception):
                        await msg.term()

    async def fetch_batch(self, batch: int | None = None) -> list[tuple[Msg, Event]]:
        """Up to ``batch`` decoded messages (waits for at least one); none acknowledged."""
        first = await self.next_message()
        out = [first]
        limit = batch or self._bus.settings.fetch_batch
        while self._buffer and len(out) < limit:
            out.append(self._buffer.popleft())
            self.delivered += 1
        return out

    async def _fetch(self) -> list[Msg]:
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            task = asyncio.ensure_future(self._fetch_once())
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await cancel_and_wait([task], swallow_errors=True)
                return []
            return task.result()
        finally:
            closed.cancel()

    async def _fetch_once(self) -> list[Msg]:
        try:
            psub = await self._ensure()
            # One message, waiting up to fetch_timeout_s; then what else is there, waiting at
            # most fill_wait_s: a pull of a whole batch would hold its first message until
            # the batch is full or the pull expires (seconds of latency at low rates).
            msgs: list[Msg] = await psub.fetch(1, timeout=self._bus.settings.fetch_timeout_s)
            self._error_streak = 0
            if self._bus.settings.fetch_batch > 1:
                with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
                    msgs += await psub.fetch(self._bus.settings.fetch_batch - 1,
                                             timeout=self._bus.settings.fill_wait_s)
            return msgs
        except (nats.errors.TimeoutError, TimeoutError):
            self._error_streak = 0
            return []
        except Exception as exc:
            # NATS away or restarting: the consumer is durable, try again shortly. Said
            # at warning level once per streak (a refused consumer must not go unseen).
            if self._closed.is_set() or self._bus._closed:
                return []
            self.fetch_errors += 1
            level = logging.WARNING if self._error_streak == 0 else logging.DEBUG
            self._error_streak += 1
            log.log(level, "NATS %s: fetch failed (retrying): %r", self.durable, exc)
            await asyncio.sleep(0.5)
            return []

    @property
    def backlog(self) -> int:
        return len(self._buffer)

    async def unacked_info(self) -> tuple[int, int]:
        """(pending in the stream, delivered but unacknowledged) for this consumer."""
        info = await (await self._ensure()).consumer_info()
        return int(info.num_pending or 0), int(info.num_ack_pending or 0)

    def close(self) -> None:
        """Stop. Events received but not processed (the last one returned, and those
        fetched ahead) are handed back (``nak``): whoever resumes the consumer gets them at
        once instead of after ``ack_wait_s``. Not acknowledged: they were not processed."""
        if not self._closed.is_set():
            self._closed.set()
            unprocessed = [m for m, _ in self._buffer]
            if self._current is not None:
                unprocessed.insert(0, self._current)
            self._buffer.clear()
            self._current = None
            self._bus._hand_back(unprocessed)
            self._bus._remove(self)
