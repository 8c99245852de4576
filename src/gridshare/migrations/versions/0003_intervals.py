"""intervals: the billing_intervals table (``gridshare bill`` writes its intervals there).

A migration is a frozen snapshot: it never imports the models, which keep changing.
``gridshare bill`` creates the table itself on a database that has not been migrated this
far; upgrading such a database adopts the table instead of failing on it.

Revision ID: 0003_intervals
Revises: 0002_aggregates
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_intervals"
down_revision: str | None = "0002_aggregates"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("billing_intervals"):
        return
    op.create_table("billing_intervals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("by", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=160), nullable=False),
        sa.Column("interval_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("interval_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("energy_mwh", sa.BigInteger(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("tariff_period", sa.String(length=64), nullable=True),
        sa.Column("flags", sa.String(length=200), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ux_billing_by_subject_start", "billing_intervals",
                    ["by", "subject", "interval_start"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_billing_by_subject_start", table_name="billing_intervals")
    op.drop_table("billing_intervals")
