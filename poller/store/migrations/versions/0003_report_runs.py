"""report runs: scheduled reports, one event per report and scheduled time

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 14:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    # a report's event is about no watch
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.alter_column("watch_id", existing_type=sa.Integer(), nullable=True)
    op.create_table(
        "report_runs",
        sa.Column("report", sa.String(length=512), nullable=False),
        sa.Column("scheduled_at", sa.Float(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name=op.f("fk_report_runs_event_id_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("report", "scheduled_at", name=op.f("pk_report_runs")),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("report_runs")
    op.execute(
        "DELETE FROM deliveries WHERE event_id IN (SELECT id FROM events WHERE watch_id IS NULL)"
    )
    op.execute("DELETE FROM events WHERE watch_id IS NULL")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.alter_column("watch_id", existing_type=sa.Integer(), nullable=False)
