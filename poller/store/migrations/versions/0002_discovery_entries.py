"""discovery entries: which bulk or search found a watch, and which have been listed

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 12:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "discovery_entries",
        sa.Column("entry", sa.String(length=512), nullable=False),
        sa.Column("listed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("entry", name=op.f("pk_discovery_entries")),
    )
    with op.batch_alter_table("watches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("discovered_by", sa.String(length=512), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("watches", schema=None) as batch_op:
        batch_op.drop_column("discovered_by")
    op.drop_table("discovery_entries")
