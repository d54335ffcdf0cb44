"""Fan-out jobs: one row written with a post (or an announcement) in its transaction, expanded later into
per-recipient outbox rows, one batch per transaction, so the 250 never waits on the number of recipients.

A job's life: written (``enqueue``, idempotent per kind and target) → claimed by one worker until
``claimed_until`` (``claim``) → expanded batch by batch (``expand_batch``), each batch in its own transaction
that also moves ``cursor`` to the last user id done → finished (``finished_at``).

Guarantees:
- At most one outbox row per recipient: the outbox dedupe keys make a re-expanded batch insert nothing new.
- A crash loses nothing: a batch's outbox rows and its cursor commit together; the claim runs out after
  LEASE_SECONDS and another worker resumes after the cursor.
- Two workers never both expand a batch: each batch first re-takes the job row with a conditional UPDATE that
  names the worker (a row lock held to the commit on PostgreSQL; the write lock on SQLite), and a claim skips
  rows locked by another worker (FOR UPDATE SKIP LOCKED on PostgreSQL).
- No job is retried forever: after MAX_FAILURES failed batches it is finished with its last error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import Announcement, FanoutJob, FanoutKind, Post, User
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.announcements import enqueue_broadcast_batch
from qaflow_mail.outbound.notify import NotifyBatch
from qaflow_mail.services.notifications import notify_followers_batch

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0  # how long a claim (and each batch's renewal of it) lasts
BATCH_SIZE = 500  # recipients per batch: one transaction each, bounding memory and the write lock's hold
MAX_FAILURES = 8
_FAILURE_BACKOFF_SECONDS = 5.0
_FAILURE_BACKOFF_CAP = 3600.0


@dataclass(frozen=True, slots=True)
class ExpandedBatch:
    job_id: int
    after_user_id: int  # the cursor this batch started from
    last_user_id: int  # the cursor it left
    handed: int
    done: bool


async def enqueue(session: AsyncSession, *, kind: FanoutKind, target_id: int, now: datetime) -> None:
    """The job that will tell everyone about ``target_id``, in the caller's transaction; a second call adds none."""
    await session.execute(
        dialect_insert(session, FanoutJob)
        .values(kind=kind.value, target_id=target_id, cursor=0, handed=0, attempts=0, last_error="",
                created_at=now)
        .on_conflict_do_nothing(index_elements=["kind", "target_id"])
    )


def _claimable(now: datetime) -> ColumnElement[bool]:
    return and_(FanoutJob.finished_at.is_(None),
                or_(FanoutJob.claimed_until.is_(None), FanoutJob.claimed_until < now))


