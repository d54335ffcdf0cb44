"""The Alembic migrations build exactly the schema the models declare, on every backend under test; a start on a
current schema knows it without loading Alembic, and a start on an older one migrates it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from qaflow_mail.config import DatabaseSettings, Settings
from qaflow_mail.db.engine import create_engine
from qaflow_mail.db.migrate import alembic_config
from qaflow_mail.db.models import Base
from qaflow_mail.db.schema_version import SCHEMA_HEAD, schema_is_current
from qaflow_mail.db.search_index import include_name
from qaflow_mail.server.app import prepare_database
from tests.fresh_interpreter import MIGRATION_STACK, packages_loaded_by


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


def test_the_schema_head_named_in_code_is_alembics_own(settings: Settings) -> None:
    assert ScriptDirectory.from_config(alembic_config(settings.database.url)).get_current_head() == SCHEMA_HEAD


PREPARE = """
import asyncio, sys
from qaflow_mail.config import DatabaseSettings, Settings
from qaflow_mail.server.app import prepare_database
from tests.fresh_interpreter import MIGRATION_STACK, packages_loaded_by
asyncio.run(prepare_database(Settings(database=DatabaseSettings(url=sys.argv[1]))))
"""


def test_a_start_on_a_current_schema_does_not_load_alembic(settings: Settings) -> None:
    assert MIGRATION_STACK.isdisjoint(packages_loaded_by(PREPARE, settings.database.url))


async def test_a_start_on_an_older_schema_migrates_it(tmp_path: Path) -> None:
    from qaflow_mail.db.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(upgrade, url, "0009")
    engine = create_engine(url)
    try:
        assert not await schema_is_current(engine)
        await prepare_database(Settings(database=DatabaseSettings(url=url)))
        assert await schema_is_current(engine)
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar() == SCHEMA_HEAD
    finally:
        await engine.dispose()
