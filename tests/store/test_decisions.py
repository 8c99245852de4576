"""Every control decision in the audit log: a cycle that sends (or holds back, or has a
step refused) is one ``decisions`` row with what and why; a cycle that decides nothing
adds none."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from controller.conftest import SITE, T0, RecordingDriver
from stores import started_store

from gridshare.clock import FakeClock
from gridshare.config import parse_site
from gridshare.controller.loop import Controller, ControllerSettings
from gridshare.events import ChargerBooted, ConnectorStatus, StatusChanged
from gridshare.store import Store

FAST = ControllerSettings(tick_s=None, debounce_s=0.005, lease_s=60.0, settle_s=0.0)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with started_store(f"sqlite:///{tmp_path / 'g.db'}") as s:
        yield s


async def test_each_deciding_cycle_is_one_row(store: Store) -> None:
    clock = FakeClock(T0)
    driver = RecordingDriver()
    c = Controller(parse_site(SITE, "test-site"), driver, clock, settings=FAST, audit=store)
    c.on_cycle(store.record_cycle)
    await c.start()
    try:
        for cid in c.topology.chargers:
            c.handle(ChargerBooted(cid, clock.now(), "ocpp1.6"))
        await c.settle()
        await store.flush()
        booted = await store.count("decisions")
        assert booted >= 1  # idle connectors held at 0 A: decided and sent
        clock.advance(1)
        c.handle(StatusChanged("a1", 1, ConnectorStatus.CHARGING, clock.now()))
        await c.settle()
        await store.flush()
        (latest, *_) = await store.rows("decisions")
        detail = json.loads(latest["detail"])
        assert {(s["charger"], s["connector"], s["current_a"], s["kind"])
                for s in detail["sent"]} == {("a1", 1, 32.0, "increase")}
        assert (latest["sent"], latest["held"], latest["guarded"]) == (1, 0, False)
        count = await store.count("decisions")
        clock.advance(1)
        await c.tick()  # nothing changed: no decision, no row
        await c.settle()
        await store.flush()
        assert await store.count("decisions") == count
        # The command itself, with its outcome, is in setpoint_commands.
        commands = await store.commands(charger="a1")
        assert commands[0]["current_a"] == 32.0
    finally:
        await c.stop()


async def test_recording_a_cycle_is_cheap(store: Store) -> None:
    """The hot path keeps a reference; JSON is made by the writer."""
    import time

    clock = FakeClock(T0)
    c = Controller(parse_site(SITE, "test-site"), RecordingDriver(), clock, settings=FAST)
    reports = []
    c.on_cycle(reports.append)
    await c.start()
    try:
        for cid in c.topology.chargers:
            c.handle(ChargerBooted(cid, clock.now(), "ocpp1.6"))
        await c.settle()
    finally:
        await c.stop()
    report = next(r for r in reports if r.sent)
    store.record_cycle(report)
    assert store._queue[-1][1]["detail"] is report  # queued as it is, no JSON yet
    started = time.perf_counter()
    for _ in range(9_999):
        store._last_held = ()
        store.record_cycle(report)
    # An append, not a database round trip (a loose bound: the machine is shared).
    assert (time.perf_counter() - started) / 9_999 * 1e6 < 200
    await store.flush()
    assert await store.count("decisions") == 10_000
    assert json.loads((await store.rows("decisions", limit=1))[0]["detail"])["sent"]
