"""Fixtures for the control loop: a small site, a fake clock and a recording driver."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from gridshare.clock import FakeClock
from gridshare.config import parse_site
from gridshare.core.topology import Topology
from gridshare.drivers import CommandOutcome, CommandResult, SetpointRequest

SITE = """
site: test
voltage: 230
groups:
  - id: main
    max_current: 63
    groups:
      - {id: c1, max_current: 32, chargers: [a1, a2, a3]}
      - {id: c2, max_current: 32, chargers: [b1, b2]}
chargers:
  - {id: a1, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: a2, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: a3, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: b1, max_current: 16, phases: 1, phase: L2, failsafe_current: 6}
  - {id: b2, max_current: 32, phases: 3, failsafe_current: 0}
"""

METERED_SITE = """
site: metered
voltage: 230
groups:
  - id: main
    max_current: 40
    meter: house
    chargers: [m1, m2]
meters:
  - {id: house, source: ocpp, charger: house-meter}
chargers:
  - {id: m1, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: m2, max_current: 32, phases: 3, failsafe_current: 6}
"""

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def topology() -> Topology:
    return parse_site(SITE, "test-site")


@pytest.fixture
def metered() -> Topology:
    return parse_site(METERED_SITE, "metered-site")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


def t(seconds: float) -> datetime:
    """``seconds`` after the start of every test's timeline."""
    return T0 + timedelta(seconds=seconds)


@dataclass
class Call:
    kind: str
    """setpoint | failsafe | cap"""
    charger: str
    connector: int
    current_a: float | None
    lease_s: float | None
    started: int
    finished: int | None = None
    result: CommandResult | None = None


@dataclass
class RecordingDriver:
    """A ChargerDriver that records every call in order (a setpoint when it is submitted,
    as a real driver writes the frame). A charger's answers can be held at a gate (to test
    ordering) and chosen (to test failures); accepted answers carry increasing frame
    numbers like a real adapter's."""

    calls: list[Call] = field(default_factory=list)
    results: dict[str, CommandResult] = field(default_factory=dict)
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    errors: set[str] = field(default_factory=set)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    frames: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def _start(self, kind: str, charger: str, connector: int, current_a: float | None,
               lease_s: float | None) -> Call:
        call = Call(kind, charger, connector, current_a, lease_s, next(self._seq))
        self.calls.append(call)
        return call

    async def _finish(self, call: Call) -> CommandOutcome:
        gate = self.gates.get(call.charger)
        if gate is not None:
            await gate.wait()
        call.finished = next(self._seq)
        if call.charger in self.errors:
            raise RuntimeError(f"driver broke on {call.charger}")
        call.result = self.results.get(call.charger, CommandResult.ACCEPTED)
        return CommandOutcome(call.result, sent=call.result is not CommandResult.OFFLINE,
                              answer_seq=next(self.frames))

    def submit_setpoints(self, requests: Sequence[SetpointRequest],
                         ) -> list[Awaitable[CommandOutcome]]:
        return [self._finish(self._start("setpoint", r.charger, r.connector, r.current_a,
                                         r.lease_s)) for r in requests]

    async def apply_setpoint(self, charger: str, connector: int, current_a: float,
                             lease_s: float) -> CommandOutcome:
        return await self._finish(self._start("setpoint", charger, connector, current_a,
                                              lease_s))

    async def apply_failsafe(self, charger: str, current_a: float) -> CommandOutcome:
        return await self._finish(self._start("failsafe", charger, 0, current_a, None))

    async def apply_charger_cap(self, charger: str, current_a: float | None,
                                ) -> CommandOutcome:
        return await self._finish(self._start("cap", charger, 0, current_a, None))

    def setpoints(self, charger: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.kind == "setpoint"
                and (charger is None or c.charger == charger)]

    def last(self, charger: str, connector: int = 1) -> float | None:
        found = [c.current_a for c in self.setpoints(charger) if c.connector == connector]
        return found[-1] if found else None

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def driver() -> RecordingDriver:
    return RecordingDriver()
