"""people in the loop: reply notification preference and unsubscribe token generation per user; join and leave
confirmations; category moderators; held posts

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import qaflow_mail.db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WHEN = qaflow_mail.db.models.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("notify_replies", sa.String(length=16), server_default="direct", nullable=False))
        batch.add_column(sa.Column("token_generation", sa.Integer(), server_default=sa.text("0"), nullable=False))
    op.create_table(
        "confirmation_requests",
        sa.Column("id", ID, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("category_id", ID, nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("confirmed_at", WHEN, nullable=True),
        sa.ForeignKeyConstraint(["category_id"], ["categories.id"], ondelete="CASCADE",
                                name=op.f("fk_confirmation_requests_category_id_categories")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_confirmation_requests")),
    )
    op.create_index("ix_confirmation_requests_email_created", "confirmation_requests", ["email", "created_at"])
    op.create_table(
        "category_moderators",
        sa.Column("id", ID, nullable=False),
        sa.Column("category_id", ID, nullable=False),
        sa.Column("user_id", ID, nullable=False),
        sa.ForeignKeyConstraint(["category_id"], ["categories.id"], ondelete="CASCADE",
                                name=op.f("fk_category_moderators_category_id_categories")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name=op.f("fk_category_moderators_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_category_moderators")),
        sa.UniqueConstraint("category_id", "user_id", name=op.f("uq_category_moderators_category_id_user_id")),
    )
    op.create_index(op.f("ix_category_moderators_user_id"), "category_moderators", ["user_id"])
    op.create_table(
        "held_posts",
        sa.Column("id", ID, nullable=False),
        sa.Column("post_id", ID, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("held_at", WHEN, nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("decided_by", ID, nullable=True),
        sa.Column("decided_at", WHEN, nullable=True),
        sa.Column("rejection_reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["post_id"], ["posts.id"], ondelete="CASCADE", name=op.f("fk_held_posts_post_id_posts")),
        sa.ForeignKeyConstraint(["decided_by"], ["users.id"], ondelete="SET NULL",
                                name=op.f("fk_held_posts_decided_by_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_held_posts")),
        sa.UniqueConstraint("post_id", name=op.f("uq_held_posts_post_id")),
    )
    op.create_index(op.f("ix_held_posts_decision"), "held_posts", ["decision"])


def downgrade() -> None:
    op.drop_index(op.f("ix_held_posts_decision"), table_name="held_posts")
    op.drop_table("held_posts")
    op.drop_index(op.f("ix_category_moderators_user_id"), table_name="category_moderators")
    op.drop_table("category_moderators")
    op.drop_index("ix_confirmation_requests_email_created", table_name="confirmation_requests")
    op.drop_table("confirmation_requests")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("token_generation")
        batch.drop_column("notify_replies")
