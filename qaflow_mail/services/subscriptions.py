"""Category subscriptions: one place for the rules the mail pipeline, the HTTP endpoint and the CLI share.

- ``subscribe`` / ``unsubscribe``: one user, one category, one mode (unsubscribing is mode ``mute``).
- ``unsubscribe_by_token``: the signed token of a List-Unsubscribe link or address turns one subscription to
  ``mute`` (category id 0 means the site's announcements: ``users.announcements_muted``). Idempotent.
  ``check_unsubscribe_token`` says what a token would do, changing nothing.
- ``rotate_tokens``: every unsubscribe token (a category's, the announcements', a digest's own) carries the user's
  token generation; raising it (re-subscribing, a confirmed join, ``user rotate-tokens``) voids every earlier
  link, e.g. one that leaked into a quote.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db.dialect import insert as dialect_insert
from qaflow_mail.db.models import Category, CategorySubscription, SubscriptionMode, User
from qaflow_mail.mail.tokens import (
    ANNOUNCEMENTS_CATEGORY_ID,
    DIGEST_CODES,
    InvalidToken,
    TokenError,
    TokenKind,
    TokenPayload,
    unsubscribe_generation,
    verify,
)
from qaflow_mail.services.categories import find_category
from qaflow_mail.services.users import find_user

DIGEST_MODE_BY_CODE = {code: SubscriptionMode(mode) for mode, code in DIGEST_CODES.items()}


# ----------------------------------------------------------------------------------------------------------------
# One subscription


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    email: str  # the user's primary address
    category_slug: str
    mode: SubscriptionMode
    previous: SubscriptionMode | None  # None: there was no subscription row


async def set_subscription(
    session: AsyncSession, *, user_id: int, category_id: int, mode: SubscriptionMode, now: datetime
) -> SubscriptionMode | None:
    """Set the user's mode for the category (creating the row when missing). Returns the previous mode."""
    row = await session.scalar(
        select(CategorySubscription).where(
            CategorySubscription.user_id == user_id, CategorySubscription.category_id == category_id
        )
    )
    if row is None:
        await session.execute(
            dialect_insert(session, CategorySubscription)
            .values(user_id=user_id, category_id=category_id, mode=mode.value, created_at=now)
            .on_conflict_do_nothing(index_elements=["user_id", "category_id"])
        )
        return None
    previous = SubscriptionMode(row.mode)
    if previous is not mode:
        row.mode = mode.value
        await session.flush()
    return previous


async def subscribe(
    session: AsyncSession, *, email: str, category_slug: str, mode: SubscriptionMode, now: datetime
) -> SubscriptionChange:
    """Set the mode of the user behind ``email`` (any of their addresses) for a category.

    Raises services.users.UnknownUser or services.categories.UnknownCategory, in that order.
    """
    user = await find_user(session, email)
    category = await find_category(session, category_slug)
    previous = await set_subscription(session, user_id=user.id, category_id=category.id, mode=mode, now=now)
    if mode is not SubscriptionMode.MUTE and previous in (None, SubscriptionMode.MUTE):
        rotate_tokens(user)
    return SubscriptionChange(email=user.email, category_slug=category.slug, mode=mode, previous=previous)


async def unsubscribe(session: AsyncSession, *, email: str, category_slug: str, now: datetime) -> SubscriptionChange:
    """``subscribe`` with mode ``mute``: the row is kept, so the choice is remembered."""
    return await subscribe(session, email=email, category_slug=category_slug, mode=SubscriptionMode.MUTE, now=now)


# ----------------------------------------------------------------------------------------------------------------
# Unsubscribe by token


class UnsubscribeStatus(StrEnum):
    VALID = "valid"  # the token is good; nothing changed yet (check_unsubscribe_token)
    UNSUBSCRIBED = "unsubscribed"  # turned off now
    ALREADY = "already"  # it was off already: nothing changed
    INVALID = "invalid"  # tampered, malformed, another kind of token, or its user is gone
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class UnsubscribeResult:
    status: UnsubscribeStatus
    user_id: int | None = None
    email: str | None = None
    category_id: int | None = None  # None for site announcements
    category_name: str | None = None
    category_slug: str | None = None
    digest_mode: SubscriptionMode | None = None  # set when the token stops a whole daily or weekly digest
    category_private: bool = False  # a mail-only category: it has no page to link back to
    detail: str = ""  # for the logs only

    @property
    def ok(self) -> bool:
        return self.status in (UnsubscribeStatus.VALID, UnsubscribeStatus.UNSUBSCRIBED, UnsubscribeStatus.ALREADY)

    @property
    def changed(self) -> bool:
        return self.status is UnsubscribeStatus.UNSUBSCRIBED


