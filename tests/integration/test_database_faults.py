"""A 250 is durable, and a database that hangs gets a 451 within [database] statement_timeout, on both backends;
the gateway recovers by itself once the database answers again."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
from sqlalchemy import select, text

from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine_for
from qaflow_mail.db.models import InboundFailure, Post
from qaflow_mail.server.app import Running
from tests.conftest import open_general
from tests.database_hold import database_held
from tests.smtp_client import make_mail, send

GENERAL = "general@forum.test"
ALICE = "alice@example.org"
STATEMENT_TIMEOUT = 1.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings, database=dataclasses.replace(settings.database, statement_timeout=STATEMENT_TIMEOUT)
    )


@pytest.fixture
async def forum(gateway: Running) -> Running:
    return await open_general(gateway, member=ALICE)


async def test_a_hung_database_answers_451_in_bounded_time_and_recovers(forum: Running, settings: Settings) -> None:
    message = make_mail(sender=ALICE, to=GENERAL, subject="While the database hangs", body="Is anyone there?")
    async with database_held(settings.database.url):
        started = time.monotonic()
        conv = await asyncio.wait_for(send(forum.smtp_port, message, mail_from=ALICE, rcpt_tos=[GENERAL]), 30)
        waited = time.monotonic() - started
    assert conv.data is not None and conv.data[0] == 451, conv.data
    assert conv.data[1].startswith("4.3.0")
    # A few statements may each wait their full timeout; never the 300 s of an SMTP client's own patience.
    assert waited < 10 * STATEMENT_TIMEOUT
    again = await send(forum.smtp_port, message, mail_from=ALICE, rcpt_tos=[GENERAL])
    assert again.data_code == 250
    async with forum.deps.sessions() as session:
        assert len((await session.scalars(select(Post))).all()) == 1
        assert (await session.scalars(select(InboundFailure))).all() == []  # the database's fault, not the mail's


async def test_sqlite_commits_are_fsynced_before_the_250(settings: Settings) -> None:
    engine = create_engine_for(settings.database)
    try:
        async with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
                assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            else:
                assert (await conn.execute(text("SHOW synchronous_commit"))).scalar() == "on"
                assert (await conn.execute(text("SHOW statement_timeout"))).scalar() == "1s"
    finally:
        await engine.dispose()
