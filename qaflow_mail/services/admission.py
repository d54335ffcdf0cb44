"""Who is writing, and may they post here? Unknown senders become staged users only where strangers are welcome."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import Settings
from qaflow_mail.db import queries
from qaflow_mail.db.models import Category, User, UserStatus
from qaflow_mail.deps import Deps
from qaflow_mail.replies import NO_FROM, NOT_TOKEN_OWNER, SENDER_NOT_ALLOWED, Refusal, SmtpReply
from qaflow_mail.urls import category_url, membership_address


def members_only(settings: Settings, category: Category | None) -> SmtpReply:
    """The refusal a stranger gets at ``category``: how to join it, by its own -join@ address and, when the
    category is on the web, its page's "Follow by email". Built from the slug and the configured site only, so it
    stays one ASCII line whatever the category is called."""
    if category is None:
        return SENDER_NOT_ALLOWED
    domain = settings.site.domain
    text = (f"Only members may post to {category.slug}@{domain}; to join, send an empty email to "
            f"{membership_address(settings, category.slug, 'join')} and reply to the confirmation")
    if not category.private:
        text += f", or use \"Follow by email\" on {category_url(settings, category.slug)}"
    return SENDER_NOT_ALLOWED.with_text(text)


async def admit_sender(
    session: AsyncSession, deps: Deps, *, address: str, display_name: str, category: Category | None,
    strangers_welcome: bool, token_user_id: int | None, now: datetime,
) -> User | Refusal:
    """The user a post to ``category`` is stored under, or why they may not post.

    `strangers_welcome`: the category takes posts from unknown senders (or an archive is imported);
    `token_user_id`: the user a verified reply token was sent to, who alone may use it.
    """
    if not address:
        return Refusal(NO_FROM, NO_FROM.text)
    user = await queries.user_by_email(session, address)
    if token_user_id is not None and (user is None or user.id != token_user_id):
        return Refusal(NOT_TOKEN_OWNER, f"reply token of user {token_user_id} used by {address}")
    if user is None:
        if not strangers_welcome:
            return Refusal(members_only(deps.settings, category), f"unknown sender {address}")
        user = await queries.add_user(session, email=address, display_name=display_name, status=UserStatus.STAGED,
                                      now=now)
    if user.status == UserStatus.DISABLED:
        return Refusal(SENDER_NOT_ALLOWED, f"disabled sender {address}")
    if user.status == UserStatus.STAGED and not (strangers_welcome or token_user_id is not None):
        return Refusal(members_only(deps.settings, category), f"staged sender {address} outside an open category")
    return user
