"""The table of the NATS bus, attached to :data:`gridshare.store.metadata` (migration
``0004_bus``). Its own module, importing only SQLAlchemy and the store, so that migration
tooling can register it without loading nats-py."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, String, Table, Text

from gridshare.store import metadata

bus_readings = Table(
    "bus_readings", metadata,
    # One reading that came over the JetStream bus, applied exactly once: its identity is
    # (site, kind, source, event time), so a redelivered message is never a second row.
    Column("id", Integer, primary_key=True),
    Column("site", String(64), nullable=False),
    Column("kind", String(40), nullable=False),  # meter_sample, group_meter_reading, ...
    Column("source", String(160), nullable=False),  # meter, group or charger/connector
    Column("at", DateTime(timezone=True), nullable=False),  # event time
    Column("payload", Text, nullable=False),  # the event's JSON, as on the bus
    Column("stream_seq", BigInteger, nullable=False),  # JetStream sequence (audit, not a key)
    Column("controller", String(64), nullable=False),  # the controller that applied it
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Index("ux_bus_readings_key", "site", "kind", "source", "at", unique=True),
)
