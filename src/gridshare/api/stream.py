"""``GET /api/v1/stream``: live updates as server-sent events.

Events (each ``data:`` is one line of JSON):

- ``site``: the group tree, as ``GET /api/v1/site`` (group loads, limits, overrides);
- ``chargers``: every charger, as ``GET /api/v1/chargers`` (setpoints, measured currents,
  sessions);
- ``alarm``: one alarm as it is raised or cleared (as in ``GET /api/v1/alarms``).

On connection a client gets ``site`` and ``chargers`` at once; after that each whenever it
changed (the controller tells the hub of every event, cycle, answer and alarm; changes are
coalesced to at most one send per ``min_interval_s``), and at least once a second anyway.
One hub task builds each view once for all clients; each client has its own bounded
queue, and one that falls ``max_backlog`` messages behind (or disconnects) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gridshare.api.views import LiveViews, alarm_dict, dumps
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    from gridshare.controller.audit import AlarmRecord

log = logging.getLogger("gridshare.api")

EVENT_NAMES = ("site", "chargers", "alarm")


def sse(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class StreamClient:
    def __init__(self, max_backlog: int) -> None:
        self.queue: deque[bytes] = deque()
        self.max_backlog = max_backlog
        self.wake = asyncio.Event()
        self.closed = False
        self.last: dict[str, tuple[bytes, float]] = {}
        """Per event name: the last data sent and when."""

    def put(self, message: bytes) -> None:
        if self.closed:
            return
        if len(self.queue) >= self.max_backlog:
            self.close()  # too far behind: it reconnects and starts from now
            return
        self.queue.append(message)
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class StreamHub:
    def __init__(self, views: LiveViews, *, interval_s: float = 1.0,
                 min_interval_s: float = 0.1, max_backlog: int = 256) -> None:
        self.views = views
        self.interval_s = interval_s
        self.min_interval_s = min_interval_s
        self.max_backlog = max_backlog
        self.clients: set[StreamClient] = set()
        self._dirty = asyncio.Event()
        self._alarms: deque[AlarmRecord] = deque(maxlen=max_backlog)
        self._task: asyncio.Task[None] | None = None
        self._remove = views.listen(self._changed)
        self._closed = False
        self.sent = 0

    def _changed(self, what: str) -> None:
        if what == "alarm":
            alarms = self.views.controller.recent_alarms
            if alarms and self.clients:
                self._alarms.append(alarms[-1])  # the one just raised or cleared
        self._dirty.set()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="gridshare-api-stream")
            self._task.add_done_callback(self._task_done)

    @staticmethod
    def _task_done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("API stream hub failed", exc_info=task.exception())

    async def subscribe(self) -> AsyncIterator[bytes]:
        """The stream of one client, until it disconnects or the hub closes."""
        if self._closed:
            return
        client = StreamClient(self.max_backlog)
        self.clients.add(client)
        self._ensure_task()
        try:
            yield b"retry: 2000\n\n"
            self._send_views(client, force=True)
            while not client.closed:
                await client.wake.wait()
                client.wake.clear()
                while client.queue:
                    yield client.queue.popleft()
        finally:
            client.close()
            self.clients.discard(client)

    def _send_views(self, client: StreamClient, *, force: bool = False) -> None:
        now = time.monotonic()
        for name, data in (("site", self.views.site()), ("chargers", self.views.chargers())):
            last = client.last.get(name)
            if force or last is None or last[0] != data or now - last[1] >= self.interval_s:
                client.last[name] = (data, now)
                client.put(sse(name, data))
                self.sent += 1

    async def _run(self) -> None:
        while self.clients and not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s / 2):
                    await self._dirty.wait()
            self._dirty.clear()
            alarms = list(self._alarms)
            self._alarms.clear()
            messages = [sse("alarm", dumps(alarm_dict(a))) for a in alarms]
            for client in tuple(self.clients):
                for message in messages:
                    client.put(message)
                self._send_views(client)
            await asyncio.sleep(self.min_interval_s)  # coalesce bursts of changes

    async def close(self) -> None:
        """End every client's stream (so the server can shut down) and the hub."""
        self._closed = True
        self._remove()
        for client in tuple(self.clients):
            client.close()
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None

