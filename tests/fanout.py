"""Waiting, with a deadline, until the fan-out worker has expanded every job into outbox rows."""

from __future__ import annotations

import asyncio
import time

from qaflow_mail.deps import Deps
from qaflow_mail.services.fanout_jobs import unfinished


async def fanout_done(deps: Deps, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (a deadline, not a sleep)
    """Return once no fan-out job is left unfinished; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        async with deps.sessions() as session:
            left = await unfinished(session)
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"fan-out: {left} job(s) unfinished after {timeout}s")
        await asyncio.sleep(0.01)  # poll interval of the deadline loop
