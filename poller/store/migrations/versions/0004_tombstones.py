"""tombstones: the discovered jobs retention pruned, so that discovery never adds them again

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 15:45:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "tombstones",
        sa.Column("entry", sa.String(length=512), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("pruned_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("entry", "key", name=op.f("pk_tombstones")),
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table("tombstones")
