"""posts.status (published, held, rejected); categories.private and categories.moderated

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("categories") as batch:
        batch.add_column(sa.Column("private", sa.Boolean(), server_default=sa.text("false"), nullable=False))
        batch.add_column(sa.Column("moderated", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    with op.batch_alter_table("posts") as batch:
        batch.add_column(sa.Column("status", sa.String(length=16), server_default="published", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("posts") as batch:
        batch.drop_column("status")
    with op.batch_alter_table("categories") as batch:
        batch.drop_column("moderated")
        batch.drop_column("private")
