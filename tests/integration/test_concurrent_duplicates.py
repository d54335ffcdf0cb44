"""The same message delivered several times at once (MTA retries racing each other, two gateway nodes) is taken
once, for every kind of destination, not only for posts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Disposition, InboundMessage, Post
from qaflow_mail.deps import Deps
from qaflow_mail.pipeline.ingest import ingest
from tests.smtp_client import make_mail


@pytest.fixture
async def nodes(settings: Settings) -> AsyncIterator[list[Deps]]:
    """Two gateway nodes: separate engines (connection pools) on one database."""
    engines = [create_engine(settings.database.url) for _ in range(2)]
    try:
        nodes = [Deps.build(settings, session_factory(engine)) for engine in engines]
        async with nodes[0].sessions() as session, session.begin():
            await queries.add_category(session, slug="general", name="General", allow_strangers=False)
            await queries.add_user(session, email="alice@example.org", now=datetime.now(UTC))
        yield nodes
    finally:
        for engine in engines:
            await engine.dispose()


@pytest.mark.parametrize("rcpt", ["postmaster@forum.test", "general@forum.test"])
async def test_racing_copies_are_taken_once(nodes: list[Deps], rcpt: str) -> None:
    raw = make_mail(sender="alice@example.org", to=rcpt, subject="Once", message_id="<race@client.test>").as_bytes()
    results = await asyncio.gather(*(
        ingest(raw, envelope_from="alice@example.org", recipients=[rcpt], source="smtp", deps=nodes[i % 2])
        for i in range(6)
    ))
    assert all(result.reply.code == 250 for result in results)
    async with nodes[0].sessions() as session:
        dispositions = sorted((await session.scalars(select(InboundMessage.disposition))).all())
        posts = (await session.scalars(select(Post))).all()
    assert dispositions.count(Disposition.ACCEPTED) == 1
    assert dispositions.count(Disposition.DISCARDED) == 5
    assert len(posts) == (1 if rcpt.startswith("general") else 0)
