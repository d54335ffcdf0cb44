"""The queue workers: they take queued mail (server.inbound_queue) through the pipeline, as the listener does with
[smtp] accept = "inline" (and "auto" while the pipeline is free), and tell a refusal by mail, since the sender had
its 250 already.

With [smtp] queue_workers = N > 0, `serve` runs up to N worker processes while queued mail waits (each takes the
files of its shard), so a burst is taken at the listener's pace while the pipeline works it off on the other cores;
they are started when mail is queued and stopped once the queue has been empty for IDLE_STOP_SECONDS, so an idle
`serve` is one process. With 0, one worker runs as a task of the serve process. A worker process whose parent is
gone stops.

A message that fails is tried again after a pause that doubles (from RETRY_BASE_SECONDS up to RETRY_MAX_SECONDS):
a failure of the database may pass; a failure of the message itself is counted by the pipeline, which shunts it
after [limits] shunt_after_failures, so it is never tried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from multiprocessing.process import BaseProcess

from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine_for, session_factory
from qaflow_mail.db.models import Source
from qaflow_mail.deps import Deps
from qaflow_mail.heap import libc, return_large_buffers
from qaflow_mail.pipeline.cpu import LARGE_MESSAGE_BYTES, close_shared_pool
from qaflow_mail.pipeline.ingest import ingest, message_deadline
from qaflow_mail.server.inbound_queue import InboundQueue, UnreadableQueueFile, shard_of
from qaflow_mail.server.mail_budget import MailBudget

log = logging.getLogger(__name__)

RETRY_BASE_SECONDS = 1.0
RETRY_MAX_SECONDS = 300.0
POLL_SECONDS = 0.05
STOP_SECONDS = 30.0  # a worker process's time to finish the messages in hand before it is killed
IDLE_STOP_SECONDS = 60.0  # worker processes stop once the queue has been empty this long
WATCH_SECONDS = 0.2  # how often serve looks whether mail waits (worker processes to start) or a worker died
# Worker processes run at the lowest priority: on a machine with as many cores as busy processes the listener (and
# the senders' side of a burst) would otherwise share its core with a worker that is never short of work. A burst is
# accepted first and worked off after, on whatever CPU is left.
WORKER_NICENESS = 19
_PR_SET_PDEATHSIG = 1  # prctl(2)
_NO_LIMIT = 365 * 24 * 3600.0  # a queued message waits for room as long as it takes


class QueueWorker:
    def __init__(self, deps: Deps, queue: InboundQueue, *, shard: int = 0, shards: int = 1,
                 concurrency: int | None = None, retry_base: float = RETRY_BASE_SECONDS) -> None:
        self.deps = deps
        self.queue = queue
        self.shard = shard
        self.shards = shards
        self.concurrency = concurrency or deps.settings.smtp.queue_concurrency
        self.retry_base = retry_base
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._in_hand: set[str] = set()
        # Bytes of mail in hand at once, as the listeners' ([smtp] max_bytes_in_flight): a message waits for room.
        self.budget = MailBudget(deps.settings.smtp.max_bytes_in_flight)
        # The CPU pool reads one large message at a time: a second one read from its file meanwhile would only
        # wait in memory.
        self._large = asyncio.Lock()

    def _due(self, names: list[str]) -> list[str]:
        now = time.monotonic()
        return [name for name in names
                if name not in self._in_hand and self._retry_at.get(name, 0.0) <= now
                and shard_of(name, self.shards) == self.shard]

    async def run(self, stop: asyncio.Event) -> None:
        """Take queued messages until `stop` is set; then let the ones in hand finish."""
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            try:
                due = self._due(await asyncio.to_thread(self.queue.waiting))
            except OSError:
                log.exception("queue.list_failed dir=%s", self.queue.root)
                due = []
            for name in due:
                await slots.acquire()
                if stop.is_set():
                    slots.release()
                    break
                self._in_hand.add(name)
                task = asyncio.create_task(self._take(name))
                tasks.add(task)
                task.add_done_callback(functools.partial(self._finished, name=name, slots=slots, tasks=tasks))
            if not due:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=POLL_SECONDS)
        if tasks:
            await asyncio.wait(tasks)

    def _finished(self, task: asyncio.Task[None], *, name: str, slots: asyncio.Semaphore,
                  tasks: set[asyncio.Task[None]]) -> None:
        tasks.discard(task)
        self._in_hand.discard(name)
        slots.release()

    async def _take(self, name: str) -> None:
        size = await asyncio.to_thread(self.queue.size, name)
        one_at_a_time: contextlib.AbstractAsyncContextManager[object] = (
            self._large if size >= LARGE_MESSAGE_BYTES else contextlib.nullcontext())
        async with one_at_a_time, self.budget.hold(size, wait=_NO_LIMIT) as room:
            if room:
                await self._take_within_budget(name)

    async def _take_within_budget(self, name: str) -> None:
        try:
            message = await asyncio.to_thread(self.queue.read, name)
            if message is None:
                return  # gone: taken by another worker
            source = Source(message.source)
        except (UnreadableQueueFile, ValueError) as error:
            log.error("queue.unreadable name=%s error=%s (moved to %s)", name, error, self.queue.bad)
            await asyncio.to_thread(self.queue.set_aside, name)
            return
        try:
            async with asyncio.timeout(message_deadline(self.deps.settings)):
                result = await ingest(message.raw, envelope_from=message.mail_from, recipients=list(message.rcpt_tos),
                                      source=source, deps=self.deps, answer_by_mail=True)
        except Exception:
            failures = self._failures[name] = self._failures.get(name, 0) + 1
            pause = min(RETRY_MAX_SECONDS, self.retry_base * 2 ** (failures - 1))
            self._retry_at[name] = time.monotonic() + pause
            log.exception("queue.failed name=%s failures=%d retry_in=%.0fs", name, failures, pause)
            return
        await asyncio.to_thread(self.queue.remove, name)
        self._failures.pop(name, None)
        self._retry_at.pop(name, None)
        log.debug("queue.taken name=%s reply=%s", name, result.reply)


@asynccontextmanager
async def queue_working(deps: Deps) -> AsyncIterator[QueueWorker]:
    """One QueueWorker as a task of this process for the duration of the block."""
    queue = InboundQueue(deps.settings.smtp.queue_dir)
    await asyncio.to_thread(queue.prepare)
    worker = QueueWorker(deps, queue)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop), name="queue-worker")
    try:
        yield worker
    finally:
        stop.set()
        await task


async def _work_in_process(settings: Settings, shard: int, shards: int, parent: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with AsyncExitStack() as stack:
        engine = create_engine_for(settings.database)
        stack.push_async_callback(engine.dispose)
        deps = Deps.build(settings, session_factory(engine))
        queue = InboundQueue(settings.smtp.queue_dir)
        worker = QueueWorker(deps, queue, shard=shard, shards=shards)
        running = asyncio.create_task(worker.run(stop))
        log.info("queue.worker_ready shard=%d/%d pid=%d", shard, shards, os.getpid())
        while not stop.is_set():
            if os.getppid() != parent:
                log.warning("queue.parent_gone shard=%d", shard)
                stop.set()
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        await running


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel kill this process the moment its parent dies (a `kill -9` of serve): a worker
    left behind would take the queue beside the next serve's. Elsewhere the run loop notices within a second."""
    prctl = getattr(libc(), "prctl", None)
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def worker_process_main(settings: Settings, shard: int, shards: int, parent: int) -> None:
    """The entry point of one worker process (spawned: nothing of the parent's event loop or database comes)."""
    from qaflow_mail import logs

    _die_with_parent(parent)
    logs.configure(settings.logging.level, settings.logging.format)
    return_large_buffers()
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    try:
        asyncio.run(_work_in_process(_one_reader(settings), shard, shards, parent))
    finally:
        close_shared_pool()


