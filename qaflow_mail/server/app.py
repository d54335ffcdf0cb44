"""serve(): one asyncio process hosting the listener and the background tasks until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from qaflow_mail.config import Settings
from qaflow_mail.db.defaults import ensure_default_categories
from qaflow_mail.db.engine import create_engine, session_factory, upgrade
from qaflow_mail.pipeline.deps import Deps
from qaflow_mail.server.smtp import start_smtp

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Running:
    deps: Deps
    smtp_port: int


async def prepare_database(settings: Settings) -> None:
    await asyncio.to_thread(upgrade, settings.database.url)
    engine = create_engine(settings.database.url)
    try:
        async with session_factory(engine)() as session, session.begin():
            await ensure_default_categories(session)
    finally:
        await engine.dispose()


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Running]:
    """Start everything `serve` runs; stop it in reverse order on exit. Tests use this directly."""
    async with AsyncExitStack() as stack:
        engine = create_engine(settings.database.url, echo=settings.database.echo)
        stack.push_async_callback(engine.dispose)
        deps = Deps.build(settings, session_factory(engine))
        smtp = await start_smtp(deps, host=settings.smtp.host, port=settings.smtp.port)

        async def close_smtp() -> None:
            smtp.close()
            await smtp.wait_closed()

        stack.push_async_callback(close_smtp)
        yield Running(deps=deps, smtp_port=smtp.sockets[0].getsockname()[1])


async def serve(settings: Settings) -> None:
    await prepare_database(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with running(settings) as run:
        log.info("serve.ready smtp=%s:%s domain=%s", settings.smtp.host, run.smtp_port, settings.site.domain)
        await stop.wait()
        log.info("serve.stopping")
    log.info("serve.stopped")
