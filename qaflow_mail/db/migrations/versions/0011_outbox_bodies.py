"""outbox_bodies: a message body shared by many outbox rows (a digest's), stored once; outbox.body_id

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outbox_bodies",
        sa.Column("id", ID, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_bodies")),
        sqlite_autoincrement=True,  # ids are never reused: a sender keeps the bodies it has read by id
    )
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("body_id", ID, nullable=True))
        batch.create_foreign_key(op.f("fk_outbox_body_id_outbox_bodies"), "outbox_bodies", ["body_id"], ["id"])
        batch.create_index(op.f("ix_outbox_body_id"), ["body_id"])


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index(op.f("ix_outbox_body_id"))
        batch.drop_constraint(op.f("fk_outbox_body_id_outbox_bodies"), type_="foreignkey")
        batch.drop_column("body_id")
    op.drop_table("outbox_bodies")
