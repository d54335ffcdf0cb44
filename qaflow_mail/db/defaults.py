"""The categories a new site starts with, so a first mail works without any set-up."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries

DEFAULT_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("general", "General"),
    ("announcements", "Announcements"),
)


async def ensure_default_categories(session: AsyncSession) -> list[str]:
    existing = await queries.category_slugs(session)
    created = []
    for slug, name in DEFAULT_CATEGORIES:
        if slug not in existing:
            await queries.add_category(session, slug=slug, name=name, allow_strangers=False)
            created.append(slug)
    return created
