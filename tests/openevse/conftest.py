"""Fixtures for the OpenEVSE driver: a real Mosquitto and simulated boxes on real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto, mosquitto

from gridshare.sim.openevse import SimOpenEvse


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with mosquitto(tmp_path / "mosquitto") as started:
        yield started


BoxFactory = Callable[..., Any]


@pytest.fixture
async def boxes(broker: Mosquitto) -> AsyncIterator[BoxFactory]:
    """``await boxes(base, **settings)``: a started simulated box, stopped after the test."""
    made: list[SimOpenEvse] = []

    async def make(base: str = "openevse-1a2b", **kw: Any) -> SimOpenEvse:
        kw.setdefault("shaper_maxinterval_s", 3.0)
        kw.setdefault("publish_s", 0.2)
        box = SimOpenEvse(base, broker.host, broker.port, **kw)
        await box.start()
        made.append(box)
        return box

    yield make
    for box in made:
        await box.stop()
