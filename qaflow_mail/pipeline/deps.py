"""What the pipeline needs from the outside world, built once at start-up and passed down."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.config import Settings
from qaflow_mail.db import queries


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class CategoryCache:
    """Category slugs kept in memory so RCPT needs no SQL for known categories; a miss reloads them once."""

    sessions: async_sessionmaker[AsyncSession]
    _slugs: frozenset[str] = frozenset()

    async def slugs(self, *, must_contain: str | None = None) -> frozenset[str]:
        if not self._slugs or (must_contain is not None and must_contain not in self._slugs):
            await self.reload()
        return self._slugs

    async def reload(self) -> None:
        async with self.sessions() as session:
            self._slugs = frozenset(await queries.category_slugs(session))


@dataclass(slots=True)
class Deps:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    categories: CategoryCache
    clock: Callable[[], datetime] = utc_now
    # DKIM key lookups for announcements: (b"sel._domainkey.example.org.", timeout=...) -> TXT value or None.
    # None means dkimpy's own resolver (real DNS); tests answer from a dict.
    dkim_dnsfunc: Callable[..., bytes | None] | None = None
    # Called after a transaction that may have queued outgoing mail commits: wakes the outbox sender.
    outbox_wakeup: Callable[[], None] = field(default=lambda: None)

    @classmethod
    def build(cls, settings: Settings, sessions: async_sessionmaker[AsyncSession],
              clock: Callable[[], datetime] = utc_now) -> Deps:
        return cls(settings=settings, sessions=sessions, categories=CategoryCache(sessions), clock=clock)
