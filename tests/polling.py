"""Waiting for something another task or process does: poll with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

POLL_SECONDS = 0.02


async def until(check: Callable[[], Awaitable[bool]], *, timeout: float = 20.0, what: str) -> None:  # noqa: ASYNC109
    """Return once `check()` is true; fail naming `what` when it is not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(POLL_SECONDS)  # poll interval of the deadline loop
