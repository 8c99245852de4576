"""The audit log and history: events, sessions, meter readings, setpoint commands, control
decisions, alarms, demand-response events, AMI readings.

SQLAlchemy 2 (async). SQLite through aiosqlite is the default
(``sqlite+aiosqlite:///<data dir>/gridshare.db``, WAL mode); PostgreSQL through asyncpg
by URL (``postgresql://user@host/db``), with the same schema. The schema is made and
changed only by the alembic migrations in ``gridshare.migrations``: ``start()`` upgrades
the database to the newest revision.

Two ways in, with different promises (docs/storage.md):

- **Acknowledged after commit** — :meth:`Store.insert_now` returns only once its rows are
  committed (SQLite: WAL with ``synchronous=FULL``, fsynced; PostgreSQL: a committed
  transaction). A caller that acknowledges after it returns (the MQTT ingest's PUBACK)
  never acknowledges a row a crash can lose. Rows that repeat a table's unique key are
  ignored, so a redelivery after a crash is harmless.
- **Batched** — ``record_*`` (events, meter readings, sessions, setpoint commands, control
  decisions, alarms, DR event states) only append to an in-memory queue, and one
  supervised writer task inserts in batches (every ``flush_interval_s`` or ``batch_size``
  rows, one transaction per batch): nothing waits on the disk on the control path. A
  ``kill -9`` or power loss loses what is queued and not yet committed: at most
  ``flush_interval_s`` (0.5 s) of records plus the batch being written. Nothing in these
  paths is acknowledged to anyone outside the process by itself; ``flush()`` waits until
  everything queued so far is committed, and ``flush(strict=True)`` raises if any of it
  was lost (the DR API answers a signal only after it).
- **Group commit** — :class:`DurableWriter` (``Store.durable``): the OCPP central system
  awaits it before answering a transaction message or meter values, so the rows those
  messages produce (sessions, meter_readings) are committed before the charger hears
  "accepted". Rows arriving within a few ms share one transaction (one fsync for a
  thousand chargers); the batched path then skips exactly those rows (it still writes the
  ``events`` audit row).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gridshare.bus import Subscription
from gridshare.controller.audit import AlarmRecord, CommandRecord
from gridshare.events import (
    Event,
    GroupMeterReading,
    MeterReading,
    SessionStarted,
    SessionStopped,
)
from gridshare.tasks import cancel_and_wait

if TYPE_CHECKING:
    from gridshare.controller.loop import CycleReport

log = logging.getLogger(__name__)

DB_FILE = "gridshare.db"

metadata = MetaData()

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("charger", String(64)),
    Column("connector", Integer),
    Column("group_id", String(64)),
    Column("payload", Text, nullable=False),
    Index("ix_events_at", "at"),
    Index("ix_events_charger", "charger", "at"),
)

sessions = Table(
    "sessions", metadata,
    Column("id", Integer, primary_key=True),
    Column("charger", String(64), nullable=False),
    Column("connector", Integer, nullable=False),
    Column("transaction_id", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("stopped_at", DateTime(timezone=True)),
    Column("id_tag", String(64)),
    Column("meter_start_wh", Float),
    Column("meter_stop_wh", Float),
    Column("stop_reason", String(64)),
    Index("ix_sessions_tx", "charger", "transaction_id"),
)

meter_readings = Table(
    "meter_readings", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("charger", String(64)),
    Column("connector", Integer),
    Column("group_id", String(64)),  # a group (site/sub-)meter reading: charger is null
    Column("transaction_id", String(64)),
    Column("power_w", Float),
    Column("current_l1_a", Float),
    Column("current_l2_a", Float),
    Column("current_l3_a", Float),
    Column("voltage_v", Float),
    Column("energy_wh", Float),
    Column("soc_percent", Float),
    Column("includes_chargers", Boolean),
    Column("energy_export_wh", Float),  # the export register (0006; None: none sent)
    Index("ix_meter_charger_at", "charger", "at"),
    Index("ix_meter_group_at", "group_id", "at"),
)

setpoint_commands = Table(
    "setpoint_commands", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("charger", String(64), nullable=False),
    Column("connector", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("current_a", Float, nullable=False),
    Column("previous_a", Float),
    Column("result", String(16), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Index("ix_commands_charger_at", "charger", "at"),
)

alarms = Table(
    "alarms", metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("group_id", String(64)),
    Column("phase", String(4)),
    Column("load", Float),
    Column("limit_value", Float),
    Column("message", Text, nullable=False),
    Column("cleared", Boolean, nullable=False),
    Index("ix_alarms_at", "at"),
)

dr_events = Table(
    "dr_events", metadata,
    Column("signal_id", String(200), primary_key=True),
    Column("zone_id", String(64), nullable=False),
    Column("signal", Text, nullable=False),  # the signal's wire JSON (DrSignal.to_json)
    Column("ended_at", DateTime(timezone=True)),  # a RESTORE ended it before its end_ts
    Column("compliance", Text),  # the compliance record's JSON (None before it started)
    # Station id -> kW drawn when the zone's curtailment began: the split is made from it,
    # kept so that a restart curtails the same way.
    Column("baseline", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

ami_readings = Table(
    "ami_readings", metadata,
    # One reading of a utility (AMI) or house meter, as ingested from MQTT
    # (``gridshare/<site>/ami/<meter id>``): a meter's reading is identified by its event
    # time, so a redelivered reading (same meter, same ts) is a duplicate, never a new row.
    Column("id", Integer, primary_key=True),
    Column("meter_id", String(64), nullable=False),
    Column("ts", DateTime(timezone=True), nullable=False),  # event time (the meter's clock)
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("power_w", Float, nullable=False),
    Column("energy_wh", Float),  # the meter's import register (None: no register sent)
    Column("current_l1_a", Float),
    Column("current_l2_a", Float),
    Column("current_l3_a", Float),
    Column("voltage_l1_v", Float),
    Column("voltage_l2_v", Float),
    Column("voltage_l3_v", Float),
    Column("energy_export_wh", Float),  # the export register (0006; None: none sent)
    Index("ux_ami_meter_ts", "meter_id", "ts", unique=True),
)

decisions = Table(
    "decisions", metadata,
    # One row per control cycle that decided something: sent commands, held an increase
    # back (recorded when the held set changes, not at every cycle it stays), had a step
    # refused by the plan check, or had its answer replaced by the safety guard. The
    # commands' outcomes are in setpoint_commands; this is why they were sent.
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("sent", Integer, nullable=False),
    Column("held", Integer, nullable=False),
    Column("refused", Integer, nullable=False),
    Column("offline", Integer, nullable=False),  # connectors counted at their failsafe
    Column("guarded", Boolean, nullable=False),
    Column("compute_ms", Float, nullable=False),
    # JSON {"sent": [{charger, connector, kind, current_a, counted_a}], "held": [same],
    # "refused": [message], "alarms": [message]}
    Column("detail", Text, nullable=False),
    Index("ix_decisions_at", "at"),
)

demand_windows = Table(
    "demand_windows", metadata,
    # Demand of one feeder, substation or region in one closed tumbling window (event
    # time), from the AMI readings of its meters (docs/telemetry.md defines each figure).
    Column("id", Integer, primary_key=True),
    Column("level", String(16), nullable=False),  # feeder | substation | region
    Column("key", String(64), nullable=False),  # the feeder's (substation's ...) id
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("window_end", DateTime(timezone=True), nullable=False),
    Column("demand_kw", Float, nullable=False),  # sum of its meters' mean power
    Column("max_meter_kw", Float, nullable=False),
    Column("meters_reporting", Integer, nullable=False),
    Column("meters_expected", Integer, nullable=False),
    Column("readings", Integer, nullable=False),
    Column("closed_at", DateTime(timezone=True), nullable=False),
    Index("ux_demand_level_key_start", "level", "key", "window_start", unique=True),
)

TABLES = {t.name: t for t in (events, sessions, meter_readings, setpoint_commands, alarms,
                              dr_events, ami_readings, decisions, demand_windows)}
UPSERT_KEYS = {"dr_events": "signal_id"}
"""Tables whose rows are written by key: the latest row for a key replaces the earlier
(``INSERT ... ON CONFLICT (key) DO UPDATE`` on both SQLite and PostgreSQL)."""

SqliteSync = Literal["NORMAL", "FULL"]


class StoreError(ValueError):
    """The database URL cannot be used."""


def default_data_dir() -> Path:
    """``$GRIDSHARE_DATA_DIR``, else ``./var``."""
    return Path(os.environ.get("GRIDSHARE_DATA_DIR", "var"))


def default_url(data_dir: Path | None = None) -> str:
    return f"sqlite+aiosqlite:///{(data_dir or default_data_dir()) / DB_FILE}"


def normalise_url(url: str) -> str:
    """Pick the async driver for plain URLs (sqlite:// → aiosqlite, postgresql:// →
    asyncpg) and reject what we cannot open, with a message an operator can act on."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"database URL {url!r} is not valid: {exc}") from exc
    if parsed.drivername == "postgres":  # Heroku-style and libpq's alias
        parsed = parsed.set(drivername="postgresql")
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername in ("sqlite", "sqlite+aiosqlite"):
            return parsed.set(drivername="sqlite+aiosqlite").render_as_string(
                hide_password=False)
        raise StoreError(f"database URL {url!r}: use sqlite:// or sqlite+aiosqlite://")
    if backend == "postgresql":
        fixed = parsed.set(drivername="postgresql+asyncpg") \
            if parsed.drivername == "postgresql" else parsed
        driver = fixed.get_driver_name()
        try:
            __import__(driver)
        except ImportError as exc:
            raise StoreError(f"database URL {url!r} needs the {driver!r} package "
                             f"(pip install {driver})") from exc
        return fixed.render_as_string(hide_password=False)
    raise StoreError(f"database URL {url!r}: only SQLite and PostgreSQL are supported")


