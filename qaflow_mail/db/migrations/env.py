"""Alembic environment: runs migrations over the project's async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from qaflow_mail.db.engine import create_engine
from qaflow_mail.db.models import Base
from qaflow_mail.db.search_index import include_name

config = context.config
MIGRATION_LOCK_KEY = 0x51AF10  # any constant shared by every node
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    # include_name: the full-text search objects are made by migrations, not described by the models.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True, include_name=include_name)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several gateway nodes may start together on one database: one migrates, the others wait and then
            # find the schema current. Released at commit.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _run_async() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True, include_name=include_name)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    asyncio.run(_run_async())
