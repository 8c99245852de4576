"""Set-up shared by the audit store tests (tests/controller/test_store.py on SQLite,
tests/store/test_store_db.py on SQLite and PostgreSQL): a started store, and one record
of every kind with the rows each table should then hold."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from gridshare.controller.audit import AlarmRecord, CommandRecord
from gridshare.drivers import CommandResult
from gridshare.events import (
    ChargerBooted,
    GroupMeterReading,
    LimitChanged,
    MeterReading,
    SessionStarted,
    SessionStopped,
)
from gridshare.store import Store

FLUSH_S = 0.05
"""The tests' flush interval: batches go out at once, without a test waiting for them."""


@asynccontextmanager
async def started_store(url: str) -> AsyncIterator[Store]:
    """A started store on ``url``, stopped on the way out."""
    store = Store(url, flush_interval_s=FLUSH_S)
    await store.start()
    try:
        yield store
    finally:
        await store.stop()


ONE_OF_EACH_COUNTS = {"events": 4, "sessions": 1, "meter_readings": 2,
                      "setpoint_commands": 1, "alarms": 1}
"""The rows of each table after :func:`record_one_of_each`."""


def record_one_of_each(store: Store, t: Callable[[float], datetime]) -> None:
    """One record of every kind (``t(seconds)``: the tests' time): a boot, a session with
    its meter reading, a group reading, a limit, a command and an alarm."""
    store.record_event(ChargerBooted("cp-1", t(0), "ocpp1.6", "acme", "x1"))
    store.record_event(SessionStarted("cp-1", 1, "42", t(1), "TAG", 100.0))
    store.record_event(MeterReading("cp-1", 1, t(2), "42", power_w=7000.0,
                                    current_a=(10.0, 10.1, None), energy_wh=150.0))
    store.record_event(GroupMeterReading("service", t(2), (40.0, 41.0, 39.0)))
    store.record_event(SessionStopped("cp-1", 1, "42", t(3), 900.0, "EVDisconnected"))
    store.record_event(LimitChanged("service", t(4), "demand_response", max_current=50.0))
    store.record_command(CommandRecord(t(1), "cp-1", 1, "increase", 16.0, 6.0,
                                       CommandResult.ACCEPTED, 0.012))
    store.record_alarm(AlarmRecord(t(5), "limit", "service", "L1", 52.0, 50.0, "over"))


async def table_counts(store: Store) -> dict[str, int]:
    """The rows in each table :data:`ONE_OF_EACH_COUNTS` names."""
    return {name: await store.count(name) for name in ONE_OF_EACH_COUNTS}
