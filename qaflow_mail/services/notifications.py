"""Telling followers about a new post: one mail per "each" subscriber of its category, written with the post."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.db.models import Post
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.notify import NotifyBatch, enqueue_post_notifications, enqueue_post_notifications_batch


async def notify_followers(session: AsyncSession, deps: Deps, post: Post, *, now: datetime) -> int:
    """Outbox rows for the post's category followers (never its author); returns how many were handed over."""
    return await enqueue_post_notifications(session, settings=deps.settings, renderer=deps.renderer, post=post,
                                            now=now)


async def notify_followers_batch(
    session: AsyncSession, deps: Deps, post: Post, *, now: datetime, after_user_id: int, limit: int
) -> NotifyBatch:
    """One slice of ``notify_followers``: the people after ``after_user_id``, about ``limit`` of them (a fan-out
    job runs the slices in turn, one transaction each, and resumes after the last user id done)."""
    return await enqueue_post_notifications_batch(session, settings=deps.settings, renderer=deps.renderer, post=post,
                                                  now=now, after_user_id=after_user_id, limit=limit)
