"""A cap on the bytes of received mail being processed at once, over all connections of all listeners.

A message is read back from its spool into memory, parsed and stored only within the budget ([smtp]
max_bytes_in_flight); one that finds no room waits a little ([smtp] in_flight_wait) and is then answered
``452 4.3.1``: its sender still holds it and tries again. A single message larger than the whole budget is taken
when nothing else is in flight, so no message within [smtp] max_message_size waits forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class MailBudget:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self.waiting = 0  # messages waiting for room now
        self._changed = asyncio.Condition()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    @asynccontextmanager
    async def hold(self, size: int, *, wait: float) -> AsyncIterator[bool]:
        """Yield True with `size` bytes held until the block ends, or False when no room came within `wait`
        seconds (nothing held)."""
        async with self._changed:
            self.waiting += 1
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    await self._changed.wait_for(lambda: self._fits(size))
            except TimeoutError:
                got = False
            else:
                got = True
                self.used += size
            finally:
                self.waiting -= 1
        if not got:
            yield False
            return
        try:
            yield True
        finally:
            async with self._changed:
                self.used -= size
                self._changed.notify_all()
