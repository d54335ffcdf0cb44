"""the web: topic view counts, latest-topics and post-author indexes, full-text search of published posts

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qaflow_mail.db import search_index

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("topics") as batch:
        batch.add_column(sa.Column("views", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.create_index("ix_topics_last_post", ["last_post_at"], unique=False)
    op.create_index("ix_posts_author_id", "posts", ["author_id"], unique=False)
    dialect = op.get_bind().dialect.name
    statements = search_index.SQLITE_CREATE if dialect == "sqlite" else search_index.POSTGRES_CREATE
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in search_index.SQLITE_DROP if dialect == "sqlite" else search_index.POSTGRES_DROP:
        op.execute(statement)
    op.drop_index("ix_posts_author_id", table_name="posts")
    with op.batch_alter_table("topics") as batch:
        batch.drop_index("ix_topics_last_post")
        batch.drop_column("views")
