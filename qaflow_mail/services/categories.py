"""Categories: the slugs they may have, adding them, finding and listing them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import Category
from qaflow_mail.mail.addresses import is_valid_slug


class InvalidSlug(ValueError):
    """The slug cannot name a category (characters, or a reserved local part)."""

    def __init__(self, slug: str) -> None:
        super().__init__(f"invalid category slug {slug!r}: use a-z, 0-9 and '-', not a reserved name")
        self.slug = slug


class CategoryExists(ValueError):
    def __init__(self, slug: str) -> None:
        super().__init__(f"category {slug} exists already")
        self.slug = slug


class UnknownCategory(LookupError):
    def __init__(self, slug: str) -> None:
        super().__init__(f"no category {slug!r}")
        self.slug = slug


def normalize_slug(slug: str) -> str:
    """``slug`` lowercased, when it may name a category (``<slug>@domain``); InvalidSlug otherwise."""
    lowered = slug.lower()
    if not is_valid_slug(lowered):
        raise InvalidSlug(slug)
    return lowered


async def add_category(session: AsyncSession, *, slug: str, name: str | None = None,
                       allow_strangers: bool = False) -> Category:
    """A new category (named after its slug unless ``name`` is given); InvalidSlug or CategoryExists."""
    slug = normalize_slug(slug)
    if await queries.category_by_slug(session, slug):
        raise CategoryExists(slug)
    return await queries.add_category(session, slug=slug, name=name or slug.title(), allow_strangers=allow_strangers)


async def find_category(session: AsyncSession, slug: str) -> Category:
    category = await queries.category_by_slug(session, slug)
    if category is None:
        raise UnknownCategory(slug)
    return category


async def list_categories(session: AsyncSession) -> Sequence[Category]:
    return await queries.list_categories(session)
