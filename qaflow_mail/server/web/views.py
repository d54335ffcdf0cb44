"""Topic page views: counted in memory, once per visitor and topic for a while, and written in batches.

A GET of a topic page by something that is not an obvious robot counts once; the same visitor (address and
User-Agent, hashed) reading the same topic again within ``REPEAT_WINDOW`` does not count again. The counts are
added to ``topics.views`` every ``[http] views_flush_seconds`` and when the server stops: one transaction per
batch, never an UPDATE per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)

REPEAT_WINDOW = 15 * 60.0  # seconds
MAX_REMEMBERED = 100_000  # visitor/topic pairs kept to recognise repeats (oldest forgotten first)

_ROBOT_RE = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|archiver|curl|wget|python|httpx|aiohttp|go-http|java/|libwww|okhttp|"
    r"headless|monitor|uptime|preview|facebookexternalhit|feed|scrapy|phantomjs|lighthouse",
    re.IGNORECASE,
)


def is_robot(user_agent: str) -> bool:
    """An obvious robot or script by its User-Agent (or none at all)."""
    return not user_agent.strip() or _ROBOT_RE.search(user_agent) is not None


class ViewCounter:
    """Pending view counts per topic; ``flush`` hands them to a writer and forgets them."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._pending: dict[int, int] = {}
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def seen(self, topic_id: int, visitor: str, user_agent: str) -> bool:
        """Count one view of ``topic_id`` unless it is a robot or a repeat; True when it counted."""
        if is_robot(user_agent):
            return False
        now = self._clock()
        key = hashlib.blake2b(f"{topic_id}\x00{visitor}\x00{user_agent}".encode(), digest_size=12).digest()
        last = self._seen.get(key)
        if last is not None and now - last < REPEAT_WINDOW:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_REMEMBERED:
            self._seen.popitem(last=False)
        self._pending[topic_id] = self._pending.get(topic_id, 0) + 1
        return True

    @property
    def pending(self) -> dict[int, int]:
        return dict(self._pending)

    async def flush(self, write: Callable[[dict[int, int]], Awaitable[None]]) -> int:
        """Write the pending counts (kept for the next flush when the write fails); how many views were written."""
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        try:
            await write(batch)
        except Exception:
            for topic_id, n in batch.items():
                self._pending[topic_id] = self._pending.get(topic_id, 0) + n
            raise
        return sum(batch.values())


@contextlib.asynccontextmanager
async def flushing(counter: ViewCounter, write: Callable[[dict[int, int]], Awaitable[None]],
                   interval: float) -> AsyncIterator[None]:
    """Flush ``counter`` every ``interval`` seconds while inside, and once more on the way out."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await counter.flush(write)
            except Exception:
                log.exception("web.views_flush_failed")

    task = asyncio.create_task(loop(), name="web-view-counter")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            written = await counter.flush(write)
        except Exception:
            log.exception("web.views_flush_failed")
        else:
            log.debug("web.views_flushed views=%d", written)
