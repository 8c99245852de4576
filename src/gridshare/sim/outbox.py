"""What a simulated charger still has to tell the CSMS, in order, bounded while offline.

Items are version-neutral (a status change, a transaction start, a meter sample, ...); the
link sends them one at a time through the OCPP version's wire module. Like a real charger,
it keeps transaction messages while offline in a bounded queue that loses meter samples
first, and does not queue status notifications while offline (they are all re-sent after
the next boot).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gridshare.sim.connector import Status, Transaction
from gridshare.sim.meter import MeterSample

OutgoingKind = Literal[
    "status", "plugged", "authorize", "started", "needs", "meter", "stopped", "heartbeat"
]


@dataclass(slots=True)
class Outgoing:
    """A message waiting to be sent."""

    kind: OutgoingKind
    connector: int
    at: datetime
    tx: Transaction | None = None
    status: Status | None = None
    sample: MeterSample | None = None
    offline: bool = False
    """Happened while the charger was offline (OCPP 2.0.1 ``offline`` flag)."""


class Outbox:
    """A FIFO of :class:`Outgoing` with a wake-up event for the sender."""

    __slots__ = ("_items", "dropped", "max_queued", "wake")

    def __init__(self, max_queued: int) -> None:
        self._items: deque[Outgoing] = deque()
        self.max_queued = max_queued
        self.dropped = 0
        """Items lost because the queue was full."""
        self.wake = asyncio.Event()
        """Set whenever something is added (and by whoever wants the sender to look)."""

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Outgoing, *, online: bool) -> None:
        if item.kind == "status" and not online:
            return  # statuses are re-sent after the next boot
        box = self._items
        if len(box) >= self.max_queued:
            # bounded offline queue, like real chargers: lose a meter sample first
            victim = next((i for i in box if i.kind == "meter"), box[0])
            box.remove(victim)
            self.dropped += 1
        box.append(item)
        self.wake.set()

    def head(self) -> Outgoing | None:
        return self._items[0] if self._items else None

    def pop_if_head(self, item: Outgoing) -> None:
        """Remove ``item`` once sent (unless something already removed it)."""
        if self._items and self._items[0] is item:
            self._items.popleft()

    def take(self, kind: OutgoingKind) -> list[Outgoing]:
        """Remove and return every item of ``kind``."""
        taken = [i for i in self._items if i.kind == kind]
        if taken:
            self._items = deque(i for i in self._items if i.kind != kind)
        return taken

    def put_first(self, items: list[Outgoing]) -> None:
        """Queue ``items`` ahead of everything else (statuses after a boot)."""
        self._items.extendleft(reversed(items))
        self.wake.set()
