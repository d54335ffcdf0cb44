"""Shared fixtures: a real database (SQLite file; PostgreSQL when QAFLOW_TEST_POSTGRES_URL is set), settings, and
the real gateway listening on a free loopback port."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text

from qaflow_mail.config import (
    DatabaseSettings,
    HttpSettings,
    OutboundSettings,
    Settings,
    SiteSettings,
    SmtpSettings,
    TokensSettings,
)
from qaflow_mail.db import queries
from qaflow_mail.db.migrate import upgrade
from qaflow_mail.db.models import Base
from tests.clock import Clock

if TYPE_CHECKING:
    from qaflow_mail.server.app import Running

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPORA = REPO_ROOT.parent / "shared" / "corpora"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
POSTGRES_URL_ENV = "QAFLOW_TEST_POSTGRES_URL"


def async_postgres_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    return url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    raw = os.environ.get(POSTGRES_URL_ENV)
    if not raw:
        pytest.skip(f"{POSTGRES_URL_ENV} is not set: PostgreSQL runs skipped")
    url = async_postgres_url(raw)
    _reset_postgres_async(url)  # start from an empty schema so the migrations themselves are tested
    upgrade(url)
    return url


def _reset_postgres_async(url: str) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    async def reset() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
        await engine.dispose()

    asyncio.run(reset())


def _truncate_postgres(url: str) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)

    async def truncate() -> None:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        await engine.dispose()

    asyncio.run(truncate())


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    """An empty, migrated database: a copied SQLite file, or the PostgreSQL test database truncated."""
    if request.param == "sqlite":
        path = tmp_path / "qaflow.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
    else:
        url = request.getfixturevalue("postgres_url")
        _truncate_postgres(url)
        yield url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        site=SiteSettings(name="QAFlow Test", domain="forum.test", base_url="http://forum.test",
                          data_dir=str(tmp_path / "var")),
        database=DatabaseSettings(url=database_url),
        smtp=SmtpSettings(host="127.0.0.1", port=0, max_message_size=200_000),
        outbound=OutboundSettings(outbox_dir=str(tmp_path / "outbox")),
        http=HttpSettings(port=0),
        tokens=TokensSettings(secret="test-secret-not-for-production"),
    )


@pytest.fixture
def clock() -> Clock:
    """The running gateway's clock (real time until a test sets `clock.now`)."""
    return Clock()


@pytest.fixture
async def gateway(settings: Settings, clock: Clock) -> AsyncIterator[object]:
    from qaflow_mail.server.app import running

    async with running(settings, clock=clock) as run:
        yield run


async def open_general(run: Running, *, member: str, display_name: str = "") -> Running:
    """The running gateway with the category "general", open to strangers, and `member` registered."""
    return await _with_general(run, member=member, display_name=display_name, allow_strangers=True)


async def members_only_general(run: Running, *, member: str, display_name: str = "") -> Running:
    """The running gateway with the category "general", for members only, and `member` registered."""
    return await _with_general(run, member=member, display_name=display_name, allow_strangers=False)


async def _with_general(run: Running, *, member: str, display_name: str, allow_strangers: bool) -> Running:
    async with run.deps.sessions() as session, session.begin():
        await queries.add_category(session, slug="general", name="General", allow_strangers=allow_strangers)
        await queries.add_user(session, email=member, display_name=display_name, now=datetime.now(UTC))
    return run
