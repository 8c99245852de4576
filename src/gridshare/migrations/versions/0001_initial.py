"""initial: every table of store.py (events, sessions, meter readings, setpoint commands,
alarms, DR events, AMI readings, control decisions).

A migration is a frozen snapshot: it never imports the models, which keep changing.

Revision ID: 0001_initial
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table("alarms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("group_id", sa.String(length=64), nullable=True),
        sa.Column("phase", sa.String(length=4), nullable=True),
        sa.Column("load", sa.Float(), nullable=True),
        sa.Column("limit_value", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("cleared", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_alarms_at", "alarms", ["at"])
    op.create_table("ami_readings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("power_w", sa.Float(), nullable=False),
        sa.Column("energy_wh", sa.Float(), nullable=True),
        sa.Column("current_l1_a", sa.Float(), nullable=True),
        sa.Column("current_l2_a", sa.Float(), nullable=True),
        sa.Column("current_l3_a", sa.Float(), nullable=True),
        sa.Column("voltage_l1_v", sa.Float(), nullable=True),
        sa.Column("voltage_l2_v", sa.Float(), nullable=True),
        sa.Column("voltage_l3_v", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ux_ami_meter_ts", "ami_readings", ["meter_id", "ts"], unique=True)
    op.create_table("decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("held", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("offline", sa.Integer(), nullable=False),
        sa.Column("guarded", sa.Boolean(), nullable=False),
        sa.Column("compute_ms", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_decisions_at", "decisions", ["at"])
    op.create_table("dr_events",
        sa.Column("signal_id", sa.String(length=200), nullable=False),
        sa.Column("zone_id", sa.String(length=64), nullable=False),
        sa.Column("signal", sa.Text(), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("compliance", sa.Text(), nullable=True),
        sa.Column("baseline", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("signal_id")
    )
    op.create_table("events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("charger", sa.String(length=64), nullable=True),
        sa.Column("connector", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.String(length=64), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_charger", "events", ["charger", "at"])
    op.create_table("meter_readings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("charger", sa.String(length=64), nullable=True),
        sa.Column("connector", sa.Integer(), nullable=True),
        sa.Column("group_id", sa.String(length=64), nullable=True),
        sa.Column("transaction_id", sa.String(length=64), nullable=True),
        sa.Column("power_w", sa.Float(), nullable=True),
        sa.Column("current_l1_a", sa.Float(), nullable=True),
        sa.Column("current_l2_a", sa.Float(), nullable=True),
        sa.Column("current_l3_a", sa.Float(), nullable=True),
        sa.Column("voltage_v", sa.Float(), nullable=True),
        sa.Column("energy_wh", sa.Float(), nullable=True),
        sa.Column("soc_percent", sa.Float(), nullable=True),
        sa.Column("includes_chargers", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_meter_charger_at", "meter_readings", ["charger", "at"])
    op.create_index("ix_meter_group_at", "meter_readings", ["group_id", "at"])
    op.create_table("sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("charger", sa.String(length=64), nullable=False),
        sa.Column("connector", sa.Integer(), nullable=False),
        sa.Column("transaction_id", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id_tag", sa.String(length=64), nullable=True),
        sa.Column("meter_start_wh", sa.Float(), nullable=True),
        sa.Column("meter_stop_wh", sa.Float(), nullable=True),
        sa.Column("stop_reason", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_sessions_tx", "sessions", ["charger", "transaction_id"])
    op.create_table("setpoint_commands",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("charger", sa.String(length=64), nullable=False),
        sa.Column("connector", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("current_a", sa.Float(), nullable=False),
        sa.Column("previous_a", sa.Float(), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id")
    )
    op.create_index("ix_commands_charger_at", "setpoint_commands", ["charger", "at"])


def downgrade() -> None:
    # Dropping a table drops its indexes.
    for table in ("setpoint_commands", "sessions", "meter_readings", "events", "dr_events",
                  "decisions", "ami_readings", "alarms"):
        op.drop_table(table)
