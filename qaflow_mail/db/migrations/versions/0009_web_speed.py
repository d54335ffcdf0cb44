"""the web, faster: FTS5 prefix indexes (the search table rebuilt), a partial index of posts not published

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qaflow_mail.db import search_index

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Few rows: the category list's freshness counts them on every list page, moderation queues list them.
    op.create_index("ix_posts_unpublished", "posts", ["topic_id"], unique=False,
                    sqlite_where=sa.text("status <> 'published'"), postgresql_where=sa.text("status <> 'published'"))
    if op.get_bind().dialect.name == "sqlite":
        for statement in (*search_index.SQLITE_DROP, *search_index.SQLITE_CREATE_WITH_PREFIXES):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in (*search_index.SQLITE_DROP, *search_index.SQLITE_CREATE):
            op.execute(statement)
    op.drop_index("ix_posts_unpublished", table_name="posts")
