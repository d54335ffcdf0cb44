"""The digest jobs: an APScheduler 3 AsyncIOScheduler on the running loop.

When digests are due comes from the database, not from the scheduler: a job run is one `run_digests` pass at
deps.clock(), which sends whatever is due by each user's own timezone and last_digest_at, once. The jobs only
decide when to look:

- `digest-daily` and `digest-weekly` fire every 15 minutes at daily_at's minute modulo 15 (every real UTC
  offset is a multiple of 15 minutes, so each user's local daily_at is a firing time) plus 30 seconds (a post
  stamped just before the boundary may still be committing), and once at start-up: that first run is the
  catch-up after downtime.
- coalesce=True, max_instances=1 and a generous misfire_grace_time: a late or piled-up run becomes one run.

Job store: the in-memory one, on purpose. APScheduler 3 says a job store must never be shared between
schedulers, while two `serve` processes on one database must be safe here; and its SQLAlchemyJobStore is
synchronous (it would block the loop, need a sync PostgreSQL driver, and on SQLite contend with our async
writers). What a persistent store would remember across restarts, the last run, is already in the database
as category_subscriptions.last_digest_at, and the start-up run catches up from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from qaflow_mail.db.queries import reattach_waiting
from qaflow_mail.outbound.digest_run import DigestStats, run_digests
from qaflow_mail.outbound.digest_schedule import Period, parse_daily_at
from qaflow_mail.services.retention import RetentionReport, prune

if TYPE_CHECKING:
    from qaflow_mail.deps import Deps

log = logging.getLogger(__name__)

JOB_IDS = {Period.DAILY: "digest-daily", Period.WEEKLY: "digest-weekly"}
MISFIRE_GRACE_SECONDS = 6 * 3600
STOP_GRACE_SECONDS = 30.0
SWEEP_SECONDS = 60
# Runs start this long after the boundary: a post stamped just before it may still be committing.
LATE_COMMIT_SECONDS = 30


class Scheduler:
    """The running scheduler, what its jobs did last, and a way to run a pass now."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.aps = AsyncIOScheduler(timezone=UTC)
        self.last_stats: dict[Period, DigestStats] = {}
        self.runs = 0
        self._in_flight: set[asyncio.Task[object]] = set()

    async def run_digests(self, period: Period) -> DigestStats | None:
        """One digest pass at deps.clock(); errors are logged (the next run retries from the database)."""
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            stats = await run_digests(self.deps.sessions, settings=self.deps.settings, renderer=self.deps.renderer,
                                      now=self.deps.clock(), period=period)
        except Exception:
            log.exception("digest.job_failed period=%s", period.value)
            return None
        finally:
            self.runs += 1
            if task is not None:
                self._in_flight.discard(task)
        self.last_stats[period] = stats
        return stats

    async def reattach_waiting(self) -> int:
        """Sweep for replies committed at the same moment as their parent (each missed the other)."""
        try:
            async with self.deps.sessions() as session, session.begin():
                moved = await reattach_waiting(session)
        except Exception:
            log.exception("threads.sweep_failed")
            return 0
        if moved:
            log.info("threads.reattached count=%d", moved)
        return moved

    async def prune(self) -> RetentionReport | None:
        """One retention pass ([retention]); errors are logged and the next pass tries again."""
        try:
            async with self.deps.sessions() as session, session.begin():
                report = await prune(session, self.deps.settings.retention, now=self.deps.clock())
        except Exception:
            log.exception("retention.job_failed")
            return None
        log.info("retention.pruned %s", " ".join(f"{k}={v}" for k, v in report.as_dict().items() if k != "dry_run"))
        return report

    def add_retention(self) -> None:
        self.aps.add_job(self.prune, IntervalTrigger(minutes=self.deps.settings.retention.interval_minutes),
                         id="retention", name="retention", coalesce=True, max_instances=1, replace_existing=True)

    def add_sweep(self) -> None:
        self.aps.add_job(self.reattach_waiting, IntervalTrigger(seconds=SWEEP_SECONDS), id="reattach-orphans",
                         name="re-attach waiting replies", coalesce=True, max_instances=1, replace_existing=True)

    def add_jobs(self, *, start_now: bool) -> None:
        minute = parse_daily_at(self.deps.settings.digest.daily_at).minute % 15
        for period, job_id in JOB_IDS.items():
            self.aps.add_job(
                self.run_digests,
                CronTrigger(minute=f"{minute}/15", second=LATE_COMMIT_SECONDS, timezone=UTC),
                args=[period],
                id=job_id,
                name=f"{period.value} digests",
                coalesce=True,
                max_instances=1,
                misfire_grace_time=MISFIRE_GRACE_SECONDS,
                replace_existing=True,
                **({"next_run_time": datetime.now(UTC)} if start_now else {}),
            )

    async def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> None:
        """No new runs; let a run in progress finish (its batches commit or roll back whole), then shut down."""
        if self.aps.running:
            self.aps.pause()
        running = set(self._in_flight)
        if running:
            _done, pending = await asyncio.wait(running, timeout=grace_seconds)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.aps.running:
            self.aps.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a callback on the loop: let it run


@asynccontextmanager
async def scheduling(deps: Deps, *, catch_up: bool = True) -> AsyncIterator[Scheduler]:
    """Run the digest jobs for the duration of the block. With `catch_up`, both run once right away."""
    scheduler = Scheduler(deps)
    if deps.settings.digest.enabled:
        scheduler.add_jobs(start_now=catch_up)
    scheduler.add_sweep()
    if deps.settings.retention.interval_minutes > 0:
        scheduler.add_retention()
    scheduler.aps.start()
    log.info("scheduler.started jobs=%s", ",".join(job.id for job in scheduler.aps.get_jobs()) or "none")
    try:
        yield scheduler
    finally:
        await scheduler.stop()
        log.info("scheduler.stopped runs=%d", scheduler.runs)
