"""Whether the database's schema is the newest, read without Alembic: a serving process that finds it current (the
usual start, after `db upgrade`) never loads Alembic and the Mako and Pygments it brings (11 MB resident)."""

from __future__ import annotations

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

SCHEMA_HEAD = "0011"  # the newest migration's revision (a test holds it to Alembic's own head)


async def schema_is_current(engine: AsyncEngine) -> bool:
    async with engine.connect() as connection:
        return await connection.run_sync(_at_head)


def _at_head(connection: Connection) -> bool:
    if not inspect(connection).has_table("alembic_version"):
        return False
    return list(connection.execute(text("SELECT version_num FROM alembic_version")).scalars()) == [SCHEMA_HEAD]