def _payload(event_obj: Event) -> str:
    data = _keys_as_text(dataclasses.asdict(event_obj))
    return json.dumps(data, default=lambda v: v.isoformat() if isinstance(v, datetime)
                      else str(v), separators=(",", ":"))


def _keys_as_text(value: Any) -> Any:
    """JSON objects have text keys: a connector key (charger, connector), as in a
    ConnectorCapsChanged's caps, becomes ``"charger/connector"``."""
    if isinstance(value, dict):
        return {"/".join(map(str, k)) if isinstance(k, tuple) else
                k if isinstance(k, str) else str(k): _keys_as_text(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_keys_as_text(v) for v in value]
    return value


class Store:
    """Batched, asynchronous writer of the audit log (and the AuditSink of the controller)."""

    def __init__(self, url: str, *, batch_size: int = 1000, flush_interval_s: float = 0.5,
                 max_queue: int = 200_000, sqlite_synchronous: SqliteSync = "FULL") -> None:
        self.url = normalise_url(url)
        if sqlite_synchronous not in ("NORMAL", "FULL"):
            raise StoreError(f"sqlite_synchronous must be NORMAL or FULL, "
                             f"not {sqlite_synchronous!r}")
        self.sqlite_synchronous: SqliteSync = sqlite_synchronous
        """FULL: a commit is fsynced before it returns, so an acknowledged row survives a
        power loss too, not only a killed process (NORMAL in WAL mode: it survives
        ``kill -9``, but the last commits can be lost with the machine)."""
        self.revision: tuple[str, ...] = ()
        """The schema revision after ``start()`` (its migration)."""
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self._engine: AsyncEngine | None = None
        self._queue: deque[tuple[Table, dict[str, Any]]] = deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._recorded = 0
        """Rows queued since start (a sequence number: flush waits for its own)."""
        self._settled = 0
        """Rows the writer is done with (committed, or counted in failed_rows)."""
        self._progress = asyncio.Event()
        self.failed_rows = 0
        self._last_held: tuple[Any, ...] = ()
        self._consumers: set[asyncio.Task[None]] = set()
        self.written = 0
        self.dropped = 0
        self.failed_batches = 0
        self.failed_events = 0
        self.durable = DurableWriter(self)
        """Group commit of the rows of acknowledged OCPP messages (see its docstring)."""
        self._durable_marks: OrderedDict[Event, None] = OrderedDict()
        """Events whose sessions/meter_readings row the durable writer owns: the batched
        path skips that row (value-equal events: the bus may hand over a copy)."""
        self._driver_inserts: dict[tuple[str, tuple[str, ...]], _DriverInsert] = {}
        """insert_now's compiled SQLite statements, by table and columns."""

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        url = make_url(self.url)
        file_sqlite = url.get_backend_name() == "sqlite" and \
            url.database not in (None, "", ":memory:")
        if file_sqlite and url.database:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # A local name: a stop() while this start is still waiting must not pull the
        # engine from under it.
        engine = self._engine = create_async_engine(self.url)
        if url.get_backend_name() == "sqlite":
            sync = self.sqlite_synchronous
            event.listen(engine.sync_engine, "connect",
                         lambda dbapi_conn, _rec: _sqlite_pragmas(dbapi_conn, sync))
        try:
            if file_sqlite:
                await _sqlite_to_wal(engine)
            async with engine.begin() as conn:
                self.revision = await conn.run_sync(_migrate)
        except BaseException as exc:
            await engine.dispose()
            if self._engine is engine:
                self._engine = None
            if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                raise
            # Unreachable server, refused login, unwritable file: one error type, naming
            # the database (never its password), for serve to report and exit.
            shown = url.render_as_string(hide_password=True)
            raise StoreError(f"database {shown} cannot be opened or migrated: "
                             f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
        self._writer = asyncio.create_task(self._write_loop(), name="gridshare-store")

    async def stop(self) -> None:
        """Write what is queued, then close."""
        await cancel_and_wait(list(self._consumers))
        await self.durable.stop()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10.0):
                    await self.flush()
            await cancel_and_wait([self._writer])
            self._writer = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    def consume(self, subscription: Subscription) -> asyncio.Task[None]:
        """Record every event of ``subscription`` (until it closes or the store stops)."""

        async def run() -> None:
            async for item in subscription:
                try:
                    self.record_event(item)
                except Exception:
                    # One event that cannot be written must not end the audit log.
                    self.failed_events += 1
                    if self.failed_events in (1, 100) or self.failed_events % 10_000 == 0:
                        log.exception("store: event %s could not be recorded (%d so far)",
                                      type(item).__name__, self.failed_events)

        task = asyncio.create_task(run(), name="gridshare-store-events")
        self._consumers.add(task)
        task.add_done_callback(self._consumer_done)
        return task

    def _consumer_done(self, task: asyncio.Task[None]) -> None:
        self._consumers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("store: event consumer failed", exc_info=task.exception())

    # --- recording (hot path: append only) ------------------------------------------------

    def _put(self, table: Table, row: dict[str, Any]) -> None:
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            if self.dropped in (1, 1000) or self.dropped % 100_000 == 0:
                log.warning("store: %d rows dropped (database too slow)", self.dropped)
            return
        self._queue.append((table, row))
        self._recorded += 1
        if len(self._queue) >= self.batch_size:
            self._wake.set()

    def mark_durable(self, items: Iterable[Event]) -> None:
        """The durable writer owns these events' table rows: do not queue them again."""
        marks = self._durable_marks
        for item in items:
            marks[item] = None
        while len(marks) > _DURABLE_MARKS:
            marks.popitem(last=False)

    def _owned(self, item: Event) -> bool:
        if not self._durable_marks:
            return False
        try:
            del self._durable_marks[item]
        except (KeyError, TypeError):  # TypeError: an unhashable event is never marked
            return False
        return True

    def record_event(self, item: Event) -> None:
        if isinstance(item, MeterReading | SessionStarted | SessionStopped) \
                and self._owned(item):
            if not isinstance(item, MeterReading):
                self._put(events, _event_row(item))  # the audit row stays batched
            return
        if isinstance(item, MeterReading):
            cur = item.current_a
            self._put(meter_readings, {
                "at": item.at, "charger": item.charger, "connector": item.connector,
                "group_id": None, "transaction_id": item.transaction_id,
                "power_w": item.power_w, "current_l1_a": cur[0], "current_l2_a": cur[1],
                "current_l3_a": cur[2], "voltage_v": item.voltage_v,
                "energy_wh": item.energy_wh, "soc_percent": item.soc_percent,
                "includes_chargers": None, "energy_export_wh": item.energy_export_wh})
            return
        if isinstance(item, GroupMeterReading):
            cur3 = item.current_a
            self._put(meter_readings, {
                "at": item.at, "charger": None, "connector": None, "group_id": item.group,
                "transaction_id": None, "power_w": None, "current_l1_a": cur3[0],
                "current_l2_a": cur3[1], "current_l3_a": cur3[2], "voltage_v": None,
                "energy_wh": None, "soc_percent": None,
                "includes_chargers": item.includes_chargers, "energy_export_wh": None})
            return
        if isinstance(item, SessionStarted):
            self._put(sessions, {
                "charger": item.charger, "connector": item.connector,
                "transaction_id": item.transaction_id, "started_at": item.at,
                "id_tag": item.id_tag, "meter_start_wh": item.meter_start_wh})
        elif isinstance(item, SessionStopped):
            self._put(sessions, {"_update": True, "charger": item.charger,
                                 "transaction_id": item.transaction_id, "stopped_at": item.at,
                                 "meter_stop_wh": item.meter_stop_wh,
                                 "stop_reason": item.reason})
        self._put(events, _event_row(item))

    def record_command(self, record: CommandRecord) -> None:
        self._put(setpoint_commands, {
            "at": record.at, "charger": record.charger, "connector": record.connector,
            "kind": record.kind, "current_a": record.current_a,
            "previous_a": record.previous_a, "result": record.result.value,
            "latency_ms": record.latency_s * 1000.0})

    def record_alarm(self, record: AlarmRecord) -> None:
        self._put(alarms, {
            "at": record.at, "kind": record.kind, "group_id": record.group or None,
            "phase": record.phase, "load": record.load, "limit_value": record.limit,
            "message": record.message, "cleared": record.cleared})

    def record_cycle(self, report: CycleReport) -> None:
        """A control cycle's decision (the controller's ``on_cycle`` listener). Cheap: the
        report is kept as it is and turned into JSON by the writer, off the hot path."""
        decision = report.decision
        held = tuple(s.key for s in decision.held)
        guarded = report.allocation.guarded
        if not (report.sent or report.refused or guarded or held != self._last_held):
            return  # nothing decided: renewals and holds would repeat every cycle
        self._last_held = held
        self._put(decisions, {
            "at": report.at, "sent": len(report.sent), "held": len(held),
            "refused": len(report.refused), "offline": len(report.allocation.offline),
            "guarded": guarded, "compute_ms": report.compute_s * 1000.0, "detail": report})

    def record_dr_event(self, row: dict[str, Any]) -> None:
        """The latest state of one demand-response event (replaces the stored one): its
        ``signal_id``, ``zone_id``, ``signal`` JSON text, ``ended_at``, ``compliance`` and
        ``baseline`` JSON texts, and ``updated_at`` (the caller's clock; now if absent)."""
        missing = {"signal_id", "zone_id", "signal"} - set(row)
        if missing:
            raise ValueError(f"dr event row: missing {', '.join(sorted(missing))}")
        self._put(dr_events, {"ended_at": None, "compliance": None, "baseline": None,
                              "updated_at": datetime.now(UTC), **row, "_upsert": True})

    # --- acknowledged writes ----------------------------------------------------------------

    async def insert_now(self, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` into ``table`` and commit before returning: once this returns,
        the rows survive a crash (acknowledge after it, never before). Rows whose unique
        key is already stored are skipped (``ON CONFLICT DO NOTHING``), so writing a
        redelivered batch again is safe. Raises if the database refuses: the caller must
        then not acknowledge."""
        if self._engine is None:
            raise RuntimeError("store not started")
        if not rows:
            return
        async with self._engine.begin() as conn:
            fast = _driver_rows(conn, table, rows, self._driver_inserts)
            if fast is not None:
                await conn.exec_driver_sql(*fast)
            else:
                await conn.execute(_insert_ignore(conn, table), list(rows))

    # --- writing --------------------------------------------------------------------------

    async def flush(self, *, strict: bool = False) -> None:
        """Wait until everything recorded so far is written (rows recorded meanwhile are
        not waited for, so a busy store cannot keep a flush waiting). ``strict``: raise
        :class:`StoreError` if a row was dropped or a batch failed meanwhile (someone's
        row was lost: fail closed), for a caller that acknowledges after it."""
        if self._writer is None:
            raise RuntimeError("store not started")
        target = self._recorded
        lost_before = self.failed_rows + self.dropped
        while self._settled < target:
            if self._writer.done():
                raise StoreError("the store's writer has stopped")
            self._wake.set()
            self._progress.clear()
            await self._progress.wait()
        if strict and self.failed_rows + self.dropped != lost_before:
            raise StoreError(f"{self.failed_rows + self.dropped - lost_before} recorded "
                             "rows could not be stored (see the log)")

    async def _write_loop(self) -> None:
        try:
            await self._write_batches()
        finally:
            self._progress.set()  # a flush waiting on a stopped writer sees it

    async def _write_batches(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races with the event, and stop() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft()
                         for _ in range(min(self.batch_size, len(self._queue)))]
                try:
                    await self._write(batch)
                    self.written += len(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # The log is an audit trail, not a control path: never stop control
                    # for it. Count and report; the next batch may succeed.
                    self.failed_batches += 1
                    self.failed_rows += len(batch)
                    log.exception("store: a batch of %d rows could not be written",
                                  len(batch))
                self._settled += len(batch)
                self._progress.set()

    async def _write(self, batch: Iterable[tuple[Table, dict[str, Any]]]) -> None:
        assert self._engine is not None
        inserts: dict[str, list[dict[str, Any]]] = {}
        updates: list[dict[str, Any]] = []
        upserts: dict[tuple[str, Any], dict[str, Any]] = {}
        """(table, key) -> its latest row in the batch (earlier ones are superseded)."""
        for table, row in batch:
            if row.get("_update"):
                updates.append(row)
            elif row.get("_upsert"):
                key = UPSERT_KEYS[table.name]
                upserts[(table.name, row[key])] = {k: v for k, v in row.items()
                                                   if k != "_upsert"}
            else:
                inserts.setdefault(table.name, []).append(row)
        if "decisions" in inserts:
            for row in inserts["decisions"]:
                if not isinstance(row["detail"], str):
                    row["detail"] = _decision_detail(row["detail"])
        async with self._engine.begin() as conn:
            for name, rows in inserts.items():
                await conn.execute(insert(TABLES[name]), rows)
            for row in updates:
                await conn.execute(
                    update(sessions)
                    .where(sessions.c.charger == row["charger"],
                           sessions.c.transaction_id == row["transaction_id"],
                           sessions.c.stopped_at.is_(None))
                    .values(stopped_at=row["stopped_at"], meter_stop_wh=row["meter_stop_wh"],
                            stop_reason=row["stop_reason"]))
            for (name, _), row in upserts.items():
                table = TABLES[name]
                key = UPSERT_KEYS[name]
                stmt = _dialect_insert(conn, table)
                await conn.execute(stmt.on_conflict_do_update(
                    index_elements=[key],
                    set_={c: stmt.excluded[c] for c in row if c != key}), [row])

    # --- reading (tests, the later API) ---------------------------------------------------

    async def count(self, table: str) -> int:
        assert self._engine is not None
        async with self._engine.connect() as conn:
            result = await conn.execute(select(func.count()).select_from(TABLES[table]))
            return int(result.scalar_one())

    async def rows(self, table: str, limit: int = 100) -> list[dict[str, Any]]:
        """The latest ``limit`` rows of ``table``, newest first."""
        assert self._engine is not None
        t = TABLES[table]
        async with self._engine.connect() as conn:
            result = await conn.execute(select(t).order_by(t.c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in result]

    async def sessions(self, *, since: datetime | None = None, until: datetime | None = None,
                       charger: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Sessions that overlap [since, until) (an open one runs until now), newest start
        first, each with ``energy_wh`` (stop minus start register) once it has stopped."""
        assert self._engine is not None
        t = sessions
        query = select(t)
        if since is not None:
            query = query.where((t.c.stopped_at.is_(None)) | (t.c.stopped_at >= _utc(since)))
        if until is not None:
            query = query.where(t.c.started_at < _utc(until))
        if charger is not None:
            query = query.where(t.c.charger == charger)
        query = query.order_by(t.c.started_at.desc(), t.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            rows = [_aware(dict(r._mapping)) for r in await conn.execute(query)]
        for row in rows:
            start, stop = row.get("meter_start_wh"), row.get("meter_stop_wh")
            row["energy_wh"] = None if start is None or stop is None else max(0.0, stop - start)
        return rows

    async def commands(self, *, charger: str | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:
        """The latest setpoint and failsafe commands with their outcome, newest first."""
        assert self._engine is not None
        t = setpoint_commands
        query = select(t)
        if charger is not None:
            query = query.where(t.c.charger == charger)
        query = query.order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return [_aware(dict(r._mapping)) for r in await conn.execute(query)]

    async def alarms(self, *, since: datetime | None = None,
                     limit: int = 100) -> list[dict[str, Any]]:
        """Alarms raised or cleared at or after ``since``, newest first."""
        assert self._engine is not None
        t = alarms
        query = select(t)
        if since is not None:
            query = query.where(t.c.at >= _utc(since))
        query = query.order_by(t.c.at.desc(), t.c.id.desc()).limit(limit)
        async with self._engine.connect() as conn:
            return [_aware(dict(r._mapping)) for r in await conn.execute(query)]


    async def dr_events(self) -> list[dict[str, Any]]:
        """Every stored demand-response event (latest state), oldest update first: what
        the DR service loads at start so events survive a restart."""
        assert self._engine is not None
        t = dr_events
        async with self._engine.connect() as conn:
            result = await conn.execute(select(t).order_by(t.c.updated_at, t.c.signal_id))
            return [_aware(dict(r._mapping)) for r in result]


def _event_row(item: Event) -> dict[str, Any]:
    return {"at": item.at, "kind": type(item).__name__,
            "charger": getattr(item, "charger", None),
            "connector": getattr(item, "connector", None),
            "group_id": getattr(item, "group", None),
            "payload": _payload(item)}


def _reading_row(item: MeterReading) -> dict[str, Any]:
    cur = item.current_a
    return {"at": item.at, "charger": item.charger, "connector": item.connector,
            "group_id": None, "transaction_id": item.transaction_id,
            "power_w": item.power_w, "current_l1_a": cur[0], "current_l2_a": cur[1],
            "current_l3_a": cur[2], "voltage_v": item.voltage_v,
            "energy_wh": item.energy_wh, "soc_percent": item.soc_percent,
            "includes_chargers": None, "energy_export_wh": item.energy_export_wh}


DurableEvent = MeterReading | SessionStarted | SessionStopped
"""What an acknowledged OCPP message produces that must survive a crash."""

_DURABLE_MARKS = 100_000
"""Events remembered as owned by the durable writer (the bus delivers them to the store
within milliseconds; the bound only matters if the store is not consuming)."""


class DurableWriter:
    """Group commit: ``await write(events)`` returns once the events' rows are committed.

    When no transaction is being committed, the rows waiting are committed at once (after
    one loop pass, so what arrived together goes together); while one is being committed
    the next group gathers, so under load the groups grow by themselves to whatever
    arrived during one commit (one fsync for all of them) — the classic group commit, no
    waiting when idle. ``max_delay_s`` > 0 adds a gathering window (at most that long, or
    until ``max_rows`` rows wait): measured slower on SQLite (docs/benchmarks.md), so 0
    by default. Every waiter of a group is resumed when it is committed — or gets the
    exception, all of them, if the transaction failed (nothing of it is stored then).
    The events are marked before the write, so the batched path never writes their rows a
    second time, even when the write failed (the caller then owes them: see the OCPP
    session's ``unstored``)."""

    def __init__(self, store: Store, *, max_delay_s: float = 0.0,
                 max_rows: int = 2000) -> None:
        self.store = store
        self.max_delay_s = max_delay_s
        self.max_rows = max_rows
        self._waiting: list[tuple[list[DurableEvent], asyncio.Future[None]]] = []
        self._rows = 0
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        """Transactions committed (rows / commits = the group size)."""
        self.rows = 0
        self.failures = 0
        self.commit_s: deque[float] = deque(maxlen=10_000)
        """How long the latest transactions took (seconds; the benchmark reports them)."""

    async def write(self, items: Sequence[Event]) -> None:
        """Commit the rows of ``items`` (meter readings, session starts and stops; other
        events are ignored) before returning; raises if the database refused them."""
        wanted: list[DurableEvent] = [e for e in items
                                      if isinstance(e, MeterReading | SessionStarted
                                                    | SessionStopped)]
        if not wanted:
            return
        self.store.mark_durable(wanted)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((wanted, future))
        self._rows += len(wanted)
        if self._rows >= self.max_rows:
            self._full.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="gridshare-store-durable")
        await asyncio.shield(future)

    async def _run(self) -> None:
        """One group per pass; ends when nobody is waiting (started again by ``write``)."""
        while self._waiting:
            if self.max_delay_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.max_delay_s):
                        await self._full.wait()
            else:
                await asyncio.sleep(0)  # what this loop pass brought joins
            self._full.clear()
            group, self._waiting, self._rows = self._waiting, [], 0
            started = time.perf_counter()
            try:
                await self._commit([e for items, _ in group for e in items])
            except Exception as exc:
                self.failures += 1
                log.warning("store: a group of %d acknowledged writes failed: %s",
                            len(group), exc)
                for _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                        future.exception()  # a caller that gave up leaves no warning
                continue
            except BaseException:
                for _, future in group:
                    if not future.done():
                        future.set_exception(StoreError("the store stopped"))
                        future.exception()
                raise
            self.commits += 1
            self.commit_s.append(time.perf_counter() - started)
            for items, future in group:
                self.rows += len(items)
                if not future.done():
                    future.set_result(None)

    async def _commit(self, items: Sequence[DurableEvent]) -> None:
        engine = self.store._engine
        if engine is None:
            raise StoreError("store not started")
        readings = [_reading_row(e) for e in items if isinstance(e, MeterReading)]
        starts = [{"charger": e.charger, "connector": e.connector,
                   "transaction_id": e.transaction_id, "started_at": e.at,
                   "id_tag": e.id_tag, "meter_start_wh": e.meter_start_wh}
                  for e in items if isinstance(e, SessionStarted)]
        async with engine.begin() as conn:
            if readings:
                await conn.execute(insert(meter_readings), readings)
            if starts:
                await conn.execute(insert(sessions), starts)
            for e in items:  # after the starts: a stop may end a session of this group
                if isinstance(e, SessionStopped):
                    await conn.execute(
                        update(sessions)
                        .where(sessions.c.charger == e.charger,
                               sessions.c.transaction_id == e.transaction_id,
                               sessions.c.stopped_at.is_(None))
                        .values(stopped_at=e.at, meter_stop_wh=e.meter_stop_wh,
                                stop_reason=e.reason))

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], swallow_errors=True)
            self._task = None


def _decision_detail(report: CycleReport) -> str:
    def send(s: Any) -> dict[str, Any]:
        return {"charger": s.key[0], "connector": s.key[1], "kind": s.kind,
                "current_a": s.current_a, "counted_a": s.counted_a}

    return json.dumps({
        "sent": [send(s) for s in report.sent],
        "held": [send(s) for s in report.decision.held],
        "refused": [a.message for a in report.refused],
        "alarms": [a.message for a in report.allocation.alarms]}, separators=(",", ":"))


def _utc(value: datetime) -> datetime:
    """Times are stored in UTC (SQLite keeps no offset): compare in UTC too."""
    return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _aware(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite hands times back without their offset; they were written in UTC."""
    for key, value in row.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            row[key] = value.replace(tzinfo=UTC)
    return row


def _migrate(connection: Connection) -> tuple[str, ...]:
    from gridshare.migrations import upgrade  # alembic loads only when a store starts

    return upgrade(connection)


def _dialect_insert(conn: Any, table: Table) -> Any:
    """The dialect's own INSERT (it has ``on_conflict_do_*``): SQLite and PostgreSQL."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise StoreError(f"no upsert for the {conn.dialect.name} dialect")


def _insert_ignore(conn: Any, table: Table) -> Any:
    return _dialect_insert(conn, table).on_conflict_do_nothing()


@dataclasses.dataclass(frozen=True, slots=True)
class _DriverInsert:
    sql: str
    keys: tuple[str, ...]
    """The rows' keys in the statement's parameter order."""
    processors: tuple[Any, ...]
    """Each column type's bind processor for the dialect (None: the value as it is)."""


def _driver_rows(conn: Any, table: Table, rows: Sequence[Mapping[str, Any]],
                 cache: dict[tuple[str, tuple[str, ...]], _DriverInsert]
                 ) -> tuple[str, list[tuple[Any, ...]]] | None:
    """``INSERT ... ON CONFLICT DO NOTHING`` and its parameters, ready for the driver's
    executemany, when every row has the first row's keys (else None: the caller takes
    SQLAlchemy's path). Why: SQLAlchemy builds the parameters row by row, 5.5 µs a row of
    telemetry on the event loop; this 2.0 µs. The values are the same: the columns' own
    bind processors (test_insert_now_stores_what_sqlalchemy_would). SQLite only
    (positional ``?``); PostgreSQL takes the general path."""
    if conn.dialect.name != "sqlite":
        return None
    first = tuple(rows[0])
    plan = cache.get((table.name, first))
    if plan is None:
        compiled = _insert_ignore(conn, table).compile(dialect=conn.dialect,
                                                         column_keys=list(first))
        order = tuple(compiled.positiontup or ())
        if not compiled.positional or sorted(order) != sorted(first):
            return None  # a default or expression adds parameters: not for this path
        plan = cache[(table.name, first)] = _DriverInsert(
            str(compiled), order,
            tuple(table.c[k].type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
                  for k in order))
    width = len(first)
    if any(len(row) != width for row in rows):
        return None
    try:  # column by column: a value the whole batch shares (received_at) is bound once
        columns = [[row[k] for row in rows] for k in plan.keys]
    except KeyError:
        return None
    for i, process in enumerate(plan.processors):
        if process is not None:
            values = columns[i]
            shared = values[0]
            columns[i] = [process(shared)] * len(values) \
                if all(v is shared for v in values) else list(map(process, values))
    params = list(zip(*columns, strict=True))
    return plan.sql, params


def _sqlite_pragmas(dbapi_connection: Any, synchronous: SqliteSync = "FULL") -> None:
    """Per connection. synchronous=FULL fsyncs the log at each commit (an acknowledged
    row survives power loss; batching keeps it to one fsync per batch); NORMAL would
    survive a killed process only. busy_timeout: a second writer (the CLI, another
    connection of the pool, another process) waits for the lock instead of failing at
    once. The journal mode belongs to the file: ``_sqlite_to_wal`` sets it once."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    cursor.close()


async def _sqlite_to_wal(engine: AsyncEngine, within_s: float = 10.0) -> None:
    """Put the database file in WAL mode: readers (the API, the CLI) do not block the
    writer, and a commit is one append to the log. The switch needs the file to itself
    and SQLite answers "database is locked" at once, without its busy handler, while
    another process holds it (two services starting on one new file): retried here,
    without blocking the loop, until ``within_s``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        try:
            async with engine.connect() as conn:
                mode = (await conn.exec_driver_sql("PRAGMA journal_mode=WAL")).scalar()
            if str(mode).lower() == "wal":
                return
            raise StoreError(f"SQLite refused WAL mode (journal_mode is {mode})")
        except OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.05)


# Billing's table (billing_store.py) and the NATS bus's (adapters/nats/tables.py) live
# with their owners but belong to this metadata, so that the migrations' schema comparison
# always sees them.
from gridshare import billing_store as _billing_store  # noqa: E402, F401
from gridshare.adapters.nats import tables as _bus_tables  # noqa: E402, F401
