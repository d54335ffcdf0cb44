"""installation: the one-row table holding the Message-ID salt of this database

Revision ID: 0008
Revises: 0007

A new database gets a random salt. A database that already has posts keeps the empty salt: its posts keep the
Message-IDs their notifications were sent with, so replies to them and clients' threads stay as they are.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    installation = op.create_table(
        "installation",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("message_id_salt", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_installation")),
    )
    has_posts = op.get_bind().execute(sa.text("SELECT 1 FROM posts LIMIT 1")).first() is not None
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # how UTCDateTime stores it there
    op.bulk_insert(installation, [
        {"id": 1, "message_id_salt": "" if has_posts else secrets.token_hex(8), "created_at": now},
    ])


def downgrade() -> None:
    op.drop_table("installation")
