"""Categories: the slugs they may have, adding, finding, listing, changing and removing them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db import queries
from qaflow_mail.db.models import ANNOUNCEMENTS_SLUG, Category, Post, SubscriptionMode, Topic
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


JOIN_DEFAULT_MODES = (SubscriptionMode.EACH, SubscriptionMode.DAILY, SubscriptionMode.WEEKLY)


def join_default_mode(category: Category | None, site_default: str) -> SubscriptionMode:
    """The mode a join to ``category`` gets when it names none: the category's own, else the site's."""
    if category is not None and category.default_mode:
        return SubscriptionMode(category.default_mode)
    return SubscriptionMode(site_default)


class CategoryInUse(ValueError):
    """The category cannot be removed: it has topics (and no --force), or it is the announcements category."""


async def update_category(session: AsyncSession, slug: str, *, name: str | None = None,
                          allow_strangers: bool | None = None, default_mode: str | None = None) -> Category:
    """Change what is given (None leaves it; ``default_mode=""`` goes back to the site's default);
    UnknownCategory when there is no such category."""
    category = await find_category(session, slug)
    if default_mode is not None:
        if default_mode and default_mode not in {m.value for m in JOIN_DEFAULT_MODES}:
            raise ValueError(f"a default mode is each, daily or weekly, not {default_mode!r}")
        category.default_mode = default_mode or None
    if name is not None:
        if not name.strip():
            raise ValueError("a category name cannot be empty")
        category.name = name.strip()
    if allow_strangers is not None:
        category.allow_strangers = allow_strangers
    return category


@dataclass(frozen=True, slots=True)
class RemovedCategory:
    slug: str
    topics: int
    posts: int


async def remove_category(session: AsyncSession, slug: str, *, force: bool = False) -> RemovedCategory:
    """Delete a category with its subscriptions; with ``force`` also its topics and their posts (attachments,
    held-post records and Message-ID records go with them). Never the announcements category."""
    category = await find_category(session, slug)
    if category.slug == ANNOUNCEMENTS_SLUG:
        raise CategoryInUse(f"the {ANNOUNCEMENTS_SLUG} category cannot be removed: announcements are published there")
    topic_ids = select(Topic.id).where(Topic.category_id == category.id)
    topics = int(await session.scalar(select(func.count()).select_from(Topic).where(Topic.category_id == category.id))
                 or 0)
    post_ids = select(Post.id).where(Post.topic_id.in_(topic_ids))
    posts = int(await session.scalar(select(func.count()).select_from(Post).where(Post.topic_id.in_(topic_ids))) or 0)
    if topics and not force:
        raise CategoryInUse(f"category {category.slug} has {topics} topic(s) and {posts} post(s); "
                            "--force removes them too")
    if topics:
        # A reply elsewhere that names one of these posts as its parent keeps its place without it.
        await session.execute(update(Post).where(Post.parent_id.in_(post_ids), Post.topic_id.not_in(topic_ids))
                              .values(parent_id=None).execution_options(synchronize_session=False))
        await session.execute(delete(Post).where(Post.topic_id.in_(topic_ids))
                              .execution_options(synchronize_session=False))
        await session.execute(delete(Topic).where(Topic.category_id == category.id)
                              .execution_options(synchronize_session=False))
    removed = RemovedCategory(slug=category.slug, topics=topics, posts=posts)
    await session.delete(category)
    return removed
