"""Fixtures for the simulator tests: a test-only CSMS and a charger factory."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from raw_csms import RawCSMS
from sim_csms import TestCSMS

from gridshare.sim import SimCharger


@pytest.fixture
async def csms() -> AsyncIterator[TestCSMS]:
    server = await TestCSMS(heartbeat_interval=60).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def make_charger(csms: TestCSMS) -> AsyncIterator[Callable[..., SimCharger]]:
    made: list[SimCharger] = []

    def factory(charger_id: str = "CP1", **kwargs: Any) -> SimCharger:
        kwargs.setdefault("reconnect_min_s", 0.1)
        kwargs.setdefault("reconnect_max_s", 0.5)
        ch = SimCharger(charger_id, kwargs.pop("url", csms.url), **kwargs)
        made.append(ch)
        return ch

    try:
        yield factory
    finally:
        await asyncio.gather(*(ch.stop() for ch in made))


@pytest.fixture
async def raw() -> AsyncIterator[RawCSMS]:
    """A CSMS of raw frames (tests/sim/raw_csms.py): the test scripts every answer."""
    server = await RawCSMS().start()
    try:
        yield server
    finally:
        await server.stop()
