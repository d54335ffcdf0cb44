"""A reply whose whole text is a command is applied to the reply token's user and category, and nothing is
posted: "unsubscribe" mutes that category for them (the subscription row is kept, so the choice is remembered)
and they get the usual "you are unsubscribed" mail at their registered address."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Category, SubscriptionMode, User
from qaflow_mail.deps import Deps
from qaflow_mail.mail.commands import ReplyCommand
from qaflow_mail.outbound.outbox import enqueue
from qaflow_mail.services.notices import unsubscribed_notice
from qaflow_mail.services.subscriptions import UnsubscribeResult, UnsubscribeStatus, unsubscribe


async def apply_reply_command(
    session: AsyncSession, deps: Deps, *, command: ReplyCommand, user: User, category: Category,
    in_reply_to: str | None, now: datetime,
) -> str:
    """Apply `command` for `user` in `category`; returns what was done, for the inbound record."""
    assert command is ReplyCommand.UNSUBSCRIBE
    change = await unsubscribe(session, email=user.email, category_slug=category.slug, now=now)
    status = UnsubscribeStatus.ALREADY if change.previous is SubscriptionMode.MUTE else UnsubscribeStatus.UNSUBSCRIBED
    result = UnsubscribeResult(status, user_id=user.id, email=change.email, category_id=category.id,
                               category_name=category.name, category_slug=category.slug,
                               category_private=category.private)
    notice = unsubscribed_notice(deps.settings, deps.renderer, result, now=now, in_reply_to=in_reply_to)
    await enqueue(session, [notice], now=now)
    return f"reply command {command}: user {user.id} from category {category.slug} ({status})"
