"""db.group_commit against a real database: on SQLite the writes that arrive together share one transaction, each
in its own SAVEPOINT, each caller told only after the commit; a failing one rolls back alone; writers outside the
queue (another process, another engine) are let in; on PostgreSQL each caller has its own transaction."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.db import queries
from qaflow_mail.db.engine import create_engine, session_factory
from qaflow_mail.db.group_commit import LET_GO_SECONDS, MAX_HOLD_SECONDS, GroupCommit, group_commit, writing
from qaflow_mail.db.models import User

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)


def add_user(email: str, *, fail: bool = False) -> Callable[[AsyncSession], Awaitable[str]]:
    async def work(session: AsyncSession) -> str:
        await queries.add_user(session, email=email, now=NOW)
        await session.flush()
        if fail:
            raise ValueError(f"refused {email}")
        return email

    return work


async def emails(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        return sorted((await session.scalars(select(User.email))).all())


def count_commits(sessions: async_sessionmaker[AsyncSession]) -> list[int]:
    commits = [0]
    engine = sessions.kw["bind"].sync_engine

    @event.listens_for(engine, "commit")
    def counted(_connection: object) -> None:
        commits[0] += 1

    return commits


async def test_writes_that_arrive_together_share_one_commit_and_fail_alone(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    writer = group_commit(sessions)
    assert group_commit(sessions) is writer  # one queue per database
    commits = count_commits(sessions)
    results = await asyncio.gather(
        *(writer.run(add_user(f"u{n}@example.org", fail=n == 3)) for n in range(8)), return_exceptions=True
    )
    assert [r if isinstance(r, str) else type(r).__name__ for r in results] == [
        "u0@example.org", "u1@example.org", "u2@example.org", "ValueError",
        "u4@example.org", "u5@example.org", "u6@example.org", "u7@example.org",
    ]
    assert await emails(sessions) == sorted(f"u{n}@example.org" for n in range(8) if n != 3)
    if writer.batched:  # SQLite: one transaction for all eight
        assert commits[0] == 1
    else:  # PostgreSQL: each its own
        assert commits[0] == 7


async def test_a_caller_is_answered_only_once_its_write_is_committed(
    sessions: async_sessionmaker[AsyncSession], database_url: str,
) -> None:
    other = create_engine(database_url)  # another connection sees only what is committed
    try:
        async def visible_when_answered(n: int) -> bool:
            email = await group_commit(sessions).run(add_user(f"seen{n}@example.org"))
            async with session_factory(other)() as session:
                return await session.scalar(select(User.id).where(User.email == email)) is not None

        assert all(await asyncio.gather(*(visible_when_answered(n) for n in range(6))))
    finally:
        await other.dispose()


async def test_a_commit_that_fails_fails_every_caller_of_the_batch(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    writer = GroupCommit(sessions)
    if not writer.batched:
        pytest.skip("PostgreSQL: each caller has its own transaction")
    engine = sessions.kw["bind"].sync_engine

    def refuse(_connection: object) -> None:
        raise RuntimeError("disk full")

    event.listen(engine, "commit", refuse)
    try:
        results = await asyncio.gather(*(writer.run(add_user(f"lost{n}@example.org")) for n in range(3)),
                                       return_exceptions=True)
    finally:
        event.remove(engine, "commit", refuse)
    assert [type(r).__name__ for r in results] == ["RuntimeError"] * 3
    assert await emails(sessions) == []


async def test_a_writer_outside_the_queue_is_let_in_while_it_is_kept_busy(
    sessions: async_sessionmaker[AsyncSession], database_url: str,
) -> None:
    writer = group_commit(sessions)
    if not writer.batched:
        pytest.skip("PostgreSQL has row locks: nobody waits for a whole-database write lock")
    stop = asyncio.Event()
    written = [0]

    async def keep_busy(lane: int) -> int:
        done = 0
        while not stop.is_set():
            await writer.run(add_user(f"busy{lane}.{done}@example.org"))
            done += 1
            written[0] += 1
        return done

    lanes = [asyncio.create_task(keep_busy(lane)) for lane in range(4)]
    other = create_engine(database_url)  # as another process would: its own connection, no queue
    try:
        deadline = time.monotonic() + 10
        while written[0] < 20:  # the four writers are going back to back
            assert time.monotonic() < deadline, "the queue did not get going"
            await asyncio.sleep(0.01)  # poll interval of the deadline loop
        started = time.monotonic()
        async with session_factory(other)() as session, session.begin():
            await queries.add_user(session, email="outsider@example.org", now=NOW)
        waited = time.monotonic() - started
    finally:
        stop.set()
        busy = sum(await asyncio.gather(*lanes))
        await other.dispose()
    assert busy > 0
    assert waited < MAX_HOLD_SECONDS + LET_GO_SECONDS + 1.0, waited
    async with sessions() as session:
        assert await session.scalar(select(func.count(User.id)).where(User.email == "outsider@example.org")) == 1


async def test_the_other_writers_of_the_process_take_turns_with_the_batches(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    writer = group_commit(sessions)
    if not writer.batched:
        pytest.skip("PostgreSQL has row locks: writers need no turns")
    order: list[str] = []

    async def batch_work(session: AsyncSession) -> str:
        order.append("batch")
        return await add_user("queued@example.org")(session)

    async def second_writer() -> None:
        async with writing(sessions):
            order.append("second writer")

    async with writing(sessions):  # e.g. the fan-out worker's transaction
        queued = asyncio.create_task(writer.run(batch_work))
        deadline = time.monotonic() + 5
        while not writer.turn()._waiters:  # the batch waits for its turn, not in SQLite's busy handler
            assert time.monotonic() < deadline, "the batch never asked for its turn"
            await asyncio.sleep(0.01)  # poll interval of the deadline loop
        second = asyncio.create_task(second_writer())
        await asyncio.sleep(0)  # lets the second writer queue behind the batch
        assert not queued.done() and order == []
        order.append("first writer")
    assert await queued == "queued@example.org"
    await second
    assert order == ["first writer", "batch", "second writer"]  # one at a time, first come first served
    assert await emails(sessions) == ["queued@example.org"]
