"""Short write transactions of many callers committed together on SQLite: one write lock, one fsync per batch.

SQLite has one writer at a time. Callers that each open their own transaction queue for the write lock in
SQLite's busy handler, which sleeps in growing steps (up to 100 ms a try), and each pays its own fsync. Here the
callers' work runs one after another in a single transaction, each in its own SAVEPOINT (a failing caller's
writes roll back alone and it hears of its failure at once), the batch commits once, and only then does each
caller learn that its work is done: what a caller answers after `run` returns is on disk, as before. The callers
who arrive while a batch runs form the next one, so a batch is as large as the load makes it.

The other writers of this process (the fan-out worker, the outbox sender) take their turn with `writing`: they
and the batches queue for the one write lock in first-come order, each woken the moment the one before it has
committed, instead of meeting inside SQLite's busy handler, which sleeps 1, 2, 5, 10 … 100 ms between tries.

On PostgreSQL, which has row locks and many writers at once, each caller gets its own transaction.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

T = TypeVar("T")
Work = Callable[[AsyncSession], Awaitable[T]]

# More work in one transaction saves fsyncs but makes the first caller of a batch wait for all the others.
MAX_BATCH = 16
# Writers outside this queue (the fan-out worker and the outbox sender, whose long transactions would hold up the
# messages queued behind them; a command; another process) wait for the write lock in
# SQLite's busy handler, which retries every 100 ms once it has waited a while. Batches that follow one another
# would never leave it a gap, so after holding the lock this long without a break the queue lets go of it for
# longer than one such retry: nobody waits much more than two seconds because of this process.
MAX_HOLD_SECONDS = 2.0
LET_GO_SECONDS = 0.11
# Batches less than this apart count as one stretch of holding the lock.
_BREAK_SECONDS = 0.05


@dataclass(slots=True)
class _Job:
    work: Work[Any]
    future: asyncio.Future[Any]


class GroupCommit:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, max_batch: int = MAX_BATCH) -> None:
        # Weak: the registry below holds this object for as long as the session factory lives, no longer.
        self._sessions = weakref.ref(sessions)
        self._max_batch = max_batch
        self._queue: deque[_Job] = deque()
        self._draining: asyncio.Task[None] | None = None
        self._holding_since = 0.0  # when the current stretch of back-to-back batches began (monotonic)
        self._last_commit = -1.0
        bind = sessions.kw.get("bind")
        self.batched = bind is not None and bind.dialect.name == "sqlite"
        # One turn per event loop (an asyncio lock belongs to one); the gateway writes from one.
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary())

    def turn(self) -> asyncio.Lock:
        """This process's turn to write (on the running loop): held for a whole write transaction."""
        loop = asyncio.get_running_loop()
        lock = self._turns.get(loop)
        if lock is None:
            lock = self._turns[loop] = asyncio.Lock()
        return lock

    def _factory(self) -> async_sessionmaker[AsyncSession]:
        sessions = self._sessions()
        assert sessions is not None, "the session factory is gone"
        return sessions

    async def run(self, work: Work[T]) -> T:
        """`work(session)` inside a transaction; returns once that transaction has committed (raises if it did
        not). The work must not commit or roll back the session itself."""
        if not self.batched:
            async with self._factory()() as session, session.begin():
                return await work(session)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Job(work, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            await self._let_others_in()
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            await self._commit(batch)
            self._last_commit = time.monotonic()

    async def _let_others_in(self) -> None:
        now = time.monotonic()
        if now - self._last_commit > _BREAK_SECONDS:
            self._holding_since = now
        elif now - self._holding_since > MAX_HOLD_SECONDS:
            await asyncio.sleep(LET_GO_SECONDS)
            self._holding_since = time.monotonic()

    async def _commit(self, batch: list[_Job]) -> None:
        sessions = self._factory()
        engine = sessions.kw["bind"]
        succeeded: list[tuple[_Job, Any]] = []
        try:
            async with self.turn(), engine.connect() as connection, connection.begin():
                # SQLite's driver begins no transaction before a SAVEPOINT (whose RELEASE would then commit), and a
                # read that later turns into a write fails at once when another writer came between: take the
                # write lock first (waiting up to busy_timeout).
                await connection.exec_driver_sql("BEGIN IMMEDIATE")
                for job in batch:
                    if job.future.done():
                        continue  # its caller went away before its turn
                    # Each job has a session of its own (its own identity map) in a SAVEPOINT of the one transaction.
                    session = sessions(bind=connection, join_transaction_mode="create_savepoint")
                    try:
                        async with session, session.begin():
                            result = await job.work(session)
                    except Exception as error:
                        _fail(job.future, error)  # its SAVEPOINT is rolled back: nothing of it will be committed
                        continue
                    succeeded.append((job, result))
        except BaseException as error:  # the batch could not begin or commit: nothing of it is kept
            for job in batch:
                _fail(job.future, error)
            if not isinstance(error, Exception):
                raise
            return
        for job, result in succeeded:
            if not job.future.done():
                job.future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if future.done():
        return
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(error)


_writers: weakref.WeakKeyDictionary[async_sessionmaker[AsyncSession], GroupCommit] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def writing(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[None]:
    """Around a write transaction opened outside the group commit: on SQLite, wait for this process's turn to
    write and hold it until the block ends (commit included); on PostgreSQL, nothing."""
    writer = group_commit(sessions)
    if not writer.batched:
        yield
        return
    async with writer.turn():
        yield


def group_commit(sessions: async_sessionmaker[AsyncSession]) -> GroupCommit:
    """The one GroupCommit of this session factory (so every caller of a database shares its batches)."""
    writer = _writers.get(sessions)
    if writer is None:
        writer = _writers[sessions] = GroupCommit(sessions)
    return writer
