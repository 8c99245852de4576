"""export_register: ``energy_export_wh`` on ``meter_readings`` and ``ami_readings``.

The export register (energy fed back: V2G discharge, a battery or PV), in Wh, next to the
import register ``energy_wh``, so that ``gridshare bill`` can bill exported energy. Null:
the meter did not send one (unknown, never 0), as in every row written before it existed.

Revision ID: 0006_export_register
Revises: 0005_cost_exact
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_export_register"
down_revision = "0005_cost_exact"
branch_labels = None
depends_on = None

TABLES = ("meter_readings", "ami_readings")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in TABLES:
        if "energy_export_wh" in {c["name"] for c in inspector.get_columns(table)}:
            continue  # a pre-migration database made by create_all of today's models
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("energy_export_wh", sa.Float(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("energy_export_wh")
