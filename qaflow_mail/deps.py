"""What the services need from the outside world, built once at start-up and passed down, never changed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.outbound.render import Renderer


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
class Wakeup:
    """Called after a transaction that may have queued outgoing mail commits; the outbox sender listens."""

    _listeners: list[Callable[[], None]] = field(default_factory=list)

    def listen(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def __call__(self) -> None:
        for callback in self._listeners:
            callback()


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    categories: CategoryCache
    renderer: Renderer
    clock: Callable[[], datetime] = utc_now
    # DKIM key lookups for announcements: (b"sel._domainkey.example.org.", timeout=...) -> TXT value or None.
    # None means dkimpy's own resolver (real DNS); tests answer from a dict.
    dkim_dnsfunc: Callable[..., bytes | None] | None = None
    outbox_wakeup: Wakeup = field(default_factory=Wakeup)

    @classmethod
    def build(
        cls, settings: Settings, sessions: async_sessionmaker[AsyncSession], *,
        clock: Callable[[], datetime] = utc_now, renderer: Renderer | None = None,
        dkim_dnsfunc: Callable[..., bytes | None] | None = None,
    ) -> Deps:
        return cls(settings=settings, sessions=sessions, categories=CategoryCache(sessions),
                   renderer=renderer if renderer is not None else Renderer(), clock=clock,
                   dkim_dnsfunc=dkim_dnsfunc)