def _one_reader(settings: Settings) -> Settings:
    """A worker process reads mail with one CPU-pool process: no reply waits on it, and a second pool process
    beside the listener's own would only add to the memory a burst of large messages needs."""
    limits = dataclasses.replace(settings.limits, cpu_workers=1)
    return dataclasses.replace(settings, limits=limits)


@asynccontextmanager
async def queue_processes(settings: Settings) -> AsyncIterator[list[BaseProcess | None]]:
    """Up to [smtp] queue_workers processes for the duration of the block: each shard's process is started while
    queued mail waits (again, should it die) and stopped once the queue has been empty for IDLE_STOP_SECONDS."""
    queue = InboundQueue(settings.smtp.queue_dir)
    await asyncio.to_thread(queue.prepare)
    context = multiprocessing.get_context("spawn")
    shards = settings.smtp.queue_workers
    processes: list[BaseProcess | None] = [None] * shards

    def start(shard: int) -> BaseProcess:
        process = context.Process(target=worker_process_main, args=(settings, shard, shards, os.getpid()),
                                  name=f"qaflow-queue-{shard}")
        process.start()
        return process

    async def stop_all() -> None:
        running = [process for process in processes if process is not None]
        processes[:] = [None] * shards
        for process in running:
            process.terminate()  # SIGTERM: finish the messages in hand, then exit
        for process in running:
            await asyncio.to_thread(process.join, STOP_SECONDS)
            if process.is_alive():
                log.warning("queue.worker_stop_timeout pid=%s", process.pid)
                process.kill()
                await asyncio.to_thread(process.join)

    stopping = asyncio.Event()

    async def watch() -> None:
        empty_since = time.monotonic()
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=WATCH_SECONDS)
            if stopping.is_set():
                return
            if await asyncio.to_thread(queue.has_waiting):
                empty_since = time.monotonic()
                for shard, process in enumerate(processes):
                    if process is not None and not process.is_alive():
                        log.error("queue.worker_died shard=%d exitcode=%s (started again)", shard, process.exitcode)
                    if process is None or not process.is_alive():
                        processes[shard] = start(shard)
            elif any(processes) and time.monotonic() - empty_since > IDLE_STOP_SECONDS:
                log.info("queue.workers_idle stopping=%d", sum(1 for p in processes if p is not None))
                await stop_all()

    watcher = asyncio.create_task(watch())
    try:
        yield processes
    finally:
        stopping.set()
        await watcher
        await stop_all()
