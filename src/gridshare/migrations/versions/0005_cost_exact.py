"""cost_exact: billing_intervals.cost_decimal, each interval's exact cost as decimal text.

``cost`` (a float) stays, for SQL sums and existing readers; ``cost_decimal`` holds the
cost exactly as ``gridshare bill`` printed it (``"0.055"``), so the stored lines add up to
the totals to the last digit. Text, not Numeric: SQLite stores Numeric as a float.
``gridshare bill`` adds the column itself on a database not yet migrated this far;
upgrading such a database adopts it.

Revision ID: 0005_cost_exact
Revises: 0004_bus
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_cost_exact"
down_revision = "0004_bus"
branch_labels = None
depends_on = None


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("billing_intervals")}
    if "cost_decimal" in columns:
        return
    with op.batch_alter_table("billing_intervals") as batch:
        batch.add_column(sa.Column("cost_decimal", sa.String(length=48), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("billing_intervals") as batch:
        batch.drop_column("cost_decimal")
