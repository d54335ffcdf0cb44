"""Where a message goes: under the post a reply token names, under the post its threading headers name, or a new
topic in the category it was sent to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import ANNOUNCEMENTS_SLUG, Category, Post, Topic
from qaflow_mail.mail.parse import ParsedMail
from qaflow_mail.mail.threads import parent_candidates, resolve_parent
from qaflow_mail.mail.tokens import TokenKind, verified_ids
from qaflow_mail.replies import ANNOUNCEMENTS_ARE_PUBLISHED, BAD_TOKEN, DIGEST_REPLY, UNKNOWN_RECIPIENT, Refusal


@dataclass(frozen=True, slots=True)
class Placement:
    category: Category
    parent: Post | None = None
    # (post id, user id) of the reply token that placed it
    token_ids: tuple[int, ...] = ()
    # Nearer ancestors that have not arrived yet: the post moves under one of them if it comes.
    candidates: tuple[str, ...] = ()
    # Every ancestor the headers name that is here (Message-ID → post id), when they were looked up.
    known_ancestors: Mapping[str, int] | None = None


def reply_token_ids(settings: Settings, token: str, *, today: date) -> tuple[int, ...] | None:
    """(post id, user id) of a valid reply token, else None."""
    return verified_ids(token, TokenKind.REPLY, secrets=settings.tokens.secrets, today=today,
                        max_age_days=settings.tokens.reply_ttl_days)


async def category_of(session: AsyncSession, post: Post) -> Category | None:
    topic = await session.get(Topic, post.topic_id)
    return None if topic is None else await session.get(Category, topic.category_id)


def _postable(placement: Placement) -> Placement | Refusal:
    """Nobody posts into the announcements category: its topics are made only by publishing an announcement."""
    if placement.category.slug == ANNOUNCEMENTS_SLUG:
        return Refusal(ANNOUNCEMENTS_ARE_PUBLISHED, "post into the announcements category")
    return placement


async def place_by_token(session: AsyncSession, settings: Settings, token: str, *, today: date) -> Placement | Refusal:
    ids = reply_token_ids(settings, token, today=today)
    parent = None if ids is None else await session.get(Post, ids[0])
    category = None if parent is None else await category_of(session, parent)
    if ids is None or parent is None or category is None:
        return Refusal(BAD_TOKEN, "invalid or expired reply token")
    return _postable(Placement(category=category, parent=parent, token_ids=ids))


async def place_by_headers(session: AsyncSession, category_slug: str, parsed: ParsedMail) -> Placement | Refusal:
    category = await queries.category_by_slug(session, category_slug)
    if category is None:
        return Refusal(UNKNOWN_RECIPIENT, f"no category {category_slug}")
    candidates = parent_candidates(
        message_id=parsed.message_id, in_reply_to=parsed.in_reply_to, references=parsed.references
    )
    known = await queries.posts_by_message_ids(session, candidates)
    choice = resolve_parent(token_post_id=None, candidates=candidates, lookup=known, in_reply_to=parsed.in_reply_to)
    if choice.parent_post_id is None:
        if candidates and await queries.find_digest_reference(session, candidates) is not None:
            return Refusal(DIGEST_REPLY, "reply to a whole digest")
        return _postable(Placement(category=category, candidates=candidates, known_ancestors=known))
    parent = await session.get(Post, choice.parent_post_id)
    assert parent is not None
    nearer = candidates[: candidates.index(choice.matched_id)] if choice.matched_id in candidates else ()
    return _postable(Placement(category=await category_of(session, parent) or category, parent=parent,
                               candidates=nearer, known_ancestors=known))
