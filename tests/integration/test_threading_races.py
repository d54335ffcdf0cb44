"""Threading when a reply and its parent are committed at the same moment, chains of late ancestors, and who may be
moved where by a re-attachment."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.models import Post, Topic, UserStatus
from qaflow_mail.deps import Deps
from qaflow_mail.pipeline.ingest import ingest
from tests.clock import Clock
from tests.smtp_client import make_mail

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
async def deps(settings: Settings) -> AsyncIterator[Deps]:
    engine = create_engine(settings.database.url)
    try:
        deps = Deps.build(settings, session_factory(engine), clock=Clock(T0))
        async with deps.sessions() as session, session.begin():
            await queries.add_category(session, slug="general", name="General", allow_strangers=False)
            await queries.add_category(session, slug="open", name="Open", allow_strangers=True)
            for address in ("alice@example.org", "bob@example.net", "carol@example.com"):
                await queries.add_user(session, email=address, now=T0)
        yield deps
    finally:
        await engine.dispose()


async def deliver(deps: Deps, sender: str, to: str, mid: str, *, irt: str | None = None,
                  refs: tuple[str, ...] = (), at: datetime = T0) -> None:
    assert isinstance(deps.clock, Clock)
    deps.clock.now = at
    msg = make_mail(sender=sender, to=to, subject="Thread", body=f"Text of {mid}.", message_id=f"<{mid}>",
                    in_reply_to=f"<{irt}>" if irt else None, references=[f"<{r}>" for r in refs])
    result = await ingest(msg.as_bytes(), envelope_from=sender, recipients=[to], source="smtp", deps=deps)
    assert result.reply.is_success, result.reply


async def post(deps: Deps, mid: str) -> Post:
    async with deps.sessions() as session:
        found = await session.scalar(select(Post).where(Post.message_id == mid))
    assert found is not None
    return found


async def topics(deps: Deps) -> int:
    async with deps.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Topic)) or 0)


async def test_sweep_joins_a_reply_committed_beside_its_parent(deps: Deps) -> None:
    """Simulate the race: the reply is stored as an orphan while its parent is stored without seeing it."""
    await deliver(deps, "bob@example.net", "general@forum.test", "child@x.test", irt="root@x.test")
    async with deps.sessions() as session, session.begin():  # the parent's transaction did not see the orphan
        topic = await queries.create_topic(session, category_id=1, author_id=1, subject="Root", now=T0)
        session.add(Post(topic_id=topic.id, author_id=1, message_id="root@x.test", body_text="Root.",
                         created_at=T0))
    assert await topics(deps) == 2
    async with deps.sessions() as session, session.begin():
        assert await queries.reattach_waiting(session) == 1
    root, child = await post(deps, "root@x.test"), await post(deps, "child@x.test")
    assert (child.topic_id, child.parent_id) == (root.topic_id, root.id)
    assert await topics(deps) == 1
    async with deps.sessions() as session, session.begin():
        assert await queries.reattach_waiting(session) == 0  # nothing left waiting


async def test_late_nearer_ancestor_becomes_the_parent(deps: Deps) -> None:
    """C answers B which answers A; C arrives first, then A, then B: C ends under B, all in A's topic."""
    await deliver(deps, "carol@example.com", "general@forum.test", "c@x.test", irt="b@x.test",
                  refs=("a@x.test", "b@x.test"))
    await deliver(deps, "alice@example.org", "general@forum.test", "a@x.test", at=T0 + timedelta(minutes=1))
    a, c = await post(deps, "a@x.test"), await post(deps, "c@x.test")
    assert (c.topic_id, c.parent_id) == (a.topic_id, a.id)
    await deliver(deps, "bob@example.net", "general@forum.test", "b@x.test", irt="a@x.test",
                  refs=("a@x.test",), at=T0 + timedelta(minutes=2))
    b, c = await post(deps, "b@x.test"), await post(deps, "c@x.test")
    assert (b.topic_id, b.parent_id) == (a.topic_id, a.id)
    assert (c.topic_id, c.parent_id) == (a.topic_id, b.id)
    assert await topics(deps) == 1
    async with deps.sessions() as session:
        shown = [p.message_id for p, _ in await queries.topic_posts(session, a.topic_id)]
    assert shown[0] == "a@x.test"  # the opening post first, although C was written earlier


async def test_a_strangers_orphan_is_not_moved_into_a_members_only_category(deps: Deps) -> None:
    await deliver(deps, "eve@example.com", "open@forum.test", "eve@x.test", irt="members@x.test")
    await deliver(deps, "alice@example.org", "general@forum.test", "members@x.test", at=T0 + timedelta(minutes=1))
    eve, root = await post(deps, "eve@x.test"), await post(deps, "members@x.test")
    assert eve.topic_id != root.topic_id and eve.parent_id is None
    async with deps.sessions() as session:
        staged = await queries.user_by_email(session, "eve@example.com")
    assert staged is not None and staged.status == UserStatus.STAGED
