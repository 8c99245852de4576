"""Billing's side of the database: the readings a bill is computed from, and the
``billing_intervals`` table the computed intervals are written to.

Sources (docs/billing.md): ``meter`` reads ``ami_readings`` (utility and house meters),
``charger`` reads the charger rows of ``meter_readings`` (one register per connector,
summed per charger), ``session`` reads ``sessions`` and the session's rows of
``meter_readings``, with ``meter_start_wh`` and ``meter_stop_wh`` as readings at the
session's start and stop. Each reading carries the export register too
(``energy_export_wh``, migration 0006), read as null from a database not migrated that
far. For each id the readings in the range are read together with the
last one before it and the first one after it, so a boundary value is the same whatever
range it is read in (a bill split in two gives the same intervals). Ids are read in
chunks (``subjects`` first, then ``readings_of`` a chunk of them), so a month of thousands
of meters is never in memory at once.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    inspect,
    null,
    or_,
    select,
    tuple_,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from gridshare.core.billing import BillLine, Reading, decimal_text, wh_to_mwh
from gridshare.store import ami_readings, metadata, meter_readings, sessions

By = Literal["meter", "charger", "session"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)

billing_intervals = Table(
    "billing_intervals", metadata,
    # One computed billing interval (``gridshare bill``): computing a range again replaces
    # its rows, so the table holds the latest computation of each interval.
    Column("id", Integer, primary_key=True),
    Column("by", String(16), nullable=False),  # meter, charger or session
    Column("subject", String(160), nullable=False),  # meter id, charger id, CHARGER/TX
    Column("interval_start", DateTime(timezone=True), nullable=False),
    Column("interval_end", DateTime(timezone=True), nullable=False),
    Column("energy_mwh", BigInteger, nullable=False),  # exact: integer milliwatt-hours
    Column("cost", Float),  # None: no tariff; the float nearest cost_decimal (SQL sums)
    Column("tariff_period", String(64)),
    Column("flags", String(200), nullable=False),  # comma-separated, "" when none
    Column("computed_at", DateTime(timezone=True), nullable=False),
    Column("cost_decimal", String(48)),  # the exact cost as printed, "0.055" (0005)
    Column("direction", String(8), nullable=False,  # import or export (0007: last)
           server_default="import"),
    Index("ux_billing_by_subject_direction_start", "by", "subject", "direction",
          "interval_start", unique=True),
)


def to_us(at: datetime) -> int:
    """An instant as integer µs since the epoch (SQLite hands back naive UTC times)."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return (aware - EPOCH) // US


@functools.lru_cache(maxsize=1 << 16)
def from_us(us: int) -> datetime:
    """Cached: every id of a bill has the same interval boundaries."""
    return EPOCH + us * US



async def _around(conn: AsyncConnection, columns: Sequence[Any], keys: Sequence[Any],
                  ts: Any, start: datetime, end: datetime, where: Any) -> list[Any]:
    """``columns`` of the rows in ``[start, end]``, plus per key the last row before
    ``start`` and the first after ``end``."""
    rows = list(await conn.execute(select(*columns).where(where, ts >= start, ts <= end)))
    for agg, cond in ((func.max(ts), ts < start), (func.min(ts), ts > end)):
        edge = select(*keys, agg.label("edge")).where(where, cond).group_by(*keys).subquery()
        joined = select(*columns).join(edge, and_(
            *(k == edge.c[k.name] for k in keys), ts == edge.c.edge))
        rows.extend(await conn.execute(joined.where(where)))
    return rows


def _covers(readings: list[Reading], start: datetime, end: datetime) -> bool:
    """Whether an id's readings say anything about the range: one inside it, or one on
    each side (a gap across it). An id with readings only before it (a meter removed) or
    only after it (a meter installed later) is left out of the bill."""
    lo, hi = to_us(start), to_us(end)
    times = [r.ts_us for r in readings]
    return any(lo <= t <= hi for t in times) or (min(times) < lo and max(times) > hi)


