"""Time for the simulator: real time, or real time sped up by a factor.

Everything in :mod:`gridshare.sim` reads time and sleeps through a :class:`SimClock`, which
is gridshare's one :class:`~gridshare.clock.Clock` plus what a simulation needs: UNIX
seconds, a speed, and sleeping in simulated time. Durations (setpoint lag, meter and
heartbeat intervals, profile durations) are in *simulated* seconds; a clock with
``speed=10`` makes them pass ten times faster in wall time. Network timeouts (websocket
handshake, OCPP response timeout, reconnect backoff) stay in real seconds because the CSMS
on the other end runs in real time.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Protocol

from gridshare.clock import Clock, FakeClock


class SimClock(Clock, Protocol):
    """What the simulator needs from a clock."""

    speed: float
    """Simulated seconds per real second."""

    def time(self) -> float:
        """Simulated UNIX time in seconds."""
        ...

    def to_real(self, sim_s: float) -> float:
        """Real seconds that ``sim_s`` simulated seconds take."""
        ...

    async def sleep(self, sim_s: float) -> None:
        """Sleep for ``sim_s`` simulated seconds."""
        ...


class ScaledClock:
    """Starts at ``start`` (default: now) and runs ``speed`` times faster than real time.

    ``speed=1`` is plain wall-clock time, which is what a real CSMS expects: absolute
    timestamps in profiles and messages then agree on both sides.
    """

    __slots__ = ("_m0", "_t0", "speed")

    def __init__(self, speed: float = 1.0, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = float(speed)
        self._t0 = (start or datetime.now(UTC)).timestamp()
        self._m0 = time.monotonic()

    def time(self) -> float:
        return self._t0 + (time.monotonic() - self._m0) * self.speed

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def to_real(self, sim_s: float) -> float:
        return max(0.0, sim_s) / self.speed

    async def sleep(self, sim_s: float) -> None:
        await asyncio.sleep(self.to_real(sim_s))


class ManualClock(FakeClock):
    """Time that only moves when told to: for pure, network-free tests of the physics.

    ``sleep`` advances the clock instead of waiting, so do not use it with a live
    connection (the other side runs in real time).
    """

    speed = 1.0

    def time(self) -> float:
        return self.now().timestamp()

    def to_real(self, sim_s: float) -> float:
        return 0.0

    def advance(self, seconds: float) -> datetime:
        if seconds < 0:
            raise ValueError("time only moves forward")
        return super().advance(seconds)

    async def sleep(self, sim_s: float) -> None:
        self.advance(max(0.0, sim_s))
        await asyncio.sleep(0)
