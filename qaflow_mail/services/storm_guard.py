"""The loop and storm guard: replies that come faster than people write are held for moderation, so one post
never turns into more than a handful, even between two auto-responders that do not mark their mail automatic.

Two signs of a storm (both in [limits]):
- one sender replying in one topic more than ``topic_replies_per_10min`` times within ten minutes;
- a ping-pong: the reply and its ancestors form ``ping_pong_replies`` replies in a row alternating between two
  senders, each answering the other, all within ``ping_pong_seconds``.

A held reply is never mailed, so the other side gets nothing to answer and the loop stops. It waits in the
moderation queue (a held_posts row: approve or reject as any held post). The moderators are told once per topic
and day (an outbox dedupe key), not once per reply, and the sender is told nothing: telling an auto-responder is
what feeds the loop.
"""

from __future__ import annotations

import itertools
import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from qaflow_mail.config import LimitsSettings
from qaflow_mail.db.models import Post
from qaflow_mail.deps import Deps
from qaflow_mail.outbound.outbox import enqueue
from qaflow_mail.services.moderation import moderator_mail, moderators, put_on_hold

log = logging.getLogger(__name__)

WINDOW = timedelta(minutes=10)
QUOTED_LINES = 20


async def storm_reason(session: AsyncSession, limits: LimitsSettings, *, post: Post, now: datetime) -> str | None:
    """Why ``post`` (stored, not yet mailed) looks like part of a reply storm, or None."""
    if post.parent_id is None:
        return None
    earlier = await session.scalar(
        select(func.count(Post.id)).where(Post.topic_id == post.topic_id, Post.author_id == post.author_id,
                                          Post.parent_id.is_not(None), Post.id != post.id,
                                          Post.created_at >= now - WINDOW)
    )
    if int(earlier or 0) >= limits.topic_replies_per_10min:
        return (f"reply storm: more than {limits.topic_replies_per_10min} replies from one sender in this topic "
                f"within 10 minutes")
    if limits.ping_pong_replies >= 2 and await _ping_pong(session, post, limits=limits, now=now):
        return (f"reply loop: {limits.ping_pong_replies} replies in a row between two senders within "
                f"{limits.ping_pong_seconds} s")
    return None


async def _ping_pong(session: AsyncSession, post: Post, *, limits: LimitsSettings, now: datetime) -> bool:
    """Whether ``post`` and its nearest ancestors are ping_pong_replies replies alternating between two authors."""
    since = now - timedelta(seconds=limits.ping_pong_seconds)
    chain: list[Post] = [post]
    while len(chain) < limits.ping_pong_replies:
        parent_id = chain[-1].parent_id
        parent = None if parent_id is None else await session.get(Post, parent_id)
        if parent is None or parent.parent_id is None or parent.created_at < since:
            return False  # reached the topic's first post, or something older: people writing
        chain.append(parent)
    authors = [p.author_id for p in chain]
    return len(set(authors)) == 2 and all(a != b for a, b in itertools.pairwise(authors))


async def hold_storm(session: AsyncSession, deps: Deps, *, post: Post, reason: str, now: datetime) -> None:
    """Hold ``post`` for moderation and tell the moderators, once per topic and day."""
    put = await put_on_hold(session, post=post, reason=reason, now=now)
    topic, category, author = put.topic, put.category, put.author
    # One mail a topic a day: later held replies in the topic share the key, so the outbox adds none.
    told = (f"{reason}. Further replies in this topic that look the same are held without another notice today: "
            "see the moderation queue.")
    notices = [moderator_mail(deps, post=post, category=category, author=author, moderator=moderator, reason=told,
                              mail_key=f"storm:{topic.id}:{now.date().isoformat()}", now=now)
               for moderator in await moderators(session, category.id)]
    await enqueue(session, notices, now=now)
    log.warning("storm.held post_id=%s topic_id=%s author_id=%s reason=%s", post.id, topic.id, author.id, reason)


