"""billing_direction: ``billing_intervals.direction`` (``import`` or ``export``) in its key.

``gridshare bill`` prints an export line beside the import line of an interval when the
meter has an export register (0006); with the key ``(by, subject, interval_start)`` the
export line could not be stored beside the import one. Rows written before are import
lines: the column's server default says so. The unique index becomes
``(by, subject, direction, interval_start)``.

Revision ID: 0007_billing_direction
Revises: 0006_export_register
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_billing_direction"
down_revision = "0006_export_register"
branch_labels = None
depends_on = None

OLD_INDEX = "ux_billing_by_subject_start"
NEW_INDEX = "ux_billing_by_subject_direction_start"


def upgrade() -> None:
    with op.batch_alter_table("billing_intervals") as batch:
        batch.add_column(sa.Column("direction", sa.String(length=8), nullable=False,
                                   server_default="import"))
        batch.drop_index(OLD_INDEX)
        batch.create_index(NEW_INDEX, ["by", "subject", "direction", "interval_start"],
                           unique=True)


def downgrade() -> None:
    """Export rows have no place in the old key: they are deleted first."""
    op.execute(sa.text("DELETE FROM billing_intervals WHERE direction <> 'import'"))
    with op.batch_alter_table("billing_intervals") as batch:
        batch.drop_index(NEW_INDEX)
        batch.create_index(OLD_INDEX, ["by", "subject", "interval_start"], unique=True)
        batch.drop_column("direction")