def _reading(ts: datetime, energy_wh: float | None, power_w: float | None,
             export_wh: float | None = None) -> Reading:
    return Reading(to_us(ts), None if energy_wh is None else wh_to_mwh(energy_wh), power_w,
                   None if export_wh is None else wh_to_mwh(export_wh))


def _export_column(conn: Connection, table: Table) -> Any:
    """``table.energy_export_wh``, or a null in its place on a database from before
    0006 (a bill must not need a migrated database: it never creates reading tables).
    The table is inspected once per connection, not for every chunk of ids."""
    known: dict[str, bool] = conn.info.setdefault("gridshare_export_column", {})
    column = table.c.energy_export_wh
    if table.name not in known:
        names = {c["name"] for c in inspect(conn).get_columns(table.name)}
        known[table.name] = column.name in names
    return column if known[table.name] else null().label(column.name)


def _session_key(charger: str, transaction_id: str) -> str:
    return f"{charger}/{transaction_id}"


async def subjects(conn: AsyncConnection, by: By, start: datetime, end: datetime
                   ) -> list[str]:
    """The ids that may have readings about the range, sorted (those with none about it
    are dropped later, when their readings are read)."""
    if by == "meter":
        t = ami_readings
        query = select(t.c.meter_id).where(t.c.ts <= end).distinct()
    elif by == "charger":
        m = meter_readings
        query = select(m.c.charger).where(m.c.charger.is_not(None), m.c.at <= end).distinct()
    else:
        s, m = sessions, meter_readings
        found = list(await conn.execute(select(s.c.charger, s.c.transaction_id).where(
            s.c.started_at < end, or_(s.c.stopped_at.is_(None), s.c.stopped_at > start))))
        # Sessions known only from their meter values: a station that does not speak OCPP
        # sends its session_id with each value (docs/telemetry.md), and no start or stop.
        found += await conn.execute(select(m.c.charger, m.c.transaction_id).where(
            m.c.charger.is_not(None), m.c.transaction_id.is_not(None), m.c.at >= start,
            m.c.at < end, ~exists().where(s.c.charger == m.c.charger,
                                          s.c.transaction_id == m.c.transaction_id)
        ).distinct())
        return sorted({_session_key(c, tx) for c, tx in found})
    return sorted(str(v) for (v,) in await conn.execute(query))


async def readings_of(conn: AsyncConnection, by: By, ids: Sequence[str], start: datetime,
                      end: datetime) -> dict[str, list[list[Reading]]]:
    """Each id's registers (one for a meter or a session, one per connector for a
    charger) with their readings about the range; ids with none about it are left out."""
    if by == "meter":
        return {k: [v] for k, v in (await _meters(conn, ids, start, end)).items()}
    if by == "charger":
        # connector 0 is the charger's own meter (its whole supply): when it reports, it is
        # the charger's register alone; summing it with the connectors would count twice
        return {k: [v[0]] if 0 in v else list(v.values()) for k, v in
                (await _connectors(conn, ids, start, end)).items()}
    return {k: [v] for k, v in (await _sessions(conn, ids, start, end)).items()}


async def _meters(conn: AsyncConnection, ids: Sequence[str], start: datetime, end: datetime
                  ) -> dict[str, list[Reading]]:
    t = ami_readings
    out: dict[str, list[Reading]] = defaultdict(list)
    export = await conn.run_sync(_export_column, t)
    rows = await _around(conn, [t.c.meter_id, t.c.ts, t.c.energy_wh, t.c.power_w, export],
                         [t.c.meter_id], t.c.ts, start, end, t.c.meter_id.in_(list(ids)))
    for r in rows:
        out[r.meter_id].append(_reading(r.ts, r.energy_wh, r.power_w, r.energy_export_wh))
    return {k: v for k, v in out.items() if _covers(v, start, end)}


