"""Virtual time for a whole process: an asyncio event loop whose clock jumps ahead.

:class:`VirtualTimeLoop` is a selector event loop whose ``time()`` is a virtual clock.
Every time the loop would block, it first polls its sockets without waiting; when no
socket is ready and no callback is due, nothing can happen before the next timer, so the
clock jumps straight to it instead of sleeping. Socket I/O stays real (the CSMS, the
simulated chargers and meters talk OCPP over loopback websockets), while every timer —
``asyncio.sleep``, ``asyncio.timeout``, websockets' keepalive and close timeouts, the
controller's ticks, the CSMS's command timeouts — runs on the same virtual clock.

Computation takes no virtual time: a simulated day passes as fast as the code handling
it runs. Work handed to threads (``run_in_executor``, ``asyncio.to_thread``) is waited for
in real time, without moving the clock, so its result comes back at the same virtual
instant it was asked for.

:class:`VirtualClock` is the :class:`~gridshare.clock.Clock` (and the simulator's
:class:`~gridshare.sim.clock.SimClock`) of that virtual time, as UTC dates.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpSelector:
    """The loop's selector: polls first, then jumps the virtual clock to the next timer."""

    def __init__(self, real: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._real = real
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._real.select(0)
        if events or (timeout is not None and timeout <= 0):
            return events
        loop = self._loop
        if loop.threads_pending:
            # A thread is working for us: its result must come back at this virtual
            # instant, so wait for it (or for a socket) in real time.
            return self._real.select(0.05 if timeout is None else min(timeout, 0.05))
        if timeout is None:
            # No timer at all: only a real event (a thread, a signal) can wake us.
            return self._real.select(None)
        loop.jumps += 1
        loop.virtual_time += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (see the module docstring)."""

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self.virtual_time = float(start)
        """Seconds on the loop's clock (what ``loop.time()`` returns)."""
        self.jumps = 0
        """How many times the clock jumped to the next timer."""
        self.threads_pending = 0
        self._selector: Any = _JumpSelector(self._selector, self)

    def time(self) -> float:
        return self.virtual_time

    def run_in_executor(self, executor: Any, func: Callable[..., T],  # type: ignore[override]
                        *args: Any) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.threads_pending += 1

        def done(_f: asyncio.Future[T] | ThreadFuture[T]) -> None:
            self.threads_pending -= 1

        future.add_done_callback(done)
        return future


class VirtualClock:
    """UTC dates on a :class:`VirtualTimeLoop`'s clock: ``start`` when the loop's clock
    reads ``origin`` (by default, when the clock is made)."""

    speed = 1.0
    """Simulated seconds per second of the loop's clock (the loop's clock *is* simulated)."""

    def __init__(self, start: datetime, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self._loop = loop or asyncio.get_running_loop()
        self._t0 = start.timestamp()
        self._origin = self._loop.time()

    def time(self) -> float:
        """Simulated UNIX time in seconds."""
        return self._t0 + (self._loop.time() - self._origin)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def elapsed(self) -> float:
        """Simulated seconds since the start."""
        return self._loop.time() - self._origin

    def to_real(self, sim_s: float) -> float:
        return max(0.0, sim_s)

    async def sleep(self, sim_s: float) -> None:
        await asyncio.sleep(max(0.0, sim_s))
