"""Time, passed in: the one Clock every part of gridshare reads.

Nothing that decides anything reads the system clock itself (the core takes ``now`` as an
argument, the controller asks its injected clock), so time-series tests replay an hour in
milliseconds and a rule such as "renew at half the lease" is tested to the second.
``time.perf_counter`` is only ever used to *measure* how long computing took.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Timezone-aware UTC now."""
        ...


class SystemClock:
    """Wall-clock UTC time (production)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told (tests, replays)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2025, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, when: datetime) -> None:
        self._now = when
