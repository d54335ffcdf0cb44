"""The background task that keeps the outbox drained while the gateway runs.

It drains every [outbound] poll_interval seconds, and at once when woken (`Sender.wake()`, called after a
transaction that enqueued mail commits). A full batch is followed straight away by the next one, in the same
drain: claimed as the last messages of the one before go out, it fills the send slots they free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from qaflow_mail.outbound.mailer import Mailer, build_mailer
from qaflow_mail.outbound.outbox import DrainStats, drain_once
from qaflow_mail.outbound.sent_journal import SentJournal

if TYPE_CHECKING:
    from qaflow_mail.deps import Deps

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 30.0
JOURNAL_NAME = "outbox-sent.journal"  # in [site] data_dir
_FAILURE_PAUSE_CAP = 60.0


def default_worker_name() -> str:
    """host:pid:random, within the 64 characters of outbox.claimed_by."""
    suffix = f":{os.getpid()}:{secrets.token_hex(3)}"
    return socket.gethostname()[: 64 - len(suffix)] + suffix


class Sender:
    def __init__(self, deps: Deps, mailer: Mailer, *, worker: str, journal: SentJournal | None = None) -> None:
        self.deps = deps
        self.mailer = mailer
        self.worker = worker
        self.journal = journal
        self.drains = 0
        self.last_stats = DrainStats()
        self._started = 0
        self._progress = asyncio.Condition()
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Drain now rather than at the next poll. Safe to call at any time, any number of times."""
        self._wakeup.set()

    async def flush(self) -> DrainStats:
        """Wake the sender and wait until a drain that began after this call has finished.

        Returns the stats of the last drain that succeeded (a failed drain is logged, and counts as finished).
        """
        if self._task is None or self._task.done():
            raise RuntimeError("the sender is not running")
        target = self._started + 1
        self.wake()
        async with self._progress:
            await self._progress.wait_for(lambda: self.drains >= target or self._stopping)
        return self.last_stats

    def _keeps_going(self) -> bool:
        return not self._stopping

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"outbox-sender {self.worker}")

    async def _run(self) -> None:
        interval = max(0.01, self.deps.settings.outbound.poll_interval)
        batch_size = self.deps.settings.outbound.batch_size
        failures = 0
        while not self._stopping:
            self._wakeup.clear()
            self._started += 1
            pause = interval
            try:
                self.last_stats = await drain_once(self.deps, self.mailer, worker=self.worker,
                                                   lease_seconds=self.deps.settings.outbound.lease_seconds,
                                                   journal=self.journal, keep_going=self._keeps_going)
                failures = 0
                if self.last_stats.claimed >= batch_size:
                    pause = 0.0
            except Exception:
                # The database may be down: log, back off a little, and go on. Claimed rows come back on their own.
                failures += 1
                pause = min(interval * 2**min(failures, 10), max(interval, _FAILURE_PAUSE_CAP))
                log.exception("outbox.drain_failed worker=%s failures=%d", self.worker, failures)
            async with self._progress:
                self.drains += 1
                self._progress.notify_all()
            if pause and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), timeout=pause)

    async def stop(self, grace_seconds: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Let the current batch finish its sends and record them; cancel it if that takes over `grace_seconds`."""
        self._stopping = True
        self._wakeup.set()
        async with self._progress:
            self._progress.notify_all()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=grace_seconds)
        if done:
            if not task.cancelled() and task.exception() is not None:
                log.error("outbox.sender_crashed worker=%s", self.worker, exc_info=task.exception())
            return
        # Its claimed rows stay "sending" and come back to another drain when the claim expires.
        log.warning("outbox.sender_stop_timeout worker=%s grace=%s", self.worker, grace_seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def sending(
    deps: Deps,
    *,
    mailer: Mailer | None = None,
    worker: str | None = None,
    stop_timeout: float = DEFAULT_STOP_TIMEOUT,
) -> AsyncIterator[Sender]:
    """Run a Sender in the background for the duration of the block. A mailer built here is closed here."""
    own_mailer = mailer is None
    active = build_mailer(deps.settings) if mailer is None else mailer
    # The first sender of a data directory keeps its accepted ids in the journal there (another does without).
    journal = SentJournal.open(Path(deps.settings.site.data_dir) / JOURNAL_NAME)
    sender = Sender(deps, active, worker=worker or default_worker_name(), journal=journal)
    sender.start()
    log.info("outbox.sender_started worker=%s transport=%s", sender.worker, deps.settings.outbound.transport)
    try:
        yield sender
    finally:
        await sender.stop(stop_timeout)
        if journal is not None:
            journal.close()
        if own_mailer:
            await active.close()
        log.info("outbox.sender_stopped worker=%s", sender.worker)
