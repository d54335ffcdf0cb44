"""The SQLite engine's adapter: each statement is one call on the database thread, and behaves as the stock one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from qaflow_mail.db.engine import create_engine

metadata = MetaData()
things = Table("things", metadata, Column("id", Integer, primary_key=True), Column("name", String, unique=True))


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the calls handed to aiosqlite's database thread."""
    seen: list[str] = []
    original = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return seen


async def test_a_select_is_one_trip_to_the_database_thread(engine: AsyncEngine, trips: list[str]) -> None:
    async with engine.connect() as connection:
        await connection.execute(select(things.c.id))  # the pool's first checkout of this loop may do more
        trips.clear()
        result = await connection.execute(select(things.c.id, things.c.name).where(things.c.name == "none"))
        assert result.all() == []
        assert trips == ["_execute_on_database_thread"]


async def test_rows_counts_and_ids_come_back_as_from_sqlite(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        first = await connection.execute(insert(things).values(name="a"))
        assert first.inserted_primary_key == (1,)
        await connection.execute(insert(things), [{"name": "b"}, {"name": "c"}, {"name": "d"}])
        renamed = await connection.execute(update(things).where(things.c.id > 2).values(name=things.c.name + "!"))
        assert renamed.rowcount == 2
        returned = await connection.execute(insert(things).values(name="e").returning(things.c.id))
        assert returned.scalar_one() == 5
    async with engine.connect() as connection:
        rows = (await connection.execute(select(things.c.name).order_by(things.c.id))).scalars().all()
        assert rows == ["a", "b", "c!", "d!", "e"]
        assert (await connection.execute(select(things.c.name).where(things.c.id == 1))).fetchone() == ("a",)
        streamed = await connection.stream(select(things.c.id).order_by(things.c.id))
        assert [row.id async for row in streamed] == [1, 2, 3, 4, 5]


async def test_a_constraint_violation_is_sqlalchemys_integrity_error(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(insert(things).values(name="twice"))
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(insert(things).values(name="twice"))
    async with engine.connect() as connection:
        assert (await connection.execute(select(things.c.name))).scalars().all() == ["twice"]