async def claim(session: AsyncSession, *, worker: str, now: datetime,
                lease_seconds: float = LEASE_SECONDS) -> FanoutJob | None:
    """Take the oldest unfinished job nobody holds (or whose holder's claim ran out) for ``worker``."""
    due = _claimable(now)
    candidate = (
        select(FanoutJob.id)
        .where(due)
        .order_by(FanoutJob.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .cte("claimable")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    stmt = (
        update(FanoutJob)
        .where(FanoutJob.id.in_(select(candidate.c.id)), due)
        .values(claimed_by=worker, claimed_until=now + timedelta(seconds=lease_seconds))
        .returning(FanoutJob)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return (await session.scalars(stmt)).first()


async def _retake(session: AsyncSession, job_id: int, *, worker: str, now: datetime,
                  lease_seconds: float) -> FanoutJob | None:
    """Renew ``worker``'s claim and lock the row to this transaction's end; None when the job is no longer ours."""
    stmt = (
        update(FanoutJob)
        .where(FanoutJob.id == job_id, FanoutJob.claimed_by == worker, FanoutJob.finished_at.is_(None))
        .values(claimed_until=now + timedelta(seconds=lease_seconds))
        .returning(FanoutJob)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return (await session.scalars(stmt)).first()


async def expand_batch(
    session: AsyncSession, deps: Deps, *, job_id: int, worker: str, now: datetime, limit: int | None = None,
    lease_seconds: float = LEASE_SECONDS,
) -> ExpandedBatch | None:
    """Write the next batch of ``job_id``'s outbox rows and move its cursor, in the caller's transaction. A batch
    is ``limit`` recipients, by default BATCH_SIZE for a post and ``[announce] batch_size`` for a broadcast.

    Returns None when ``worker`` no longer holds the job (its claim ran out and another worker took it, or it is
    finished): the caller must then stop working on it.
    """
    job = await _retake(session, job_id, worker=worker, now=now, lease_seconds=lease_seconds)
    if job is None:
        return None
    after = job.cursor
    handed, last, done = 0, after, True
    if job.kind == FanoutKind.POST.value:
        post = await session.get(Post, job.target_id)
        if post is not None:  # a deleted post tells nobody
            # The job's own time, not the clock's: a resumed job renders and signs as its first batch did.
            batch = await notify_followers_batch(session, deps, post, now=job.created_at, after_user_id=after,
                                                 limit=BATCH_SIZE if limit is None else limit)
            handed, last, done = batch.handed, batch.last_user_id, batch.done
    elif job.kind == FanoutKind.ANNOUNCEMENT.value:
        broadcast = await _broadcast_batch(session, deps, announcement_id=job.target_id, now=job.created_at,
                                           after_user_id=after,
                                           limit=deps.settings.announce.batch_size if limit is None else limit)
        if broadcast is not None:  # an announcement (or its post) deleted since tells nobody
            handed, last, done = broadcast.handed, broadcast.last_user_id, broadcast.done
    else:
        log.error("fanout.unknown_kind job_id=%s kind=%s", job.id, job.kind)
        job.last_error = f"unknown kind {job.kind!r}"
    job.cursor = last
    job.handed += handed
    if done:
        job.finished_at = now
        job.claimed_by = None
        job.claimed_until = None
        log.info("fanout.finished job_id=%s kind=%s target_id=%s handed=%d", job.id, job.kind, job.target_id,
                 job.handed)
    return ExpandedBatch(job_id=job.id, after_user_id=after, last_user_id=last, handed=handed, done=done)


async def _broadcast_batch(
    session: AsyncSession, deps: Deps, *, announcement_id: int, now: datetime, after_user_id: int, limit: int
) -> NotifyBatch | None:
    announcement = await session.get(Announcement, announcement_id)
    post = None if announcement is None or announcement.post_id is None else await session.get(Post,
                                                                                              announcement.post_id)
    author = None if post is None else await session.get(User, post.author_id)
    if announcement is None or post is None or author is None:
        return None
    return await enqueue_broadcast_batch(session, settings=deps.settings, renderer=deps.renderer,
                                         announcement=announcement, post=post, author=author, now=now,
                                         after_user_id=after_user_id, limit=limit)


async def progress(session: AsyncSession, *, kind: FanoutKind, target_id: int) -> FanoutJob | None:
    """The job telling everyone about ``target_id`` (how far it got), or None when there is none."""
    return await session.scalar(
        select(FanoutJob).where(FanoutJob.kind == kind.value, FanoutJob.target_id == target_id)
    )


async def record_failure(session: AsyncSession, *, job_id: int, worker: str, now: datetime, error: str) -> None:
    """A batch failed: let go of the job for a while (growing each time), or give it up after MAX_FAILURES."""
    job = await session.scalar(select(FanoutJob).where(FanoutJob.id == job_id, FanoutJob.claimed_by == worker))
    if job is None:
        return
    job.attempts += 1
    job.last_error = error[:4000]
    job.claimed_by = None
    if job.attempts >= MAX_FAILURES:
        job.finished_at = now
        job.claimed_until = None
        log.error("fanout.gave_up job_id=%s kind=%s target_id=%s cursor=%s error=%s", job.id, job.kind,
                  job.target_id, job.cursor, error)
    else:
        delay = min(_FAILURE_BACKOFF_SECONDS * 2 ** (job.attempts - 1), _FAILURE_BACKOFF_CAP)
        job.claimed_until = now + timedelta(seconds=delay)


async def unfinished(session: AsyncSession) -> int:
    """How many jobs still have people to tell."""
    return int(await session.scalar(select(func.count(FanoutJob.id)).where(FanoutJob.finished_at.is_(None))) or 0)
