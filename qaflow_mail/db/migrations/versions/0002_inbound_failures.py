"""inbound failures: messages the pipeline failed on, counted towards the shunt

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import qaflow_mail.db.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("first_failed_at", qaflow_mail.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", qaflow_mail.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inbound_failures")),
        sa.UniqueConstraint("sha256", name=op.f("uq_inbound_failures_sha256")),
    )


def downgrade() -> None:
    op.drop_table("inbound_failures")
