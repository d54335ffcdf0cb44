"""The background task that expands fan-out jobs into outbox rows while the gateway runs (services.fanout_jobs).

It looks for work every [outbound] poll_interval seconds, and at once when woken (after a transaction that may
have written a job commits). It claims one job at a time and expands it batch by batch, one transaction each,
waking the outbox sender after every batch so the first mails leave while the rest are still being written.
Several workers, in one process or on several nodes, share the jobs safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from qaflow_mail.db.group_commit import writing
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.sender import default_worker_name
from qaflow_mail.services.fanout_jobs import (
    LEASE_SECONDS,
    ExpandedBatch,
    claim,
    expand_batch,
    record_failure,
)

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0
_FAILURE_PAUSE_CAP = 60.0


class FanoutWorker:
    def __init__(self, deps: Deps, *, worker: str, batch_size: int | None = None,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self.deps = deps
        self.worker = worker
        self.batch_size = batch_size  # None: each kind's own (see services.fanout_jobs.expand_batch)
        self.lease_seconds = lease_seconds
        self.expanded: list[ExpandedBatch] = []  # every batch this worker committed, in order
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look for jobs now rather than at the next poll. Safe to call at any time, any number of times."""
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"fanout-worker {self.worker}")

    async def run_once(self) -> int:
        """Claim one job and expand it to the end (or until stopped or it is taken away); the batches committed."""
        deps = self.deps
        async with writing(deps.sessions), deps.sessions() as session, session.begin():
            job = await claim(session, worker=self.worker, now=deps.clock(), lease_seconds=self.lease_seconds)
            job_id = None if job is None else job.id
        if job_id is None:
            return 0
        batches = 0
        try:
            while not self._stopping:
                async with writing(deps.sessions), deps.sessions() as session, session.begin():
                    batch = await expand_batch(session, deps, job_id=job_id, worker=self.worker, now=deps.clock(),
                                               limit=self.batch_size, lease_seconds=self.lease_seconds)
                if batch is None:
                    log.warning("fanout.claim_lost job_id=%s worker=%s", job_id, self.worker)
                    break
                batches += 1
                self.expanded.append(batch)
                if batch.handed:
                    deps.outbox_wakeup()
                if batch.done:
                    break
        except Exception as error:
            log.exception("fanout.batch_failed job_id=%s worker=%s", job_id, self.worker)
            async with writing(deps.sessions), deps.sessions() as session, session.begin():
                await record_failure(session, job_id=job_id, worker=self.worker, now=deps.clock(),
                                     error=f"{type(error).__name__}: {error}")
        return batches

    async def _run(self) -> None:
        interval = max(0.01, self.deps.settings.outbound.poll_interval)
        failures = 0
        while not self._stopping:
            self._wakeup.clear()
            pause = interval
            try:
                if await self.run_once():
                    pause = 0.0  # there may be another job waiting
                failures = 0
            except Exception:
                # The database may be down: back off a little and go on; a claimed job comes back on its own.
                failures += 1
                pause = min(interval * 2 ** min(failures, 10), max(interval, _FAILURE_PAUSE_CAP))
                log.exception("fanout.worker_failed worker=%s failures=%d", self.worker, failures)
            if pause and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=pause)

    async def stop(self, grace_seconds: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Let the batch in hand commit; cancel it if that takes over ``grace_seconds`` (it then rolls back, and
        the job resumes from its cursor once the claim runs out)."""
        self._stopping = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=grace_seconds)
        if not done:
            log.warning("fanout.worker_stop_timeout worker=%s grace=%s", self.worker, grace_seconds)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def fanning_out(
    deps: Deps, *, worker: str | None = None, batch_size: int | None = None, lease_seconds: float = LEASE_SECONDS,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
) -> AsyncIterator[FanoutWorker]:
    """Run a FanoutWorker in the background for the duration of the block, woken by ``deps.outbox_wakeup``."""
    fanout = FanoutWorker(deps, worker=worker or default_worker_name(), batch_size=batch_size,
                          lease_seconds=lease_seconds)
    deps.outbox_wakeup.listen(fanout.wake)
    fanout.start()
    try:
        yield fanout
    finally:
        await fanout.stop(stop_timeout)
