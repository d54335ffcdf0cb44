"""The Alembic migrations build exactly the schema the models declare, on every backend under test."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine
from qaflow_mail.db.models import Base
from qaflow_mail.db.search_index import include_name


async def test_migrated_schema_matches_the_models(settings: Settings) -> None:
    def diff(connection: Connection) -> list[Any]:
        # The full-text index (FTS5 tables, a GIN expression index) is made by a migration, not by the models.
        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_name": include_name})
        return list(compare_metadata(context, Base.metadata))

    engine = create_engine(settings.database.url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []
