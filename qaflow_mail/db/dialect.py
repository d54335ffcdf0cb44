"""The one place that picks a dialect's INSERT, for ON CONFLICT ... DO NOTHING on SQLite and PostgreSQL alike."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def insert(session: AsyncSession, table: Any) -> Any:
    """`INSERT INTO table` in the session's dialect; chain `.on_conflict_do_nothing(index_elements=[...])`."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