def mask_email(address: str) -> str:
    """The address as an unsubscribe page may show it to whoever holds the link: 'al***@example.org'."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:2]}***@{domain}"


def _verify_unsubscribe(token: str, settings: Settings, now: datetime) -> TokenPayload:
    """A category (or announcements) unsubscribe token, or a digest's own; never expires with age."""
    secrets = settings.tokens.secrets
    try:
        return verify(token, kind=TokenKind.UNSUBSCRIBE, secrets=secrets, today=now.date(), max_age_days=None)
    except InvalidToken as exc:
        if exc.reason is not TokenError.WRONG_KIND:
            raise
    return verify(token, kind=TokenKind.DIGEST, secrets=secrets, today=now.date(), max_age_days=None)


async def check_unsubscribe_token(
    session: AsyncSession, token: str, settings: Settings, now: datetime
) -> UnsubscribeResult:
    """What ``token`` would unsubscribe (status VALID), or why it cannot be honoured. Changes nothing.

    Unsubscribe tokens do not expire with age: a link in an old email must keep working (RFC 8058 senders are
    expected to honour it), and all it can do is stop mail. Only a token dated in the future counts as expired.
    """
    try:
        payload = _verify_unsubscribe(token, settings, now)
    except InvalidToken as exc:
        status = UnsubscribeStatus.EXPIRED if exc.reason is TokenError.EXPIRED else UnsubscribeStatus.INVALID
        return UnsubscribeResult(status, detail=str(exc))
    user_id, target_id = payload.ids[:2]
    user = await session.get(User, user_id)
    if user is None:
        return UnsubscribeResult(UnsubscribeStatus.INVALID, detail=f"user {user_id} no longer exists")
    generation = unsubscribe_generation(payload.ids)
    if generation != user.token_generation:
        return UnsubscribeResult(UnsubscribeStatus.INVALID,
                                 detail=f"user {user.id}: a superseded {payload.kind} token (generation {generation})")
    if payload.kind is TokenKind.DIGEST:
        mode = DIGEST_MODE_BY_CODE.get(target_id)
        if mode is None:
            return UnsubscribeResult(UnsubscribeStatus.INVALID, detail=f"no digest period {target_id}")
        return UnsubscribeResult(UnsubscribeStatus.VALID, user_id=user.id, email=user.email, digest_mode=mode,
                                 category_name=f"{mode.value.title()} digest", category_slug=f"{mode.value}-digest")
    category_id = target_id
    if category_id == ANNOUNCEMENTS_CATEGORY_ID:
        return UnsubscribeResult(UnsubscribeStatus.VALID, user_id=user.id, email=user.email)
    category = await session.get(Category, category_id)
    if category is None:
        return UnsubscribeResult(UnsubscribeStatus.INVALID, user_id=user.id, email=user.email,
                                 detail=f"category {category_id} no longer exists")
    return UnsubscribeResult(UnsubscribeStatus.VALID, user_id=user.id, email=user.email, category_id=category.id,
                             category_name=category.name, category_slug=category.slug,
                             category_private=category.private)


async def unsubscribe_by_token(
    session: AsyncSession, token: str, settings: Settings, now: datetime
) -> UnsubscribeResult:
    """Turn off what ``token`` names: the subscription becomes ``mute`` (a row is kept, so the choice is
    remembered), or the user's announcements are muted. Repeating it changes nothing (status ALREADY)."""
    target = await check_unsubscribe_token(session, token, settings, now)
    if target.status is not UnsubscribeStatus.VALID:
        return target
    assert target.user_id is not None
    if target.digest_mode is not None:
        result = await session.execute(
            update(CategorySubscription)
            .where(CategorySubscription.user_id == target.user_id, CategorySubscription.mode == target.digest_mode)
            .values(mode=SubscriptionMode.MUTE)
            .execution_options(synchronize_session="fetch")
        )
        changed = _rowcount(result) > 0
    elif target.category_id is None:
        result = await session.execute(
            update(User)
            .where(User.id == target.user_id, User.announcements_muted.is_(False))
            .values(announcements_muted=True)
            .execution_options(synchronize_session="fetch")
        )
        changed = _rowcount(result) > 0
    else:
        previous = await set_subscription(session, user_id=target.user_id, category_id=target.category_id,
                                          mode=SubscriptionMode.MUTE, now=now)
        changed = previous is not SubscriptionMode.MUTE
    status = UnsubscribeStatus.UNSUBSCRIBED if changed else UnsubscribeStatus.ALREADY
    return dataclasses.replace(target, status=status)


def _rowcount(result: Any) -> int:
    count = getattr(result, "rowcount", 0)
    return int(count) if isinstance(count, int) else 0


def rotate_tokens(user: User) -> int:
    """Void every unsubscribe link of ``user`` minted so far; returns the new generation."""
    user.token_generation = (user.token_generation or 0) + 1
    return user.token_generation
