"""Fixtures for the CSMS tests: a real server on 127.0.0.1:0 (helpers in csms_helpers)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import pytest
from csms_helpers import VERSIONS, CsmsFactory, Msgs, Recorder

from gridshare.adapters.ocpp import CentralSystem, CsmsConfig


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def msgs(version: str) -> Msgs:
    return Msgs(version)


@pytest.fixture
async def make_csms() -> AsyncIterator[CsmsFactory]:
    """Start CentralSystems with config overrides (auto-register on by default)."""
    started: list[CentralSystem] = []

    async def make(clock: Callable[[], datetime] | None = None,
                   **overrides: Any) -> tuple[CentralSystem, Recorder]:
        overrides.setdefault("allow_auto_register", True)
        recorder = Recorder()
        csms = CentralSystem(CsmsConfig(**overrides), recorder, clock=clock)
        await csms.start(port=0)
        started.append(csms)
        return csms, recorder

    yield make
    for csms in started:
        await csms.stop()


@pytest.fixture
async def csms(make_csms: CsmsFactory) -> tuple[CentralSystem, Recorder]:
    return await make_csms()


