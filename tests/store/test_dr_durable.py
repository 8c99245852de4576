"""``POST /api/v1/dr/signals`` answers 201 ("stored") only once the event is committed:
a kill -9 right after the answer loses nothing. A database that cannot store it makes
the answer 503 (send it again), never a 201."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from api.conftest import AUTH, TOKEN
from api.test_dr_api import T0, FakeDr, signal
from fastapi import FastAPI, Request

from gridshare.api.auth import Auth
from gridshare.api.dr import create_router
from gridshare.api.problems import install
from gridshare.clock import FakeClock
from gridshare.core.dr.book import DrEvent, Submitted
from gridshare.core.dr.signals import DrSignal
from gridshare.store import Store


class PersistingDr(FakeDr):
    """Writes the event to the store as the real DR service does (queued, batched)."""

    def __init__(self, store: Store, clock: FakeClock, *, bad: bool = False) -> None:
        super().__init__(("Z1",), clock)
        self.store = store
        self.bad = bad

    def submit(self, sig: DrSignal) -> tuple[Submitted, DrEvent]:
        outcome, event = super().submit(sig)
        self.store.record_dr_event({
            "signal_id": sig.signal_id, "zone_id": sig.zone_id,
            # bad: a row the database refuses (NOT NULL), so its batch fails
            "signal": None if self.bad else json.dumps(sig.to_json()),
            "updated_at": self.clock.now()})
        return outcome, event


def api_for(dr: FakeDr, clock: FakeClock, store: Store) -> FastAPI:
    api = FastAPI()
    install(api)
    auth = Auth((TOKEN,))

    def read(request: Request) -> None:
        auth.require_read(request)

    def write(request: Request) -> None:
        auth.require_write(request)

    api.include_router(create_router(lambda: dr, clock, write, read, store=lambda: store))
    return api


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    # A minute between batches: without the wait, the answer would come long before.
    s = Store(f"sqlite:///{tmp_path / 'g.db'}", flush_interval_s=60.0)
    await s.start()
    yield s
    await s.stop()


async def post(api: FastAPI, body: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://dr") as c:
        return await c.post("/api/v1/dr/signals", headers=AUTH, content=json.dumps(body))


async def test_201_means_committed(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(T0)
    got = await post(api_for(PersistingDr(store, clock), clock, store), signal())
    assert got.status_code == 201, got.text
    other = Store(f"sqlite:///{tmp_path / 'g.db'}")  # another connection: committed?
    await other.start()
    try:
        assert [r["signal_id"] for r in await other.dr_events()] == ["grid-017"]
    finally:
        await other.stop()


async def test_a_signal_the_database_refuses_is_503_not_201(store: Store) -> None:
    clock = FakeClock(T0)
    got = await post(api_for(PersistingDr(store, clock, bad=True), clock, store), signal())
    assert got.status_code == 503, got.text
    assert "could not be stored" in got.json()["detail"]
