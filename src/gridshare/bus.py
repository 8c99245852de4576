"""The event bus between adapters (OCPP, meters, demand response) and their consumers.

Adapters call ``publish`` synchronously from their receive loops: it must never block or
await, so a slow consumer cannot stall a charger's WebSocket. Every subscriber gets every
event published after it subscribed, in order. The in-process bus is the default; a NATS
JetStream bus (several machines, durable consumers: ``gridshare.adapters.nats.bus``) implements
the same interface.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Protocol
from urllib.parse import urlsplit

from gridshare.events import Event

log = logging.getLogger(__name__)

SUPPORTED_BUS_SCHEMES = ("memory", "nats")


class BusError(ValueError):
    """The bus URL names a bus this build cannot open."""


class Subscription(Protocol):
    """An ordered stream of events; close it to stop receiving."""

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def __anext__(self) -> Event: ...

    def close(self) -> None: ...


class Bus(Protocol):
    def publish(self, event: Event) -> None:
        """Hand an event to every subscriber; never blocks."""
        ...

    def subscribe(self, name: str = "") -> Subscription:
        """A new subscription receiving every event published from now on."""
        ...

    async def close(self) -> None:
        """End every subscription (their iterators stop)."""
        ...


_CLOSED = object()


class MemorySubscription:
    """One consumer's queue. Unbounded on purpose: dropping a limit change or an offline
    notice would be unsafe, so a lagging consumer is reported (``backlog``), not starved."""

    def __init__(self, bus: MemoryBus, name: str, warn_backlog: int) -> None:
        self._bus = bus
        self.name = name
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._closed = False
        self._warn_backlog = warn_backlog
        self._warned = False
        self.delivered = 0

    def _put(self, event: Event) -> None:
        if self._closed:
            return
        self._queue.put_nowait(event)
        size = self._queue.qsize()
        if size >= self._warn_backlog and not self._warned:
            self._warned = True
            log.warning("bus subscriber %r is %d events behind", self.name, size)
        elif size < self._warn_backlog // 2:
            self._warned = False

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def get_nowait(self) -> Event | None:
        """The next queued event, or None when none is waiting (for batching consumers)."""
        if self._closed or self._queue.empty():
            return None
        item = self._queue.get_nowait()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            return None
        self.delivered += 1
        return item  # type: ignore[return-value]

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)  # later __anext__ calls stop too
            raise StopAsyncIteration
        self.delivered += 1
        return item  # type: ignore[return-value]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_CLOSED)
            self._bus._remove(self)


class MemoryBus:
    """In-process pub/sub: one asyncio queue per subscriber, all on the caller's loop."""

    def __init__(self, *, warn_backlog: int = 10_000) -> None:
        self._subs: list[MemorySubscription] = []
        self._warn_backlog = warn_backlog
        self.published = 0

    def publish(self, event: Event) -> None:
        self.published += 1
        for sub in self._subs:
            sub._put(event)

    def subscribe(self, name: str = "") -> MemorySubscription:
        sub = MemorySubscription(self, name or f"sub-{len(self._subs) + 1}", self._warn_backlog)
        self._subs.append(sub)
        return sub

    def _remove(self, sub: MemorySubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def subscribers(self) -> tuple[MemorySubscription, ...]:
        return tuple(self._subs)

    async def close(self) -> None:
        for sub in list(self._subs):
            sub.close()


def open_bus(url: str = "memory://", *, site: str = "default") -> Bus:
    """The bus named by ``url``: ``memory://`` (one process, the default) or
    ``nats://host:port[?option=value...]`` (NATS JetStream, the events of ``site``; the
    options are :class:`gridshare.adapters.nats.bus.NatsBusSettings` fields). Connecting
    to NATS happens on first use, so a bad host is reported (and retried) then."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme == "memory":
        return MemoryBus()
    if scheme in ("nats", "tls"):
        from gridshare.adapters.nats.bus import NatsBus, settings_from_query

        parts = urlsplit(url)
        if not parts.hostname:
            raise BusError(f"bus {url!r}: a NATS URL needs a host, e.g. nats://127.0.0.1:4222")
        try:
            _ = parts.port
        except ValueError as exc:
            raise BusError(f"bus {url!r}: {exc}") from exc
        settings = settings_from_query(parts.query)
        return NatsBus(parts._replace(query="").geturl(), site=site, settings=settings)
    raise BusError(f"bus {url!r}: unknown bus URL; supported: "
                   + ", ".join(f"{s}://" for s in SUPPORTED_BUS_SCHEMES))
