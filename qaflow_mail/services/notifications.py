"""Telling followers about a new post: one mail per "each" subscriber of its category, written with the post."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Post
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.notify import enqueue_post_notifications


async def notify_followers(session: AsyncSession, deps: Deps, post: Post, *, now: datetime) -> int:
    """Outbox rows for the post's category followers (never its author); returns how many were handed over."""
    return await enqueue_post_notifications(session, settings=deps.settings, renderer=deps.renderer, post=post,
                                            now=now)
