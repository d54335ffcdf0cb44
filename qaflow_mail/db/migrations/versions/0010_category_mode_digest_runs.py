"""a category's default join mode; digest_runs: the last digest pass and the digests queued, per period

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("categories") as batch:
        batch.add_column(sa.Column("default_mode", sa.String(length=16), nullable=True))
    op.create_table(
        "digest_runs",
        sa.Column("period", sa.String(length=16), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_digests", sa.Integer(), nullable=False),
        sa.Column("digests_total", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_digest_runs")),
    )


def downgrade() -> None:
    op.drop_table("digest_runs")
    with op.batch_alter_table("categories") as batch:
        batch.drop_column("default_mode")
