"""Another client holding the lock every write of a message needs, as a stuck transaction would."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.engine import make_url


@contextlib.asynccontextmanager
async def database_held(url: str) -> AsyncIterator[None]:
    """SQLite: an exclusive transaction (readers of the WAL go on); PostgreSQL: the tables a post is written to
    locked outright."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        holder = sqlite3.connect(str(parsed.database), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    conn = await asyncpg.connect(parsed.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("LOCK TABLE inbound_messages, posts IN ACCESS EXCLUSIVE MODE")
        yield
        await transaction.rollback()
    finally:
        await conn.close()
