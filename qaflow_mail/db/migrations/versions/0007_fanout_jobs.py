"""fan-out jobs: a post's notifications and an announcement's broadcast are expanded after the 250, in batches

Revision ID: 0007
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import qaflow_mail.db.models

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = qaflow_mail.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "fanout_jobs",
        sa.Column("id", ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target_id", sa.BigInteger(), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("handed", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", WHEN, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fanout_jobs")),
        sa.UniqueConstraint("kind", "target_id", name=op.f("uq_fanout_jobs_kind_target_id")),
    )
    op.create_index("ix_fanout_jobs_finished_claimed", "fanout_jobs", ["finished_at", "claimed_until"])


def downgrade() -> None:
    op.drop_index("ix_fanout_jobs_finished_claimed", table_name="fanout_jobs")
    op.drop_table("fanout_jobs")
