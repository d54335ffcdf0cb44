"""A names B as its parent and B names A: the cycle is broken when it is detected, and the topic keeps a first
post (a post without a parent), whichever arrives first."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Post
from qaflow_mail.deps import Deps
from tests.clock import Clock
from tests.integration.test_threading_races import T0, deliver

ALICE, BOB = "alice@example.org", "bob@example.net"
OPEN = "open@forum.test"


@pytest.fixture
async def forum(settings: Settings) -> AsyncIterator[Deps]:
    engine = create_engine(settings.database.url)
    try:
        deps = Deps.build(settings, session_factory(engine), clock=Clock(T0))
        async with deps.sessions() as session, session.begin():
            await queries.add_category(session, slug="open", name="Open", allow_strangers=True)
            for address in (ALICE, BOB):
                await queries.add_user(session, email=address, now=T0)
        yield deps
    finally:
        await engine.dispose()


async def test_two_posts_naming_each_other_keep_a_first_post(forum: Deps) -> None:
    await deliver(forum, ALICE, OPEN, "a@example.org", irt="b@example.net")
    await deliver(forum, BOB, OPEN, "b@example.net", irt="a@example.org")
    async with forum.sessions() as session:
        posts = {p.message_id: p for p in (await session.scalars(select(Post))).all()}
    a, b = posts["a@example.org"], posts["b@example.net"]
    assert a.topic_id == b.topic_id
    assert (a.parent_id, b.parent_id) == (None, a.id)  # a stays the first post; b answers it
