"""The categories a new site starts with, so a first mail works without any set-up."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import ANNOUNCEMENTS_SLUG, Category

DEFAULT_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("general", "General"),
    (ANNOUNCEMENTS_SLUG, "Announcements"),
)


async def ensure_default_categories(session: AsyncSession) -> None:
    """Create the default categories that are missing; safe when several nodes start at once."""
    now = datetime.now(UTC)
    rows = [{"slug": slug, "name": name, "allow_strangers": False, "created_at": now}
            for slug, name in DEFAULT_CATEGORIES]
    await session.execute(dialect_insert(session, Category).on_conflict_do_nothing(index_elements=["slug"]), rows)
