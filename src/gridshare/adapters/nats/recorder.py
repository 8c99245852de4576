"""Exactly-once readings from JetStream into the database.

JetStream delivers at least once: a message not acknowledged (the controller died between
receiving and acknowledging it) is delivered again, to the same durable consumer, in
whichever process resumes it. Exactly-once *effect* comes from two rules:

1. acknowledge only after the effect is committed: a batch of readings is inserted in one
   transaction, and its messages are acknowledged after the commit (a crash before the
   commit leaves them unacknowledged: delivered again; a crash after the commit but
   before the acknowledgement also delivers them again, which rule 2 absorbs);
2. the effect is idempotent by the reading's key: ``bus_readings`` has one row per
   (site, kind, source, event time), inserted with ``ON CONFLICT DO NOTHING``, so a
   redelivered reading (or one a gateway sent twice) is never a second row.

No offsets table: the key is the reading's own identity (prefer keys to offsets: a
reading re-sent by a meter with a new stream sequence is still the same reading).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gridshare.adapters.nats import codec
from gridshare.adapters.nats.bus import NatsBus, NatsSubscription
from gridshare.adapters.nats.tables import bus_readings
from gridshare.store import metadata, normalise_url
from gridshare.tasks import cancel_and_wait

log = logging.getLogger(__name__)



def _sqlite_busy(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class ReadingRecorder:
    """Consumes a site's readings (durable consumer ``<site>_recorder``) into
    ``bus_readings``, committing before acknowledging."""

    def __init__(self, bus: NatsBus, db_url: str, *, controller_id: str,
                 batch: int = 500) -> None:
        self.bus = bus
        self.url = normalise_url(db_url)
        self.controller_id = controller_id
        self.batch = batch
        self._engine: AsyncEngine | None = None
        self._sub: NatsSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self.recorded = 0
        """Readings inserted (new rows)."""
        self.duplicates = 0
        """Readings delivered again (or sent twice) whose row already existed."""
        self.failed_batches = 0
        self.on_commit: list[Any] = []
        """Callables ``(inserted rows: list[dict])`` after each commit (benchmarks)."""

    async def start(self) -> None:
        url = make_url(self.url)
        self._engine = create_async_engine(self.url)
        if url.get_backend_name() == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _sqlite_busy)
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all, tables=[bus_readings])
        self._sub = self.bus.subscribe("recorder", only="readings")
        self._task = asyncio.create_task(self._run(), name="gridshare-nats-recorder")

    async def stop(self) -> None:
        """Stop consuming. A batch not yet committed stays unacknowledged: redelivered."""
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            await cancel_and_wait([self._task], swallow_errors=True)
            self._task = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def _run(self) -> None:
        assert self._sub is not None
        backoff = 0.2
        while True:
            try:
                batch = await self._sub.fetch_batch(self.batch)
            except StopAsyncIteration:
                return
            while True:
                try:
                    await self._commit(batch)
                    backoff = 0.2
                    break
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # Not acknowledged: retried here, or redelivered to whoever resumes.
                    self.failed_batches += 1
                    log.exception("recorder: a batch of %d readings could not be written; "
                                  "retrying in %.1f s", len(batch), backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
            for msg, _ in batch:
                with contextlib.suppress(Exception):
                    await msg.ack()

    async def _commit(self, batch: list[tuple[Any, Any]]) -> None:
        assert self._engine is not None
        now = datetime.now(UTC)
        rows: dict[tuple[str, str, datetime], dict[str, Any]] = {}
        for msg, item in batch:
            source = codec.reading_source(item)
            if source is None:
                continue
            kind = codec.snake(type(item).__name__)
            rows.setdefault((kind, source, item.at), {
                "site": self.bus.site, "kind": kind, "source": source,
                "at": item.at.astimezone(UTC), "payload": msg.data.decode(),
                "stream_seq": int(msg.metadata.sequence.stream),
                "controller": self.controller_id, "recorded_at": now})
        if not rows:
            return
        values = list(rows.values())
        dialect = self._engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(bus_readings).on_conflict_do_nothing(
            index_elements=["site", "kind", "source", "at"])
        async with self._engine.begin() as conn:
            result = await conn.execute(stmt, values)
        # SQLite reports the rows actually inserted; a driver that cannot (-1) counts all.
        inserted = result.rowcount if result.rowcount is not None and result.rowcount >= 0 \
            else len(values)
        self.recorded += inserted
        self.duplicates += len(batch) - inserted
        for listener in self.on_commit:
            listener(values)

    async def count(self) -> int:
        """Rows in ``bus_readings`` for this site (tests)."""
        from sqlalchemy import func, select

        assert self._engine is not None
        async with self._engine.connect() as conn:
            result = await conn.execute(select(func.count()).select_from(bus_readings)
                                        .where(bus_readings.c.site == self.bus.site))
            return int(result.scalar_one())
