"""demand_windows: closed tumbling-window demand per feeder, substation and region.

Revision ID: 0002_aggregates
Revises: 0001_initial

Matches ``gridshare.store.demand_windows`` column for column (the telemetry ingest writes
it; docs/telemetry.md defines each figure).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_aggregates"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "demand_windows",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("demand_kw", sa.Float(), nullable=False),
        sa.Column("max_meter_kw", sa.Float(), nullable=False),
        sa.Column("meters_reporting", sa.Integer(), nullable=False),
        sa.Column("meters_expected", sa.Integer(), nullable=False),
        sa.Column("readings", sa.Integer(), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ux_demand_level_key_start", "demand_windows",
                    ["level", "key", "window_start"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_demand_level_key_start", table_name="demand_windows")
    op.drop_table("demand_windows")
