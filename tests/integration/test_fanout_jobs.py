"""Fan-out as a durable job: a post's 250 comes before its notifications are written; a worker writes them in
batches, resumes after a crash, and several workers (several nodes) never expand the same batch."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine_for, session_factory
from qaflow_mail.db.models import (
    FanoutJob,
    FanoutKind,
    Outbox,
    OutboxKind,
    Post,
)
from qaflow_mail.deps import Deps
from qaflow_mail.server.app import Running, running
from qaflow_mail.server.fanout_worker import FanoutWorker, fanning_out
from qaflow_mail.services.announcements import publish_text
from qaflow_mail.services.fanout_jobs import ExpandedBatch, claim, enqueue, expand_batch
from tests.clock import Clock
from tests.fanout import add_followers, fanout_done
from tests.polling import until
from tests.smtp_client import make_mail, send

DOMAIN = "forum.test"
AUTHOR = "author@example.org"
FOLLOWERS = 300


async def seed(deps: Deps, *, followers: int = FOLLOWERS) -> tuple[int, int]:
    """A category "general" with an author and ``followers`` "each" subscribers; (category id, author id)."""
    now = datetime.now(UTC)
    async with deps.sessions() as session, session.begin():
        general = await queries.add_category(session, slug="general", name="General", allow_strangers=False)
        author = await queries.add_user(session, email=AUTHOR, display_name="Author", now=now)
        await add_followers(session, category_id=general.id, count=followers, now=now)
    await deps.categories.reload()
    return general.id, author.id


async def notifications(deps: Deps) -> list[Outbox]:
    async with deps.sessions() as session:
        return list((await session.scalars(
            select(Outbox).where(Outbox.kind == OutboxKind.NOTIFICATION.value).order_by(Outbox.id)
        )).all())


async def jobs(deps: Deps) -> list[FanoutJob]:
    async with deps.sessions() as session:
        return list((await session.scalars(select(FanoutJob).order_by(FanoutJob.id))).all())


async def post_topic(run: Running, message_id: str) -> int | None:
    mail = make_mail(sender=AUTHOR, to=f"general@{DOMAIN}", subject="Hello all", body="A question for everyone.",
                     message_id=f"<{message_id}>")
    return (await send(run.smtp_port, mail, mail_from=AUTHOR, rcpt_tos=[f"general@{DOMAIN}"])).data_code


def assert_everyone_once(rows: list[Outbox], followers: int = FOLLOWERS) -> None:
    per_user = Counter(row.user_id for row in rows)
    assert len(per_user) == followers, f"{len(per_user)} followers notified, expected {followers}"
    assert max(per_user.values()) == 1, "a follower was notified twice"


async def test_the_250_comes_before_the_fan_out(settings: Settings) -> None:
    async with running(settings, fanout=False) as run:
        await seed(run.deps)
        assert await post_topic(run, "q1@client.test") == 250

        (job,) = await jobs(run.deps)
        assert await notifications(run.deps) == [], "the 250 does not wait for the notifications"
        assert (job.kind, job.cursor, job.handed, job.finished_at) == (FanoutKind.POST.value, 0, 0, None)

        async with fanning_out(run.deps, batch_size=64) as worker:
            await fanout_done(run.deps)
        rows = await notifications(run.deps)
        assert_everyone_once(rows)
        assert len(worker.expanded) == -(-FOLLOWERS // 64)  # ceil: 64 at a time
        (job,) = await jobs(run.deps)
        assert job.handed == FOLLOWERS and job.finished_at is not None


async def test_a_worker_cancelled_mid_job_resumes_from_its_cursor(settings: Settings, clock: Clock) -> None:
    async with running(settings, clock=clock, fanout=False) as run:
        await seed(run.deps)
        assert await post_topic(run, "q1@client.test") == 250

        crashed = FanoutWorker(run.deps, worker="node-a", batch_size=20)
        crashed.start()
        deadline = time.monotonic() + 10
        while not crashed.expanded:  # cancel right after its first batch commits, in its second
            assert time.monotonic() < deadline, "the worker expanded nothing"
            await asyncio.sleep(0)
        await crashed.stop(grace_seconds=0)
        (job,) = await jobs(run.deps)
        assert job.finished_at is None and job.claimed_by == "node-a"
        assert job.cursor > 0 and job.handed < FOLLOWERS

        # Another node takes the job once the dead one's claim has run out, and goes on from the cursor.
        clock.now = datetime.now(UTC) + timedelta(hours=1)
        async with fanning_out(run.deps, worker="node-b", batch_size=20) as resumed:
            await fanout_done(run.deps)
        assert resumed.expanded[0].after_user_id == job.cursor
        assert_everyone_once(await notifications(run.deps))


async def test_a_claim_is_exclusive_until_its_lease_runs_out(settings: Settings, clock: Clock) -> None:
    async with running(settings, clock=clock, fanout=False) as run:
        deps = run.deps
        await seed(deps, followers=10)
        assert await post_topic(run, "q1@client.test") == 250
        start = datetime.now(UTC)
        async with deps.sessions() as session, session.begin():
            job = await claim(session, worker="a", now=start, lease_seconds=60)
            assert job is not None
            assert await claim(session, worker="b", now=start + timedelta(seconds=59), lease_seconds=60) is None
        async with deps.sessions() as session, session.begin():
            stolen = await claim(session, worker="b", now=start + timedelta(seconds=61), lease_seconds=60)
            assert stolen is not None and stolen.id == job.id
        async with deps.sessions() as session, session.begin():
            assert await expand_batch(session, deps, job_id=job.id, worker="a", now=start, limit=5) is None
            batch = await expand_batch(session, deps, job_id=job.id, worker="b", now=start, limit=5)
            assert batch is not None and batch.handed == 5
        assert len(await notifications(deps)) == 5


class WaitsForTheOther(FanoutWorker):
    """A worker that, having expanded a batch, claims its next job only once `other` has expanded one too."""

    other: FanoutWorker

    async def run_once(self) -> int:
        async def other_has_a_batch() -> bool:
            return bool(self.other.expanded)

        if self.expanded:
            await until(other_has_a_batch, timeout=30, what=f"a batch expanded by {self.other.worker}")
        return await super().run_once()


async def test_two_workers_never_expand_the_same_batch(settings: Settings) -> None:
    """Two nodes (two engines, two workers) share twelve jobs: every batch is expanded by exactly one of them."""
    async with running(settings, fanout=False) as run:
        category_id, author_id = await seed(run.deps, followers=200)
        now = datetime.now(UTC)
        async with run.deps.sessions() as session, session.begin():
            for n in range(12):
                topic = await queries.create_topic(session, category_id=category_id, author_id=author_id,
                                                   subject=f"Topic {n}", now=now)
                post = Post(topic_id=topic.id, author_id=author_id, parent_id=None, message_id=f"t{n}@client.test",
                            subject=topic.subject, body_text="Hello.", source="smtp", created_at=now)
                session.add(post)
                await session.flush()
                await enqueue(session, kind=FanoutKind.POST, target_id=post.id, now=now)

        other_engine = create_engine_for(settings.database)
        other = dataclasses.replace(run.deps, sessions=session_factory(other_engine))
        # SQLite's busy handler is not fair: a worker committing batch after batch can keep the other waiting for
        # the lock until every job is done. So neither claims a second job before the other has a batch.
        a = WaitsForTheOther(run.deps, worker="node-a", batch_size=25)
        b = WaitsForTheOther(other, worker="node-b", batch_size=25)
        a.other, b.other = b, a
        try:
            for worker in (a, b):
                worker.start()
                worker.wake()
            await fanout_done(run.deps, timeout=60)
        finally:
            await a.stop()
            await b.stop()
            await other_engine.dispose()
        async with run.deps.sessions() as session:
            assert await session.scalar(select(func.count(Outbox.id))) == 12 * 200

    batches: list[ExpandedBatch] = a.expanded + b.expanded
    starts = Counter((batch.job_id, batch.after_user_id) for batch in batches)
    assert max(starts.values()) == 1, "a batch was expanded twice"
    assert a.expanded and b.expanded, "both workers should have taken part"
    for job_id in {batch.job_id for batch in batches}:
        chain = sorted((x for x in batches if x.job_id == job_id), key=lambda x: x.after_user_id)
        assert chain[0].after_user_id == 0 and chain[-1].done
        assert all(prev.last_user_id == nxt.after_user_id for prev, nxt in itertools.pairwise(chain))
        assert sum(x.handed for x in chain) == 200


async def test_a_batch_is_the_kinds_own_size_unless_given(settings: Settings) -> None:
    """Without a limit a post's job expands BATCH_SIZE followers a batch and a broadcast [announce] batch_size."""
    settings = dataclasses.replace(settings, announce=dataclasses.replace(settings.announce, batch_size=7))
    async with running(settings, fanout=False) as run:
        deps = run.deps
        await seed(deps, followers=30)
        async with deps.sessions() as session, session.begin():
            admin = await queries.add_user(session, email="admin@example.org", is_admin=True, now=datetime.now(UTC))
            await publish_text(session, deps, author=admin, subject="Maintenance", text="Tonight.",
                               now=datetime.now(UTC))
        assert await post_topic(run, "q1@client.test") == 250
        now = datetime.now(UTC)
        handed: dict[str, int] = {}
        for _ in range(2):
            async with deps.sessions() as session, session.begin():
                job = await claim(session, worker="a", now=now, lease_seconds=60)
                assert job is not None
                kind = job.kind
                batch = await expand_batch(session, deps, job_id=job.id, worker="a", now=now)
                assert batch is not None
                handed[kind] = batch.handed
        assert handed == {FanoutKind.ANNOUNCEMENT.value: 7, FanoutKind.POST.value: 30}
