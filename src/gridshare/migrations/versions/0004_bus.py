"""bus_readings: readings applied exactly once from the NATS JetStream bus.

One row per (site, kind, source, event time): the unique key makes a redelivered message
(a controller died before acknowledging it) a no-op instead of a second row. See
``gridshare.adapters.nats.recorder``.

Revision ID: 0004_bus
Revises: 0003_intervals
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_bus"
down_revision = "0003_intervals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bus_readings",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("source", sa.String(160), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("stream_seq", sa.BigInteger, nullable=False),
        sa.Column("controller", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_bus_readings_key", "bus_readings", ["site", "kind", "source", "at"],
                    unique=True)


def downgrade() -> None:
    op.drop_index("ux_bus_readings_key", table_name="bus_readings")
    op.drop_table("bus_readings")
