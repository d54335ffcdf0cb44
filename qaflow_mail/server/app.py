"""serve(): one asyncio process hosting the listener and the background tasks until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

from qaflow_mail.config import Settings
from qaflow_mail.db.defaults import ensure_default_categories
from qaflow_mail.db.engine import create_engine_for, session_factory
from qaflow_mail.db.installation import with_installation
from qaflow_mail.db.schema_version import schema_is_current
from qaflow_mail.deps import Deps, utc_now
from qaflow_mail.heap import return_large_buffers
from qaflow_mail.outbound.sender import sending
from qaflow_mail.pipeline.cpu import close_shared_pool
from qaflow_mail.server.accept_policy import InlineLoad
from qaflow_mail.server.fanout_worker import fanning_out
from qaflow_mail.server.http import http_server
from qaflow_mail.server.imap import polling
from qaflow_mail.server.lmtp import start_lmtp
from qaflow_mail.server.mail_budget import MailBudget
from qaflow_mail.server.queue_worker import queue_processes, queue_working
from qaflow_mail.server.scheduler import scheduling
from qaflow_mail.server.smtp import start_smtp

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Running:
    deps: Deps
    smtp_port: int
    http_port: int | None = None
    lmtp_port: int | None = None
    inline: InlineLoad = field(default_factory=InlineLoad)  # messages the listeners run before their reply


async def prepare_database(settings: Settings) -> None:
    engine = create_engine_for(settings.database)
    try:
        if not await schema_is_current(engine):
            from qaflow_mail.db.migrate import upgrade  # Alembic is loaded only when it has work to do

            await asyncio.to_thread(upgrade, settings.database.url)
        async with session_factory(engine)() as session, session.begin():
            await ensure_default_categories(session)
    finally:
        await engine.dispose()


def _bound_port(stack: AsyncExitStack, server: asyncio.Server) -> int:
    """Close `server` when the stack unwinds; the port it listens on."""

    async def close() -> None:
        server.close()
        await server.wait_closed()

    stack.push_async_callback(close)
    port: int = server.sockets[0].getsockname()[1]
    return port


@asynccontextmanager
async def running(
    settings: Settings, *, background: bool = False, clock: Callable[[], datetime] = utc_now,
    dkim_dnsfunc: Callable[..., bytes | None] | None = None, fanout: bool = True,
) -> AsyncIterator[Running]:
    """Start the SMTP listener (and LMTP when enabled), the fan-out worker that turns posts into outbox rows
    (unless `fanout` is False), the queue workers unless [smtp] accept = "inline" (worker processes while queued mail
    waits, or with queue_workers = 0 a task here) and, with `background`, everything else `serve` runs
    (outbox sender, HTTP endpoint, digest scheduler, IMAP poller); stop it all in reverse order on exit.
    `clock` and `dkim_dnsfunc` stand in for the real time and DNS (tests)."""
    async with AsyncExitStack() as stack:
        engine = create_engine_for(settings.database)
        stack.push_async_callback(engine.dispose)
        sessions = session_factory(engine)
        settings = await with_installation(settings, sessions)  # the Message-ID salt of this database
        deps = Deps.build(settings, sessions, clock=clock, dkim_dnsfunc=dkim_dnsfunc)
        run = Running(deps=deps, smtp_port=0)
        if settings.smtp.accept != "inline":
            # Worker processes while queued mail waits (this one takes mail and serves the web), or a task here.
            working = queue_processes(settings) if settings.smtp.queue_workers else queue_working(deps)
            await stack.enter_async_context(working)
        if fanout:
            await stack.enter_async_context(
                fanning_out(deps, lease_seconds=settings.outbound.fanout_lease_seconds)
            )
        if background:
            sender = await stack.enter_async_context(sending(deps))
            deps.outbox_wakeup.listen(sender.wake)
            if settings.http.enabled:
                run.http_port = await stack.enter_async_context(http_server(deps))
            await stack.enter_async_context(scheduling(deps))
        # One bytes-in-flight budget and one count of messages run before their reply, for both listeners.
        budget, load = MailBudget(settings.smtp.max_bytes_in_flight), run.inline
        run.smtp_port = _bound_port(
            stack, await start_smtp(deps, host=settings.smtp.host, port=settings.smtp.port, budget=budget, load=load)
        )
        if settings.lmtp.enabled:
            run.lmtp_port = _bound_port(stack, await start_lmtp(
                deps, host=settings.lmtp.host, port=settings.lmtp.port, budget=budget, load=load))
        if background:
            await stack.enter_async_context(polling(deps))
        yield run


def _raise_file_limit(settings: Settings) -> None:
    """Open files up to the hard limit: every connection is one, and [smtp] max_connections must stay below it so a
    flood is refused with a 421 rather than left without a banner."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    wanted = settings.smtp.max_connections + 100  # database, workers, log files, the other listeners
    if soft < wanted:
        log.warning("serve.file_limit open_files=%d below max_connections+100=%d", soft, wanted)


async def serve(settings: Settings) -> None:
    _raise_file_limit(settings)
    return_large_buffers()
    await prepare_database(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running(settings, background=True) as run:
        log.info(
            "serve.ready smtp=%s:%s http=%s domain=%s transport=%s", settings.smtp.host, run.smtp_port, run.http_port,
            settings.site.domain, settings.outbound.transport,
        )
        await stop.wait()
        log.info("serve.stopping")
    close_shared_pool()
    log.info("serve.stopped")
