"""What every command module shares: one-transaction runs, JSON printing, user errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.engine import create_engine, session_factory

T = TypeVar("T")


class CommandError(Exception):
    """A user error: printed as one line, exit status 1."""


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2))


async def in_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction on a short-lived engine."""
    engine = create_engine(settings.database.url)
    try:
        async with session_factory(engine)() as session, session.begin():
            return await work(session)
    finally:
        await engine.dispose()


def run_in_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    return asyncio.run(in_session(settings, work))