async def _connectors(conn: AsyncConnection, ids: Sequence[str], start: datetime,
                      end: datetime) -> dict[str, dict[int, list[Reading]]]:
    """Charger id -> connector -> readings (rows with no connector number count as 0,
    the charger's own meter)."""
    t = meter_readings
    out: dict[str, dict[int, list[Reading]]] = defaultdict(lambda: defaultdict(list))
    export = await conn.run_sync(_export_column, t)
    rows = await _around(conn, [t.c.charger, t.c.connector, t.c.at, t.c.energy_wh,
                                t.c.power_w, export], [t.c.charger, t.c.connector], t.c.at,
                         start, end, t.c.charger.in_(list(ids)))
    for r in rows:
        out[r.charger][r.connector or 0].append(
            _reading(r.at, r.energy_wh, r.power_w, r.energy_export_wh))
    kept = {k: {c: r for c, r in v.items() if _covers(r, start, end)} for k, v in out.items()}
    return {k: v for k, v in kept.items() if v}


async def _sessions(conn: AsyncConnection, ids: Sequence[str], start: datetime,
                    end: datetime) -> dict[str, list[Reading]]:
    """``CHARGER/TRANSACTION`` -> the session's readings: its start and stop registers
    first (they win over a meter value at the same instant), then its meter values.
    Charger ids hold no ``/``, so the key splits at its first one."""
    pairs = [tuple(k.split("/", 1)) for k in ids]
    s = sessions
    found = list(await conn.execute(select(s).where(
        tuple_(s.c.charger, s.c.transaction_id).in_(pairs))))
    out: dict[str, list[Reading]] = {}
    for row in found:
        readings = []
        if row.meter_start_wh is not None:
            readings.append(_reading(row.started_at, row.meter_start_wh, None))
        if row.meter_stop_wh is not None and row.stopped_at is not None:
            readings.append(_reading(row.stopped_at, row.meter_stop_wh, None))
        out[_session_key(row.charger, row.transaction_id)] = readings
    t = meter_readings
    export = await conn.run_sync(_export_column, t)
    query = select(t.c.charger, t.c.transaction_id, t.c.at, t.c.energy_wh, t.c.power_w,
                   export).where(tuple_(t.c.charger, t.c.transaction_id).in_(pairs))
    for r in await conn.execute(query):
        out.setdefault(_session_key(r.charger, r.transaction_id), []).append(
            _reading(r.at, r.energy_wh, r.power_w, r.energy_export_wh))
    return out


async def clear_intervals(conn: AsyncConnection, by: By, ids: Sequence[str],
                          start: datetime, end: datetime) -> None:
    """Delete the stored intervals of ``ids`` in ``[start, end)`` (before writing them
    again: a run replaces its range)."""
    t = billing_intervals
    for chunk in range(0, len(ids), 500):
        await conn.execute(delete(t).where(
            t.c.by == by, t.c.subject.in_(list(ids[chunk:chunk + 500])),
            t.c.interval_start >= start, t.c.interval_start < end))


async def insert_intervals(conn: AsyncConnection, by: By, lines: Sequence[BillLine],
                           computed_at: datetime, batch: int = 10_000) -> int:
    """Insert ``lines``, import and export (after ``clear_intervals`` of their range),
    ``batch`` rows per statement; how many."""
    for first in range(0, len(lines), batch):
        await conn.execute(insert(billing_intervals), [
            {"by": by, "subject": line.id, "interval_start": from_us(line.start_us),
             "interval_end": from_us(line.end_us), "energy_mwh": line.energy_mwh,
             "cost": None if line.cost is None else float(line.cost),
             "cost_decimal": None if line.cost is None else decimal_text(line.cost),
             "tariff_period": line.tariff_period, "direction": line.direction,
             "flags": ",".join(line.flags), "computed_at": computed_at}
            for line in lines[first:first + batch]])
    return len(lines)
